//! A confined, sorted walk of a directory tree under the served root.
//!
//! Each directory is opened relative to its parent's handle with
//! `O_DIRECTORY | O_NOFOLLOW`, starting from a handle that `Root` resolved
//! beneath the root, so no symlink and no rename race can take the walk
//! outside: a directory swapped for a symlink mid-walk fails to open instead
//! of being followed. Symlinked directories are reported, never entered, so
//! the walk cannot loop. The walk itself only lists: files are opened by an
//! `Opener` in whichever pool job hashes them, so on a tree of many small
//! files the opens and stats overlap across threads instead of queueing
//! behind one walker. The `Opener` goes through `Root::open_file`, the same
//! resolution as `GET /hash-file`: a symlink to a file beneath the root is
//! followed, one that leads outside is an error. FIFOs, sockets and devices
//! are reported as skipped and never opened.
//!
//! Order: entries come in byte-wise order of their path relative to the
//! start, which is what `sort` and every manifest tool expect. That is not
//! the order of a plain depth-first walk of sorted names ("a.txt" sorts
//! before "a/b", '.' < '/'), so a directory is sorted as its name plus '/'.
//! Each level of depth holds one directory's `Listing`: its names in
//! memory, or, for a directory too big for that, sorted runs in a temporary
//! file and a small buffer for each (see `listing`).

use std::ffi::CString;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use super::listing::{Kind, Listing, kind_at};
use crate::root::{OpenError, RelPath, Root};

/// What the walk found at one path.
#[derive(Debug)]
pub enum Entry {
    /// A regular file, a symlink or a name of unknown type, not opened yet:
    /// `Opener::open` opens it (and tells which it was).
    File { path: Vec<u8>, symlink: bool },
    /// Listed but not read: a FIFO, socket, device or symlinked directory.
    Skipped { path: Vec<u8>, why: &'static str },
    /// Could not be opened or listed; the walk goes on.
    Error { path: Vec<u8>, error: OpenError },
}

impl Entry {
    pub fn path(&self) -> &[u8] {
        match self {
            Entry::File { path, .. } | Entry::Skipped { path, .. } | Entry::Error { path, .. } => {
                path
            }
        }
    }
}

/// One open directory: its remaining names, sorted.
struct Level {
    fd: OwnedFd,
    /// Path from the start ("" for the start itself), with a trailing '/'
    /// unless empty.
    prefix: Vec<u8>,
    names: Listing,
}

/// The walk; an iterator of entries, in order, each listed as it is reached.
pub struct Walk {
    opener: Opener,
    stack: Vec<Level>,
    /// Names of one directory sorted in memory (`--dir-sort-names`).
    in_memory: usize,
}

/// Opens the files a walk lists, from any thread: cheap to clone into jobs.
#[derive(Clone)]
pub struct Opener {
    root: Arc<Root>,
    /// Where the walk started, relative to the root, with a trailing '/'
    /// (empty: the root).
    start: Vec<u8>,
}

/// A listed file, opened.
pub enum Opened {
    /// A regular file, open for reading, with the metadata of the fstat that
    /// checked it.
    File(File, Metadata),
    /// Not read: a symlink to a directory, or not a regular file after all.
    Skipped(&'static str),
    Error(OpenError),
}

impl Opener {
    /// Opens `path` (relative to the walk's start), as `GET /hash-file` would;
    /// `symlink` is what the listing said, to name why a symlink is skipped.
    pub fn open(&self, path: &[u8], symlink: bool) -> Opened {
        let mut full = Vec::with_capacity(self.start.len() + path.len());
        full.extend_from_slice(&self.start);
        full.extend_from_slice(path);
        match self.root.open_file(&RelPath::from_walk(full)) {
            Ok((file, meta)) => Opened::File(file, meta),
            Err(OpenError::NotAFile) if symlink => {
                Opened::Skipped("a symlink to a directory (not followed)")
            }
            Err(OpenError::NotAFile) => Opened::Skipped("not a regular file"),
            Err(error) => Opened::Error(error),
        }
    }
}

impl Walk {
    /// Starts at `dir` under the root (`None`: the root itself). Fails if it
    /// is missing, outside, or not a directory. A directory of more than
    /// `in_memory` names is sorted through a temporary file.
    pub fn new(root: Arc<Root>, dir: Option<RelPath>, in_memory: usize) -> Result<Walk, OpenError> {
        let fd = root.open_dir(dir.as_ref())?;
        let names = Listing::read(&fd, in_memory).map_err(OpenError::Io)?;
        let start = match &dir {
            Some(d) => [d.as_bytes(), b"/"].concat(),
            None => Vec::new(),
        };
        Ok(Walk {
            opener: Opener { root, start },
            stack: vec![Level {
                fd,
                prefix: Vec::new(),
                names,
            }],
            in_memory,
        })
    }

