//! Request and byte counters in a fixed layout of plain atomics.
//!
//! The layout (`Slot`) has no pointers and is valid when all-zero, so the
//! same type can live on the heap (one process) or in a memory region shared
//! between processes. Rendering sums any number of slots.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Route templates, the `route` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Hash,
    HashFile,
    Compress,
    CompressPath,
    Metrics,
    Healthz,
    Readyz,
    /// No route matched (404) or anything not listed above.
    Other,
}

impl Route {
    pub const ALL: [Route; 8] = [
        Route::Hash,
        Route::HashFile,
        Route::Compress,
        Route::CompressPath,
        Route::Metrics,
        Route::Healthz,
        Route::Readyz,
        Route::Other,
    ];

    pub fn template(self) -> &'static str {
        match self {
            Route::Hash => "/hash",
            Route::HashFile => "/hash-file/{path}",
            Route::Compress => "/compress",
            Route::CompressPath => "/compress/{path}",
            Route::Metrics => "/metrics",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Other => "other",
        }
    }

    /// The methods this route answers, for the `Allow` header of a 405.
    pub fn allow(self) -> &'static str {
        match self {
            Route::Hash | Route::Compress => "POST",
            Route::CompressPath => "GET, HEAD, POST",
            Route::HashFile | Route::Metrics | Route::Healthz | Route::Readyz => "GET, HEAD",
            Route::Other => "",
        }
    }

    /// Classifies a raw request path into its route template.
    pub fn classify(path: &str) -> Route {
        match path {
            "/hash" => Route::Hash,
            "/compress" => Route::Compress,
            "/metrics" => Route::Metrics,
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            p if p.starts_with("/hash-file/") => Route::HashFile,
            p if p.starts_with("/compress/") => Route::CompressPath,
            _ => Route::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

const METHODS: [&str; 3] = ["GET", "POST", "other"];
const STATUSES: [u16; 18] = [
    200, 400, 401, 403, 404, 405, 408, 409, 411, 413, 414, 415, 429, 431, 500, 501, 503, 507,
];
const N_STATUS: usize = STATUSES.len() + 1;

/// Upper bounds of the latency histogram, in seconds (100 µs to 60 s).
pub const BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];
const N_BUCKET: usize = BUCKETS.len() + 1;
const N_ROUTE: usize = Route::ALL.len();

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

/// One process's counters. All-zero is a valid, empty slot.
#[repr(C)]
pub struct Slot {
    requests: [[[AtomicU64; N_STATUS]; 3]; N_ROUTE],
    /// Per-bucket (not cumulative) counts; the last bucket is +Inf.
    duration_buckets: [[AtomicU64; N_BUCKET]; N_ROUTE],
    duration_sum_nanos: [AtomicU64; N_ROUTE],
    processed_bytes: [[AtomicU64; 2]; 2],
    pool_rejected: AtomicU64,
    /// Gauges: jobs waiting, threads busy. Signed so that a decrement racing
    /// ahead of its increment never wraps.
    pool_queued: AtomicI64,
    pool_busy: AtomicI64,
    /// `--digest-cache` lookups: [miss, hit].
    digest_cache: [AtomicU64; 2],
}

impl Slot {
    /// A zeroed slot on the heap.
    pub fn new_boxed() -> Box<Slot> {
        // SAFETY: Slot is repr(C) and made only of AtomicU64, for which all-zero is valid.
        unsafe { Box::<Slot>::new_zeroed().assume_init() }
    }

    pub fn record_request(&self, route: Route, method: &str, status: u16, took: Duration) {
        let m = METHODS
            .iter()
            .position(|x| *x == method)
            .unwrap_or(METHODS.len() - 1);
        let s = STATUSES
            .iter()
            .position(|x| *x == status)
            .unwrap_or(N_STATUS - 1);
        let r = route.index();
        self.requests[r][m][s].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let b = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(N_BUCKET - 1);
        self.duration_buckets[r][b].fetch_add(1, Ordering::Relaxed);
        self.duration_sum_nanos[r].fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn add_bytes(&self, op: Op, dir: Direction, n: u64) {
        self.processed_bytes[op as usize][dir as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_pool_rejected(&self) {
        self.pool_rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_digest_cache(&self, hit: bool) {
        self.digest_cache[hit as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn pool_enqueued(&self) {
        self.pool_queued.fetch_add(1, Ordering::Relaxed);
    }

    /// A pool thread took a job off the queue.
    pub fn pool_started(&self) {
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

    pub fn pool_rejected(&self) -> u64 {
        self.pool_rejected.load(Ordering::Relaxed)
    }
}

/// Settings reported as gauges (not summed from slots).
pub struct Gauges {
    pub pool_threads: u64,
    pub pool_queue_capacity: u64,
}

/// Renders the Prometheus text format (version 0.0.4) for the sum of `slots`.
pub fn render(slots: &[&Slot], gauges: &Gauges) -> String {
    let sum = |f: &dyn Fn(&Slot) -> &AtomicU64| -> u64 {
        slots.iter().map(|s| f(s).load(Ordering::Relaxed)).sum()
    };
    let mut out = String::with_capacity(8192);
    out.push_str("# HELP hashpress_http_requests_total HTTP requests answered, by route template, method and status.\n");
    out.push_str("# TYPE hashpress_http_requests_total counter\n");
    for route in Route::ALL {
        for (m, method) in METHODS.iter().enumerate() {
            for s in 0..N_STATUS {
                let n = sum(&|slot| &slot.requests[route.index()][m][s]);
                if n == 0 {
                    continue;
                }
                let status = STATUSES
                    .get(s)
                    .map_or("other".to_string(), |c| c.to_string());
                let _ = writeln!(
                    out,
                    "hashpress_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}",
                    route.template()
                );
            }
        }
    }
    out.push_str(
        "# HELP hashpress_http_request_duration_seconds Time from request head to response head.\n",
    );
    out.push_str("# TYPE hashpress_http_request_duration_seconds histogram\n");
    for route in Route::ALL {
        let r = route.index();
        let counts: Vec<u64> = (0..N_BUCKET)
            .map(|b| sum(&|slot| &slot.duration_buckets[r][b]))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            continue;
        }
        let t = route.template();
        let mut cumulative = 0;
        for (b, le) in BUCKETS.iter().enumerate() {
            cumulative += counts[b];
            let _ = writeln!(
                out,
                "hashpress_http_request_duration_seconds_bucket{{route=\"{t}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "hashpress_http_request_duration_seconds_bucket{{route=\"{t}\",le=\"+Inf\"}} {total}"
        );
        let nanos = sum(&|slot| &slot.duration_sum_nanos[r]);
        let _ = writeln!(
            out,
            "hashpress_http_request_duration_seconds_sum{{route=\"{t}\"}} {}",
            nanos as f64 / 1e9
        );
        let _ = writeln!(
            out,
            "hashpress_http_request_duration_seconds_count{{route=\"{t}\"}} {total}"
        );
    }
    out.push_str("# HELP hashpress_processed_bytes_total Bytes hashed or compressed.\n");
    out.push_str("# TYPE hashpress_processed_bytes_total counter\n");
    for (o, op) in ["hash", "compress"].iter().enumerate() {
        for (d, dir) in ["in", "out"].iter().enumerate() {
            let n = sum(&|slot| &slot.processed_bytes[o][d]);
            let _ = writeln!(
                out,
                "hashpress_processed_bytes_total{{op=\"{op}\",direction=\"{dir}\"}} {n}"
            );
        }
    }
    out.push_str("# HELP hashpress_pool_rejected_total Requests shed with 503 because the CPU pool queue was full.\n");
    out.push_str("# TYPE hashpress_pool_rejected_total counter\n");
    let _ = writeln!(
        out,
        "hashpress_pool_rejected_total {}",
        sum(&|slot| &slot.pool_rejected)
    );
    out.push_str("# HELP hashpress_digest_cache_requests_total GET /hash-file lookups in the --digest-cache.\n");
    out.push_str("# TYPE hashpress_digest_cache_requests_total counter\n");
    for (i, result) in ["miss", "hit"].iter().enumerate() {
        let n = sum(&|slot| &slot.digest_cache[i]);
        let _ = writeln!(
            out,
            "hashpress_digest_cache_requests_total{{result=\"{result}\"}} {n}"
        );
    }
    for (name, help, v) in [
        (
            "hashpress_pool_queue_depth",
            "Jobs waiting for a CPU pool thread.",
            slots.iter().map(|s| s.pool_queued()).sum(),
        ),
        (
            "hashpress_pool_busy_threads",
            "CPU pool threads running a job.",
            slots.iter().map(|s| s.pool_busy()).sum(),
        ),
        (
            "hashpress_pool_threads",
            "CPU pool threads.",
            gauges.pool_threads,
        ),
        (
            "hashpress_pool_queue_capacity",
            "CPU pool queue limit (--pool-queue).",
            gauges.pool_queue_capacity,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_slots_and_renders_cumulative_buckets() {
        let a = Slot::new_boxed();
        let b = Slot::new_boxed();
        a.record_request(Route::Hash, "POST", 200, Duration::from_micros(50));
        b.record_request(Route::Hash, "POST", 200, Duration::from_millis(3));
        b.record_request(Route::Hash, "PUT", 405, Duration::from_secs(100));
        a.add_bytes(Op::Hash, Direction::In, 10);
        b.add_bytes(Op::Hash, Direction::In, 5);
        let g = Gauges {
            pool_threads: 2,
            pool_queue_capacity: 8,
        };
        let text = render(&[&a, &b], &g);
        assert!(text.contains(
            "hashpress_http_requests_total{route=\"/hash\",method=\"POST\",status=\"200\"} 2\n"
        ));
        assert!(text.contains(
            "hashpress_http_requests_total{route=\"/hash\",method=\"other\",status=\"405\"} 1\n"
        ));
        assert!(text.contains("route=\"/hash\",le=\"0.0001\"} 1\n"));
        assert!(text.contains("route=\"/hash\",le=\"0.005\"} 2\n"));
        assert!(text.contains("route=\"/hash\",le=\"60\"} 2\n"));
        assert!(text.contains("route=\"/hash\",le=\"+Inf\"} 3\n"));
        assert!(
            text.contains("hashpress_processed_bytes_total{op=\"hash\",direction=\"in\"} 15\n")
        );
    }
}
