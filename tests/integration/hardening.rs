//! Hostile input, overload and faults (issue 6): slow clients, floods,
//! lying framing, full and read-only disks, files changing mid-read, symlink
//! swaps, bearer tokens, and schemathesis against the live OpenAPI document.
//! Every test talks to a real `hashpress` process on loopback and ends by itself.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::*;

/// Timing-sensitive tests take this so they do not measure one another.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Everything a socket yields until the peer closes (or `limit` passes).
fn read_all(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    raw
}

fn statuses(raw: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(raw);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

fn assert_healthy(srv: &Server) {
    let r = srv.post("/hash?alg=md5", b"hello");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["hash"], "5d41402abc4b2a76b9719d911017c592");
}

// ---------------------------------------------------------------- auth

fn bearer_request(srv: &Server, method: &str, path: &str, token: Option<&str>) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    request(srv.addr, method, path, &headers, b"abc")
}

#[test]
fn tokens_are_required_except_on_probes_and_reload_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("f.txt"), b"abc").unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# ops team\nalpha-1\n\nbeta-2\n").unwrap();
    let srv = Server::start(&root, &["--token-file", tokens.to_str().unwrap()]);

    for open in ["/", "/healthz", "/readyz"] {
        assert_eq!(
            bearer_request(&srv, "GET", open, None).status,
            200,
            "{open}"
        );
    }
    let guarded = [
        ("POST", "/hash"),
        ("GET", "/hash-file/f.txt"),
        ("GET", "/compress/f.txt"),
        ("POST", "/compress"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/no/such/route"),
    ];
    for (m, p) in guarded {
        let r = bearer_request(&srv, m, p, None);
        assert_eq!(r.status, 401, "{m} {p}");
        assert_eq!(r.error_code(), "unauthorized");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{m} {p}");
        let r = bearer_request(&srv, m, p, Some("alpha-2"));
        assert_eq!(r.status, 401, "{m} {p}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    }
    for t in ["alpha-1", "beta-2"] {
        let r = bearer_request(&srv, "POST", "/hash", Some(t));
        assert_eq!(r.status, 200, "{t}: {}", r.text());
    }
    // Wrong scheme, or the comment line, are not tokens.
    let r = request(
        srv.addr,
        "POST",
        "/hash",
        &[("Authorization", "Basic alpha-1")],
        b"",
    );
    assert_eq!(r.status, 401);
    assert_eq!(bearer_request(&srv, "POST", "/hash", Some("#")).status, 401);

    // Rotate: SIGHUP re-reads the file.
    std::fs::write(&tokens, "gamma-3\n").unwrap();
    srv.signal(libc::SIGHUP);
    let end = Instant::now() + Duration::from_secs(10);
    while bearer_request(&srv, "POST", "/hash", Some("gamma-3")).status != 200 {
        assert!(Instant::now() < end, "SIGHUP did not reload the tokens");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        bearer_request(&srv, "POST", "/hash", Some("alpha-1")).status,
        401
    );
    // A broken file on reload keeps the tokens in force.
    std::fs::remove_file(&tokens).unwrap();
    srv.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        bearer_request(&srv, "POST", "/hash", Some("gamma-3")).status,
        200
    );
    assert!(srv.child.id() > 0);
    assert_healthy_with(&srv, "gamma-3");
}

fn assert_healthy_with(srv: &Server, token: &str) {
    let r = bearer_request(srv, "POST", "/hash?alg=md5", Some(token));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["hash"], "900150983cd24fb0d6963f7d28e17f72");
}

#[test]
fn unreadable_or_empty_token_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "# no tokens yet\n\n").unwrap();
    for file in [dir.path().join("missing"), empty] {
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--root"])
            .arg(dir.path())
            .arg("--token-file")
            .arg(&file)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{file:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--token-file"), "{err}");
    }
}

#[test]
fn admin_listener_takes_metrics_away_from_the_main_one() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &["--admin-listen", "127.0.0.1:0"]);
    let end = Instant::now() + Duration::from_secs(10);
    let admin = loop {
        let found = srv.log.lock().unwrap().iter().find_map(|l| {
            let i = l.find("admin (metrics) listening on http://")?;
            let rest = &l[i + "admin (metrics) listening on http://".len()..];
            let end = rest.find(|c: char| c == '"' || c.is_whitespace())?;
            rest[..end].parse::<std::net::SocketAddr>().ok()
        });
        if let Some(a) = found {
            break a;
        }
        assert!(Instant::now() < end, "no admin listener in the log");
        std::thread::sleep(Duration::from_millis(20));
    };
    let r = srv.get("/metrics");
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "no_route");
    let r = request(admin, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("hashpress_"), "{}", r.text());
    assert_eq!(request(admin, "POST", "/hash", &[], b"x").status, 404);
    assert_healthy(&srv);
}