    /// What opens the files this walk lists.
    pub fn opener(&self) -> Opener {
        self.opener.clone()
    }
}

impl Iterator for Walk {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        loop {
            let level = self.stack.last_mut()?;
            let (name, kind) = match level.names.next_name() {
                Some(Ok(name)) => name,
                None => {
                    self.stack.pop();
                    continue;
                }
                // The rest of this directory is lost, not the walk.
                Some(Err(e)) => {
                    let mut path = self.stack.pop().expect("a level").prefix;
                    path.pop();
                    return Some(Entry::Error {
                        path,
                        error: OpenError::Io(e),
                    });
                }
            };
            let mut path = Vec::with_capacity(level.prefix.len() + name.len() + 1);
            path.extend_from_slice(&level.prefix);
            path.extend_from_slice(&name);
            let kind = match kind {
                Kind::Unknown => kind_at(&level.fd, &name),
                k => k,
            };
            match kind {
                Kind::Dir => match open_subdir(&level.fd, &name) {
                    Ok(fd) => match Listing::read(&fd, self.in_memory) {
                        Ok(names) => {
                            path.push(b'/');
                            self.stack.push(Level {
                                fd,
                                prefix: path,
                                names,
                            });
                        }
                        Err(e) => {
                            return Some(Entry::Error {
                                path,
                                error: OpenError::Io(e),
                            });
                        }
                    },
                    Err(e) => {
                        return Some(Entry::Error {
                            path,
                            error: classify_dir(e),
                        });
                    }
                },
                Kind::Special => {
                    return Some(Entry::Skipped {
                        path,
                        why: "not a regular file (FIFO, socket or device)",
                    });
                }
                Kind::File | Kind::Symlink | Kind::Unknown => {
                    return Some(Entry::File {
                        path,
                        symlink: kind == Kind::Symlink,
                    });
                }
            }
        }
    }
}

fn classify_dir(e: io::Error) -> OpenError {
    match e.raw_os_error() {
        Some(libc::ENOENT) => OpenError::NotFound,
        Some(libc::EACCES) | Some(libc::EPERM) => {
            OpenError::Forbidden("permission denied by the file system")
        }
        // Swapped for a symlink between listing and opening.
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
            OpenError::Forbidden("the directory was replaced by a symlink during the walk")
        }
        _ => OpenError::Io(e),
    }
}

fn open_subdir(parent: &OwnedFd, name: &[u8]) -> io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    crate::sys::openat(parent.as_raw_fd(), &c, flags, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::listing::SORT_IN_MEMORY;
    use std::os::unix::fs::symlink;

    fn paths(root: &Arc<Root>, dir: Option<&str>) -> Vec<String> {
        let all = paths_sorting(root, dir, SORT_IN_MEMORY);
        // Every directory sorted in spilled runs of one or two names: the same.
        assert_eq!(paths_sorting(root, dir, 1), all);
        assert_eq!(paths_sorting(root, dir, 2), all);
        all
    }

    fn paths_sorting(root: &Arc<Root>, dir: Option<&str>, in_memory: usize) -> Vec<String> {
        let dir = dir.map(|d| RelPath::parse(d).unwrap());
        let walk = Walk::new(root.clone(), dir, in_memory).unwrap();
        let opener = walk.opener();
        walk.map(|e| {
            let tag = match &e {
                Entry::File { path, symlink } => match opener.open(path, *symlink) {
                    Opened::File(..) => "",
                    Opened::Skipped(_) => " (skipped)",
                    Opened::Error(_) => " (error)",
                },
                Entry::Skipped { .. } => " (skipped)",
                Entry::Error { .. } => " (error)",
            };
            format!("{}{tag}", String::from_utf8_lossy(e.path()))
        })
        .collect()
    }

    #[test]
    fn sorted_byte_wise_confined_and_loop_free() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let d = t.path().join("r");
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::create_dir_all(d.join("empty")).unwrap();
        std::fs::write(d.join("a.txt"), b"1").unwrap();
        std::fs::write(d.join("a/b/c"), b"2").unwrap();
        std::fs::write(d.join("a/z"), b"3").unwrap();
        std::fs::write(d.join("B"), b"4").unwrap();
        symlink("a", d.join("loop")).unwrap();
        symlink("a.txt", d.join("link.txt")).unwrap();
        symlink(outside.path().join("secret"), d.join("out")).unwrap();
        let root = Arc::new(Root::open(&d).unwrap());
        assert_eq!(
            paths(&root, None),
            [
                "B",
                "a.txt",
                "a/b/c",
                "a/z",
                "link.txt",
                "loop (skipped)",
                "out (error)"
            ]
        );
        assert_eq!(paths(&root, Some("a")), ["b/c", "z"]);
        assert!(matches!(
            Walk::new(root.clone(), Some(RelPath::parse("a.txt").unwrap()), 1),
            Err(OpenError::NotAFile)
        ));
        assert!(matches!(
            Walk::new(root.clone(), Some(RelPath::parse("nope").unwrap()), 1),
            Err(OpenError::NotFound)
        ));
    }
}
