//! Upgrades the way operators deploy them, with real processes under load:
//! a symlink swap and a rename-aside, each followed by SIGHUP; the release
//! each process reports; and replacing the supervisor itself without
//! refusing a connection, through a socket passed the systemd way.
//!
//! A "new release" is a second copy of the test binary. Which file a worker
//! runs is read from the kernel (`/proc/PID/exe`, compared by device and
//! inode), not from anything the server says about itself: the copies are
//! byte-identical, so only the file tells them apart, and the shipped binary
//! needs no test-only switch to pretend to be another version.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{Load, activated};
use crate::helpers::{BIN, Server, try_get};

/// Copies the binary to `to` with `cp`: the copy is written by another
/// process, so no descriptor open for writing on it can leak from ours into a
/// child forked meanwhile by a parallel test (which would make exec fail
/// with ETXTBSY).
fn release(to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let ok = Command::new("cp").arg(BIN).arg(to).status().unwrap();
    assert!(ok.success(), "cp {BIN} {}", to.display());
}

/// (device, inode): which file a path names, or a process runs.
fn file_id(path: impl AsRef<Path>) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap();
    (m.dev(), m.ino())
}

/// Starts a supervisor by running `exe` (so argv[0] is that path).
fn start_as(exe: &Path, root: &Path) -> Server {
    let mut cmd = Command::new(exe);
    cmd.args([
        "serve",
        "--workers",
        "2",
        "--grace",
        "10s",
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--root",
    ])
    .arg(root);
    crate::helpers::clean_env(&mut cmd);
    Server::spawn_cluster(cmd)
}

/// The files the supervisor's live workers run.
fn worker_files(c: &Server) -> Vec<(u64, u64)> {
    c.children()
        .into_iter()
        .map(|pid| file_id(format!("/proc/{pid}/exe")))
        .collect()
}

/// SIGHUP under load after `deploy` has put the new release in place; asserts
/// that every new worker runs `new_file`, that none failed a request, and
/// returns the reload's log record.
fn reload_under_load(c: &Server, deploy: impl FnOnce(), new_file: &Path) -> Value {
    let old: HashSet<u32> = c.children().into_iter().map(|p| p as u32).collect();
    let load = Load::start(c.addr, 16);
    thread::sleep(Duration::from_millis(300));
    deploy();
    c.signal(libc::SIGHUP);
    c.wait_phase("ready", 1, Duration::from_secs(20));
    c.wait_gone(&old, Duration::from_secs(15));
    thread::sleep(Duration::from_millis(300));
    let (ok, non_2xx, errors) = load.finish();
    eprintln!("upgrade under load: ok={ok} non2xx={non_2xx} errors={errors}");
    assert!(ok > 50, "load ran ({ok})");
    assert_eq!(
        (non_2xx, errors),
        (0, 0),
        "requests failed over the upgrade"
    );
    let want = file_id(new_file);
    let files = worker_files(c);
    assert_eq!(files.len(), 2);
    assert!(
        files.iter().all(|f| *f == want),
        "new workers run {files:?}, the new release is {want:?}"
    );
    // Each new worker said which release it runs, and the reload line names
    // the path and that release.
    let version = format!("{} (commit {})", env!("CARGO_PKG_VERSION"), built_commit());
    for pid in c.children() {
        let v = c.wait_log(Duration::from_secs(5), |v| {
            v["message"] == "worker ready" && v["pid"].as_u64() == Some(pid as u64)
        });
        assert_eq!(v["version"], version.as_str(), "{v}");
    }
    c.wait_log(Duration::from_secs(5), |v| {
        v["message"] == "reload: new workers ready; draining the old ones"
    })
}

/// The commit `--version` reports (what build.rs recorded).
fn built_commit() -> String {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim()
        .rsplit_once("(commit ")
        .and_then(|(_, c)| c.strip_suffix(')'))
        .unwrap_or_else(|| panic!("odd --version: {text:?}"))
        .to_string()
}

#[test]
fn a_symlink_swap_upgrades_on_sighup_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path();
    let (v1, v2) = (
        app.join("releases/v1/hashpress"),
        app.join("releases/v2/hashpress"),
    );
    release(&v1);
    release(&v2);
    std::os::unix::fs::symlink("releases/v1", app.join("current")).unwrap();
    let invoked = app.join("current/hashpress");
    let root = app.join("data");
    std::fs::create_dir(&root).unwrap();
    let c = start_as(&invoked, &root);
    assert_eq!(worker_files(&c), [file_id(&v1); 2], "first workers run v1");
    let start = c.wait_log(Duration::from_secs(1), |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("supervisor listening"))
    });
    assert_eq!(start["reload_exe"], invoked.to_str().unwrap(), "{start}");
    let deploy = || {
        // The atomic swap of Capistrano and friends: a new link, renamed over.
        std::os::unix::fs::symlink("releases/v2", app.join("current.new")).unwrap();
        std::fs::rename(app.join("current.new"), app.join("current")).unwrap();
    };
    let v = reload_under_load(&c, deploy, &v2);
    assert_eq!(v["exe"], invoked.to_str().unwrap(), "{v}");
}

#[test]
fn a_rename_aside_upgrades_on_sighup_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin/hashpress");
    release(&bin);
    let first = file_id(&bin);
    let c = start_as(&bin, dir.path());
    assert_eq!(worker_files(&c), [first; 2]);
    let deploy = || {
        // `mv hashpress hashpress.old && mv new hashpress`: the running file
        // is not deleted, only renamed.
        std::fs::rename(&bin, dir.path().join("bin/hashpress.old")).unwrap();
        let new = dir.path().join("bin/hashpress.new");
        release(&new);
        std::fs::rename(&new, &bin).unwrap();
    };
    reload_under_load(&c, deploy, &bin);
    assert_ne!(file_id(&bin), first);
}

