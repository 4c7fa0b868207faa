//! A fixed set of threads for CPU-heavy work, fed through one scheduler.
//!
//! Work is submitted in short jobs (one chunk of a file or body each), never
//! as "the whole request": a job never waits on a client, so a slow client
//! cannot pin a thread, and a request whose client has gone simply stops
//! submitting jobs (and its queued jobs are skipped).
//!
//! Three decisions live here:
//!
//! - **Admission by expected wait.** A request's first job (`Lane::try_run`)
//!   is refused at once when the work already queued would make it wait
//!   longer than `--max-queue-wait`: the queued jobs' estimated run times,
//!   summed, divided by the threads. A count of jobs says nothing about how
//!   long they take (64 SHA-256 chunks of 64 KiB are 2 ms, 64 gzip chunks of
//!   1 MiB are half a second); their measured cost does. Jobs of requests
//!   already admitted wait for room (`Lane::run`), so admitted work is never
//!   dropped. `--pool-queue` stays as a bound on queued jobs (memory), far
//!   above what the wait bound lets in.
//! - **Big requests are admitted by their size.** Once a request knows how
//!   much it will process (a file's size, a body's Content-Length), it
//!   declares it (`Lane::plan`) and is admitted a second time: the threads
//!   are shared among requests, so a request of `own` CPU time is delayed by
//!   every other planned request by at most `min(its remaining, own)`
//!   (processor sharing). When that delay, spread over the threads, passes
//!   `--max-queue-wait`, the request is refused at once, before it has done
//!   more than its first chunk: with one thread, a second 100 MB gzip would
//!   wait for the first one's seconds of work. A 64 KiB hash arriving beside
//!   big gzips is delayed by only its own tiny size per request and is
//!   admitted. CPU cost per byte is learned from the requests that finish.
//! - **Deadlines travel with the job.** A first job that still waits past its
//!   deadline (the estimate was wrong, or a burst arrived together) is not
//!   run: its request gets the 503 it would have got at admission.
//! - **Small requests are not stuck behind big ones.** Each request has a
//!   `Lane`. Jobs are served in order of their enqueue time plus a penalty
//!   equal to the CPU time their lane has already used (capped), so the
//!   64 KiB hash that just arrived runs before the next chunk of a 200 MB
//!   gzip that has had seconds of CPU, while the penalty's cap means a big
//!   request is delayed by at most that much against first-come order, and
//!   can never starve (the least-attained-service idea, bounded).

use std::cmp::Ordering as Cmp;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::metrics::{ShedReason, Slot};

/// Most a lane's used CPU time delays its jobs against first-come order.
const MAX_PENALTY: Duration = Duration::from_millis(100);
/// The run-time estimate of a job before any has been measured.
const FIRST_ESTIMATE: Duration = Duration::from_millis(1);
/// CPU cost per byte (picoseconds) before any request has finished, per
/// `WorkKind`: SHA-256 runs at ~1.4 GB/s a core, gzip -6 of text at ~35 MB/s
/// (a request's bytes are scaled to its codec's default level), zstd -3 at
/// ~150 MB/s.
const FIRST_COST_PS: [u64; 3] = [1_000, 20_000, 6_000];

/// What a planned request does with its bytes. Each kind's cost per byte is
/// learned apart: they differ tenfold, and one shared figure would price a
/// zstd request at gzip's cost (refusing it for nothing) or a gzip one at
/// zstd's (admitting seconds of work as if it were milliseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkKind {
    Hash = 0,
    Gzip = 1,
    Zstd = 2,
}

/// Requests smaller than this teach nothing about cost per byte: their
/// fixed costs (open, stat, answer: tens of µs) dominate. At 1 MiB the work
/// is a millisecond or more, and a workload of 1 MiB requests (the mixed
/// load's gzip of a random file, stored at ~1 ns a byte) must teach its own
/// cost, or it is priced forever at the first guess (20 ns a byte) and shed.
const LEARN_FROM_BYTES: u64 = 1 << 20;

/// Why a job did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolError {
    /// Shed (503): `backlog` is how long the queued work was expected to
    /// take, the basis of `Retry-After`.
    Overloaded {
        reason: ShedReason,
        backlog: Duration,
    },
    /// The pool has shut down, or the job panicked.
    Failed,
}

/// The pool's limits.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Threads (at least 1).
    pub threads: usize,
    /// Most jobs queued at once, the memory bound (at least 1).
    pub queue: usize,
    /// Longest a request's first job may expect to wait before it is shed.
    pub max_wait: Duration,
    /// How the threads yield the cores to everything else.
    pub priority: PoolPriority,
}

/// How pool threads stand against the other threads of the machine
/// (`--pool-priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolPriority {
    /// Run niced (+5) below the HTTP threads, and take a fair share of the
    /// cores against other programs. The default: a pool that any busy
    /// neighbour can stop is a hang to its users.
    Low,
    /// Run only when no ordinary thread wants the core (`SCHED_IDLE`): the
    /// HTTP threads are never delayed by compressions, but any busy program
    /// in the same run queue (the same cgroup, or none) starves the pool.
    Idle,
    /// Run at the process's own priority: for a command line, whose pool
    /// is the program's work (beside a `b3sum` or `sha256sum` at the same
    /// nice value, a niced pool gets a third of the share it should).
    #[value(skip)]
    Normal,
}

