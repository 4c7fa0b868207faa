//! Starting a worker process and watching it, from the supervisor's side.
//!
//! A worker is this same binary, re-executed with the supervisor's own
//! arguments plus a few `HASHPRESS_INTERNAL_*` variables that make it take
//! the worker role (see `child.rs`). It inherits two descriptors: the
//! listening socket and the write end of a pipe on which it writes
//! `ready\n` once it is about to accept. Its stdout and stderr go to one
//! more pipe that the supervisor reads, tags with the worker's id, and
//! copies to its own stderr.

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::mpsc::UnboundedSender;

use crate::sys::pipe_cloexec;

/// Set in a worker's environment: its slot number. Its presence makes the
/// process a worker.
pub const ENV_WORKER: &str = "HASHPRESS_INTERNAL_WORKER";
/// The inherited listening socket's descriptor number.
pub const ENV_LISTEN_FD: &str = "HASHPRESS_INTERNAL_LISTEN_FD";
/// The inherited readiness pipe's descriptor number.
pub const ENV_READY_FD: &str = "HASHPRESS_INTERNAL_READY_FD";
/// "1" when the supervisor logs JSON: `--log-format auto` resolved once, by
/// the process whose stderr the user actually sees.
pub const ENV_LOG_JSON: &str = "HASHPRESS_INTERNAL_LOG_JSON";
/// The shared metrics region's descriptor, inherited.
pub const ENV_METRICS_FD: &str = "HASHPRESS_INTERNAL_METRICS_FD";
/// This worker's slot in the metrics region.
pub const ENV_METRICS_SLOT: &str = "HASHPRESS_INTERNAL_METRICS_SLOT";
/// What a worker writes on the readiness pipe.
pub const READY_LINE: &[u8] = b"ready\n";

/// What the watcher tasks of a worker report to the supervisor's loop.
#[derive(Debug)]
pub enum WorkerEvent {
    /// The worker wrote its ready line.
    Ready { pid: u32 },
    /// The worker was reaped.
    Exited {
        pid: u32,
        status: io::Result<ExitStatus>,
    },
}

/// How to start one worker.
pub struct Spec<'a> {
    /// The binary: `/proc/self/exe` at first, the reload path after a reload.
    pub exe: &'a Path,
    /// What `ps` shows as the program: the supervisor's own argv[0].
    pub argv0: &'a std::ffi::OsStr,
    /// The supervisor's own arguments (without argv[0]).
    pub args: &'a [OsString],
    /// The listening socket, shared by every worker.
    pub listen_fd: RawFd,
    /// Stable worker id (1..=N), shown in logs.
    pub slot: usize,
    pub json_logs: bool,
    /// The metrics region (shared by every worker) and this worker's slot in it.
    pub metrics_fd: RawFd,
    pub metrics_slot: usize,
}

/// Starts a worker and the tasks that forward its output and report its
/// readiness and exit on `events`. Must run on the thread that lives as long
/// as the supervisor: the parent-death signal is tied to the forking thread.
pub fn spawn(spec: &Spec<'_>, events: UnboundedSender<WorkerEvent>) -> io::Result<u32> {
    let (ready_r, ready_w) = pipe_cloexec()?;
    let (log_r, log_w) = pipe_cloexec()?;
    let mut cmd = tokio::process::Command::new(spec.exe);
    cmd.arg0(spec.argv0)
        .args(spec.args)
        .env(ENV_WORKER, spec.slot.to_string())
        .env(ENV_LISTEN_FD, spec.listen_fd.to_string())
        .env(ENV_READY_FD, ready_w.as_raw_fd().to_string())
        .env(ENV_LOG_JSON, if spec.json_logs { "1" } else { "0" })
        .env(ENV_METRICS_FD, spec.metrics_fd.to_string())
        .env(ENV_METRICS_SLOT, spec.metrics_slot.to_string())
        // systemd's variables were for the supervisor alone.
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_w.try_clone()?))
        .stderr(Stdio::from(log_w))
        .kill_on_drop(false);
    // Each worker inherits exactly the socket, its own readiness pipe and
    // the metrics region; dies with us; and has its own process group.
    crate::sys::prepare_worker(
        cmd.as_std_mut(),
        [spec.listen_fd, ready_w.as_raw_fd(), spec.metrics_fd],
    );
    let mut child = cmd.spawn()?;
    drop(cmd);
    // Our copy of the write end must go, or we would never see EOF.
    drop(ready_w);
    let pid = child.id().expect("a child not yet waited for has a pid");

    let tag = Tag {
        slot: spec.slot,
        pid,
        json: spec.json_logs,
    };
    tokio::spawn(forward_output(log_r, tag));

    let tx = events.clone();
    tokio::spawn(async move {
        if wait_ready(ready_r).await {
            let _ = tx.send(WorkerEvent::Ready { pid });
        }
    });
    tokio::spawn(async move {
        let status = child.wait().await;
        let _ = events.send(WorkerEvent::Exited { pid, status });
    });
    Ok(pid)
}

/// True once the ready line arrives; false on EOF (the worker died first).
async fn wait_ready(fd: OwnedFd) -> bool {
    let Ok(mut rx) = pipe::Receiver::from_owned_fd(fd) else {
        return false;
    };
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.starts_with(READY_LINE) {
                    return true;
                }
                if got.len() >= READY_LINE.len() {
                    return false;
                }
            }
        }
    }
}

/// Who wrote a forwarded line.
#[derive(Clone, Copy)]
struct Tag {
    slot: usize,
    pid: u32,
    json: bool,
}

impl Tag {
    /// A worker's JSON line gains `"worker"` and `"pid"` fields; any other
    /// line gets a `[worker N pid P]` prefix.
    fn apply(&self, line: &[u8], out: &mut Vec<u8>) {
        out.clear();
        let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
        if self.json && trimmed.starts_with(b"{") && trimmed.ends_with(b"}") && trimmed.len() > 2 {
            let _ = write!(out, "{{\"worker\":{},\"pid\":{},", self.slot, self.pid);
            out.extend_from_slice(&trimmed[1..]);
        } else {
            let _ = write!(out, "[worker {} pid {}] ", self.slot, self.pid);
            out.extend_from_slice(trimmed);
        }
        out.push(b'\n');
    }
}

/// Copies a worker's output to our stderr, line by line, tagged.
async fn forward_output(fd: OwnedFd, tag: Tag) {
    let Ok(rx) = pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut rx = BufReader::new(rx);
    let (mut line, mut out) = (Vec::new(), Vec::new());
    loop {
        line.clear();
        match rx.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                tag.apply(&line, &mut out);
                // One write per line keeps lines whole among our own logs.
                let _ = io::stderr().lock().write_all(&out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_json_and_text_lines() {
        let mut out = Vec::new();
        let json = Tag {
            slot: 2,
            pid: 77,
            json: true,
        };
        json.apply(b"{\"level\":\"INFO\"}\n", &mut out);
        assert_eq!(out, b"{\"worker\":2,\"pid\":77,\"level\":\"INFO\"}\n");
        json.apply(b"thread 'main' panicked\n", &mut out);
        assert_eq!(out, b"[worker 2 pid 77] thread 'main' panicked\n");
        let text = Tag {
            json: false,
            ..json
        };
        text.apply(b"INFO ready", &mut out);
        assert_eq!(out, b"[worker 2 pid 77] INFO ready\n");
    }
}
