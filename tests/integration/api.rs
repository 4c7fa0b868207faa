//! Every endpoint and every error code.

use std::io::Write;

use crate::helpers::*;

const ALL: &str =
    "sha256,sha512,sha384,sha3-256,sha1,md5,blake3,crc32c,crc32,crc64nvme,xxh3,xxh128";

#[test]
fn hash_body_matches_independent_digests() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    // Past 1 MiB a body is hashed on the pool in batches: 1 MiB + 7 and
    // 3 MiB + 17 cross that switch and several batches.
    for (i, len) in [
        0usize,
        1,
        5,
        65_536,
        1_000_003,
        (1 << 20) + 7,
        3 * (1 << 20) + 17,
    ]
    .into_iter()
    .enumerate()
    {
        let body = pseudo_random(len, 100 + i as u64);
        let f = dir.path().join(format!("body{i}"));
        std::fs::write(&f, &body).unwrap();
        let want = oracle(&f, ALL);
        let resp = srv.post(&format!("/hash?alg={ALL}"), &body);
        assert_digests(&resp, &want, len);
        assert_eq!(resp.json()["algorithm"], "sha256");
        assert_eq!(
            resp.header("content-type"),
            Some("application/json"),
            "content type"
        );
    }
}

/// BLAKE3 against the BLAKE3 team's official test vectors (the default-length
/// `hash` of each case), as a streamed body and as a file: the 35 lengths
/// cross every boundary of the algorithm (64-byte block, 1 KiB chunk, trees
/// of up to 100 chunks). This is the independent check of BLAKE3 itself;
/// `oracle` can only check how the server streams it.
#[test]
fn blake3_matches_the_official_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let vectors = include_str!("../blake3_vectors.txt");
    let mut cases = 0;
    for line in vectors.lines().filter(|l| !l.starts_with('#')) {
        let (len, want) = line.split_once(' ').unwrap();
        let input: Vec<u8> = (0..len.parse::<usize>().unwrap())
            .map(|i| (i % 251) as u8)
            .collect();
        let r = srv.post("/hash?alg=blake3", &input);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["hash"], want, "body of {len} bytes");
        std::fs::write(dir.path().join("v"), &input).unwrap();
        let r = srv.get("/hash-file/v?alg=blake3");
        assert_eq!(r.json()["hash"], want, "file of {len} bytes");
        cases += 1;
    }
    assert_eq!(cases, 35);
}

#[test]
fn hash_body_default_is_sha256_and_order_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let v = srv.post("/hash", b"hello").json();
    assert_eq!(
        v["hash"],
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    assert_eq!(v["digests"].as_object().unwrap().len(), 1);
    let v = srv.post("/hash?alg=blake3,md5", b"hello").json();
    assert_eq!(v["algorithm"], "blake3");
    assert_eq!(v["hash"], v["digests"]["blake3"]);
    assert_eq!(v["digests"]["md5"], "5d41402abc4b2a76b9719d911017c592");
}

#[test]
fn hash_body_chunked_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let body = pseudo_random(300_001, 7);
    let f = dir.path().join("b");
    std::fs::write(&f, &body).unwrap();
    let want = oracle(&f, "sha256,crc32c");
    let mut s = connect(srv.addr);
    s.write_all(b"POST /hash?alg=sha256,crc32c HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    for piece in body.chunks(7_777) {
        write!(s, "{:x}\r\n", piece.len()).unwrap();
        s.write_all(piece).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    assert_digests(&read_response(&mut s), &want, body.len());
}

