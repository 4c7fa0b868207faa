//! `GET /dashboard` in a real browser: Debian's chromium, headless, opens the
//! page from a two-worker server under load, and the charts must fill with
//! real figures.
//!
//! Driver: `chromium --headless --virtual-time-budget=MS --dump-dom URL`.
//! Under a virtual-time budget chromium runs the page's timers on a virtual
//! clock that jumps ahead whenever the page is idle and stands still while a
//! fetch is in flight, so ten one-second polls take a few real seconds and
//! every poll really reaches the server. The page computes its rates from
//! the server's `uptime_seconds`, not from the browser clock, so the figures
//! are real ones. Then chromium prints the DOM, where every chart carries
//! `data-points` and every shown figure a `[data-metric]` element with its
//! raw number in `data-value`. No crate and no CDP session: one process, one
//! output.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::helpers::*;

/// The charts of the page, by their `data-chart` names.
const CHARTS: [&str; 10] = [
    "rps-route",
    "rps-status",
    "latency",
    "bytes",
    "pool",
    "cpu",
    "split",
    "conns",
    "memory",
    "workers",
];

/// The browser: `$HASHPRESS_CHROMIUM`, else `chromium` on PATH. Missing is a
/// failure, not a skip: CI installs Debian's `chromium`.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("HASHPRESS_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("chromium not found on PATH: `apt-get install chromium` (or set HASHPRESS_CHROMIUM)");
}

/// Runs headless chromium with `args` then `url`; returns its stdout.
/// Bounded: killed (its whole process group) after `limit`.
fn run_chromium(profile: &Path, args: &[&str], url: &str, limit: Duration) -> String {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    // Nothing of the user's home is read or written.
    .env("HOME", profile)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = cmd.spawn().expect("spawning chromium");
    let pgid = child.id() as i32;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() >= end {
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    // Helpers (renderer, zygote) go with the group, whatever happened.
    // SAFETY: kill(2) on the process group we created for chromium.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
    let stdout = reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    match status {
        Some(s) if s.success() => stdout,
        Some(s) => panic!("chromium failed ({s}); stderr:\n{stderr}"),
        None => panic!("chromium still running after {limit:?}; stderr:\n{stderr}"),
    }
}

/// `(name -> value)` of every `[data-metric]` in a DOM dump, and of every
/// chart's `data-points`.
fn read_dom(
    dom: &str,
) -> (
    HashMap<String, f64>,
    HashMap<String, u64>,
    HashMap<String, f64>,
) {
    fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
        let key = format!(" {name}=\"");
        let start = tag.find(&key)? + key.len();
        let len = tag[start..].find('"')?;
        Some(&tag[start..start + len])
    }
    let mut metrics = HashMap::new();
    let mut points = HashMap::new();
    let mut peaks = HashMap::new();
    for (i, _) in dom.match_indices('<') {
        let tag = &dom[i..i + dom[i..].find('>').unwrap_or(dom.len() - i)];
        if let (Some(name), Some(v)) = (attr(tag, "data-metric"), attr(tag, "data-value")) {
            // The DOM dump escapes & < > " in attributes; route names need none of it.
            if let Ok(v) = v.parse::<f64>() {
                metrics.entry(name.to_string()).or_insert(v);
            }
        }
        if let (Some(name), Some(Ok(v))) = (
            attr(tag, "data-metric"),
            attr(tag, "data-peak").map(str::parse::<f64>),
        ) {
            peaks.insert(name.to_string(), v);
        }
        if let (Some(name), Some(n)) = (attr(tag, "data-chart"), attr(tag, "data-points")) {
            points.insert(name.to_string(), n.parse().unwrap_or(0));
        }
    }
    (metrics, points, peaks)
}

