//! The storage seam, tested from outside: the same handler tests against
//! both backends (a directory, and a bucket prefix served by a real S3
//! server, s3s-fs, on loopback), then what only an object store can do:
//! refuse credentials, go away, hang, come back, change under a read.
//!
//! The S3 tests need the `s3s-fs` binary (`.ci/run` installs it:
//! `cargo install s3s-fs --version 0.14.1 --locked --features binary`) and
//! fail without it; `S3S_FS=/path/to/s3s-fs` picks another one.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::confinement::hostile_table;
use crate::helpers::*;

const BUCKET: &str = "hp-test";
const PREFIX: &str = "served";
const SECRET: &str = "TOP-SECRET-CONTENT";
const ACCESS_KEY: &str = "hashpress-test-key";
const SECRET_KEY: &str = "hashpress-test-secret-do-not-print";

/// S3 tests move hundreds of MiB through one store process: one at a time.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

// ------------------------------------------------------------ the S3 server

/// The s3s-fs binary, or a failure that says how to get it.
fn s3s_fs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("S3S_FS") {
        return PathBuf::from(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
        .expect(
            "s3s-fs not found: `cargo install s3s-fs --version 0.14.1 --locked --features binary` \
             (.ci/run does), or set S3S_FS",
        )
}

/// An s3s-fs process serving `dir` on a loopback port, with one bucket.
/// Killed when dropped.
pub struct S3Server {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl S3Server {
    pub fn start() -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(BUCKET)).unwrap();
        let (child, port) = spawn_s3s(dir.path(), 0, ACCESS_KEY, SECRET_KEY);
        S3Server {
            child: Some(child),
            dir,
            port,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: connections are reset, nothing is flushed).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data, with these credentials.
    pub fn restart(&mut self, access: &str, secret: &str) {
        self.kill();
        let (child, _) = spawn_s3s(self.dir.path(), self.port, access, secret);
        self.child = Some(child);
    }

    /// SIGSTOP / SIGCONT: a store that accepts connections and never answers.
    pub fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, sig) };
    }

    /// An object_store client of our own, for fixtures and read-backs.
    pub fn client(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .unwrap()
    }

    /// The environment a hashpress process needs to reach this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Multipart uploads the server still holds. s3s-fs does not implement
    /// ListMultipartUploads; it keeps each upload as `.upload-<id>.json` plus
    /// `.upload_id-<id>.part-<n>` files at the top of its data directory, so
    /// that is where we look.
    pub fn pending_uploads(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".upload"))
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts s3s-fs on `port` (0: any) and waits for its "running" line.
fn spawn_s3s(dir: &Path, port: u16, access: &str, secret: &str) -> (Child, u16) {
    let mut child = Command::new(s3s_fs_bin())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", access, "--secret-key", secret])
        .arg(dir)
        .env("RUST_LOG", "s3s_fs=info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning s3s-fs");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep draining its log, or a full pipe would stall the server.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(i) = line.find("server is running at http://") {
                let rest = &line[i + "server is running at http://".len()..];
                let port: String = rest
                    .rsplit(':')
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                let _ = tx.send(port.parse::<u16>().unwrap_or(0));
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(p) if p != 0 => (child, p),
        other => {
            let _ = child.kill();
            panic!("s3s-fs did not start: {other:?}");
        }
    }
}

/// Runs an object_store call from a synchronous test.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// `hashpress serve --root ROOT` with exactly `env` from the AWS and
/// HASHPRESS families (none of the developer's own).
fn start_server(root: &str, args: &[&str], env: &[(String, String)]) -> Server {
    let (child, addr, log) = spawn_listening(server_command(root, args, env));
    Server { child, addr, log }
}

fn server_command(root: &str, args: &[&str], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--root", root])
        .args(["--log-format", "json"])
        .args(args);
    if !args.contains(&"--workers") {
        cmd.args(["--workers", "0"]);
    }
    for (k, _) in std::env::vars() {
        if k.starts_with("HASHPRESS_") || k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

// ------------------------------------------------------------ the backends

/// What a handler test needs from a backend; one implementation each.
trait Backend {
    fn name(&self) -> &'static str;
    /// Starts hashpress on this backend.
    fn serve(&self, args: &[&str]) -> Server;
    /// Stores `data` under `key` of the served root.
    fn put(&self, key: &str, data: &[u8]);
    /// Reads `key` of the served root back; `None` if absent.
    fn read(&self, key: &str) -> Option<Vec<u8>>;
    /// Everything in the store, inside the served root or not, with sizes.
    fn everything(&self) -> Vec<(String, usize)>;
    /// Temporaries or unfinished uploads left behind.
    fn leftovers(&self) -> Vec<String>;
    /// Puts SECRET just outside the served root, at "secret.txt" beside it.
    fn put_outside(&self);
}

/// `--root DIR`: DIR is `base/root`, the secret is `base/secret.txt`.
struct DirBackend {
    base: tempfile::TempDir,
}

impl DirBackend {
    fn new() -> DirBackend {
        let base = tempfile::tempdir().unwrap();
        std::fs::create_dir(base.path().join("root")).unwrap();
        DirBackend { base }
    }

    fn root(&self) -> PathBuf {
        self.base.path().join("root")
    }
}

fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, usize)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, base, out);
        } else {
            let len = std::fs::metadata(&p).map_or(0, |m| m.len() as usize);
            out.push((p.strip_prefix(base).unwrap().display().to_string(), len));
        }
    }
}

