//! The served source behind one interface: a directory (`local`) or the
//! objects under a prefix of an S3 bucket (`s3`). Handlers never learn which.
//!
//! The interface is small: open a key (size and identity), read it piece by
//! piece, and write an output that appears under its name only when it is
//! complete. What differs between backends is *where* the waiting happens,
//! and each backend declares it rather than hiding it:
//! - `Work::Blocking` is run by the caller on a CPU pool thread (opening,
//!   fsync and rename on a local disk); `Work::Async` on the request's task
//!   (a round trip to the store). A blocking disk call never runs on an I/O
//!   thread, and a network wait never holds a pool thread.
//! - `Object::next` runs on the request's task and only *describes* the next
//!   piece. A local piece is read by the pool job that uses it (`pread`, in
//!   the same job as the hashing); an object-store piece has already been
//!   fetched by the object's read-ahead. The kernels stay synchronous.

pub mod local;
pub mod s3;
mod s3_client;

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::StorageConfig;
use crate::metrics::Slot;
use crate::root::RelPath;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A step of backend work, and where the caller must run it.
pub enum Work<T> {
    /// Blocking system calls: run on a CPU pool thread.
    Blocking(Box<dyn FnOnce() -> Result<T, StorageError> + Send>),
    /// Network waits: await on the request's task.
    Async(BoxFuture<'static, Result<T, StorageError>>),
}

/// The served source.
pub trait Storage: Send + Sync + 'static {
    /// What is served, for logs: the directory, or `s3://bucket/prefix`.
    fn describe(&self) -> String;

    /// Opens `key` for reading.
    fn open(&self, key: &RelPath) -> Work<Box<dyn Object>>;

    /// Opens `key` on the calling thread, only if that cannot block (a
    /// local path whose lookup the kernel has cached); `None` when it would
    /// wait: use `open`. Saves a pool job, and a wait behind busy threads,
    /// for each request of a hot file.
    fn open_now(&self, _key: &RelPath) -> Option<Result<Box<dyn Object>, StorageError>> {
        None
    }

    /// Starts writing `key`. Nothing appears under that name before
    /// `Upload::commit` has finished.
    fn create(&self, key: &RelPath) -> Work<Box<dyn Upload>>;

    /// Called once when the server stops: waits, within a bound, for
    /// background clean-up (aborts of abandoned uploads) to finish.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// An object open for reading, read front to back.
pub trait Object: Send {
    /// Size and identity when it was opened.
    fn meta(&self) -> &Meta;

    /// The next piece, at most `max` bytes; `None` after the last byte of
    /// `meta().size`. Runs on the request's task.
    fn next(&mut self, max: usize) -> BoxFuture<'_, Result<Option<Piece>, StorageError>>;

    /// The identity now, after reading: equal to `meta().identity` when the
    /// bytes read were one version. `Changed` when the source is known to
    /// have gone (a file deleted while read). Cheap: one `fstat` at most.
    fn identity_after(&self) -> Result<Identity, StorageError>;
}

/// An output being written; see `Storage::create`. Dropped before its commit
/// finished, it leaves nothing behind: no partial object, no temporary, no
/// unfinished multipart upload.
pub trait Upload: Send {
    /// Appends `data`. Runs on a pool thread (a local write is a system call).
    fn write(&mut self, data: &[u8]) -> Result<(), StorageError>;

    /// `write` on the calling thread, only if it cannot block (the backend
    /// buffers in memory); `None` when it would, and nothing is written: use
    /// `write` on a pool thread. Saves a pool job per write when the pool
    /// is busy compressing blocks in parallel.
    fn write_now(&mut self, _data: &[u8]) -> Option<Result<(), StorageError>> {
        None
    }

    /// Sends what `write` buffered once there is enough for a part, and waits
    /// while too many parts are in flight. Runs on the request's task after
    /// each `write`.
    fn flush(&mut self) -> BoxFuture<'_, Result<(), StorageError>>;

