//! Cluster mode: one supervisor process, N worker processes.
//!
//! The supervisor binds the listening socket once (or takes it from
//! systemd), starts N workers that inherit it, and then only watches: it
//! never accepts a connection. It restarts crashed workers with backoff,
//! replaces the whole generation on SIGHUP once the new one is ready,
//! recycles workers that outgrow `--max-worker-rss`, and drains everything
//! on SIGTERM. Everything happens on one thread, in one loop that owns all
//! state, so no lock guards any of it.
//!
//! Lifecycles, both explicit below:
//! - supervisor: starting → ready → draining → stopped
//! - worker:     starting → ready → draining → stopped

pub mod backoff;
pub mod child;
pub mod listener;
pub mod notify;
pub mod worker;

use std::collections::BTreeMap;

use crate::metrics::Region;
use crate::metrics::region::RestartReason;
use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::ServeArgs;
use backoff::Backoff;
use notify::Notifier;
use worker::WorkerEvent;

/// A worker told to drain gets `--grace` to do so by itself; past this
/// margin on top, the supervisor kills it.
const KILL_MARGIN: Duration = Duration::from_millis(500);
/// How often worker memory is read for `--max-worker-rss`.
const RSS_POLL: Duration = Duration::from_secs(1);

/// The supervisor's own lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Workers of the first generation are starting.
    Starting,
    /// Every worker has been ready once; crashes are restarted, SIGHUP reloads.
    Ready,
    /// A stop began: no restarts; waiting for workers to exit.
    Draining,
    /// Every worker is gone: the supervisor exits.
    Stopped,
}

/// One worker process's lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Spawned; has not written its ready line yet.
    Starting,
    /// Accepting connections.
    Ready,
    /// Told to stop (SIGTERM): finishing in-flight requests.
    Draining,
    /// Reaped. (Only ever logged: reaped workers leave the table.)
    Stopped,
}

/// A live worker process.
#[derive(Debug)]
struct Proc {
    slot: usize,
    /// Its slot in the metrics region, folded into the totals when it exits.
    metrics_slot: usize,
    generation: u64,
    state: WorkerState,
    started: Instant,
    ready_at: Option<Instant>,
    /// When to SIGKILL it if it is still alive (set when it is told to drain).
    kill_at: Option<Instant>,
}

/// The supervisor's view of one worker position ("worker 1", "worker 2", …).
#[derive(Debug, Default)]
struct Slot {
    /// Restart delays for this position.
    backoff: Backoff,
    /// The process that serves (or is starting to serve) this position.
    primary: Option<u32>,
    /// A memory-guard replacement that is starting; it becomes `primary`
    /// once ready and the old primary drains.
    replacement: Option<u32>,
    /// A restart is due at this time (after a crash).
    restart_at: Option<Instant>,
    /// No memory-guard replacement before this (after one failed).
    recycle_not_before: Option<Instant>,
}

/// A set of workers started from one binary: the first, and one per reload.
#[derive(Debug)]
struct Generation {
    id: u64,
    /// The binary its workers (and their restarts) run.
    exe: PathBuf,
    slots: Vec<Slot>,
}

impl Generation {
    fn new(id: u64, exe: PathBuf, n: usize) -> Generation {
        Generation {
            id,
            exe,
            slots: (0..n).map(|_| Slot::default()).collect(),
        }
    }
}

/// Which generation a spawn is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Current,
    Next,
}

/// The role a new process takes in its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Primary,
    Replacement,
}