/// Background traffic: hashing bodies and files, gzip, and some 404s, on
/// `threads` threads until `stop` (and never longer than `cap`).
fn load(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    cap: Duration,
) -> Vec<thread::JoinHandle<()>> {
    let end = Instant::now() + cap;
    let body = Arc::new(pseudo_random(16 * 1024, 7));
    let text = Arc::new(text_like(256 * 1024));
    (0..3)
        .map(|t| {
            let (stop, sent, body, text) = (stop.clone(), sent.clone(), body.clone(), text.clone());
            thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    // Any answer counts, a 503 from a full pool included.
                    let _ = match (t, i % 20) {
                        (_, 19) => request(addr, "GET", "/no/such/route", &[], b""),
                        (0, _) => request(addr, "POST", "/hash?alg=sha256", &[], &body),
                        (1, _) => request(addr, "GET", "/hash-file/big.bin", &[], b""),
                        _ => request(addr, "POST", "/compress", &[], &text),
                    };
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect()
}

/// Waits until `/metrics.json` reports `n` workers alive.
fn wait_workers(srv: &Server, n: u64) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let r = srv.get("/metrics.json");
        if r.status == 200 && r.json()["workers"]["alive"].as_u64() == Some(n) {
            return;
        }
        assert!(
            Instant::now() < end,
            "never {n} workers alive: {}",
            r.text()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs chromium (.ci/run installs it)"]
fn dashboard_fills_with_live_figures_in_chromium() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("big.bin"), pseudo_random(2 << 20, 3)).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let srv = Server::start(&root, &["--workers", "2"]);
    wait_workers(&srv, 2);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let loaders = load(
        srv.addr,
        stop.clone(),
        sent.clone(),
        Duration::from_secs(45),
    );
    thread::sleep(Duration::from_millis(700));

    let url = format!("http://{}/dashboard", srv.addr);
    let dom = run_chromium(
        profile.path(),
        &["--virtual-time-budget=10000", "--dump-dom"],
        &url,
        Duration::from_secs(40),
    );
    stop.store(true, Ordering::Relaxed);
    for t in loaders {
        t.join().expect("load thread");
    }
    let (m, points, peaks) = read_dom(&dom);
    let report = || {
        format!(
            "metrics: {m:?}\npoints: {points:?}\npeaks: {peaks:?}\nDOM head: {:.3000}",
            dom
        )
    };
    assert!(sent.load(Ordering::Relaxed) > 20, "too little load");

    assert!(
        dom.contains("data-connection=\"live\""),
        "page not live\n{}",
        report()
    );
    for c in CHARTS {
        let n = points.get(c).copied().unwrap_or(0);
        assert!(n >= 2, "chart {c} drew {n} points\n{}", report());
    }
    let get = |k: &str| -> f64 {
        *m.get(k)
            .unwrap_or_else(|| panic!("no figure {k:?}\n{}", report()))
    };
    assert!(get("rps") > 0.0, "{}", report());
    assert!(get("rps-route:/hash") > 0.0, "{}", report());
    assert!(get("rps-2xx") > 0.0, "{}", report());
    assert_eq!(get("workers-alive"), 2.0, "{}", report());
    assert!(get("hash-in-bps") > 0.0, "{}", report());
    // A 256 KiB gzip ends a few times a second: between two polls that
    // chromium's virtual time packs close together its rate can read 0, so
    // the gzip rates are judged by their peak over the chart's window.
    let peak = |k: &str| peaks.get(k).copied().unwrap_or(0.0);
    assert!(peak("compress-in-bps") > 0.0, "{}", report());
    assert!(peak("compress-out-bps") > 0.0, "{}", report());
    assert!(get("compress-out-bps") >= 0.0, "{}", report());
    let (p50, p99) = (get("latency-p50"), get("latency-p99"));
    assert!(p50 > 0.0 && p50 <= p99 && p99 < 60.0, "p50 {p50} p99 {p99}");
    assert!(get("pool-threads") >= 1.0, "{}", report());
    // Pool work ran (gzip), so its queue waits have a percentile.
    let qwait = get("queue-wait-p99");
    assert!((0.0..60.0).contains(&qwait), "queue wait p99 {qwait}");
    // Per-worker memory and CPU, one series per live worker.
    let rss: Vec<f64> = m
        .iter()
        .filter(|(k, _)| k.starts_with("rss-worker-"))
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(rss.len(), 2, "{}", report());
    assert!(rss.iter().all(|&v| v > 1e6), "{rss:?}");
    // CPU time moves in 10 ms ticks: judged by its peak, as the gzip rates.
    let cpu: f64 = peaks
        .iter()
        .filter(|(k, _)| k.starts_with("cpu-worker-"))
        .map(|(_, v)| *v)
        .sum();
    assert!(cpu > 0.0, "{}", report());
    assert!(get("rss-supervisor") > 0.0, "{}", report());
    // How the work is split: requests/s and connections, one series per worker.
    let split: Vec<f64> = m
        .iter()
        .filter(|(k, _)| k.starts_with("requests-worker-"))
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(split.len(), 2, "{}", report());
    assert!(split.iter().sum::<f64>() > 0.0, "{}", report());
    let conns = m
        .iter()
        .filter(|(k, _)| k.starts_with("connections-worker-"))
        .count();
    assert_eq!(conns, 2, "{}", report());
    eprintln!(
        "dashboard test: {} load requests, {:.1} s",
        sent.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
}

/// The page stands alone: served as HTML with a CSP that forbids other
/// hosts, and nothing in it names one.
#[test]
fn dashboard_page_is_self_contained() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let r = srv.get("/dashboard");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = r.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let page = r.text();
    assert!(page.contains("/metrics.json"));
    for far in [
        "http://",
        "https://",
        "//cdn",
        "@import",
        "<script src",
        "<link rel=\"stylesheet\"",
    ] {
        assert!(!page.contains(far), "the page loads {far:?}");
    }
    assert_eq!(srv.post("/dashboard", b"").status, 405);
}

/// A server with `--token-file` holding the token `sesame`.
fn server_with_token() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "sesame\n").unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let srv = Server::start(&root, &["--token-file", tokens.to_str().unwrap()]);
    (dir, srv)
}

/// With `--token-file` the page still opens (it holds no figures) while the
/// figures it polls need the token.
#[test]
fn dashboard_opens_without_token_but_figures_need_one() {
    let (_dir, srv) = server_with_token();
    assert_eq!(srv.get("/dashboard").status, 200);
    assert_eq!(srv.get("/metrics.json").status, 401);
    let r = request(
        srv.addr,
        "GET",
        "/metrics.json",
        &[("Authorization", "Bearer sesame")],
        b"",
    );
    assert_eq!(r.status, 200);
}

/// In the browser, without a token: "disconnected", and the token form.
#[test]
#[ignore = "needs chromium (.ci/run installs it)"]
fn dashboard_without_token_shows_the_token_form_in_chromium() {
    let (_dir, srv) = server_with_token();
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/dashboard", srv.addr);
    let dom = run_chromium(
        profile.path(),
        &["--virtual-time-budget=2500", "--dump-dom"],
        &url,
        Duration::from_secs(30),
    );
    assert!(
        dom.contains("data-connection=\"disconnected\""),
        "{dom:.3000}"
    );
    assert!(dom.contains("a token is needed"), "{dom:.3000}");
    assert!(
        !dom.contains("<form id=\"token-form\" hidden"),
        "{dom:.3000}"
    );
}
