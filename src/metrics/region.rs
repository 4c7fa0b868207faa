//! The shared memory region that holds every process's `Slot`.
//!
//! The supervisor creates it (an anonymous memfd, mapped shared) before the
//! first worker and hands each worker the descriptor and a slot index. A
//! worker records only into its own slot; any worker can read all of them.
//! When a worker exits, the supervisor folds its slot into `retired` and
//! frees it for the next worker. The fold is the one step that moves counts
//! between slots, so it runs under a sequence counter (a seqlock): a reader
//! that overlaps a fold reads again, and never sees a total dip or double.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering, fence};

use super::{Slot, ix};
use crate::build_info::Build;

/// Most processes recording at once: workers, plus replacements and a new
/// generation during a reload.
pub const MAX_SLOTS: usize = 128;

const MAGIC: u64 = 0x6873_7072_6573_7337; // "hspress7": bump when `Layout` changes
/// A slot claimed by the supervisor whose process has no pid yet.
const RESERVED: u64 = u64::MAX;
/// Words of a `BuildCell`: a length, then up to 88 bytes of text.
const BUILD_WORDS: usize = 12;

/// Why a worker restarted, the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartReason {
    /// It died (crash, kill, failed start).
    Crash = 0,
    /// `--max-worker-rss` recycled it.
    Memory = 1,
    /// A SIGHUP reload replaced it.
    Reload = 2,
}

pub const RESTART_REASONS: [&str; 3] = ["crash", "memory", "reload"];

#[repr(C)]
struct Header {
    magic: AtomicU64,
    /// Odd while a fold is in progress.
    fold_seq: AtomicU64,
    /// When the region was created (Unix ms): the service's start.
    started_unix_ms: AtomicU64,
    /// 0 in single-process mode.
    supervisor_pid: AtomicU64,
    workers_alive: AtomicU64,
    /// The supervisor's `state::Phase` code (0 in single-process mode) and
    /// its serving generation: what tests and operators wait on.
    supervisor_phase: AtomicU64,
    generation: AtomicU64,
    restarts: [AtomicU64; 3],
    /// Per slot: 0 free, RESERVED, or the pid recording into it.
    slot_pid: [AtomicU64; MAX_SLOTS],
    /// Per slot: the worker position (1..N; 0 in single-process mode).
    slot_worker: [AtomicU64; MAX_SLOTS],
    /// The release of the supervisor (or single process), written by itself.
    own_build: BuildCell,
    /// Per slot: the release its process runs, written by that process as it
    /// starts, so it says what was really executed, not what was meant to be.
    slot_build: [BuildCell; MAX_SLOTS],
}

/// A `build_info::Build`, encoded: word 0 is the byte length (0 = not
/// written yet), stored last with Release so a reader that sees it sees
/// the bytes too.
#[repr(C)]
struct BuildCell([AtomicU64; BUILD_WORDS]);

impl BuildCell {
    fn write(&self, build: &Build) {
        let bytes = build.encode();
        let bytes = &bytes[..bytes.len().min((BUILD_WORDS - 1) * 8)];
        for (i, chunk) in bytes.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.0[1 + i].store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
        self.0[0].store(bytes.len() as u64, Ordering::Release);
    }

    fn clear(&self) {
        self.0[0].store(0, Ordering::Release);
    }

    fn read(&self) -> Option<Build> {
        let len = (self.0[0].load(Ordering::Acquire) as usize).min((BUILD_WORDS - 1) * 8);
        let mut bytes: Vec<u8> = self.0[1..]
            .iter()
            .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
            .collect();
        bytes.truncate(len);
        Build::decode(&bytes)
    }
}

#[repr(C)]
struct Layout {
    header: Header,
    retired: Slot,
    slots: [Slot; MAX_SLOTS],
}

/// A mapped region; lives as long as the process (it is leaked on purpose:
/// every recording site holds `&'static` references into it).
pub struct Region {
    layout: &'static Layout,
    fd: OwnedFd,
}

/// One live process's entry, for per-process metrics.
#[derive(Clone, Debug)]
pub struct LiveProcess {
    pub pid: u32,
    pub worker: u64,
    /// Its release, once it has written it (not yet, as it starts).
    pub build: Option<Build>,
    /// Requests it answered, connections it holds open.
    pub requests: u64,
    pub connections_open: u64,
}

/// A consistent reading of the region.
pub struct Reading {
    pub counters: Vec<u64>,
    pub pool_queued: u64,
    pub pool_busy: u64,
    pub live: Vec<LiveProcess>,
    /// The release of the supervisor (or single process).
    pub own_build: Option<Build>,
    pub supervisor_pid: Option<u32>,
    pub workers_alive: u64,
    /// The supervisor's phase code and serving generation.
    pub supervisor_phase: u64,
    pub generation: u64,
    pub restarts: [u64; 3],
    pub started_unix_ms: u64,
}