/// Runs the supervisor until every worker has stopped. Logging is set up.
pub fn run(args: ServeArgs) -> ExitCode {
    // Check the configuration here, once, rather than in N crash-looping workers.
    if let Err(e) = crate::storage::Backend::open(&args, true) {
        eprintln!("hashpress: {e}");
        return ExitCode::from(2);
    }
    let (listener, origin) = match listener::acquire(args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hashpress: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().map_or(args.listen, |a| a);
    tracing::info!(
        workers = args.workers,
        socket = ?origin,
        pid = std::process::id(),
        "supervisor listening on http://{addr}"
    );
    // One thread: the parent-death signal of every worker is tied to the
    // thread that forked it, so that thread must live as long as we do.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hashpress: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics = match Region::create() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hashpress: cannot create the shared metrics region: {e}");
            return ExitCode::FAILURE;
        }
    };
    metrics.set_supervisor_pid(std::process::id());
    let (tx, rx) = mpsc::unbounded_channel();
    let sup = Supervisor {
        metrics,
        workers: args.workers,
        grace: args.grace,
        ready_timeout: args.ready_timeout,
        max_rss: args.max_worker_rss.get(),
        argv0: std::env::args_os()
            .next()
            .unwrap_or_else(|| "hashpress".into()),
        args: std::env::args_os().skip(1).collect(),
        json_logs: crate::logging::wants_json(args.log_format),
        listen_fd: listener.as_raw_fd(),
        listener: Some(listener),
        phase: Phase::Starting,
        current: Generation::new(0, PathBuf::from("/proc/self/exe"), args.workers),
        next: None,
        procs: BTreeMap::new(),
        events: tx,
        notify: Notifier::from_env(),
        stop_deadline: None,
        next_rss_check: None,
        forks: 0,
    };
    runtime.block_on(sup.run(rx))
}

struct Supervisor {
    /// Shared with every worker: their counters, and ours (alive, restarts).
    metrics: &'static Region,
    workers: usize,
    grace: Duration,
    ready_timeout: Duration,
    max_rss: Option<u64>,
    /// Our arguments, given unchanged to every worker.
    argv0: OsString,
    args: Vec<OsString>,
    json_logs: bool,
    listen_fd: i32,
    /// The listening socket; dropped when a stop begins, so that once the
    /// draining workers have closed their copies new connections are refused.
    listener: Option<std::net::TcpListener>,
    phase: Phase,
    /// The generation serving now.
    current: Generation,
    /// During a reload: the generation that will replace `current` once
    /// every one of its workers is ready.
    next: Option<Generation>,
    /// Every live worker process (any generation), by pid.
    procs: BTreeMap<u32, Proc>,
    /// Where worker watcher tasks report; the receiver is the main loop's.
    events: mpsc::UnboundedSender<WorkerEvent>,
    notify: Notifier,
    /// Graceful stop: when the remaining workers get SIGKILL.
    stop_deadline: Option<Instant>,
    /// When worker memory is read next (with `--max-worker-rss`).
    next_rss_check: Option<Instant>,
    /// Worker processes started so far, for the log.
    forks: u64,
}

