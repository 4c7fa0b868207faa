//! Streams stay flat in memory, concurrent work is correct, and abandoned
//! work stops. (Overload: shedding.rs.)

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::helpers::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn one_gib_upload_keeps_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    // Warm up so allocator pools exist before the baseline.
    srv.post("/hash", &pseudo_random(1 << 20, 1));
    let idle = srv.rss_kib();
    let block = pseudo_random(1 << 20, 2);
    let total: u64 = 1 << 30;
    let mut expected = Sha256::new();
    let mut s = connect(srv.addr);
    write!(
        s,
        "POST /hash HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {total}\r\n\r\n"
    )
    .unwrap();
    let mut peak = idle;
    let mut sent = 0u64;
    while sent < total {
        s.write_all(&block).unwrap();
        expected.update(&block);
        sent += block.len() as u64;
        if sent.is_multiple_of(64 << 20) {
            peak = peak.max(srv.rss_kib());
        }
    }
    let r = read_response(&mut s);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["bytes"].as_u64(), Some(total));
    assert_eq!(
        r.json()["hash"].as_str().unwrap(),
        hex(&expected.finalize())
    );
    let growth = peak.saturating_sub(idle);
    eprintln!("1 GiB upload: idle {idle} KiB, peak {peak} KiB, growth {growth} KiB");
    assert!(growth < 16 * 1024, "resident memory grew by {growth} KiB");
}

