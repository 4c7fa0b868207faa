//! The compression codecs behind one interface, so every endpoint and the
//! command line have one streaming path and one parallel path whatever the
//! format. Each codec lives in a file of its own (`gzip.rs`, `zstd.rs`) and
//! brings: its level, a streaming encoder (`Encode`), and the block
//! functions of its parallel mode. This file says which codecs exist, how
//! they are named, and how a stream is cut into parallel blocks.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use flate2::Crc;

use super::gzip::{self, Level};
use super::zstd::{self, ZstdLevel};

/// A compressor fed piece by piece (pingora's `Encode`): memory is one input
/// piece plus the codec's window, whatever the stream length.
pub trait Encode: Send {
    /// Compresses `input` and returns whatever output is ready (possibly
    /// empty); with `end`, also ends the stream (last block, trailer or
    /// checksum). Nothing may be encoded after the end.
    fn encode(&mut self, input: &[u8], end: bool) -> Vec<u8>;
    /// Input bytes taken so far.
    fn bytes_in(&self) -> u64;
    /// Output bytes returned so far.
    fn bytes_out(&self) -> u64;
}

/// What a codec's streaming encoder is underneath: a `Write` into a `Vec`
/// that can be drained and ended. Each codec file implements it for its
/// library's encoder; `Stream` does the rest once for all.
pub trait Compressor: Write + Send {
    /// The output written so far, drained after every call.
    fn output(&mut self) -> &mut Vec<u8>;
    /// Writes the end of the stream into `output`.
    fn end(&mut self) -> io::Result<()>;
}

/// Any `Compressor` as an `Encode`, with its byte counts.
pub struct Stream<C> {
    inner: C,
    bytes_in: u64,
    bytes_out: u64,
}

impl<C: Compressor> Stream<C> {
    pub fn new(inner: C) -> Stream<C> {
        Stream {
            inner,
            bytes_in: 0,
            bytes_out: 0,
        }
    }
}

impl<C: Compressor> Encode for Stream<C> {
    fn encode(&mut self, input: &[u8], end: bool) -> Vec<u8> {
        self.bytes_in += input.len() as u64;
        // Writing into a Vec cannot fail.
        self.inner
            .write_all(input)
            .expect("compressing into memory cannot fail");
        if end {
            self.inner
                .end()
                .expect("compressing into memory cannot fail");
        }
        let out = std::mem::take(self.inner.output());
        self.bytes_out += out.len() as u64;
        out
    }

    fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    fn bytes_out(&self) -> u64 {
        self.bytes_out
    }
}

/// A compression format, as `?format=` and `--format` name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Gzip,
    Zstd,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::Gzip, Format::Zstd];

    /// Parses a format name; the error is a sentence listing the valid ones.
    pub fn parse(text: &str) -> Result<Format, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == text)
            .ok_or_else(|| {
                let valid: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "unknown format '{}'; valid formats: {}",
                    text.escape_default(),
                    valid.join(", ")
                )
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Gzip => "gzip",
            Format::Zstd => "zstd",
        }
    }

    /// The media type of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Gzip => "application/gzip",
            Format::Zstd => "application/zstd",
        }
    }

    /// The file name suffix of an output in this format.
    pub fn suffix(self) -> &'static str {
        match self {
            Format::Gzip => ".gz",
            Format::Zstd => ".zst",
        }
    }

    /// The format whose magic number starts `head`, if any.
    pub fn sniff(head: &[u8]) -> Option<Format> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Format::Gzip)
        } else if head.starts_with(&zstd::MAGIC) {
            Some(Format::Zstd)
        } else {
            None
        }
    }

    /// This format at the level `level` names (its own default without
    /// one); the error is a sentence naming the valid range.
    pub fn codec(self, level: Option<&str>) -> Result<Codec, String> {
        Ok(match (self, level) {
            (Format::Gzip, None) => Codec::Gzip(Level::DEFAULT),
            (Format::Gzip, Some(l)) => Codec::Gzip(Level::parse(l)?),
            (Format::Zstd, None) => Codec::Zstd(ZstdLevel::DEFAULT),
            (Format::Zstd, Some(l)) => Codec::Zstd(ZstdLevel::parse(l)?),
        })
    }

    /// A reader of the decompressed bytes of `input` (concatenated gzip
    /// members, concatenated zstd frames).
    pub fn decoder<'a, R: io::BufRead + 'a>(self, input: R) -> io::Result<Box<dyn io::Read + 'a>> {
        Ok(match self {
            Format::Gzip => Box::new(gzip::decoder(input)),
            Format::Zstd => Box::new(zstd::decoder(input)?),
        })
    }
}

