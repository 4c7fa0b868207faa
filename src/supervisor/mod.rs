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
//! The decisions are `state::State`, a state machine without effects; this
//! file is the executor that feeds it events (worker reports, signals,
//! deadlines) and performs the actions it returns. After every event the
//! phase and generation are published in the metrics region.

pub mod backoff;
pub mod exe;
pub mod listener;
pub mod notify;
pub mod state;
pub mod worker;

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::Config as ServeConfig;
use crate::metrics::Region;
use crate::start_error::StartError;
use notify::Notifier;
use state::{Action, Config, Event, Notice, Phase, Signal, SpawnRef, State};
use worker::WorkerEvent;

/// Runs the supervisor until every worker has stopped. Logging is set up.
pub fn run(config: ServeConfig) -> Result<(), StartError> {
    let (listener, origin) = listener::acquire(config.listen)?;
    // Decided now, while argv[0] and the start directory mean what they did
    // when we were started.
    let reload_exe = match exe::reload_path(config.cluster.reload_exe.as_deref()) {
        Ok(p) => p,
        // Still serve: reloads then follow an in-place replace only.
        Err(e) => match std::env::current_exe() {
            Ok(p) => {
                tracing::warn!(error = %e, exe = %p.display(), "reloads will run the file this process runs");
                p
            }
            Err(e2) => {
                return Err(StartError::config(format!(
                    "{e}; and cannot read /proc/self/exe: {e2}"
                )));
            }
        },
    };
    let addr = listener.local_addr().map_or(config.listen, |a| a);
    tracing::info!(
        workers = config.workers,
        socket = ?origin,
        pid = std::process::id(),
        version = crate::build_info::LONG,
        reload_exe = %reload_exe.display(),
        "supervisor listening on {}://{addr}",
        if config.tls.is_some() { "https" } else { "http" }
    );
    // One thread: the parent-death signal of every worker is tied to the
    // thread that forked it, so that thread must live as long as we do.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError::system("cannot start the runtime", e))?;
    let metrics = Region::create()
        .map_err(|e| StartError::system("cannot create the shared metrics region", e))?;
    metrics.set_supervisor_pid(std::process::id());
    metrics.set_own_build(&crate::build_info::Build::own());
    let (tx, rx) = mpsc::unbounded_channel();
    let state = State::new(Config {
        workers: config.workers,
        grace: config.connections.grace,
        ready_timeout: config.cluster.ready_timeout,
        max_rss: config.cluster.max_worker_rss,
        exe: PathBuf::from("/proc/self/exe"),
        reload_exe,
    });
    let sup = Executor {
        state,
        metrics,
        argv0: std::env::args_os()
            .next()
            .unwrap_or_else(|| "hashpress".into()),
        args: std::env::args_os().skip(1).collect(),
        json_logs: crate::logging::wants_json(config.log_format),
        listen_fd: listener.as_raw_fd(),
        listener: Some(listener),
        events: tx,
        notify: Notifier::from_env(),
        forks: 0,
    };
    runtime.block_on(sup.run(rx))
}

/// Performs what the state decides.
struct Executor {
    state: State,
    /// Shared with every worker: their counters, and ours (alive, restarts, phase).
    metrics: &'static Region,
    /// Our arguments, given unchanged to every worker.
    argv0: OsString,
    args: Vec<OsString>,
    json_logs: bool,
    listen_fd: i32,
    /// The listening socket; dropped when a stop begins, so that once the
    /// draining workers have closed their copies new connections are refused.
    listener: Option<std::net::TcpListener>,
    /// Where worker watcher tasks report; the receiver is the main loop's.
    events: mpsc::UnboundedSender<WorkerEvent>,
    notify: Notifier,
    /// Worker processes started so far, for the log.
    forks: u64,
}

