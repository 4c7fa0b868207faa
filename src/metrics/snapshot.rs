//! One scrape: the region's totals plus per-process readings, rendered as
//! Prometheus text or JSON from the same figures.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::process::{self, ProcessStats};
use super::region::{LiveProcess, RESTART_REASONS, Reading, Region};
use super::{
    BUCKETS, Direction, METHODS, N_BUCKET, N_STATUS, Op, Route, SHED_REASONS, STATUSES, ShedReason,
    StorageOp, StorageOutcome, ix,
};
use crate::build_info::Build;
use crate::supervisor::state::Phase;

/// Thread settings of each process, reported as gauges.
pub struct PoolConfig {
    /// CPU pool threads (`--pool-threads`).
    pub threads: u64,
    pub queue_capacity: u64,
    /// HTTP I/O threads (`--io-threads`).
    pub io_threads: u64,
}

pub struct Snapshot {
    reading: Reading,
    pool: PoolConfig,
    /// Supervisor (or the single process) first, then workers by id.
    processes: Vec<Proc>,
    /// Per serving process (workers by id, or the single process): its
    /// requests and open connections, to show how the work is split.
    serving: Vec<(Option<u64>, LiveProcess)>,
    uptime_seconds: f64,
}

/// One process of the scrape.
struct Proc {
    /// None for the supervisor or the single process.
    worker: Option<u64>,
    pid: u32,
    stats: ProcessStats,
    /// The release it runs, as it recorded it itself.
    build: Option<Build>,
}

fn status_label(s: usize) -> String {
    STATUSES
        .get(s)
        .map_or("other".to_string(), |c| c.to_string())
}

