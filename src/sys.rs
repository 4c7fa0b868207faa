//! Every call into libc that needs `unsafe`, each behind a safe function
//! whose contract is written here once. The rest of the crate is
//! `#![deny(unsafe_code)]`: to add a system call, add it here.

#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::time::Duration;

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Takes ownership of a descriptor this process inherited from its parent
/// (systemd, or the supervisor), after checking that it is open. The
/// contract, which the caller keeps: the parent passed `fd` to this process
/// for this purpose alone, and it is adopted once.
pub fn adopt_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd <= 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} is a standard stream, not an inherited descriptor"),
        ));
    }
    // SAFETY: F_GETFD on a descriptor number only reads its flags.
    check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: open (checked above) and, per the contract, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets or clears FD_CLOEXEC. Only calls fcntl, so it is safe to use between
/// fork and exec (where it clears the flag on the child's copy only).
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number; failure is reported, not UB.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    let want = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    if want != flags {
        // SAFETY: as above.
        check(unsafe { libc::fcntl(fd, libc::F_SETFD, want) })?;
    }
    Ok(())
}

/// An integer socket option at SOL_SOCKET level (SO_TYPE, SO_ACCEPTCONN).
pub fn socket_option(fd: &impl AsRawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut val: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `val`.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(val)
}

/// Makes a TCP socket acknowledge the data it has received at once instead
/// of after the delayed-ACK timer (TCP_QUICKACK). The kernel drops back to
/// delayed ACKs by itself (after the socket sends), so callers set it again
/// before each read.
pub fn quick_ack(fd: &impl AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `on`.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// A pipe, both ends close-on-exec: (read, write).
pub fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills both slots on success.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: freshly created, owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// kill(2). Failures (the process is already gone) are the caller's to ignore.
pub fn kill(pid: u32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill has no memory effects.
    check(unsafe { libc::kill(pid as libc::pid_t, sig) }).map(drop)
}

/// CLOCK_MONOTONIC in microseconds, as systemd reads it.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Clock ticks per second (for /proc's CPU times), 100 if unknown.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// The calling thread's nice value.
pub fn thread_nice() -> i32 {
    // SAFETY: reading this thread's own priority; no memory involved.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

/// Lowers the calling thread's priority by `by`. Best effort: a sandbox that
/// forbids it leaves the thread as it was.
pub fn lower_thread_priority(by: i32) {
    let now = thread_nice();
    // SAFETY: setpriority on this thread's own id; no memory involved.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, now + by) };
}

/// CPU time the calling thread has used since it started. A system call
/// (~0.4 µs here; the vDSO does not serve per-thread clocks), so callers
/// read it once per unit of work, not per byte.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Puts the calling thread in the `SCHED_IDLE` class: it runs only when no
/// ordinary thread wants the core, and is preempted the moment one wakes.
/// Returns false if the system refused (the thread stays as it was).
pub fn make_thread_idle_class() -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` outlives the call.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 }
}

/// Whether the calling thread is in the `SCHED_IDLE` class.
pub fn thread_is_idle_class() -> bool {
    // SAFETY: pid 0 is the calling thread; no memory involved.
    unsafe { libc::sched_getscheduler(0) == libc::SCHED_IDLE }
}

/// Sets an environment variable. Must run before any other thread exists
/// (as `main` does before the runtime starts): the environment is not
/// thread-safe in libc.
pub fn set_env_before_threads(var: &str, value: &str) {
    // SAFETY: per the contract, no other thread reads or writes the environment.
    unsafe { std::env::set_var(var, value) };
}

/// Makes a worker of what `cmd` starts: its copies of `inherit` lose
/// close-on-exec (so it inherits exactly those), it gets SIGTERM if this
/// thread dies (so a worker never serves unsupervised), and it runs in its
/// own process group (a Ctrl-C reaches the supervisor only, which then
/// drains workers in order). Call on the thread that lives as long as the
/// supervisor: the parent-death signal is tied to the forking thread.
pub fn prepare_worker(cmd: &mut Command, inherit: [RawFd; 3]) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid before the fork.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure only makes async-signal-safe calls (fcntl, prctl,
    // getppid, setpgid) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for fd in inherit {
                set_cloexec(fd, false)?;
            }
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM))?;
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            check(libc::setpgid(0, 0))?;
            Ok(())
        });
    }
}

/// An anonymous shared-memory file of `len` bytes, zero-filled, close-on-exec.
pub fn memfd(name: &CStr, len: usize) -> io::Result<OwnedFd> {
    // SAFETY: memfd_create with a NUL-terminated name.
    let fd = check(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on our memfd.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) })?;
    Ok(fd)
}

/// Maps the first `size_of::<T>()` bytes of `fd` shared, for the life of
/// the process. The file must be at least that long (checked).
///
/// Contract for `T`, which every caller keeps: `repr(C)`, made only of
/// atomics (another process writes the same memory concurrently), so that
/// all-zero and any bytes a peer writes are valid values.
pub fn map_shared<T: Sync>(fd: &OwnedFd) -> io::Result<&'static T> {
    let len = size_of::<T>();
    let have = std::fs::File::from(fd.try_clone()?).metadata()?.len();
    if have < len as u64 {
        return Err(io::Error::other(format!(
            "shared region is {have} bytes, this build expects {len} (binary mismatch?)"
        )));
    }
    // SAFETY: shared mapping of a file we own, of a size checked above.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: page-aligned, large enough, never unmapped; valid per T's contract.
    Ok(unsafe { &*(ptr as *const T) })
}

/// A zeroed `T` on the heap. Same contract for `T` as `map_shared`.
pub fn zeroed_box<T: Sync>() -> Box<T> {
    // SAFETY: all-zero is a valid T per the contract.
    unsafe { Box::<T>::new_zeroed().assume_init() }
}

/// open(2) of an absolute or relative path.
pub fn open(path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: open with a NUL-terminated path.
    let fd = check(unsafe { libc::open(path.as_ptr(), flags) })?;
    // SAFETY: a fresh descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// openat(2): `name` relative to the directory `dir`.
pub fn openat(dir: RawFd, name: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: openat with a descriptor number and a NUL-terminated name.
    let fd = check(unsafe { libc::openat(dir, name.as_ptr(), flags, mode as libc::c_uint) })?;
    // SAFETY: a fresh descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// openat2(2), once (EAGAIN and EINTR are the caller's to retry).
pub fn openat2(
    dir: RawFd,
    path: &CStr,
    flags: libc::c_int,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: flags as u64,
        mode: mode as u64,
        resolve,
    };
    // SAFETY: openat2 with a descriptor number, a C string and an open_how of the size we pass.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path.as_ptr(),
            &how as *const OpenHow,
            size_of::<OpenHow>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// A close-on-exec duplicate of `fd`.
pub fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on a descriptor number.
    let dup = check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: a fresh descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// The file type bits (`st_mode & S_IFMT`) of `name` in `dir`, not
/// following a final symlink.
pub fn file_type_at(dir: RawFd, name: &CStr) -> io::Result<libc::mode_t> {
    // SAFETY: all-zero is a valid `struct stat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat into a stat buffer we own, with a NUL-terminated name.
    check(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st.st_mode & libc::S_IFMT)
}

/// renameat(2) within one directory.
pub fn rename_in(dir: RawFd, from: &CStr, to: &CStr) -> io::Result<()> {
    // SAFETY: renameat with a descriptor number and NUL-terminated names.
    check(unsafe { libc::renameat(dir, from.as_ptr(), dir, to.as_ptr()) }).map(drop)
}

/// unlinkat(2) of a file in `dir`.
pub fn unlink_in(dir: RawFd, name: &CStr) -> io::Result<()> {
    // SAFETY: unlinkat with a descriptor number and a NUL-terminated name.
    check(unsafe { libc::unlinkat(dir, name.as_ptr(), 0) }).map(drop)
}

/// fsync(2), e.g. of a directory after a rename in it.
pub fn fsync(fd: RawFd) -> io::Result<()> {
    // SAFETY: fsync on a descriptor number.
    check(unsafe { libc::fsync(fd) }).map(drop)
}

/// Calls `each` with every entry of the directory `dir` (not "." or ".."),
/// as (name, d_type), in the order the file system gives them, as they are
/// read: a directory of any size is never held whole. Stops at the first
/// error `each` returns.
pub fn read_dir(dir: RawFd, mut each: impl FnMut(&[u8], u8) -> io::Result<()>) -> io::Result<()> {
    /// Closes the stream (and its descriptor) on every way out.
    struct Stream(*mut libc::DIR);
    impl Drop for Stream {
        fn drop(&mut self) {
            // SAFETY: a stream fdopendir returned, closed once.
            unsafe { libc::closedir(self.0) };
        }
    }
    // fdopendir takes the descriptor over: give it a duplicate.
    let dup = std::os::fd::IntoRawFd::into_raw_fd(dup_cloexec(dir)?);
    // SAFETY: fdopendir on a descriptor we own; on success the stream owns it.
    let stream = unsafe { libc::fdopendir(dup) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so the duplicate is still ours to close.
        drop(unsafe { OwnedFd::from_raw_fd(dup) });
        return Err(e);
    }
    let stream = Stream(stream);
    loop {
        // readdir returns NULL at the end and on an error; only errno tells.
        // SAFETY: errno is this thread's own.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: readdir on a live stream; the entry is used before the
        // next call.
        let ent = unsafe { libc::readdir(stream.0) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(0) | None => Ok(()),
                Some(_) => Err(e),
            };
        }
        // SAFETY: d_name is NUL-terminated within the entry readdir returned.
        let (name, d_type) = unsafe {
            let name = CStr::from_ptr((*ent).d_name.as_ptr()).to_bytes();
            (name, (*ent).d_type)
        };
        if name != b"." && name != b".." {
            each(name, d_type)?;
        }
    }
}

