//! Incremental gzip: feed input pieces, collect output pieces.

use std::fmt;
use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;

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
                    "level must be an integer from 1 to 9, got '{}'",
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

/// A gzip member produced piece by piece. The encoder writes into a `Vec`
/// that is drained after every call, so memory is bounded by one input piece
/// plus zlib's window, whatever the stream length.
pub struct GzipStream {
    encoder: GzEncoder<Vec<u8>>,
    bytes_in: u64,
    bytes_out: u64,
}

impl GzipStream {
    pub fn new(level: Level) -> Self {
        GzipStream {
            encoder: GzEncoder::new(Vec::with_capacity(64 * 1024), Compression::new(level.0)),
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// Compresses `input` and returns whatever output is ready (possibly empty).
    pub fn compress(&mut self, input: &[u8]) -> Vec<u8> {
        self.bytes_in += input.len() as u64;
        // Writing into a Vec cannot fail.
        self.encoder
            .write_all(input)
            .expect("gzip into memory cannot fail");
        let out = std::mem::take(self.encoder.get_mut());
        self.bytes_out += out.len() as u64;
        out
    }

    /// Flushes the last block and the gzip trailer.
    pub fn finish(mut self) -> Vec<u8> {
        let tail = std::mem::take(self.encoder.get_mut());
        let mut rest = self.encoder.finish().expect("gzip into memory cannot fail");
        let mut out = tail;
        out.append(&mut rest);
        out
    }

    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    fn roundtrip(data: &[u8], piece: usize, level: Level) -> Vec<u8> {
        let mut gz = GzipStream::new(level);
        let mut out = Vec::new();
        for p in data.chunks(piece.max(1)) {
            out.extend(gz.compress(p));
        }
        out.extend(gz.finish());
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
}
