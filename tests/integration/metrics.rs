//! Metrics are exact across worker processes, and survive deaths and reloads.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

fn json(srv: &Server) -> Value {
    srv.get("/metrics.json").json()
}

fn worker_pids(v: &Value) -> Vec<u64> {
    let mut pids: Vec<u64> = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["role"] == "worker")
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    pids.sort();
    pids
}

/// Waits until `ok` holds for a scrape, up to 20 s.
fn wait_for(srv: &Server, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let v = json(srv);
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn hash_ok_count(v: &Value) -> u64 {
    v["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["route"] == "/hash" && r["method"] == "POST" && r["status"] == "200")
        .map(|r| r["count"].as_u64().unwrap())
        .sum()
}

fn text_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn totals_are_exact_across_workers_deaths_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &["--workers", "2"]);
    let v = wait_for(&srv, "two workers", |v| worker_pids(v).len() == 2);
    let first_pids = worker_pids(&v);
    const N: u64 = 300;
    let mut served_by = std::collections::BTreeSet::new();
    for _ in 0..N {
        let r = srv.post("/hash", b"hello");
        assert_eq!(r.status, 200);
        if let Some(pid) = r.header("x-worker-pid") {
            served_by.insert(pid.to_string());
        }
    }
    // Every scrape, whichever worker answers it, shows the same total.
    for _ in 0..20 {
        assert_eq!(hash_ok_count(&json(&srv)), N);
        let text = srv.get("/metrics").text();
        assert_eq!(
            text_value(
                &text,
                r#"hashpress_http_requests_total{route="/hash",method="POST",status="200"}"#
            ),
            Some(N as f64)
        );
    }
    assert_eq!(json(&srv)["bytes"]["hash_in"], 5 * N);

    // SIGKILL one worker: it is replaced, and its counts stay.
    let victim = first_pids[0] as i32;
    // SAFETY: kill(2) on a worker of our own server.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let v = wait_for(&srv, "a replacement worker", |v| {
        let pids = worker_pids(v);
        pids.len() == 2 && !pids.contains(&(victim as u64))
    });
    assert_eq!(hash_ok_count(&v), N, "counts lost with the killed worker");
    assert_eq!(v["workers"]["restarts"]["crash"], 1);
    assert_eq!(v["workers"]["alive"], 2);
    assert_eq!(v["workers"]["phase"], "ready");
    assert_eq!(v["workers"]["generation"], 0);

    // SIGHUP reload: every worker new, totals unchanged.
    let before = worker_pids(&v);
    srv.signal(libc::SIGHUP);
    let v = wait_for(&srv, "a new generation", |v| {
        let pids = worker_pids(v);
        pids.len() == 2 && pids.iter().all(|p| !before.contains(p))
    });
    assert_eq!(hash_ok_count(&v), N, "counts lost in the reload");
    assert_eq!(v["workers"]["restarts"]["reload"], 2);
    // The old generation is gone, so the new one was published serving.
    assert_eq!(v["workers"]["phase"], "ready");
    assert_eq!(v["workers"]["generation"], 1);
    for _ in 0..10 {
        srv.post("/hash", b"x");
    }
    assert_eq!(hash_ok_count(&json(&srv)), N + 10);
    assert!(
        served_by.len() >= 2 || served_by.is_empty(),
        "one worker served everything: {served_by:?}"
    );
}

#[test]
fn histogram_text_and_json_agree() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &["--workers", "2"]);
    wait_for(&srv, "two workers ready", |v| {
        worker_pids(v).len() == 2 && v["workers"]["phase"] == "ready"
    });
    for i in 0..50 {
        srv.post("/hash", &vec![7u8; i * 1000]);
    }
    srv.post("/hash?alg=bad", b"");
    let v = json(&srv);
    let text = srv.get("/metrics").text();
    let lat = v["latency"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["route"] == "/hash")
        .unwrap()
        .clone();
    let buckets = lat["buckets"].as_array().unwrap();
    let counts: Vec<u64> = buckets
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .collect();
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "cumulative: {counts:?}"
    );
    assert_eq!(*counts.last().unwrap(), 51);
    assert_eq!(lat["count"], 51);
    assert_eq!(
        text_value(
            &text,
            r#"hashpress_http_request_duration_seconds_count{route="/hash"}"#
        ),
        Some(51.0)
    );
    assert_eq!(
        text_value(
            &text,
            r#"hashpress_http_request_duration_seconds_bucket{route="/hash",le="+Inf"}"#
        ),
        Some(51.0)
    );
    // Per-process figures: the supervisor unlabelled, each worker labelled.
    assert!(text.contains("\nprocess_resident_memory_bytes "));
    assert_eq!(
        text.matches("process_resident_memory_bytes{worker=")
            .count(),
        2
    );
    assert_eq!(text_value(&text, "hashpress_workers"), Some(2.0));
    assert_eq!(
        text_value(&text, r#"hashpress_supervisor_phase{phase="ready"}"#),
        Some(1.0)
    );
    assert_eq!(
        text_value(&text, r#"hashpress_supervisor_phase{phase="starting"}"#),
        Some(0.0)
    );
    assert_eq!(text_value(&text, "hashpress_generation"), Some(0.0));
    // Accept: application/json on /metrics is the JSON view.
    let r = request(
        srv.addr,
        "GET",
        "/metrics",
        &[("Accept", "application/json")],
        b"",
    );
    assert_eq!(r.json()["workers"]["alive"], 2);
}
