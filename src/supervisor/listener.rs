//! The one listening socket: bound here once (or received from systemd),
//! then handed to every worker as an inherited file descriptor. Workers
//! never bind, so a worker coming or going never opens or closes the port,
//! and connections queued on it survive any worker's exit.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};

use crate::start_error::StartError;

/// First descriptor systemd passes (`SD_LISTEN_FDS_START`).
const SD_LISTEN_FDS_START: RawFd = 3;

/// Where the socket came from, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Bound,
    SystemdActivation,
}

/// The socket systemd passed us when `LISTEN_PID` names this process and
/// `LISTEN_FDS` is at least 1, else a fresh one bound to `addr`.
pub fn acquire(addr: SocketAddr) -> Result<(TcpListener, Origin), StartError> {
    if let Some(fd) = systemd_fd()? {
        // systemd handed this descriptor to us and nothing else owns it.
        let listener = inherit(fd).map_err(|e| {
            StartError::system(format!("socket from systemd (fd {fd}) unusable"), e)
        })?;
        return Ok((listener, Origin::SystemdActivation));
    }
    let listener = TcpListener::bind(addr)
        .map_err(|e| StartError::system(format!("cannot listen on {addr}"), e))?;
    Ok((listener, Origin::Bound))
}

/// `Some(3)` when socket activation applies to this process.
fn systemd_fd() -> Result<Option<RawFd>, StartError> {
    let (Some(pid), Some(fds)) = (
        std::env::var_os("LISTEN_PID"),
        std::env::var_os("LISTEN_FDS"),
    ) else {
        return Ok(None);
    };
    // Variables meant for another process (say a parent shell's) are not ours.
    if pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
        return Ok(None);
    }
    let n: i32 = fds
        .to_str()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| StartError::config(format!("LISTEN_FDS={fds:?} is not a number")))?;
    match n {
        0 => Ok(None),
        1 => Ok(Some(SD_LISTEN_FDS_START)),
        _ => {
            tracing::warn!(
                listen_fds = n,
                "systemd passed several sockets; serving the first one only"
            );
            Ok(Some(SD_LISTEN_FDS_START))
        }
    }
}

/// Takes ownership of an inherited listening TCP socket: checks that it is
/// one and marks it close-on-exec so it leaks into nothing we exec later.
/// `fd` must have been passed to this process for this purpose alone.
pub fn inherit(fd: RawFd) -> io::Result<TcpListener> {
    let fd = crate::sys::adopt_inherited_fd(fd)?;
    let listening = crate::sys::socket_option(&fd, libc::SO_TYPE)? == libc::SOCK_STREAM
        && crate::sys::socket_option(&fd, libc::SO_ACCEPTCONN)? == 1;
    if !listening {
        // Not what we were told: not ours to close either.
        let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {raw} is not a listening stream socket"),
        ));
    }
    crate::sys::set_cloexec(fd.as_raw_fd(), true)?;
    Ok(TcpListener::from(fd))
}