#[test]
fn openapi_document_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let r = srv.get("/openapi.json");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert!(v["openapi"].as_str().unwrap().starts_with("3.0"));
    assert!(v["paths"]["/hash-file/{path}"]["get"].is_object());
    let r = srv.post("/openapi.json", b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

// ---------------------------------------------------------------- slow clients

/// 500 connections send their request head one byte a second. Ordinary
/// clients are served meanwhile with p99 < 100 ms, and every dribbler is cut
/// off at the header timeout (2 s here).
#[test]
fn slowloris_does_not_starve_ordinary_clients() {
    let _g = heavy();
    const DRIBBLERS: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    // 5 s: long enough that opening 500 connections on a loaded 2-core
    // machine (seen: 2 s) and the measurement both end before the timeout.
    let srv = Server::start(dir.path(), &["--header-read-timeout", "5s"]);
    let addr = srv.addr;
    let start = Instant::now();
    let mut socks: Vec<(TcpStream, Option<Duration>)> = (0..DRIBBLERS)
        .map(|_| {
            let s = TcpStream::connect(addr).unwrap();
            s.set_nonblocking(true).unwrap();
            (s, None)
        })
        .collect();
    let opened = start.elapsed();
    let head = b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: ";
    let stop = Arc::new(AtomicBool::new(false));
    let held_at_1s = Arc::new(AtomicUsize::new(0));
    let dribbler = {
        let stop = stop.clone();
        let held_at_1s = held_at_1s.clone();
        std::thread::spawn(move || {
            let mut sent = 0usize;
            let mut next_byte = Instant::now();
            let mut counted = false;
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now >= next_byte {
                    let b = head.get(sent).copied().unwrap_or(b'a');
                    for (s, closed) in socks.iter_mut() {
                        if closed.is_none() && s.write(&[b]).is_err() {
                            *closed = Some(start.elapsed());
                        }
                    }
                    sent += 1;
                    next_byte = now + Duration::from_secs(1);
                }
                for (s, closed) in socks.iter_mut() {
                    if closed.is_some() {
                        continue;
                    }
                    let mut buf = [0u8; 512];
                    match s.read(&mut buf) {
                        Ok(0) => *closed = Some(start.elapsed()),
                        Ok(_) => {} // an error response before the close
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => *closed = Some(start.elapsed()),
                    }
                }
                if !counted && start.elapsed() >= opened + Duration::from_secs(1) {
                    counted = true;
                    let open = socks.iter().filter(|(_, c)| c.is_none()).count();
                    held_at_1s.store(open, Ordering::Relaxed);
                }
                if socks.iter().all(|(_, c)| c.is_some()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            socks.into_iter().map(|(_, c)| c).collect::<Vec<_>>()
        })
    };

    // Ordinary clients while the 500 are connected.
    let mut lat = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        let r = if i % 2 == 0 {
            srv.get("/healthz")
        } else {
            srv.post("/hash", b"hello")
        };
        lat.push(t.elapsed());
        assert_eq!(r.status, 200);
    }
    let measured_by = start.elapsed();
    lat.sort();
    let p50 = lat[lat.len() / 2];
    let p99 = lat[lat.len() * 99 / 100 - 1];

    let deadline = Instant::now() + Duration::from_secs(15);
    while !dribbler.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let closed = dribbler.join().unwrap();
    let held = held_at_1s.load(Ordering::Relaxed);
    let closed_at: Vec<Duration> = closed.iter().flatten().copied().collect();
    let first = closed_at.iter().min().copied().unwrap_or_default();
    let last = closed_at.iter().max().copied().unwrap_or_default();
    eprintln!(
        "slowloris: {DRIBBLERS} dribblers opened in {opened:?}, {held} held 1 s later; \
         200 ordinary requests done by {measured_by:?}: p50 {p50:?} p99 {p99:?}; \
         dribblers closed between {first:?} and {last:?}"
    );
    assert!(
        measured_by < first,
        "the measurement must end while every dribbler is still connected"
    );
    assert_eq!(held, DRIBBLERS, "dribblers were dropped before the timeout");
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
    assert_eq!(
        closed_at.len(),
        DRIBBLERS,
        "some dribblers were never closed"
    );
    // Each connection's clock starts when it is accepted, between 0 and
    // `opened` after `start`.
    assert!(
        first >= Duration::from_millis(4500),
        "closed early: {first:?}"
    );
    assert!(
        last <= opened + Duration::from_secs(9),
        "closed late: {last:?}"
    );
    assert_healthy(&srv);
}

/// A body that stops arriving ends with 408 after --body-read-timeout.
#[test]
fn stalled_body_gets_408() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &["--body-read-timeout", "1s"]);
    let mut s = connect(srv.addr);
    s.write_all(b"POST /hash HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly ten b")
        .unwrap();
    let t = Instant::now();
    let raw = read_all(&mut s, Duration::from_secs(10));
    let r = parse_response(&raw);
    assert_eq!(r.status, 408);
    assert_eq!(r.error_code(), "body_timeout");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_healthy(&srv);
}

