//! One directory's names in walk order, in bounded memory.
//!
//! The walk lists a directory's names sorted (see `walk`), and a sort needs
//! every name. Up to `in_memory` names are sorted in memory: every directory
//! of the usual trees, with no file and no extra pass. A bigger directory (a
//! million files in one place: a cache, a spool, an object dump) is read in
//! runs of `in_memory` names; each run is sorted and appended to an anonymous
//! temporary file (`O_TMPFILE` in the system's temporary directory: it has no
//! name, so it is gone when closed, even if the process dies), and the walk
//! merges the runs as it goes. Memory then holds one run while the directory
//! is read, and one small read buffer per run while it is walked.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};

/// Names of one directory sorted in memory; a bigger one is sorted in runs
/// of this many, spilled to a temporary file. About 64 bytes a name: 4 MiB.
pub const SORT_IN_MEMORY: usize = 65_536;

/// What the merge's read buffers take together, and the least one run gets
/// (a directory of 100M names, 1,500 runs, still merges in 6 MiB).
const MERGE_BUFFERS: usize = 1 << 20;
const MIN_RUN_BUFFER: usize = 4 << 10;

/// What the listing says a name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Special,
    Unknown,
}

impl Kind {
    fn from_d_type(d_type: u8) -> Kind {
        match d_type {
            libc::DT_DIR => Kind::Dir,
            libc::DT_REG => Kind::File,
            libc::DT_LNK => Kind::Symlink,
            libc::DT_UNKNOWN => Kind::Unknown,
            _ => Kind::Special,
        }
    }

    /// Its byte in the spill file.
    fn code(self) -> u8 {
        match self {
            Kind::Dir => 0,
            Kind::File => 1,
            Kind::Symlink => 2,
            Kind::Special => 3,
            Kind::Unknown => 4,
        }
    }

    fn from_code(code: u8) -> io::Result<Kind> {
        Ok(match code {
            0 => Kind::Dir,
            1 => Kind::File,
            2 => Kind::Symlink,
            3 => Kind::Special,
            4 => Kind::Unknown,
            _ => return Err(corrupt()),
        })
    }
}

/// A name in a directory and what it is.
pub type Name = (Vec<u8>, Kind);

/// Walk order: byte-wise, a directory as its name plus '/' (so "a.txt",
/// whose '.' is below '/', comes before everything under "a/").
fn order(a: &Name, b: &Name) -> Ordering {
    let n = a.0.len().min(b.0.len());
    a.0[..n].cmp(&b.0[..n]).then_with(|| {
        // Past the common part: the longer name's next byte (never '/'), or
        // the shorter one's '/' if it is a directory, or nothing.
        let rest = |(name, kind): &Name| {
            name.get(n)
                .copied()
                .or((*kind == Kind::Dir).then_some(b'/'))
        };
        rest(a).cmp(&rest(b))
    })
}

/// The names of one directory, in walk order.
pub struct Listing(Source);

enum Source {
    Memory(std::vec::IntoIter<Name>),
    Spilled(Merge),
}

impl Listing {
    /// Reads the names of `dir` (not "." or ".."); past `in_memory` names,
    /// in sorted runs spilled to a temporary file.
    pub fn read(dir: &OwnedFd, in_memory: usize) -> io::Result<Listing> {
        let in_memory = in_memory.max(1);
        let mut run: Vec<Name> = Vec::new();
        let mut spill: Option<Spill> = None;
        crate::sys::read_dir(dir.as_raw_fd(), |name, d_type| {
            let mut kind = Kind::from_d_type(d_type);
            // An unknown kind may be a directory: ask before sorting.
            if kind == Kind::Unknown {
                kind = kind_at(dir, name);
            }
            run.push((name.to_vec(), kind));
            if run.len() >= in_memory {
                let s = match &mut spill {
                    Some(s) => s,
                    None => spill.insert(Spill::new()?),
                };
                s.write_run(&mut run)?;
            }
            Ok(())
        })?;
        match spill {
            None => {
                run.sort_unstable_by(order);
                Ok(Listing(Source::Memory(run.into_iter())))
            }
            Some(mut s) => {
                if !run.is_empty() {
                    s.write_run(&mut run)?;
                }
                drop(run);
                Ok(Listing(Source::Spilled(s.merge()?)))
            }
        }
    }

