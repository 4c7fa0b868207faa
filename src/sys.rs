//! Every call into libc that needs `unsafe`, each behind a safe function
//! whose contract is written here once. The rest of the crate is
//! `#![deny(unsafe_code)]`: to add a system call, add it here.

#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// The time of clock `id` (clock_gettime).
fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(id, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CLOCK_MONOTONIC in microseconds, as systemd reads it.
pub fn monotonic_usec() -> u64 {
    clock(libc::CLOCK_MONOTONIC).as_micros() as u64
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

/// Stops transparent huge pages for the rest of the process. mimalloc
/// asks for them on its arenas (`MADV_HUGEPAGE`), so each thread's first
/// allocation faults in a 2 MiB page the kernel zeroes first: ~0.8 ms of a
/// command line's 3 ms start, for a heap of a few hundred KiB. Best effort.
pub fn no_huge_pages() {
    // SAFETY: a process flag; no memory involved.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// Ends the process now with `status`, without running exit handlers or
/// destructors: the caller has flushed what it wrote.
pub fn exit_now(status: u8) -> ! {
    // SAFETY: _exit only ends the process.
    unsafe { libc::_exit(i32::from(status)) }
}

/// CPU time the calling thread has used since it started. A system call
/// (~0.4 µs here; the vDSO does not serve per-thread clocks), so callers
/// read it once per unit of work, not per byte.
pub fn thread_cpu_time() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
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

/// Most windows mapped at once across the process; a job that finds none
/// free reads instead. Pool jobs map one each, and pools are far smaller.
const WINDOWS: usize = 256;

/// One registered window: the address range a job has mapped, and whether a
/// page of it was found past the end of the file. Written by its owner,
/// read by the SIGBUS handler of whichever thread faults.
struct Window {
    /// Claimed by a job (compare-and-swap); the range is set after.
    taken: AtomicBool,
    /// First mapped address; 0 while no range is registered. Stored last
    /// (Release) when registering and first when leaving, so a handler
    /// that sees it non-zero sees the `end` that goes with it.
    start: AtomicUsize,
    end: AtomicUsize,
    /// Set by the handler: the job read zeros for a page the file no
    /// longer has.
    faulted: AtomicBool,
}

/// The registry the SIGBUS handler consults: fixed, static, lock-free,
/// because a signal handler may not take a lock or allocate.
static GUARDED: [Window; WINDOWS] = [const {
    Window {
        taken: AtomicBool::new(false),
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
        faulted: AtomicBool::new(false),
    }
}; WINDOWS];

/// The page size, read once before the handler can run (it needs it, and
/// sysconf is not on the async-signal-safe list).
static PAGE: AtomicUsize = AtomicUsize::new(0);

/// SIGBUS's action before ours, for faults that are not in a window: the
/// standard library's guard-page handler, a sanitizer's, or the default.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Whether the handler is in place (errno if it could not be installed).
static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();

/// The handler: a fault inside a registered window gets a page of zeros
/// mapped over the missing one and is marked, so the read resumes and its
/// job learns afterwards that the file shrank; any other SIGBUS goes to the
/// previous action. Only atomics, `mmap` and `sigaction` (plain system
/// calls) run here.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // si_code > 0: raised by the kernel for an access, not sent by kill().
    if code > 0 {
        let page = PAGE.load(Ordering::Relaxed);
        for w in &GUARDED {
            let start = w.start.load(Ordering::Acquire);
            if start == 0 || addr < start || addr >= w.end.load(Ordering::Relaxed) {
                continue;
            }
            // SAFETY: replaces one page of this job's own mapping (the
            // window is registered, so still mapped, and only read) with
            // anonymous zeros; no other memory is touched.
            let zero = unsafe {
                libc::mmap(
                    (addr & !(page - 1)) as *mut libc::c_void,
                    page,
                    libc::PROT_READ,
                    libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if zero != libc::MAP_FAILED {
                w.faulted.store(true, Ordering::Release);
                return;
            }
            break;
        }
    }
    chain(sig, info, ctx);
}

/// Hands a SIGBUS that is not ours to the action installed before ours.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let prev = PREVIOUS.get();
    let handler = prev.map_or(libc::SIG_DFL, |p| p.sa_sigaction);
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // The default action, as if we had never been here: a fault that
        // returns runs again and now kills (with a core); a SIGBUS sent by
        // kill() is raised again, delivered once this handler returns. An
        // ignored SIGBUS from a fault would loop forever: default too.
        // SAFETY: sigaction and raise are async-signal-safe; all-zero is a
        // valid `struct sigaction` (empty mask, no flags) before SIG_DFL.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
            // SAFETY: as above.
            if (*info).si_code <= 0 {
                libc::raise(sig);
            }
        }
        return;
    }
    let prev = prev.expect("a handler other than SIG_DFL was recorded");
    if prev.sa_flags & libc::SA_SIGINFO != 0 {
        type Action = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);
        // SAFETY: an SA_SIGINFO action's handler has this signature, and
        // gets the arguments the kernel gave us.
        let f = unsafe { std::mem::transmute::<libc::sighandler_t, Action>(handler) };
        f(sig, info, ctx);
    } else {
        type Handler = extern "C" fn(libc::c_int);
        // SAFETY: a plain action's handler takes the signal number only.
        let f = unsafe { std::mem::transmute::<libc::sighandler_t, Handler>(handler) };
        f(sig);
    }
}

