//! Strict HTTP/1.1 (RFC 9110/9112), each case sent as raw bytes: `Host`
//! present once and valid, the exact `--max-header-bytes`, no transfer
//! coding but `chunked`, one `Authorization` field.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use crate::helpers::*;

/// Sends `bytes` as they are on a new connection and reads the answer up to
/// the server's close (every case here either asks for `Connection: close`
/// or is refused with it).
fn raw(addr: SocketAddr, bytes: &[u8]) -> Response {
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer and close before it has read everything.
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_response(&out)
}

fn assert_refused(r: &Response, status: u16, code: &str, case: &str) {
    assert_eq!(r.status, status, "{case}: {}", r.text());
    assert_eq!(r.error_code(), code, "{case}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{case}");
    assert_eq!(r.header("connection"), Some("close"), "{case}");
}

#[test]
fn host_must_be_present_once_and_valid() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    for (case, head) in [
        ("no Host", "GET /healthz HTTP/1.1\r\n"),
        (
            "two Hosts",
            "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: a\r\n",
        ),
        ("userinfo", "GET /healthz HTTP/1.1\r\nHost: user@a\r\n"),
        ("bad port", "GET /healthz HTTP/1.1\r\nHost: a:http\r\n"),
        ("path", "GET /healthz HTTP/1.1\r\nHost: a/b\r\n"),
        ("bad IPv6", "GET /healthz HTTP/1.1\r\nHost: [::g]:80\r\n"),
        (
            "no Host on a body",
            "POST /hash HTTP/1.1\r\nContent-Length: 5\r\n",
        ),
    ] {
        let r = raw(srv.addr, format!("{head}\r\nhello").as_bytes());
        assert_refused(&r, 400, "bad_head", case);
        assert!(
            r.json()["message"].as_str().unwrap().contains("Host"),
            "{case}"
        );
    }
    for (case, head) in [
        (
            "name and port",
            "GET /healthz HTTP/1.1\r\nHost: example.com:8080\r\n",
        ),
        ("IPv6", "GET /healthz HTTP/1.1\r\nHost: [::1]:3000\r\n"),
        ("empty", "GET /healthz HTTP/1.1\r\nHost:\r\n"),
        ("HTTP/1.0 needs none", "GET /healthz HTTP/1.0\r\n"),
    ] {
        let r = raw(
            srv.addr,
            format!("{head}Connection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 200, "{case}: {}", r.text());
    }
    assert_eq!(srv.post("/hash", b"hello").status, 200);
}

/// The head (request line through the blank line) may be exactly
/// `--max-header-bytes`, not one byte more: at a small limit and at the
/// 64 KiB default, where heads of up to ~112 KiB used to pass.
#[test]
fn max_header_bytes_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    for (limit, args) in [
        (10_000usize, &["--max-header-bytes", "10000"][..]),
        (64 * 1024, &[][..]),
    ] {
        let srv = Server::start(dir.path(), args);
        let head = |len: usize| {
            let start = "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Pad: ";
            let pad = len - start.len() - "\r\n\r\n".len();
            format!("{start}{}\r\n\r\n", "p".repeat(pad))
        };
        assert_eq!(head(limit).len(), limit);
        let r = raw(srv.addr, head(limit).as_bytes());
        assert_eq!(r.status, 200, "{limit}: a head of exactly the limit");
        for over in [limit + 1, limit + 4096, limit * 7 / 4] {
            let r = raw(srv.addr, head(over).as_bytes());
            assert_eq!(r.status, 431, "limit {limit}: a head of {over} bytes");
        }
        assert_eq!(srv.post("/hash", b"hello").status, 200);
    }
}

/// `gzip, chunked` used to be decoded as chunked only, and the still
/// gzip-encoded bytes hashed into a wrong digest with 200.
#[test]
fn transfer_codings_other_than_chunked_get_501() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &[]);
    let body = "5\r\nhello\r\n0\r\n\r\n";
    for (case, te) in [
        ("gzip, chunked", "Transfer-Encoding: gzip, chunked\r\n"),
        (
            "two fields",
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        ),
        ("unknown", "Transfer-Encoding: x-mine;p=1, chunked\r\n"),
    ] {
        let req = format!("POST /hash HTTP/1.1\r\nHost: t\r\n{te}\r\n{body}");
        let r = raw(srv.addr, req.as_bytes());
        assert_refused(&r, 501, "transfer_coding_not_implemented", case);
    }
    let req = format!(
        "POST /hash HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, chunked\r\n\r\n{body}"
    );
    assert_refused(
        &raw(srv.addr, req.as_bytes()),
        400,
        "bad_head",
        "chunked twice",
    );
    // Plain chunked still works.
    let req = format!(
        "POST /hash?alg=md5 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Transfer-Encoding: Chunked\r\n\r\n{body}"
    );
    let r = raw(srv.addr, req.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["hash"], "5d41402abc4b2a76b9719d911017c592");
}

/// Two `Authorization` fields are ambiguous (which one is the caller?):
/// 400, even when both carry a valid token, and without `--token-file` too.
#[test]
fn two_authorization_fields_get_400() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "alpha\nbeta\n").unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let open = Server::start(&root, &[]);
    let guarded = Server::start(&root, &["--token-file", tokens.to_str().unwrap()]);
    let two = "POST /hash HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\
               Authorization: Bearer alpha\r\nAuthorization: Bearer beta\r\n\r\nhello";
    for srv in [&open, &guarded] {
        assert_refused(
            &raw(srv.addr, two.as_bytes()),
            400,
            "bad_head",
            "two fields",
        );
    }
    let one = "POST /hash HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\
               Authorization: Bearer beta\r\n\r\nhello";
    assert_eq!(raw(guarded.addr, one.as_bytes()).status, 200);
}