    /// The next name; an error if the spill file cannot be read back (then
    /// the end).
    pub fn next_name(&mut self) -> Option<io::Result<Name>> {
        match &mut self.0 {
            Source::Memory(names) => names.next().map(Ok),
            Source::Spilled(merge) => merge.next(),
        }
    }

    /// Whether the names went through a temporary file.
    pub fn spilled(&self) -> bool {
        matches!(self.0, Source::Spilled(_))
    }
}

/// The kind of `name` in `dir` by `fstatat`, not following a symlink.
pub fn kind_at(dir: &OwnedFd, name: &[u8]) -> Kind {
    let Ok(c) = CString::new(name) else {
        return Kind::Unknown;
    };
    match crate::sys::file_type_at(dir.as_raw_fd(), &c) {
        Ok(libc::S_IFDIR) => Kind::Dir,
        Ok(libc::S_IFREG) => Kind::File,
        Ok(libc::S_IFLNK) => Kind::Symlink,
        Ok(_) => Kind::Special,
        Err(_) => Kind::Unknown,
    }
}

fn corrupt() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the temporary file of a large directory's sorted names was cut short or changed",
    )
}

/// Sorted runs being written: each name as its kind's byte, its length (u32
/// little-endian) and its bytes.
struct Spill {
    out: BufWriter<File>,
    /// Start and end offset of each run.
    runs: Vec<(u64, u64)>,
    len: u64,
}

impl Spill {
    fn new() -> io::Result<Spill> {
        Ok(Spill {
            out: BufWriter::with_capacity(64 << 10, anonymous_file()?),
            runs: Vec::new(),
            len: 0,
        })
    }

    /// Sorts `run`, appends it, and empties it (keeping its capacity).
    fn write_run(&mut self, run: &mut Vec<Name>) -> io::Result<()> {
        run.sort_unstable_by(order);
        let start = self.len;
        for (name, kind) in run.drain(..) {
            let len = u32::try_from(name.len()).map_err(|_| corrupt())?;
            self.out.write_all(&[kind.code()])?;
            self.out.write_all(&len.to_le_bytes())?;
            self.out.write_all(&name)?;
            self.len += 5 + u64::from(len);
        }
        self.runs.push((start, self.len));
        Ok(())
    }

    fn merge(self) -> io::Result<Merge> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        let each = (MERGE_BUFFERS / self.runs.len().max(1)).max(MIN_RUN_BUFFER);
        let mut runs: Vec<Run> = self
            .runs
            .iter()
            .map(|&(next, end)| Run {
                next,
                end,
                buf: vec![0; each],
                at: 0,
                filled: 0,
            })
            .collect();
        let mut heap = BinaryHeap::with_capacity(runs.len());
        for (i, run) in runs.iter_mut().enumerate() {
            if let Some(name) = run.pop(&file)? {
                heap.push(Head { name, run: i });
            }
        }
        Ok(Merge { file, runs, heap })
    }
}

/// A file with no name in the system's temporary directory, read and
/// written by this process only.
fn anonymous_file() -> io::Result<File> {
    let dir = std::env::temp_dir();
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).mode(0o600);
    match opts.clone().custom_flags(libc::O_TMPFILE).open(&dir) {
        Ok(f) => return Ok(f),
        // A file system without O_TMPFILE: a named file, unlinked at once.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
            ) => {}
        Err(e) => return Err(e),
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for attempt in 0..16u32 {
        let path = dir.join(format!(
            ".hashpress-walk-{}-{nanos}-{attempt}",
            std::process::id()
        ));
        match opts.clone().create_new(true).open(&path) {
            Ok(f) => {
                std::fs::remove_file(&path)?;
                return Ok(f);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free name for a temporary file",
    ))
}

/// The k-way merge of the spilled runs.
struct Merge {
    file: File,
    runs: Vec<Run>,
    /// The first name of each run not yet given, smallest on top.
    heap: BinaryHeap<Head>,
}

impl Merge {
    fn next(&mut self) -> Option<io::Result<Name>> {
        let Head { name, run } = self.heap.pop()?;
        match self.runs[run].pop(&self.file) {
            Ok(Some(next)) => self.heap.push(Head { name: next, run }),
            Ok(None) => {}
            Err(e) => {
                self.heap.clear();
                return Some(Err(e));
            }
        }
        Some(Ok(name))
    }
}

/// One run of the spill file, read through its own buffer.
struct Run {
    /// File offset of the bytes after the buffer's, and of the run's end.
    next: u64,
    end: u64,
    buf: Vec<u8>,
    /// Unread bytes of `buf` are `at..filled`.
    at: usize,
    filled: usize,
}