impl Backend for DirBackend {
    fn name(&self) -> &'static str {
        "dir"
    }

    fn serve(&self, args: &[&str]) -> Server {
        start_server(self.root().to_str().unwrap(), args, &[])
    }

    fn put(&self, key: &str, data: &[u8]) {
        let p = self.root().join(key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    fn read(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root().join(key)).ok()
    }

    fn everything(&self) -> Vec<(String, usize)> {
        let mut v = Vec::new();
        walk(self.base.path(), self.base.path(), &mut v);
        v.sort();
        v
    }

    fn leftovers(&self) -> Vec<String> {
        self.everything()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.contains(".tmp-"))
            .collect()
    }

    fn put_outside(&self) {
        std::fs::write(self.base.path().join("secret.txt"), SECRET).unwrap();
    }
}

/// A garage cluster started by `deploy/garage/cluster` (1 node: these tests
/// are about hashpress, scale.rs is about the cluster); stopped when dropped.
pub struct Garage {
    dir: tempfile::TempDir,
    /// The `export` lines of `cluster up`: endpoint, key, region, bucket.
    env: Vec<(String, String)>,
}

impl Garage {
    fn cluster(args: &[&str]) -> std::process::Output {
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/deploy/garage/cluster"
            ))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running deploy/garage/cluster")
    }

    pub fn start() -> Garage {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("garage");
        let out = Garage::cluster(&[
            "up",
            "--single",
            "--dir",
            state.to_str().unwrap(),
            "--ttl",
            "900",
        ]);
        assert!(
            out.status.success(),
            "garage did not start (needs the garage binary: cargo install garage --version \
             2.5.0 --locked): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (k, v) = l.strip_prefix("export ")?.split_once('=')?;
                Some((k.to_string(), v.trim_matches('\'').to_string()))
            })
            .collect();
        Garage { dir, env }
    }

    fn var(&self, name: &str) -> &str {
        &self.env.iter().find(|(k, _)| k == name).expect(name).1
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let state = self.dir.path().join("garage");
        Garage::cluster(&["down", state.to_str().unwrap()]);
    }
}

/// The server behind a `BucketBackend`.
enum Store {
    S3sFs(S3Server),
    Garage(Garage),
}

/// `--root s3://BUCKET/served` on s3s-fs or garage; the secret is
/// `secret.txt` at the top of the bucket.
struct BucketBackend {
    store: Store,
    client: AmazonS3,
    bucket: String,
    /// What hashpress needs to reach the store.
    env: Vec<(String, String)>,
}

impl BucketBackend {
    fn new() -> BucketBackend {
        let s3 = S3Server::start();
        BucketBackend {
            client: s3.client(),
            bucket: BUCKET.to_string(),
            env: s3.env(),
            store: Store::S3sFs(s3),
        }
    }

    fn on_garage() -> BucketBackend {
        let g = Garage::start();
        let bucket = g.var("S3_BUCKET").to_string();
        let client = AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_region(g.var("AWS_REGION"))
            .with_endpoint(g.var("AWS_ENDPOINT_URL"))
            .with_allow_http(true)
            .with_access_key_id(g.var("AWS_ACCESS_KEY_ID"))
            .with_secret_access_key(g.var("AWS_SECRET_ACCESS_KEY"))
            .build()
            .unwrap();
        let env = g
            .env
            .iter()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .cloned()
            .collect();
        BucketBackend {
            client,
            bucket,
            env,
            store: Store::Garage(g),
        }
    }

    fn s3s(&mut self) -> &mut S3Server {
        match &mut self.store {
            Store::S3sFs(s) => s,
            Store::Garage(_) => panic!("an s3s-fs test"),
        }
    }

    fn root(&self) -> String {
        format!("s3://{}/{PREFIX}", self.bucket)
    }

    fn serve_with(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Server {
        let mut env = self.env.clone();
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        start_server(&self.root(), args, &env)
    }
}

impl Backend for BucketBackend {
    fn name(&self) -> &'static str {
        match self.store {
            Store::S3sFs(_) => "s3s-fs",
            Store::Garage(_) => "garage",
        }
    }

    fn serve(&self, args: &[&str]) -> Server {
        self.serve_with(args, &[])
    }

