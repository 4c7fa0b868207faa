//! One pass over the data feeds every requested digest.

use std::fmt;

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

/// A digest algorithm the API offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Sha512,
    Sha1,
    Md5,
    Blake3,
    Crc32c,
}

impl Algorithm {
    /// Every algorithm, in the order error messages list them.
    pub const ALL: [Algorithm; 6] = [
        Algorithm::Sha256,
        Algorithm::Sha512,
        Algorithm::Sha1,
        Algorithm::Md5,
        Algorithm::Blake3,
        Algorithm::Crc32c,
    ];

    /// The lowercase name used in URLs and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
            Algorithm::Sha1 => "sha1",
            Algorithm::Md5 => "md5",
            Algorithm::Blake3 => "blake3",
            Algorithm::Crc32c => "crc32c",
        }
    }

    /// Looks a name up, ignoring ASCII case.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// "sha256, sha512, ..." for error messages.
    pub fn valid_names() -> String {
        Algorithm::ALL.map(Algorithm::name).join(", ")
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A non-empty list of distinct algorithms, in the order the client asked for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlgorithmList(Vec<Algorithm>);

/// Why an `alg=` value was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum AlgorithmError {
    Empty,
    Unknown(String),
}

impl fmt::Display for AlgorithmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlgorithmError::Empty => write!(
                f,
                "alg must name at least one algorithm; valid: {}",
                Algorithm::valid_names()
            ),
            AlgorithmError::Unknown(name) => write!(
                f,
                "unknown algorithm '{}'; valid: {}",
                name.escape_default(),
                Algorithm::valid_names()
            ),
        }
    }
}

impl AlgorithmList {
    /// SHA-256 alone, the default when no `alg` is given.
    pub fn default_list() -> Self {
        AlgorithmList(vec![Algorithm::Sha256])
    }

    /// Parses a comma list such as `sha256,blake3`. Duplicates are kept once.
    pub fn parse(list: &str) -> Result<Self, AlgorithmError> {
        let mut algs = Vec::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let alg =
                Algorithm::from_name(part).ok_or_else(|| AlgorithmError::Unknown(part.into()))?;
            if !algs.contains(&alg) {
                algs.push(alg);
            }
        }
        if algs.is_empty() {
            return Err(AlgorithmError::Empty);
        }
        Ok(AlgorithmList(algs))
    }

    /// The algorithms, first one is the "primary" digest.
    pub fn as_slice(&self) -> &[Algorithm] {
        &self.0
    }
}

enum State {
    Sha256(Sha256),
    Sha512(Sha512),
    Sha1(Sha1),
    Md5(Md5),
    // Boxed: the BLAKE3 hasher is ~2 KiB and would bloat every variant.
    Blake3(Box<blake3::Hasher>),
    Crc32c(u32),
}

impl State {
    fn new(alg: Algorithm) -> State {
        match alg {
            Algorithm::Sha256 => State::Sha256(Sha256::new()),
            Algorithm::Sha512 => State::Sha512(Sha512::new()),
            Algorithm::Sha1 => State::Sha1(Sha1::new()),
            Algorithm::Md5 => State::Md5(Md5::new()),
            Algorithm::Blake3 => State::Blake3(Box::new(blake3::Hasher::new())),
            Algorithm::Crc32c => State::Crc32c(0),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            State::Sha256(h) => h.update(data),
            State::Sha512(h) => h.update(data),
            State::Sha1(h) => h.update(data),
            State::Md5(h) => h.update(data),
            State::Blake3(h) => {
                h.update(data);
            }
            State::Crc32c(c) => *c = crc32c::crc32c_append(*c, data),
        }
    }

    fn finish_hex(self) -> String {
        match self {
            State::Sha256(h) => to_hex(&h.finalize()),
            State::Sha512(h) => to_hex(&h.finalize()),
            State::Sha1(h) => to_hex(&h.finalize()),
            State::Md5(h) => to_hex(&h.finalize()),
            State::Blake3(h) => to_hex(h.finalize().as_bytes()),
            // Big-endian, as `crc32c` tools and most specs print it.
            State::Crc32c(c) => to_hex(&c.to_be_bytes()),
        }
    }
}

/// Computes several digests over one stream of bytes.
pub struct MultiHasher {
    states: Vec<(Algorithm, State)>,
    bytes: u64,
}

impl MultiHasher {
    pub fn new(algs: &AlgorithmList) -> Self {
        MultiHasher {
            states: algs.0.iter().map(|&a| (a, State::new(a))).collect(),
            bytes: 0,
        }
    }

    /// Feeds the next piece of the stream to every digest.
    pub fn update(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        for (_, state) in &mut self.states {
            state.update(data);
        }
    }

    /// Bytes fed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn finish(self) -> Digests {
        Digests {
            bytes: self.bytes,
            entries: self
                .states
                .into_iter()
                .map(|(a, s)| (a, s.finish_hex()))
                .collect(),
        }
    }
}

/// Finished digests, lowercase hex, in request order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digests {
    pub bytes: u64,
    pub entries: Vec<(Algorithm, String)>,
}

impl Digests {
    /// The first requested digest, which the API reports as `hash`.
    pub fn primary(&self) -> (Algorithm, &str) {
        let (alg, hex) = &self.entries[0];
        (*alg, hex)
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.extend_from_slice(&[DIGITS[(b >> 4) as usize], DIGITS[(b & 15) as usize]]);
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> AlgorithmList {
        AlgorithmList::parse("sha256,sha512,sha1,md5,blake3,crc32c").unwrap()
    }

    #[test]
    fn known_vectors_of_abc() {
        let mut h = MultiHasher::new(&all());
        h.update(b"abc");
        let d = h.finish();
        let get = |a| d.entries.iter().find(|(x, _)| *x == a).unwrap().1.clone();
        assert_eq!(
            get(Algorithm::Sha256),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            get(Algorithm::Sha1),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(get(Algorithm::Md5), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            get(Algorithm::Sha512),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
        assert_eq!(
            get(Algorithm::Blake3),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        // RFC 3720 check value for "123456789" is e3069283; "abc" is 364b3fb7.
        assert_eq!(get(Algorithm::Crc32c), "364b3fb7");
        assert_eq!(d.bytes, 3);
    }

    #[test]
    fn crc32c_check_value() {
        let mut h = MultiHasher::new(&AlgorithmList::parse("crc32c").unwrap());
        h.update(b"123456789");
        assert_eq!(h.finish().entries[0].1, "e3069283");
    }

    #[test]
    fn split_feeding_equals_one_shot() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let mut one = MultiHasher::new(&all());
        one.update(&data);
        let mut parts = MultiHasher::new(&all());
        for piece in data.chunks(977) {
            parts.update(piece);
        }
        assert_eq!(one.finish(), parts.finish());
    }

    #[test]
    fn parse_lists() {
        assert_eq!(
            AlgorithmList::parse("BLAKE3, sha256,blake3")
                .unwrap()
                .as_slice(),
            &[Algorithm::Blake3, Algorithm::Sha256]
        );
        assert_eq!(AlgorithmList::parse(" , "), Err(AlgorithmError::Empty));
        let err = AlgorithmList::parse("sha256,sha3").unwrap_err();
        assert_eq!(err, AlgorithmError::Unknown("sha3".into()));
        assert!(err.to_string().contains("valid: sha256, sha512"));
    }
}