impl Executor {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<WorkerEvent>,
    ) -> Result<(), StartError> {
        let installed = || -> std::io::Result<_> {
            Ok((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
                signal(SignalKind::hangup())?,
                signal(SignalKind::quit())?,
            ))
        };
        let (mut term, mut int, mut hup, mut quit) =
            installed().map_err(|e| StartError::system("cannot install signal handlers", e))?;
        self.apply(Event::Start);
        while self.state.phase() != Phase::Stopped {
            let wake = self.state.next_deadline().map_or_else(
                || Instant::now() + Duration::from_secs(3600),
                Instant::from_std,
            );
            let event = tokio::select! {
                Some(ev) = events.recv() => match ev {
                    // The release the worker recorded before it said ready.
                    WorkerEvent::Ready { pid } => Event::Ready { pid, build: self.metrics.build_of(pid) },
                    WorkerEvent::Exited { pid, status } => Event::Exited {
                        pid,
                        status: status.map_or_else(|e| format!("unknown ({e})"), |s| s.to_string()),
                    },
                },
                _ = term.recv() => Event::Stop { signal: "SIGTERM" },
                _ = int.recv() => Event::Stop { signal: "SIGINT" },
                _ = quit.recv() => Event::FastStop,
                _ = hup.recv() => Event::Reload,
                _ = tokio::time::sleep_until(wake) => Event::Tick,
            };
            self.apply(event);
        }
        tracing::info!(
            forks = self.forks,
            "all workers stopped; supervisor exiting"
        );
        Ok(())
    }

    /// Hands `event` to the state and performs the actions, feeding their
    /// outcomes back, until there is nothing left to do.
    fn apply(&mut self, event: Event) {
        let mut todo: VecDeque<Action> = self.state.on(event, std::time::Instant::now()).into();
        while let Some(action) = todo.pop_front() {
            if let Some(outcome) = self.perform(action) {
                todo.extend(self.state.on(outcome, std::time::Instant::now()));
            }
        }
        self.metrics
            .set_phase(self.state.phase() as u64, self.state.generation());
    }

    fn perform(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::Spawn { spawn, exe } => {
                // A spawn decided earlier in this batch for a reload given up since.
                if !self.state.wants(&spawn) {
                    return None;
                }
                Some(self.spawn(spawn, &exe))
            }
            Action::Signal { pid, signal } => {
                let sig = match signal {
                    Signal::Term => libc::SIGTERM,
                    Signal::Kill => libc::SIGKILL,
                };
                // A worker we still list is our unreaped child, so its pid
                // cannot have been reused; a failure means it is exiting.
                let _ = crate::sys::kill(pid, sig);
                None
            }
            Action::ReleaseMetrics { metrics_slot } => {
                self.metrics.release(metrics_slot);
                None
            }
            Action::WorkersAlive(n) => {
                self.metrics.set_workers_alive(n);
                None
            }
            Action::Restart(reason) => {
                self.metrics.add_restart(reason);
                None
            }
            Action::ReadRss(pids) => Some(Event::Rss(
                pids.into_iter()
                    .filter_map(|pid| Some((pid, crate::metrics::process::rss_bytes(pid)?)))
                    .collect(),
            )),
            Action::ReadConnections(workers) => Some(Event::Connections(
                workers
                    .into_iter()
                    .map(|(pid, slot)| (pid, self.metrics.slot(slot).connections_open()))
                    .collect(),
            )),
            Action::Shed {
                metrics_slot,
                answers,
            } => {
                self.metrics.slot(metrics_slot).set_shed(answers);
                None
            }
            Action::CloseListener => {
                self.listener = None;
                None
            }
            Action::Notify(notice) => {
                match notice {
                    Notice::Status(s) => self.notify.status(&s),
                    Notice::Ready(s) => self.notify.ready(&s),
                    Notice::Reloading => self.notify.reloading(),
                    Notice::Stopping => self.notify.stopping(),
                }
                None
            }
        }
    }

    /// Starts one worker; the outcome is `Spawned` or `SpawnFailed`.
    fn spawn(&mut self, spawn: SpawnRef, exe: &Path) -> Event {
        let Some(metrics_slot) = self.metrics.claim(spawn.slot as u64 + 1) else {
            let error = "no free metrics slot".to_string();
            return Event::SpawnFailed { spawn, error };
        };
        let spec = worker::Spec {
            metrics_fd: self.metrics.fd(),
            metrics_slot,
            exe,
            argv0: &self.argv0,
            args: &self.args,
            listen_fd: self.listen_fd,
            slot: spawn.slot + 1,
            json_logs: self.json_logs,
        };
        match worker::spawn(&spec, self.events.clone()) {
            Ok(pid) => {
                self.forks += 1;
                self.metrics.set_pid(metrics_slot, pid);
                Event::Spawned {
                    spawn,
                    pid,
                    metrics_slot,
                }
            }
            Err(e) => {
                self.metrics.release(metrics_slot);
                let error = format!("{} ({e})", exe.display());
                Event::SpawnFailed { spawn, error }
            }
        }
    }
}
