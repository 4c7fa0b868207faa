//! Load shedding by expected wait: cheap work queues instead of being
//! refused, expensive work is refused at once with an honest Retry-After,
//! the queue-place bound still holds memory, and the metrics say why.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::helpers::*;

/// These tests judge the pool by its timing, each on one pool thread: run
/// one at a time, so none of them measures the others' CPU.
fn alone() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|p| p.into_inner())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `f(i)` on `n` threads that start together; returns the results in order.
fn burst<T: Send + 'static>(n: usize, f: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(n));
    let f = Arc::new(f);
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, f) = (barrier.clone(), f.clone());
            std::thread::spawn(move || {
                barrier.wait();
                f(i)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// The defect this replaces: 256 clients hashing a 64 KiB file at once got
/// half 503s from a queue of 32 jobs per thread, though the whole queue held
/// a few milliseconds of work. Now every one of them is served. (A file
/// that small and hot is hashed without the pool at all, see below: this
/// one is just over that limit, so every request queues.)
#[test]
fn cheap_requests_queue_instead_of_being_shed() {
    let _one = alone();
    let dir = tempfile::tempdir().unwrap();
    let body = pseudo_random(320 << 10, 7);
    std::fs::write(dir.path().join("f64k.bin"), &body).unwrap();
    let want = hex(&Sha256::digest(&body));
    let srv = Server::start(dir.path(), &["--pool-threads", "1"]);
    let addr = srv.addr;
    let results = burst(256, move |_| {
        (0..4)
            .map(|_| request(addr, "GET", "/hash-file/f64k.bin", &[], b""))
            .collect::<Vec<_>>()
    });
    for r in results.iter().flatten() {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["hash"].as_str(), Some(want.as_str()));
    }
    assert_eq!(
        srv.metric("hashpress_pool_rejected_total{reason=\"wait\"}"),
        Some(0.0)
    );
    assert_eq!(
        srv.metric("hashpress_pool_rejected_total{reason=\"memory\"}"),
        Some(0.0)
    );
    // Every one of those jobs waited in the queue and was timed.
    let waits = srv
        .metric("hashpress_pool_queue_wait_seconds_count")
        .unwrap();
    assert!(waits >= 1024.0, "{waits} queue waits recorded");
    let j = srv.get("/metrics.json").json();
    assert_eq!(j["pool"]["queue_waits"].as_f64(), Some(waits));
    assert_eq!(j["pool"]["rejected"], 0);
}

/// Real overload on one pool thread: more gzip work than fits in
/// --max-queue-wait. The requests that would wait too long are refused
/// quickly, with a Retry-After that reflects the backlog, counted under
/// reason "wait"; the admitted ones all finish with the right output.
#[test]
fn expensive_requests_are_shed_by_expected_wait() {
    let _one = alone();
    let dir = tempfile::tempdir().unwrap();
    let text = text_like(8 << 20);
    std::fs::write(dir.path().join("text"), &text).unwrap();
    let srv = Server::start(
        dir.path(),
        &["--pool-threads", "1", "--max-queue-wait", "300ms"],
    );
    // One request alone first, so the pool has measured what a gzip job costs.
    let warm = srv.get("/compress/text?parallel=false");
    assert_eq!(warm.status, 200);
    assert_eq!(gunzip(&warm.body), text);
    let addr = srv.addr;
    let results = burst(32, move |_| {
        let t = Instant::now();
        let r = request(addr, "GET", "/compress/text?parallel=false", &[], b"");
        (r, t.elapsed())
    });
    let mut shed = 0;
    let mut served = 0;
    for (r, took) in &results {
        match r.status {
            200 => {
                served += 1;
                assert_eq!(gunzip(&r.body).len(), text.len());
            }
            503 => {
                shed += 1;
                assert_eq!(r.error_code(), "overloaded");
                let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
                assert!((1..=60).contains(&retry), "Retry-After {retry}");
                // Refused at admission, or at the latest at the deadline
                // (300 ms); generous for a loaded test machine.
                assert!(*took < Duration::from_secs(3), "503 after {took:?}");
            }
            other => panic!("status {other}: {}", r.text()),
        }
    }
    eprintln!("32 concurrent 8 MiB gzips on one thread: {served} served, {shed} shed");
    assert!(shed > 0, "nothing was shed");
    assert!(served > 0, "nothing was served");
    let by_wait = srv
        .metric("hashpress_pool_rejected_total{reason=\"wait\"}")
        .unwrap();
    assert_eq!(by_wait, shed as f64);
    // Normal right after.
    let r = srv.get("/compress/text?parallel=false");
    assert_eq!(r.status, 200);
    assert_eq!(gunzip(&r.body), text);
}

/// --pool-queue still bounds the jobs (and so the memory) queued: with a
/// tiny queue and no wait bound to speak of, a burst is shed for reason
/// "memory", resident memory stays bounded, and the server is normal after.
#[test]
fn the_queue_place_bound_still_holds_memory() {
    let _one = alone();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.bin"), hard_to_compress(8 << 20, 42)).unwrap();
    let srv = Server::start(
        dir.path(),
        &[
            "--pool-threads",
            "1",
            "--pool-queue",
            "4",
            "--max-queue-wait",
            "10m",
        ],
    );
    let base_rss = srv.rss_kib();
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, pid) = (peak.clone(), done.clone(), srv.pid());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid) as usize, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let addr = srv.addr;
    let results = burst(64, move |i| {
        let path = if i % 2 == 0 {
            "/hash-file/big.bin?alg=sha256,sha512,blake3"
        } else {
            "/compress/big.bin?level=1"
        };
        request(addr, "GET", path, &[], b"")
    });
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let ok = results.iter().filter(|r| r.status == 200).count();
    let shed = results.iter().filter(|r| r.status == 503).count();
    for r in &results {
        match r.status {
            200 => {}
            503 => {
                assert_eq!(r.error_code(), "overloaded");
                assert!(
                    r.json()["message"]
                        .as_str()
                        .unwrap()
                        .contains("--pool-queue")
                );
                assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
            }
            other => panic!("status {other}: {}", r.text()),
        }
    }
    assert_eq!(ok + shed, 64);
    assert!(shed > 0, "nothing was shed");
    assert!(ok >= 2, "only {ok} served");
    let peak = peak.load(Ordering::Relaxed) as u64;
    eprintln!("queue bound: {ok} served, {shed} shed; RSS {base_rss} KiB before, peak {peak} KiB");
    assert!(
        peak < base_rss + 64 * 1024,
        "RSS grew from {base_rss} KiB to {peak} KiB"
    );
    assert_eq!(
        srv.metric("hashpress_pool_rejected_total{reason=\"memory\"}"),
        Some(shed as f64)
    );
    assert_eq!(
        srv.metric("hashpress_pool_rejected_total{reason=\"wait\"}"),
        Some(0.0)
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(srv.get("/hash-file/big.bin").status, 200);
}