#[test]
fn reload_exe_overrides_the_invoked_path() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("elsewhere/hashpress");
    release(&other);
    // From the config file, like every flag; relative: made absolute
    // against the start directory.
    let config = dir.path().join("hashpress.toml");
    std::fs::write(&config, "reload-exe = \"elsewhere/hashpress\"\n").unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--workers", "1", "--listen", "127.0.0.1:0"])
        .args(["--log-format", "json", "--config"])
        .arg(&config)
        .arg("--root")
        .arg(dir.path())
        .current_dir(dir.path());
    crate::helpers::clean_env(&mut cmd);
    let c = Server::spawn_cluster(cmd);
    assert_eq!(worker_files(&c), [file_id(BIN)]);
    c.signal(libc::SIGHUP);
    c.wait_phase("ready", 1, Duration::from_secs(20));
    let end = Instant::now() + Duration::from_secs(15);
    while c.children().len() != 1 {
        assert!(Instant::now() < end, "old worker did not exit");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(worker_files(&c), [file_id(&other)]);
}

#[test]
fn version_and_build_info_name_the_release_of_every_process() {
    // --version: the crate version and the commit of this checkout.
    let commit = built_commit();
    let head = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short=12",
            "HEAD",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_string());
    // Outside a git checkout: the commit `cargo package` recorded, or "unknown".
    let packaged = || {
        let info =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.cargo_vcs_info.json"))
                .ok()?;
        let v: Value = serde_json::from_str(&info).ok()?;
        Some(v["git"]["sha1"].as_str()?.get(..12)?.to_string())
    };
    let want = head.or_else(packaged).unwrap_or_else(|| "unknown".into());
    assert_eq!(commit, want);

    let dir = tempfile::tempdir().unwrap();
    let c = start_as(Path::new(BIN), dir.path());
    let text = get_text(&c, "/metrics");
    let labels = format!(
        "version=\"{}\",commit=\"{commit}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    // The supervisor (unlabelled, like the other per-process series) and
    // each worker, by id and pid.
    assert!(
        text.contains(&format!("\nhashpress_build_info{{{labels}\n")),
        "{text}"
    );
    let mut pids = c.children();
    pids.sort();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(
            text.lines()
                .any(|l| l.starts_with("hashpress_build_info{worker=\"")
                    && l.contains(&format!("pid=\"{pid}\""))
                    && l.ends_with(&labels)),
            "no build_info line for worker pid {pid}:\n{text}"
        );
    }
    let v: Value = serde_json::from_str(&get_text(&c, "/metrics.json")).unwrap();
    let procs = v["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 3);
    for p in procs {
        assert_eq!(p["version"], env!("CARGO_PKG_VERSION"), "{p}");
        assert_eq!(p["commit"], commit.as_str(), "{p}");
    }
}

fn get_text(c: &Server, path: &str) -> String {
    let r = crate::helpers::request(c.addr, "GET", path, &[], b"");
    assert_eq!(r.status, 200);
    r.text()
}

/// `systemctl restart` with hashpress.socket: systemd keeps the listening
/// socket while one supervisor stops and the next starts, so clients wait in
/// the backlog instead of being refused. Same here, with the socket passed
/// through `LISTEN_FDS` and held by the test as systemd holds it.
#[test]
fn a_supervisor_hands_over_a_passed_socket_without_refusing_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut a = Server::spawn_cluster(activated(&listener, dir.path()));
    assert_eq!(a.addr, addr);
    let a_workers: HashSet<u32> = a.children().into_iter().map(|p| p as u32).collect();
    let load = Load::start(addr, 16);
    thread::sleep(Duration::from_millis(500));
    let before = load.tally.max_latency_us.swap(0, Ordering::Relaxed);
    // Stop the old supervisor and start the new one at once, as a restart does.
    a.signal(libc::SIGTERM);
    let b = Server::spawn_cluster(activated(&listener, dir.path()));
    let status = a
        .wait_exit(Duration::from_secs(15))
        .expect("A drained and exited");
    assert_eq!(status.code(), Some(0));
    thread::sleep(Duration::from_millis(500));
    let tally = load.tally.clone();
    let (ok, non_2xx, errors) = load.finish();
    let spike = Duration::from_micros(tally.max_latency_us.load(Ordering::Relaxed));
    eprintln!(
        "supervisor hand-over under load: ok={ok} non2xx={non_2xx} errors={errors}; \
         max latency before {:?}, during/after the hand-over {spike:?}",
        Duration::from_micros(before)
    );
    assert!(ok > 50, "load ran ({ok})");
    assert_eq!(
        (non_2xx, errors),
        (0, 0),
        "refused, reset or failed over the hand-over"
    );
    assert!(spike < Duration::from_secs(10), "clients waited {spike:?}");
    let b_workers: HashSet<u32> = b.children().into_iter().map(|p| p as u32).collect();
    assert_eq!(b_workers.len(), 2);
    assert!(b_workers.is_disjoint(&a_workers));
    for _ in 0..4 {
        let pid = try_get(addr, "/healthz").unwrap().worker_pid().unwrap();
        assert!(
            b_workers.contains(&pid),
            "answered by {pid}, not B's workers"
        );
    }
    drop(listener);
}