/// preadv2(2) with RWF_NOWAIT: what is in the page cache at `offset`, or
/// EAGAIN rather than wait for the disk.
pub fn pread_nowait(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: one iovec over `buf`, which outlives the call.
    let n = unsafe { libc::preadv2(fd, &iov, 1, offset as libc::off_t, libc::RWF_NOWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// A read-only mapping of the first bytes of a file, unmapped when dropped.
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: read-only memory that this value alone unmaps; shared reads from
// any thread are fine.
unsafe impl Send for Mapped {}
// SAFETY: as above.
unsafe impl Sync for Mapped {}

impl Mapped {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes mapped readable at `ptr` until drop.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map_file`, unmapped once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Maps `len` (> 0) bytes of the regular file `fd` from `offset` (a
/// multiple of the page size) read-only and faults them in, so they are
/// hashed where the page cache holds them, without a copy.
///
/// Contract, which the caller keeps: only a one-shot command line uses it.
/// If another process truncates the file while it is read, the access
/// past the new end raises SIGBUS and ends the process (as for `b3sum`);
/// a server must read (`pread`) instead.
pub fn map_file(fd: &impl AsRawFd, offset: u64, len: usize) -> io::Result<Mapped> {
    if len == 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: a new private read-only mapping; no existing memory touched.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(Mapped { ptr, len })
}