/// Handle to the pool; cheap to clone. The threads stop when the last handle
/// (lanes included) is gone.
#[derive(Clone)]
pub struct CpuPool {
    shared: Arc<Shared>,
    /// Closes the queue when the last handle drops.
    _owner: Arc<Owner>,
}

struct Shared {
    sched: Mutex<Sched>,
    /// Signalled when a job is queued or the pool closes.
    work: Condvar,
    /// One permit per queue place: the `--pool-queue` memory bound. A queued
    /// job holds its permit until a thread takes it.
    room: Arc<Semaphore>,
    /// Where queue depth, waits and rejections are counted; shared with the
    /// threads and the metrics endpoint.
    stats: &'static Slot,
    limits: PoolLimits,
    /// Origin of job keys (nanoseconds since it).
    epoch: Instant,
    /// Moving average of job costs (CPU ns, `job_cost`): the estimate for a
    /// lane's first job.
    mean_job: AtomicU64,
    /// Estimates (ns) of the jobs running now.
    running: AtomicU64,
    /// Lanes that declared their size (`Lane::plan`), for the
    /// processor-sharing estimate; dead entries are pruned on the way.
    planned: Mutex<Vec<Weak<LaneStats>>>,
    /// Live planned lanes (decremented when a lane's stats drop).
    planned_live: Arc<AtomicUsize>,
    /// Measured CPU cost per byte (picoseconds), per `WorkKind`.
    cost_ps: [AtomicU64; 3],
}

struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.work.notify_all();
    }
}

#[derive(Default)]
struct Sched {
    /// Jobs by key, smallest first.
    heap: BinaryHeap<Entry>,
    /// Ties broken by arrival.
    seq: u64,
    /// Sum of the queued jobs' estimates (ns).
    backlog: u64,
    /// Threads waiting for a job: a queued job wakes one only if there is
    /// one (a wake-up is a system call).
    idle: usize,
    closed: bool,
}

/// What a queued job is told when a thread takes it.
enum Go {
    /// Run, started at `started`, the thread's CPU clock reading `cpu`.
    Run { started: Instant, cpu: Duration },
    /// Its deadline passed while it waited this long.
    Expired(Duration),
}

/// A queued job. It returns the thread's CPU clock after it ran (`None`:
/// not run), which is the next job's starting reading: one clock read a job.
type Job = Box<dyn FnOnce(Go) -> Option<Duration> + Send + 'static>;

/// What a job cost: the CPU time its thread used, never more than the wall
/// time it took. Wall time alone counts the time the thread was preempted
/// (by the HTTP threads, by a compiler next door): one burst of that taught
/// the pool a cost per byte several times too high and shed requests of a
/// load it carries easily.
fn job_cost(started: Instant, cpu_before: Duration, cpu_after: Duration) -> Duration {
    cpu_after.saturating_sub(cpu_before).min(started.elapsed())
}

struct Entry {
    key: u64,
    seq: u64,
    job: Job,
    /// Estimated run time (ns), counted in `Sched::backlog` while queued.
    estimate: u64,
    enqueued: Instant,
    /// Admission jobs only: past it, the job is not run.
    deadline: Option<Instant>,
    _permit: OwnedSemaphorePermit,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.key, self.seq) == (other.key, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Cmp> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// Reversed: `BinaryHeap` is a max-heap, the smallest key goes first.
    fn cmp(&self, other: &Self) -> Cmp {
        (other.key, other.seq).cmp(&(self.key, self.seq))
    }
}

/// What the scheduler knows of one request's jobs.
#[derive(Default)]
struct LaneStats {
    /// CPU time its jobs have used (ns).
    used: AtomicU64,
    /// Cost of its last job (CPU ns, `job_cost`), the estimate for its next one.
    last: AtomicU64,
    /// What it declared (`Lane::plan`): the operation, its bytes and the
    /// CPU time (ns) they were expected to take.
    plan: OnceLock<Plan>,
}

struct Plan {
    work: WorkKind,
    bytes: u64,
    nanos: u64,
    /// `Shared::planned_live`, decremented when this lane's stats drop.
    live: Arc<AtomicUsize>,
}