    /// Makes the output visible under its name, complete.
    fn commit(self: Box<Self>) -> Work<()>;
}

/// Size and identity of an opened object.
#[derive(Clone, Debug)]
pub struct Meta {
    pub size: u64,
    pub identity: Identity,
}

/// What identifies one version of a source's content without reading it;
/// the digest cache's key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// Any write, truncation, rename-over or touch changes one of these.
    File {
        dev: u64,
        ino: u64,
        size: u64,
        mtime_ns: i128,
        ctime_ns: i128,
    },
    /// The store gives every write a new ETag.
    Object {
        bucket: Arc<str>,
        key: Arc<str>,
        etag: Arc<str>,
        size: u64,
        last_modified_ns: i128,
    },
}

impl Identity {
    /// When the content last changed, if that is how changes are detected:
    /// a file changed within one timestamp tick of a hash may change again
    /// unseen (see `digest_cache`). `None` for objects, whose ETag changes
    /// with every write whatever the clock says.
    pub fn changed_ns(&self) -> Option<i128> {
        match self {
            Identity::File {
                mtime_ns, ctime_ns, ..
            } => Some(*mtime_ns.max(ctime_ns)),
            Identity::Object { .. } => None,
        }
    }
}

/// A part of a source that a pool job can read without waiting on the
/// network: cheap to clone, read with `with_bytes` on the pool thread.
#[derive(Clone)]
pub enum Piece {
    /// Already in memory: fetched by an object's read-ahead.
    Bytes(Bytes),
    /// `len` bytes at `offset` of a positional source (a local file), read
    /// by the job that uses them.
    At {
        src: Arc<dyn ReadAt>,
        offset: u64,
        len: usize,
    },
}

/// A source read by offset, from any thread (`pread`).
pub trait ReadAt: Send + Sync {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// `read_at` only if it cannot block (the bytes are in memory); `None`
    /// when it would wait for a device, or the source cannot tell.
    fn read_at_now(&self, _buf: &mut [u8], _offset: u64) -> Option<io::Result<usize>> {
        None
    }

    /// `len` bytes at `offset` as a guarded mapping of the page cache (see
    /// `sys::map_guarded`); `None` when the source is not a mappable file,
    /// or no guard window is free: read instead.
    fn map(&self, _offset: u64, _len: usize) -> Option<crate::sys::GuardedMap> {
        None
    }
}