/// `?encoding=base64` writes the same big-endian bytes as the hex form, for
/// every algorithm, on both endpoints; a checksum as S3 shows it; unknown
/// encodings are refused.
#[test]
fn base64_encoding_of_every_algorithm() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let body = pseudo_random((1 << 20) + 7, 9);
    let f = dir.path().join("f.bin");
    std::fs::write(&f, &body).unwrap();
    let want = oracle(&f, ALL);
    let hex_bytes = |h: &str| -> Vec<u8> {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    };
    for resp in [
        srv.post(&format!("/hash?alg={ALL}&encoding=base64"), &body),
        srv.get(&format!("/hash-file/f.bin?alg={ALL}&encoding=base64")),
    ] {
        assert_eq!(resp.status, 200, "{}", resp.text());
        let v = resp.json();
        for (alg, hex) in &want {
            let b64 = base64::engine::general_purpose::STANDARD.encode(hex_bytes(hex));
            assert_eq!(v["digests"][alg].as_str(), Some(b64.as_str()), "{alg}");
        }
        assert_eq!(v["hash"], v["digests"]["sha256"]);
    }
    // S3's documented CRC64NVME of "123456789", as x-amz-checksum-crc64nvme shows it.
    let r = srv.post("/hash?alg=crc64nvme&encoding=base64", b"123456789");
    assert_eq!(r.json()["hash"], "rosUhgp5mIg=");
    let r = srv.post("/hash?encoding=b64", b"x");
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "bad_query");
    assert!(r.text().contains("hex, base64"), "{}", r.text());
}

#[test]
fn hash_file_matches_independent_digests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let srv = Server::start(dir.path(), &[]);
    for (name, len) in [
        ("empty", 0usize),
        ("sub/one", 1),
        ("sub/big.bin", 3 * (1 << 20) + 17),
    ] {
        let f = dir.path().join(name);
        std::fs::write(&f, pseudo_random(len, len as u64)).unwrap();
        let want = oracle(&f, ALL);
        let resp = srv.get(&format!("/hash-file/{name}?alg={ALL}"));
        assert_digests(&resp, &want, len);
        assert_eq!(resp.json()["path"], name);
    }
    // Percent-encoded names resolve to the real file.
    std::fs::write(dir.path().join("a b"), b"x").unwrap();
    assert_eq!(srv.get("/hash-file/a%20b").status, 200);
}

#[test]
fn compress_file_streams_valid_gzip_at_each_level() {
    let dir = tempfile::tempdir().unwrap();
    let data = text_like(5 * (1 << 20) + 3);
    std::fs::write(dir.path().join("t.txt"), &data).unwrap();
    let srv = Server::start(dir.path(), &[]);
    let mut sizes = Vec::new();
    for level in ["1", "6", "9"] {
        let resp = srv.get(&format!("/compress/t.txt?level={level}"));
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-type"), Some("application/gzip"));
        assert_eq!(gunzip(&resp.body), data, "level {level}");
        sizes.push(resp.body.len());
    }
    assert!(
        sizes[0] > sizes[2],
        "level 9 smaller than level 1: {sizes:?}"
    );
    let default = srv.get("/compress/t.txt");
    assert_eq!(default.body.len(), sizes[1], "default level is 6");
}

#[test]
fn compress_body_streams_back() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let data = text_like(8 * (1 << 20));
    // Write and read at once, as curl does: the answer streams while the body arrives.
    let mut s = connect(srv.addr);
    let mut reader = s.try_clone().unwrap();
    let head = format!(
        "POST /compress?level=6 HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    let to_send = data.clone();
    let writer = std::thread::spawn(move || {
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&to_send).unwrap();
    });
    let resp = read_response(&mut reader);
    writer.join().unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/gzip"));
    assert!(resp.body.len() < data.len() / 3);
    assert_eq!(gunzip(&resp.body), data);
    // Empty body: still a valid, empty gzip member.
    assert_eq!(gunzip(&srv.post("/compress", b"").body), b"");
}

#[test]
fn compress_to_file_is_refused_without_allow_write() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"data").unwrap();
    let srv = Server::start(dir.path(), &[]);
    let resp = srv.post("/compress/f", b"");
    assert_eq!(resp.status, 403);
    assert_eq!(resp.error_code(), "writes_disabled");
    assert!(!dir.path().join("f.gz").exists());
}