impl Drop for LaneStats {
    fn drop(&mut self) {
        if let Some(plan) = self.plan.get() {
            plan.live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One request's way into the pool: its first job is admitted or shed
/// (`try_run`), the rest wait their turn (`run`, `submit`).
#[derive(Clone)]
pub struct Lane {
    pool: CpuPool,
    stats: Arc<LaneStats>,
}

impl LaneStats {
    /// CPU time (ns) its plan still expects, 0 without a plan.
    fn remaining(&self) -> u64 {
        self.plan.get().map_or(0, |p| {
            p.nanos.saturating_sub(self.used.load(Ordering::Relaxed))
        })
    }

    /// Counts a job's run time. Done by the job itself, before it hands
    /// over its result, so the lane's next job is queued knowing it.
    fn record(&self, took: Duration) {
        let took = took.as_nanos() as u64;
        self.used.fetch_add(took, Ordering::Relaxed);
        self.last.store(took.max(1), Ordering::Relaxed);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long a fresh request's first job queued now would wait for a
    /// thread: the work ahead of it (queued, and half of what runs) shared
    /// among the threads. Jobs of requests that have used CPU sort later
    /// (their penalty): when the whole backlog would pass the bound, only
    /// the jobs that really come first are counted.
    fn expected_wait(&self, s: &Sched) -> Duration {
        let threads = self.limits.threads as u64;
        let running = self.running.load(Ordering::Relaxed) / 2;
        let all = Duration::from_nanos((s.backlog + running) / threads);
        if all <= self.limits.max_wait {
            return all;
        }
        let now = (Instant::now() - self.epoch).as_nanos() as u64;
        let ahead: u64 = s
            .heap
            .iter()
            .filter(|e| e.key <= now)
            .map(|e| e.estimate)
            .sum();
        Duration::from_nanos((ahead + running) / threads)
    }

    /// Refuses (and counts) a request whose first job would wait longer
    /// than `--max-queue-wait` if queued now.
    fn admit_wait(&self, s: &Sched) -> Result<(), PoolError> {
        let wait = self.expected_wait(s);
        if wait > self.limits.max_wait {
            return Err(self.reject(ShedReason::Wait, wait));
        }
        Ok(())
    }

    fn reject(&self, reason: ShedReason, backlog: Duration) -> PoolError {
        self.stats.add_pool_rejected(reason);
        PoolError::Overloaded { reason, backlog }
    }

    fn enqueue(
        &self,
        s: &mut Sched,
        job: Job,
        lane: &Arc<LaneStats>,
        deadline: Option<Instant>,
        permit: OwnedSemaphorePermit,
    ) {
        let now = Instant::now();
        let penalty = Duration::from_nanos(lane.used.load(Ordering::Relaxed))
            .min(MAX_PENALTY)
            .min(self.limits.max_wait);
        let key = (now - self.epoch + penalty).as_nanos() as u64;
        let estimate = match lane.last.load(Ordering::Relaxed) {
            0 => self.mean_job.load(Ordering::Relaxed),
            last => last,
        };
        s.seq += 1;
        s.backlog += estimate;
        s.heap.push(Entry {
            key,
            seq: s.seq,
            job,
            estimate,
            enqueued: now,
            deadline,
            _permit: permit,
        });
        self.stats.pool_enqueued();
        if s.idle > 0 {
            self.work.notify_one();
        }
    }
}

impl CpuPool {
    /// Starts the threads.
    pub fn new(limits: PoolLimits, stats: &'static Slot) -> CpuPool {
        let limits = PoolLimits {
            threads: limits.threads.max(1),
            queue: limits.queue.max(1),
            max_wait: limits.max_wait,
            priority: limits.priority,
        };
        let shared = Arc::new(Shared {
            sched: Mutex::new(Sched::default()),
            work: Condvar::new(),
            room: Arc::new(Semaphore::new(limits.queue)),
            stats,
            limits,
            epoch: Instant::now(),
            mean_job: AtomicU64::new(FIRST_ESTIMATE.as_nanos() as u64),
            running: AtomicU64::new(0),
            planned: Mutex::new(Vec::new()),
            planned_live: Arc::new(AtomicUsize::new(0)),
            cost_ps: FIRST_COST_PS.map(AtomicU64::new),
        });
        for i in 0..limits.threads {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("hashpress-cpu-{i}"))
                .spawn(move || worker_loop(&shared))
                .expect("spawning a pool thread");
        }
        CpuPool {
            _owner: Arc::new(Owner(Arc::clone(&shared))),
            shared,
        }
    }

    pub fn threads(&self) -> usize {
        self.shared.limits.threads
    }

    /// No job is waiting for a thread: work split over several threads now
    /// takes cores that are free or about to be, and delays no one.
    pub fn no_backlog(&self) -> bool {
        self.shared.lock().heap.is_empty()
    }

    pub fn queue_capacity(&self) -> usize {
        self.shared.limits.queue
    }

    pub fn stats(&self) -> &'static Slot {
        self.shared.stats
    }

    /// A new request's lane.
    pub fn lane(&self) -> Lane {
        Lane {
            pool: self.clone(),
            stats: Arc::default(),
        }
    }

    /// Admission of a request that has a single job: `lane().try_run(f)`.
    pub async fn try_run<F, R>(&self, f: F) -> Result<R, PoolError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.lane().try_run(f).await
    }

    /// A continuation job in a lane of its own: `lane().run(f)`. A request
    /// with several jobs should run them all in its `Lane`, so that the
    /// scheduler sees what the request has used.
    pub async fn run<F, R>(&self, f: F) -> Result<R, PoolError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.lane().run(f).await
    }
}

