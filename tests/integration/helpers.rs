//! Test helpers: a real `hashpress` process on a free port, a raw HTTP/1.1
//! client (so hostile paths reach the server unnormalised), and oracles.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_hashpress");

/// A running server; killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Every stderr line so far, for assertions and failure reports.
    #[allow(dead_code)]
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// `hashpress serve --listen 127.0.0.1:0 --root ROOT ARGS...`
    pub fn start(root: &Path, args: &[&str]) -> Server {
        Server::start_with(root, args, &[])
    }

    pub fn start_with(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--root")
            .arg(root)
            .arg("--log-format")
            .arg("json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        clean_env(&mut cmd);
        // One process unless the test asks for workers: what these tests
        // measure (memory, pids, signals) is then the serving process itself.
        // Cluster behaviour has its own tests (`Server::cluster`).
        if !args.contains(&"--workers") {
            cmd.arg("--workers").arg("0");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (child, addr, log) = spawn_listening(cmd);
        Server { child, addr, log }
    }

    /// A supervisor and its workers (`args` says how many; 2 by default),
    /// returned once generation 0 is serving.
    pub fn cluster(root: &Path, args: &[&str]) -> Server {
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
        .args(args);
        clean_env(&mut cmd);
        Server::spawn_cluster(cmd)
    }

    /// A supervisor started by `cmd` (a test's own command line), returned
    /// once generation 0 is serving.
    pub fn spawn_cluster(cmd: Command) -> Server {
        let (child, addr, log) = spawn_listening(cmd);
        let s = Server { child, addr, log };
        s.wait_phase("ready", 0, Duration::from_secs(15));
        s
    }

    /// Waits until the supervisor publishes `phase` with `generation`
    /// serving (`workers` in `/metrics.json`): the state itself, not a log
    /// line about it.
    pub fn wait_phase(&self, phase: &str, generation: u64, limit: Duration) {
        let end = Instant::now() + limit;
        let mut seen = Value::Null;
        while Instant::now() < end {
            let r = request(self.addr, "GET", "/metrics.json", &[], b"");
            if r.status == 200 {
                seen = r.json()["workers"].clone();
                if seen["phase"] == phase && seen["generation"] == generation {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "never {phase} at generation {generation} (last: {seen}); log:\n{}",
            self.log.lock().unwrap().join("\n")
        );
    }

    /// The supervisor's own JSON log records (worker lines carry a "worker"
    /// field first and are included too).
    pub fn records(&self) -> Vec<Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn count(&self, message: &str) -> usize {
        self.records()
            .iter()
            .filter(|v| v["message"] == message)
            .count()
    }

    /// Waits for a record matching `f`; panics with the log on timeout.
    pub fn wait_log(&self, limit: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(v) = self.records().into_iter().find(&f) {
                return v;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "log line not seen; log:\n{}",
            self.log.lock().unwrap().join("\n")
        );
    }

    /// Pids that the supervisor reported ready, with their generation.
    pub fn ready_pids(&self) -> Vec<(u32, u64)> {
        self.records()
            .iter()
            .filter(|v| v["message"] == "worker ready")
            .map(|v| {
                (
                    v["pid"].as_u64().unwrap() as u32,
                    v["generation"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    /// Live direct children of the supervisor, read from /proc.
    pub fn children(&self) -> Vec<i32> {
        children_of(self.pid())
    }

    /// Waits until none of the workers in `old` is a child any more (an old
    /// generation has finished its drain).
    pub fn wait_gone(&self, old: &std::collections::HashSet<u32>, limit: Duration) {
        let end = Instant::now() + limit;
        while self.children().iter().any(|p| old.contains(&(*p as u32))) {
            assert!(Instant::now() < end, "old workers did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    pub fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, &[], b"")
    }

    pub fn post(&self, path: &str, body: &[u8]) -> Response {
        request(self.addr, "POST", path, &[], body)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for exit, up to `limit`; None on timeout.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Value of an unlabelled or fully-labelled metric line, e.g.
    /// `hashpress_pool_threads` or `name{a="b"}`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = self.get("/metrics").text();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }
}

/// Keeps the developer's own HASHPRESS_* settings out of a test server.
pub fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("HASHPRESS_") {
            cmd.env_remove(k);
        }
    }
}

/// Spawns `cmd` (stderr piped), keeps draining its stderr into a shared log
/// (a full pipe would block the server's logging), and waits for the
/// `listening on http://ADDR` (or `https://`) line.
pub fn spawn_listening(mut cmd: Command) -> (Child, SocketAddr, Arc<Mutex<Vec<String>>>) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning hashpress");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Plain or TLS: the address follows the scheme either way.
                let found = ["listening on http://", "listening on https://"]
                    .iter()
                    .find_map(|m| line.find(m).map(|i| i + m.len()));
                if let Some(at) = found {
                    let rest = &line[at..];
                    let end = rest
                        .find(|c: char| c == '"' || c.is_whitespace())
                        .unwrap_or(rest.len());
                    let _ = tx.send(rest[..end].to_string());
                }
                log.lock().unwrap().push(line);
            }
        });
    }
    match rx.recv_timeout(Duration::from_secs(15)) {
        Ok(a) => (child, a.parse().expect("address in the log"), log),
        Err(_) => {
            let _ = child.kill();
            let status = child.wait();
            panic!(
                "server did not start ({status:?}); log:\n{}",
                log.lock().unwrap().join("\n")
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Live (not zombie) children of `parent`, read from /proc.
pub fn children_of(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state, ppid, ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next();
        if state != Some("Z") && f.next().and_then(|p| p.parse().ok()) == Some(parent) {
            out.push(pid);
        }
    }
    out
}

pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(|s| s.as_str())
    }

    /// The server said it closes the connection after this answer.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    /// The worker process that answered (cluster mode).
    pub fn worker_pid(&self) -> Option<u32> {
        self.header("x-worker-pid")?.parse().ok()
    }

    /// Asserts the JSON error shape and returns the code.
    pub fn error_code(&self) -> String {
        let v = self.json();
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error without message: {v}"
        );
        v["error"].as_str().expect("error code").to_string()
    }
}

/// One request on a fresh connection (`Connection: close`), path sent as is.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut s = connect(addr);
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (e.g. 413) before reading the body: ignore write errors.
    let _ = s.write_all(body);
    read_response(&mut s)
}

/// `GET path` on a fresh connection, for tests where the server may be
/// down or restarting: an error instead of a panic.
pub fn try_get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    read_one(&mut BufReader::new(s))
}

/// Reads one response from a connection that stays open (keep-alive):
/// the head, then a `Content-Length` or chunked body.
pub fn read_one(r: &mut impl BufRead) -> std::io::Result<Response> {
    use std::io::ErrorKind::{InvalidData, UnexpectedEof};
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(UnexpectedEof.into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(InvalidData)?;
    let mut headers = HashMap::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap_or((l, ""));
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let mut body = Vec::new();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| InvalidData)?;
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// Reads a whole response from a `Connection: close` stream.
pub fn read_response(s: &mut TcpStream) -> Response {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> Response {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .expect("chunk size");
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            out.extend_from_slice(&data[..size.min(data.len())]);
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Bytes deflate has to work hard on: random letters from an alphabet of
/// 16 (4 bits of entropy per byte, no long matches). Unlike noise, which the
/// gzip encoder recognises and stores at memory speed, these take gzip's full
/// time, for tests that need a compression still running a moment later.
pub fn hard_to_compress(len: usize, seed: u64) -> Vec<u8> {
    let mut out = pseudo_random(len, seed);
    for b in &mut out {
        *b = b'a' + (*b & 15);
    }
    out
}

/// Compressible text-like bytes: words picked by a PRNG, so gzip sees
/// realistic (not trivially periodic) input.
pub fn text_like(len: usize) -> Vec<u8> {
    let words = [
        "hash", "press", "stream", "gzip", "tokio", "pool", "root", "bytes\n", "the", "of",
        "server", "digest", "block", "window", "client", "worker",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut x: u32 = 12345;
    while out.len() < len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        out.extend_from_slice(words[(x >> 16) as usize % words.len()].as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    out
}

/// Digests of a file by implementations other than the server's, needing
/// nothing installed beyond python3:
/// - SHA-256/512, SHA-1, MD5: Python's `hashlib` (OpenSSL), via
///   `tests/oracle.py`;
/// - CRC32C, CRC32, CRC64NVME: the `crc` crate's table-driven CRCs (the
///   server uses `crc-fast`'s carry-less multiply);
/// - BLAKE3: no second implementation is to be had without installing one
///   (PyPI's `blake3` binds the very crate the server uses), so the crate's
///   one-shot hash of the whole file stands in. That checks how the server
///   streams and batches a body; the algorithm itself is checked against
///   the BLAKE3 team's official vectors (`api::blake3_matches_the_official_vectors`).
pub fn oracle(path: &Path, algs: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut hashlib = Vec::new();
    let data = std::fs::read(path).unwrap();
    for alg in algs.split(',') {
        match alg {
            "crc32c" => {
                let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(&data);
                out.insert(alg.to_string(), format!("{crc:08x}"));
            }
            "blake3" => {
                out.insert(alg.to_string(), blake3::hash(&data).to_hex().to_string());
            }
            "crc32" => {
                let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&data);
                out.insert(alg.to_string(), format!("{crc:08x}"));
            }
            "crc64nvme" => {
                let crc = crc::Crc::<u64>::new(&crc::CRC_64_NVME).checksum(&data);
                out.insert(alg.to_string(), format!("{crc:016x}"));
            }
            "xxh3" => {
                let h = xxhash_rust::xxh3::xxh3_64(&data);
                out.insert(alg.to_string(), format!("{h:016x}"));
            }
            "xxh128" => {
                let h = xxhash_rust::xxh3::xxh3_128(&data);
                out.insert(alg.to_string(), format!("{h:032x}"));
            }
            _ => hashlib.push(alg),
        }
    }
    if hashlib.is_empty() {
        return out;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oracle.py");
    let run = Command::new("python3")
        .arg(script)
        .arg(path)
        .arg(hashlib.join(","))
        .output()
        .expect("running python3");
    assert!(
        run.status.success(),
        "oracle.py failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let digests: HashMap<String, String> = serde_json::from_slice(&run.stdout).unwrap();
    out.extend(digests);
    out
}

/// Runs `cmd` with `stdin` as its standard input, stdout and stderr
/// collected. The input is written from a thread: a program that writes
/// while it reads would fill its stdout pipe and wait for us.
pub fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Decompresses with the system `gzip -dc`.
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let out = run_with_stdin(Command::new("gzip").arg("-dc"), data);
    assert!(
        out.status.success(),
        "gzip -d refused the stream: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// One frame of a zstd stream, as read by `unzstd`.
#[allow(dead_code)]
#[derive(Debug)]
pub struct ZstdFrame {
    /// Decompressed bytes.
    pub content: usize,
    /// The window the frame header asks a decoder for.
    pub window: u64,
}

/// Decompresses a zstd stream (concatenated frames) with ruzstd, a pure-Rust
/// decoder of another implementation family than our libzstd, checking
/// every frame's content checksum (which must be there).
#[allow(dead_code)]
pub fn unzstd(data: &[u8]) -> (Vec<u8>, Vec<ZstdFrame>) {
    use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
    let mut input = data;
    let mut out = Vec::new();
    let mut frames = Vec::new();
    let mut dec = FrameDecoder::new();
    while !input.is_empty() {
        let window = frame_window(input);
        dec.init(&mut input).expect("a zstd frame header");
        let start = out.len();
        while !dec.is_finished() {
            dec.decode_blocks(&mut input, BlockDecodingStrategy::UptoBytes(1 << 20))
                .expect("valid zstd blocks");
            dec.collect_to_writer(&mut out).unwrap();
        }
        dec.collect_to_writer(&mut out).unwrap();
        let sent = dec.get_checksum_from_data().expect("frame checksum on");
        assert_eq!(Some(sent), dec.get_calculated_checksum(), "frame checksum");
        frames.push(ZstdFrame {
            content: out.len() - start,
            window,
        });
    }
    (out, frames)
}

/// The window size a zstd frame header declares (RFC 8878 §3.1.1.1.2): the
/// content size for a single-segment frame, else the window descriptor's.
fn frame_window(frame: &[u8]) -> u64 {
    assert_eq!(frame[..4], [0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
    let fhd = frame[4];
    if fhd & 0x20 != 0 {
        // Single segment: the content size field is the window.
        let dict_len = [0, 1, 2, 4][usize::from(fhd & 3)];
        let at = 5 + dict_len;
        return match fhd >> 6 {
            0 => u64::from(frame[at]),
            1 => u64::from(u16::from_le_bytes([frame[at], frame[at + 1]])) + 256,
            2 => u64::from(u32::from_le_bytes(frame[at..at + 4].try_into().unwrap())),
            _ => u64::from_le_bytes(frame[at..at + 8].try_into().unwrap()),
        };
    }
    let wd = frame[5];
    let base = 1u64 << (10 + (wd >> 3));
    base + base / 8 * u64::from(wd & 7)
}

/// Asserts the digests in a /hash answer equal the oracle's.
pub fn assert_digests(resp: &Response, expected: &HashMap<String, String>, bytes: usize) {
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["bytes"].as_u64(), Some(bytes as u64));
    for (alg, hex) in expected {
        assert_eq!(v["digests"][alg].as_str(), Some(hex.as_str()), "{alg}");
    }
    let first = v["algorithm"].as_str().unwrap();
    assert_eq!(v["hash"], v["digests"][first]);
}