impl Run {
    /// The run's next name; `None` at its end.
    fn pop(&mut self, file: &File) -> io::Result<Option<Name>> {
        if self.at == self.filled && self.next == self.end {
            return Ok(None);
        }
        self.want(file, 5)?;
        let kind = Kind::from_code(self.buf[self.at])?;
        let len_bytes: [u8; 4] = self.buf[self.at + 1..self.at + 5]
            .try_into()
            .expect("four bytes");
        let len = u32::from_le_bytes(len_bytes) as usize;
        self.want(file, 5 + len)?;
        let name = self.buf[self.at + 5..self.at + 5 + len].to_vec();
        self.at += 5 + len;
        Ok(Some((name, kind)))
    }

    /// Makes `need` unread bytes available in the buffer.
    fn want(&mut self, file: &File, need: usize) -> io::Result<()> {
        if self.filled - self.at >= need {
            return Ok(());
        }
        self.buf.copy_within(self.at..self.filled, 0);
        self.filled -= self.at;
        self.at = 0;
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        while self.filled < need {
            let left = usize::try_from(self.end - self.next).unwrap_or(usize::MAX);
            let room = (self.buf.len() - self.filled).min(left);
            if room == 0 {
                return Err(corrupt());
            }
            let n = match file.read_at(&mut self.buf[self.filled..self.filled + room], self.next) {
                Ok(0) => return Err(corrupt()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.filled += n;
            self.next += n as u64;
        }
        Ok(())
    }
}

/// A run's first name not yet given; ordered so the heap's top is the
/// smallest name.
struct Head {
    name: Name,
    run: usize,
}

impl Ord for Head {
    fn cmp(&self, other: &Head) -> Ordering {
        order(&other.name, &self.name).then_with(|| other.run.cmp(&self.run))
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Head) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Head) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &std::path::Path, in_memory: usize) -> (Vec<String>, bool) {
        let fd = OwnedFd::from(File::open(dir).unwrap());
        let mut l = Listing::read(&fd, in_memory).unwrap();
        let spilled = l.spilled();
        let mut out = Vec::new();
        while let Some(n) = l.next_name() {
            let (name, kind) = n.unwrap();
            let slash = if kind == Kind::Dir { "/" } else { "" };
            out.push(format!("{}{slash}", String::from_utf8(name).unwrap()));
        }
        (out, spilled)
    }

    #[test]
    fn runs_merge_into_the_in_memory_order() {
        let t = tempfile::tempdir().unwrap();
        let mut want = Vec::new();
        for i in 0..500u32 {
            // Names of varied lengths and a few directories whose '/' sorts
            // against '.' and '0' of their neighbours.
            let name = format!("{}{}", "x".repeat((i % 7) as usize), i * 7919 % 1000);
            if i % 50 == 0 {
                std::fs::create_dir(t.path().join(&name)).unwrap();
                std::fs::write(t.path().join(format!("{name}.txt")), b"").unwrap();
                std::fs::write(t.path().join(format!("{name}-")), b"").unwrap();
                std::fs::write(t.path().join(format!("{name}0z")), b"").unwrap();
                want.push(format!("{name}/"));
                want.push(format!("{name}.txt"));
                want.push(format!("{name}-"));
                want.push(format!("{name}0z"));
            } else {
                std::fs::write(t.path().join(&name), b"").unwrap();
                want.push(name);
            }
        }
        want.sort();
        let (all, spilled) = names(t.path(), SORT_IN_MEMORY);
        assert!(!spilled);
        assert_eq!(all, want);
        for in_memory in [1, 7, 64, 529, 530] {
            let (got, spilled) = names(t.path(), in_memory);
            assert!(spilled, "{in_memory}");
            assert_eq!(got, want, "runs of {in_memory}");
        }
    }

    #[test]
    fn a_long_name_grows_its_run_buffer() {
        let mut run = Run {
            next: 0,
            end: 0,
            buf: vec![0; 8],
            at: 0,
            filled: 0,
        };
        let mut spill = Spill::new().unwrap();
        let long = vec![b'n'; 300];
        spill
            .write_run(&mut vec![(long.clone(), Kind::File)])
            .unwrap();
        run.end = spill.len;
        let file = spill.out.into_inner().unwrap();
        assert_eq!(run.pop(&file).unwrap(), Some((long, Kind::File)));
        assert_eq!(run.pop(&file).unwrap(), None);
    }
}
