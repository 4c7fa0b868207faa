//! gzip (RFC 1952) through flate2 and zlib-rs: the streaming encoder, and
//! the parallel mode, pigz's method: the input is cut into blocks that are
//! deflated independently, each primed with the 32 KiB before it as a
//! dictionary (so the ratio stays close to a serial stream), each ending on a
//! byte boundary (sync flush), and joined into one gzip member whose CRC-32
//! is combined from the blocks' CRCs. Every function here is pure: callers
//! run the blocks on whatever threads they like and join them in order.

use std::fmt;
use std::io;

use flate2::bufread::MultiGzDecoder;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};

use super::codec::Compressor;

/// A gzip level, 1 (fastest) to 9 (smallest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level(u32);

impl Level {
    /// Level 6, gzip's and zlib's default.
    pub const DEFAULT: Level = Level(6);

    pub fn new(level: u32) -> Option<Level> {
        (1..=9).contains(&level).then_some(Level(level))
    }

    /// Parses "1".."9"; the error is a sentence for the client.
    pub fn parse(text: &str) -> Result<Level, String> {
        text.trim()
            .parse::<u32>()
            .ok()
            .and_then(Level::new)
            .ok_or_else(|| {
                format!(
                    "level must be an integer from 1 to 9 for gzip, got '{}'",
                    text.escape_default()
                )
            })
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// CPU time per input byte against level 6, measured on text with
    /// `hashpress compress -p 1` (level 1: 5.5 ns a byte, 6: 29, 9: 64):
    /// what the pool prices a request at before it runs.
    pub fn relative_cost(self) -> f64 {
        const COST: [f64; 9] = [0.2, 0.26, 0.36, 0.55, 0.6, 1.0, 1.55, 2.5, 2.5];
        COST[self.0 as usize - 1]
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The streaming encoder (`codec::Stream` makes it an `Encode`).
pub fn compressor(level: Level) -> GzStream {
    GzStream {
        deflate: Compress::new(Compression::new(level.get()), false),
        stored: false,
        tail: Vec::new(),
        crc: Crc::new(),
        carry: Vec::new(),
        out: header(level).to_vec(),
    }
}

/// A gzip stream written piece by piece. Its input is judged in
/// `SNIFF`-sized pieces: one that `incompressible` rejects is written as
/// stored blocks instead of being searched for matches that are not there,
/// so a stream of already-compressed data costs a copy instead of ~15 ms
/// per MiB. When data worth deflating comes back, the stored bytes just
/// before it become deflate's dictionary, so its matches reach across.
pub struct GzStream {
    deflate: Compress,
    /// Whether the last piece was written as stored blocks.
    stored: bool,
    /// The last `DICT` bytes of a stored run, deflate's window once it resumes.
    tail: Vec<u8>,
    crc: Crc,
    /// Input short of a whole `SNIFF` piece, kept until the next write.
    carry: Vec<u8>,
    out: Vec<u8>,
}

/// Input judged at once by the streaming encoder.
const SNIFF: usize = 64 * 1024;

impl GzStream {
    /// Writes one piece, stored if it looks incompressible.
    fn piece(&mut self, input: &[u8]) {
        if incompressible(input) {
            if !self.stored {
                // Stored blocks start on a byte boundary: end deflate's
                // block with a sync flush.
                self.run(&[], FlushCompress::Sync);
                self.stored = true;
                self.tail.clear();
            }
            stored_blocks(input, false, &mut self.out);
            let keep = DICT.saturating_sub(input.len()).min(self.tail.len());
            self.tail.drain(..self.tail.len() - keep);
            self.tail
                .extend_from_slice(&input[input.len().saturating_sub(DICT)..]);
        } else {
            if self.stored {
                // Raw deflate takes a dictionary after a flush (zlib's
                // deflateSetDictionary); it appends to the window.
                self.deflate
                    .set_dictionary(&self.tail)
                    .expect("a flushed raw deflate stream takes a dictionary");
                self.stored = false;
            }
            self.run(input, FlushCompress::None);
        }
    }

    /// Feeds `input` to deflate until it is all taken (and, for a flush,
    /// until deflate has nothing more to give).
    fn run(&mut self, input: &[u8], flush: FlushCompress) {
        let start = self.deflate.total_in();
        loop {
            let taken = (self.deflate.total_in() - start) as usize;
            if self.out.capacity() - self.out.len() < 1024 {
                self.out.reserve(self.out.capacity().max(64 * 1024));
            }
            let status = self
                .deflate
                .compress_vec(&input[taken..], &mut self.out, flush)
                .expect("deflate into memory cannot fail");
            let all_in = (self.deflate.total_in() - start) as usize == input.len();
            if status == Status::StreamEnd || (all_in && self.out.len() < self.out.capacity()) {
                break;
            }
        }
    }
}

/// Appends `data` as stored deflate blocks (RFC 1951 §3.2.4), at most
/// 65,535 bytes each, starting on a byte boundary; `last` marks the final
/// block of the stream.
pub fn stored_blocks(data: &[u8], last: bool, out: &mut Vec<u8>) {
    let mut chunks = data.chunks(u16::MAX as usize).peekable();
    if chunks.peek().is_none() && last {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let len = chunk.len() as u16;
        let final_bit = u8::from(last && chunks.peek().is_none());
        out.push(final_bit);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
}

impl io::Write for GzStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.crc.update(buf);
        let mut rest = buf;
        if !self.carry.is_empty() {
            let take = (SNIFF - self.carry.len()).min(rest.len());
            self.carry.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.carry.len() < SNIFF {
                return Ok(buf.len());
            }
            let carry = std::mem::take(&mut self.carry);
            self.piece(&carry);
            self.carry = carry;
            self.carry.clear();
        }
        while rest.len() >= SNIFF {
            self.piece(&rest[..SNIFF]);
            rest = &rest[SNIFF..];
        }
        self.carry.extend_from_slice(rest);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Compressor for GzStream {
    fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    fn end(&mut self) -> io::Result<()> {
        let carry = std::mem::take(&mut self.carry);
        if !carry.is_empty() {
            self.piece(&carry);
        }
        if self.stored {
            stored_blocks(&[], true, &mut self.out);
        } else {
            self.run(&[], FlushCompress::Finish);
        }
        self.out.extend_from_slice(&trailer(&self.crc));
        Ok(())
    }
}

/// Whether deflate would gain nearly nothing on `data`: its bytes are close
/// to uniform (order-0 entropy ≥ 7.95 bits, so Huffman codes save < 1 %) and
/// no longer run repeats (no content-defined anchor comes back, so LZ
/// matches would be a few bytes at best). Compressed, encrypted and random
/// data pass; text, logs, tables and repeated binary records do not. Costs
/// ~0.6 ns per byte, against ~15 ns for deflate at level 1.
pub fn incompressible(data: &[u8]) -> bool {
    // Below this the test says too little to bet on; deflate is cheap anyway.
    const MIN: usize = 4 * 1024;
    if data.len() < MIN {
        return false;
    }
    if byte_entropy(data) < 7.95 {
        return false;
    }
    // Anchors: the 8 bytes after each 0xA5 (one position in 256 in data
    // this uniform, found by memchr at memory speed). They are chosen by
    // content, so a repeated run brings back the same anchors wherever it
    // sits, at any distance.
    const SLOTS: usize = 1024;
    let mut seen = [0u64; SLOTS];
    let (mut anchors, mut repeats) = (0usize, 0usize);
    for at in memchr::memchr_iter(0xA5, &data[..data.len() - 8]) {
        let word = u64::from_le_bytes(data[at + 1..at + 9].try_into().expect("8 bytes"));
        anchors += 1;
        let slot = (word.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize % SLOTS;
        if seen[slot] == word {
            repeats += 1;
        } else {
            seen[slot] = word;
        }
    }
    // Uniform bytes without the marker are odd enough to leave to deflate.
    if anchors * 1024 < data.len() {
        return false;
    }
    // Random data repeats an 8-byte word about never; 1 anchor in 64 coming
    // back means runs of at least a few hundred bytes recur.
    repeats * 64 <= anchors
}

/// Order-0 entropy of `data` in bits per byte, from a quarter of it (1 KiB
/// of every 4 KiB) when it is long, with the Miller–Madow correction for the
/// bias of a finite sample (a sample of uniform bytes reads a little under 8).
fn byte_entropy(data: &[u8]) -> f64 {
    // Four tables so consecutive equal bytes do not wait on one counter.
    let mut counts = [[0u32; 256]; 4];
    let mut count = |span: &[u8]| {
        let mut quads = span.chunks_exact(4);
        for q in &mut quads {
            counts[0][q[0] as usize] += 1;
            counts[1][q[1] as usize] += 1;
            counts[2][q[2] as usize] += 1;
            counts[3][q[3] as usize] += 1;
        }
        for &b in quads.remainder() {
            counts[0][b as usize] += 1;
        }
    };
    let n = if data.len() >= 32 * 1024 {
        let mut n = 0;
        for span in data.chunks(4096) {
            let span = &span[..span.len().min(1024)];
            count(span);
            n += span.len();
        }
        n
    } else {
        count(data);
        data.len()
    };
    let n = n as f64;
    let (mut bits, mut used) = (0.0, 0u32);
    let [c0, c1, c2, c3] = &counts;
    for (((a, b), c), d) in c0.iter().zip(c1).zip(c2).zip(c3) {
        let c = a + b + c + d;
        if c > 0 {
            let p = c as f64 / n;
            bits -= p * p.log2();
            used += 1;
        }
    }
    bits + f64::from(used.saturating_sub(1)) / (2.0 * n * std::f64::consts::LN_2)
}

/// Reads concatenated gzip members back, as `gzip -d` does.
pub fn decoder<R: io::BufRead>(input: R) -> MultiGzDecoder<R> {
    MultiGzDecoder::new(input)
}

/// Input bytes per block: pigz's default, a good balance between hand-off
/// cost (~µs) and work per block (~1 ms at level 6).
pub const BLOCK: usize = 128 * 1024;
/// Deflate's window: the dictionary each block is primed with.
pub const DICT: usize = 32 * 1024;

/// The 10-byte gzip header (no name, no mtime, OS = Unix).
pub fn header(level: Level) -> [u8; 10] {
    // XFL: 2 = best compression, 4 = fastest, as gzip sets it.
    let xfl = match level.get() {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 3]
}

/// The 8-byte trailer: CRC-32 and length mod 2^32, little-endian.
pub fn trailer(crc: &Crc) -> [u8; 8] {
    let mut t = [0u8; 8];
    t[..4].copy_from_slice(&crc.sum().to_le_bytes());
    t[4..].copy_from_slice(&crc.amount().to_le_bytes());
    t
}

/// Deflates `input` as one block of a larger stream. `dict` is the (up to
/// 32 KiB of) input just before this block; `last` closes the deflate stream.
pub fn compress_block(input: &[u8], dict: &[u8], level: Level, last: bool) -> (Vec<u8>, Crc) {
    let mut crc = Crc::new();
    crc.update(input);
    // A block deflate cannot shrink is copied as stored blocks; the next
    // block's matches reach into it through its own dictionary.
    if incompressible(input) {
        let mut out = Vec::with_capacity(input.len() + input.len() / 65535 * 5 + 5);
        stored_blocks(input, last, &mut out);
        return (out, crc);
    }
    let mut c = Compress::new(Compression::new(level.get()), false);
    if !dict.is_empty() {
        let dict = &dict[dict.len().saturating_sub(DICT)..];
        c.set_dictionary(dict)
            .expect("a raw deflate stream accepts a dictionary before input");
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(input.len() / 2 + 1024);
    loop {
        let consumed = c.total_in() as usize;
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(4096));
        }
        let status = c
            .compress_vec(&input[consumed..], &mut out, flush)
            .expect("deflate into memory cannot fail");
        let all_in = c.total_in() as usize == input.len();
        // Done when all input is in and deflate left spare room (so it had
        // nothing more to flush), or the stream ended.
        if status == Status::StreamEnd || (all_in && !last && out.len() < out.capacity()) {
            break;
        }
    }
    (out, crc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::codec::tests::text;
    use crate::kernel::codec::{Encode, Stream};
    use flate2::read::GzDecoder;
    use std::io::Read;

    fn roundtrip(data: &[u8], piece: usize, level: Level) -> Vec<u8> {
        let mut gz = Stream::new(compressor(level));
        let mut out = Vec::new();
        for p in data.chunks(piece.max(1)) {
            out.extend(gz.encode(p, false));
        }
        out.extend(gz.encode(&[], true));
        let mut back = Vec::new();
        GzDecoder::new(&out[..]).read_to_end(&mut back).unwrap();
        back
    }

    #[test]
    fn roundtrips_any_split() {
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i % 251) as u8 ^ (i >> 9) as u8)
            .collect();
        for piece in [1, 1000, 65536, 1 << 20] {
            assert_eq!(roundtrip(&data, piece, Level::DEFAULT), data);
        }
        assert_eq!(roundtrip(b"", 1, Level::new(1).unwrap()), b"");
    }

    /// Bytes no compressor can shrink (xorshift64*).
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn incompressible_tells_noise_from_data() {
        assert!(incompressible(&noise(64 << 10, 1)));
        assert!(incompressible(&noise(4 << 10, 2)));
        assert!(!incompressible(&noise(4095, 3)), "too short to judge");
        assert!(!incompressible(&text(64 << 10)));
        assert!(!incompressible(&vec![0u8; 64 << 10]));
        // Uniform bytes, but every run comes back: deflate halves it.
        for period in [300, 4 << 10, 16 << 10, 30 << 10] {
            let run = noise(period, 4);
            let data: Vec<u8> = run.iter().copied().cycle().take(64 << 10).collect();
            assert!(!incompressible(&data), "period {period}");
        }
    }

    #[test]
    fn noise_is_stored_and_data_beside_it_still_compressed() {
        let n = noise(1 << 20, 5);
        let t = text(1 << 20);
        let mut mixed = n.clone();
        mixed.extend_from_slice(&t);
        mixed.extend_from_slice(&n[..300_000]);
        mixed.extend_from_slice(&t[..200_000]);
        for piece in [1000, 65536, 100_000, 1 << 20] {
            assert_eq!(roundtrip(&mixed, piece, Level::new(1).unwrap()), mixed);
        }
        // Noise costs its stored blocks' headers, nothing more.
        let mut s = Stream::new(compressor(Level::DEFAULT));
        let stored = s.encode(&n, true).len();
        assert!(stored < n.len() + 200, "{stored}");
        // Text compresses as with a plain deflate stream.
        let mut s = Stream::new(compressor(Level::DEFAULT));
        let ours = s.encode(&t, true).len();
        let mut plain = flate2::write::GzEncoder::new(Vec::new(), Compression::new(6));
        std::io::Write::write_all(&mut plain, &t).unwrap();
        let plain = plain.finish().unwrap().len();
        assert!(ours as f64 <= plain as f64 * 1.005, "{ours} vs {plain}");
        // A parallel block of noise is stored too, and still joins.
        let (block, _) = compress_block(&n[..BLOCK], &t[..DICT], Level::DEFAULT, false);
        assert!(block.len() < BLOCK + 64);
        let gz = parallel_gzip(&mixed, Level::DEFAULT);
        let mut back = Vec::new();
        GzDecoder::new(&gz[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, mixed);
    }

    #[test]
    fn levels() {
        assert_eq!(Level::DEFAULT.relative_cost(), 1.0);
        assert!((1..=9).all(|l| Level(l).relative_cost() > 0.0));
        assert!(Level(1).relative_cost() < Level(9).relative_cost());
        assert_eq!(Level::parse("9"), Ok(Level(9)));
        assert!(Level::parse("0").is_err());
        assert!(Level::parse("10").is_err());
        assert!(Level::parse("x").unwrap_err().contains("1 to 9"));
    }

    fn parallel_gzip(data: &[u8], level: Level) -> Vec<u8> {
        let mut out = header(level).to_vec();
        let mut crc = Crc::new();
        let blocks: Vec<&[u8]> = if data.is_empty() {
            vec![&[]]
        } else {
            data.chunks(BLOCK).collect()
        };
        for (i, block) in blocks.iter().enumerate() {
            let start = i * BLOCK;
            let dict = &data[start.saturating_sub(DICT)..start];
            let (deflated, c) = compress_block(block, dict, level, i + 1 == blocks.len());
            out.extend_from_slice(&deflated);
            crc.combine(&c);
        }
        out.extend_from_slice(&trailer(&crc));
        out
    }

    #[test]
    fn blocks_join_into_one_valid_member() {
        for len in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 5 * BLOCK + 777] {
            let data = text(len);
            let gz = parallel_gzip(&data, Level::DEFAULT);
            let mut back = Vec::new();
            GzDecoder::new(&gz[..]).read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "len {len}");
        }
    }

    #[test]
    fn parallel_ratio_is_close_to_serial() {
        let data = text(4 << 20);
        let par = parallel_gzip(&data, Level::DEFAULT).len();
        let mut s = Stream::new(compressor(Level::DEFAULT));
        let serial = s.encode(&data, true);
        let ratio = par as f64 / serial.len() as f64;
        assert!(
            ratio < 1.01,
            "parallel {par} vs serial {} bytes",
            serial.len()
        );
    }
}
