//! RFC 9530 Digest Fields: `Content-Digest` checked on every upload
//! endpoint, `Repr-Digest`/`Content-Digest` sent on downloads that want
//! them (as a trailer, or a header when known).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::helpers::*;

/// RFC 9530's example content and its fields (Appendix B).
const HELLO: &[u8] = b"{\"hello\": \"world\"}";
const HELLO_256: &str = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";
const HELLO_512: &str = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";

/// `sha-256=:…:` / `sha-512=:…:` of `data`, from Python's hashlib.
fn field_of(dir: &Path, data: &[u8], alg: &str) -> String {
    let f = dir.join(format!(".oracle-{alg}"));
    std::fs::write(&f, data).unwrap();
    let hex = oracle(&f, alg).remove(alg).unwrap();
    std::fs::remove_file(&f).unwrap();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let key = if alg == "sha256" {
        "sha-256"
    } else {
        "sha-512"
    };
    format!("{key}=:{}:", STANDARD.encode(bytes))
}

/// A field of the same shape whose digest is of other bytes.
fn wrong_field(dir: &Path, data: &[u8], alg: &str) -> String {
    let mut other = data.to_vec();
    other.push(b'!');
    field_of(dir, &other, alg)
}

fn post_with(srv: &Server, path: &str, digest: &str, body: &[u8]) -> Response {
    request(srv.addr, "POST", path, &[("Content-Digest", digest)], body)
}

fn assert_mismatch(r: &Response, key: &str, declared: &str, computed: &str) {
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error_code(), "digest_mismatch");
    let msg = r.json()["message"].as_str().unwrap().to_string();
    let value = |f: &str| f.split_once('=').unwrap().1.to_string();
    for part in [key.to_string(), value(declared), value(computed)] {
        assert!(msg.contains(&part), "{part} not in {msg}");
    }
}

#[test]
fn post_hash_checks_content_digest_with_the_rfc_examples() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    for field in [
        HELLO_256.to_string(),
        HELLO_512.to_string(),
        format!("{HELLO_512}, {HELLO_256}"),
        // Unknown and deprecated keys are ignored, as the RFC allows.
        format!("unixsum=30637, md5=:AAAA:, {HELLO_256}"),
        "md5=:AAAA:".to_string(),
    ] {
        let r = post_with(&srv, "/hash?alg=md5", &field, HELLO);
        assert_eq!(r.status, 200, "{field}: {}", r.text());
        // The digests computed for the check are not in the answer.
        let digests = r.json()["digests"].as_object().unwrap().clone();
        assert_eq!(digests.keys().collect::<Vec<_>>(), ["md5"], "{field}");
    }
    // Two field lines make one dictionary.
    let r = request(
        srv.addr,
        "POST",
        "/hash",
        &[("Content-Digest", HELLO_256), ("Content-Digest", HELLO_512)],
        HELLO,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // The same fields on other content: 400 naming the algorithm and both values.
    let other = b"{\"hello\": \"World\"}";
    let r = post_with(&srv, "/hash", HELLO_256, other);
    assert_mismatch(
        &r,
        "sha-256",
        HELLO_256,
        &field_of(dir.path(), other, "sha256"),
    );
    let both = format!("{HELLO_256}, {HELLO_512}");
    let r = post_with(&srv, "/hash", &both, other);
    assert_mismatch(
        &r,
        "sha-256",
        HELLO_256,
        &field_of(dir.path(), other, "sha256"),
    );
    let r = post_with(&srv, "/hash", HELLO_512, other);
    assert_mismatch(
        &r,
        "sha-512",
        HELLO_512,
        &field_of(dir.path(), other, "sha512"),
    );
    assert_eq!(srv.metric("hashpress_digest_mismatch_total"), Some(3.0));
}