/// A format at a level: everything needed to compress one stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Gzip(Level),
    Zstd(ZstdLevel),
}

/// One block of a parallel stream, compressed.
pub struct Block {
    pub out: Vec<u8>,
    /// Input bytes it holds.
    pub bytes_in: u64,
    /// CRC-32 of its input, for codecs whose trailer checks the whole
    /// stream (gzip); `None` for those that check each block (zstd frames).
    pub crc: Option<Crc>,
}

impl Codec {
    pub fn format(self) -> Format {
        match self {
            Codec::Gzip(_) => Format::Gzip,
            Codec::Zstd(_) => Format::Zstd,
        }
    }

    /// CPU time per input byte against the codec's default level.
    pub fn relative_cost(self) -> f64 {
        match self {
            Codec::Gzip(level) => level.relative_cost(),
            Codec::Zstd(level) => level.relative_cost(),
        }
    }

    /// A streaming encoder.
    pub fn encoder(self) -> Box<dyn Encode> {
        match self {
            Codec::Gzip(level) => Box::new(Stream::new(gzip::compressor(level))),
            Codec::Zstd(level) => Box::new(Stream::new(zstd::compressor(level))),
        }
    }

    /// Input bytes per parallel block (the last one may be shorter).
    pub fn block_len(self) -> usize {
        match self {
            Codec::Gzip(_) => gzip::BLOCK,
            Codec::Zstd(_) => zstd::FRAME,
        }
    }

    /// Bytes of the input before a block that prime it (0: none).
    pub fn dict_len(self) -> usize {
        match self {
            Codec::Gzip(_) => gzip::DICT,
            Codec::Zstd(_) => 0,
        }
    }

    /// What a parallel stream starts with, before its first block.
    pub fn header(self) -> Vec<u8> {
        match self {
            Codec::Gzip(level) => gzip::header(level).to_vec(),
            Codec::Zstd(_) => Vec::new(),
        }
    }

    /// Compresses one block of a parallel stream: pure, on any thread.
    /// `dict` is the input just before it; `last` ends the stream.
    pub fn block(self, input: &[u8], dict: &[u8], last: bool) -> Block {
        match self {
            Codec::Gzip(level) => {
                let (out, crc) = gzip::compress_block(input, dict, level, last);
                Block {
                    out,
                    bytes_in: input.len() as u64,
                    crc: Some(crc),
                }
            }
            Codec::Zstd(level) => Block {
                out: zstd::frame(input, level),
                bytes_in: input.len() as u64,
                crc: None,
            },
        }
    }

    /// What a parallel stream ends with, after its last block; `crc` is
    /// the blocks' CRCs combined in order.
    pub fn trailer(self, crc: &Crc) -> Vec<u8> {
        match self {
            Codec::Gzip(_) => gzip::trailer(crc).to_vec(),
            Codec::Zstd(_) => Vec::new(),
        }
    }
}

/// The blocks' checks joined in order, for the trailer.
#[derive(Default)]
pub struct Joined {
    pub crc: Crc,
}

impl Joined {
    pub fn add(&mut self, block: &Block) {
        if let Some(crc) = &block.crc {
            self.crc.combine(crc);
        }
    }
}

/// The input of one parallel block, ready for a pool job.
pub struct BlockInput {
    codec: Codec,
    input: Vec<u8>,
    dict: Vec<u8>,
    last: bool,
    /// Where `input` goes back once compressed, for a later block.
    spare: Spare,
}