#[test]
fn concurrent_uploads_and_files_are_all_correct() {
    let dir = tempfile::tempdir().unwrap();
    // A queue deep enough for all 16 at once: this test is about correctness
    // under concurrency, not shedding (which has its own test).
    let srv = Server::start(dir.path(), &["--pool-queue", "64"]);
    let addr = srv.addr;
    let mut handles = Vec::new();
    for i in 0..16u64 {
        let path = dir.path().join(format!("f{i}"));
        handles.push(std::thread::spawn(move || {
            let body = pseudo_random(200_000 + i as usize * 1000, i);
            std::fs::write(&path, &body).unwrap();
            let want = hex(&Sha256::digest(&body));
            let r = request(addr, "POST", "/hash", &[], &body);
            assert_eq!(r.json()["hash"].as_str().unwrap(), want);
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let r = request(addr, "GET", &format!("/hash-file/{name}"), &[], b"");
            assert_eq!(r.json()["hash"].as_str().unwrap(), want);
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn abandoned_download_stops_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let size = 256u64 << 20;
    {
        let mut f = std::fs::File::create(dir.path().join("huge.txt")).unwrap();
        let block = text_like(1 << 20);
        for _ in 0..(size >> 20) {
            f.write_all(&block).unwrap();
        }
    }
    let srv = Server::start(dir.path(), &[]);
    let mut s = connect(srv.addr);
    s.write_all(b"GET /compress/huge.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 4096];
    s.read_exact(&mut first).unwrap();
    drop(s);
    // Let any job in flight finish, then check the counter has stopped well short.
    std::thread::sleep(Duration::from_millis(500));
    let series = r#"hashpress_processed_bytes_total{op="compress",direction="in"}"#;
    let a = srv.metric(series).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let b = srv.metric(series).unwrap();
    assert_eq!(a, b, "compression went on after the client left");
    assert!(
        a < (size / 2) as f64,
        "read {a} of {size} bytes for a client that left"
    );
}

#[test]
fn slow_reader_gets_backpressure_not_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let size = 256usize << 20;
    {
        // Incompressible, so output is as large as input.
        let mut f = std::fs::File::create(dir.path().join("rand.bin")).unwrap();
        for i in 0..(size >> 20) {
            f.write_all(&pseudo_random(1 << 20, i as u64)).unwrap();
        }
    }
    let srv = Server::start(dir.path(), &[]);
    let idle = srv.rss_kib();
    let mut s = connect(srv.addr);
    s.write_all(b"GET /compress/rand.bin?level=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    // Read nothing for a while: the server must stall, not buffer the file.
    std::thread::sleep(Duration::from_secs(2));
    let stalled = srv.rss_kib();
    let series = r#"hashpress_processed_bytes_total{op="compress",direction="in"}"#;
    let done_while_stalled = srv.metric(series).unwrap();
    assert!(
        done_while_stalled < (size / 4) as f64,
        "compressed {done_while_stalled} bytes nobody read"
    );
    assert!(
        stalled.saturating_sub(idle) < 32 * 1024,
        "memory grew from {idle} to {stalled} KiB"
    );
    // Then read it all: complete and correct length.
    let start = Instant::now();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    assert!(total > size, "got {total} bytes in {:?}", start.elapsed());
}

/// Bodies past 1 MiB are hashed on the CPU pool in batches, one batch hashing
/// while the next is read. Sizes on both sides of the switch and of a batch,
/// sent chunked in odd-sized chunks, eight at once (so batch sizes adapt to
/// the number of bodies), on a single I/O thread: every digest matches
/// Python's, and the byte count is exact.
#[test]
fn long_bodies_hashed_on_the_pool_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &["--io-threads", "1"]);
    let mib = 1usize << 20;
    let sizes = [
        mib - 1,
        mib,
        mib + 1,
        mib + (256 << 10) + 3,
        2 * mib,
        3 * mib + 7777,
        9 * mib + 5,
        17 * mib,
    ];
    let algs = "sha256,sha512,blake3,crc32c";
    let mut handles = Vec::new();
    for (i, size) in sizes.into_iter().enumerate() {
        let path = dir.path().join(format!("b{i}"));
        let addr = srv.addr;
        handles.push(std::thread::spawn(move || {
            let body = pseudo_random(size, 100 + i as u64);
            std::fs::write(&path, &body).unwrap();
            let want = oracle(&path, algs);
            let mut s = connect(addr);
            write!(
                s,
                "POST /hash?alg={algs} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
                 Transfer-Encoding: chunked\r\n\r\n"
            )
            .unwrap();
            let mut at = 0;
            let mut k = 0;
            while at < body.len() {
                let n = (1000 + (k * 7919) % 70_000).min(body.len() - at);
                write!(s, "{n:x}\r\n").unwrap();
                s.write_all(&body[at..at + n]).unwrap();
                s.write_all(b"\r\n").unwrap();
                at += n;
                k += 1;
            }
            s.write_all(b"0\r\n\r\n").unwrap();
            let r = read_response(&mut s);
            assert_digests(&r, &want, size);
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
}

/// A long body whose digests all run at memory speed (CRCs, XXH3) is hashed
/// as it arrives, without a pool job: the hand-off would cost more than
/// the hashing. The digests match independent implementations; adding
/// SHA-256 sends the same body to the pool.
#[test]
fn long_bodies_with_memory_speed_digests_skip_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let jobs = || {
        srv.metric("hashpress_pool_queue_wait_seconds_count")
            .unwrap()
    };
    let body = pseudo_random((9 << 20) + 333, 77);
    let path = dir.path().join("body.bin");
    std::fs::write(&path, &body).unwrap();
    let cheap = "crc32c,crc32,crc64nvme,xxh3,xxh128";
    let want = oracle(&path, cheap);
    let before = jobs();
    let r = srv.post(&format!("/hash?alg={cheap}"), &body);
    assert_digests(&r, &want, body.len());
    assert_eq!(jobs(), before, "a memory-speed digest made a pool job");
    let r = srv.post(&format!("/hash?alg={cheap},sha256"), &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(jobs() > before, "SHA-256 of 9 MiB did not use the pool");
}

/// Several dear digests of a long body are computed in two sets of about
/// equal cost, each batch hashed by two pool jobs at once while the pool has
/// no backlog: about twice the jobs of one digest alone over the same body,
/// and the digests of independent implementations.
#[test]
fn several_dear_digests_of_a_long_body_share_two_pool_threads() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &["--workers", "0", "--pool-threads", "2"]);
    let jobs = || {
        srv.metric("hashpress_pool_queue_wait_seconds_count")
            .unwrap()
    };
    let body = pseudo_random((12 << 20) + 5, 78);
    let path = dir.path().join("body.bin");
    std::fs::write(&path, &body).unwrap();
    let four = "sha256,sha512,blake3,md5";
    let want = oracle(&path, four);
    let start = jobs();
    let r = srv.post("/hash?alg=sha512", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let alone = jobs() - start;
    let r = srv.post(&format!("/hash?alg={four}"), &body);
    assert_digests(&r, &want, body.len());
    let split = jobs() - start - alone;
    // 11 MiB past the inline first MiB, in batches of at most 2 MiB; the
    // socket's reads cut them, so their count may differ by one.
    assert!(alone >= 5.0, "{alone} jobs for SHA-512 alone");
    assert!(
        split >= 2.0 * (alone - 1.0),
        "{split} jobs for four digests, {alone} for one"
    );
    // The first digest asked for stays the answer's `hash`, whichever set
    // computed it.
    let r = srv.post("/hash?alg=md5,sha512", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["algorithm"], "md5");
    assert_eq!(r.json()["hash"], want["md5"].as_str());
}
