//! The supervisor's decisions, as a state machine with no effects:
//! `State::on(event, now)` returns the actions to take, and the executor in
//! `mod.rs` performs them (spawn, signal, notify, metrics) and feeds what
//! came of them back as events. No process, signal, clock or runtime is
//! touched here, so crash backoff, reloads and their rollback, the memory
//! guard, the ready timeout, the stop sequence and the rebalancing of
//! connections are unit-tested below with made-up pids and instants.
//!
//! Lifecycles, both explicit:
//! - supervisor: starting → ready (⇄ reloading) → draining → stopped
//! - worker:     starting → ready → draining → (reaped)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::backoff::Backoff;
use crate::build_info::Build;
use crate::metrics::region::RestartReason;

/// A worker told to drain gets `--grace` to do so by itself; past this
/// margin on top, the supervisor kills it.
pub const KILL_MARGIN: Duration = Duration::from_millis(500);
/// How often worker memory is read for `--max-worker-rss`.
pub const RSS_POLL: Duration = Duration::from_secs(1);
/// When a worker becomes ready, the connections of the ready workers are
/// read this often, and those well above the mean shed half their excess
/// each time (`Connection: close` on their next answers; the clients
/// reconnect, and the accept gates steer them to the worker that has too
/// few): the move is spread over a second or so, and stops once the split
/// is even, or after `BALANCE_ROUND` whatever happens.
pub const BALANCE_STEP: Duration = Duration::from_millis(250);
pub const BALANCE_ROUND: Duration = Duration::from_secs(5);

/// The supervisor's lifecycle, as published in the metrics region (tests
/// and operators wait on it rather than on log lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Workers of the first generation are starting.
    Starting = 1,
    /// Every worker has been ready once; crashes are restarted, SIGHUP reloads.
    Ready = 2,
    /// A new generation is starting beside the serving one.
    Reloading = 3,
    /// A stop began: no restarts; waiting for workers to exit.
    Draining = 4,
    /// Every worker is gone: the supervisor exits.
    Stopped = 5,
}

impl Phase {
    /// Every phase, by code (0 is "no supervisor": single-process mode).
    pub const ALL: [Phase; 5] = [
        Phase::Starting,
        Phase::Ready,
        Phase::Reloading,
        Phase::Draining,
        Phase::Stopped,
    ];

    pub fn from_code(code: u64) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| *p as u64 == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Reloading => "reloading",
            Phase::Draining => "draining",
            Phase::Stopped => "stopped",
        }
    }
}

/// One worker process's lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Spawned; has not written its ready line yet.
    Starting,
    /// Accepting connections.
    Ready,
    /// Told to stop (SIGTERM or SIGKILL): finishing, or dying.
    Draining,
}

/// What the supervisor was started with.
#[derive(Clone, Debug)]
pub struct Config {
    pub workers: usize,
    pub grace: Duration,
    pub ready_timeout: Duration,
    pub max_rss: Option<u64>,
    /// The binary of the first generation: the very file this supervisor
    /// runs (`/proc/self/exe`), so the first workers match it exactly.
    pub exe: PathBuf,
    /// The binary every reload starts: the path the supervisor was invoked
    /// by, or `--reload-exe`. A path, not a file: it is looked at again on
    /// each reload, so it finds whatever release was put there since.
    pub reload_exe: PathBuf,
}

/// Which generation a spawn is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Current,
    Next,
}

/// The role a new process takes in its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Primary,
    /// A memory-guard replacement: serves once ready, then the old one drains.
    Replacement,
}

/// A spawn asked for, named again in its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpawnRef {
    pub which: Which,
    pub generation: u64,
    /// Worker position, 0-based (logs say `slot + 1`).
    pub slot: usize,
    pub role: Role,
}

#[derive(Debug)]
pub enum Event {
    /// The loop begins: start the first generation.
    Start,
    /// `Action::Spawn` succeeded; `metrics_slot` is the process's slot in the
    /// metrics region.
    Spawned {
        spawn: SpawnRef,
        pid: u32,
        metrics_slot: usize,
    },
    SpawnFailed {
        spawn: SpawnRef,
        error: String,
    },
    /// A worker wrote its ready line; `build` is the release it recorded
    /// (None from a release that does not record one).
    Ready {
        pid: u32,
        build: Option<Build>,
    },
    /// A worker was reaped.
    Exited {
        pid: u32,
        status: String,
    },
    /// SIGTERM or SIGINT (named): a graceful stop; the second one hurries.
    Stop {
        signal: &'static str,
    },
    /// SIGQUIT: kill every worker now.
    FastStop,
    /// SIGHUP: start a new generation from `Config::reload_exe`.
    Reload,
    /// The memory of the workers `Action::ReadRss` named, in bytes.
    Rss(Vec<(u32, u64)>),
    /// The open connections of the workers `Action::ReadConnections` named.
    Connections(Vec<(u32, u64)>),
    /// Time passed: a deadline of `next_deadline` came.
    Tick,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Drain and exit.
    Term,
    /// Now.
    Kill,
}

/// What systemd is told (`sd_notify`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    Status(String),
    Ready(String),
    Reloading,
    Stopping,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start a worker from `exe`; answer `Spawned` or `SpawnFailed`.
    Spawn {
        spawn: SpawnRef,
        exe: PathBuf,
    },
    Signal {
        pid: u32,
        signal: Signal,
    },
    /// Fold an exited worker's counts into the retired totals.
    ReleaseMetrics {
        metrics_slot: usize,
    },
    WorkersAlive(usize),
    Restart(RestartReason),
    /// Read these workers' memory; answer `Rss`.
    ReadRss(Vec<u32>),
    /// Read the open connections of these workers (pid, metrics slot);
    /// answer `Connections`.
    ReadConnections(Vec<(u32, usize)>),
    /// The worker recording into `metrics_slot` ends the connections of its
    /// next `answers` answers (replacing what it was told before).
    Shed {
        metrics_slot: usize,
        answers: u64,
    },
    /// Stop listening: a stop began.
    CloseListener,
    Notify(Notice),
}