/// Installs `on_sigbus` once for the process; later calls only report how
/// the first went.
fn install_guard() -> io::Result<()> {
    let done = INSTALLED.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        PAGE.store(
            if page > 0 { page as usize } else { 4096 },
            Ordering::Relaxed,
        );
        // SAFETY: all-zero is a valid `struct sigaction` to be filled by
        // the query; the query changes nothing.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: reads the current action into `old`.
        if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) } != 0 {
            return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        // Recorded before ours is installed: the handler chains to it.
        let _ = PREVIOUS.set(old);
        // SAFETY: as above.
        let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
        new.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
        // SA_ONSTACK: a SIGBUS from a stack overflow still finds the
        // alternate stack the standard library set up, and reaches its
        // handler through ours.
        new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: installs a handler that only makes async-signal-safe calls.
        if unsafe { libc::sigaction(libc::SIGBUS, &new, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        Ok(())
    });
    done.map_err(io::Error::from_raw_os_error)
}

/// A read-only window of a file mapped from the page cache, registered with
/// the SIGBUS guard; unregistered and unmapped when dropped.
pub struct GuardedMap {
    ptr: *mut libc::c_void,
    /// Bytes mapped, from the page boundary at or before the offset asked.
    mapped: usize,
    /// Where the bytes asked start in the mapping, and how many.
    skip: usize,
    len: usize,
    window: &'static Window,
}

// SAFETY: read-only memory that this value alone unmaps; reads from any
// thread are fine (a fault is handled on whichever thread takes it).
unsafe impl Send for GuardedMap {}
// SAFETY: as above.
unsafe impl Sync for GuardedMap {}

impl GuardedMap {
    /// The bytes of the window. Where the file was cut short after the
    /// mapping was made they read as zeros, and `shrank` then says so: use
    /// them only for what is discarded on `shrank` (a digest), never to
    /// send or write.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `mapped` bytes are mapped readable at `ptr` until drop,
        // and `skip + len <= mapped`. A page past the file's end reads as
        // zeros (the guard maps them), never as a fault.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>().add(self.skip), self.len) }
    }

    /// Whether a read of `bytes` found a page past the file's end: the file
    /// shrank after it was mapped, and whatever was computed from the bytes
    /// is not of any version of the file. A file cut within the last page
    /// reads zeros without a fault: callers compare the size afterwards too.
    pub fn shrank(&self) -> bool {
        self.window.faulted.load(Ordering::Acquire)
    }
}