    fn put(&self, key: &str, data: &[u8]) {
        let path = Key::parse(format!("{PREFIX}/{key}")).unwrap();
        block_on(self.client.put(&path, PutPayload::from(data.to_vec()))).unwrap();
    }

    fn read(&self, key: &str) -> Option<Vec<u8>> {
        let path = Key::parse(format!("{PREFIX}/{key}")).unwrap();
        block_on(async {
            match self.client.get(&path).await {
                Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("reading {path}: {e}"),
            }
        })
    }

    fn everything(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = block_on(async {
            self.client
                .list(None)
                .map_ok(|m| (m.location.to_string(), m.size as usize))
                .try_collect()
                .await
        })
        .unwrap();
        v.sort();
        v
    }

    fn leftovers(&self) -> Vec<String> {
        match &self.store {
            Store::S3sFs(s) => s.pending_uploads(),
            Store::Garage(g) => list_multipart_uploads(g, &self.bucket),
        }
    }

    fn put_outside(&self) {
        let path = Key::parse("secret.txt").unwrap();
        block_on(self.client.put(&path, PutPayload::from(SECRET))).unwrap();
    }
}

/// The bucket's unfinished multipart uploads (their keys), by the S3 API's
/// ListMultipartUploads, signed with object_store's SigV4 signer.
fn list_multipart_uploads(g: &Garage, bucket: &str) -> Vec<String> {
    use object_store::aws::{AwsAuthorizer, AwsCredential};
    let endpoint = g.var("AWS_ENDPOINT_URL");
    let credential = AwsCredential {
        key_id: g.var("AWS_ACCESS_KEY_ID").to_string(),
        secret_key: g.var("AWS_SECRET_ACCESS_KEY").to_string(),
        token: None,
    };
    let mut req = axum::http::Request::builder()
        .method("GET")
        .uri(format!("{endpoint}/{bucket}?uploads"))
        .body(object_store::client::HttpRequestBody::empty())
        .unwrap();
    AwsAuthorizer::new(&credential, "s3", g.var("AWS_REGION"))
        .try_authorize(&mut req, None)
        .unwrap();
    let host = endpoint.trim_start_matches("http://");
    let mut head =
        format!("GET /{bucket}?uploads HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in req.headers() {
        head.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap()));
    }
    head.push_str("\r\n");
    let mut s = connect(host.parse().unwrap());
    s.write_all(head.as_bytes()).unwrap();
    let r = read_response(&mut s);
    assert_eq!(r.status, 200, "ListMultipartUploads: {}", r.text());
    let xml = r.text();
    xml.split("<Upload>")
        .skip(1)
        .map(|u| {
            u.split("<Key>")
                .nth(1)
                .and_then(|k| k.split("</Key>").next())
                .unwrap_or("?")
                .to_string()
        })
        .collect()
}

// ------------------------------------------------------------ oracles