impl Snapshot {
    pub fn collect(region: &Region, pool: PoolConfig) -> Snapshot {
        let reading = region.read();
        let mut live = reading.live.clone();
        live.sort_by_key(|p| (p.worker, p.pid));
        // The supervisor, or a single process: the only one, unlabelled.
        let pid = reading.supervisor_pid.unwrap_or_else(std::process::id);
        let mut processes = vec![Proc {
            worker: None,
            pid,
            stats: process::read(pid),
            build: reading.own_build.clone(),
        }];
        let serving: Vec<(Option<u64>, LiveProcess)> = match reading.supervisor_pid {
            Some(_) => {
                for p in &live {
                    processes.push(Proc {
                        worker: Some(p.worker),
                        pid: p.pid,
                        stats: process::read(p.pid),
                        build: p.build.clone(),
                    });
                }
                live.into_iter().map(|p| (Some(p.worker), p)).collect()
            }
            None => live.into_iter().map(|p| (None, p)).collect(),
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let uptime_seconds = now_ms.saturating_sub(reading.started_unix_ms) as f64 / 1000.0;
        Snapshot {
            reading,
            pool,
            processes,
            serving,
            uptime_seconds,
        }
    }

    fn c(&self, i: usize) -> u64 {
        self.reading.counters[i]
    }

    /// Jobs that have left the pool queue.
    fn queue_waits(&self) -> u64 {
        (0..N_BUCKET).map(|b| self.c(ix::queue_wait(b))).sum()
    }

    fn rejected(&self) -> u64 {
        [ShedReason::Wait, ShedReason::Memory]
            .into_iter()
            .map(|r| self.c(ix::pool_rejected(r)))
            .sum()
    }

    /// The supervisor's published phase; None in single-process mode.
    fn supervisor_phase(&self) -> Option<Phase> {
        self.reading.supervisor_pid?;
        Phase::from_code(self.reading.supervisor_phase)
    }

    fn workers_alive(&self) -> u64 {
        if self.reading.supervisor_pid.is_some() {
            self.reading.workers_alive
        } else {
            1
        }
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let o = &mut out;
        header(
            o,
            "hashpress_http_requests_total",
            "counter",
            "HTTP requests answered, by route template, method and status.",
        );
        for route in Route::ALL {
            for (m, method) in METHODS.iter().enumerate() {
                for s in 0..N_STATUS {
                    let n = self.c(ix::requests(route as usize, m, s));
                    if n > 0 {
                        let _ = writeln!(
                            o,
                            "hashpress_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{}\"}} {n}",
                            route.template(),
                            status_label(s)
                        );
                    }
                }
            }
        }
        header(
            o,
            "hashpress_http_request_duration_seconds",
            "histogram",
            "Time from request head to response head.",
        );
        for route in Route::ALL {
            let r = route as usize;
            histogram(
                o,
                "hashpress_http_request_duration_seconds",
                &format!("route=\"{}\"", route.template()),
                |b| self.c(ix::bucket(r, b)),
                self.c(ix::duration_sum_nanos(r)),
            );
        }
        header(
            o,
            "hashpress_processed_bytes_total",
            "counter",
            "Bytes hashed or compressed.",
        );
        for (op, op_name) in [(Op::Hash, "hash"), (Op::Compress, "compress")] {
            for (dir, dir_name) in [(Direction::In, "in"), (Direction::Out, "out")] {
                let _ = writeln!(
                    o,
                    "hashpress_processed_bytes_total{{op=\"{op_name}\",direction=\"{dir_name}\"}} {}",
                    self.c(ix::bytes(op, dir))
                );
            }
        }
        self.storage_prometheus(o);
        header(
            o,
            "hashpress_pool_rejected_total",
            "counter",
            "Requests shed with 503 by the CPU pool: reason=\"wait\" when the queued work \
             would have made (or made) the request wait past --max-queue-wait, \"memory\" \
             when the queue held --pool-queue jobs.",
        );
        for (reason, name) in [ShedReason::Wait, ShedReason::Memory]
            .into_iter()
            .zip(SHED_REASONS)
        {
            let _ = writeln!(
                o,
                "hashpress_pool_rejected_total{{reason=\"{name}\"}} {}",
                self.c(ix::pool_rejected(reason))
            );
        }
        header(
            o,
            "hashpress_pool_queue_wait_seconds",
            "histogram",
            "Time CPU pool jobs waited in the queue for a thread.",
        );
        histogram(
            o,
            "hashpress_pool_queue_wait_seconds",
            "",
            |b| self.c(ix::queue_wait(b)),
            self.c(ix::QUEUE_WAIT_SUM),
        );
        header(
            o,
            "hashpress_digest_cache_requests_total",
            "counter",
            "GET /hash-file lookups in the --digest-cache.",
        );
        for (hit, name) in [(false, "miss"), (true, "hit")] {
            let _ = writeln!(
                o,
                "hashpress_digest_cache_requests_total{{result=\"{name}\"}} {}",
                self.c(ix::cache(hit))
            );
        }
        header(
            o,
            "hashpress_digest_mismatch_total",
            "counter",
            "Request contents that did not match their Content-Digest (RFC 9530).",
        );
        let _ = writeln!(
            o,
            "hashpress_digest_mismatch_total {}",
            self.c(ix::DIGEST_MISMATCH)
        );
        for (name, help, v) in [
            (
                "hashpress_pool_queue_depth",
                "Jobs waiting for a CPU pool thread, all processes.",
                self.reading.pool_queued,
            ),
            (
                "hashpress_pool_busy_threads",
                "CPU pool threads running a job, all processes.",
                self.reading.pool_busy,
            ),
            (
                "hashpress_pool_threads",
                "CPU pool threads per process (--pool-threads).",
                self.pool.threads,
            ),
            (
                "hashpress_io_threads",
                "HTTP I/O threads per process (--io-threads).",
                self.pool.io_threads,
            ),
            (
                "hashpress_pool_queue_capacity",
                "CPU pool queue limit per process (--pool-queue).",
                self.pool.queue_capacity,
            ),
            (
                "hashpress_workers",
                "Worker processes alive (1 in single-process mode).",
                self.workers_alive(),
            ),
        ] {
            header(o, name, "gauge", help);
            let _ = writeln!(o, "{name} {v}");
        }
        if let Some(phase) = self.supervisor_phase() {
            header(
                o,
                "hashpress_supervisor_phase",
                "gauge",
                "The supervisor's phase: 1 for the current one.",
            );
            for p in Phase::ALL {
                let on = u8::from(p == phase);
                let _ = writeln!(
                    o,
                    "hashpress_supervisor_phase{{phase=\"{}\"}} {on}",
                    p.name()
                );
            }
            header(
                o,
                "hashpress_generation",
                "gauge",
                "Worker generation serving: 0, then one more per successful reload.",
            );
            let _ = writeln!(o, "hashpress_generation {}", self.reading.generation);
        }
        header(
            o,
            "hashpress_worker_restarts_total",
            "counter",
            "Worker processes replaced, by reason.",
        );
        for (i, reason) in RESTART_REASONS.iter().enumerate() {
            let _ = writeln!(
                o,
                "hashpress_worker_restarts_total{{reason=\"{reason}\"}} {}",
                self.reading.restarts[i]
            );
        }
        header(
            o,
            "hashpress_uptime_seconds",
            "gauge",
            "Seconds since the service (supervisor) started.",
        );
        let _ = writeln!(o, "hashpress_uptime_seconds {}", self.uptime_seconds);
        for (name, kind, help, field) in [
            (
                "hashpress_worker_requests_total",
                "counter",
                "Requests answered by each serving process: how the work is split.",
                (|p| p.requests) as fn(&LiveProcess) -> u64,
            ),
            (
                "hashpress_connections_open",
                "gauge",
                "Client connections each serving process holds open.",
                |p| p.connections_open,
            ),
        ] {
            header(o, name, kind, help);
            for (worker, p) in &self.serving {
                let v = field(p);
                match worker {
                    None => {
                        let _ = writeln!(o, "{name} {v}");
                    }
                    Some(w) => {
                        let _ = writeln!(o, "{name}{{worker=\"{w}\",pid=\"{}\"}} {v}", p.pid);
                    }
                }
            }
        }
        type Field = fn(&ProcessStats) -> Option<String>;
        let families: [(&str, &str, &str, Field); 3] = [
            (
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time, seconds.",
                |s| s.cpu_seconds.map(|v| v.to_string()),
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory, bytes.",
                |s| s.rss_bytes.map(|v| v.to_string()),
            ),
            ("process_open_fds", "gauge", "Open file descriptors.", |s| {
                s.open_fds.map(|v| v.to_string())
            }),
        ];
        for (name, kind, help, field) in families {
            header(o, name, kind, help);
            for p in &self.processes {
                let Some(v) = field(&p.stats) else { continue };
                let _ = writeln!(o, "{name}{} {v}", p.labels(""));
            }
        }
        header(
            o,
            "hashpress_build_info",
            "gauge",
            "Always 1: the release each process runs (crate version, git commit), as it \
             reported it itself; during a rolling reload both releases are listed.",
        );
        for p in &self.processes {
            let Some(b) = &p.build else { continue };
            let build = format!(
                "version=\"{}\",commit=\"{}\"",
                escape(&b.version),
                escape(&b.commit)
            );
            let _ = writeln!(o, "hashpress_build_info{} 1", p.labels(&build));
        }
        out
    }

    /// The same figures as JSON, for programs and the dashboard.
    pub fn to_json(&self) -> Value {
        let mut requests = Vec::new();
        let mut latency = Vec::new();
        for route in Route::ALL {
            let r = route as usize;
            for (m, method) in METHODS.iter().enumerate() {
                for s in 0..N_STATUS {
                    let n = self.c(ix::requests(r, m, s));
                    if n > 0 {
                        requests.push(json!({
                            "route": route.template(), "method": method,
                            "status": status_label(s), "count": n,
                        }));
                    }
                }
            }
            let Some((total, buckets)) = json_buckets(|b| self.c(ix::bucket(r, b))) else {
                continue;
            };
            latency.push(json!({
                "route": route.template(),
                "count": total,
                "sum_seconds": self.c(ix::duration_sum_nanos(r)) as f64 / 1e9,
                "buckets": buckets,
            }));
        }
        let processes: Vec<Value> = self
            .processes
            .iter()
            .map(|p| {
                let role = match (p.worker, self.reading.supervisor_pid) {
                    (Some(_), _) => "worker",
                    (None, Some(_)) => "supervisor",
                    (None, None) => "single",
                };
                let s = &p.stats;
                // Requests and connections: null for the supervisor, which serves none.
                let load = self
                    .serving
                    .iter()
                    .find(|(_, l)| l.pid == p.pid)
                    .map(|(_, l)| l);
                json!({
                    "role": role, "worker": p.worker, "pid": p.pid,
                    "cpu_seconds": s.cpu_seconds, "rss_bytes": s.rss_bytes, "open_fds": s.open_fds,
                    // null until the process has recorded its release.
                    "version": p.build.as_ref().map(|b| &b.version),
                    "commit": p.build.as_ref().map(|b| &b.commit),
                    "requests": load.map(|p| p.requests),
                    "connections_open": load.map(|p| p.connections_open),
                })
            })
            .collect();
        let mut cumulative = 0;
        let mut queue_wait_buckets: Vec<Value> = BUCKETS
            .iter()
            .enumerate()
            .map(|(b, le)| {
                cumulative += self.c(ix::queue_wait(b));
                json!({ "le": le, "count": cumulative })
            })
            .collect();
        queue_wait_buckets.push(json!({ "le": "+Inf", "count": self.queue_waits() }));
        let restarts: serde_json::Map<String, Value> = RESTART_REASONS
            .iter()
            .enumerate()
            .map(|(i, r)| (r.to_string(), json!(self.reading.restarts[i])))
            .collect();
        json!({
            "uptime_seconds": self.uptime_seconds,
            "workers": {
                "alive": self.workers_alive(),
                "restarts": restarts,
                // null in single-process mode: no supervisor.
                "phase": self.supervisor_phase().map(Phase::name),
                "generation": self.reading.generation,
            },
            "requests": requests,
            "latency": latency,
            "bytes": {
                "hash_in": self.c(ix::bytes(Op::Hash, Direction::In)),
                "hash_out": self.c(ix::bytes(Op::Hash, Direction::Out)),
                "compress_in": self.c(ix::bytes(Op::Compress, Direction::In)),
                "compress_out": self.c(ix::bytes(Op::Compress, Direction::Out)),
            },
            "pool": {
                "queue_depth": self.reading.pool_queued,
                "busy_threads": self.reading.pool_busy,
                "threads": self.pool.threads,
                "queue_capacity": self.pool.queue_capacity,
                "io_threads": self.pool.io_threads,
                "rejected": self.rejected(),
                "rejected_wait": self.c(ix::pool_rejected(ShedReason::Wait)),
                "rejected_memory": self.c(ix::pool_rejected(ShedReason::Memory)),
                "queue_waits": self.queue_waits(),
                "queue_wait_sum_seconds": self.c(ix::QUEUE_WAIT_SUM) as f64 / 1e9,
                "queue_wait_buckets": queue_wait_buckets,
            },
            "digest_cache": { "hit": self.c(ix::cache(true)), "miss": self.c(ix::cache(false)) },
            "digest_mismatch": self.c(ix::DIGEST_MISMATCH),
            "storage": self.storage_json(),
            "processes": processes,
        })
    }
}

impl Snapshot {
    /// The object store's requests, bytes and latency (all zero when
    /// serving a directory).
    fn storage_prometheus(&self, o: &mut String) {
        header(
            o,
            "hashpress_storage_requests_total",
            "counter",
            "Requests to the object store (retries included), by operation and outcome.",
        );
        for op in StorageOp::ALL {
            for outcome in StorageOutcome::ALL {
                let n = self.c(ix::storage_requests(op, outcome));
                if n > 0 {
                    let _ = writeln!(
                        o,
                        "hashpress_storage_requests_total{{op=\"{}\",outcome=\"{}\"}} {n}",
                        op.name(),
                        outcome.name()
                    );
                }
            }
        }
        header(
            o,
            "hashpress_storage_bytes_total",
            "counter",
            "Object bytes read from and written to the object store.",
        );
        for (read, name) in [(true, "read"), (false, "written")] {
            let _ = writeln!(
                o,
                "hashpress_storage_bytes_total{{direction=\"{name}\"}} {}",
                self.c(ix::storage_bytes(read))
            );
        }
        header(
            o,
            "hashpress_storage_request_duration_seconds",
            "histogram",
            "Time of one request to the object store, retries included.",
        );
        for op in StorageOp::ALL {
            histogram(
                o,
                "hashpress_storage_request_duration_seconds",
                &format!("op=\"{}\"", op.name()),
                |b| self.c(ix::storage_bucket(op, b)),
                self.c(ix::storage_duration_sum_nanos(op)),
            );
        }
    }

