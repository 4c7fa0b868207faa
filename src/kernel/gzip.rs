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
use flate2::write::GzEncoder;
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
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The streaming encoder (`codec::Stream` makes it an `Encode`).
pub fn compressor(level: Level) -> GzEncoder<Vec<u8>> {
    GzEncoder::new(Vec::with_capacity(64 * 1024), Compression::new(level.0))
}

impl Compressor for GzEncoder<Vec<u8>> {
    fn output(&mut self) -> &mut Vec<u8> {
        self.get_mut()
    }

    fn end(&mut self) -> io::Result<()> {
        self.try_finish()
    }
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

    #[test]
    fn levels() {
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