impl Drop for GuardedMap {
    fn drop(&mut self) {
        // Unregistered before unmapped: once the range can be reused by
        // another mapping, no handler mistakes a fault there for ours.
        self.window.start.store(0, Ordering::Release);
        self.window.taken.store(false, Ordering::Release);
        // SAFETY: the mapping made in `map_guarded`, unmapped once.
        unsafe { libc::munmap(self.ptr, self.mapped) };
    }
}

/// Maps `len` (> 0) bytes of the regular file `fd` from `offset` read-only,
/// faulted in at once, so they are hashed where the page cache holds them,
/// without a copy. A file truncated by another process meanwhile does not
/// raise SIGBUS in the reader (which would end the process): the missing
/// pages read as zeros and `GuardedMap::shrank` tells. `Ok(None)` when every
/// window is in use: read instead.
pub fn map_guarded(fd: &impl AsRawFd, offset: u64, len: usize) -> io::Result<Option<GuardedMap>> {
    if len == 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    install_guard()?;
    let Some(window) = GUARDED.iter().find(|w| {
        w.taken
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }) else {
        return Ok(None);
    };
    let page = PAGE.load(Ordering::Relaxed) as u64;
    let skip = (offset % page) as usize;
    let mapped = skip + len;
    // SAFETY: a new private read-only mapping; no existing memory touched.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            mapped,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            (offset - skip as u64) as libc::off_t,
        )
    };
    if ptr == libc::MAP_FAILED {
        let e = io::Error::last_os_error();
        window.taken.store(false, Ordering::Release);
        return Err(e);
    }
    window.faulted.store(false, Ordering::Relaxed);
    window.end.store(ptr as usize + mapped, Ordering::Relaxed);
    window.start.store(ptr as usize, Ordering::Release);
    Ok(Some(GuardedMap {
        ptr,
        mapped,
        skip,
        len,
        window,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        f.flush().unwrap();
        (f, data)
    }

    /// A window at any offset (page-aligned or not) gives the file's bytes.
    #[test]
    fn windows_read_the_file() {
        let (f, data) = file_of(3 << 20);
        for (off, len) in [
            (0, 1 << 20),
            (4096, 8192),
            (12345, 1 << 20),
            ((3 << 20) - 10, 10),
        ] {
            let m = map_guarded(f.as_file(), off as u64, len).unwrap().unwrap();
            assert_eq!(m.bytes(), &data[off..off + len]);
            assert!(!m.shrank());
        }
    }

    /// Truncated after it was mapped: the read past the new end does not
    /// kill the process, and the window says the file shrank; the next
    /// window of the same thread starts clean.
    #[test]
    fn truncated_window_reads_as_shrunk() {
        let (f, data) = file_of(2 << 20);
        let m = map_guarded(f.as_file(), 0, 2 << 20).unwrap().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let bytes = m.bytes();
        // Every page is read, as a hasher would.
        let sum: u64 = bytes.iter().map(|&b| b as u64).sum();
        assert!(m.shrank());
        assert_eq!(&bytes[..1 << 20], &data[..1 << 20]);
        assert!(bytes[1 << 20..].iter().all(|&b| b == 0));
        assert!(sum > 0);
        drop(m);
        let m = map_guarded(f.as_file(), 0, 1 << 20).unwrap().unwrap();
        assert_eq!(m.bytes(), &data[..1 << 20]);
        assert!(!m.shrank());
    }

    /// A SIGBUS outside every window still reaches the previous action: a
    /// child process that reads past the end of an unguarded mapping dies
    /// of SIGBUS, with the guard installed.
    #[test]
    fn foreign_sigbus_still_kills() {
        let (f, _) = file_of(1 << 20);
        install_guard().unwrap();
        // SAFETY: fork in a test; the child only maps, truncates, reads and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: in the child: a private mapping read past the file's end.
            unsafe {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    1 << 20,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE,
                    f.as_file().as_raw_fd(),
                    0,
                );
                libc::ftruncate(f.as_file().as_raw_fd(), 0);
                let v = std::ptr::read_volatile(p.cast::<u8>().add(8192));
                libc::_exit(v as i32 + 100);
            }
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGBUS);
    }
}
