//! Cluster mode: a supervisor and its workers, real processes and real
//! signals on loopback. Each test bounds its own running time.

use std::collections::HashSet;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

/// Counts from a load run.
#[derive(Default)]
pub(crate) struct Tally {
    ok: AtomicU64,
    non_2xx: AtomicU64,
    errors: AtomicU64,
    /// Slowest request (connect included when it opened a connection), µs.
    pub(crate) max_latency_us: AtomicU64,
}

/// `clients` keep-alive connections posting "hello" to /hash in a loop, as
/// wrk does: reconnect when told `Connection: close`, count an error when a
/// connection fails instead.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    pub(crate) tally: Arc<Tally>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    pub(crate) fn start(addr: SocketAddr, clients: usize) -> Load {
        Load::paced(addr, clients, Duration::ZERO)
    }

    /// As `start`, each client pausing `pace` after every answer: the
    /// load of clients that think, which a server with headroom answers
    /// at their pace, so each worker's requests follow its connections.
    pub(crate) fn paced(addr: SocketAddr, clients: usize, pace: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let threads = (0..clients)
            .map(|_| {
                let (stop, tally) = (stop.clone(), tally.clone());
                thread::spawn(move || {
                    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
                    while !stop.load(Ordering::Relaxed) {
                        if !pace.is_zero() {
                            thread::sleep(pace);
                        }
                        let began = Instant::now();
                        if conn.is_none() {
                            match TcpStream::connect(addr) {
                                Ok(s) => {
                                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                                    let r = BufReader::new(s.try_clone().unwrap());
                                    conn = Some((s, r));
                                }
                                Err(_) => {
                                    tally.errors.fetch_add(1, Ordering::Relaxed);
                                    thread::sleep(Duration::from_millis(10));
                                    continue;
                                }
                            }
                        }
                        let (s, r) = conn.as_mut().unwrap();
                        let res = s
                            .write_all(
                                b"POST /hash HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
                            )
                            .and_then(|()| read_one(r));
                        let took = began.elapsed().as_micros() as u64;
                        tally.max_latency_us.fetch_max(took, Ordering::Relaxed);
                        match res {
                            Ok(resp) => {
                                if (200..300).contains(&resp.status) {
                                    tally.ok.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    tally.non_2xx.fetch_add(1, Ordering::Relaxed);
                                }
                                if resp.closes() {
                                    conn = None;
                                }
                            }
                            Err(_) => {
                                tally.errors.fetch_add(1, Ordering::Relaxed);
                                conn = None;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            tally,
            threads,
        }
    }

    fn ok(&self) -> u64 {
        self.tally.ok.load(Ordering::Relaxed)
    }

    /// Stops and returns (ok, non-2xx, errors).
    pub(crate) fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let t = &self.tally;
        (
            t.ok.load(Ordering::Relaxed),
            t.non_2xx.load(Ordering::Relaxed),
            t.errors.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn workers_share_one_socket_and_say_who_answered() {
    let dir = tempfile::tempdir().unwrap();
    let c = Server::cluster(dir.path(), &["--workers", "2"]);
    let kids: HashSet<u32> = c.children().into_iter().map(|p| p as u32).collect();
    assert_eq!(kids.len(), 2, "two workers, direct children");
    let ready: HashSet<u32> = c.ready_pids().into_iter().map(|(p, _)| p).collect();
    assert_eq!(kids, ready);
    for _ in 0..10 {
        let r = try_get(c.addr, "/healthz").unwrap();
        assert_eq!(r.status, 200);
        assert!(
            kids.contains(&r.worker_pid().unwrap()),
            "answered by a worker"
        );
    }
    // Worker output reaches the supervisor's log, tagged.
    c.wait_log(Duration::from_secs(5), |v| {
        v["message"] == "accepting connections" && v["worker"].is_u64()
    });
}

#[test]
fn sigkilled_worker_under_load_is_replaced_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let c = Server::cluster(dir.path(), &["--workers", "2"]);
    let clients = 16;
    let load = Load::start(c.addr, clients);
    thread::sleep(Duration::from_millis(500));
    let first: HashSet<u64> = c.ready_pids().iter().map(|(p, _)| *p as u64).collect();
    let victim = c.ready_pids()[0].0;
    let killed_at = Instant::now();
    // SAFETY: kill(2) on a worker of our child.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    c.wait_log(Duration::from_secs(3), |v| {
        v["message"] == "worker ready" && v["pid"].as_u64().is_some_and(|p| !first.contains(&p))
    });
    let took = killed_at.elapsed();
    let ok_before = load.ok();
    thread::sleep(Duration::from_millis(700));
    assert!(load.ok() > ok_before, "service continued after the kill");
    let (ok, non_2xx, errors) = load.finish();
    eprintln!("SIGKILL under load: replaced in {took:?}; ok={ok} non2xx={non_2xx} errors={errors}");
    assert!(took < Duration::from_secs(1), "replacement took {took:?}");
    assert_eq!(non_2xx, 0);
    // Only requests in flight on the killed worker may fail: one per client at most.
    assert!(
        errors <= clients as u64,
        "{errors} failures for {clients} clients"
    );
}

#[test]
fn a_worker_killed_again_and_again_backs_off_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let c = Server::cluster(dir.path(), &["--workers", "2"]);
    let started_before = c.count("worker started");
    let end = Instant::now() + Duration::from_secs(6);
    while Instant::now() < end {
        for pid in c.children() {
            // SAFETY: kill(2) on a worker of our child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        thread::sleep(Duration::from_millis(10));
    }
    let forks = c.count("worker started") - started_before;
    eprintln!("kill loop: {forks} forks in 6 s for 2 workers");
    assert!(forks <= 36, "{forks} forks in 6 s");
    assert!(forks >= 4, "workers were restarted at all ({forks})");
    // The service comes back by itself.
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if try_get(c.addr, "/healthz").is_ok_and(|r| r.status == 200) && c.children().len() == 2 {
            break;
        }
        assert!(Instant::now() < end, "service did not come back");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_under_load_drops_nothing_and_replaces_every_worker() {
    let dir = tempfile::tempdir().unwrap();
    let c = Server::cluster(dir.path(), &["--workers", "2", "--grace", "10s"]);
    let old: HashSet<u32> = c.ready_pids().into_iter().map(|(p, _)| p).collect();
    let load = Load::start(c.addr, 64);
    thread::sleep(Duration::from_millis(800));
    c.signal(libc::SIGHUP);
    c.wait_phase("ready", 1, Duration::from_secs(20));
    // Wait until the old generation has exited, under load all along.
    c.wait_gone(&old, Duration::from_secs(15));
    thread::sleep(Duration::from_millis(500));
    let (ok, non_2xx, errors) = load.finish();
    eprintln!("SIGHUP under load: ok={ok} non2xx={non_2xx} errors={errors}");
    assert!(ok > 100);
    assert_eq!((non_2xx, errors), (0, 0));
    let new: HashSet<u32> = c.children().into_iter().map(|p| p as u32).collect();
    assert_eq!(new.len(), 2);
    assert!(new.is_disjoint(&old), "old {old:?} new {new:?}");
    for _ in 0..6 {
        let pid = try_get(c.addr, "/healthz").unwrap().worker_pid().unwrap();
        assert!(new.contains(&pid));
    }
}

#[test]
#[ignore = "needs wrk (.ci/run installs it)"]
fn sighup_under_wrk_sees_no_errors() {
    let dir = tempfile::tempdir().unwrap();
    let c = Server::cluster(dir.path(), &["--workers", "2"]);
    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        "wrk.method = \"POST\"; wrk.body = \"hello\"\n\
         wrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n",
    )
    .unwrap();
    let wrk = Command::new("wrk")
        .args(["-t1", "-c64", "-d4s", "-s"])
        .arg(&script)
        .arg(format!("http://{}/hash", c.addr))
        .stdout(Stdio::piped())
        .spawn()
        .expect("wrk is required: apt-get install wrk");
    thread::sleep(Duration::from_millis(1500));
    c.signal(libc::SIGHUP);
    let out = wrk.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    c.wait_phase("ready", 1, Duration::from_secs(5));
    assert!(text.contains("requests in"), "{text}");
    assert!(!text.contains("Socket errors"), "{text}");
    assert!(!text.contains("Non-2xx"), "{text}");
}

#[test]
fn sigterm_lets_a_slow_upload_finish_refuses_new_connections_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Server::cluster(dir.path(), &["--workers", "2", "--grace", "20s"]);
    let body: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let file = dir.path().join("body");
    std::fs::write(&file, &body).unwrap();
    let want = crate::helpers::oracle(&file, "sha256")
        .remove("sha256")
        .unwrap();
    let mut s = TcpStream::connect(c.addr).unwrap();
    write!(
        s,
        "POST /hash HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body[..1 << 20]).unwrap();
    thread::sleep(Duration::from_millis(200));
    c.signal(libc::SIGTERM);
    thread::sleep(Duration::from_millis(300));
    assert!(
        TcpStream::connect(c.addr).is_err(),
        "a new connection was accepted while draining"
    );
    for piece in body[1 << 20..].chunks(512 << 10) {
        s.write_all(piece).unwrap();
        thread::sleep(Duration::from_millis(50));
    }
    let r = read_one(&mut BufReader::new(s)).unwrap();
    assert_eq!(r.status, 200);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["hash"].as_str().unwrap(), want);
    let status = c.wait_exit(Duration::from_secs(10)).expect("exited");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigquit_stops_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Server::cluster(dir.path(), &["--workers", "2", "--grace", "30s"]);
    let mut s = TcpStream::connect(c.addr).unwrap();
    s.write_all(b"POST /hash HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\nabc")
        .unwrap();
    thread::sleep(Duration::from_millis(200));
    c.signal(libc::SIGQUIT);
    let status = c.wait_exit(Duration::from_secs(3)).expect("fast stop");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_new_generation_that_cannot_start_leaves_the_old_one_serving() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let c = Server::cluster(&root, &["--workers", "2"]);
    let old: HashSet<u32> = c.children().into_iter().map(|p| p as u32).collect();
    // New workers will fail to open --root; the running ones hold it open.
    std::fs::remove_dir(&root).unwrap();
    c.signal(libc::SIGHUP);
    let v = c.wait_log(Duration::from_secs(10), |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("reload failed"))
    });
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("exited before it was ready"),
        "{v}"
    );
    c.wait_phase("ready", 0, Duration::from_secs(5));
    thread::sleep(Duration::from_millis(300));
    let now: HashSet<u32> = c.children().into_iter().map(|p| p as u32).collect();
    assert_eq!(now, old, "the old workers keep serving");
    assert_eq!(try_get(c.addr, "/healthz").unwrap().status, 200);
}