/// How a reported release is logged.
fn release(build: Option<&Build>) -> String {
    build.map_or_else(|| "unknown (not reported)".to_string(), Build::to_string)
}

fn signal(pid: u32, signal: Signal) -> Action {
    Action::Signal { pid, signal }
}

/// A live worker process.
#[derive(Debug)]
struct Proc {
    slot: usize,
    metrics_slot: usize,
    generation: u64,
    state: WorkerState,
    started: Instant,
    ready_at: Option<Instant>,
    /// The release it reported when ready.
    build: Option<Build>,
    /// When to SIGKILL it if it is still alive (set when it is told to drain).
    kill_at: Option<Instant>,
}

/// The supervisor's view of one worker position ("worker 1", "worker 2", …).
#[derive(Debug, Default)]
struct Slot {
    backoff: Backoff,
    /// The process that serves (or is starting to serve) this position.
    primary: Option<u32>,
    /// A memory-guard replacement that is starting.
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
    exe: PathBuf,
    slots: Vec<Slot>,
}

impl Generation {
    fn new(id: u64, exe: PathBuf, n: usize) -> Generation {
        let slots = (0..n).map(|_| Slot::default()).collect();
        Generation { id, exe, slots }
    }
}

/// Everything the supervisor knows and decides.
#[derive(Debug)]
pub struct State {
    cfg: Config,
    /// Starting, Ready, Draining or Stopped; `phase()` adds Reloading.
    phase: Phase,
    current: Generation,
    /// During a reload: the generation that replaces `current` once every
    /// one of its workers is ready.
    next: Option<Generation>,
    /// Every live worker process (any generation), by pid.
    procs: BTreeMap<u32, Proc>,
    /// Graceful stop: when the remaining workers get SIGKILL.
    stop_deadline: Option<Instant>,
    /// When worker memory is read next (with `--max-worker-rss`).
    next_rss_check: Option<Instant>,
    /// A rebalancing round, after a worker became ready: when connections
    /// are read next, and when the round ends anyway.
    balance: Option<(Instant, Instant)>,
    /// Actions decided by the event being handled.
    out: Vec<Action>,
}

impl State {
    pub fn new(cfg: Config) -> State {
        let current = Generation::new(0, cfg.exe.clone(), cfg.workers);
        State {
            cfg,
            phase: Phase::Starting,
            current,
            next: None,
            procs: BTreeMap::new(),
            stop_deadline: None,
            next_rss_check: None,
            balance: None,
            out: Vec::new(),
        }
    }

    pub fn phase(&self) -> Phase {
        match self.phase {
            Phase::Ready if self.next.is_some() => Phase::Reloading,
            p => p,
        }
    }

    /// The generation serving now (0 until the first reload succeeds).
    pub fn generation(&self) -> u64 {
        self.current.id
    }

    /// Whether a spawn decided earlier is still wanted (its generation was
    /// not given up in the meantime, e.g. by a failed reload).
    pub fn wants(&self, spawn: &SpawnRef) -> bool {
        self.phase != Phase::Draining && self.generation_of(spawn).is_some()
    }

    /// Handles one event, then whatever is due at `now`.
    pub fn on(&mut self, event: Event, now: Instant) -> Vec<Action> {
        match event {
            Event::Start => self.start(now),
            Event::Spawned {
                spawn,
                pid,
                metrics_slot,
            } => self.on_spawned(spawn, pid, metrics_slot, now),
            Event::SpawnFailed { spawn, error } => self.on_spawn_failed(spawn, &error, now),
            Event::Ready { pid, build } => self.on_ready(pid, build, now),
            Event::Exited { pid, status } => self.on_exit(pid, &status, now),
            Event::Stop { signal } => self.on_stop_signal(signal, now),
            Event::FastStop => self.fast_stop("SIGQUIT"),
            Event::Reload => self.reload(),
            Event::Rss(readings) => self.on_rss(&readings, now),
            Event::Connections(readings) => self.on_connections(&readings),
            Event::Tick => {}
        }
        self.tick(now);
        std::mem::take(&mut self.out)
    }