/// A small file whose bytes are in the page cache is hashed on the I/O
/// thread, without a pool job, so it never waits behind (or is shed by) a
/// pool busy with big work; a bigger file still goes through the pool. When
/// the small file's bytes have left the cache, the pool reads them: the
/// same answer, by the other path.
#[test]
fn small_hot_files_are_hashed_without_the_pool() {
    let _one = alone();
    let dir = tempfile::tempdir().unwrap();
    let small = pseudo_random(64 << 10, 3);
    std::fs::write(dir.path().join("small.bin"), &small).unwrap();
    std::fs::write(dir.path().join("big.bin"), pseudo_random(4 << 20, 4)).unwrap();
    let want = hex(&Sha256::digest(&small));
    let srv = Server::start(dir.path(), &["--pool-threads", "1"]);
    let waits = || {
        srv.metric("hashpress_pool_queue_wait_seconds_count")
            .unwrap()
    };
    let check = |r: Response| {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["hash"].as_str(), Some(want.as_str()));
    };
    // The first request warms the kernel's lookup caches.
    check(srv.get("/hash-file/small.bin"));
    let before = waits();
    for _ in 0..50 {
        check(srv.get("/hash-file/small.bin"));
    }
    assert_eq!(waits(), before, "a small hot file went through the pool");
    assert_eq!(srv.get("/hash-file/big.bin").status, 200);
    assert!(waits() > before, "a 4 MiB file was hashed without the pool");

    // Out of the page cache (on a disk-backed file system; a tmpfs keeps
    // its pages, and the answer comes from the first path again).
    let f = std::fs::File::open(dir.path().join("small.bin")).unwrap();
    f.sync_all().unwrap();
    // SAFETY: advice on a descriptor we own; no memory involved.
    let rc = unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    assert_eq!(rc, 0);
    check(srv.get("/hash-file/small.bin"));
}

/// The scheduling class and nice value of every pool thread
/// (`hashpress-cpu-N`) of the server's workers, read from /proc.
fn pool_thread_classes(srv: &Server) -> Vec<(u32, i32)> {
    let mut found = Vec::new();
    for pid in srv.children() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let dir = task.path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if !comm.starts_with("hashpress-cpu") {
                continue;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
            // After the command's closing parenthesis: field 3 is the state;
            // nice is field 19 and the policy field 41.
            let f: Vec<&str> = stat
                .rsplit_once(')')
                .unwrap()
                .1
                .split_whitespace()
                .collect();
            found.push((f[41 - 3].parse().unwrap(), f[19 - 3].parse().unwrap()));
        }
    }
    found
}

/// Pool threads are niced below the HTTP threads by default, and put in the
/// SCHED_IDLE class (policy 5) with `--pool-priority idle`.
#[test]
fn pool_priority_sets_the_pool_threads_class() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: reads this process's priority; no memory involved.
    let own_nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    for (args, want_policy) in [(&[][..], 0u32), (&["--pool-priority", "idle"][..], 5)] {
        let srv = Server::start(
            dir.path(),
            &[&["--workers", "1", "--pool-threads", "2"], args].concat(),
        );
        let end = Instant::now() + Duration::from_secs(10);
        let classes = loop {
            let c = pool_thread_classes(&srv);
            if c.len() == 2 || Instant::now() > end {
                break c;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(classes.len(), 2, "pool threads {classes:?} for {args:?}");
        for (policy, nice) in classes {
            assert_eq!(policy, want_policy, "{args:?}");
            if want_policy == 0 {
                assert_eq!(nice, (own_nice + 5).min(19), "{args:?}");
            }
        }
    }
    let bad = std::process::Command::new(BIN)
        .args(["serve", "--pool-priority", "high"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("low") && err.contains("idle"), "{err}");
}