impl Region {
    /// Creates a new, zeroed region (supervisor, or a single process).
    pub fn create() -> io::Result<&'static Region> {
        // SAFETY: memfd_create with a static name; the fd is owned below.
        let fd = unsafe { libc::memfd_create(c"hashpress-metrics".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size_of::<Layout>() as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let region = Region::map(fd)?;
        let h = &region.layout.header;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        h.started_unix_ms.store(now, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(region)
    }

    /// Maps a region inherited from the supervisor.
    ///
    /// # Safety
    /// `fd` must be the region's descriptor, passed to this process alone.
    pub unsafe fn inherit(fd: RawFd) -> io::Result<&'static Region> {
        // SAFETY: per the caller's promise, we own this descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let meta = std::fs::File::from(fd.try_clone()?).metadata()?;
        if meta.len() < size_of::<Layout>() as u64 {
            return Err(io::Error::other(
                "metrics region is smaller than this build expects (binary mismatch?)",
            ));
        }
        let region = Region::map(fd)?;
        if region.layout.header.magic.load(Ordering::Acquire) != MAGIC {
            return Err(io::Error::other("metrics region has the wrong magic"));
        }
        // Keep it away from our own children.
        crate::supervisor::listener::set_cloexec(region.fd.as_raw_fd(), true)?;
        Ok(region)
    }

    fn map(fd: OwnedFd) -> io::Result<&'static Region> {
        // SAFETY: shared mapping of a file we own, of the size we set/checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size_of::<Layout>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the mapping is page-aligned, large enough, zero-initialised
        // by the kernel (all-zero is valid for Layout), and never unmapped.
        let layout: &'static Layout = unsafe { &*(ptr as *const Layout) };
        Ok(Box::leak(Box::new(Region { layout, fd })))
    }

