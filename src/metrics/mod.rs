//! Metrics that stay right across every process.
//!
//! Each process records into its own `Slot`: a flat array of atomic
//! counters plus two gauges, valid when all-zero and free of pointers, so
//! slots can live in one shared memory region (`region.rs`) that the
//! supervisor creates and every worker maps. A scrape on any worker sums the
//! live slots and the "retired" slot into which the supervisor folds the
//! counts of every worker that has exited, so totals never go backwards and
//! scrape cost does not grow with restarts. `snapshot.rs` renders the sum as
//! Prometheus text or JSON; `process.rs` reads per-process CPU, memory and
//! descriptors from /proc.

pub mod process;
pub mod region;
pub mod snapshot;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

pub use crate::routes::Route;
pub use region::Region;
pub use snapshot::Snapshot;

/// Methods with their own label value; the rest are "other".
pub const METHODS: [&str; 3] = ["GET", "POST", "other"];
/// Status codes with their own label value; the rest are "other".
pub const STATUSES: [u16; 20] = [
    200, 400, 401, 403, 404, 405, 408, 409, 411, 413, 414, 415, 429, 431, 500, 501, 502, 503, 504,
    507,
];
/// Upper bounds of the latency histogram, in seconds (100 µs to 60 s).
pub const BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Requests to the object store, the `op` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageOp {
    Get = 0,
    Head = 1,
    List = 2,
    Put = 3,
    CreateUpload = 4,
    UploadPart = 5,
    CompleteUpload = 6,
    AbortUpload = 7,
}

impl StorageOp {
    pub const ALL: [StorageOp; 8] = [
        StorageOp::Get,
        StorageOp::Head,
        StorageOp::List,
        StorageOp::Put,
        StorageOp::CreateUpload,
        StorageOp::UploadPart,
        StorageOp::CompleteUpload,
        StorageOp::AbortUpload,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StorageOp::Get => "get",
            StorageOp::Head => "head",
            StorageOp::List => "list",
            StorageOp::Put => "put",
            StorageOp::CreateUpload => "create_upload",
            StorageOp::UploadPart => "upload_part",
            StorageOp::CompleteUpload => "complete_upload",
            StorageOp::AbortUpload => "abort_upload",
        }
    }
}

/// How a request to the object store ended, the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageOutcome {
    Ok = 0,
    NotFound = 1,
    Denied = 2,
    /// The object changed under a read (`If-Match` failed).
    Changed = 3,
    /// Unreachable, or errors after the retries.
    Unavailable = 4,
    /// No answer within `--s3-deadline`.
    Timeout = 5,
}

impl StorageOutcome {
    pub const ALL: [StorageOutcome; 6] = [
        StorageOutcome::Ok,
        StorageOutcome::NotFound,
        StorageOutcome::Denied,
        StorageOutcome::Changed,
        StorageOutcome::Unavailable,
        StorageOutcome::Timeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StorageOutcome::Ok => "ok",
            StorageOutcome::NotFound => "not_found",
            StorageOutcome::Denied => "denied",
            StorageOutcome::Changed => "changed",
            StorageOutcome::Unavailable => "unavailable",
            StorageOutcome::Timeout => "timeout",
        }
    }
}

const N_ROUTE: usize = Route::ALL.len();
pub(crate) const N_SOP: usize = StorageOp::ALL.len();
pub(crate) const N_SOUTCOME: usize = StorageOutcome::ALL.len();
const N_METHOD: usize = METHODS.len();
pub(crate) const N_STATUS: usize = STATUSES.len() + 1;
/// Histogram buckets including +Inf.
pub(crate) const N_BUCKET: usize = BUCKETS.len() + 1;

/// Where each counter lives in `Slot::counters`.
pub(crate) mod ix {
    use super::*;
    const REQ: usize = 0;
    const DUR: usize = REQ + N_ROUTE * N_METHOD * N_STATUS;
    const DUR_SUM: usize = DUR + N_ROUTE * N_BUCKET;
    const BYTES: usize = DUR_SUM + N_ROUTE;
    const POOL_REJECTED: usize = BYTES + 4;
    const QUEUE_WAIT: usize = POOL_REJECTED + SHED_REASONS.len();
    pub const QUEUE_WAIT_SUM: usize = QUEUE_WAIT + N_BUCKET;
    pub const CACHE: usize = QUEUE_WAIT_SUM + 1;
    const STORAGE_REQ: usize = CACHE + 2;
    const STORAGE_DUR: usize = STORAGE_REQ + N_SOP * N_SOUTCOME;
    const STORAGE_DUR_SUM: usize = STORAGE_DUR + N_SOP * N_BUCKET;
    const STORAGE_BYTES: usize = STORAGE_DUR_SUM + N_SOP;
    pub const DIGEST_MISMATCH: usize = STORAGE_BYTES + 2;
    pub const COUNT: usize = DIGEST_MISMATCH + 1;

