//! The directory backend: `root.rs` behind the storage interface.
//!
//! Every open goes through `Root` (lexical checks already done by `RelPath`,
//! then `openat2(RESOLVE_BENEATH)` or the no-symlink walk), and every write
//! through `PendingFile` (temporary, fsync, rename, fsync). All of it is
//! blocking, so all of it is `Work::Blocking`, run on the CPU pool.

use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;

use super::{
    BoxFuture, Identity, Meta, Object, Piece, ReadAt, Storage, StorageError, Upload, Work,
};
use crate::root::{OpenError, PendingFile, RelPath, Root};

pub struct LocalStorage {
    root: Arc<Root>,
}

impl LocalStorage {
    pub fn new(root: Arc<Root>) -> LocalStorage {
        LocalStorage { root }
    }
}

/// Fills `buf` unless the file ends first; returns the bytes read.
pub fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl Storage for LocalStorage {
    fn describe(&self) -> String {
        self.root.path().display().to_string()
    }

    fn open(&self, key: &RelPath) -> Work<Box<dyn Object>> {
        let (root, key) = (Arc::clone(&self.root), key.clone());
        Work::Blocking(Box::new(move || {
            let (file, meta) = root.open_file(&key).map_err(from_open)?;
            Ok(LocalObject::boxed(file, &meta))
        }))
    }

    fn open_now(&self, key: &RelPath) -> Option<Result<Box<dyn Object>, StorageError>> {
        let opened = self.root.open_file_now(key)?;
        Some(
            opened
                .map_err(from_open)
                .map(|(file, meta)| LocalObject::boxed(file, &meta)),
        )
    }

    fn create(&self, key: &RelPath) -> Work<Box<dyn Upload>> {
        let (root, key) = (Arc::clone(&self.root), key.clone());
        Work::Blocking(Box::new(move || {
            let dir = root.open_parent_dir(&key).map_err(from_open)?;
            let (_, name) = key.split_parent();
            let pending = PendingFile::create(dir, name).map_err(StorageError::Io)?;
            Ok(Box::new(LocalUpload(pending)) as Box<dyn Upload>)
        }))
    }
}

fn from_open(e: OpenError) -> StorageError {
    match e {
        OpenError::NotFound => StorageError::NotFound,
        OpenError::Forbidden(why) => StorageError::Forbidden(why),
        OpenError::NotAFile => StorageError::NotAFile,
        OpenError::Io(e) => StorageError::Io(e),
    }
}

/// A file's identity: device, inode, size, mtime and ctime (nanoseconds).
pub fn identity(meta: &Metadata) -> Identity {
    Identity::File {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
    }
}

struct LocalFile(File);

impl ReadAt for LocalFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn read_at_now(&self, buf: &mut [u8], offset: u64) -> Option<io::Result<usize>> {
        crate::root::pread_now(&self.0, buf, offset)
    }

    fn map(&self, offset: u64, len: usize) -> Option<crate::sys::GuardedMap> {
        // A file system that cannot map (EINVAL, ENODEV) is read instead.
        crate::sys::map_guarded(&self.0, offset, len).ok().flatten()
    }
}

/// Read by offset, up to the size at open: a file that grows meanwhile is
/// read as it was (its first `size` bytes), one that shrinks fails with
/// `Changed` when a piece comes up short.
struct LocalObject {
    meta: Meta,
    file: Arc<LocalFile>,
    offset: u64,
}

impl LocalObject {
    /// `meta`: the fstat `Root` made when it opened `file` (one per open:
    /// on a small hot file each syscall is a visible share of the request).
    fn boxed(file: File, meta: &Metadata) -> Box<dyn Object> {
        Box::new(LocalObject {
            meta: Meta {
                size: meta.len(),
                identity: identity(meta),
            },
            file: Arc::new(LocalFile(file)),
            offset: 0,
        })
    }
}

impl Object for LocalObject {
    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn next(&mut self, max: usize) -> BoxFuture<'_, Result<Option<Piece>, StorageError>> {
        let left = self.meta.size - self.offset;
        let piece = (left > 0).then(|| {
            let len = left.min(max as u64) as usize;
            let piece = Piece::At {
                src: Arc::clone(&self.file) as Arc<dyn ReadAt>,
                offset: self.offset,
                len,
            };
            self.offset += len as u64;
            piece
        });
        Box::pin(std::future::ready(Ok(piece)))
    }

    fn identity_after(&self) -> Result<Identity, StorageError> {
        let meta = self.file.0.metadata().map_err(StorageError::Io)?;
        // Deleted while read: the bytes came from an unlinked inode, so an
        // output beside the name would describe a file that no longer exists.
        if meta.nlink() == 0 {
            return Err(StorageError::Changed(
                "was deleted while it was read".into(),
            ));
        }
        Ok(identity(&meta))
    }
}

struct LocalUpload(PendingFile);

impl Upload for LocalUpload {
    fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.0.file().write_all(data).map_err(StorageError::Io)
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<(), StorageError>> {
        // Every write went to the file already.
        Box::pin(std::future::ready(Ok(())))
    }

    fn commit(self: Box<Self>) -> Work<()> {
        Work::Blocking(Box::new(move || self.0.commit().map_err(StorageError::Io)))
    }
}