impl Lane {
    /// Admission: queues `f` if the work ahead of it is expected to take less
    /// than `--max-queue-wait` and the queue has room, else fails at once
    /// with `Overloaded` (and counts the rejection). `f` is not run, and
    /// fails the same way, if it still waits when that time has passed.
    pub async fn try_run<F, R>(&self, f: F) -> Result<R, PoolError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let sh = &self.pool.shared;
        let permit = match Arc::clone(&sh.room).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let backlog = sh.expected_wait(&sh.lock());
                return Err(sh.reject(ShedReason::Memory, backlog));
            }
        };
        let (job, rx) = wrap(f, &self.stats);
        {
            let mut s = sh.lock();
            if s.closed {
                return Err(PoolError::Failed);
            }
            sh.admit_wait(&s)?;
            let deadline = Instant::now() + sh.limits.max_wait;
            sh.enqueue(&mut s, job, &self.stats, Some(deadline), permit);
        }
        rx.await.map_err(|_| PoolError::Failed)?
    }

    /// Admission without a job, for a request whose first step needed no
    /// pool thread (a file opened from the kernel's caches): refused as
    /// `try_run` would refuse its first job, by the expected wait or a full
    /// queue. Its jobs then wait their turn like continuations.
    pub fn admit(&self) -> Result<(), PoolError> {
        let sh = &self.pool.shared;
        let s = sh.lock();
        if s.closed {
            return Err(PoolError::Failed);
        }
        if sh.room.available_permits() == 0 {
            let backlog = sh.expected_wait(&s);
            return Err(sh.reject(ShedReason::Memory, backlog));
        }
        sh.admit_wait(&s)
    }

    /// Continuation: waits for room in the queue, then for the result.
    pub async fn run<F, R>(&self, f: F) -> Result<R, PoolError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.submit(f).await?.wait().await
    }

    /// Declares the work still ahead of this request (`bytes` of `work`) and
    /// admits it a second time by its size: refused with `Overloaded` when
    /// sharing the threads with the planned requests already running would
    /// delay it by more than `--max-queue-wait`. Once per lane; later calls
    /// are ignored.
    pub fn plan(&self, work: WorkKind, bytes: u64) -> Result<(), PoolError> {
        let sh = &self.pool.shared;
        if self.stats.plan.get().is_some() {
            return Ok(());
        }
        let own = (bytes as u128 * sh.cost_ps[work as usize].load(Ordering::Relaxed) as u128 / 1000)
            .min(u64::MAX as u128) as u64;
        let k = sh.limits.threads as u64;
        // Finishing together with the others: (own + what each other
        // request does before we finish) shared by k threads; the delay is
        // what that adds to running alone.
        let delay = |others: u64| (own.saturating_add(others) / k).saturating_sub(own);
        let max = sh.limits.max_wait.as_nanos() as u64;
        let mut list = sh.planned.lock().unwrap_or_else(|p| p.into_inner());
        let n = sh.planned_live.load(Ordering::Relaxed) as u64;
        // Each other request delays us by at most `own`: small requests
        // pass here without looking at the list.
        if delay(own.saturating_mul(n)) > max {
            list.retain(|w| w.strong_count() > 0);
            let others: u64 = list
                .iter()
                .filter_map(Weak::upgrade)
                .map(|l| l.remaining().min(own))
                .sum();
            let d = delay(others);
            if d > max {
                drop(list);
                return Err(sh.reject(ShedReason::Wait, Duration::from_nanos(d)));
            }
        }
        let plan = Plan {
            work,
            bytes,
            nanos: own,
            live: Arc::clone(&sh.planned_live),
        };
        if self.stats.plan.set(plan).is_ok() {
            sh.planned_live.fetch_add(1, Ordering::Relaxed);
            if list.len() > 2 * n as usize + 16 {
                list.retain(|w| w.strong_count() > 0);
            }
            list.push(Arc::downgrade(&self.stats));
        }
        Ok(())
    }

    /// The request's work is complete: what its planned bytes cost teaches
    /// the pool the cost per byte of its operation.
    pub fn done(&self) {
        let Some(plan) = self.stats.plan.get() else {
            return;
        };
        let used = self.stats.used.load(Ordering::Relaxed);
        if plan.bytes < LEARN_FROM_BYTES || used == 0 {
            return;
        }
        let seen = (used as u128 * 1000 / plan.bytes as u128).max(1) as u64;
        let cost = &self.pool.shared.cost_ps[plan.work as usize];
        let old = cost.load(Ordering::Relaxed);
        // cost += (seen - cost) / 4
        cost.store(
            (old as i128 + (seen as i128 - old as i128) / 4).max(1) as u64,
            Ordering::Relaxed,
        );
    }

    /// Continuation that overlaps with its caller: waits for room in the
    /// queue, queues `f` and returns at once, so the caller can go on (read
    /// the next part of a body) while the job runs. Dropping the returned
    /// handle before the job starts skips the job.
    pub async fn submit<F, R>(&self, f: F) -> Result<Pending<R>, PoolError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let sh = &self.pool.shared;
        let permit = Arc::clone(&sh.room)
            .acquire_owned()
            .await
            .map_err(|_| PoolError::Failed)?;
        let (job, rx) = wrap(f, &self.stats);
        let mut s = sh.lock();
        if s.closed {
            return Err(PoolError::Failed);
        }
        sh.enqueue(&mut s, job, &self.stats, None, permit);
        Ok(Pending(rx))
    }
}