    /// Every request counter, whatever its labels.
    pub const REQUESTS: std::ops::Range<usize> = REQ..DUR;

    pub fn requests(route: usize, method: usize, status: usize) -> usize {
        REQ + (route * N_METHOD + method) * N_STATUS + status
    }
    /// Per-bucket (not cumulative) count.
    pub fn bucket(route: usize, bucket: usize) -> usize {
        DUR + route * N_BUCKET + bucket
    }
    pub fn duration_sum_nanos(route: usize) -> usize {
        DUR_SUM + route
    }
    pub fn bytes(op: Op, dir: Direction) -> usize {
        BYTES + op as usize * 2 + dir as usize
    }
    pub fn pool_rejected(reason: ShedReason) -> usize {
        POOL_REJECTED + reason as usize
    }
    /// Per-bucket (not cumulative) count of pool queue waits.
    pub fn queue_wait(bucket: usize) -> usize {
        QUEUE_WAIT + bucket
    }
    /// `hit` = true for hits.
    pub fn cache(hit: bool) -> usize {
        CACHE + hit as usize
    }
    pub fn storage_requests(op: StorageOp, outcome: StorageOutcome) -> usize {
        STORAGE_REQ + op as usize * N_SOUTCOME + outcome as usize
    }
    /// Per-bucket (not cumulative) count.
    pub fn storage_bucket(op: StorageOp, bucket: usize) -> usize {
        STORAGE_DUR + op as usize * N_BUCKET + bucket
    }
    pub fn storage_duration_sum_nanos(op: StorageOp) -> usize {
        STORAGE_DUR_SUM + op as usize
    }
    /// `read` = true for bytes read from the store, false for bytes written.
    pub fn storage_bytes(read: bool) -> usize {
        STORAGE_BYTES + !read as usize
    }
}

/// Why the CPU pool shed a request, the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShedReason {
    /// Its first job would have waited longer than `--max-queue-wait`, or did.
    Wait = 0,
    /// The queue held `--pool-queue` jobs.
    Memory = 1,
}

pub const SHED_REASONS: [&str; 2] = ["wait", "memory"];

/// What processed bytes were for.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Hash = 0,
    Compress = 1,
}

/// Which side of the operation the bytes were on.
#[derive(Clone, Copy, Debug)]
pub enum Direction {
    In = 0,
    Out = 1,
}

/// The histogram bucket (of `BUCKETS`, or +Inf) that holds `took`.
fn bucket_of(took: Duration) -> usize {
    let secs = took.as_secs_f64();
    BUCKETS
        .iter()
        .position(|&le| secs <= le)
        .unwrap_or(N_BUCKET - 1)
}

/// One process's counters, and the few figures by which the workers and the
/// supervisor balance connections. All-zero is a valid, empty slot.
#[repr(C)]
pub struct Slot {
    /// Monotonic counters, indexed by `ix`; folded into the retired slot
    /// when the process exits.
    counters: [AtomicU64; ix::COUNT],
    /// Gauges: jobs waiting, threads busy. Signed so that a decrement racing
    /// ahead of its increment never wraps. Zeroed, not folded, at exit.
    pool_queued: AtomicI64,
    pool_busy: AtomicI64,
    /// Connections this process holds open: read by the other workers'
    /// accept gates and by the supervisor when it rebalances.
    connections_open: AtomicI64,
    /// Until when (Unix ms) this process counts as accepting: refreshed by
    /// the worker while it accepts, 0 once it drains. A peer that stops
    /// refreshing it (stuck) stops counting for the others' accept gates.
    accepting_until_ms: AtomicU64,
    /// Answers that are still to carry `Connection: close`: set by the
    /// supervisor to move connections off a worker that holds too many.
    shed: AtomicU64,
}

impl Slot {
    /// A zeroed slot on the heap (for tests; processes use a `Region`).
    pub fn new_boxed() -> Box<Slot> {
        // SAFETY: Slot is repr(C) and made only of atomics, for which all-zero is valid.
        unsafe { Box::<Slot>::new_zeroed().assume_init() }
    }

    fn add(&self, i: usize, n: u64) {
        self.counters[i].fetch_add(n, Ordering::Relaxed);
    }

