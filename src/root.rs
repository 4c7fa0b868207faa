//! The served root: the only directory tree hashpress reads or writes.
//!
//! Paths from URLs are checked twice. First lexically (`RelPath::parse`):
//! percent-decoding once, then refusing `..`, absolute paths, backslashes, NUL
//! and over-long names. Then by the kernel: every open is relative to a handle
//! on the root directory, with `openat2(RESOLVE_BENEATH)`, so a symlink (or a
//! directory swapped for one mid-request) that leads outside fails with EXDEV
//! instead of being followed. Where `openat2` is missing (Linux < 5.6) the
//! fallback walks the path one component at a time with `O_NOFOLLOW`, which
//! refuses every symlink: stricter, never looser.

use std::ffi::{CString, OsStr, OsString};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Longest accepted path, in bytes after decoding (Linux's PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest accepted path component, in bytes (Linux's NAME_MAX).
pub const MAX_NAME_BYTES: usize = 255;

/// Why a path from a URL was refused before touching the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// Malformed: empty, bad percent-encoding, NUL or control bytes, too long (400).
    Malformed(String),
    /// Tries to leave the root: `..`, absolute, backslashes (403).
    Escapes(String),
}

/// A path relative to the root, checked lexically: no `..`, no leading `/`,
/// no empty or `.` components, no NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath {
    /// Components joined by '/', as raw bytes (file names need not be UTF-8).
    bytes: Vec<u8>,
}

impl RelPath {
    /// Parses the still percent-encoded tail of a URL path.
    pub fn parse(encoded: &str) -> Result<RelPath, PathError> {
        let decoded = percent_decode(encoded.as_bytes())
            .ok_or_else(|| PathError::Malformed("the path has an invalid %-escape".into()))?;
        if decoded.is_empty() {
            return Err(PathError::Malformed(
                "the path is empty: name a file".into(),
            ));
        }
        if decoded.len() > MAX_PATH_BYTES {
            return Err(PathError::Malformed(format!(
                "the path is {} bytes long; the limit is {MAX_PATH_BYTES}",
                decoded.len()
            )));
        }
        if decoded.contains(&0) {
            return Err(PathError::Malformed("the path contains a NUL byte".into()));
        }
        if decoded.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(PathError::Malformed(
                "the path contains control characters".into(),
            ));
        }
        if decoded.contains(&b'\\') {
            return Err(PathError::Escapes(
                "backslashes are refused in paths; separate directories with '/'".into(),
            ));
        }
        if decoded[0] == b'/' {
            return Err(PathError::Escapes(
                "absolute paths are refused; paths are relative to the served root".into(),
            ));
        }
        let mut parts: Vec<&[u8]> = Vec::new();
        for part in decoded.split(|&b| b == b'/') {
            match part {
                b"" | b"." => continue,
                b".." => {
                    return Err(PathError::Escapes(
                        "'..' segments are refused; paths stay under the served root".into(),
                    ));
                }
                _ if part.len() > MAX_NAME_BYTES => {
                    return Err(PathError::Malformed(format!(
                        "a path component is {} bytes long; the limit is {MAX_NAME_BYTES}",
                        part.len()
                    )));
                }
                _ => parts.push(part),
            }
        }
        if parts.is_empty() {
            return Err(PathError::Malformed("the path names no file".into()));
        }
        Ok(RelPath {
            bytes: parts.join(&b'/'),
        })
    }

    /// A path the tree walk built from names it listed under a checked
    /// start: each name came from the directory itself, so it holds no
    /// '/', is not "." or "..", and has no NUL.
    pub(crate) fn from_walk(bytes: Vec<u8>) -> RelPath {
        RelPath { bytes }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(&self.bytes)
    }

    /// For JSON answers and logs (lossy where the name is not UTF-8).
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The directory part ("" for a file at the root) and the file name.
    pub fn split_parent(&self) -> (&[u8], &[u8]) {
        match self.bytes.iter().rposition(|&b| b == b'/') {
            Some(i) => (&self.bytes[..i], &self.bytes[i + 1..]),
            None => (&[], &self.bytes[..]),
        }
    }

    /// This path with `suffix` appended to the file name.
    pub fn with_suffix(&self, suffix: &str) -> Result<RelPath, PathError> {
        let mut bytes = self.bytes.clone();
        bytes.extend_from_slice(suffix.as_bytes());
        let (_, name) = RelPath {
            bytes: bytes.clone(),
        }
        .split_parent_owned();
        if name.len() > MAX_NAME_BYTES {
            return Err(PathError::Malformed(format!(
                "the output name would be {} bytes long; the limit is {MAX_NAME_BYTES}",
                name.len()
            )));
        }
        Ok(RelPath { bytes })
    }

    fn split_parent_owned(&self) -> (Vec<u8>, Vec<u8>) {
        let (d, n) = self.split_parent();
        (d.to_vec(), n.to_vec())
    }
}

