//! A worker process's side of the handoff from its supervisor: the
//! descriptors and slot it inherited (named in `HASHPRESS_INTERNAL_*`
//! variables, see `supervisor::worker`), and the ready line it writes once
//! it is about to accept. The serving itself is `worker::run`.

use std::io::Write;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::build_info::Build;
use crate::config::{Config, LogFormat};
use crate::metrics::Region;
use crate::start_error::StartError;
use crate::supervisor::listener;
use crate::supervisor::worker::{
    ENV_LISTEN_FD, ENV_LOG_JSON, ENV_METRICS_FD, ENV_METRICS_SLOT, ENV_READY_FD, ENV_WORKER,
    READY_LINE,
};

use super::{Hooks, ListenerSource, Role};

/// How long idle keep-alive connections of a draining worker wait for one
/// more request before being closed. Long enough for a busy client to send
/// its next request and be told `Connection: close`.
const DRAIN_LINGER: Duration = Duration::from_secs(2);

/// The worker id when this process was started as a worker.
pub fn worker_id() -> Option<usize> {
    std::env::var(ENV_WORKER).ok()?.parse().ok()
}

fn env_fd(name: &str) -> Result<RawFd, StartError> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|fd: &RawFd| *fd > 2)
        .ok_or_else(|| StartError::config(format!("{name} is missing or not a descriptor number")))
}

/// Runs worker `id` until it has drained. Its errors reach the supervisor's
/// log through its stderr, tagged with `id`.
pub fn run(config: Config, id: usize) -> Result<(), StartError> {
    let format = match (config.log_format, std::env::var(ENV_LOG_JSON).as_deref()) {
        (LogFormat::Auto, Ok("1")) => LogFormat::Json,
        (LogFormat::Auto, Ok(_)) => LogFormat::Human,
        (f, _) => f,
    };
    crate::logging::init(&config.log_level, format)?;
    let (listen_fd, ready_fd) = (env_fd(ENV_LISTEN_FD)?, env_fd(ENV_READY_FD)?);
    // The supervisor passed these descriptors to us alone.
    let ready = crate::sys::adopt_inherited_fd(ready_fd)
        .and_then(|fd| crate::sys::set_cloexec(ready_fd, true).map(|()| fd))
        .map_err(|e| StartError::system(format!("worker {id}: readiness pipe"), e))?;
    let std_listener = listener::inherit(listen_fd)
        .map_err(|e| StartError::system(format!("worker {id}: inherited socket"), e))?;
    let metrics = inherit_metrics()?;
    // Our release, from us: the supervisor only knows which path it ran,
    // and the file there may have changed since.
    let build = Build::own();
    metrics.0.set_build(metrics.1, &build);
    let on_ready = Box::new(move || {
        // The supervisor's log adds this worker's id and pid to the line;
        // `exe` is the file the kernel really loaded for us.
        let exe = std::fs::read_link("/proc/self/exe").unwrap_or_default();
        tracing::info!(
            version = %build.version,
            commit = %build.commit,
            exe = %exe.display(),
            "accepting connections"
        );
        let mut pipe = std::fs::File::from(ready);
        // If the supervisor cannot hear us it will time us out; nothing to add.
        let _ = pipe.write_all(READY_LINE);
    });
    let hooks = Hooks {
        role: Role::Worker { metrics, on_ready },
        drain_linger: DRAIN_LINGER,
    };
    super::run(config, ListenerSource::Inherited(std_listener), hooks)?;
    tracing::info!("worker drained; exiting");
    Ok(())
}

fn inherit_metrics() -> Result<(&'static Region, usize), StartError> {
    let fd = env_fd(ENV_METRICS_FD)?;
    let slot: usize = std::env::var(ENV_METRICS_SLOT)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&s| s < crate::metrics::region::MAX_SLOTS)
        .ok_or_else(|| {
            StartError::config(format!("{ENV_METRICS_SLOT} is missing or out of range"))
        })?;
    // The supervisor passed this descriptor to us alone.
    let region = crate::sys::adopt_inherited_fd(fd)
        .and_then(Region::inherit)
        .map_err(|e| StartError::system("inherited metrics region", e))?;
    Ok((region, slot))
}