impl Supervisor {
    async fn run(mut self, mut events: mpsc::UnboundedReceiver<WorkerEvent>) -> ExitCode {
        let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
            signal(SignalKind::quit()),
        ) else {
            eprintln!("hashpress: cannot install signal handlers");
            return ExitCode::FAILURE;
        };
        if self.max_rss.is_some() {
            self.next_rss_check = Some(Instant::now() + RSS_POLL);
        }
        self.notify.status("starting workers");
        for slot in 0..self.workers {
            self.spawn(Which::Current, slot, Role::Primary);
        }
        while self.phase != Phase::Stopped {
            let wake = self.next_deadline();
            tokio::select! {
                Some(ev) = events.recv() => self.on_event(ev),
                _ = term.recv() => self.on_stop_signal("SIGTERM"),
                _ = int.recv() => self.on_stop_signal("SIGINT"),
                _ = quit.recv() => self.fast_stop("SIGQUIT"),
                _ = hup.recv() => self.reload(),
                _ = tokio::time::sleep_until(wake) => {}
            }
            self.tick(Instant::now());
        }
        tracing::info!(
            forks = self.forks,
            "all workers stopped; supervisor exiting"
        );
        ExitCode::SUCCESS
    }

    fn generation(&mut self, which: Which) -> Option<&mut Generation> {
        match which {
            Which::Current => Some(&mut self.current),
            Which::Next => self.next.as_mut(),
        }
    }

    /// Starts one worker for `slot` of a generation. A failure to start is
    /// handled like a crash (primary), a failed reload (next) or a failed
    /// recycle (replacement).
    fn spawn(&mut self, which: Which, slot: usize, role: Role) {
        let Some(generation) = self.generation(which) else {
            return;
        };
        let (gen_id, exe) = (generation.id, generation.exe.clone());
        let Some(metrics_slot) = self.metrics.claim(slot as u64 + 1) else {
            tracing::error!(
                worker = slot + 1,
                "no free metrics slot; not starting a worker"
            );
            return;
        };
        let spec = worker::Spec {
            metrics_fd: self.metrics.fd(),
            metrics_slot,
            exe: &exe,
            argv0: &self.argv0,
            args: &self.args,
            listen_fd: self.listen_fd,
            slot: slot + 1,
            json_logs: self.json_logs,
        };
        let now = Instant::now();
        match worker::spawn(&spec, self.events.clone()) {
            Ok(pid) => {
                self.forks += 1;
                self.metrics.set_pid(metrics_slot, pid);
                tracing::info!(
                    worker = slot + 1,
                    pid,
                    generation = gen_id,
                    role = ?role,
                    "worker started"
                );
                self.procs.insert(
                    pid,
                    Proc {
                        slot,
                        metrics_slot,
                        generation: gen_id,
                        state: WorkerState::Starting,
                        started: now,
                        ready_at: None,
                        kill_at: None,
                    },
                );
                let Some(g) = self.generation(which) else {
                    return;
                };
                match role {
                    Role::Primary => g.slots[slot].primary = Some(pid),
                    Role::Replacement => g.slots[slot].replacement = Some(pid),
                }
                self.metrics.set_workers_alive(self.procs.len());
            }
            Err(e) => {
                self.metrics.release(metrics_slot);
                tracing::error!(worker = slot + 1, exe = %exe.display(), error = %e, "cannot start worker");
                match (which, role) {
                    (Which::Next, _) => self.abort_reload(&format!("cannot start worker: {e}")),
                    (Which::Current, Role::Primary) => {
                        let s = &mut self.current.slots[slot];
                        s.restart_at = Some(now + s.backoff.on_exit(Duration::ZERO));
                    }
                    (Which::Current, Role::Replacement) => {
                        let s = &mut self.current.slots[slot];
                        s.recycle_not_before = Some(now + s.backoff.on_exit(Duration::ZERO));
                    }
                }
            }
        }
    }

    fn on_event(&mut self, ev: WorkerEvent) {
        match ev {
            WorkerEvent::Ready { pid } => self.on_ready(pid),
            WorkerEvent::Exited { pid, status } => {
                let status = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("unknown ({e})"),
                };
                self.on_exit(pid, &status);
            }
        }
    }

    fn on_ready(&mut self, pid: u32) {
        let now = Instant::now();
        // A worker told to stop before it got ready stays stopping.
        let Some(p) = self
            .procs
            .get_mut(&pid)
            .filter(|p| p.state == WorkerState::Starting)
        else {
            return;
        };
        p.state = WorkerState::Ready;
        p.ready_at = Some(now);
        let (slot, gen_id) = (p.slot, p.generation);
        tracing::info!(
            worker = slot + 1,
            pid,
            generation = gen_id,
            startup_ms = now.duration_since(p.started).as_millis() as u64,
            "worker ready"
        );
        if gen_id == self.current.id {
            let s = &mut self.current.slots[slot];
            if s.replacement == Some(pid) {
                s.replacement = None;
                if let Some(old) = s.primary.replace(pid) {
                    tracing::info!(
                        worker = slot + 1,
                        old_pid = old,
                        new_pid = pid,
                        "memory guard: replacement ready; draining the old worker"
                    );
                    self.retire(old, now);
                }
            }
            if self.phase == Phase::Starting && self.all_ready(&self.current) {
                self.phase = Phase::Ready;
                tracing::info!(workers = self.workers, "all workers ready");
                self.notify
                    .ready(&format!("{} workers ready", self.workers));
            }
        } else if self.next.as_ref().is_some_and(|g| g.id == gen_id)
            && self.next.as_ref().is_some_and(|g| self.all_ready(g))
        {
            self.finish_reload(now);
        }
    }

    fn all_ready(&self, g: &Generation) -> bool {
        g.slots.iter().all(|s| {
            s.primary
                .and_then(|pid| self.procs.get(&pid))
                .is_some_and(|p| p.state == WorkerState::Ready)
        })
    }

    fn on_exit(&mut self, pid: u32, status: &str) {
        let now = Instant::now();
        let Some(p) = self.procs.remove(&pid) else {
            return;
        };
        // Its counts join the retired totals before anything else can scrape.
        self.metrics.release(p.metrics_slot);
        self.metrics.set_workers_alive(self.procs.len());
        let ran_for = p.ready_at.map_or(Duration::ZERO, |r| now.duration_since(r));
        let expected = p.state == WorkerState::Draining || self.phase == Phase::Draining;
        if expected {
            tracing::info!(worker = p.slot + 1, pid, generation = p.generation, status, state = ?WorkerState::Stopped, "worker exited");
            return;
        }
        if p.generation == self.current.id {
            let s = &mut self.current.slots[p.slot];
            if s.primary == Some(pid) {
                self.metrics.add_restart(RestartReason::Crash);
                if let Some(r) = s.replacement.take() {
                    // Its replacement was already on the way: let it take over.
                    s.primary = Some(r);
                    tracing::warn!(
                        worker = p.slot + 1,
                        pid,
                        status,
                        "worker died; its replacement takes over"
                    );
                } else {
                    s.primary = None;
                    let delay = s.backoff.on_exit(ran_for);
                    s.restart_at = Some(now + delay);
                    tracing::warn!(
                        worker = p.slot + 1,
                        pid,
                        status,
                        ran_ms = ran_for.as_millis() as u64,
                        restart_in_ms = delay.as_millis() as u64,
                        "worker died; restarting"
                    );
                }
            } else if s.replacement == Some(pid) {
                s.replacement = None;
                let delay = s.backoff.on_exit(Duration::ZERO);
                s.recycle_not_before = Some(now + delay);
                tracing::warn!(
                    worker = p.slot + 1,
                    pid,
                    status,
                    "memory guard: replacement died before it was ready; the old worker keeps serving"
                );
            }
        } else if self.next.as_ref().is_some_and(|g| g.id == p.generation) {
            self.abort_reload(&format!(
                "new worker {} (pid {pid}) exited before it was ready: {status}",
                p.slot + 1
            ));
        }
    }

    /// Tells a worker to drain and schedules its kill.
    fn retire(&mut self, pid: u32, now: Instant) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.state = WorkerState::Draining;
            p.kill_at = Some(now + self.grace + KILL_MARGIN);
            send(pid, libc::SIGTERM);
        }
    }

    /// SIGHUP: start a new generation from the binary on disk now.
    fn reload(&mut self) {
        if self.phase != Phase::Ready {
            tracing::warn!(phase = ?self.phase, "SIGHUP ignored: reload only once every worker has been ready");
            return;
        }
        if self.next.is_some() {
            tracing::warn!("SIGHUP ignored: a reload is already in progress");
            return;
        }
        let exe = match on_disk_exe() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "reload failed: cannot locate the binary; keeping the current workers");
                return;
            }
        };
        let id = self.current.id + 1;
        tracing::info!(generation = id, exe = %exe.display(), "SIGHUP: reloading");
        self.notify.reloading();
        self.next = Some(Generation::new(id, exe, self.workers));
        for slot in 0..self.workers {
            if self.next.is_none() {
                break; // a spawn failed and aborted the reload
            }
            self.spawn(Which::Next, slot, Role::Primary);
        }
    }

    fn finish_reload(&mut self, now: Instant) {
        let Some(next) = self.next.take() else {
            return;
        };
        let old: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, p)| p.generation != next.id && p.state != WorkerState::Draining)
            .map(|(&pid, _)| pid)
            .collect();
        tracing::info!(generation = next.id, retiring = ?old, "reload: new workers ready; draining the old ones");
        for pid in old {
            self.metrics.add_restart(RestartReason::Reload);
            self.retire(pid, now);
        }
        self.current = next;
        self.notify.ready(&format!(
            "{} workers ready (generation {})",
            self.workers, self.current.id
        ));
    }

    /// The new generation failed: stop it, keep the current one.
    fn abort_reload(&mut self, why: &str) {
        let Some(next) = self.next.take() else {
            return;
        };
        tracing::error!(
            generation = next.id,
            "reload failed: {why}; the old workers keep serving"
        );
        let now = Instant::now();
        let doomed: Vec<(u32, WorkerState)> = self
            .procs
            .iter()
            .filter(|(_, p)| p.generation == next.id)
            .map(|(&pid, p)| (pid, p.state))
            .collect();
        for (pid, state) in doomed {
            if state == WorkerState::Ready {
                // It may already hold connections: let it finish them.
                self.retire(pid, now);
            } else if let Some(p) = self.procs.get_mut(&pid) {
                p.state = WorkerState::Draining;
                send(pid, libc::SIGKILL);
            }
        }
        self.notify
            .ready(&format!("{} workers ready (reload failed)", self.workers));
    }

    /// SIGTERM/SIGINT: graceful stop; the second one hurries.
    fn on_stop_signal(&mut self, name: &str) {
        if self.phase == Phase::Draining {
            self.fast_stop(&format!("second {name}"));
            return;
        }
        let now = Instant::now();
        tracing::info!(
            grace_ms = self.grace.as_millis() as u64,
            "{name}: draining workers"
        );
        self.phase = Phase::Draining;
        self.notify.stopping();
        self.listener = None;
        self.next = None;
        self.stop_deadline = Some(now + self.grace + KILL_MARGIN);
        for (&pid, p) in self.procs.iter_mut() {
            if p.state != WorkerState::Draining {
                p.state = WorkerState::Draining;
                send(pid, libc::SIGTERM);
            }
        }
    }

    /// SIGQUIT (or a second SIGTERM): kill every worker now.
    fn fast_stop(&mut self, why: &str) {
        tracing::warn!("{why}: fast stop; killing every worker");
        if self.phase != Phase::Draining {
            self.notify.stopping();
        }
        self.phase = Phase::Draining;
        self.listener = None;
        self.next = None;
        self.stop_deadline = None;
        for (&pid, p) in self.procs.iter_mut() {
            p.state = WorkerState::Draining;
            p.kill_at = None;
            send(pid, libc::SIGKILL);
        }
    }

    /// Everything that happens at a time rather than on an event.
    fn tick(&mut self, now: Instant) {
        if self.phase == Phase::Draining {
            if self.stop_deadline.is_some_and(|d| now >= d) {
                self.stop_deadline = None;
                tracing::warn!(
                    left = self.procs.len(),
                    "grace period over; killing the remaining workers"
                );
                for &pid in self.procs.keys() {
                    send(pid, libc::SIGKILL);
                }
            }
            if self.procs.is_empty() {
                self.phase = Phase::Stopped;
            }
            return;
        }
        // Crashed workers whose delay is over.
        for slot in 0..self.workers {
            let s = &mut self.current.slots[slot];
            if s.restart_at.is_some_and(|t| now >= t) {
                s.restart_at = None;
                self.spawn(Which::Current, slot, Role::Primary);
            }
        }
        // Workers that never got ready, and drained workers that overstay.
        let mut overdue_start = Vec::new();
        for (&pid, p) in self.procs.iter_mut() {
            if p.state == WorkerState::Starting && now >= p.started + self.ready_timeout {
                overdue_start.push((pid, p.slot, p.generation));
            }
            if p.kill_at.is_some_and(|t| now >= t) {
                p.kill_at = None;
                tracing::warn!(
                    worker = p.slot + 1,
                    pid,
                    "still draining after the grace period; killing it"
                );
                send(pid, libc::SIGKILL);
            }
        }
        for (pid, slot, gen_id) in overdue_start {
            let ms = self.ready_timeout.as_millis() as u64;
            if self.next.as_ref().is_some_and(|g| g.id == gen_id) {
                self.abort_reload(&format!(
                    "new worker {} (pid {pid}) not ready within {ms} ms",
                    slot + 1
                ));
            } else {
                tracing::error!(
                    worker = slot + 1,
                    pid,
                    "worker not ready within {ms} ms; killing it"
                );
                // Its exit is then handled as a crash (with backoff).
                send(pid, libc::SIGKILL);
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.started = now; // do not kill it twice
                }
            }
        }
        if let (Some(limit), Some(at)) = (self.max_rss, self.next_rss_check)
            && now >= at
        {
            self.next_rss_check = Some(now + RSS_POLL);
            self.check_memory(limit, now);
        }
    }

    /// `--max-worker-rss`: start a replacement for each ready worker over the
    /// limit; the old one drains once the replacement is ready.
    fn check_memory(&mut self, limit: u64, now: Instant) {
        if self.phase != Phase::Ready || self.next.is_some() {
            return;
        }
        for slot in 0..self.workers {
            let s = &self.current.slots[slot];
            if s.replacement.is_some() || s.recycle_not_before.is_some_and(|t| now < t) {
                continue;
            }
            let Some(pid) = s.primary else { continue };
            if self.procs.get(&pid).map(|p| p.state) != Some(WorkerState::Ready) {
                continue;
            }
            let Some(rss) = crate::metrics::process::rss_bytes(pid) else {
                continue;
            };
            if rss > limit {
                tracing::warn!(
                    worker = slot + 1,
                    pid,
                    rss_bytes = rss,
                    limit_bytes = limit,
                    "memory guard: worker over --max-worker-rss; starting its replacement"
                );
                self.metrics.add_restart(RestartReason::Memory);
                self.spawn(Which::Current, slot, Role::Replacement);
            }
        }
    }

    /// The earliest time `tick` has something to do.
    fn next_deadline(&self) -> Instant {
        let mut t = Instant::now() + Duration::from_secs(3600);
        let mut consider = |d: Option<Instant>| {
            if let Some(d) = d {
                t = t.min(d);
            }
        };
        consider(self.stop_deadline);
        consider(self.next_rss_check);
        for s in &self.current.slots {
            consider(s.restart_at);
        }
        for p in self.procs.values() {
            consider(p.kill_at);
            if p.state == WorkerState::Starting {
                consider(Some(p.started + self.ready_timeout));
            }
        }
        t
    }
}

/// kill(2). A worker we still list is our unreaped child, so its pid cannot
/// have been reused; failures (already exiting) need no handling.
fn send(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// The path of the binary as it is on disk now. After an upgrade replaced
/// the file, the kernel reports the running (old) one as "PATH (deleted)":
/// the new file is at PATH.
fn on_disk_exe() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let s = exe.as_os_str().as_encoded_bytes();
    Ok(match s.strip_suffix(b" (deleted)") {
        // SAFETY: a prefix of valid OsStr bytes ending at an ASCII boundary.
        Some(p) => PathBuf::from(unsafe { OsString::from_encoded_bytes_unchecked(p.to_vec()) }),
        None => exe,
    })
}