/// Digests by Python's hashlib (stdlib only).
fn hashlib(data: &[u8], algs: &[&str]) -> HashMap<String, String> {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(data).unwrap();
    let script = "import hashlib, json, sys\n\
        algs = sys.argv[2].split(',')\n\
        hs = {a: hashlib.new(a) for a in algs}\n\
        with open(sys.argv[1], 'rb') as f:\n\
        \x20   while True:\n\
        \x20       b = f.read(1 << 20)\n\
        \x20       if not b: break\n\
        \x20       for h in hs.values(): h.update(b)\n\
        print(json.dumps({a: h.hexdigest() for a, h in hs.items()}))\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(f.path())
        .arg(algs.join(","))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `gzip -t`: a whole, valid gzip stream.
fn gzip_is_complete(data: &[u8]) -> bool {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(data).unwrap();
    Command::new("gzip")
        .arg("-t")
        .stdin(std::fs::File::open(f.path()).unwrap())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Percent-encodes a key for a URL path, keeping '/'.
fn url_key(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn metric_sum(srv: &Server, prefix: &str) -> f64 {
    srv.get("/metrics")
        .text()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ------------------------------------------------------------ shared handler tests

const ALGS: [&str; 4] = ["sha256", "md5", "sha1", "sha512"];

fn digests_match_hashlib(b: &dyn Backend) {
    let sizes = [0usize, 1, (5 << 20) + 1, 100 << 20];
    for (i, &n) in sizes.iter().enumerate() {
        b.put(&format!("sizes/{n}.bin"), &pseudo_random(n, i as u64 + 7));
    }
    let srv = b.serve(&[]);
    for (i, &n) in sizes.iter().enumerate() {
        let data = pseudo_random(n, i as u64 + 7);
        let want = hashlib(&data, &ALGS);
        let r = srv.get(&format!("/hash-file/sizes/{n}.bin?alg={}", ALGS.join(",")));
        assert_digests(&r, &want, n);
        assert_eq!(r.json()["path"], format!("sizes/{n}.bin"), "{}", b.name());
    }
}

fn gzip_round_trips(b: &dyn Backend) {
    let text = text_like((3 << 20) + 11);
    let noise = pseudo_random(12 << 20, 99);
    b.put("gz/text.txt", &text);
    b.put("gz/noise.bin", &noise);
    let srv = b.serve(&["--allow-write"]);
    for parallel in [0, 1] {
        let r = srv.get(&format!("/compress/gz/text.txt?parallel={parallel}"));
        assert_eq!(r.status, 200, "{}: {}", b.name(), r.text());
        assert_eq!(r.header("content-type"), Some("application/gzip"));
        assert!(r.body.len() < text.len() / 3);
        assert_eq!(gunzip(&r.body), text, "{} parallel={parallel}", b.name());
    }
    // A small output (one PUT on S3) and a large one (a multipart upload).
    for (key, data, level) in [("gz/text.txt", &text, 9), ("gz/noise.bin", &noise, 1)] {
        let r = srv.post(&format!("/compress/{key}?level={level}"), b"");
        assert_eq!(r.status, 200, "{}: {}", b.name(), r.text());
        let v = r.json();
        assert_eq!(v["output"], format!("{key}.gz"));
        assert_eq!(v["bytes_in"].as_u64(), Some(data.len() as u64));
        let written = b.read(&format!("{key}.gz")).expect("output written");
        assert_eq!(v["bytes_out"].as_u64(), Some(written.len() as u64));
        assert_eq!(&gunzip(&written), data, "{} {key}", b.name());
    }
    assert_eq!(b.leftovers(), Vec::<String>::new(), "{}", b.name());
}

/// zstd through the same paths: serial and parallel downloads (an object's
/// ranges gathered into whole 4 MiB frames), and `{key}.zst` written.
fn zstd_round_trips(b: &dyn Backend) {
    let text = text_like((9 << 20) + 11);
    b.put("zs/text.txt", &text);
    let srv = b.serve(&["--allow-write"]);
    for parallel in [0, 1] {
        let r = srv.get(&format!(
            "/compress/zs/text.txt?format=zstd&parallel={parallel}"
        ));
        assert_eq!(r.status, 200, "{}: {}", b.name(), r.text());
        assert_eq!(r.header("content-type"), Some("application/zstd"));
        let (back, frames) = unzstd(&r.body);
        assert_eq!(back, text, "{} parallel={parallel}", b.name());
        let sizes: Vec<usize> = frames.iter().map(|f| f.content).collect();
        let want = if parallel == 1 {
            vec![4 << 20, 4 << 20, (1 << 20) + 11]
        } else {
            vec![text.len()]
        };
        assert_eq!(sizes, want, "{} parallel={parallel}", b.name());
    }
    let r = srv.post("/compress/zs/text.txt?format=zstd&level=9", b"");
    assert_eq!(r.status, 200, "{}: {}", b.name(), r.text());
    let v = r.json();
    assert_eq!(v["output"], "zs/text.txt.zst");
    let written = b.read("zs/text.txt.zst").expect("output written");
    assert_eq!(v["bytes_out"].as_u64(), Some(written.len() as u64));
    assert_eq!(unzstd(&written).0, text, "{}", b.name());
    assert_eq!(b.leftovers(), Vec::<String>::new(), "{}", b.name());
}

fn odd_keys_work(b: &dyn Backend) {
    let key = "dir with space/naïve ünïcödé ☃ (1) + 100%.txt";
    let data = text_like(70_000);
    b.put(key, &data);
    let srv = b.serve(&["--allow-write"]);
    let r = srv.get(&format!("/hash-file/{}?alg=md5", url_key(key)));
    assert_digests(&r, &hashlib(&data, &["md5"]), data.len());
    assert_eq!(r.json()["path"], key);
    let r = srv.get(&format!("/compress/{}", url_key(key)));
    assert_eq!(gunzip(&r.body), data, "{}", b.name());
    let r = srv.post(&format!("/compress/{}", url_key(key)), b"");
    assert_eq!(r.status, 200, "{}: {}", b.name(), r.text());
    assert_eq!(r.json()["output"], format!("{key}.gz"));
    assert_eq!(gunzip(&b.read(&format!("{key}.gz")).unwrap()), data);
}

fn hostile_keys_stay_inside(b: &dyn Backend) {
    b.put_outside();
    b.put("ok.txt", b"fine");
    b.put("sub/inner.txt", b"inner");
    let srv = b.serve(&["--allow-write"]);
    let before = b.everything();
    for path in hostile_table("/tmp/nowhere/secret.txt") {
        for (method, prefix) in [
            ("GET", "/hash-file/"),
            ("GET", "/compress/"),
            ("POST", "/compress/"),
        ] {
            let r = request(srv.addr, method, &format!("{prefix}{path}"), &[], b"");
            assert!(
                [400, 403, 404, 414].contains(&r.status),
                "{}: {method} {prefix}{path}: status {}",
                b.name(),
                r.status
            );
            assert!(!r.text().contains(SECRET), "{method} {prefix}{path} leaked");
            if r.status != 414 {
                r.error_code();
            }
        }
    }
    assert_eq!(b.everything(), before, "{}: the store changed", b.name());
    assert_eq!(srv.get("/hash-file/ok.txt").status, 200);
    assert_eq!(srv.get("/hash-file/sub/inner.txt").status, 200);
    // A key that names the secret's place relative to the bucket is just a
    // (missing) key under the prefix.
    assert_eq!(srv.get("/hash-file/secret.txt").status, 404);
}

fn missing_keys_are_404(b: &dyn Backend) {
    let srv = b.serve(&["--allow-write"]);
    for (method, path) in [
        ("GET", "/hash-file/no/such.bin"),
        ("GET", "/compress/no/such.bin"),
        ("POST", "/compress/no/such.bin"),
    ] {
        let r = request(srv.addr, method, path, &[], b"");
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (404, "not_found"),
            "{path}"
        );
    }
    assert!(b.read("no/such.bin.gz").is_none());
}

/// A client that leaves in the middle of `POST /compress/{key}`: no output,
/// no temporary, no multipart upload (its parts would be kept, and billed).
fn abandoned_write_leaves_nothing(b: &dyn Backend) {
    b.put("big.bin", &pseudo_random(64 << 20, 5));
    let srv = b.serve(&["--allow-write"]);
    let mut s = connect(srv.addr);
    s.write_all(b"POST /compress/big.bin?level=9 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    // Past the first 5 MiB part, so that an S3 upload has begun (and a
    // local temporary holds as much).
    let series = r#"hashpress_processed_bytes_total{op="compress",direction="in""#;
    let end = Instant::now() + Duration::from_secs(60);
    while metric_sum(&srv, series) < (12 << 20) as f64 || b.leftovers().is_empty() {
        assert!(Instant::now() < end, "compression never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    let done = metric_sum(&srv, series);
    assert!(
        done < (48 << 20) as f64,
        "too late to leave: {done} bytes done"
    );
    drop(s);
    // Nothing appears, and the clean-up (an abort on S3) finishes.
    let end = Instant::now() + Duration::from_secs(20);
    while !b.leftovers().is_empty() {
        assert!(Instant::now() < end, "left behind: {:?}", b.leftovers());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let out = b.read("big.bin.gz").map(|v| v.len());
    assert_eq!(out, None, "{}: output appeared", b.name());
    assert_eq!(b.leftovers(), Vec::<String>::new());
    assert_eq!(srv.get("/healthz").status, 200);
}

/// RFC 9530: a `Content-Digest` that the source does not match stops the
/// write before its commit: 400, and nothing left (past the first 5 MiB
/// part, so an S3 upload had begun and is aborted).
fn declared_digest_is_checked_before_the_write(b: &dyn Backend) {
    use base64::Engine as _;
    let data = pseudo_random(12 << 20, 11);
    b.put("d.bin", &data);
    let srv = b.serve(&["--allow-write"]);
    let hex = hashlib(&data, &["sha256"]).remove("sha256").unwrap();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let right = format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    );
    let wrong = format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    );
    let post = |field: &str| {
        request(
            srv.addr,
            "POST",
            "/compress/d.bin",
            &[("Content-Digest", field)],
            b"",
        )
    };
    let r = post(&wrong);
    assert_eq!(r.status, 400, "{}: {}", b.name(), r.text());
    assert_eq!(r.error_code(), "digest_mismatch");
    let end = Instant::now() + Duration::from_secs(20);
    while !b.leftovers().is_empty() {
        assert!(Instant::now() < end, "left behind: {:?}", b.leftovers());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(b.read("d.bin.gz").map(|v| v.len()), None, "{}", b.name());
    let r = post(&right);
    assert_eq!(r.status, 200, "{}: {}", b.name(), r.text());
    assert_eq!(gunzip(&b.read("d.bin.gz").expect("written")), data);
}

fn digest_cache_is_never_stale(b: &dyn Backend) {
    b.put("c.bin", b"first version");
    let srv = b.serve(&["--digest-cache", "1MiB"]);
    // Files changed within a second of a hash are not cached (racy window).
    std::thread::sleep(Duration::from_millis(1100));
    let first = srv.get("/hash-file/c.bin").json()["hash"].clone();
    assert_eq!(srv.get("/hash-file/c.bin").json()["hash"], first);
    let hit = r#"hashpress_digest_cache_requests_total{result="hit"}"#;
    assert_eq!(srv.metric(hit), Some(1.0), "{}", b.name());
    b.put("c.bin", b"second version, longer");
    let r = srv.get("/hash-file/c.bin");
    assert_digests(&r, &hashlib(b"second version, longer", &["sha256"]), 22);
}

/// Every shared test, one backend.
fn all_handler_tests(b: &dyn Backend) {
    digests_match_hashlib(b);
    gzip_round_trips(b);
    zstd_round_trips(b);
    odd_keys_work(b);
    hostile_keys_stay_inside(b);
    missing_keys_are_404(b);
    abandoned_write_leaves_nothing(b);
    declared_digest_is_checked_before_the_write(b);
    digest_cache_is_never_stale(b);
}

#[test]
fn dir_backend_passes_the_handler_tests() {
    all_handler_tests(&DirBackend::new());
}

#[test]
#[ignore = "needs s3s-fs"]
fn s3_backend_passes_the_handler_tests() {
    let _g = one_at_a_time();
    all_handler_tests(&BucketBackend::new());
}

/// The same on garage, a distributed store that honours `If-Match` and
/// lists multipart uploads. CI builds no garage (see `.ci/run`).
#[test]
#[ignore = "needs garage (cargo install garage --version 2.5.0 --locked)"]
fn garage_backend_passes_the_handler_tests() {
    let _g = one_at_a_time();
    let b = BucketBackend::on_garage();
    all_handler_tests(&b);
    overwritten_mid_read_is_409(&b);
}

// ------------------------------------------------------------ S3 only

/// An object overwritten while it is read: 409, never a digest or an output
/// made of two versions, and nothing written; a download already streaming
/// is cut instead of finished with mixed bytes.
#[test]
#[ignore = "needs s3s-fs"]
fn s3_object_overwritten_mid_read_is_409() {
    let _g = one_at_a_time();
    overwritten_mid_read_is_409(&BucketBackend::new());
}

fn overwritten_mid_read_is_409(b: &BucketBackend) {
    let srv = b.serve(&["--allow-write"]);
    let gets = r#"hashpress_storage_requests_total{op="get",outcome="ok"}"#;
    // Waits until the request has read a few ranges past the first: it is
    // under way, reading the old version.
    let reading = |before: f64| {
        let end = Instant::now() + Duration::from_secs(30);
        while metric_sum(&srv, gets) < before + 3.0 {
            assert!(Instant::now() < end, "the read never got going");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // gzip -9 of 64 MiB of random letters takes seconds; hashing 256 MiB
    // with SHA-3 among the digests, two: longer than the overwrite takes,
    // however fast the ranges come (4 MiB ones, aligned to garage's blocks,
    // made the hash with four digests finish first in one run).
    for (size, method, path) in [
        (64 << 20, "POST", "/compress/v.bin?level=9"),
        (
            256 << 20,
            "GET",
            "/hash-file/v.bin?alg=sha256,sha512,sha1,md5,sha3-256",
        ),
    ] {
        b.put("v.bin", &hard_to_compress(size, 1));
        let before = metric_sum(&srv, gets);
        let (m, p, addr) = (method.to_string(), path.to_string(), srv.addr);
        let req = std::thread::spawn(move || request(addr, &m, &p, &[], b""));
        reading(before);
        assert!(!req.is_finished(), "{method} finished before the overwrite");
        // Another size too: s3s-fs records the new ETag just after it
        // renames the new bytes in, and a range read in that instant is
        // caught by the size.
        b.put("v.bin", &hard_to_compress(size + 4096, 2));
        let r = req.join().unwrap();
        assert_eq!(r.status, 409, "{method} {path}: {}", r.text());
        assert_eq!(r.error_code(), "source_changed");
    }
    assert!(b.read("v.bin.gz").is_none());
    assert_eq!(b.leftovers(), Vec::<String>::new());

    // A download paced by its client: headers and a first part, then the
    // overwrite, then the rest, which must not end as a valid gzip.
    b.put("v.bin", &pseudo_random(64 << 20, 3));
    let mut s = connect(srv.addr);
    s.write_all(
        b"GET /compress/v.bin?level=1&parallel=0 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut first = vec![0u8; 64 << 10];
    std::io::Read::read_exact(&mut s, &mut first).unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200"));
    b.put("v.bin", &pseudo_random((64 << 20) + 4096, 4));
    let mut raw = first;
    let _ = std::io::Read::read_to_end(&mut s, &mut raw);
    let cut = parse_response(&raw);
    assert!(
        !gzip_is_complete(&cut.body),
        "a download spanning the overwrite ended cleanly ({} bytes)",
        cut.body.len()
    );
    let changed = r#"hashpress_storage_requests_total{op="get",outcome="changed"}"#;
    assert!(metric_sum(&srv, changed) >= 3.0);
    assert_eq!(srv.get("/healthz").status, 200);
}

/// The store hangs, dies mid-request, comes back, and changes its keys:
/// clear JSON errors within the deadline, and service again without a
/// restart of hashpress.
#[test]
#[ignore = "needs s3s-fs"]
fn s3_outages_answer_in_bounded_time_and_service_comes_back() {
    let _g = one_at_a_time();
    let mut b = BucketBackend::new();
    let data = pseudo_random(8 << 20, 3);
    b.put("o.bin", &data);
    let want = hashlib(&data, &["sha256"]);
    let deadline = Duration::from_secs(2);
    let srv = b.serve(&["--s3-deadline", "2s", "--s3-retries", "2"]);
    assert_digests(&srv.get("/hash-file/o.bin"), &want, data.len());
    let timed = |path: &str| {
        let t = Instant::now();
        let r = srv.get(path);
        (r, t.elapsed())
    };
    let slack = Duration::from_secs(3);

    // Hung (accepts, never answers): 504 once the deadline passes.
    b.s3s().signal(libc::SIGSTOP);
    let (r, took) = timed("/hash-file/o.bin");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (504, "storage_timeout")
    );
    assert!(took >= deadline / 2 && took < deadline + slack, "{took:?}");
    b.s3s().signal(libc::SIGCONT);
    assert_digests(&srv.get("/hash-file/o.bin"), &want, data.len());

    // Killed while a request waits on it: 502 (or 504) within the bound.
    b.s3s().signal(libc::SIGSTOP);
    let addr = srv.addr;
    let t = Instant::now();
    let req = std::thread::spawn(move || request(addr, "GET", "/hash-file/o.bin", &[], b""));
    std::thread::sleep(Duration::from_millis(300));
    b.s3s().kill();
    let r = req.join().unwrap();
    let took = t.elapsed();
    assert!(matches!(r.status, 502 | 504), "{}: {}", r.status, r.text());
    assert!(took < deadline + slack, "{took:?}");
    // Down: 502 storage_unavailable, fast (connections are refused).
    let (r, took) = timed("/compress/o.bin");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (502, "storage_unavailable"),
        "{}",
        r.text()
    );
    assert!(took < deadline + slack, "{took:?}");
    assert!(!r.text().contains(SECRET_KEY));

    // Back: service without a restart.
    b.s3s().restart(ACCESS_KEY, SECRET_KEY);
    assert_digests(&srv.get("/hash-file/o.bin"), &want, data.len());

    // The store no longer accepts our key: 403 access_denied.
    b.s3s().restart(ACCESS_KEY, "another-secret");
    let r = srv.get("/hash-file/o.bin");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "access_denied"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("SignatureDoesNotMatch"), "{}", r.text());
    b.s3s().restart(ACCESS_KEY, SECRET_KEY);
    assert_digests(&srv.get("/hash-file/o.bin"), &want, data.len());

    // All of it counted, nothing secret exposed.
    let text = srv.get("/metrics").text();
    for series in [
        r#"hashpress_storage_requests_total{op="get",outcome="ok"}"#,
        r#"hashpress_storage_requests_total{op="get",outcome="timeout"}"#,
        r#"hashpress_storage_requests_total{op="get",outcome="unavailable"}"#,
        r#"hashpress_storage_requests_total{op="get",outcome="denied"}"#,
        r#"hashpress_storage_bytes_total{direction="read"}"#,
    ] {
        assert!(metric_sum(&srv, series) >= 1.0, "{series}\n{text}");
    }
    assert!(text.contains("hashpress_storage_request_duration_seconds_bucket{op=\"get\""));
    let json = srv.get("/metrics.json").json();
    assert!(json["storage"]["bytes"]["read"].as_u64().unwrap() >= data.len() as u64);
    let log = srv.log.lock().unwrap().join("\n");
    for secret in [SECRET_KEY, "another-secret"] {
        assert!(!text.contains(secret) && !log.contains(secret));
    }
}

/// At start the server checks the bucket, and says in one sentence what is
/// wrong, without the secret, with exit code 2.
#[test]
#[ignore = "needs s3s-fs"]
fn s3_startup_check_names_the_problem() {
    let _g = one_at_a_time();
    let s3 = S3Server::start();
    let env = s3.env();
    let with = |changes: &[(&str, Option<&str>)]| -> Vec<(String, String)> {
        let mut e: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| !changes.iter().any(|(c, _)| c == k))
            .cloned()
            .collect();
        for (k, v) in changes {
            if let Some(v) = v {
                e.push((k.to_string(), v.to_string()));
            }
        }
        e
    };
    let good_root = format!("s3://{BUCKET}/{PREFIX}");
    // (what stderr must say, --root, environment, extra flags)
    type Case<'a> = (&'a str, String, Vec<(String, String)>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            "no credentials",
            good_root.clone(),
            with(&[("AWS_ACCESS_KEY_ID", None), ("AWS_SECRET_ACCESS_KEY", None)]),
            &[],
        ),
        (
            "does not exist",
            "s3://no-such-bucket/x".to_string(),
            env.clone(),
            &[],
        ),
        (
            "cannot be reached",
            good_root.clone(),
            with(&[("AWS_ENDPOINT_URL", Some("http://127.0.0.1:1"))]),
            &[],
        ),
        (
            "access denied",
            good_root.clone(),
            with(&[("AWS_SECRET_ACCESS_KEY", Some("wrong-secret-do-not-print"))]),
            &[],
        ),
        // The supervisor checks too, before any worker starts.
        (
            "access denied",
            good_root.clone(),
            with(&[("AWS_SECRET_ACCESS_KEY", Some("wrong-secret-do-not-print"))]),
            &["--workers", "1"],
        ),
        (
            "AWS_ALLOW_HTTP",
            good_root.clone(),
            with(&[("AWS_ALLOW_HTTP", None)]),
            &[],
        ),
    ];
    for (want, root, env, args) in cases {
        let mut args = args.to_vec();
        args.extend(["--s3-deadline", "2s", "--s3-retries", "1"]);
        let t = Instant::now();
        let out = server_command(&root, &args, &env).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{want}: {stderr}");
        assert!(stderr.contains(want), "wanted '{want}' in: {stderr}");
        assert!(stderr.lines().count() <= 2, "{stderr}");
        for secret in [SECRET_KEY, "wrong-secret-do-not-print"] {
            assert!(!stderr.contains(secret), "{stderr}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{want}: {:?}",
            t.elapsed()
        );
    }
    // And with everything right, it serves (but walks no trees).
    let srv = start_server(&good_root, &["--workers", "1"], &env);
    assert_eq!(srv.get("/hash-file/nothing-here").status, 404);
    let r = srv.get("/manifest/");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (501, "needs_directory")
    );
}

/// Flat memory: hashing a 1 GiB object raises RSS by less than 64 MiB, and
/// 16 at once stay under 256 MiB.
#[test]
#[ignore = "needs s3s-fs"]
fn s3_memory_stays_flat() {
    let _g = one_at_a_time();
    let b = BucketBackend::new();
    let size = 1usize << 30;
    // Uploaded in 64 MiB parts so the test itself stays small.
    let path = Key::parse(format!("{PREFIX}/gib.bin")).unwrap();
    block_on(async {
        let upload = b.client.put_multipart(&path).await.unwrap();
        let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, 64 << 20);
        for i in 0..(size >> 20) {
            w.wait_for_capacity(2).await.unwrap();
            w.write(&pseudo_random(1 << 20, i as u64));
        }
        w.finish().await.unwrap();
    });
    // All 16 admitted: what is measured is memory, not the pool's refusal
    // of work it cannot finish within --max-queue-wait.
    let srv = b.serve(&["--max-queue-wait", "1h"]);
    srv.get("/hash-file/nothing");
    let idle = srv.rss_kib();
    let peak = Arc::new(Mutex::new(idle));
    let watch = |srv: &Server, peak: Arc<Mutex<u64>>, stop: Arc<std::sync::atomic::AtomicBool>| {
        let pid = srv.pid();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = rss_kib(pid);
                let mut p = peak.lock().unwrap();
                *p = (*p).max(r);
                drop(p);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = watch(&srv, Arc::clone(&peak), Arc::clone(&stop));
    let t = Instant::now();
    let r = srv.get("/hash-file/gib.bin");
    let one = t.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    w.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["bytes"].as_u64(), Some(size as u64));
    let growth = *peak.lock().unwrap() - idle;
    eprintln!(
        "1 GiB object: {:.0} MB/s, RSS idle {idle} KiB, growth {growth} KiB",
        size as f64 / one.as_secs_f64() / 1e6
    );
    assert!(growth < 64 * 1024, "RSS grew by {growth} KiB");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = watch(&srv, Arc::clone(&peak), Arc::clone(&stop));
    let hash = r.json()["hash"].clone();
    let t = Instant::now();
    let addr = srv.addr;
    let all: Vec<_> = (0..16)
        .map(|_| {
            std::thread::spawn(move || {
                // Answers come at the end of 16 GiB of reads: wait longer
                // than `request` does.
                let mut s = connect(addr);
                s.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
                s.write_all(
                    b"GET /hash-file/gib.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                )
                .unwrap();
                read_response(&mut s)
            })
        })
        .collect();
    for h in all {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["hash"], hash);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    w.join().unwrap();
    let peak = *peak.lock().unwrap();
    eprintln!(
        "16 × 1 GiB at once: {:.1} s, peak RSS {peak} KiB",
        t.elapsed().as_secs_f64()
    );
    assert!(peak < 256 * 1024, "peak RSS {peak} KiB");
}