impl Piece {
    pub fn len(&self) -> usize {
        match self {
            Piece::Bytes(b) => b.len(),
            Piece::At { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `n` bytes of this piece, and the rest if any.
    pub fn split(self, n: usize) -> (Piece, Option<Piece>) {
        if n >= self.len() {
            return (self, None);
        }
        match self {
            Piece::Bytes(b) => (Piece::Bytes(b.slice(..n)), Some(Piece::Bytes(b.slice(n..)))),
            Piece::At { src, offset, len } => (
                Piece::At {
                    src: Arc::clone(&src),
                    offset,
                    len: n,
                },
                Some(Piece::At {
                    src,
                    offset: offset + n as u64,
                    len: len - n,
                }),
            ),
        }
    }

    /// The last `n` bytes of this piece (all of it if shorter).
    pub fn tail(&self, n: usize) -> Piece {
        let n = n.min(self.len());
        match self {
            Piece::Bytes(b) => Piece::Bytes(b.slice(b.len() - n..)),
            Piece::At { src, offset, len } => Piece::At {
                src: Arc::clone(src),
                offset: offset + (len - n) as u64,
                len: n,
            },
        }
    }

    /// Copies the piece into `out`, which must be `len()` bytes long. A
    /// source that now ends early has shrunk since it was opened: `Changed`.
    pub fn read_into(&self, out: &mut [u8]) -> Result<(), StorageError> {
        debug_assert_eq!(out.len(), self.len());
        match self {
            Piece::Bytes(b) => {
                out.copy_from_slice(b);
                Ok(())
            }
            Piece::At { src, offset, .. } => {
                let mut filled = 0;
                while filled < out.len() {
                    match src.read_at(&mut out[filled..], offset + filled as u64) {
                        Ok(0) => {
                            return Err(StorageError::Changed("shrank while it was read".into()));
                        }
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(StorageError::Io(e)),
                    }
                }
                Ok(())
            }
        }
    }

    /// `with_bytes` on the calling thread, only if no byte has to wait for a
    /// device (they are in memory, or in the page cache); `None` otherwise,
    /// and `f` is not called. For an I/O thread, where a blocking read
    /// would stall every connection it serves.
    pub fn with_bytes_now<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Option<Result<R, StorageError>> {
        let Piece::At { src, offset, len } = self else {
            return Some(self.with_bytes(f));
        };
        with_buffer(*len, |buf| {
            let mut filled = 0;
            while filled < buf.len() {
                match src.read_at_now(&mut buf[filled..], offset + filled as u64)? {
                    Ok(0) => {
                        let e = StorageError::Changed("shrank while it was read".into());
                        return Some(Err(e));
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Some(Err(StorageError::Io(e))),
                }
            }
            Some(Ok(f(buf)))
        })
    }

    /// `with_bytes` without the copy for a local piece of at least `MAP_MIN`
    /// bytes: `f` reads them where the page cache holds them. If the file
    /// was cut short meanwhile, `f` has seen zeros where bytes are missing
    /// and the result is `Changed`: so `f` may only fold the bytes into
    /// what the caller drops on an error (a digest), never send or write
    /// them.
    pub fn with_bytes_mapped<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Result<R, StorageError> {
        if let Piece::At { src, offset, len } = self
            && *len >= MAP_MIN
            && let Some(map) = src.map(*offset, *len)
        {
            let r = f(map.bytes());
            if map.shrank() {
                return Err(StorageError::Changed("shrank while it was read".into()));
            }
            return Ok(r);
        }
        self.with_bytes(f)
    }

    /// Calls `f` with the piece's bytes, reading them first if need be into
    /// this pool thread's buffer (pieces for jobs are at most `PIECE_MAX`).
    pub fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Result<R, StorageError> {
        match self {
            Piece::Bytes(b) => Ok(f(b)),
            Piece::At { len, .. } => with_buffer(*len, |buf| {
                self.read_into(buf)?;
                Ok(f(buf))
            }),
        }
    }
}

/// The largest piece a pool job takes: 1 MiB is ~0.5 ms of SHA-256 and
/// ~10 ms of gzip, short enough to keep the queue moving.
pub const PIECE_MAX: usize = 1 << 20;

/// Smallest local piece hashed from a mapping rather than a copy: below it,
/// the mmap, page-table and munmap calls cost about what copying does.
pub const MAP_MIN: usize = 256 << 10;

thread_local! {
    /// One read buffer per pool thread, reused by every job it runs.
    static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with `len` bytes of this thread's buffer.
pub fn with_buffer<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    BUFFER.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < len {
            b.resize(len.max(PIECE_MAX), 0);
        }
        f(&mut b[..len])
    })
}

/// Why a storage operation failed, without the key: the caller adds it.
#[derive(Debug)]
pub enum StorageError {
    /// No such file or object.
    NotFound,
    /// The path resolves outside the root, or the file system said no.
    Forbidden(&'static str),
    /// The store refused our credentials or this key (HTTP 401/403).
    Denied(String),
    /// Exists, but is not a regular file.
    NotAFile,
    /// The key cannot name an object of this backend (says why).
    BadKey(String),
    /// The source changed while it was read (says how).
    Changed(String),
    /// The store cannot be reached, or answered with errors, after the retries.
    Unavailable(String),
    /// The store did not answer within the deadline.
    Timeout(String),
    /// A local system call failed.
    Io(io::Error),
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::NotFound => f.write_str("not found"),
            StorageError::Forbidden(why) => f.write_str(why),
            StorageError::NotAFile => f.write_str("not a regular file"),
            StorageError::Denied(why)
            | StorageError::BadKey(why)
            | StorageError::Changed(why)
            | StorageError::Unavailable(why)
            | StorageError::Timeout(why) => f.write_str(why),
            StorageError::Io(e) => e.fmt(f),
        }
    }
}

/// What `--root` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootArg {
    /// A directory.
    Dir(PathBuf),
    /// `s3://BUCKET[/PREFIX]`.
    Bucket(s3::Location),
}