    pub fn record_request(&self, route: Route, method: &str, status: u16, took: Duration) {
        let m = METHODS
            .iter()
            .position(|x| *x == method)
            .unwrap_or(N_METHOD - 1);
        let s = STATUSES
            .iter()
            .position(|x| *x == status)
            .unwrap_or(N_STATUS - 1);
        let r = route as usize;
        self.add(ix::requests(r, m, s), 1);
        self.add(ix::bucket(r, bucket_of(took)), 1);
        self.add(ix::duration_sum_nanos(r), took.as_nanos() as u64);
    }

    /// One request to the object store (retries included) and how it ended.
    pub fn record_storage(&self, op: StorageOp, outcome: StorageOutcome, took: Duration) {
        self.add(ix::storage_requests(op, outcome), 1);
        self.add(ix::storage_bucket(op, bucket_of(took)), 1);
        self.add(ix::storage_duration_sum_nanos(op), took.as_nanos() as u64);
    }

    /// Object bytes read from (`read`) or written to the store.
    pub fn add_storage_bytes(&self, read: bool, n: u64) {
        self.add(ix::storage_bytes(read), n);
    }

    pub fn add_bytes(&self, op: Op, dir: Direction, n: u64) {
        self.add(ix::bytes(op, dir), n);
    }

    pub fn add_pool_rejected(&self, reason: ShedReason) {
        self.add(ix::pool_rejected(reason), 1);
    }

    pub fn add_digest_cache(&self, hit: bool) {
        self.add(ix::cache(hit), 1);
    }

    /// A request's content did not match its `Content-Digest`.
    pub fn add_digest_mismatch(&self) {
        self.add(ix::DIGEST_MISMATCH, 1);
    }

    pub fn pool_enqueued(&self) {
        self.pool_queued.fetch_add(1, Ordering::Relaxed);
    }

    /// A pool thread took a job off the queue, where it had waited `waited`.
    pub fn pool_started(&self, waited: Duration) {
        self.add(ix::queue_wait(bucket_of(waited)), 1);
        self.add(ix::QUEUE_WAIT_SUM, waited.as_nanos() as u64);
        self.pool_queued.fetch_sub(1, Ordering::Relaxed);
        self.pool_busy.fetch_add(1, Ordering::Relaxed);
    }

    pub fn pool_finished(&self) {
        self.pool_busy.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn pool_queued(&self) -> u64 {
        self.pool_queued.load(Ordering::Relaxed).max(0) as u64
    }

    pub fn pool_busy(&self) -> u64 {
        self.pool_busy.load(Ordering::Relaxed).max(0) as u64
    }

    /// Requests shed, for every reason.
    pub fn pool_rejected(&self) -> u64 {
        [ShedReason::Wait, ShedReason::Memory]
            .iter()
            .map(|&r| self.counters[ix::pool_rejected(r)].load(Ordering::Relaxed))
            .sum()
    }

    /// Adds this slot's counters into `sum`.
    pub(crate) fn sum_into(&self, sum: &mut [u64]) {
        for (s, c) in sum.iter_mut().zip(&self.counters) {
            *s += c.load(Ordering::Relaxed);
        }
    }

    /// Moves every counter into `retired` and clears the gauges.
    pub(crate) fn fold_into(&self, retired: &Slot) {
        for (c, r) in self.counters.iter().zip(&retired.counters) {
            let v = c.swap(0, Ordering::Relaxed);
            if v != 0 {
                r.fetch_add(v, Ordering::Relaxed);
            }
        }
        self.pool_queued.store(0, Ordering::Relaxed);
        self.pool_busy.store(0, Ordering::Relaxed);
        self.connections_open.store(0, Ordering::Relaxed);
        self.accepting_until_ms.store(0, Ordering::Relaxed);
        self.shed.store(0, Ordering::Relaxed);
    }

    /// Requests answered by this process, whatever the route or status.
    pub fn requests_total(&self) -> u64 {
        self.counters[ix::REQUESTS]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn connections_open(&self) -> u64 {
        self.connections_open.load(Ordering::Relaxed).max(0) as u64
    }

    pub fn set_accepting_until(&self, unix_ms: u64) {
        self.accepting_until_ms.store(unix_ms, Ordering::Relaxed);
    }

    pub fn accepting_until(&self) -> u64 {
        self.accepting_until_ms.load(Ordering::Relaxed)
    }

    /// The next `n` answers of this process end their connections.
    pub fn set_shed(&self, n: u64) {
        self.shed.store(n, Ordering::Relaxed);
    }

    /// True if this answer is to end its connection (and counts it). One
    /// load when there is nothing to shed: this runs on every request.
    pub fn take_shed(&self) -> bool {
        self.shed.load(Ordering::Relaxed) != 0
            && self
                .shed
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
    }
}
