//! Pure, synchronous kernels: digests and gzip. Nothing in here knows about
//! sockets, async or HTTP, so each piece can be unit-tested and benchmarked alone.

pub mod digest;
pub mod gzip;
pub mod pgzip;
pub mod zstd;

pub use digest::{Algorithm, AlgorithmList, Digests, Encoding, MultiHasher};
pub use gzip::{GzipStream, Level};