/// Bodies past 1 MiB are hashed on the pool in batches: the check runs
/// there too, on every byte, whatever the size.
#[test]
fn post_hash_checks_large_bodies_right_and_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    for (i, len) in [0usize, 1, (1 << 20) + 7, 3 * (1 << 20) + 17]
        .into_iter()
        .enumerate()
    {
        let body = pseudo_random(len, 900 + i as u64);
        for alg in ["sha256", "sha512"] {
            let right = field_of(dir.path(), &body, alg);
            let r = post_with(&srv, "/hash?alg=crc32c", &right, &body);
            assert_eq!(r.status, 200, "{len} {alg}: {}", r.text());
            assert_eq!(r.json()["bytes"], len as u64);
            let wrong = wrong_field(dir.path(), &body, alg);
            let r = post_with(&srv, "/hash?alg=crc32c", &wrong, &body);
            assert_mismatch(&r, &alg.replace("sha", "sha-"), &wrong, &right);
        }
    }
}

#[test]
fn malformed_content_digest_is_400_on_every_upload_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), HELLO).unwrap();
    let srv = Server::start(dir.path(), &["--allow-write"]);
    for (field, says) in [
        // A token, not a byte sequence.
        (
            "sha-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE",
            "byte sequence",
        ),
        // Not a structured dictionary.
        ("X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=", "dictionary"),
        (
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=",
            "dictionary",
        ),
        ("{\"sha-256\": 1}", "dictionary"),
        // A byte sequence of the wrong length.
        (
            "sha-512=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
            "32 bytes",
        ),
    ] {
        for path in ["/hash", "/compress", "/compress/a.txt"] {
            let r = post_with(&srv, path, field, HELLO);
            assert_eq!(r.status, 400, "{path} {field}: {}", r.text());
            assert_eq!(r.error_code(), "bad_digest_field", "{path} {field}");
            let msg = r.json()["message"].as_str().unwrap().to_string();
            assert!(msg.contains(says), "{path} {field}: {msg}");
        }
    }
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["a.txt"], "nothing written");
}

/// Sends a body to `POST /compress` and reads the raw answer to its end.
fn post_compress_raw(srv: &Server, query: &str, digest: &str, body: &[u8]) -> (String, Vec<u8>) {
    let mut s = connect(srv.addr);
    let head = format!(
        "POST /compress{query} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Content-Digest: {digest}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (
        String::from_utf8_lossy(&raw[..end]).into_owned(),
        raw[end + 4..].to_vec(),
    )
}

/// A chunked body, strictly: data, then whether the last chunk came, then
/// the trailer fields after it.
fn dechunk_strict(mut data: &[u8]) -> (Vec<u8>, bool, HashMap<String, String>) {
    let mut out = Vec::new();
    let mut trailers = HashMap::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return (out, false, trailers);
        };
        let size = usize::from_str_radix(
            std::str::from_utf8(&data[..eol])
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .expect("chunk size");
        data = &data[eol + 2..];
        if size == 0 {
            break;
        }
        if data.len() < size + 2 {
            out.extend_from_slice(&data[..size.min(data.len())]);
            return (out, false, trailers);
        }
        out.extend_from_slice(&data[..size]);
        assert_eq!(&data[size..size + 2], b"\r\n", "chunk end");
        data = &data[size + 2..];
    }
    // Trailer fields, then the empty line that ends the message.
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("end of the trailer section");
        if eol == 0 {
            return (out, true, trailers);
        }
        let line = std::str::from_utf8(&data[..eol]).unwrap();
        let (k, v) = line.split_once(':').unwrap();
        trailers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        data = &data[eol + 2..];
    }
}