/// `hashpress serve --workers 2` given `listener` the way systemd does:
/// as fd 3, with `LISTEN_FDS=1` and `LISTEN_PID` naming the process.
pub(crate) fn activated(listener: &std::net::TcpListener, root: &Path) -> Command {
    use std::os::fd::AsRawFd;
    let fd = listener.as_raw_fd();
    // The shell sets LISTEN_PID to its own pid, which exec keeps: just what
    // systemd does between fork and exec.
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        "export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" \"$@\"",
        BIN,
        "serve",
        "--workers",
        "2",
        "--log-format",
        "json",
        "--listen",
        "127.0.0.1:1", // must be ignored in favour of the inherited socket
        "--root",
    ])
    .arg(root);
    // SAFETY: dup2 and fcntl only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep FD_CLOEXEC: clear it instead.
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    crate::helpers::clean_env(&mut cmd);
    cmd
}

#[test]
fn socket_activation_and_sd_notify() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut cmd = activated(&listener, dir.path());
    cmd.env("NOTIFY_SOCKET", &notify_path);
    let c = Server::spawn_cluster(cmd);
    assert_eq!(c.addr, addr, "serves on the socket it was given");
    drop(listener);
    let mut buf = [0u8; 512];
    let mut recv = || {
        let n = notify.recv(&mut buf).expect("a notify message");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(recv().starts_with("STATUS=starting"));
    assert!(recv().starts_with("READY=1\n"));
    assert_eq!(try_get(addr, "/healthz").unwrap().status, 200);
    c.signal(libc::SIGHUP);
    let m = recv();
    assert!(m.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{m}");
    assert!(recv().starts_with("READY=1\n"));
    c.signal(libc::SIGTERM);
    assert!(recv().starts_with("STOPPING=1\n"));
    let mut c = c;
    assert_eq!(
        c.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn max_worker_rss_recycles_workers_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    // Any worker is over 1 MiB: each gets recycled, one replacement at a time.
    let c = Server::cluster(dir.path(), &["--workers", "2", "--max-worker-rss", "1MiB"]);
    let old: HashSet<u32> = c.ready_pids().into_iter().map(|(p, _)| p).collect();
    let load = Load::start(c.addr, 8);
    let v = c.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "memory guard: replacement ready; draining the old worker"
    });
    let old_pid = v["old_pid"].as_u64().unwrap();
    assert!(old.contains(&(old_pid as u32)));
    // The old one drained and exited cleanly.
    c.wait_log(Duration::from_secs(10), |v| {
        v["message"] == "worker exited"
            && v["pid"].as_u64() == Some(old_pid)
            && v["status"] == "exit status: 0"
    });
    let (ok, non_2xx, errors) = load.finish();
    assert!(ok > 0);
    assert_eq!((non_2xx, errors), (0, 0));
}