    /// The descriptor to pass to workers.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn slot(&self, index: usize) -> &'static Slot {
        &self.layout.slots[index]
    }

    /// Claims a free slot for a process about to start (supervisor side).
    pub fn claim(&self, worker: u64) -> Option<usize> {
        let h = &self.layout.header;
        (0..MAX_SLOTS).find(|&i| {
            h.slot_pid[i]
                .compare_exchange(0, RESERVED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
                && {
                    h.slot_worker[i].store(worker, Ordering::Relaxed);
                    h.slot_build[i].clear();
                    true
                }
        })
    }

    /// Records the release the process in `index` runs (by that process).
    pub fn set_build(&self, index: usize, build: &Build) {
        self.layout.header.slot_build[index].write(build);
    }

    /// Records the release of the supervisor or single process (by itself).
    pub fn set_own_build(&self, build: &Build) {
        self.layout.header.own_build.write(build);
    }

    /// The release the process with this pid wrote, if it is live and did.
    pub fn build_of(&self, pid: u32) -> Option<Build> {
        let h = &self.layout.header;
        (0..MAX_SLOTS)
            .find(|&i| h.slot_pid[i].load(Ordering::Acquire) == pid as u64)
            .and_then(|i| h.slot_build[i].read())
    }

    /// Records the pid that now writes into `index`.
    pub fn set_pid(&self, index: usize, pid: u32) {
        self.layout.header.slot_pid[index].store(pid as u64, Ordering::Release);
    }

    /// Folds a slot whose process is gone into the retired totals and frees it.
    pub fn release(&self, index: usize) {
        let h = &self.layout.header;
        h.fold_seq.fetch_add(1, Ordering::AcqRel);
        fence(Ordering::SeqCst);
        self.layout.slots[index].fold_into(&self.layout.retired);
        fence(Ordering::SeqCst);
        h.fold_seq.fetch_add(1, Ordering::AcqRel);
        h.slot_worker[index].store(0, Ordering::Relaxed);
        h.slot_pid[index].store(0, Ordering::Release);
    }

    /// The slots of the other live processes (not `mine`), for the accept gate.
    pub fn peers(&self, mine: usize) -> impl Iterator<Item = &'static Slot> {
        let layout = self.layout;
        (0..MAX_SLOTS)
            .filter(move |&i| i != mine && layout.header.slot_pid[i].load(Ordering::Relaxed) != 0)
            .map(move |i| &layout.slots[i])
    }

    pub fn set_supervisor_pid(&self, pid: u32) {
        self.layout
            .header
            .supervisor_pid
            .store(pid as u64, Ordering::Relaxed);
    }

    pub fn set_workers_alive(&self, n: usize) {
        self.layout
            .header
            .workers_alive
            .store(n as u64, Ordering::Relaxed);
    }

    /// Publishes the supervisor's phase (a `state::Phase` code) and generation.
    pub fn set_phase(&self, phase: u64, generation: u64) {
        let h = &self.layout.header;
        h.generation.store(generation, Ordering::Relaxed);
        h.supervisor_phase.store(phase, Ordering::Release);
    }

    pub fn add_restart(&self, reason: RestartReason) {
        self.layout.header.restarts[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Sums every slot, live and retired, consistently with any fold.
    pub fn read(&self) -> Reading {
        let h = &self.layout.header;
        loop {
            let seq = h.fold_seq.load(Ordering::Acquire);
            if seq % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            fence(Ordering::SeqCst);
            let mut counters = vec![0u64; ix::COUNT];
            let (mut queued, mut busy) = (0, 0);
            let mut live = Vec::new();
            self.layout.retired.sum_into(&mut counters);
            for i in 0..MAX_SLOTS {
                let pid = h.slot_pid[i].load(Ordering::Acquire);
                if pid == 0 {
                    continue;
                }
                let slot = &self.layout.slots[i];
                slot.sum_into(&mut counters);
                queued += slot.pool_queued();
                busy += slot.pool_busy();
                if pid != RESERVED {
                    live.push(LiveProcess {
                        pid: pid as u32,
                        worker: h.slot_worker[i].load(Ordering::Relaxed),
                        build: h.slot_build[i].read(),
                        requests: slot.requests_total(),
                        connections_open: slot.connections_open(),
                    });
                }
            }
            fence(Ordering::SeqCst);
            if h.fold_seq.load(Ordering::Acquire) != seq {
                continue;
            }
            let sup = h.supervisor_pid.load(Ordering::Relaxed) as u32;
            return Reading {
                counters,
                pool_queued: queued,
                pool_busy: busy,
                live,
                own_build: h.own_build.read(),
                supervisor_pid: (sup != 0).then_some(sup),
                workers_alive: h.workers_alive.load(Ordering::Relaxed),
                supervisor_phase: h.supervisor_phase.load(Ordering::Acquire),
                generation: h.generation.load(Ordering::Relaxed),
                restarts: [0, 1, 2].map(|r| h.restarts[r].load(Ordering::Relaxed)),
                started_unix_ms: h.started_unix_ms.load(Ordering::Relaxed),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Direction, Op, Route};
    use std::time::Duration;

    #[test]
    fn folding_keeps_totals_and_frees_the_slot() {
        let r = Region::create().unwrap();
        let a = r.claim(1).unwrap();
        let b = r.claim(2).unwrap();
        assert_ne!(a, b);
        r.set_pid(a, 10);
        r.set_pid(b, 11);
        for _ in 0..3 {
            r.slot(a)
                .record_request(Route::Hash, "POST", 200, Duration::from_millis(1));
        }
        r.slot(b).add_bytes(Op::Hash, Direction::In, 7);
        let total = |r: &Region| {
            let c = r.read().counters;
            (
                c[ix::requests(Route::Hash as usize, 1, 0)],
                c[ix::bytes(Op::Hash, Direction::In)],
            )
        };
        assert_eq!(total(r), (3, 7));
        assert_eq!(r.read().live.len(), 2);
        r.release(a);
        assert_eq!(total(r), (3, 7), "a retired worker's counts stay");
        assert_eq!(r.read().live.len(), 1);
        // The freed slot is reused, starting from zero.
        let c = r.claim(1).unwrap();
        assert_eq!(c, a);
        r.set_pid(c, 12);
        r.slot(c)
            .record_request(Route::Hash, "POST", 200, Duration::from_millis(1));
        assert_eq!(total(r), (4, 7));
    }

    #[test]
    fn an_inherited_mapping_sees_the_same_counts() {
        let r = Region::create().unwrap();
        let i = r.claim(1).unwrap();
        r.set_pid(i, 1);
        let dup = unsafe { libc::fcntl(r.fd(), libc::F_DUPFD_CLOEXEC, 0) };
        let other = unsafe { Region::inherit(dup) }.unwrap();
        other
            .slot(i)
            .add_pool_rejected(crate::metrics::ShedReason::Memory);
        assert_eq!(r.slot(i).pool_rejected(), 1);
    }

    #[test]
    fn each_process_records_its_own_release() {
        let r = Region::create().unwrap();
        let a = r.claim(1).unwrap();
        r.set_pid(a, 10);
        assert_eq!(r.build_of(10), None, "not written yet");
        let long = Build {
            version: "1.2.3-rc.4+a-very-long-build-metadata-string".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
        };
        r.set_build(a, &long);
        assert_eq!(r.build_of(10), Some(long));
        r.set_own_build(&Build::own());
        let reading = r.read();
        assert_eq!(reading.own_build, Some(Build::own()));
        assert_eq!(
            reading.live[0].build.as_ref().unwrap().version,
            "1.2.3-rc.4+a-very-long-build-metadata-string"
        );
        // A reused slot does not inherit the last process's release.
        r.release(a);
        let b = r.claim(1).unwrap();
        assert_eq!(a, b);
        r.set_pid(b, 11);
        assert_eq!(r.build_of(11), None);
    }
}
