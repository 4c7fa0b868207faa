//! Every call into libc that needs `unsafe`, each behind a safe function
//! whose contract is written here once. The rest of the crate is
//! `#![deny(unsafe_code)]`: to add a system call, add it here.
//!
//! (The file-confinement code of `root` and the directory walk of
//! `tree::walk` still hold their own `openat`/`readdir` calls: they are
//! next to move.)

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;

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
pub fn memfd(name: &std::ffi::CStr, len: usize) -> io::Result<OwnedFd> {
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
