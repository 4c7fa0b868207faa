//! The checks of a request head that RFC 9110/9112 ask of a server and hyper
//! leaves to us, made before routing (and before the token check: a
//! malformed request is refused whoever sends it):
//!
//! - `Host` (RFC 9112 §3.2): an HTTP/1.1 request without one, any request
//!   with two, or with a value that is not `uri-host [":" port]`, is 400.
//! - `Transfer-Encoding` (RFC 9112 §6.1, §7): hyper decodes `chunked` when
//!   it is the last coding and refuses the rest, but would pass the body of
//!   `gzip, chunked` on still gzip-encoded, and we would hash the wrong
//!   bytes. Any coding other than `chunked` is 501; `chunked` twice is 400.
//! - `Authorization`: two fields are 400. Taking the first, as the token
//!   check would, lets a proxy that reads the last disagree about who is
//!   calling.
//!
//! The head size limit (`--max-header-bytes`) is hyper's, set exactly in
//! `server.rs`. Each check only walks the fields it names: no allocation on
//! the happy path.

use axum::extract::Request;
use axum::http::{HeaderValue, Version, header};

use crate::error::ApiError;

pub fn check(req: &Request) -> Result<(), ApiError> {
    let headers = req.headers();
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) => {
            if !valid_host(host.as_bytes()) {
                return Err(ApiError::BadHead(
                    "the Host field is not a valid host[:port] (RFC 9112 §3.2)",
                ));
            }
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::BadHead(
                "the request has more than one Host field (RFC 9112 §3.2)",
            ));
        }
        // HTTP/1.0 predates Host; HTTP/1.1 requires it.
        (None, _) if req.version() >= Version::HTTP_11 => {
            return Err(ApiError::BadHead(
                "an HTTP/1.1 request needs a Host field (RFC 9112 §3.2)",
            ));
        }
        (None, _) => {}
    }
    let mut chunked = 0;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        for coding in codings(value) {
            if coding.eq_ignore_ascii_case(b"chunked") {
                chunked += 1;
            } else {
                return Err(ApiError::TransferCodingNotImplemented);
            }
        }
    }
    if chunked > 1 {
        return Err(ApiError::BadHead(
            "the chunked transfer coding is applied more than once (RFC 9112 §7)",
        ));
    }
    let mut auth = headers.get_all(header::AUTHORIZATION).iter();
    if auth.next().is_some() && auth.next().is_some() {
        return Err(ApiError::BadHead(
            "the request has more than one Authorization field; send one",
        ));
    }
    Ok(())
}

/// The non-empty elements of a comma-separated field value, trimmed.
fn codings(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty())
}

/// `Host = uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2). Empty is
/// valid: a client sends that when the target has no authority.
fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = v.strip_prefix(b"[") {
        // IP-literal: an IPv6 address (IPvFuture is refused, as nginx does).
        let Some(end) = rest.iter().position(|b| *b == b']') else {
            return false;
        };
        let literal = std::str::from_utf8(&rest[..end]).unwrap_or("");
        if literal.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match &rest[end + 1..] {
            [] => (&[][..], None),
            [b':', port @ ..] => (&[][..], Some(port)),
            _ => return false,
        }
    } else {
        match v.iter().position(|b| *b == b':') {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        }
    };
    reg_name(host) && port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit))
}

/// RFC 3986 `reg-name` (which includes IPv4 addresses):
/// unreserved, sub-delims and `%HH`.
fn reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {}
            b'%' if name.len() > i + 2
                && name[i + 1].is_ascii_hexdigit()
                && name[i + 2].is_ascii_hexdigit() =>
            {
                i += 2;
            }
            _ => return false,
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:3000",
            "[::1]:3000",
            "[2001:db8::7]",
            "a-b_c~d.%41",
            "",
            "host:",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok:?} refused");
        }
        for bad in [
            "a b",
            "user@host",
            "host:port",
            "host:123456",
            "a:1:2",
            "[::1",
            "[::1]x",
            "[zz::1]",
            "host/path",
            "%4",
            "%zz",
            "é.example",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?} accepted");
        }
    }

    fn req(fields: &[(&str, &str)]) -> Request {
        let mut b = Request::builder().uri("/hash");
        for (k, v) in fields {
            b = b.header(*k, *v);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn heads() {
        let code = |fields: &[(&str, &str)]| check(&req(fields)).err().map(|e| e.status().as_u16());
        assert_eq!(code(&[("host", "t")]), None);
        assert_eq!(code(&[]), Some(400));
        assert_eq!(code(&[("host", "t"), ("host", "t")]), Some(400));
        assert_eq!(
            code(&[("host", "t"), ("transfer-encoding", "chunked")]),
            None
        );
        assert_eq!(
            code(&[("host", "t"), ("transfer-encoding", "Chunked ,")]),
            None
        );
        for te in ["gzip, chunked", "identity", "x-custom;p=1, chunked"] {
            assert_eq!(
                code(&[("host", "t"), ("transfer-encoding", te)]),
                Some(501),
                "{te}"
            );
        }
        assert_eq!(
            code(&[
                ("host", "t"),
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked")
            ]),
            Some(501)
        );
        assert_eq!(
            code(&[("host", "t"), ("transfer-encoding", "chunked, chunked")]),
            Some(400)
        );
        assert_eq!(code(&[("host", "t"), ("authorization", "Bearer a")]), None);
        assert_eq!(
            code(&[
                ("host", "t"),
                ("authorization", "Bearer a"),
                ("authorization", "Bearer b")
            ]),
            Some(400)
        );
        let mut http10 = req(&[]);
        *http10.version_mut() = Version::HTTP_10;
        assert!(check(&http10).is_ok(), "HTTP/1.0 needs no Host");
    }
}