    fn storage_json(&self) -> Value {
        let mut requests = Vec::new();
        let mut latency = Vec::new();
        for op in StorageOp::ALL {
            for outcome in StorageOutcome::ALL {
                let n = self.c(ix::storage_requests(op, outcome));
                if n > 0 {
                    requests
                        .push(json!({ "op": op.name(), "outcome": outcome.name(), "count": n }));
                }
            }
            let Some((total, buckets)) = json_buckets(|b| self.c(ix::storage_bucket(op, b))) else {
                continue;
            };
            latency.push(json!({
                "op": op.name(),
                "count": total,
                "sum_seconds": self.c(ix::storage_duration_sum_nanos(op)) as f64 / 1e9,
                "buckets": buckets,
            }));
        }
        json!({
            "requests": requests,
            "bytes": {
                "read": self.c(ix::storage_bytes(true)),
                "written": self.c(ix::storage_bytes(false)),
            },
            "latency": latency,
        })
    }
}

impl Proc {
    /// `{worker="N",pid="P",extra}` for a worker, `{extra}` or nothing for
    /// the supervisor or single process.
    fn labels(&self, extra: &str) -> String {
        match (self.worker, extra.is_empty()) {
            (Some(w), true) => format!("{{worker=\"{w}\",pid=\"{}\"}}", self.pid),
            (Some(w), false) => format!("{{worker=\"{w}\",pid=\"{}\",{extra}}}", self.pid),
            (None, true) => String::new(),
            (None, false) => format!("{{{extra}}}"),
        }
    }
}

/// A label value in the text format: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One histogram series in Prometheus text: cumulative buckets of
/// `BUCKETS` and +Inf, the sum (from nanoseconds) and the count. `labels`
/// (e.g. `route="/hash"`, or empty) come before `le`. `per_bucket(b)` is
/// the non-cumulative count of bucket `b` (0..N_BUCKET, the last is +Inf).
/// Labelled series with no observation are left out; an unlabelled one is
/// always written.
fn histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    per_bucket: impl Fn(usize) -> u64,
    sum_nanos: u64,
) {
    let total: u64 = (0..N_BUCKET).map(&per_bucket).sum();
    if total == 0 && !labels.is_empty() {
        return;
    }
    let (open, sep) = if labels.is_empty() {
        ("", "")
    } else {
        (labels, ",")
    };
    let mut cumulative = 0;
    for (b, le) in BUCKETS.iter().enumerate() {
        cumulative += per_bucket(b);
        let _ = writeln!(out, "{name}_bucket{{{open}{sep}le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{open}{sep}le=\"+Inf\"}} {total}");
    let sum = sum_nanos as f64 / 1e9;
    if labels.is_empty() {
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
    } else {
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {sum}\n{name}_count{{{labels}}} {total}"
        );
    }
}