impl RootArg {
    /// Parses `--root`: `s3://BUCKET[/PREFIX]`, or anything else as a directory.
    pub fn parse(text: &str) -> Result<RootArg, String> {
        match text.strip_prefix("s3://") {
            Some(rest) => s3::Location::parse(rest).map(RootArg::Bucket),
            None => Ok(RootArg::Dir(PathBuf::from(text))),
        }
    }
}

impl fmt::Display for RootArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootArg::Dir(p) => p.display().fmt(f),
            RootArg::Bucket(l) => l.fmt(f),
        }
    }
}

/// What a server serves.
pub struct Served {
    pub storage: Arc<dyn Storage>,
    /// The directory, when `--root` is one: tree manifests walk it directly.
    pub dir: Option<Arc<crate::root::Root>>,
}

/// `--root`, checked: an open directory, or a store configuration.
pub enum Backend {
    Local(crate::root::Root),
    /// Boxed: the client's settings are large, and this is built once.
    S3(Box<s3::Config>),
}

impl Backend {
    /// Opens the directory, or reads the store's settings from the flags and
    /// the AWS environment. With `check`, a store must also answer (one
    /// listing of at most one key): the supervisor or single process checks
    /// once at start; workers do not, so that a store that is down for a
    /// moment does not crash-loop them. The error is a sentence for the
    /// operator (exit code 2), free of secrets.
    pub fn open(args: &StorageConfig, check: bool) -> Result<Backend, String> {
        match &args.root {
            RootArg::Dir(path) => crate::root::Root::open(path)
                .map(Backend::Local)
                .map_err(|e| format!("cannot serve --root {}: {e}", path.display())),
            RootArg::Bucket(location) => {
                let config = s3::Config::from_args(location, args)?;
                if check {
                    config.check()?;
                }
                Ok(Backend::S3(Box::new(config)))
            }
        }
    }

    /// The storage handlers use; `metrics` records the store's requests.
    pub fn into_storage(self, metrics: &'static Slot) -> Result<Served, String> {
        Ok(match self {
            Backend::Local(root) => {
                let root = Arc::new(root);
                Served {
                    storage: Arc::new(local::LocalStorage::new(Arc::clone(&root))),
                    dir: Some(root),
                }
            }
            Backend::S3(config) => Served {
                storage: Arc::new(s3::S3Storage::new(*config, metrics)?),
                dir: None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Bytes10;
    impl ReadAt for Bytes10 {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let data = b"0123456789";
            let start = (offset as usize).min(data.len());
            let n = buf.len().min(data.len() - start);
            buf[..n].copy_from_slice(&data[start..start + n]);
            Ok(n)
        }
    }

    /// Both kinds of piece give the same bytes, tails included, and a
    /// positional source that ends early is reported as changed.
    #[test]
    fn pieces_read_alike() {
        let mem = Piece::Bytes(Bytes::from_static(b"3456789"));
        let at = Piece::At {
            src: Arc::new(Bytes10),
            offset: 3,
            len: 7,
        };
        for p in [&mem, &at] {
            assert_eq!(p.with_bytes(|b| b.to_vec()).unwrap(), b"3456789");
            assert_eq!(p.tail(2).with_bytes(|b| b.to_vec()).unwrap(), b"89");
            assert_eq!(p.tail(99).len(), 7);
        }
        let past_end = Piece::At {
            src: Arc::new(Bytes10),
            offset: 8,
            len: 4,
        };
        assert!(matches!(
            past_end.with_bytes(|_| ()),
            Err(StorageError::Changed(_))
        ));
    }

    #[test]
    fn root_argument() {
        assert_eq!(
            RootArg::parse("/srv/data"),
            Ok(RootArg::Dir("/srv/data".into()))
        );
        let RootArg::Bucket(l) = RootArg::parse("s3://bkt/a/b/").unwrap() else {
            panic!("not a bucket")
        };
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("bkt", "a/b"));
        assert_eq!(l.to_string(), "s3://bkt/a/b");
        for bad in [
            "s3://",
            "s3:///x",
            "s3://bkt/../x",
            "s3://bkt/a//c",
            "s3://B_x",
        ] {
            assert!(RootArg::parse(bad).is_err(), "{bad}");
        }
    }
}