#[test]
/// A body of at most 1 MiB is read before the answer starts, so a wrong
/// digest is a 400; a longer one streams, and a mismatch cuts it short.
fn streaming_compress_is_cut_on_a_mismatch_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    // Serial (small) and parallel (past 4 MiB) compression.
    for (len, query) in [(100_000usize, ""), (5 << 20, "?parallel=1")] {
        let body = text_like(len);
        let right = field_of(dir.path(), &body, "sha256");
        let (head, raw) = post_compress_raw(&srv, query, &right, &body);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let (gz, complete, _) = dechunk_strict(&raw);
        assert!(complete, "a matching body ends with the last chunk");
        assert_eq!(gunzip(&gz), body);

        let before = srv.metric("hashpress_digest_mismatch_total").unwrap();
        let wrong = wrong_field(dir.path(), &body, "sha512");
        let (head, raw) = post_compress_raw(&srv, query, &wrong, &body);
        if len <= 1 << 20 {
            // Small enough to be read before the answer starts: a clear 400.
            assert!(head.starts_with("HTTP/1.1 400"), "{head}");
            assert!(String::from_utf8_lossy(&raw).contains("digest_mismatch"));
        } else {
            // The 200 had started: the stream is cut, never completed.
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let (_, complete, _) = dechunk_strict(&raw);
            assert!(
                !complete,
                "{len}: a mismatch must not end with the last chunk"
            );
        }
        assert_eq!(
            srv.metric("hashpress_digest_mismatch_total"),
            Some(before + 1.0)
        );
    }
    let log = srv.log.lock().unwrap().join("\n");
    assert!(
        log.contains("does not match its Content-Digest"),
        "mismatch not logged: {log}"
    );
}

#[test]
fn compress_to_file_writes_only_the_declared_content() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &["--allow-write"]);
    // One piece and several (pieces are at most 1 MiB).
    for (name, len) in [("small.txt", 1000usize), ("big.txt", 3 * (1 << 20) + 5)] {
        let data = text_like(len);
        std::fs::write(dir.path().join(name), &data).unwrap();
        for alg in ["sha256", "sha512"] {
            let wrong = wrong_field(dir.path(), &data, alg);
            let r = post_with(&srv, &format!("/compress/{name}"), &wrong, b"");
            let right = field_of(dir.path(), &data, alg);
            assert_mismatch(&r, &alg.replace("sha", "sha-"), &wrong, &right);
            // Nothing written, no temporary left.
            let mut names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            assert!(
                names.iter().all(|n| n == "small.txt" || n == "big.txt"),
                "{names:?}"
            );

            let r = post_with(&srv, &format!("/compress/{name}"), &right, b"");
            assert_eq!(r.status, 200, "{}", r.text());
            let gz = std::fs::read(dir.path().join(format!("{name}.gz"))).unwrap();
            assert_eq!(gunzip(&gz), data);
            std::fs::remove_file(dir.path().join(format!("{name}.gz"))).unwrap();
        }
    }
}

/// `GET` with optional extra header lines; the raw head and body.
fn get_raw(addr: SocketAddr, method: &str, path: &str, extra: &str) -> (String, Vec<u8>) {
    let mut s = connect(addr);
    let head = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (
        String::from_utf8_lossy(&raw[..end]).into_owned(),
        raw[end + 4..].to_vec(),
    )
}