// ---------------------------------------------------------------- limits

#[test]
fn limits_get_their_4xx_and_the_server_stays_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(
        dir.path(),
        &["--max-body", "1000", "--max-header-bytes", "16KiB"],
    );
    // Oversized by Content-Length: refused before the body is read.
    let mut s = connect(srv.addr);
    s.write_all(b"POST /hash HTTP/1.1\r\nHost: t\r\nContent-Length: 5000000\r\n\r\n")
        .unwrap();
    let r = parse_response(&read_all(&mut s, Duration::from_secs(10)));
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "body_too_large");
    for path in ["/hash", "/compress"] {
        let r = srv.post(path, &vec![b'x'; 1001]);
        assert_eq!(r.status, 413, "{path}");
    }
    assert_eq!(srv.post("/hash", &vec![b'x'; 1000]).status, 200);

    // Oversized chunked.
    let mut s = connect(srv.addr);
    s.write_all(b"POST /hash HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    for _ in 0..3 {
        let _ = s.write_all(format!("{:x}\r\n{}\r\n", 600, "y".repeat(600)).as_bytes());
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let r = parse_response(&read_all(&mut s, Duration::from_secs(10)));
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "body_too_large");

    // Oversized headers.
    let big = "v".repeat(20 * 1024);
    let r = request(srv.addr, "GET", "/healthz", &[("X-Big", &big)], b"");
    assert_eq!(r.status, 431);

    // Over-long paths: a name over NAME_MAX, a path over PATH_MAX.
    let long_name = format!("/hash-file/{}", "n".repeat(300));
    let r = srv.get(&long_name);
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "bad_path");
    let long_path = format!("/hash-file/{}", "a/".repeat(2500));
    let r = srv.get(&long_path);
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "bad_path");

    // Malformed chunked encoding.
    for bad in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        b"5\r\nhelloXX0\r\n\r\n",
        b"ffffffffffffffffff\r\n",
    ] {
        let mut s = connect(srv.addr);
        s.write_all(
            b"POST /hash HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap();
        s.write_all(bad).unwrap();
        let _ = s.shutdown(Shutdown::Write);
        let raw = read_all(&mut s, Duration::from_secs(10));
        let codes = statuses(&raw);
        assert!(
            codes.iter().all(|c| (400..500).contains(c)),
            "{:?}: {}",
            String::from_utf8_lossy(bad),
            String::from_utf8_lossy(&raw)
        );
        assert!(!codes.is_empty(), "no answer to malformed chunked");
    }

    // Content-Length larger than the body, then the client closes.
    let mut s = connect(srv.addr);
    s.write_all(b"POST /hash HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly ten b")
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let raw = read_all(&mut s, Duration::from_secs(10));
    let codes = statuses(&raw);
    assert!(
        codes.iter().all(|c| (400..500).contains(c)),
        "short body: {}",
        String::from_utf8_lossy(&raw)
    );

    // Content-Length smaller than the body: the rest is the next request,
    // which is garbage and gets 400.
    let mut s = connect(srv.addr);
    s.write_all(b"POST /hash?alg=md5 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhelloGARBAGE NOT HTTP\r\n\r\n")
        .unwrap();
    let raw = read_all(&mut s, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(statuses(&raw), vec![200, 400], "{text}");
    assert!(text.contains("5d41402abc4b2a76b9719d911017c592"), "{text}");

    assert_healthy(&srv);
}

// ---------------------------------------------------------------- write faults

/// A tmpfs mounted for the test, unmounted (lazily) when dropped.
struct Mount(PathBuf);

impl Mount {
    /// Panics when this process may not mount: the tests using it are
    /// `#[ignore]`d and run (by `.ci/run`) only where root is.
    fn tmpfs(at: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("the mount command is required");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs ({}): this test needs root (CAP_SYS_ADMIN)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Mount(at.to_path_buf())
    }

    fn remount_ro(&self) {
        let st = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
#[ignore = "needs root to mount a tmpfs (.ci/run runs as root)"]
fn disk_full_answers_507_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = Mount::tmpfs(&dir.path().join("small"), "1m");
    let src = pseudo_random(700 * 1024, 9);
    std::fs::write(m.0.join("src.bin"), &src).unwrap();
    let srv = Server::start(dir.path(), &["--allow-write"]);
    let r = srv.post("/compress/small/src.bin?level=1", b"");
    assert_eq!(r.status, 507, "{}", r.text());
    assert_eq!(r.error_code(), "no_space");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        listing(&m.0),
        vec!["src.bin"],
        "partial output or temporary left"
    );
    assert_eq!(std::fs::read(m.0.join("src.bin")).unwrap(), src);
    assert_healthy(&srv);
    drop(srv);
}

#[test]
#[ignore = "needs root to mount a tmpfs (.ci/run runs as root)"]
fn read_only_directory_answers_403_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = Mount::tmpfs(&dir.path().join("ro"), "4m");
    std::fs::write(m.0.join("src.txt"), text_like(100_000)).unwrap();
    m.remount_ro();
    let srv = Server::start(dir.path(), &["--allow-write"]);
    let r = srv.post("/compress/ro/src.txt", b"");
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.error_code(), "write_refused");
    assert!(r.json()["message"].as_str().unwrap().contains("Read-only"));
    assert_eq!(listing(&m.0), vec!["src.txt"]);
    assert_eq!(
        std::fs::read(m.0.join("src.txt")).unwrap(),
        text_like(100_000)
    );
    assert_healthy(&srv);
}

