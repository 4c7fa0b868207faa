//! Pure, synchronous kernels: digests and the compression codecs. Nothing in
//! here knows about sockets, async or HTTP, so each piece can be unit-tested
//! and benchmarked alone.

pub mod codec;
pub mod digest;
pub mod gzip;
pub mod zstd;

pub use codec::{Block, BlockCutter, BlockInput, Codec, Encode, Format, Joined};
pub use digest::{Algorithm, AlgorithmList, Digests, Encoding, MultiHasher};
pub use gzip::Level;
