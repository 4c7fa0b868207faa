//! HTTPS (`--tls-cert`, `--tls-key`): certificates made at test time with
//! rcgen, and a real client: Python's `ssl` and `http.client` (standard
//! library), which also computes the expected digests with `hashlib`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{BIN, Server, clean_env, pseudo_random, spawn_listening};

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM.
struct Cert {
    cert: PathBuf,
    key: PathBuf,
}

fn make_cert(dir: &Path, name: &str) -> Cert {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("rcgen");
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    Cert { cert, key }
}

/// One request over TLS, trusting only `ca`: status, body, the SHA-256 of
/// the certificate the server showed, the protocol and ALPN, and the
/// SHA-256 of the body sent (computed by hashlib, the oracle).
const CLIENT: &str = r#"
import hashlib, http.client, json, ssl, sys
port, ca, method, path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
body = sys.stdin.buffer.read() if method == "POST" else None
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["http/1.1"])
try:
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    c.request(method, path, body=body)
    r = c.getresponse()
    data = r.read()
    print(json.dumps({
        "status": r.status,
        "body": data.decode("utf-8", "replace"),
        "cert": hashlib.sha256(c.sock.getpeercert(binary_form=True)).hexdigest(),
        "version": c.sock.version(),
        "alpn": c.sock.selected_alpn_protocol(),
        "sent_sha256": hashlib.sha256(body or b"").hexdigest(),
    }))
except Exception as e:
    print(json.dumps({"error": type(e).__name__ + ": " + str(e)}))
"#;

fn https(addr: SocketAddr, ca: &Path, method: &str, path: &str, body: &[u8]) -> Value {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(CLIENT)
        .arg(addr.port().to_string())
        .arg(ca)
        .arg(method)
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    let mut stdin = child.stdin.take().unwrap();
    let body = body.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client output: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The SHA-256 of a PEM certificate's DER, as the client reports it.
fn fingerprint(pem_file: &Path) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import hashlib,ssl,sys;\
             print(hashlib.sha256(ssl.PEM_cert_to_DER_cert(open(sys.argv[1]).read())).hexdigest())",
        )
        .arg(pem_file)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `hashpress serve` with TLS, returned once it logs its https address.
fn start(root: &Path, cert: &Cert, args: &[&str]) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--root",
    ])
    .arg(root)
    .arg("--tls-cert")
    .arg(&cert.cert)
    .arg("--tls-key")
    .arg(&cert.key)
    .args(args);
    clean_env(&mut cmd);
    let (child, addr, log) = spawn_listening(cmd);
    Server { child, addr, log }
}

/// Waits until a TLS client sees certificate `want` (a reload has happened).
fn wait_for_cert(srv: &Server, ca: &Path, want: &str) {
    let end = Instant::now() + Duration::from_secs(20);
    let mut last = Value::Null;
    while Instant::now() < end {
        last = https(srv.addr, ca, "GET", "/healthz", b"");
        if last["cert"] == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "never saw the new certificate (last: {last}); log:\n{}",
        srv.log.lock().unwrap().join("\n")
    );
}

fn check_hash_over_tls(srv: &Server, cert: &Cert) {
    let body = pseudo_random(300_000, 7);
    let r = https(srv.addr, &cert.cert, "POST", "/hash?alg=sha256", &body);
    assert_eq!(r["status"], 200, "{r}");
    let v: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(v["bytes"], body.len() as u64);
    assert_eq!(v["digests"]["sha256"], r["sent_sha256"], "{v}");
    assert_eq!(r["alpn"], "http/1.1");
    assert!(
        r["version"] == "TLSv1.3" || r["version"] == "TLSv1.2",
        "{r}"
    );
    let small = https(srv.addr, &cert.cert, "POST", "/hash?alg=sha256", b"hello");
    let v: Value = serde_json::from_str(small["body"].as_str().unwrap()).unwrap();
    assert_eq!(v["digests"]["sha256"], small["sent_sha256"]);
    let g = https(srv.addr, &cert.cert, "GET", "/healthz", b"");
    assert_eq!(g["status"], 200, "{g}");
    assert_eq!(g["cert"], fingerprint(&cert.cert));
}