/// The result of a job queued by `Lane::submit`, still to come.
pub struct Pending<R>(oneshot::Receiver<Result<R, PoolError>>);

impl<R> Pending<R> {
    pub async fn wait(self) -> Result<R, PoolError> {
        self.0.await.map_err(|_| PoolError::Failed)?
    }
}

fn wrap<F, R>(f: F, lane: &Arc<LaneStats>) -> (Job, oneshot::Receiver<Result<R, PoolError>>)
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let lane = Arc::clone(lane);
    let job: Job = Box::new(move |go| {
        // The requester is gone (client disconnected): skip the work.
        if tx.is_closed() {
            return None;
        }
        let (result, clock) = match go {
            Go::Run { started, cpu } => {
                let r = f();
                let clock = crate::sys::thread_cpu_time();
                lane.record(job_cost(started, cpu, clock));
                (Ok(r), Some(clock))
            }
            Go::Expired(waited) => (
                Err(PoolError::Overloaded {
                    reason: ShedReason::Wait,
                    backlog: waited,
                }),
                None,
            ),
        };
        let _ = tx.send(result);
        clock
    });
    (job, rx)
}

/// How much lower than the HTTP threads the pool threads run (nice) at
/// `PoolPriority::Low`, or where the `SCHED_IDLE` class is refused.
const POOL_NICE: i32 = 5;

/// Puts the calling pool thread below the HTTP threads.
///
/// The HTTP threads parse heads, answer small requests inline and hand
/// jobs over: a few microseconds of work each, which should not wait behind
/// a core full of gzip. A lower nice value shrinks the pool's share, but a
/// woken HTTP thread that has used its share is not eligible to preempt, and
/// a pool thread once picked keeps the core until the next tick (4 ms at
/// HZ=250): measured beside 8 gzip streams, a 64 KiB hash's p99 went from
/// 1.4 ms to ~8 ms at nice +5, and nice +19 did no better. A `SCHED_IDLE`
/// thread is preempted the moment an ordinary one wakes (~3 ms p99), but
/// it is also starved by any other busy program, hence opt-in. Best effort:
/// where the class is refused, the thread is niced by `POOL_NICE` instead.
fn lower_priority(priority: PoolPriority) {
    match priority {
        PoolPriority::Normal => {}
        PoolPriority::Low => crate::sys::lower_thread_priority(POOL_NICE),
        PoolPriority::Idle => {
            if !crate::sys::make_thread_idle_class() {
                crate::sys::lower_thread_priority(POOL_NICE);
            }
        }
    }
}