/// One histogram in JSON: the total and the cumulative buckets of
/// `BUCKETS` and +Inf, from the per-bucket counts; `None` without an
/// observation.
fn json_buckets(per_bucket: impl Fn(usize) -> u64) -> Option<(u64, Vec<Value>)> {
    let total: u64 = (0..N_BUCKET).map(&per_bucket).sum();
    if total == 0 {
        return None;
    }
    let mut cumulative = 0;
    let mut buckets: Vec<Value> = BUCKETS
        .iter()
        .enumerate()
        .map(|(b, le)| {
            cumulative += per_bucket(b);
            json!({ "le": le, "count": cumulative })
        })
        .collect();
    buckets.push(json!({ "le": "+Inf", "count": total }));
    Some((total, buckets))
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn text_and_json_agree() {
        let r = Region::create().unwrap();
        let i = r.claim(0).unwrap();
        r.set_pid(i, std::process::id());
        let slot = r.slot(i);
        slot.record_request(Route::Hash, "POST", 200, Duration::from_micros(50));
        slot.record_request(Route::Hash, "POST", 200, Duration::from_millis(3));
        slot.record_request(Route::Hash, "PUT", 405, Duration::from_secs(100));
        slot.add_bytes(Op::Hash, Direction::In, 15);
        slot.record_storage(StorageOp::Get, StorageOutcome::Ok, Duration::from_millis(2));
        slot.record_storage(
            StorageOp::Get,
            StorageOutcome::Timeout,
            Duration::from_secs(3),
        );
        slot.add_storage_bytes(true, 4096);
        let snap = Snapshot::collect(
            r,
            PoolConfig {
                threads: 2,
                queue_capacity: 8,
                io_threads: 1,
            },
        );
        let text = snap.to_prometheus();
        assert!(text.contains(
            "hashpress_http_requests_total{route=\"/hash\",method=\"POST\",status=\"200\"} 2\n"
        ));
        assert!(text.contains(
            "hashpress_http_requests_total{route=\"/hash\",method=\"other\",status=\"405\"} 1\n"
        ));
        assert!(text.contains("route=\"/hash\",le=\"0.0001\"} 1\n"));
        assert!(text.contains("route=\"/hash\",le=\"0.005\"} 2\n"));
        assert!(text.contains("route=\"/hash\",le=\"+Inf\"} 3\n"));
        assert!(
            text.contains("hashpress_processed_bytes_total{op=\"hash\",direction=\"in\"} 15\n")
        );
        assert!(text.contains("\nprocess_resident_memory_bytes "));
        assert!(
            text.contains("hashpress_storage_requests_total{op=\"get\",outcome=\"timeout\"} 1\n")
        );
        assert!(text.contains("hashpress_storage_bytes_total{direction=\"read\"} 4096\n"));
        assert!(text.contains(
            "hashpress_storage_request_duration_seconds_bucket{op=\"get\",le=\"0.0025\"} 1\n"
        ));
        assert!(
            !text.contains("hashpress_build_info{"),
            "no release recorded, none reported"
        );
        r.set_own_build(&crate::build_info::Build::own());
        slot.connection_opened();
        let snap = Snapshot::collect(
            r,
            PoolConfig {
                threads: 2,
                queue_capacity: 8,
                io_threads: 1,
            },
        );
        let want = format!(
            "\nhashpress_build_info{{version=\"{}\",commit=\"{}\"}} 1\n",
            crate::build_info::VERSION,
            crate::build_info::COMMIT
        );
        assert!(snap.to_prometheus().contains(&want));
        assert_eq!(
            snap.to_json()["processes"][0]["version"],
            crate::build_info::VERSION
        );
        let text = snap.to_prometheus();
        assert!(
            text.contains("\nhashpress_worker_requests_total 3\n"),
            "{text}"
        );
        assert!(text.contains("\nhashpress_connections_open 1\n"), "{text}");
        let j = snap.to_json();
        assert_eq!(j["bytes"]["hash_in"], 15);
        assert_eq!(j["latency"][0]["count"], 3);
        assert_eq!(j["latency"][0]["buckets"][6]["count"], 2);
        assert_eq!(j["requests"][0]["count"], 2);
        assert_eq!(j["workers"]["alive"], 1);
        assert_eq!(j["storage"]["bytes"]["read"], 4096);
        assert_eq!(j["storage"]["requests"][1]["outcome"], "timeout");
        assert_eq!(j["storage"]["latency"][0]["count"], 2);
        assert_eq!(j["processes"][0]["requests"], 3);
        assert_eq!(j["processes"][0]["connections_open"], 1);
    }
}
