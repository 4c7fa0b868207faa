//! Running at scale: the scripts of deploy/ driving real processes on loopback.
//!
//! - deploy/fleet/fleet: two hashpress replicas behind nginx under wrk; one is killed
//!   (SIGKILL) or stopped (SIGTERM) mid-run and no GET may fail. Needs nginx and wrk
//!   (`.ci/run` installs both).
//! - deploy/garage/cluster: a 3-node garage cluster with replication factor 3 keeps working
//!   with one node down, refuses writes without quorum with two, and heals when they are back.
//!   Needs the garage binary, which CI does not build (see `.ci/run`).
//!
//! Each script bounds its own run (wrk's duration, the manager's --ttl) and each test kills what
//! is left if the script overstays.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` to the end or kills it after `limit`; panics with its output on timeout.
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning a deploy/ script");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("waiting for the script"),
        Err(_) => {
            // SAFETY: kill(2) on our own child; its manager's children die with the manager.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("{cmd:?} still running after {limit:?}");
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// 6 s of wrk (GET on 32 connections, POST on 4), one replica of two hit at 2 s; the fleet
/// stops by itself after 120 s whatever happens.
const FAILOVER: &str = "failover --replicas 2 --duration 6 --kill-at 2 --connections 32 \
                        --post-connections 4 --ttl 120 --grace 5s";

/// `deploy/fleet/fleet failover` with two replicas of the binary under test; its JSON report.
fn failover(signal: &str) -> Value {
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("deploy/fleet/fleet"))
        .args(FAILOVER.split_whitespace())
        .args(["--signal", signal, "--bin", crate::helpers::BIN]);
    crate::helpers::clean_env(&mut cmd);
    let out = run_bounded(cmd, Duration::from_secs(150));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    eprintln!("{stderr}{stdout}");
    let start = stdout
        .find('{')
        .unwrap_or_else(|| panic!("no report: {stdout} {stderr}"));
    let report: Value = serde_json::from_str(&stdout[start..]).expect("the JSON report");
    assert!(
        out.status.code() == Some(0),
        "failover exited {:?}: {report}",
        out.status
    );
    report
}

#[test]
#[ignore = "needs nginx and wrk"]
fn fleet_replica_sigkilled_under_wrk_fails_no_get() {
    let r = failover("KILL");
    let get = &r["get"];
    assert!(get["requests"].as_u64().unwrap() > 500, "{r}");
    // Every GET answered 200 with the right digest: nginx passed the ones that met the dead
    // replica to the other one.
    assert_eq!(get["failed"], 0, "{r}");
    assert_eq!(get["mismatches"], 0, "{r}");
    // The kill did hit traffic (nginx logged upstream failures and passed them on), and the
    // /readyz poller saw the replica go.
    assert!(
        r["nginx_upstream_errors_logged"].as_u64().unwrap() > 0,
        "{r}"
    );
    assert_eq!(r["ready_after"], serde_json::json!([2]), "{r}");
    // POSTs are not retried by nginx once sent: the ones in flight on the killed replica may
    // fail (at most one per connection), the rest were answered.
    let post = &r["post"];
    assert!(post["requests"].as_u64().unwrap() > 100, "{r}");
    assert!(post["failed"].as_u64().unwrap() <= 4, "{r}");
}

#[test]
#[ignore = "needs nginx and wrk"]
fn fleet_replica_sigtermed_under_wrk_fails_no_get() {
    // A graceful stop that nginx is not told about: the replica closes its listener at once
    // (refused connections are passed on, POSTs too) and finishes what it has.
    let r = failover("TERM");
    let get = &r["get"];
    assert!(get["requests"].as_u64().unwrap() > 500, "{r}");
    assert_eq!(get["failed"], 0, "{r}");
    assert_eq!(get["mismatches"], 0, "{r}");
    assert!(
        r["nginx_upstream_errors_logged"].as_u64().unwrap() > 0,
        "{r}"
    );
    assert_eq!(r["ready_after"], serde_json::json!([2]), "{r}");
    // A POST that nginx had sent into the replica's accept queue when the listener closed is
    // reset with it, and not passed on: at most one per connection.
    let post = &r["post"];
    assert!(post["requests"].as_u64().unwrap() > 100, "{r}");
    assert!(post["failed"].as_u64().unwrap() <= 4, "{r}");
}

/// `deploy/garage/cluster ARGS...`: (exit code, stdout, stderr).
fn cluster(args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("deploy/garage/cluster")).args(args);
    let out = run_bounded(cmd, Duration::from_secs(180));
    let (o, e) = (text(&out.stdout), text(&out.stderr));
    eprintln!("cluster {args:?}: {e}{o}");
    (out.status.code().unwrap_or(-1), o, e)
}

/// Stops the cluster whatever happens to the test.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        cluster(&["down", &self.0]);
    }
}

#[test]
#[ignore = "needs garage (cargo install garage --version 2.5.0 --locked)"]
fn garage_cluster_survives_one_node_down_and_heals() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("garage").to_str().unwrap().to_string();
    let (code, env, _) = cluster(&["up", "--dir", &dir, "--ttl", "170"]);
    assert_eq!(code, 0);
    let _down = Down(dir.clone());
    for var in [
        "AWS_ENDPOINT_URL='http://127.0.0.1:",
        "AWS_ACCESS_KEY_ID='GK",
        "AWS_SECRET_ACCESS_KEY='",
        "AWS_REGION='garage'",
        "AWS_ALLOW_HTTP='true'",
        "S3_BUCKET='hashpress'",
    ] {
        assert!(env.contains(&format!("export {var}")), "no {var}: {env}");
    }
    // Each verify writes a new object through the first running node and reads it back through
    // every running node, comparing SHA-256 digests.
    let verify = || cluster(&["verify", &dir]);
    let (code, out, _) = verify();
    assert_eq!(
        (code, out.matches("sha256 matches").count()),
        (0, 3),
        "{out}"
    );

    // Replication factor 3, quorum 2: one node down changes nothing for clients.
    assert_eq!(cluster(&["kill", &dir, "3"]).0, 0);
    let (code, out, _) = verify();
    assert_eq!(
        (code, out.matches("sha256 matches").count()),
        (0, 2),
        "{out}"
    );

    // Two down: no quorum; the write fails with the store's answer, in bounded time.
    assert_eq!(cluster(&["kill", &dir, "2"]).0, 0);
    let started = Instant::now();
    let (code, _, err) = verify();
    assert_ne!(code, 0, "a write without quorum must fail");
    assert!(err.contains("quorum"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60));

    // Back with the same identities and data: healthy again.
    assert_eq!(cluster(&["restart", &dir, "2"]).0, 0);
    assert_eq!(cluster(&["restart", &dir, "3"]).0, 0);
    let (code, out, _) = verify();
    assert_eq!(
        (code, out.matches("sha256 matches").count()),
        (0, 3),
        "{out}"
    );
}