fn worker_loop(sh: &Shared) {
    lower_priority(sh.limits.priority);
    // The thread's CPU clock after its last job: what the loop itself uses
    // between jobs (a lock, a heap pop) is counted in the next job's cost.
    let mut cpu = crate::sys::thread_cpu_time();
    loop {
        let entry = {
            let mut s = sh.lock();
            loop {
                if let Some(e) = s.heap.pop() {
                    s.backlog -= e.estimate;
                    break e;
                }
                if s.closed {
                    return;
                }
                s.idle += 1;
                s = sh.work.wait(s).unwrap_or_else(|p| p.into_inner());
                s.idle -= 1;
            }
        };
        let Entry {
            job,
            estimate,
            enqueued,
            deadline,
            _permit,
            ..
        } = entry;
        // The queue place is free as soon as the job leaves it.
        drop(_permit);
        let started = Instant::now();
        sh.stats.pool_started(started - enqueued);
        if deadline.is_some_and(|d| started > d) {
            sh.stats.add_pool_rejected(ShedReason::Wait);
            let _ = job(Go::Expired(started - enqueued));
            sh.stats.pool_finished();
            continue;
        }
        sh.running.fetch_add(estimate, Ordering::Relaxed);
        // A panicking job must not take the thread with it; its requester sees
        // the dropped sender as `PoolError::Failed`.
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            job(Go::Run { started, cpu })
        }));
        let took = match ran {
            Ok(Some(clock)) => job_cost(started, std::mem::replace(&mut cpu, clock), clock),
            // Skipped, or panicked: its time is counted in the next job.
            _ => started.elapsed(),
        }
        .as_nanos() as u64;
        sh.running.fetch_sub(estimate, Ordering::Relaxed);
        // mean += (took - mean) / 8, racing threads may lose an update: fine
        // for an estimate.
        let mean = sh.mean_job.load(Ordering::Relaxed);
        let next = (mean as i128 + (took as i128 - mean as i128) / 8).max(1) as u64;
        sh.mean_job.store(next, Ordering::Relaxed);
        sh.stats.pool_finished();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::sync::atomic::AtomicBool;

    fn pool(threads: usize, queue: usize, max_wait: Duration) -> CpuPool {
        CpuPool::new(
            PoolLimits {
                threads,
                queue,
                max_wait,
                priority: PoolPriority::Low,
            },
            Box::leak(Slot::new_boxed()),
        )
    }

    /// Waits until `cond` holds; panics after 10 s. It sleeps between looks
    /// rather than spinning: a spinning thread would keep the `SCHED_IDLE`
    /// pool threads it waits for off the cores.
    async fn until(cond: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("condition not reached in 10 s");
    }

    /// Stands for `d` of CPU work: spins until the thread's CPU clock has
    /// advanced by `d` (the pool learns costs from that clock; a sleep
    /// costs nothing).
    fn work(d: Duration) {
        let end = crate::sys::thread_cpu_time() + d;
        while crate::sys::thread_cpu_time() < end {
            std::hint::spin_loop();
        }
    }

    /// Occupies the pool's only thread until the returned barrier is passed.
    ///
    /// It waits for the job itself to start: the pool's busy count can
    /// still hold the previous job, whose requester has its answer before
    /// the thread counts it finished.
    async fn occupy(pool: &CpuPool) -> (Arc<Barrier>, tokio::task::JoinHandle<()>) {
        let gate = Arc::new(Barrier::new(2));
        let g = Arc::clone(&gate);
        let started = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&started);
        let lane = pool.lane();
        let busy = tokio::spawn(async move {
            lane.try_run(move || {
                s.store(true, Ordering::SeqCst);
                g.wait();
            })
            .await
            .unwrap()
        });
        until(|| started.load(Ordering::SeqCst)).await;
        (gate, busy)
    }

    #[tokio::test]
    async fn runs_jobs_and_returns_results() {
        let pool = pool(2, 4, Duration::from_secs(1));
        let r = pool.try_run(|| 21 * 2).await;
        assert_eq!(r, Ok(42));
        let lane = pool.lane();
        assert_eq!(lane.run(|| "x".repeat(3)).await.unwrap(), "xxx");
    }

    /// A submitted job runs while its submitter goes on, and a handle
    /// dropped before its job starts means the job is skipped.
    #[tokio::test]
    async fn submit_overlaps_and_dropping_skips() {
        let pool = pool(1, 4, Duration::from_secs(1));
        let lane = pool.lane();
        let gate = Arc::new(Barrier::new(2));
        let g = Arc::clone(&gate);
        let first = lane.submit(move || g.wait()).await.unwrap();
        // The submitter is free while the first job waits at the gate.
        let ran = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&ran);
        let skipped = lane
            .submit(move || r.store(true, Ordering::SeqCst))
            .await
            .unwrap();
        drop(skipped);
        gate.wait();
        first.wait().await.unwrap();
        // The pool has one thread: once this job ran, the skipped one had its turn.
        assert_eq!(lane.run(|| 5).await, Ok(5));
        assert!(!ran.load(Ordering::SeqCst));
    }

    /// The queue-place bound still holds: a full queue sheds with reason
    /// "memory", and frees up when the jobs run.
    #[tokio::test]
    async fn sheds_when_the_queue_is_full_and_recovers() {
        let pool = pool(1, 1, Duration::from_secs(3600));
        let (gate, busy) = occupy(&pool).await;
        let queued = tokio::spawn({
            let pool = pool.clone();
            async move { pool.try_run(|| 1).await }
        });
        until(|| pool.stats().pool_queued() == 1).await;
        let r = pool.try_run(|| 2).await;
        assert!(
            matches!(
                r,
                Err(PoolError::Overloaded {
                    reason: ShedReason::Memory,
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(pool.stats().pool_rejected(), 1);
        gate.wait();
        busy.await.unwrap();
        assert_eq!(queued.await.unwrap(), Ok(1));
        assert_eq!(pool.try_run(|| 3).await, Ok(3));
    }

    /// Admission looks at the time the queued work will take, not at how
    /// many jobs there are: cheap jobs pile up without a 503, expensive ones
    /// are shed as soon as the expected wait passes the bound.
    #[tokio::test]
    async fn admission_is_by_expected_wait() {
        let pool = pool(1, 10_000, Duration::from_millis(200));
        // Teach the pool what a job costs: 20 ms each.
        for _ in 0..30 {
            pool.try_run(|| work(Duration::from_millis(20)))
                .await
                .unwrap();
        }
        let (gate, busy) = occupy(&pool).await;
        // Each queued lane's estimate is the mean (~20 ms): about ten fit in 200 ms.
        let mut admitted = Vec::new();
        let mut shed = None;
        for i in 0..40 {
            let lane = pool.lane();
            let (tx, rx) = oneshot::channel();
            let t = tokio::spawn(async move {
                let r = lane.try_run(|| work(Duration::from_millis(1))).await;
                let _ = tx.send(());
                r
            });
            // Either queued (the depth grows) or refused (the task ends).
            let before = pool.stats().pool_queued();
            tokio::select! {
                _ = rx => { shed = Some((i, t.await.unwrap())); break; }
                _ = until(|| pool.stats().pool_queued() > before) => {}
            }
            admitted.push(t);
        }
        let (i, r) = shed.expect("some request is shed");
        assert!(
            (5..=15).contains(&i),
            "shed after {i} queued jobs of ~20 ms"
        );
        match r {
            Err(PoolError::Overloaded {
                reason: ShedReason::Wait,
                backlog,
            }) => assert!(backlog > Duration::from_millis(150), "{backlog:?}"),
            other => panic!("{other:?}"),
        }
        gate.wait();
        busy.await.unwrap();
        for t in admitted {
            t.await.unwrap().unwrap();
        }
        // Cheap jobs on a pool that has only seen cheap ones: hundreds queue
        // at once without a refusal (the bound is generous against a loaded
        // test machine's noise in the measured costs, still far below what
        // 500 jobs of 20 ms would need).
        let pool = self::pool(1, 10_000, Duration::from_secs(2));
        for _ in 0..200 {
            pool.try_run(|| ()).await.unwrap();
        }
        let (gate, busy) = occupy(&pool).await;
        let lanes: Vec<_> = (0..500)
            .map(|_| {
                let lane = pool.lane();
                tokio::spawn(async move { lane.try_run(|| ()).await })
            })
            .collect();
        until(|| pool.stats().pool_queued() == 500 || pool.stats().pool_rejected() > 0).await;
        assert_eq!(pool.stats().pool_rejected(), 0, "cheap jobs were shed");
        gate.wait();
        busy.await.unwrap();
        for t in lanes {
            t.await.unwrap().unwrap();
        }
    }

    /// A first job still queued at its deadline is not run, and its
    /// request is told it was shed for waiting.
    #[tokio::test]
    async fn a_first_job_past_its_deadline_is_not_run() {
        let pool = pool(1, 16, Duration::from_millis(50));
        let (gate, busy) = occupy(&pool).await;
        let ran = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&ran);
        let late = tokio::spawn({
            let pool = pool.clone();
            async move { pool.try_run(move || r.store(true, Ordering::SeqCst)).await }
        });
        until(|| pool.stats().pool_queued() == 1).await;
        tokio::time::sleep(Duration::from_millis(120)).await;
        gate.wait();
        busy.await.unwrap();
        let r = late.await.unwrap();
        assert!(
            matches!(r, Err(PoolError::Overloaded { reason: ShedReason::Wait, backlog }) if backlog >= Duration::from_millis(50)),
            "{r:?}"
        );
        assert!(!ran.load(Ordering::SeqCst));
        assert_eq!(pool.stats().pool_rejected(), 1);
    }

    /// A new request's job runs before the queued next chunk of a request
    /// that has already used a lot of CPU, whatever the arrival order.
    #[tokio::test]
    async fn a_fresh_request_goes_before_a_heavy_one() {
        let pool = pool(1, 16, Duration::from_secs(10));
        let heavy = pool.lane();
        heavy.run(|| work(Duration::from_millis(30))).await.unwrap();
        let (gate, busy) = occupy(&pool).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let o = Arc::clone(&order);
        let big = heavy
            .submit(move || o.lock().unwrap().push("big"))
            .await
            .unwrap();
        let o = Arc::clone(&order);
        let small = tokio::spawn({
            let pool = pool.clone();
            async move { pool.try_run(move || o.lock().unwrap().push("small")).await }
        });
        until(|| pool.stats().pool_queued() == 2).await;
        gate.wait();
        busy.await.unwrap();
        big.wait().await.unwrap();
        small.await.unwrap().unwrap();
        assert_eq!(*order.lock().unwrap(), ["small", "big"]);
    }

    /// A request that declares its size is refused when sharing the
    /// threads with the big requests already running would delay it past
    /// the bound; a small one beside them is not; a finished request frees
    /// its share.
    #[tokio::test]
    async fn planned_requests_are_admitted_by_their_size() {
        let pool = pool(1, 16, Duration::from_millis(200));
        // 100 MB of gzip at the first estimate (20 ns a byte) is 2 s of CPU.
        let first = pool.lane();
        first.plan(WorkKind::Gzip, 100_000_000).unwrap();
        let second = pool.lane();
        let r = second.plan(WorkKind::Gzip, 100_000_000);
        match r {
            Err(PoolError::Overloaded {
                reason: ShedReason::Wait,
                backlog,
            }) => assert!(backlog >= Duration::from_secs(1), "{backlog:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(pool.stats().pool_rejected(), 1);
        // A 64 KiB hash waits at most its own ~65 µs per running request.
        pool.lane().plan(WorkKind::Hash, 64 << 10).unwrap();
        // So does a 1 MiB gzip (~20 ms) on a pool whose bound allows it.
        pool.lane().plan(WorkKind::Gzip, 1 << 20).unwrap();
        drop(first);
        pool.lane().plan(WorkKind::Gzip, 100_000_000).unwrap();
    }

    /// What a finished request's bytes cost is learned, per operation.
    #[tokio::test]
    async fn cost_per_byte_is_learned_from_finished_requests() {
        let pool = pool(1, 16, Duration::from_secs(1));
        let cost = |work: WorkKind| pool.shared.cost_ps[work as usize].load(Ordering::Relaxed);
        assert_eq!(cost(WorkKind::Hash), FIRST_COST_PS[0]);
        let lane = pool.lane();
        lane.plan(WorkKind::Hash, 8 << 20).unwrap();
        // 8 MiB in 80 ms: ~9,500 ps a byte, far above the first guess.
        lane.run(|| work(Duration::from_millis(80))).await.unwrap();
        lane.done();
        let learned = cost(WorkKind::Hash);
        assert!(learned > 2_500 && learned < 9_500, "{learned}");
        assert_eq!(cost(WorkKind::Gzip), FIRST_COST_PS[1]);
        assert_eq!(cost(WorkKind::Zstd), FIRST_COST_PS[2]);
        // A small request teaches nothing.
        let small = pool.lane();
        small.plan(WorkKind::Hash, 64 << 10).unwrap();
        small.run(|| work(Duration::from_millis(50))).await.unwrap();
        small.done();
        assert_eq!(cost(WorkKind::Hash), learned);
    }

    /// A job's cost is the CPU time it used: the time its thread spent off
    /// the core (preempted by a busy neighbour, here a sleep) is not work,
    /// and must not teach the pool that bytes are dearer than they are.
    #[tokio::test]
    async fn costs_are_cpu_time_not_wall_time() {
        let pool = pool(1, 16, Duration::from_secs(1));
        let lane = pool.lane();
        lane.plan(WorkKind::Gzip, 8 << 20).unwrap();
        // 8 MiB "in" 200 ms of wall time: 25,000 ps a byte if wall time counted.
        lane.run(|| thread::sleep(Duration::from_millis(200)))
            .await
            .unwrap();
        assert!(
            lane.stats.used.load(Ordering::Relaxed) < 20_000_000,
            "a sleeping job was charged its wall time"
        );
        lane.done();
        let learned = pool.shared.cost_ps[WorkKind::Gzip as usize].load(Ordering::Relaxed);
        assert!(learned < FIRST_COST_PS[1], "{learned}");
        assert!(pool.shared.mean_job.load(Ordering::Relaxed) < 20_000_000);
    }

    /// A backlog made of a heavy request's penalized chunks does not shed a
    /// fresh request: those chunks would run after it.
    #[tokio::test]
    async fn penalized_work_does_not_count_against_fresh_requests() {
        let pool = pool(1, 64, Duration::from_millis(50));
        let heavy = pool.lane();
        heavy.run(|| work(Duration::from_millis(40))).await.unwrap();
        let (gate, busy) = occupy(&pool).await;
        // Ten queued chunks of ~40 ms each: 400 ms of work, all penalized.
        let mut chunks = Vec::new();
        for _ in 0..10 {
            chunks.push(heavy.submit(|| ()).await.unwrap());
        }
        let fresh = tokio::spawn({
            let pool = pool.clone();
            async move { pool.try_run(|| 1).await }
        });
        until(|| pool.stats().pool_queued() == 11).await;
        assert_eq!(pool.stats().pool_rejected(), 0);
        gate.wait();
        busy.await.unwrap();
        assert_eq!(fresh.await.unwrap(), Ok(1));
        for c in chunks {
            c.wait().await.unwrap();
        }
    }

    /// Pool threads run below the threads that submit to them, unless asked
    /// to run at the program's priority.
    #[tokio::test]
    async fn pool_threads_run_at_a_lower_priority() {
        fn class_and_nice() -> (bool, i32) {
            (
                crate::sys::thread_is_idle_class(),
                crate::sys::thread_nice(),
            )
        }
        let (idle, mine) = class_and_nice();
        assert!(!idle);
        let niced = (mine + POOL_NICE).min(19);
        let low = pool(1, 4, Duration::from_secs(1));
        assert_eq!(low.try_run(class_and_nice).await, Ok((false, niced)));
        let idle_class = CpuPool::new(
            PoolLimits {
                threads: 1,
                queue: 4,
                max_wait: Duration::from_secs(1),
                priority: PoolPriority::Idle,
            },
            Box::leak(Slot::new_boxed()),
        );
        // Niced instead only where the class is refused.
        let (idle, nice) = idle_class.try_run(class_and_nice).await.unwrap();
        assert!(idle || nice == niced, "idle {idle}, nice {nice}");
        // A command line's pool stays at the program's own priority.
        let normal = CpuPool::new(
            PoolLimits {
                threads: 1,
                queue: 4,
                max_wait: Duration::from_secs(1),
                priority: PoolPriority::Normal,
            },
            Box::leak(Slot::new_boxed()),
        );
        assert_eq!(normal.try_run(class_and_nice).await, Ok((false, mine)));
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone() {
        let pool = pool(1, 2, Duration::from_secs(1));
        let r: Result<(), _> = pool.try_run(|| panic!("boom")).await;
        assert_eq!(r, Err(PoolError::Failed));
        assert_eq!(pool.try_run(|| 7).await, Ok(7));
    }
}