/// Decodes %XX escapes once. `None` on a broken escape. '+' stays '+'
/// (it only means space in query strings).
pub fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            let hi = hex_val(*input.get(i + 1)?)?;
            let lo = hex_val(*input.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    Some(out)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Why opening a path under the root failed.
#[derive(Debug)]
pub enum OpenError {
    /// No such file or directory (404).
    NotFound,
    /// Resolution left the root (symlink escape) or permission denied (403).
    Forbidden(&'static str),
    /// Exists but is not a regular file (400).
    NotAFile,
    /// Anything else: a real fault (500, logged).
    Io(io::Error),
}

/// An open handle on the served root directory.
pub struct Root {
    dir: OwnedFd,
    path: PathBuf,
    /// Set once openat2 answered ENOSYS, so we stop asking.
    no_openat2: AtomicBool,
    /// Set once openat2 refused `RESOLVE_CACHED` (Linux < 5.12).
    no_cached: AtomicBool,
}

/// Temporary names must not collide between concurrent writers.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Root {
    /// Opens `path` as the root. It must be a directory.
    pub fn open(path: &Path) -> io::Result<Root> {
        let canonical = path.canonicalize()?;
        let c = cstring(canonical.as_os_str().as_bytes())?;
        let dir = crate::sys::open(&c, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)?;
        Ok(Root {
            dir,
            path: canonical,
            no_openat2: AtomicBool::new(false),
            no_cached: AtomicBool::new(false),
        })
    }

    /// The canonical path of the root, for logs.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens a regular file under the root for reading, with its metadata
    /// (the one fstat that checked it is a file: callers need not ask again).
    pub fn open_file(&self, rel: &RelPath) -> Result<(File, Metadata), OpenError> {
        // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
        // writer forever. It has no effect on regular files.
        let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;
        let fd = self.resolve(self.dir.as_raw_fd(), &rel.bytes, flags, 0)?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(OpenError::Io)?;
        if !meta.is_file() {
            return Err(OpenError::NotAFile);
        }
        Ok((file, meta))
    }

    /// `open_file` only if it cannot block: every component of the path is
    /// in the kernel's lookup caches (`RESOLVE_CACHED`), so no directory has
    /// to be read from a disk. `None` when it would have to wait (or the
    /// kernel cannot tell): open on the pool. Confinement is the same.
    pub fn open_file_now(&self, rel: &RelPath) -> Option<Result<(File, Metadata), OpenError>> {
        if self.no_openat2.load(Ordering::Relaxed) || self.no_cached.load(Ordering::Relaxed) {
            return None;
        }
        let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;
        let fd = match openat2(self.dir.as_raw_fd(), &rel.bytes, flags, 0, RESOLVE_CACHED) {
            Ok(fd) => fd,
            Err(e) => {
                return match e.raw_os_error() {
                    // Not all in the caches (or a rename raced the lookup).
                    Some(libc::EAGAIN) => None,
                    // A kernel older than RESOLVE_CACHED (5.12), or none.
                    Some(libc::EINVAL) | Some(libc::ENOSYS) => {
                        self.no_cached.store(true, Ordering::Relaxed);
                        None
                    }
                    _ => Some(Err(classify(e))),
                };
            }
        };
        let file = File::from(fd);
        Some(match file.metadata() {
            Ok(meta) if meta.is_file() => Ok((file, meta)),
            Ok(_) => Err(OpenError::NotAFile),
            Err(e) => Err(OpenError::Io(e)),
        })
    }

    /// Opens a directory under the root (`None`: the root itself) for a walk.
    pub fn open_dir(&self, rel: Option<&RelPath>) -> Result<OwnedFd, OpenError> {
        let path = rel.map_or(b"." as &[u8], |r| &r.bytes);
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
        self.resolve(self.dir.as_raw_fd(), path, flags, 0)
            .map_err(|e| match e {
                // ENOTDIR means "a file", not "missing", for the last component.
                OpenError::NotFound if self.is_file(path) => OpenError::NotAFile,
                e => e,
            })
    }

    fn is_file(&self, path: &[u8]) -> bool {
        let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;
        self.resolve(self.dir.as_raw_fd(), path, flags, 0)
            .is_ok_and(|fd| File::from(fd).metadata().is_ok_and(|m| m.is_file()))
    }

    /// Opens the directory that would hold `rel`, for creating files in it.
    pub fn open_parent_dir(&self, rel: &RelPath) -> Result<OwnedFd, OpenError> {
        let (dir, _) = rel.split_parent();
        let dir = if dir.is_empty() { b"." as &[u8] } else { dir };
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
        self.resolve(self.dir.as_raw_fd(), dir, flags, 0)
    }

    /// Resolves `path` beneath `base` with openat2, or the careful fallback.
    fn resolve(
        &self,
        base: RawFd,
        path: &[u8],
        flags: i32,
        mode: u32,
    ) -> Result<OwnedFd, OpenError> {
        if !self.no_openat2.load(Ordering::Relaxed) {
            match openat2_beneath(base, path, flags, mode) {
                Ok(fd) => return Ok(fd),
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    self.no_openat2.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(classify(e)),
            }
        }
        open_nofollow_walk(base, path, flags, mode).map_err(classify)
    }
}

fn classify(e: io::Error) -> OpenError {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => OpenError::NotFound,
        Some(libc::EXDEV) | Some(libc::ELOOP) => {
            OpenError::Forbidden("the path resolves outside the served root (through a symlink)")
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            OpenError::Forbidden("permission denied by the file system")
        }
        Some(libc::EISDIR) | Some(libc::ENXIO) | Some(libc::ENODEV) => OpenError::NotAFile,
        Some(libc::ENAMETOOLONG) => OpenError::NotFound,
        _ => OpenError::Io(e),
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_BENEATH: u64 = 0x08;
/// Fail with EAGAIN rather than wait for a lookup that is not cached.
const RESOLVE_CACHED: u64 = 0x20;

fn openat2_beneath(base: RawFd, path: &[u8], flags: i32, mode: u32) -> io::Result<OwnedFd> {
    loop {
        match openat2(base, path, flags, mode, 0) {
            // EAGAIN: a rename raced the lookup; the kernel asks us to retry.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) => {}
            r => return r,
        }
    }
}

/// One openat2 beneath `base`, never through a magic link, with `extra`
/// resolve flags.
fn openat2(base: RawFd, path: &[u8], flags: i32, mode: u32, extra: u64) -> io::Result<OwnedFd> {
    let c = cstring(path)?;
    crate::sys::openat2(
        base,
        &c,
        flags,
        mode,
        RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | extra,
    )
}

/// `pread` only if it cannot block (`RWF_NOWAIT`): the bytes that are in
/// the page cache, from the first; `None` when the first is not (EAGAIN)
/// or the file system cannot tell.
pub fn pread_now(file: &File, buf: &mut [u8], offset: u64) -> Option<io::Result<usize>> {
    match crate::sys::pread_nowait(file.as_raw_fd(), buf, offset) {
        Ok(n) => Some(Ok(n)),
        Err(e) => match e.raw_os_error() {
            Some(libc::EAGAIN)
            | Some(libc::EOPNOTSUPP)
            | Some(libc::EINVAL)
            | Some(libc::ENOSYS) => None,
            _ => Some(Err(e)),
        },
    }
}

/// The fallback: one openat per component, never following a symlink.
fn open_nofollow_walk(base: RawFd, path: &[u8], flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let parts: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .collect();
    let mut current: Option<OwnedFd> = None;
    for (i, part) in parts.iter().enumerate() {
        if *part == b".." {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        let last = i + 1 == parts.len();
        let f = if last {
            flags | libc::O_NOFOLLOW
        } else {
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC
        };
        let c = cstring(part)?;
        let dirfd = current.as_ref().map_or(base, |d| d.as_raw_fd());
        match crate::sys::openat(dirfd, &c, f, mode) {
            Ok(fd) => current = Some(fd),
            // O_DIRECTORY|O_NOFOLLOW on a symlink says ENOTDIR: name the real cause.
            Err(_) if is_symlink_at(dirfd, &c) => {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            Err(e) => return Err(e),
        }
    }
    match current {
        Some(fd) => Ok(fd),
        // "." itself.
        None => crate::sys::dup_cloexec(base),
    }
}

fn is_symlink_at(dirfd: RawFd, name: &CString) -> bool {
    crate::sys::file_type_at(dirfd, name).is_ok_and(|t| t == libc::S_IFLNK)
}

/// A file being written next to its final name, renamed into place only
/// when complete. Dropped before `commit`, it removes itself: no partial
/// output and no stray temporary, whatever path the error took.
pub struct PendingFile {
    dir: OwnedFd,
    temp_name: CString,
    final_name: CString,
    file: Option<File>,
}

impl PendingFile {
    /// Creates a hidden temporary beside `final_name` in `dir`.
    pub fn create(dir: OwnedFd, final_name: &[u8]) -> io::Result<PendingFile> {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut temp = OsString::from(".");
        temp.push(OsStr::from_bytes(final_name));
        temp.push(format!(".tmp-{}-{n}", std::process::id()));
        let mut temp = temp.into_vec();
        // Keep the temporary name within NAME_MAX even for long final names.
        if temp.len() > MAX_NAME_BYTES {
            temp = format!(".hashpress.tmp-{}-{n}", std::process::id()).into_bytes();
        }
        let temp_name = cstring(&temp)?;
        let final_name = cstring(final_name)?;
        let fd = crate::sys::openat(
            dir.as_raw_fd(),
            &temp_name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o644,
        )?;
        Ok(PendingFile {
            dir,
            temp_name,
            final_name,
            file: Some(File::from(fd)),
        })
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file present until commit")
    }

    /// fsync the data, rename over the final name, fsync the directory.
    pub fn commit(mut self) -> io::Result<()> {
        let file = self.file.take().expect("file present until commit");
        file.sync_all()?;
        drop(file);
        crate::sys::rename_in(self.dir.as_raw_fd(), &self.temp_name, &self.final_name)?;
        // Committed: nothing left to clean.
        self.temp_name = CString::default();
        crate::sys::fsync(self.dir.as_raw_fd())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.temp_name.is_empty() {
            let _ = crate::sys::unlink_in(self.dir.as_raw_fd(), &self.temp_name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_table() {
        let ok = [
            ("a.txt", "a.txt"),
            ("dir/a.txt", "dir/a.txt"),
            ("dir//./a.txt", "dir/a.txt"),
            ("sp%20ace", "sp ace"),
            ("%252e%252e/x", "%2e%2e/x"),
            ("..a/b..", "..a/b.."),
        ];
        for (input, want) in ok {
            assert_eq!(RelPath::parse(input).unwrap().display(), want, "{input}");
        }
        let escapes = [
            "..",
            "../etc/passwd",
            "a/../../b",
            "%2e%2e/etc",
            "%2E%2E%2Fetc",
            "a%2f..%2f..",
            "/etc/passwd",
            "%2fetc",
            "..%5c..%5cetc",
            "a\\b",
        ];
        for input in escapes {
            assert!(
                matches!(RelPath::parse(input), Err(PathError::Escapes(_))),
                "{input}"
            );
        }
        let long_name = "a".repeat(256);
        let long_path = "a/".repeat(2100);
        let malformed = [
            "",
            ".",
            "./",
            "a%00b",
            "%zz",
            "%4",
            "a%0ab",
            long_name.as_str(),
            long_path.as_str(),
        ];
        for input in malformed {
            assert!(
                matches!(RelPath::parse(input), Err(PathError::Malformed(_))),
                "{input}"
            );
        }
    }

    #[test]
    fn splits_parent() {
        let p = RelPath::parse("a/b/c.txt").unwrap();
        assert_eq!(p.split_parent(), (&b"a/b"[..], &b"c.txt"[..]));
        let p = RelPath::parse("c.txt").unwrap();
        assert_eq!(p.split_parent(), (&b""[..], &b"c.txt"[..]));
    }

    #[test]
    fn symlinks_out_are_refused_both_ways() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let root_dir = tempfile::tempdir().unwrap();
        let r = root_dir.path();
        std::fs::write(r.join("in.txt"), b"i").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), r.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("dirlink")).unwrap();
        let root = Root::open(r).unwrap();
        for force_fallback in [false, true] {
            root.no_openat2.store(force_fallback, Ordering::Relaxed);
            assert!(root.open_file(&RelPath::parse("in.txt").unwrap()).is_ok());
            for bad in ["link", "dirlink/secret"] {
                let e = root.open_file(&RelPath::parse(bad).unwrap()).unwrap_err();
                assert!(matches!(e, OpenError::Forbidden(_)), "{bad}: {e:?}");
            }
            assert!(matches!(
                root.open_file(&RelPath::parse("nope").unwrap()),
                Err(OpenError::NotFound)
            ));
        }
    }

    /// The open that must not block confines exactly as the other: what is
    /// cached opens (or defers to the pool), an escape is refused, never
    /// opened. And what it opens reads without blocking once in the cache.
    #[test]
    fn opening_from_the_caches_confines_the_same() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let root_dir = tempfile::tempdir().unwrap();
        let r = root_dir.path();
        std::fs::write(r.join("in.txt"), b"inside").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), r.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("dirlink")).unwrap();
        let root = Root::open(r).unwrap();
        let rel = |p: &str| RelPath::parse(p).unwrap();
        // Warm the lookup caches the way a first request does.
        root.open_file(&rel("in.txt")).unwrap();
        match root.open_file_now(&rel("in.txt")) {
            Some(Ok((file, meta))) => {
                assert_eq!(meta.len(), 6);
                let mut buf = [0u8; 6];
                if let Some(n) = pread_now(&file, &mut buf, 0) {
                    assert_eq!(n.unwrap(), 6);
                    assert_eq!(&buf, b"inside");
                }
            }
            // A kernel before 5.12 has no RESOLVE_CACHED: always the pool.
            None => assert!(root.no_cached.load(Ordering::Relaxed)),
            Some(Err(e)) => panic!("{e:?}"),
        }
        for bad in ["link", "dirlink/secret"] {
            let _ = root.open_file(&rel(bad));
            match root.open_file_now(&rel(bad)) {
                Some(Err(OpenError::Forbidden(_))) | None => {}
                other => panic!("{bad}: {:?}", other.map(|r| r.map(|(_, n)| n))),
            }
        }
    }

    #[test]
    fn pending_file_cleans_up_unless_committed() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::open(d.path()).unwrap();
        let rel = RelPath::parse("out.gz").unwrap();
        let count = || std::fs::read_dir(d.path()).unwrap().count();
        {
            let mut p =
                PendingFile::create(root.open_parent_dir(&rel).unwrap(), b"out.gz").unwrap();
            std::io::Write::write_all(p.file(), b"partial").unwrap();
            assert_eq!(count(), 1);
        }
        assert_eq!(count(), 0);
        let mut p = PendingFile::create(root.open_parent_dir(&rel).unwrap(), b"out.gz").unwrap();
        std::io::Write::write_all(p.file(), b"whole").unwrap();
        p.commit().unwrap();
        assert_eq!(std::fs::read(d.path().join("out.gz")).unwrap(), b"whole");
        assert_eq!(count(), 1);
    }
}