/// The source shrinks, or disappears, while it is being compressed: 409,
/// no `.gz`, no temporary.
#[test]
fn source_truncated_or_deleted_mid_read_answers_409() {
    let _g = heavy();
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &["--allow-write"]);
    let data = hard_to_compress(96 << 20, 5);
    for (name, act) in [("trunc.bin", "truncate"), ("gone.bin", "delete")] {
        let path = dir.path().join(name);
        std::fs::write(&path, &data).unwrap();
        let addr = srv.addr;
        let url = format!("/compress/{name}?level=9");
        let req = std::thread::spawn(move || request(addr, "POST", &url, &[], b""));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!req.is_finished(), "compression finished before the fault");
        if act == "truncate" {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(1 << 20)
                .unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
        let r = req.join().unwrap();
        assert_eq!(r.status, 409, "{act}: {}", r.text());
        assert_eq!(r.error_code(), "source_changed");
        let left: Vec<String> = listing(dir.path())
            .into_iter()
            .filter(|n| n.contains(name))
            .collect();
        let want: Vec<String> = if act == "truncate" {
            vec![name.to_string()]
        } else {
            vec![]
        };
        assert_eq!(left, want, "{act}: output or temporary left");
    }
    assert_healthy(&srv);
}

// ---------------------------------------------------------------- confinement race

/// A directory inside the root is swapped, atomically and over and over,
/// with a symlink to a directory outside it, while requests go through it.
/// The secret outside is never served, whichever the request caught.
#[test]
fn symlink_swap_race_never_leaks() {
    let _g = heavy();
    let base = tempfile::tempdir().unwrap();
    let outside = base.path().join("outside");
    let root = base.path().join("root");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(root.join("d")).unwrap();
    let secret = b"TOP-SECRET-OUTSIDE-THE-ROOT".to_vec();
    std::fs::write(outside.join("f"), &secret).unwrap();
    std::fs::write(root.join("d/f"), b"public").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("swap")).unwrap();
    let srv = Server::start(&root, &[]);
    let public_md5 = "4c9184f37cff01bcdc32dc486ec36961";
    let secret_md5 = {
        let out = Command::new("md5sum")
            .arg(outside.join("f"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)[..32].to_string()
    };

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, root) = (stop.clone(), root.clone());
        std::thread::spawn(move || {
            let dirfd = std::fs::File::open(&root).unwrap();
            let a = std::ffi::CString::new("d").unwrap();
            let b = std::ffi::CString::new("swap").unwrap();
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                use std::os::fd::AsRawFd;
                // SAFETY: renameat2 on a directory fd we hold and two C strings.
                let rc = unsafe {
                    libc::renameat2(
                        dirfd.as_raw_fd(),
                        a.as_ptr(),
                        dirfd.as_raw_fd(),
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                assert_eq!(rc, 0, "renameat2: {}", std::io::Error::last_os_error());
                swaps += 1;
            }
            swaps
        })
    };
    let counts = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, u64>::new()));
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let (addr, stop, counts, secret) =
                (srv.addr, stop.clone(), counts.clone(), secret.clone());
            let secret_md5 = secret_md5.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = if i % 2 == 0 {
                        request(addr, "GET", "/hash-file/d/f?alg=md5", &[], b"")
                    } else {
                        request(addr, "GET", "/compress/d/f", &[], b"")
                    };
                    match r.status {
                        200 if i % 2 == 0 => {
                            assert_ne!(r.json()["hash"], secret_md5.as_str(), "LEAK");
                            assert_eq!(r.json()["hash"], public_md5);
                        }
                        200 => {
                            let plain = gunzip(&r.body);
                            assert_ne!(plain, secret, "LEAK");
                            assert_eq!(plain, b"public");
                        }
                        403 => assert_eq!(r.error_code(), "outside_root"),
                        404 => assert_eq!(r.error_code(), "not_found"),
                        other => panic!("status {other}: {}", r.text()),
                    }
                    *counts.lock().unwrap().entry(r.status).or_default() += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let swaps = swapper.join().unwrap();
    let counts = counts.lock().unwrap().clone();
    eprintln!("symlink swap race: {swaps} swaps, responses by status {counts:?}");
    assert!(counts.get(&200).copied().unwrap_or(0) > 0, "{counts:?}");
    assert!(counts.get(&403).copied().unwrap_or(0) > 0, "{counts:?}");
}

