//! Parallel gzip, pigz's method: the input is cut into blocks that are
//! deflated independently, each primed with the 32 KiB before it as a
//! dictionary (so the ratio stays close to a serial stream), each ending on a
//! byte boundary (sync flush), and joined into one gzip member whose CRC-32
//! is combined from the blocks' CRCs. Every function here is pure: callers
//! run the blocks on whatever threads they like and join them in order.

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

use super::gzip::Level;

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

/// One compressed block and the CRC of its input.
pub struct Block {
    pub deflated: Vec<u8>,
    pub crc: Crc,
}

/// Deflates `input` as one block of a larger stream. `dict` is the (up to
/// 32 KiB of) input just before this block; `last` closes the deflate stream.
pub fn compress_block(input: &[u8], dict: &[u8], level: Level, last: bool) -> Block {
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
    Block { deflated: out, crc }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::GzipStream;
    use flate2::read::GzDecoder;
    use std::io::Read;

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
            let b = compress_block(block, dict, level, i + 1 == blocks.len());
            out.extend_from_slice(&b.deflated);
            crc.combine(&b.crc);
        }
        out.extend_from_slice(&trailer(&crc));
        out
    }

    fn text(len: usize) -> Vec<u8> {
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

    #[test]
    fn joins_into_one_valid_member() {
        for len in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 5 * BLOCK + 777] {
            let data = text(len);
            let gz = parallel_gzip(&data, Level::DEFAULT);
            let mut back = Vec::new();
            GzDecoder::new(&gz[..]).read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "len {len}");
        }
    }

    #[test]
    fn ratio_is_close_to_serial() {
        let data = text(4 << 20);
        let par = parallel_gzip(&data, Level::DEFAULT).len();
        let mut s = GzipStream::new(Level::DEFAULT);
        let mut serial = s.compress(&data);
        serial.extend(s.finish());
        let ratio = par as f64 / serial.len() as f64;
        assert!(
            ratio < 1.01,
            "parallel {par} vs serial {} bytes",
            serial.len()
        );
    }
}