#[test]
fn get_and_post_over_https_in_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "a");
    let srv = start(dir.path(), &cert, &["--workers", "0"]);
    check_hash_over_tls(&srv, &cert);

    // Plain HTTP on the TLS port: no HTTP answer, the connection closes in
    // bounded time, and the server goes on serving TLS.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        !got.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(
        https(srv.addr, &cert.cert, "GET", "/healthz", b"")["status"],
        200
    );
}

#[test]
fn get_and_post_over_https_in_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "a");
    let srv = start(dir.path(), &cert, &["--workers", "2"]);
    // The supervisor logs its address before the workers are ready.
    let end = Instant::now() + Duration::from_secs(15);
    while https(srv.addr, &cert.cert, "GET", "/readyz", b"")["status"] != 200 {
        assert!(Instant::now() < end, "no worker ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    check_hash_over_tls(&srv, &cert);
}

#[test]
fn bad_tls_files_are_refused_at_start_with_a_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let good = make_cert(dir.path(), "a");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let other = make_cert(dir.path(), "b");
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--tls-cert",
                junk.to_str().unwrap(),
                "--tls-key",
                good.key.to_str().unwrap(),
            ],
            "no certificate",
        ),
        (
            &[
                "--tls-cert",
                good.cert.to_str().unwrap(),
                "--tls-key",
                junk.to_str().unwrap(),
            ],
            "--tls-key",
        ),
        (
            &[
                "--tls-cert",
                good.cert.to_str().unwrap(),
                "--tls-key",
                other.key.to_str().unwrap(),
            ],
            "pair",
        ),
        (&["--tls-cert", good.cert.to_str().unwrap()], "--tls-key"),
    ];
    for workers in ["0", "2"] {
        for (flags, said) in cases {
            let mut cmd = Command::new(BIN);
            cmd.args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                workers,
                "--root",
            ])
            .arg(dir.path())
            .args(flags);
            clean_env(&mut cmd);
            let out = cmd.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
            assert!(err.contains(said), "{flags:?}: {err}");
        }
    }
}

/// SIGHUP with a new certificate: new connections see it. SIGHUP with a
/// broken one: the previous one keeps serving. Both modes.
#[test]
fn sighup_reloads_the_certificate_and_a_broken_one_keeps_the_old() {
    for workers in ["0", "2"] {
        let dir = tempfile::tempdir().unwrap();
        let first = make_cert(dir.path(), "first");
        // The server reads these two paths; the test rewrites them.
        let live = Cert {
            cert: dir.path().join("live.crt"),
            key: dir.path().join("live.key"),
        };
        std::fs::copy(&first.cert, &live.cert).unwrap();
        std::fs::copy(&first.key, &live.key).unwrap();
        let srv = start(dir.path(), &live, &["--workers", workers]);
        let end = Instant::now() + Duration::from_secs(15);
        while https(srv.addr, &first.cert, "GET", "/readyz", b"")["status"] != 200 {
            assert!(Instant::now() < end, "not ready");
            std::thread::sleep(Duration::from_millis(100));
        }

        let second = make_cert(dir.path(), "second");
        std::fs::copy(&second.cert, &live.cert).unwrap();
        std::fs::copy(&second.key, &live.key).unwrap();
        srv.signal(libc::SIGHUP);
        wait_for_cert(&srv, &second.cert, &fingerprint(&second.cert));
        let r = https(srv.addr, &second.cert, "POST", "/hash?alg=sha256", b"abc");
        assert_eq!(r["status"], 200, "{r}");

        // A broken file: the reload fails, the second certificate stays.
        std::fs::write(&live.cert, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
        srv.signal(libc::SIGHUP);
        // The reload was tried, and failed: in one process the swap is
        // refused; in a cluster the new workers fail and the reload is given up.
        let said = if workers == "0" {
            "keeping the previous certificate"
        } else {
            "reload failed"
        };
        let end = Instant::now() + Duration::from_secs(20);
        while !srv.log.lock().unwrap().iter().any(|l| l.contains(said)) {
            assert!(Instant::now() < end, "never logged {said:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        for _ in 0..5 {
            let r = https(srv.addr, &second.cert, "GET", "/healthz", b"");
            assert_eq!(r["status"], 200, "workers {workers}: {r}");
            assert_eq!(r["cert"], fingerprint(&second.cert));
        }
    }
}
