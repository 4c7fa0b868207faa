//! systemd's readiness protocol (`sd_notify`), written out: one datagram of
//! `KEY=VALUE` lines to the unix socket named by `NOTIFY_SOCKET`.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where state changes are reported; does nothing when not run by systemd.
pub struct Notifier {
    /// The socket and its address, or None when `NOTIFY_SOCKET` is unset.
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`. A path, or an abstract name written `@name`.
    pub fn from_env() -> Notifier {
        let Some(raw) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { target: None };
        };
        match Self::open(raw.as_encoded_bytes()) {
            Ok(target) => Notifier {
                target: Some(target),
            },
            Err(e) => {
                tracing::warn!(error = %e, socket = ?raw, "NOTIFY_SOCKET unusable; not notifying systemd");
                Notifier { target: None }
            }
        }
    }

    fn open(name: &[u8]) -> io::Result<(UnixDatagram, SocketAddr)> {
        let addr = if let Some(abs) = name.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abs)?
        } else {
            use std::os::unix::ffi::OsStrExt;
            SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(name))?
        };
        Ok((UnixDatagram::unbound()?, addr))
    }

    fn send(&self, msg: &str) {
        if let Some((sock, addr)) = &self.target {
            // systemd only loses a status line if this fails: log, go on.
            if let Err(e) = sock.send_to_addr(msg.as_bytes(), addr) {
                tracing::warn!(error = %e, "sd_notify failed");
            }
        }
    }

    /// Every worker is ready (at start, and again after a reload).
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}\n"));
    }

    /// A reload began; `Type=notify-reload` wants the clock with it.
    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading\n",
            crate::sys::monotonic_usec()
        ));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=draining\n");
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let (sock, addr) = Notifier::open(path.as_os_str().as_encoded_bytes()).unwrap();
        let n = Notifier {
            target: Some((sock, addr)),
        };
        n.reloading();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        let msg = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(msg.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{msg}");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("hashpress-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        let (sock, addr) = Notifier::open(format!("@{name}").as_bytes()).unwrap();
        Notifier {
            target: Some((sock, addr)),
        }
        .ready("ok");
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=ok\n");
    }
}