// ---------------------------------------------------------------- schemathesis

/// schemathesis (PyPI) generates requests from the live /openapi.json and
/// checks every answer against it: no 5xx, documented statuses, content
/// types, headers and schemas; auth enforced. Fails if schemathesis is missing.
#[test]
#[ignore = "needs schemathesis (.ci/run installs it)"]
fn schemathesis_finds_nothing() {
    let _g = heavy();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a.txt"), b"alpha").unwrap();
    std::fs::write(root.join("sub/b.bin"), pseudo_random(10_000, 3)).unwrap();
    std::fs::write(root.join("f"), b"f").unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "schemathesis-token\n").unwrap();
    let srv = Server::start(
        &root,
        &[
            "--token-file",
            tokens.to_str().unwrap(),
            "--allow-write",
            "--max-body",
            "1MiB",
        ],
    );
    let url = format!("http://{}/openapi.json", srv.addr);
    let report = dir.path().join("report.json");
    let started = Instant::now();
    let out = Command::new("schemathesis")
        .args(["run", &url, "--checks", "all", "--max-examples", "50"])
        // "Positive data acceptance" wants a 2xx for any path the schema
        // allows; a path that names a file where a directory is needed
        // (GET /manifest/a.txt) is a documented 400, as the issue asks.
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--header", "Authorization: Bearer schemathesis-token"])
        .args(["--seed", "1", "--workers", "2"])
        .args(["--request-timeout", "10", "--no-color"])
        .args(["--report", "ndjson", "--report-ndjson-path"])
        .arg(&report)
        .env("SCHEMATHESIS_HOOKS", "")
        // Its cache (.schemathesis/) goes to the temp dir, not the repository.
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("schemathesis is required: python3 -m pip install schemathesis ({e})")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "schemathesis took {:?}:\n{stdout}\n{stderr}",
        started.elapsed()
    );
    assert!(out.status.success(), "schemathesis failed");
    let metrics = bearer_request(&srv, "GET", "/metrics", Some("schemathesis-token")).text();
    let served: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("hashpress_http_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let fivexx: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("hashpress_http_requests_total{") && l.contains("status=\"5"))
        .collect();
    eprintln!("schemathesis: the server counted {served} requests");
    assert!(fivexx.is_empty(), "5xx answers: {fivexx:?}");
    assert!(served > 100.0, "schemathesis sent only {served} requests");
    assert_healthy_with(&srv, "schemathesis-token");
}

#[test]
fn max_connections_holds_extra_clients_in_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &["--max-connections", "2"]);
    // Two idle keep-alive connections take both slots.
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect(srv.addr);
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            s
        })
        .collect();
    // A third client connects (the kernel queues it) but is not served...
    let mut third = connect(srv.addr);
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 512];
    match third.read(&mut buf) {
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{e}"
        ),
        Ok(n) => panic!("served beyond --max-connections: {:?}", &buf[..n]),
    }
    // ...until a slot frees up; then it is answered, not dropped.
    held.pop().unwrap().shutdown(Shutdown::Both).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let r = read_response(&mut third);
    assert_eq!(r.status, 200);
    drop(held);
}