fn header_of(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

#[test]
fn downloads_get_their_digest_as_a_trailer() {
    let dir = tempfile::tempdir().unwrap();
    let data = text_like(3 * (1 << 20) + 11);
    std::fs::write(dir.path().join("d.txt"), &data).unwrap();
    let srv = Server::start(dir.path(), &[]);
    for (query, want, field, alg) in [
        (
            "",
            "Want-Repr-Digest: sha-256=10, sha-512=3",
            "repr-digest",
            "sha256",
        ),
        (
            "?level=1",
            "Want-Content-Digest: sha-512=1",
            "content-digest",
            "sha512",
        ),
        // Parallel gzip (a different stream of bytes).
        (
            "?parallel=1",
            "Want-Repr-Digest: sha-512=9, unixsum=10",
            "repr-digest",
            "sha512",
        ),
    ] {
        let path = format!("/compress/d.txt{query}");
        let extra = format!("{want}\r\nTE: trailers\r\n");
        let (head, raw) = get_raw(srv.addr, "GET", &path, &extra);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(
            header_of(&head, "trailer").map(|t| t.to_ascii_lowercase()),
            Some(field.to_string()),
            "{head}"
        );
        let (gz, complete, trailers) = dechunk_strict(&raw);
        assert!(complete);
        assert_eq!(gunzip(&gz), data);
        // The digest of the bytes received, computed by hashlib.
        assert_eq!(
            trailers.get(field),
            Some(&field_of(dir.path(), &gz, alg)),
            "{query}: {trailers:?}"
        );

        // Without TE: trailers (and no cache) there is nowhere to put it.
        let (head, raw) = get_raw(srv.addr, "GET", &path, &format!("{want}\r\n"));
        assert_eq!(header_of(&head, "trailer"), None, "{head}");
        let (gz2, complete, trailers) = dechunk_strict(&raw);
        assert!(complete && trailers.is_empty());
        assert_eq!(gz2, gz, "the same bytes for the same query");

        // HEAD: the output is made and hashed, not sent.
        let (head, raw) = get_raw(srv.addr, "HEAD", &path, &format!("{want}\r\n"));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(raw.is_empty());
        assert_eq!(
            header_of(&head, field),
            Some(field_of(dir.path(), &gz, alg))
        );
    }
    // Both fields at once, each with its own algorithm.
    let (head, raw) = get_raw(
        srv.addr,
        "GET",
        "/compress/d.txt",
        "Want-Repr-Digest: sha-512=1\r\nWant-Content-Digest: sha-256=1\r\nTE: trailers\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (gz, _, trailers) = dechunk_strict(&raw);
    assert_eq!(
        trailers.get("repr-digest"),
        Some(&field_of(dir.path(), &gz, "sha512"))
    );
    assert_eq!(
        trailers.get("content-digest"),
        Some(&field_of(dir.path(), &gz, "sha256"))
    );
    // A malformed preference is refused like any malformed field.
    let (head, _) = get_raw(
        srv.addr,
        "GET",
        "/compress/d.txt",
        "Want-Repr-Digest: sha-256=11\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[test]
fn cached_download_digests_come_as_headers() {
    let dir = tempfile::tempdir().unwrap();
    let data = text_like(200_000);
    let p = dir.path().join("c.txt");
    std::fs::write(&p, &data).unwrap();
    // Changed less than a second before the hash: never cached (racy).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let srv = Server::start(dir.path(), &["--digest-cache", "1MiB"]);
    let want = "Want-Repr-Digest: sha-256=1\r\n";
    let (head, raw) = get_raw(srv.addr, "GET", "/compress/c.txt", want);
    assert_eq!(header_of(&head, "repr-digest"), None, "not known yet");
    let (gz, complete, _) = dechunk_strict(&raw);
    assert!(complete);
    let expected = field_of(dir.path(), &gz, "sha256");
    // Known now: a header on GET and on HEAD, no trailer needed.
    for method in ["GET", "HEAD"] {
        let (head, raw) = get_raw(srv.addr, method, "/compress/c.txt", want);
        assert_eq!(
            header_of(&head, "repr-digest"),
            Some(expected.clone()),
            "{method}"
        );
        if method == "GET" {
            let (gz2, _, _) = dechunk_strict(&raw);
            assert_eq!(gz2, gz);
        }
    }
    // Another level is another output: not known.
    let (head, _) = get_raw(srv.addr, "GET", "/compress/c.txt?level=9", want);
    assert_eq!(header_of(&head, "repr-digest"), None);
    // A changed file is another version: not known either.
    std::fs::write(&p, text_like(100)).unwrap();
    let (head, _) = get_raw(srv.addr, "GET", "/compress/c.txt", want);
    assert_eq!(header_of(&head, "repr-digest"), None);
}

/// A HEAD that wants the digest of a download makes the whole output before
/// it answers; when the source changes meanwhile, the answer is the 409 a
/// GET would have ended with, not a 500.
#[test]
fn head_whose_compression_fails_answers_with_the_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moving.txt");
    std::fs::write(&path, hard_to_compress(64 << 20, 8)).unwrap();
    let srv = Server::start(dir.path(), &[]);
    let addr = srv.addr;
    let head = std::thread::spawn(move || {
        let want = "Want-Repr-Digest: sha-256=1\r\n";
        get_raw(addr, "HEAD", "/compress/moving.txt?level=9", want).0
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !head.is_finished(),
        "compression finished before the change"
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let answer = head.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 409"), "{answer}");
    assert_eq!(header_of(&answer, "repr-digest"), None);
    assert_eq!(srv.get("/healthz").status, 200);
}