#[test]
fn compress_to_file_writes_atomically() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    let data = text_like(3 * (1 << 20) + 5);
    std::fs::write(dir.path().join("d/f.txt"), &data).unwrap();
    let srv = Server::start(dir.path(), &["--allow-write"]);
    let resp = srv.post("/compress/d/f.txt?level=9", b"");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["output"], "d/f.txt.gz");
    assert_eq!(v["bytes_in"].as_u64(), Some(data.len() as u64));
    let written = std::fs::read(dir.path().join("d/f.txt.gz")).unwrap();
    assert_eq!(v["bytes_out"].as_u64(), Some(written.len() as u64));
    assert_eq!(gunzip(&written), data);
    let names: Vec<_> = std::fs::read_dir(dir.path().join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "no temporary left behind: {names:?}");
    // Source untouched.
    assert_eq!(std::fs::read(dir.path().join("d/f.txt")).unwrap(), data);
    // Missing source: 404 and nothing written.
    let resp = srv.post("/compress/d/nope", b"");
    assert_eq!(resp.status, 404);
    assert!(!dir.path().join("d/nope.gz").exists());
}

#[test]
fn error_codes_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("adir")).unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let srv = Server::start(dir.path(), &["--max-body", "1000"]);

    let r = srv.post("/hash?alg=sha3", b"x");
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_query"));
    assert!(
        r.text().contains(
            "sha256, sha512, sha384, sha3-256, sha1, md5, blake3, crc32c, crc32, crc64nvme, xxh3, xxh128"
        )
    );

    let r = srv.post("/hash?alg=", b"x");
    assert_eq!(r.status, 400);

    let r = srv.get("/compress/f?level=10");
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_query"));
    assert!(r.text().contains("1 to 9"));

    let r = srv.post("/hash?algo=md5", b"x");
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_query"));
    assert!(r.text().contains("valid parameters: alg"));

    let r = srv.get("/hash-file/missing");
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));

    let r = srv.get("/hash-file/adir");
    assert_eq!((r.status, r.error_code().as_str()), (400, "not_a_file"));

    let r = srv.get("/hash-file/");
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_path"));

    let r = srv.get("/hash");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (405, "method_not_allowed")
    );
    assert_eq!(r.header("allow"), Some("POST"));

    let r = request(srv.addr, "DELETE", "/compress/f", &[], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, POST"));
    r.error_code();

    let r = srv.get("/nowhere");
    assert_eq!((r.status, r.error_code().as_str()), (404, "no_route"));

    let r = srv.post("/hash", &vec![0u8; 1001]);
    assert_eq!((r.status, r.error_code().as_str()), (413, "body_too_large"));
    assert_eq!(srv.post("/hash", &vec![0u8; 1000]).status, 200);

    // A chunked body over the limit is cut off at the limit.
    let mut s = connect(srv.addr);
    s.write_all(b"POST /hash HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    for _ in 0..3 {
        let _ = s.write_all(b"200\r\n");
        let _ = s.write_all(&[b'a'; 512]);
        let _ = s.write_all(b"\r\n");
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let r = read_response(&mut s);
    assert_eq!((r.status, r.error_code().as_str()), (413, "body_too_large"));

    // Malformed chunked encoding: 400, and the server keeps serving.
    let mut s = connect(srv.addr);
    s.write_all(b"POST /hash HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s);
    assert!(r.status == 400 || r.body.is_empty(), "{r:?}");
    assert_eq!(srv.get("/healthz").status, 200);
}

#[test]
fn oversized_content_length_is_refused_before_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &["--max-body", "1MiB"]);
    let mut s = connect(srv.addr);
    // Declare 10 GiB and send nothing: the answer must come at once.
    s.write_all(b"POST /hash HTTP/1.1\r\nHost: t\r\nContent-Length: 10737418240\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let r = read_response(&mut s);
    assert_eq!(r.status, 413);
}

#[test]
fn health_ready_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    assert_eq!(srv.get("/healthz").json()["status"], "ok");
    assert_eq!(srv.get("/readyz").json()["status"], "ready");
    // One process, no supervisor: no phase to publish.
    let workers = srv.get("/metrics.json").json()["workers"].clone();
    assert!(workers["phase"].is_null(), "{workers}");
    assert!(
        !srv.get("/metrics")
            .text()
            .contains("hashpress_supervisor_phase")
    );
    for _ in 0..7 {
        assert_eq!(srv.post("/hash", b"abc").status, 200);
    }
    srv.post("/hash?alg=nope", b"abc");
    let m = srv.get("/metrics");
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    assert_eq!(
        srv.metric(r#"hashpress_http_requests_total{route="/hash",method="POST",status="200"}"#),
        Some(7.0)
    );
    assert_eq!(
        srv.metric(r#"hashpress_http_requests_total{route="/hash",method="POST",status="400"}"#),
        Some(1.0)
    );
    assert_eq!(
        srv.metric(r#"hashpress_http_request_duration_seconds_count{route="/hash"}"#),
        Some(8.0)
    );
    assert_eq!(
        srv.metric(r#"hashpress_processed_bytes_total{op="hash",direction="in"}"#),
        Some(21.0)
    );
}

/// `GET /` is for a person with a browser: an HTML page linking the
/// dashboard, the OpenAPI description, the metrics and the README's API
/// section (embedded, escaped), every link of which answers 200; the same
/// links as JSON on `Accept: application/json`; other methods 405.
#[test]
fn index_page_links_everything_useful() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let r = srv.get("/");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let page = r.text();
    for href in ["/dashboard", "/openapi.json", "/metrics", "#api"] {
        assert!(
            page.contains(&format!("href=\"{href}\"")),
            "no link to {href}: {page}"
        );
    }
    assert!(page.contains("<section id=\"api\">"), "{page}");
    assert!(page.contains("curl --data-binary @big.iso"), "{page}");
    // The README's `{"error": "<code>", ...}`, as text, not as a tag.
    assert!(page.contains("\"&lt;code&gt;\""), "{page}");
    let mut followed = Vec::new();
    for piece in page.split("href=\"/").skip(1) {
        let path = format!("/{}", &piece[..piece.find('"').unwrap()]);
        assert_eq!(srv.get(&path).status, 200, "link {path}");
        followed.push(path);
    }
    assert!(followed.len() >= 6, "{followed:?}");

    let r = request(srv.addr, "GET", "/", &[("Accept", "application/json")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["service"], "hashpress");
    assert_eq!(v["links"]["dashboard"], "/dashboard");
    assert_eq!(v["links"]["openapi.json"], "/openapi.json");
    assert_eq!(v["links"]["metrics"], "/metrics");
    assert_eq!(v["links"]["api"], "/#api");
    for (name, link) in v["links"].as_object().unwrap() {
        let path = link.as_str().unwrap().trim_end_matches("#api");
        assert_eq!(srv.get(path).status, 200, "{name}: {path}");
    }
    let routes = v["routes"].as_array().unwrap();
    assert!(routes.iter().any(|r| r == "GET /"), "{v}");
    assert!(routes.iter().any(|r| r == "POST /hash"), "{v}");

    let r = srv.post("/", b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.error_code(), "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    assert_eq!(
        srv.metric(r#"hashpress_http_requests_total{route="/",method="GET",status="200"}"#),
        Some(3.0),
        "the page, its JSON, and the JSON's own \"/#api\" link"
    );
}

#[test]
fn parallel_gzip_is_one_valid_member_close_to_serial_size() {
    let dir = tempfile::tempdir().unwrap();
    let data = text_like(9 * (1 << 20) + 12_345);
    std::fs::write(dir.path().join("t.txt"), &data).unwrap();
    std::fs::write(dir.path().join("small"), b"tiny").unwrap();
    let srv = Server::start(dir.path(), &[]);
    let serial = srv.get("/compress/t.txt?parallel=0");
    let parallel = srv.get("/compress/t.txt?parallel=1");
    let auto = srv.get("/compress/t.txt");
    for r in [&serial, &parallel, &auto] {
        assert_eq!(r.status, 200);
        assert_eq!(gunzip(&r.body), data);
    }
    assert_eq!(
        auto.body, parallel.body,
        "large files go parallel by default"
    );
    let ratio = parallel.body.len() as f64 / serial.body.len() as f64;
    assert!(ratio < 1.01, "parallel output {ratio:.4}x the serial size");
    assert_eq!(gunzip(&srv.get("/compress/small?parallel=1").body), b"tiny");
    // Bodies, declared and chunked.
    let r = srv.post("/compress?parallel=1&level=1", &data);
    assert_eq!(gunzip(&r.body), data);
    let mut s = connect(srv.addr);
    let mut reader = s.try_clone().unwrap();
    let to_send = data.clone();
    let writer = std::thread::spawn(move || {
        s.write_all(b"POST /compress?parallel=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        for piece in to_send.chunks(100_003) {
            write!(s, "{:x}\r\n", piece.len()).unwrap();
            s.write_all(piece).unwrap();
            s.write_all(b"\r\n").unwrap();
        }
        s.write_all(b"0\r\n\r\n").unwrap();
    });
    let r = read_response(&mut reader);
    writer.join().unwrap();
    assert_eq!(gunzip(&r.body), data);
    assert_eq!(gunzip(&srv.post("/compress?parallel=1", b"").body), b"");
    let r = srv.get("/compress/t.txt?parallel=maybe");
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_query"));
}

#[test]
fn digest_cache_answers_repeats_and_is_never_stale() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.bin");
    let other = dir.path().join("other.bin");
    std::fs::write(&p, pseudo_random(2 << 20, 1)).unwrap();
    std::fs::write(&other, pseudo_random(2 << 20, 2)).unwrap();
    let srv = Server::start(dir.path(), &["--digest-cache", "1MiB"]);
    let hits = |srv: &Server| {
        srv.metric(r#"hashpress_digest_cache_requests_total{result="hit"}"#)
            .unwrap()
    };
    let check = |srv: &Server, expect_hit: bool| {
        let before = hits(srv);
        let r = srv.get("/hash-file/f.bin?alg=sha256,crc32c");
        let want = oracle(&p, "sha256,crc32c");
        assert_digests(&r, &want, std::fs::metadata(&p).unwrap().len() as usize);
        assert_eq!(
            hits(srv) > before,
            expect_hit,
            "cache hit expected: {expect_hit}"
        );
    };
    // The first request of a version is always computed; once the file is
    // older than the racy window (1 s), the next one is answered from cache.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    check(&srv, false);
    check(&srv, true);
    // Rewritten in place, same size.
    std::fs::write(&p, pseudo_random(2 << 20, 3)).unwrap();
    check(&srv, false);
    // Truncated.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(1000)
        .unwrap();
    check(&srv, false);
    // Replaced by rename.
    std::fs::rename(&other, &p).unwrap();
    check(&srv, false);
    // Touched: content unchanged, identity changed — recomputed, still right.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    check(&srv, false);
    check(&srv, true);
    let f = std::fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(std::time::SystemTime::now()).unwrap();
    check(&srv, false);
    // A different algorithm list is a different entry.
    let r = srv.get("/hash-file/f.bin?alg=md5");
    assert_eq!(r.status, 200);
}

#[test]
fn access_log_has_one_line_per_request_with_real_byte_counts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.txt"), text_like(300_000)).unwrap();
    let srv = Server::start(dir.path(), &["--access-log"]);
    assert_eq!(srv.post("/hash", &[1u8; 1000]).status, 200);
    let gz = srv.get("/compress/t.txt");
    assert_eq!(gz.status, 200);
    srv.get("/nope");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let lines = loop {
        let lines: Vec<serde_json::Value> = srv
            .log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "hashpress::access")
            .collect();
        if lines.len() >= 3 || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["route"], "/hash");
    assert_eq!(lines[0]["bytes_in"], 1000);
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[1]["route"], "/compress/{path}");
    assert_eq!(lines[1]["bytes_out"].as_u64(), Some(gz.body.len() as u64));
    assert_eq!(lines[1]["complete"], true);
    assert_eq!(lines[2]["status"], 404);
    assert!(
        lines
            .iter()
            .all(|l| l["micros"].is_u64() && l["method"].is_string())
    );
}