/// Input buffers of blocks already compressed, kept for the next blocks of
/// the same stream: a zstd frame's 4 MiB taken from fresh memory is faulted
/// in (and zeroed by the kernel) again on every block, which costs about as
/// much as copying the input into it. Shared by a cutter and its blocks on
/// the pool threads.
#[derive(Clone, Default)]
struct Spare(Arc<Mutex<Vec<Vec<u8>>>>);

/// Most buffers a stream keeps spare: blocks in flight are bounded by
/// their pipeline's window, and a block is cut when one has come back.
const MAX_SPARE: usize = 2;

impl Spare {
    fn take(&self, len: usize) -> Vec<u8> {
        self.lock().pop().unwrap_or_else(|| Vec::with_capacity(len))
    }

    fn give(&self, mut buf: Vec<u8>, len: usize) {
        let mut spare = self.lock();
        if buf.capacity() == len && spare.len() < MAX_SPARE {
            buf.clear();
            spare.push(buf);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl BlockInput {
    pub fn len(&self) -> usize {
        self.input.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input.is_empty()
    }

    pub fn compress(self) -> Block {
        let block = self.codec.block(&self.input, &self.dict, self.last);
        self.spare.give(self.input, self.codec.block_len());
        block
    }
}

/// Cuts a stream that arrives in pieces of any size (a request body,
/// standard input) into its codec's blocks, each with its dictionary.
pub struct BlockCutter {
    codec: Codec,
    pending: Vec<u8>,
    /// The last `dict_len` bytes before `pending`.
    dict: Vec<u8>,
    /// Blocks cut so far.
    cut: u64,
    spare: Spare,
}

impl BlockCutter {
    pub fn new(codec: Codec) -> BlockCutter {
        BlockCutter {
            codec,
            pending: Vec::with_capacity(codec.block_len()),
            dict: Vec::new(),
            cut: 0,
            spare: Spare::default(),
        }
    }

    /// Takes bytes from the front of `data` until a block is full, and
    /// returns that block; `data` keeps the rest. `None`: all of `data` was
    /// taken and the block is not full yet.
    pub fn fill(&mut self, data: &mut &[u8]) -> Option<BlockInput> {
        let len = self.codec.block_len();
        let take = (len - self.pending.len()).min(data.len());
        self.pending.extend_from_slice(&data[..take]);
        *data = &data[take..];
        if self.pending.len() < len {
            return None;
        }
        let input = std::mem::replace(&mut self.pending, self.spare.take(len));
        let keep = self.codec.dict_len().min(input.len());
        let dict = std::mem::replace(&mut self.dict, input[input.len() - keep..].to_vec());
        self.cut += 1;
        Some(BlockInput {
            codec: self.codec,
            input,
            dict,
            last: false,
            spare: self.spare.clone(),
        })
    }

    /// The last block, at the end of the input; `None` when the codec needs
    /// no closing block (a zstd stream already made of whole frames).
    pub fn end(self) -> Option<BlockInput> {
        let closes = self.codec.format() == Format::Gzip;
        (closes || !self.pending.is_empty() || self.cut == 0).then_some(BlockInput {
            codec: self.codec,
            input: self.pending,
            dict: self.dict,
            last: true,
            spare: self.spare,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Read;

    /// Compressible text of `len` bytes, for the codecs' tests.
    pub(crate) fn text(len: usize) -> Vec<u8> {
        let words = ["alpha ", "beta ", "gamma\n", "delta ", "epsilon "];
        let mut v = Vec::new();
        let mut x = 1u32;
        while v.len() < len {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            v.extend_from_slice(words[(x >> 16) as usize % words.len()].as_bytes());
        }
        v.truncate(len);
        v
    }

    fn decode(format: Format, data: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        format
            .decoder(data)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        back
    }

    /// The parallel path as the endpoints run it, on one thread.
    fn parallel(codec: Codec, data: &[u8], piece: usize) -> Vec<u8> {
        let mut out = codec.header();
        let mut joined = Joined::default();
        let mut cutter = BlockCutter::new(codec);
        let mut add = |b: Block| {
            joined.add(&b);
            out.extend_from_slice(&b.out);
        };
        for mut p in data.chunks(piece.max(1)) {
            while let Some(b) = cutter.fill(&mut p) {
                add(b.compress());
            }
        }
        if let Some(b) = cutter.end() {
            add(b.compress());
        }
        out.extend(codec.trailer(&joined.crc));
        out
    }

    fn serial(codec: Codec, data: &[u8], piece: usize) -> Vec<u8> {
        let mut e = codec.encoder();
        let mut out = Vec::new();
        for p in data.chunks(piece.max(1)) {
            out.extend(e.encode(p, false));
        }
        out.extend(e.encode(&[], true));
        assert_eq!(e.bytes_in(), data.len() as u64);
        assert_eq!(e.bytes_out(), out.len() as u64);
        out
    }

    #[test]
    fn every_codec_roundtrips_serial_and_parallel() {
        let gzip6 = Format::Gzip.codec(None).unwrap();
        let zstd3 = Format::Zstd.codec(None).unwrap();
        for codec in [gzip6, zstd3, Format::Zstd.codec(Some("1")).unwrap()] {
            let f = codec.format();
            for len in [0, 1, gzip::BLOCK + 1, zstd::FRAME, zstd::FRAME + 777] {
                let data = text(len);
                for piece in [1000, 1 << 20] {
                    assert_eq!(
                        decode(f, &serial(codec, &data, piece)),
                        data,
                        "{codec:?} {len}"
                    );
                    let par = parallel(codec, &data, piece);
                    assert_eq!(decode(f, &par), data, "{codec:?} {len} parallel");
                    assert_eq!(Format::sniff(&par), Some(f));
                }
            }
        }
    }

    #[test]
    fn a_compressed_block_gives_its_buffer_to_a_later_block() {
        let codec = Format::Zstd.codec(Some("1")).unwrap();
        let data = text(3 * zstd::FRAME);
        let mut rest = &data[..];
        let mut cutter = BlockCutter::new(codec);
        let first = cutter.fill(&mut rest).expect("a whole frame");
        let at = first.input.as_ptr();
        first.compress();
        // The second block's buffer was taken when the first was cut; the
        // third one's, after the first came back.
        let second = cutter.fill(&mut rest).expect("a whole frame");
        assert_ne!(second.input.as_ptr(), at);
        let third = cutter.fill(&mut rest).expect("a whole frame");
        assert_eq!(third.input.as_ptr(), at);
        assert_eq!(&third.input[..], &data[2 * zstd::FRAME..]);
    }

    #[test]
    fn zstd_blocks_are_whole_frames_of_the_frame_size() {
        let data = text(2 * zstd::FRAME);
        let codec = Format::Zstd.codec(None).unwrap();
        // Two full frames and no empty third one.
        let mut cutter = BlockCutter::new(codec);
        let mut rest = &data[..];
        let mut n = 0;
        while let Some(b) = cutter.fill(&mut rest) {
            assert_eq!(b.len(), zstd::FRAME);
            n += 1;
        }
        assert_eq!(n, 2);
        assert!(cutter.end().is_none());
    }

    #[test]
    fn formats_and_levels_are_named_in_errors() {
        assert_eq!(Format::parse("zstd"), Ok(Format::Zstd));
        let e = Format::parse("brotli").unwrap_err();
        assert!(e.contains("gzip, zstd"), "{e}");
        assert!(
            Format::Zstd
                .codec(Some("20"))
                .unwrap_err()
                .contains("1 to 19")
        );
        assert!(
            Format::Gzip
                .codec(Some("10"))
                .unwrap_err()
                .contains("1 to 9")
        );
        assert_eq!(Format::Gzip.suffix(), ".gz");
        assert_eq!(Format::Zstd.content_type(), "application/zstd");
    }
}
