//! The one listening socket: bound here once (or received from systemd),
//! then handed to every worker as an inherited file descriptor. Workers
//! never bind, so a worker coming or going never opens or closes the port,
//! and connections queued on it survive any worker's exit.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

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
        // SAFETY: systemd handed this descriptor to us and nothing else owns it.
        let listener = unsafe { inherit(fd) }.map_err(|e| {
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
///
/// # Safety
/// `fd` must be open and owned by nobody else in this process.
pub unsafe fn inherit(fd: RawFd) -> io::Result<TcpListener> {
    // Check before taking ownership: a descriptor that is not what we were
    // told is not ours to close.
    if sockopt(fd, libc::SO_TYPE)? != libc::SOCK_STREAM || sockopt(fd, libc::SO_ACCEPTCONN)? != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} is not a listening stream socket"),
        ));
    }
    // SAFETY: the caller vouches for the descriptor.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    set_cloexec(listener.as_raw_fd(), true)?;
    Ok(listener)
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `val`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(val)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets or clears FD_CLOEXEC. Only calls fcntl, so it is safe to use between
/// fork and exec (where it clears the flag on the child's copy only).
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number; failure is reported, not UB.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let want = if on {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        if want != flags && libc::fcntl(fd, libc::F_SETFD, want) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
