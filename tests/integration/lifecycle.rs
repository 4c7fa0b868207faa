//! Start, drain and stop.

use std::io::Write;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::helpers::*;

#[test]
fn sigterm_finishes_in_flight_upload_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = Server::start(dir.path(), &["--grace", "20s"]);
    let body = pseudo_random(4 << 20, 9);
    let want: String = Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut s = connect(srv.addr);
    write!(
        s,
        "POST /hash HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body[..1 << 20]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    srv.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    // Draining: new connections are refused.
    assert!(
        std::net::TcpStream::connect(srv.addr).is_err(),
        "a new connection was accepted while draining"
    );
    // The upload in flight completes, slowly, with the right digest.
    for piece in body[1 << 20..].chunks(512 << 10) {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = read_response(&mut s);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["hash"].as_str().unwrap(), want);
    let status = srv.wait_exit(Duration::from_secs(10)).expect("exited");
    assert_eq!(status.code(), Some(0));
}

/// In both modes: an upload that never completes holds the drain until
/// `--grace`, no longer, and the exit is still clean.
#[test]
fn grace_expiry_ends_a_stuck_drain() {
    let dir = tempfile::tempdir().unwrap();
    for cluster in [false, true] {
        let mut srv = if cluster {
            Server::cluster(dir.path(), &["--workers", "2", "--grace", "1s"])
        } else {
            Server::start(dir.path(), &["--grace", "1s"])
        };
        let mut s = connect(srv.addr);
        s.write_all(b"POST /hash HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\nabc")
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let start = Instant::now();
        srv.signal(libc::SIGTERM);
        let status = srv.wait_exit(Duration::from_secs(10)).expect("exited");
        assert_eq!(status.code(), Some(0), "cluster: {cluster}");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "cluster: {cluster}: {took:?}"
        );
    }
}

/// In both modes: a taken address is a clear error at once, before any
/// worker starts.
#[test]
fn busy_port_fails_fast_with_a_clear_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    for workers in ["0", "2"] {
        let start = Instant::now();
        let out = std::process::Command::new(BIN)
            .args(["serve", "--workers", workers, "--listen", &addr, "--root"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cannot listen on") && err.contains("in use"),
            "--workers {workers}: {err}"
        );
        assert!(!err.contains("worker started"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn missing_root_is_a_clear_startup_error() {
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--root", "/no/such/dir"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--root /no/such/dir"));
}