    /// The earliest time `on(Tick)` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let starting = self
            .procs
            .values()
            .filter(|p| p.state == WorkerState::Starting)
            .map(|p| p.started + self.cfg.ready_timeout);
        [
            self.stop_deadline,
            self.next_rss_check,
            self.balance.map(|(next, _)| next),
        ]
        .into_iter()
        .flatten()
        .chain(self.current.slots.iter().filter_map(|s| s.restart_at))
        .chain(self.procs.values().filter_map(|p| p.kill_at))
        .chain(starting)
        .min()
    }

    fn start(&mut self, now: Instant) {
        if self.cfg.max_rss.is_some() {
            self.next_rss_check = Some(now + RSS_POLL);
        }
        self.out
            .push(Action::Notify(Notice::Status("starting workers".into())));
        for slot in 0..self.cfg.workers {
            self.spawn(Which::Current, slot, Role::Primary);
        }
    }

    fn generation_of(&self, spawn: &SpawnRef) -> Option<&Generation> {
        match spawn.which {
            Which::Current => Some(&self.current),
            Which::Next => self.next.as_ref(),
        }
        .filter(|g| g.id == spawn.generation)
    }

    fn generation_mut(&mut self, which: Which, id: u64) -> Option<&mut Generation> {
        match which {
            Which::Current => Some(&mut self.current),
            Which::Next => self.next.as_mut(),
        }
        .filter(|g| g.id == id)
    }

    fn spawn(&mut self, which: Which, slot: usize, role: Role) {
        let g = match which {
            Which::Current => &self.current,
            Which::Next => match &self.next {
                Some(g) => g,
                None => return,
            },
        };
        let spawn = SpawnRef {
            which,
            generation: g.id,
            slot,
            role,
        };
        let exe = g.exe.clone();
        self.out.push(Action::Spawn { spawn, exe });
    }

    fn on_spawned(&mut self, spawn: SpawnRef, pid: u32, metrics_slot: usize, now: Instant) {
        let SpawnRef { slot, role, .. } = spawn;
        tracing::info!(worker = slot + 1, pid, generation = spawn.generation, role = ?role, "worker started");
        let wanted = self.phase != Phase::Draining;
        let state = if wanted {
            WorkerState::Starting
        } else {
            WorkerState::Draining
        };
        self.procs.insert(
            pid,
            Proc {
                slot,
                metrics_slot,
                generation: spawn.generation,
                state,
                started: now,
                ready_at: None,
                build: None,
                kill_at: None,
            },
        );
        self.out.push(Action::WorkersAlive(self.procs.len()));
        let Some(g) = self
            .generation_mut(spawn.which, spawn.generation)
            .filter(|_| wanted)
        else {
            // Its generation was given up while it was being started.
            self.procs.get_mut(&pid).expect("just inserted").state = WorkerState::Draining;
            self.out.push(signal(pid, Signal::Kill));
            return;
        };
        match role {
            Role::Primary => g.slots[slot].primary = Some(pid),
            Role::Replacement => g.slots[slot].replacement = Some(pid),
        }
    }

    /// Handled like a crash (primary), a failed reload (next) or a failed
    /// recycle (replacement).
    fn on_spawn_failed(&mut self, spawn: SpawnRef, error: &str, now: Instant) {
        tracing::error!(worker = spawn.slot + 1, error, "cannot start worker");
        match (spawn.which, spawn.role) {
            (Which::Next, _) => self.abort_reload(&format!("cannot start worker: {error}"), now),
            (Which::Current, role) => {
                let Some(g) = self.generation_mut(Which::Current, spawn.generation) else {
                    return;
                };
                let s = &mut g.slots[spawn.slot];
                let at = Some(now + s.backoff.on_exit(Duration::ZERO));
                match role {
                    Role::Primary => s.restart_at = at,
                    Role::Replacement => s.recycle_not_before = at,
                }
            }
        }
    }

    fn on_ready(&mut self, pid: u32, build: Option<Build>, now: Instant) {
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
        // It has no connections yet: the others may have to hand some over.
        self.balance = Some((now, now + BALANCE_ROUND));
        let (slot, gen_id) = (p.slot, p.generation);
        tracing::info!(
            worker = slot + 1,
            pid,
            generation = gen_id,
            version = %release(build.as_ref()),
            startup_ms = now.duration_since(p.started).as_millis() as u64,
            "worker ready"
        );
        p.build = build;
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
                tracing::info!(workers = self.cfg.workers, "all workers ready");
                let msg = format!("{} workers ready", self.cfg.workers);
                self.out.push(Action::Notify(Notice::Ready(msg)));
            }
        } else if self
            .next
            .as_ref()
            .is_some_and(|g| g.id == gen_id && self.all_ready(g))
        {
            self.finish_reload(now);
        }
    }

    /// The releases the live workers of generation `id` reported, distinct,
    /// joined: one unless the file changed while they were starting.
    fn releases(&self, id: u64) -> String {
        let mut seen: Vec<String> = self
            .procs
            .values()
            .filter(|p| p.generation == id)
            .map(|p| release(p.build.as_ref()))
            .collect();
        seen.sort();
        seen.dedup();
        seen.join(", ")
    }

    fn all_ready(&self, g: &Generation) -> bool {
        g.slots.iter().all(|s| {
            s.primary
                .and_then(|pid| self.procs.get(&pid))
                .is_some_and(|p| p.state == WorkerState::Ready)
        })
    }

    fn on_exit(&mut self, pid: u32, status: &str, now: Instant) {
        let Some(p) = self.procs.remove(&pid) else {
            return;
        };
        // Its counts join the retired totals before anything else can scrape.
        self.out.push(Action::ReleaseMetrics {
            metrics_slot: p.metrics_slot,
        });
        self.out.push(Action::WorkersAlive(self.procs.len()));
        let (slot, generation) = (p.slot, p.generation);
        let ran_for = p.ready_at.map_or(Duration::ZERO, |r| now.duration_since(r));
        if p.state == WorkerState::Draining || self.phase == Phase::Draining {
            tracing::info!(worker = slot + 1, pid, generation, status, "worker exited");
            return;
        }
        if generation == self.current.id {
            let s = &mut self.current.slots[slot];
            if s.primary == Some(pid) {
                self.out.push(Action::Restart(RestartReason::Crash));
                if let Some(r) = s.replacement.take() {
                    // Its replacement was already on the way: let it take over.
                    s.primary = Some(r);
                    tracing::warn!(
                        worker = slot + 1,
                        pid,
                        status,
                        "worker died; its replacement takes over"
                    );
                } else {
                    s.primary = None;
                    let delay = s.backoff.on_exit(ran_for);
                    s.restart_at = Some(now + delay);
                    tracing::warn!(
                        worker = slot + 1,
                        pid,
                        status,
                        ran_ms = ran_for.as_millis() as u64,
                        restart_in_ms = delay.as_millis() as u64,
                        "worker died; restarting"
                    );
                }
            } else if s.replacement == Some(pid) {
                s.replacement = None;
                s.recycle_not_before = Some(now + s.backoff.on_exit(Duration::ZERO));
                tracing::warn!(
                    worker = slot + 1,
                    pid,
                    status,
                    "memory guard: replacement died before it was ready; the old worker keeps serving"
                );
            }
        } else if self.next.as_ref().is_some_and(|g| g.id == generation) {
            let why = format!(
                "new worker {} (pid {pid}) exited before it was ready: {status}",
                slot + 1
            );
            self.abort_reload(&why, now);
        }
    }

    /// Tells a worker to drain and schedules its kill.
    fn retire(&mut self, pid: u32, now: Instant) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.state = WorkerState::Draining;
            p.kill_at = Some(now + self.cfg.grace + KILL_MARGIN);
            self.out.push(signal(pid, Signal::Term));
        }
    }

    /// SIGHUP: start a new generation from the reload path.
    fn reload(&mut self) {
        if self.phase != Phase::Ready {
            tracing::warn!(phase = ?self.phase, "SIGHUP ignored: reload only once every worker has been ready");
            return;
        }
        if self.next.is_some() {
            tracing::warn!("SIGHUP ignored: a reload is already in progress");
            return;
        }
        // A path that names nothing now fails the spawn, which rolls back.
        let exe = self.cfg.reload_exe.clone();
        let id = self.current.id + 1;
        tracing::info!(generation = id, exe = %exe.display(), "SIGHUP: reloading");
        self.out.push(Action::Notify(Notice::Reloading));
        self.next = Some(Generation::new(id, exe, self.cfg.workers));
        for slot in 0..self.cfg.workers {
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
        let version = self.releases(next.id);
        tracing::info!(
            generation = next.id,
            exe = %next.exe.display(),
            version,
            retiring = ?old,
            "reload: new workers ready; draining the old ones"
        );
        for pid in old {
            self.out.push(Action::Restart(RestartReason::Reload));
            self.retire(pid, now);
        }
        self.current = next;
        let msg = format!(
            "{} workers ready (generation {}: {version})",
            self.cfg.workers, self.current.id
        );
        self.out.push(Action::Notify(Notice::Ready(msg)));
    }

    /// The new generation failed: stop it, keep the current one.
    fn abort_reload(&mut self, why: &str, now: Instant) {
        let Some(next) = self.next.take() else {
            return;
        };
        tracing::error!(
            generation = next.id,
            "reload failed: {why}; the old workers keep serving"
        );
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
                self.out.push(signal(pid, Signal::Kill));
            }
        }
        let msg = format!("{} workers ready (reload failed)", self.cfg.workers);
        self.out.push(Action::Notify(Notice::Ready(msg)));
    }

    /// SIGTERM/SIGINT: graceful stop; the second one hurries.
    fn on_stop_signal(&mut self, name: &str, now: Instant) {
        if self.phase == Phase::Draining {
            self.fast_stop(&format!("second {name}"));
            return;
        }
        tracing::info!(
            grace_ms = self.cfg.grace.as_millis() as u64,
            "{name}: draining workers"
        );
        self.phase = Phase::Draining;
        self.out.push(Action::Notify(Notice::Stopping));
        self.out.push(Action::CloseListener);
        self.next = None;
        self.stop_deadline = Some(now + self.cfg.grace + KILL_MARGIN);
        for (&pid, p) in self.procs.iter_mut() {
            if p.state != WorkerState::Draining {
                p.state = WorkerState::Draining;
                self.out.push(signal(pid, Signal::Term));
            }
        }
    }

    /// SIGQUIT (or a second SIGTERM): kill every worker now.
    fn fast_stop(&mut self, why: &str) {
        tracing::warn!("{why}: fast stop; killing every worker");
        if self.phase != Phase::Draining {
            self.out.push(Action::Notify(Notice::Stopping));
            self.out.push(Action::CloseListener);
        }
        self.phase = Phase::Draining;
        self.next = None;
        self.stop_deadline = None;
        for (&pid, p) in self.procs.iter_mut() {
            p.state = WorkerState::Draining;
            p.kill_at = None;
            self.out.push(signal(pid, Signal::Kill));
        }
    }

    /// Everything that happens at a time rather than on an event.
    fn tick(&mut self, now: Instant) {
        if self.phase == Phase::Draining {
            self.balance = None;
            if self.stop_deadline.is_some_and(|d| now >= d) {
                self.stop_deadline = None;
                tracing::warn!(
                    left = self.procs.len(),
                    "grace period over; killing the remaining workers"
                );
                for &pid in self.procs.keys() {
                    self.out.push(signal(pid, Signal::Kill));
                }
            }
            if self.procs.is_empty() {
                self.phase = Phase::Stopped;
            }
            return;
        }
        // Crashed workers whose delay is over.
        for slot in 0..self.cfg.workers {
            let s = &mut self.current.slots[slot];
            if s.restart_at.is_some_and(|t| now >= t) {
                s.restart_at = None;
                self.spawn(Which::Current, slot, Role::Primary);
            }
        }
        // Workers that never got ready, and drained workers that overstay.
        let mut overdue_start = Vec::new();
        for (&pid, p) in self.procs.iter_mut() {
            if p.state == WorkerState::Starting && now >= p.started + self.cfg.ready_timeout {
                overdue_start.push((pid, p.slot, p.generation));
            }
            if p.kill_at.is_some_and(|t| now >= t) {
                p.kill_at = None;
                tracing::warn!(
                    worker = p.slot + 1,
                    pid,
                    "still draining after the grace period; killing it"
                );
                self.out.push(signal(pid, Signal::Kill));
            }
        }
        for (pid, slot, gen_id) in overdue_start {
            let ms = self.cfg.ready_timeout.as_millis() as u64;
            if self.next.as_ref().is_some_and(|g| g.id == gen_id) {
                let why = format!(
                    "new worker {} (pid {pid}) not ready within {ms} ms",
                    slot + 1
                );
                self.abort_reload(&why, now);
            } else {
                tracing::error!(
                    worker = slot + 1,
                    pid,
                    "worker not ready within {ms} ms; killing it"
                );
                // Its exit is then handled as a crash (with backoff).
                self.out.push(signal(pid, Signal::Kill));
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.started = now; // do not kill it twice
                }
            }
        }
        if let Some((next, end)) = self.balance
            && now >= next
        {
            let ready = self.ready_workers();
            if now >= end || ready.len() < 2 {
                self.end_balance();
            } else {
                self.balance = Some((now + BALANCE_STEP, end));
                self.out.push(Action::ReadConnections(ready));
            }
        }
        if self.next_rss_check.is_some_and(|at| now >= at) {
            self.next_rss_check = Some(now + RSS_POLL);
            let pids = self.recyclable(now);
            if !pids.is_empty() {
                self.out.push(Action::ReadRss(pids));
            }
        }
    }

    /// Workers that accept connections now: (pid, metrics slot).
    fn ready_workers(&self) -> Vec<(u32, usize)> {
        self.procs
            .iter()
            .filter(|(_, p)| p.state == WorkerState::Ready)
            .map(|(&pid, p)| (pid, p.metrics_slot))
            .collect()
    }

    /// The round is over: nobody sheds any more.
    fn end_balance(&mut self) {
        self.balance = None;
        for (_, metrics_slot) in self.ready_workers() {
            self.out.push(Action::Shed {
                metrics_slot,
                answers: 0,
            });
        }
    }

    /// Each ready worker well above the mean (by more than one connection
    /// and a tenth, as the accept gate measures) sheds half its excess;
    /// once none is, the round ends.
    fn on_connections(&mut self, readings: &[(u32, u64)]) {
        if self.balance.is_none() || self.phase == Phase::Draining {
            return;
        }
        let ready: Vec<(usize, u64)> = readings
            .iter()
            .filter_map(|(pid, open)| {
                let p = self.procs.get(pid)?;
                (p.state == WorkerState::Ready).then_some((p.metrics_slot, *open))
            })
            .collect();
        if ready.len() < 2 {
            return self.end_balance();
        }
        let mean = ready.iter().map(|(_, open)| open).sum::<u64>() / ready.len() as u64;
        let tolerance = (mean / 10).max(1);
        let mut even = true;
        for &(metrics_slot, open) in &ready {
            let answers = if open > mean + tolerance {
                even = false;
                (open - mean).div_ceil(2)
            } else {
                0
            };
            self.out.push(Action::Shed {
                metrics_slot,
                answers,
            });
        }
        if even {
            tracing::debug!(?readings, "connections even across workers");
            self.balance = None;
        } else {
            tracing::info!(?readings, "rebalancing connections across workers");
        }
    }

    /// Ready primaries that the memory guard may replace now.
    fn recyclable(&self, now: Instant) -> Vec<u32> {
        if self.phase != Phase::Ready || self.next.is_some() {
            return Vec::new();
        }
        self.current
            .slots
            .iter()
            .filter(|s| s.replacement.is_none() && s.recycle_not_before.is_none_or(|t| now >= t))
            .filter_map(|s| s.primary)
            .filter(|pid| self.procs.get(pid).map(|p| p.state) == Some(WorkerState::Ready))
            .collect()
    }

    /// `--max-worker-rss`: start a replacement for each worker over the
    /// limit; the old one drains once the replacement is ready.
    fn on_rss(&mut self, readings: &[(u32, u64)], now: Instant) {
        let Some(limit) = self.cfg.max_rss else {
            return;
        };
        let candidates = self.recyclable(now);
        for &(pid, rss) in readings {
            if rss <= limit || !candidates.contains(&pid) {
                continue;
            }
            let slot = self.procs[&pid].slot;
            tracing::warn!(
                worker = slot + 1,
                pid,
                rss_bytes = rss,
                limit_bytes = limit,
                "memory guard: worker over --max-worker-rss; starting its replacement"
            );
            self.out.push(Action::Restart(RestartReason::Memory));
            self.spawn(Which::Current, slot, Role::Replacement);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(5);
    const READY_TIMEOUT: Duration = Duration::from_secs(3);
    const FIRST_EXE: &str = "/proc/self/exe";
    const RELOAD_EXE: &str = "/srv/app/current/hashpress";

    fn ready(pid: u32) -> Event {
        Event::Ready { pid, build: None }
    }

    fn ready_as(pid: u32, version: &str) -> Event {
        let build = Some(Build {
            version: version.into(),
            commit: "abc".into(),
        });
        Event::Ready { pid, build }
    }

    /// The binaries the spawns among `actions` run.
    fn exes(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Spawn { exe, .. } => exe.to_str(),
                _ => None,
            })
            .collect()
    }

    /// The state with a fake executor: spawns get pids 100, 101, … (or fail
    /// while `fail_spawns` says so), and every action is recorded.
    struct Sim {
        st: State,
        now: Instant,
        next_pid: u32,
        fail_spawns: bool,
    }

    impl Sim {
        fn new(workers: usize, max_rss: Option<u64>) -> Sim {
            let st = State::new(Config {
                workers,
                grace: GRACE,
                ready_timeout: READY_TIMEOUT,
                max_rss,
                exe: PathBuf::from(FIRST_EXE),
                reload_exe: PathBuf::from(RELOAD_EXE),
            });
            Sim {
                st,
                now: Instant::now(),
                next_pid: 100,
                fail_spawns: false,
            }
        }

        /// Applies `ev` and the outcomes of the spawns it asks for, as the
        /// executor does; returns every action, in order.
        fn send(&mut self, ev: Event) -> Vec<Action> {
            let mut done = Vec::new();
            let mut queue: std::collections::VecDeque<Action> = self.st.on(ev, self.now).into();
            while let Some(a) = queue.pop_front() {
                if let Action::Spawn { spawn, .. } = &a
                    && self.st.wants(spawn)
                {
                    let reply = if self.fail_spawns {
                        Event::SpawnFailed {
                            spawn: *spawn,
                            error: "no".into(),
                        }
                    } else {
                        self.next_pid += 1;
                        Event::Spawned {
                            spawn: *spawn,
                            pid: self.next_pid - 1,
                            metrics_slot: self.next_pid as usize,
                        }
                    };
                    queue.extend(self.st.on(reply, self.now));
                }
                done.push(a);
            }
            done
        }

        fn after(&mut self, d: Duration) -> Vec<Action> {
            self.now += d;
            self.send(Event::Tick)
        }

        /// Starts `n` workers and has them all report ready: pids 100..100+n.
        fn ready(workers: usize, max_rss: Option<u64>) -> Sim {
            let mut sim = Sim::new(workers, max_rss);
            sim.send(Event::Start);
            for pid in 100..100 + workers as u32 {
                sim.send(ready(pid));
            }
            assert_eq!(sim.st.phase(), Phase::Ready);
            sim
        }

        fn exit(&mut self, pid: u32) -> Vec<Action> {
            let status = "signal: 9".into();
            self.send(Event::Exited { pid, status })
        }
    }

    fn spawns(actions: &[Action]) -> Vec<SpawnRef> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Spawn { spawn, .. } => Some(*spawn),
                _ => None,
            })
            .collect()
    }

    fn signalled(actions: &[Action], signal: Signal) -> Vec<u32> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Signal { pid, signal: s } if *s == signal => Some(*pid),
                _ => None,
            })
            .collect()
    }

    fn has(actions: &[Action], want: &Action) -> bool {
        actions.contains(want)
    }

    #[test]
    fn starts_every_worker_and_is_ready_when_all_are() {
        let mut sim = Sim::new(2, None);
        let a = sim.send(Event::Start);
        assert_eq!(spawns(&a).len(), 2);
        assert_eq!(sim.st.phase(), Phase::Starting);
        let a = sim.send(ready(100));
        assert!(
            !a.iter()
                .any(|a| matches!(a, Action::Notify(Notice::Ready(_))))
        );
        let a = sim.send(ready(101));
        assert!(has(
            &a,
            &Action::Notify(Notice::Ready("2 workers ready".into()))
        ));
        assert_eq!(sim.st.phase(), Phase::Ready);
        assert_eq!(sim.st.generation(), 0);
    }

    #[test]
    fn a_crash_restarts_after_a_growing_delay() {
        let mut sim = Sim::ready(2, None);
        let a = sim.exit(100);
        assert!(has(&a, &Action::Restart(RestartReason::Crash)));
        assert!(has(&a, &Action::ReleaseMetrics { metrics_slot: 101 }));
        assert!(spawns(&a).is_empty(), "restarted at once: {a:?}");
        assert_eq!(
            sim.st.next_deadline(),
            Some(sim.now + Duration::from_millis(100))
        );
        assert!(spawns(&sim.after(Duration::from_millis(99))).is_empty());
        let a = sim.after(Duration::from_millis(1));
        assert_eq!(spawns(&a).len(), 1);
        assert_eq!(spawns(&a)[0].slot, 0);
        // Dies again before ready: the next delay is 1.5 times longer.
        sim.exit(102);
        assert!(spawns(&sim.after(Duration::from_millis(149))).is_empty());
        assert_eq!(spawns(&sim.after(Duration::from_millis(1))).len(), 1);
        // The other worker was never touched.
        assert!(sim.st.procs.contains_key(&101));
    }

    #[test]
    fn a_reload_replaces_the_generation_once_all_new_workers_are_ready() {
        let mut sim = Sim::ready(2, None);
        let a = sim.send(Event::Reload);
        assert!(has(&a, &Action::Notify(Notice::Reloading)));
        let new = spawns(&a);
        assert_eq!(new.len(), 2);
        assert!(
            new.iter()
                .all(|s| s.which == Which::Next && s.generation == 1)
        );
        // The path the supervisor was invoked by, not the file it runs.
        assert_eq!(exes(&a), [RELOAD_EXE, RELOAD_EXE]);
        assert_eq!(sim.st.phase(), Phase::Reloading);
        // A second SIGHUP meanwhile is ignored.
        assert!(spawns(&sim.send(Event::Reload)).is_empty());
        assert!(signalled(&sim.send(ready_as(102, "2.0.0")), Signal::Term).is_empty());
        let a = sim.send(ready_as(103, "2.0.0"));
        assert_eq!(signalled(&a, Signal::Term), [100, 101]);
        // systemd's status names the release now serving.
        assert!(has(
            &a,
            &Action::Notify(Notice::Ready(
                "2 workers ready (generation 1: 2.0.0 (commit abc))".into()
            ))
        ));
        let reloads = a
            .iter()
            .filter(|a| **a == Action::Restart(RestartReason::Reload));
        assert_eq!(reloads.count(), 2);
        assert_eq!((sim.st.phase(), sim.st.generation()), (Phase::Ready, 1));
        // The old ones exit as expected: no restart.
        let a = sim.exit(100);
        assert!(!has(&a, &Action::Restart(RestartReason::Crash)));
        assert!(spawns(&sim.after(Duration::from_secs(60))).is_empty());
        // Still there after the grace period: killed.
        let mut sim = Sim::ready(1, None);
        sim.send(Event::Reload);
        sim.send(ready(101));
        assert!(signalled(&sim.after(GRACE), Signal::Kill).is_empty());
        assert_eq!(signalled(&sim.after(KILL_MARGIN), Signal::Kill), [100]);
    }

    #[test]
    fn a_restart_runs_the_binary_of_its_generation() {
        let mut sim = Sim::ready(1, None);
        sim.exit(100);
        let a = sim.after(Duration::from_millis(100));
        assert_eq!(exes(&a), [FIRST_EXE], "a crash before any reload");
        sim.send(ready(101));
        assert_eq!(exes(&sim.send(Event::Reload)), [RELOAD_EXE]);
        sim.send(ready_as(102, "2.0.0"));
        assert_eq!(sim.st.generation(), 1);
        sim.exit(101);
        sim.exit(102);
        let a = sim.after(Duration::from_secs(1));
        assert_eq!(exes(&a), [RELOAD_EXE], "a crash after the reload");
        // A generation whose workers report different releases (the file
        // changed while they started) says so.
        let mut sim = Sim::ready(2, None);
        sim.send(Event::Reload);
        sim.send(ready_as(102, "2.0.0"));
        let a = sim.send(ready_as(103, "2.0.1"));
        assert!(has(
            &a,
            &Action::Notify(Notice::Ready(
                "2 workers ready (generation 1: 2.0.0 (commit abc), 2.0.1 (commit abc))".into()
            ))
        ));
    }

    #[test]
    fn a_failed_reload_rolls_back_to_the_serving_generation() {
        // A new worker dies before it is ready: the others are killed.
        let mut sim = Sim::ready(2, None);
        sim.send(Event::Reload);
        let a = sim.exit(102);
        assert_eq!(signalled(&a, Signal::Kill), [103]);
        assert!(
            signalled(&a, Signal::Term).is_empty(),
            "old ones touched: {a:?}"
        );
        assert!(has(
            &a,
            &Action::Notify(Notice::Ready("2 workers ready (reload failed)".into()))
        ));
        assert_eq!((sim.st.phase(), sim.st.generation()), (Phase::Ready, 0));
        sim.exit(103);
        assert!(spawns(&sim.after(Duration::from_secs(60))).is_empty());

        // Not ready in time: a ready one drains, the starting one is killed.
        sim.send(Event::Reload);
        sim.send(ready(104));
        let a = sim.after(READY_TIMEOUT);
        assert_eq!(signalled(&a, Signal::Term), [104]);
        assert_eq!(signalled(&a, Signal::Kill), [105]);
        assert_eq!((sim.st.phase(), sim.st.generation()), (Phase::Ready, 0));

        // A binary that cannot be started (say the path names nothing now):
        // nothing changes.
        sim.fail_spawns = true;
        let a = sim.send(Event::Reload);
        assert_eq!(spawns(&a).len(), 2, "{a:?}");
        assert_eq!(sim.next_pid, 106, "a spawn of a given-up reload was made");
        assert_eq!((sim.st.phase(), sim.st.generation()), (Phase::Ready, 0));
        // SIGHUP is ignored until the first generation is ready.
        let mut sim = Sim::new(1, None);
        sim.send(Event::Start);
        assert!(spawns(&sim.send(Event::Reload)).is_empty());
    }

    #[test]
    fn the_memory_guard_replaces_a_worker_over_the_limit() {
        let mut sim = Sim::ready(2, Some(1000));
        let a = sim.after(RSS_POLL);
        assert!(has(&a, &Action::ReadRss(vec![100, 101])));
        let a = sim.send(Event::Rss(vec![(100, 1001), (101, 1000)]));
        assert!(has(&a, &Action::Restart(RestartReason::Memory)));
        let new = spawns(&a);
        assert_eq!(new.len(), 1);
        assert_eq!((new[0].slot, new[0].role), (0, Role::Replacement));
        // The replacement is starting: no second one, and 100 is not read.
        assert!(has(&sim.after(RSS_POLL), &Action::ReadRss(vec![101])));
        let a = sim.send(ready(102));
        assert_eq!(signalled(&a, Signal::Term), [100]);
        assert_eq!(sim.st.current.slots[0].primary, Some(102));
        let a = sim.exit(100);
        assert!(!has(&a, &Action::Restart(RestartReason::Crash)));

        // A replacement that dies before it is ready: the old one keeps
        // serving, and is measured again at the next poll.
        sim.after(RSS_POLL);
        assert_eq!(spawns(&sim.send(Event::Rss(vec![(101, 5000)]))).len(), 1);
        let a = sim.exit(103);
        assert!(!has(&a, &Action::Restart(RestartReason::Crash)));
        assert_eq!(sim.st.current.slots[1].primary, Some(101));
        assert!(has(&sim.after(RSS_POLL), &Action::ReadRss(vec![102, 101])));
    }

    #[test]
    fn a_worker_not_ready_in_time_is_killed_and_restarted() {
        let mut sim = Sim::new(1, None);
        sim.send(Event::Start);
        assert_eq!(sim.st.next_deadline(), Some(sim.now + READY_TIMEOUT));
        assert!(
            signalled(
                &sim.after(READY_TIMEOUT - Duration::from_millis(1)),
                Signal::Kill
            )
            .is_empty()
        );
        let a = sim.after(Duration::from_millis(1));
        assert_eq!(signalled(&a, Signal::Kill), [100]);
        // Killed once, not on every tick while it dies.
        assert!(signalled(&sim.after(Duration::from_millis(1)), Signal::Kill).is_empty());
        let a = sim.exit(100);
        assert!(has(&a, &Action::Restart(RestartReason::Crash)));
        assert_eq!(spawns(&sim.after(Duration::from_millis(100))).len(), 1);
        sim.send(ready(101));
        assert_eq!(sim.st.phase(), Phase::Ready);
    }

    #[test]
    fn sigterm_drains_and_a_second_one_kills() {
        let mut sim = Sim::ready(2, None);
        let a = sim.send(Event::Stop { signal: "SIGTERM" });
        assert_eq!(signalled(&a, Signal::Term), [100, 101]);
        assert!(has(&a, &Action::CloseListener));
        assert!(has(&a, &Action::Notify(Notice::Stopping)));
        assert_eq!(sim.st.phase(), Phase::Draining);
        // No restart while draining, whatever exits.
        let a = sim.exit(100);
        assert!(!has(&a, &Action::Restart(RestartReason::Crash)));
        let a = sim.send(Event::Stop { signal: "SIGINT" });
        assert_eq!(signalled(&a, Signal::Kill), [101]);
        sim.exit(101);
        assert_eq!(sim.st.phase(), Phase::Stopped);

        // One SIGTERM and workers that overstay the grace period.
        let mut sim = Sim::ready(1, None);
        sim.send(Event::Stop { signal: "SIGTERM" });
        assert!(signalled(&sim.after(GRACE), Signal::Kill).is_empty());
        assert_eq!(signalled(&sim.after(KILL_MARGIN), Signal::Kill), [100]);
        sim.exit(100);
        assert_eq!(sim.st.phase(), Phase::Stopped);

        // SIGQUIT: killed at once.
        let mut sim = Sim::ready(2, None);
        assert_eq!(
            signalled(&sim.send(Event::FastStop), Signal::Kill),
            [100, 101]
        );
    }

    fn reads(actions: &[Action]) -> Vec<Vec<(u32, usize)>> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::ReadConnections(w) => Some(w.clone()),
                _ => None,
            })
            .collect()
    }

    /// (metrics slot, answers) of every `Shed`.
    fn sheds(actions: &[Action]) -> Vec<(usize, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Shed {
                    metrics_slot,
                    answers,
                } => Some((*metrics_slot, *answers)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_restarted_worker_gets_its_share_of_connections() {
        let mut sim = Sim::ready(2, None);
        // Readiness started a round; an even split ends it at once.
        let a = sim.send(Event::Connections(vec![(100, 8), (101, 8)]));
        assert_eq!(sheds(&a), [(101, 0), (102, 0)]);
        assert_eq!(sim.st.next_deadline(), None);
        // Worker 1 dies; its clients reconnect to worker 2.
        sim.exit(100);
        assert_eq!(spawns(&sim.after(Duration::from_millis(100))).len(), 1);
        let a = sim.send(ready(102));
        assert_eq!(reads(&a), [vec![(101, 102), (102, 103)]]);
        // Half the excess each step, spread over steps: 16/0, 12/4, 10/6, 9/7.
        let a = sim.send(Event::Connections(vec![(101, 16), (102, 0)]));
        assert_eq!(sheds(&a), [(102, 4), (103, 0)]);
        assert!(reads(&sim.after(BALANCE_STEP - Duration::from_millis(1))).is_empty());
        assert_eq!(reads(&sim.after(Duration::from_millis(1))).len(), 1);
        let a = sim.send(Event::Connections(vec![(101, 12), (102, 4)]));
        assert_eq!(sheds(&a), [(102, 2), (103, 0)]);
        sim.after(BALANCE_STEP);
        let a = sim.send(Event::Connections(vec![(101, 10), (102, 6)]));
        assert_eq!(sheds(&a), [(102, 1), (103, 0)]);
        sim.after(BALANCE_STEP);
        // Within one connection (and a tenth) of the mean: even, round over.
        let a = sim.send(Event::Connections(vec![(101, 9), (102, 7)]));
        assert_eq!(sheds(&a), [(102, 0), (103, 0)]);
        assert_eq!(sim.st.next_deadline(), None);
        assert!(reads(&sim.after(BALANCE_STEP)).is_empty());
    }

    #[test]
    fn a_rebalancing_round_is_bounded_and_counts_only_ready_workers() {
        let mut sim = Sim::ready(2, None);
        // A split that never evens out: shedding stops after the round.
        let mut waited = Duration::ZERO;
        while waited < BALANCE_ROUND {
            let a = sim.send(Event::Connections(vec![(100, 30), (101, 0)]));
            assert_eq!(sheds(&a), [(101, 8), (102, 0)]);
            sim.after(BALANCE_STEP);
            waited += BALANCE_STEP;
        }
        assert_eq!(sim.st.next_deadline(), None);
        // The last step took every order back.
        let mut sim = Sim::ready(2, None);
        let mut last = Vec::new();
        for _ in 0..BALANCE_ROUND.as_millis() / BALANCE_STEP.as_millis() {
            last = sim.after(BALANCE_STEP);
        }
        assert_eq!(sheds(&last), [(101, 0), (102, 0)]);

        // During a reload: a new worker ready beside the old ones; once the
        // old ones drain they are not counted (nor told to shed).
        let mut sim = Sim::ready(2, None);
        sim.send(Event::Reload);
        sim.send(ready(102));
        let a = sim.send(ready(103));
        assert_eq!(signalled(&a, Signal::Term), [100, 101]);
        assert_eq!(reads(&a), [vec![(102, 103), (103, 104)]]);
        let a = sim.send(Event::Connections(vec![
            (100, 40),
            (101, 40),
            (102, 1),
            (103, 0),
        ]));
        assert_eq!(sheds(&a), [(103, 0), (104, 0)]);
        // A stop ends any round.
        let mut sim = Sim::ready(2, None);
        sim.send(Event::Stop { signal: "SIGTERM" });
        assert!(sim.st.next_deadline() > Some(sim.now + BALANCE_ROUND));
        let a = sim.send(Event::Connections(vec![(100, 30), (101, 0)]));
        assert!(sheds(&a).is_empty());
    }

    #[test]
    fn phase_codes_round_trip() {
        for p in Phase::ALL {
            assert_eq!(Phase::from_code(p as u64), Some(p));
        }
        assert_eq!(Phase::from_code(0), None);
    }
}
