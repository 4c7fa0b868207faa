//! Command line, environment and config file, in that order of precedence.
//!
//! Every flag of `hashpress serve` can also come from `HASHPRESS_<FLAG>`
//! (dashes become underscores) and from a TOML file given by `--config`
//! whose keys are the flag names (`pool-threads = 4`). The file is applied
//! by exporting its keys as the environment variables that are not already
//! set, before clap reads them: so a flag beats the environment, the
//! environment beats the file, and the file beats clap's default. The same
//! environment reaches worker processes, which therefore see one config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::cpu_pool::{PoolLimits, PoolPriority};
use crate::start_error::StartError;
use crate::storage::RootArg;
use crate::tls::TlsFiles;
use crate::tree::listing::SORT_IN_MEMORY;

#[derive(Parser, Debug)]
#[command(
    name = "hashpress",
    version = crate::build_info::LONG,
    about = "Streaming hash, gzip and zstd HTTP server",
    long_about = "hashpress hashes (SHA-2, SHA-3, SHA-1, MD5, BLAKE3, CRC32, CRC32C, CRC64NVME, XXH3) \
and gzips request bodies, files and whole trees under one served directory (or the objects under \
an S3 bucket prefix), as streams, on a bounded CPU pool; compression is gzip or zstd \
(?format=zstd). `hashpress hash` and `hashpress check` do the same for files and trees on the \
command line, without a server; `hashpress compress` and `hashpress decompress` are a pigz-like \
tool with the server's parallel codecs.\n\n\
Start it with `hashpress serve --root DIR`, then e.g.\n  \
curl --data-binary @file 'http://127.0.0.1:3000/hash?alg=sha256,blake3'\n  \
curl http://127.0.0.1:3000/hash-file/some/file.bin\n  \
curl -o f.gz http://127.0.0.1:3000/compress/some/file.bin\n\n\
Inputs of 4 MiB or more are compressed in parallel (gzip: pigz's method, 128 KiB blocks on every \
pool thread, one valid gzip stream; zstd: independent 4 MiB frames, one valid zstd stream); add \
?parallel=0 or ?parallel=1 to choose.\n\n\
Every `serve` flag can also be set as HASHPRESS_<FLAG> in the environment or as a key in the \
--config TOML file; precedence is flag > environment > file > default."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the HTTP API (see `hashpress serve --help` for every flag).
    #[command(long_about = "Serve the HTTP API: POST /hash, GET /hash-file/{path}, \
GET|POST /compress/{path}, POST /compress (?format=gzip|zstd&level=N), /metrics, /metrics.json, /dashboard, /healthz, /readyz, \
/openapi.json.\n\n\
By default a supervisor runs 2 worker processes on one socket (--workers 0: a single process). \
Inputs of 4 MiB or more are compressed in parallel (gzip: 128 KiB blocks on every pool thread, \
one gzip stream; zstd: independent 4 MiB frames); ?parallel=0|1 chooses.")]
    Serve(Box<ServeArgs>),
    /// Digests of files and trees, as `sha256sum`/`b3sum` print them, without a server.
    #[command(
        long_about = "Digests of files and (with -r) whole trees, without a server, \
computed in parallel on every core. Output is what `sha256sum` prints (`--alg blake3`: what \
`b3sum` prints), so `sha256sum -c` and `hashpress check` read it back. A tree is walked in \
byte-wise path order and never leaves the directory through a symlink.\n\n\
Exit status: 0 all read, 2 a usage or read error.\n\n\
Examples:\n  hashpress hash -r release/ > SHA256SUMS\n  \
hashpress hash --alg blake3,sha256 --json big.iso\n  cat f | hashpress hash -"
    )]
    Hash(HashArgs),
    /// Checks files against a manifest: what changed, what is missing (and what is new).
    #[command(
        long_about = "Checks the files under DIR (-C, default .) against MANIFEST \
(`-` for standard input) in any format `hashpress hash` or `GET /manifest` writes: \
sha256sum/b3sum lines, BSD tags, NDJSON (detected), BagIt (--format bagit). Prints \
`path: OK`, `path: FAILED`, `path: FAILED open or read` (missing) like `sha256sum -c`, and with \
--new `path: NEW` for files present but not listed.\n\n\
Exit status: 0 all good, 1 a mismatch or a missing file (or a new one, with --new), 2 a usage \
or read error."
    )]
    Check(CheckArgs),
    /// Compresses files like pigz: gzip or zstd, in parallel on every core.
    #[command(
        long_about = "Compresses each FILE to FILE.gz (--format zstd: FILE.zst) and removes FILE \
(-k keeps it), like gzip and pigz; `-` or no FILE compresses standard input to standard output. \
The input is cut into blocks compressed in parallel on -p threads, with the server's parallel \
codecs: gzip as pigz does (128 KiB blocks, one gzip member), zstd as independent 4 MiB frames \
(one zstd stream, content checksums on). A progress bar is drawn on stderr when it is a terminal.\n\n\
Exit status: 0 all compressed, 1 an input could not be read or an output written (the others \
are still done), 2 a usage error.\n\n\
Examples:\n  hashpress compress -k big.log          # big.log.gz, big.log kept\n  \
hashpress compress --format zstd -l 19 a b\n  tar c dir | hashpress compress -p 2 > dir.tar.gz"
    )]
    Compress(CompressArgs),
    /// Decompresses .gz and .zst files (the format is read from the data).
    #[command(
        long_about = "Decompresses each FILE.gz or FILE.zst to FILE and removes the input \
(-k keeps it), like gzip -d; `-` or no FILE decompresses standard input to standard output. The \
format is detected from the data (gzip or zstd), concatenated members and frames are read whole, \
and every member's or frame's checksum is verified.\n\n\
Exit status: 0 all decompressed, 1 an input could not be read, was corrupt or an output could \
not be written (nothing is left under the output name), 2 a usage error."
    )]
    Decompress(DecompressArgs),
}

/// `hashpress compress`.
#[derive(Args, Debug, Clone)]
pub struct CompressArgs {
    /// Compression level: gzip 1..9 (default 6), zstd 1..19 (default 3).
    #[arg(short, long, value_name = "N")]
    pub level: Option<String>,
    /// Output format.
    #[arg(long, default_value = "gzip", value_name = "FORMAT", value_parser = ["gzip", "zstd"])]
    pub format: String,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Threads compressing blocks (default: one per core).
    #[arg(short = 'p', long = "processes", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Files; `-` is standard input.
    #[arg(value_name = "FILE", default_value = "-")]
    pub files: Vec<PathBuf>,
}

/// Where `compress` and `decompress` put their outputs (gzip's flags).
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Keep (do not delete) the input files.
    #[arg(short, long)]
    pub keep: bool,
    /// Write to standard output, keep the input files.
    #[arg(short = 'c', long = "stdout")]
    pub stdout: bool,
    /// Overwrite existing output files.
    #[arg(short, long)]
    pub force: bool,
}

/// `hashpress decompress`.
#[derive(Args, Debug, Clone)]
pub struct DecompressArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Files ending in .gz or .zst; `-` is standard input.
    #[arg(value_name = "FILE", default_value = "-")]
    pub files: Vec<PathBuf>,
}

/// `hashpress hash`.
#[derive(Args, Debug, Clone)]
pub struct HashArgs {
    /// Walk directories recursively (without it a directory is an error, as for sha256sum).
    #[arg(short, long)]
    pub recursive: bool,
    /// Digest algorithms, a comma list; the first one is printed in the text formats.
    #[arg(long, default_value = "sha256", value_name = "LIST")]
    pub alg: String,
    /// Output format.
    #[arg(long, default_value = "sha256sum", value_name = "FORMAT",
          value_parser = ["sha256sum", "bsd", "bagit", "ndjson"])]
    pub format: String,
    /// One JSON object per file (the NDJSON format, every requested digest).
    #[arg(long)]
    pub json: bool,
    /// Files and directories; `-` is standard input.
    #[arg(value_name = "PATH", default_value = "-")]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub walk: WalkArgs,
}

/// How `hash -r` and `check` walk a tree: `serve --dir-sort-names`, hidden
/// (only tests and the odd huge directory need it).
#[derive(Args, Debug, Clone)]
pub struct WalkArgs {
    #[arg(long, env = "HASHPRESS_DIR_SORT_NAMES", default_value_t = SORT_IN_MEMORY,
          value_name = "N", hide = true, value_parser = parse_positive)]
    pub dir_sort_names: usize,
}

impl WalkArgs {
    /// How the command line reads a tree: as the server does.
    pub fn options(&self) -> crate::tree::manifest::Options {
        crate::tree::manifest::Options {
            sort_in_memory: self.dir_sort_names,
        }
    }
}

/// `hashpress check`.
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// Also report files present under DIR but not listed, and fail on them.
    #[arg(long)]
    pub new: bool,
    /// The directory the manifest's paths are relative to.
    #[arg(
        short = 'C',
        long = "directory",
        default_value = ".",
        value_name = "DIR"
    )]
    pub dir: PathBuf,
    /// Algorithm of manifests that do not name one (sha256sum and BagIt lines).
    #[arg(long, default_value = "sha256", value_name = "ALG")]
    pub alg: String,
    /// Manifest format; detected when not given (BagIt must be named).
    #[arg(long, value_name = "FORMAT", value_parser = ["sha256sum", "bsd", "bagit", "ndjson"])]
    pub format: Option<String>,
    /// The manifest; `-` is standard input.
    #[arg(value_name = "MANIFEST")]
    pub manifest: PathBuf,
    #[command(flatten)]
    pub walk: WalkArgs,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines when stderr is a terminal, JSON otherwise.
    Auto,
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// TOML file with defaults for any flag below (keys are the flag names, e.g. `pool-threads = 4`).
    #[arg(long, env = "HASHPRESS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address and port to listen on. Loopback by default; port 0 picks a free port.
    #[arg(
        long,
        env = "HASHPRESS_LISTEN",
        default_value = "127.0.0.1:3000",
        value_name = "ADDR:PORT"
    )]
    pub listen: SocketAddr,

    /// What is served: a directory, or the objects under a prefix of an S3 bucket
    /// (`s3://BUCKET[/PREFIX]`). Only files or objects under it can be read (or written
    /// with --allow-write). For a bucket, credentials and the endpoint come from the AWS
    /// environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION
    /// (or AWS_DEFAULT_REGION), AWS_ENDPOINT_URL (an S3-compatible store such as garage,
    /// MinIO or R2; path-style addressing then) and AWS_ALLOW_HTTP=true for a plain-http
    /// endpoint. The server checks at start that the bucket answers, and exits with code
    /// 2 and a sentence saying what is wrong if it does not.
    #[arg(long, env = "HASHPRESS_ROOT", default_value = ".", value_name = "DIR|s3://BUCKET[/PREFIX]",
          value_parser = RootArg::parse)]
    pub root: RootArg,

    /// S3-compatible endpoint URL (e.g. http://127.0.0.1:3900 for garage); overrides
    /// AWS_ENDPOINT_URL. Buckets are then addressed in the path, not the host name.
    #[arg(long, env = "HASHPRESS_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// S3 region; overrides AWS_REGION and AWS_DEFAULT_REGION (default us-east-1;
    /// garage's default is `garage`).
    #[arg(long, env = "HASHPRESS_S3_REGION", value_name = "REGION")]
    pub s3_region: Option<String>,

    /// Retries of a failed request to the object store (connection errors, 5xx answers,
    /// timeouts), with exponential backoff from 100 ms, within --s3-deadline.
    #[arg(
        long,
        env = "HASHPRESS_S3_RETRIES",
        default_value = "3",
        value_name = "N"
    )]
    pub s3_retries: usize,

    /// Longest time one request to the object store may take, retries included; each
    /// attempt gets an equal share. Past it the client gets 504 storage_timeout; a store
    /// that is unreachable or failing answers 502 storage_unavailable, within the same
    /// bound.
    #[arg(long, env = "HASHPRESS_S3_DEADLINE", default_value = "30s", value_name = "DURATION",
          value_parser = parse_duration)]
    pub s3_deadline: Duration,

    /// Allow `POST /compress/{path}` to write `{path}.gz` under the root. Off by default.
    #[arg(long, env = "HASHPRESS_ALLOW_WRITE", value_name = "BOOL", num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_write: bool,

    /// Threads that run the HTTP side of each process (accepting, parsing, reading
    /// bodies). 0 = automatic: one per core in a single process; in cluster mode, cores
    /// divided by --workers (at least 1) in each worker, so that the workers together
    /// have one per core. With 1 thread the process runs tokio's current-thread
    /// scheduler: no work stealing, no wake-ups between threads, the cheapest way to
    /// serve many small requests. Long bodies are hashed on the CPU pool, not here.
    #[arg(
        long,
        env = "HASHPRESS_IO_THREADS",
        default_value = "0",
        value_name = "N"
    )]
    pub io_threads: usize,

    /// Threads in the CPU pool that hashes files and compresses. 0 = one per core.
    #[arg(
        long,
        env = "HASHPRESS_POOL_THREADS",
        default_value = "0",
        value_name = "N"
    )]
    pub pool_threads: usize,

    /// Longest a request may expect to wait for the CPU pool. A request whose first job
    /// would wait longer behind the work already queued (estimated from the jobs' measured
    /// run times) is refused at once with 503 and a Retry-After of the measured backlog;
    /// one that still waits this long is refused then. Requests already running are never
    /// shed. (units: ms, s, m; a bare number is seconds)
    #[arg(long, env = "HASHPRESS_MAX_QUEUE_WAIT", default_value = "1s", value_name = "DURATION",
          value_parser = parse_duration)]
    pub max_queue_wait: Duration,

    /// Most jobs waiting for a pool thread, a bound on the memory they hold (a job is at
    /// most 1 MiB of work); a request arriving when it is full gets 503 with Retry-After.
    /// 0 = 1024 per pool thread, far more than --max-queue-wait lets in for any real job.
    #[arg(
        long,
        env = "HASHPRESS_POOL_QUEUE",
        default_value = "0",
        value_name = "N"
    )]
    pub pool_queue: usize,

    /// How the pool threads yield the cores. low: niced by 5 below the threads answering
    /// requests, and a fair share against other programs. idle (SCHED_IDLE): they run only
    /// when no other thread wants a core, so a compression never delays a small request
    /// (p99 of a 64 KiB hash beside 8 gzip streams ~3 ms instead of ~8 ms), but any other
    /// busy program on the same CPUs (not in a cgroup of its own) starves them: use it on
    /// a host or in a container of its own.
    #[arg(
        long,
        env = "HASHPRESS_POOL_PRIORITY",
        value_enum,
        default_value = "low",
        value_name = "CLASS"
    )]
    pub pool_priority: PoolPriority,

    /// Largest request body accepted, in bytes (suffixes K, M, G, KiB, MiB, GiB), or
    /// `unlimited`. A larger Content-Length is refused with 413 before any byte is read;
    /// a chunked body is cut off with 413 when it passes the limit.
    #[arg(long, env = "HASHPRESS_MAX_BODY", default_value = "unlimited", value_name = "SIZE",
          value_parser = parse_limit)]
    pub max_body: Limit,

    /// Memory for cached file digests (`GET /hash-file`), in bytes (suffixes as for
    /// --max-body); 0 turns the cache off. Entries are keyed by device, inode, size, mtime
    /// and ctime, so a changed file is never answered from the cache.
    #[arg(long, env = "HASHPRESS_DIGEST_CACHE", default_value = "0", value_name = "SIZE",
          value_parser = parse_size)]
    pub digest_cache: u64,

    /// Names of one directory a manifest sorts in memory; a directory with more is read in
    /// sorted runs of this many, kept in an unnamed file in the temporary directory ($TMPDIR)
    /// and merged, so memory stays bounded whatever the directory's size.
    #[arg(long, env = "HASHPRESS_DIR_SORT_NAMES", default_value_t = SORT_IN_MEMORY,
          value_name = "N", value_parser = parse_positive)]
    pub dir_sort_names: usize,

    /// Largest request head (request line and headers), in bytes; larger gets 431.
    #[arg(long, env = "HASHPRESS_MAX_HEADER_BYTES", default_value = "64KiB", value_name = "SIZE",
          value_parser = parse_size)]
    pub max_header_bytes: u64,

    /// A client that has not sent the full head of its first request within this time of
    /// connecting is disconnected; later requests have --keepalive-timeout (units: ms, s,
    /// m; a bare number is seconds).
    #[arg(long, env = "HASHPRESS_HEADER_READ_TIMEOUT", default_value = "10s", value_name = "DURATION",
          value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// A request body that makes no progress for this long ends the request with 408.
    #[arg(long, env = "HASHPRESS_BODY_READ_TIMEOUT", default_value = "60s", value_name = "DURATION",
          value_parser = parse_duration)]
    pub body_read_timeout: Duration,

    /// Most connections served at once; beyond it new connections wait in the kernel's
    /// accept queue until one closes.
    #[arg(
        long,
        env = "HASHPRESS_MAX_CONNECTIONS",
        default_value = "10000",
        value_name = "N"
    )]
    pub max_connections: usize,

    /// Answers on one connection before it ends: the Nth answer carries `Connection: close`,
    /// so the client reconnects and the connection is placed again (on the least loaded
    /// worker). 0 = no limit. As nginx's `keepalive_requests`.
    #[arg(
        long,
        env = "HASHPRESS_KEEPALIVE_REQUESTS",
        default_value = "1000",
        value_name = "N"
    )]
    pub keepalive_requests: u64,

    /// Age of a connection past which its next answer carries `Connection: close`
    /// (0 = no limit). As nginx's `keepalive_time` (units: ms, s, m, h).
    #[arg(long, env = "HASHPRESS_KEEPALIVE_TIME", default_value = "1h", value_name = "DURATION",
          value_parser = parse_duration)]
    pub keepalive_time: Duration,

    /// An idle keep-alive connection is closed when its next request has not fully
    /// arrived within this time of the previous answer (the first request of a
    /// connection has --header-read-timeout instead). 0 turns keep-alive off: every
    /// answer carries `Connection: close`. As nginx's `keepalive_timeout`.
    #[arg(long, env = "HASHPRESS_KEEPALIVE_TIMEOUT", default_value = "75s", value_name = "DURATION",
          value_parser = parse_duration)]
    pub keepalive_timeout: Duration,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish before the
    /// process exits anyway.
    #[arg(long, env = "HASHPRESS_GRACE", default_value = "30s", value_name = "DURATION",
          value_parser = parse_duration)]
    pub grace: Duration,

    /// Worker processes. 0 = serve in this one process (no supervisor); N >= 1 = this
    /// process becomes a supervisor that binds the socket once and runs N worker
    /// processes sharing it, restarting crashed ones and reloading them on SIGHUP.
    #[arg(long, env = "HASHPRESS_WORKERS", default_value = "2", value_name = "N")]
    pub workers: usize,

    /// Cluster mode: how long a new worker may take to report ready (at start, after a
    /// crash, on SIGHUP reload) before it is killed, or the reload abandoned and the old
    /// workers kept (units: ms, s, m; a bare number is seconds).
    #[arg(long, env = "HASHPRESS_READY_TIMEOUT", default_value = "30s", value_name = "DURATION",
          value_parser = parse_duration)]
    pub ready_timeout: Duration,

    /// Cluster mode: the binary a SIGHUP reload starts the new workers from. By default
    /// the path this supervisor was started by (argv[0], made absolute against the start
    /// directory or looked up in PATH, symlinks not resolved), so all of these upgrade:
    /// swapping a `current -> releases/vN` symlink, renaming the old file aside and
    /// putting the new one in its place, or replacing the file in place.
    #[arg(long, env = "HASHPRESS_RELOAD_EXE", value_name = "PATH")]
    pub reload_exe: Option<PathBuf>,

    /// Cluster mode: a worker whose resident memory (VmRSS, checked every second) passes
    /// this size is recycled gracefully: a replacement starts, and once it is ready the
    /// old worker drains (suffixes K, M, G, KiB, MiB, GiB), or `unlimited` (the default).
    #[arg(long, env = "HASHPRESS_MAX_WORKER_RSS", default_value = "unlimited", value_name = "SIZE",
          value_parser = parse_limit)]
    pub max_worker_rss: Limit,

    /// Log one line per request (method, route, status, bytes in/out, duration; the
    /// supervisor adds the worker id) at info level on target `hashpress::access`.
    /// Off by default: at tens of thousands of requests a second the log costs more
    /// than the work.
    #[arg(long, env = "HASHPRESS_ACCESS_LOG", value_name = "BOOL", num_args = 0..=1,
          default_value = "false", default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub access_log: bool,

    /// Record request counts and latencies for /metrics. `false` exists only to measure
    /// what recording costs; byte, pool and process figures are kept either way.
    #[arg(long, env = "HASHPRESS_METRICS", value_name = "BOOL", num_args = 0..=1,
          default_value = "true", default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub metrics: bool,

    /// File of bearer tokens, one per line (blank and `#` lines ignored). When set, every
    /// endpoint except /healthz and /readyz requires `Authorization: Bearer <token>`.
    /// Re-read on SIGHUP. Without it, binding a non-loopback address prints a warning.
    #[arg(long, env = "HASHPRESS_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Serve /metrics on this separate address (no token asked: keep it private) instead
    /// of the main listener.
    #[arg(long, env = "HASHPRESS_ADMIN_LISTEN", value_name = "ADDR:PORT")]
    pub admin_listen: Option<SocketAddr>,

    /// Serve HTTPS (TLS 1.2 and 1.3, ALPN http/1.1) with this certificate chain, PEM, the
    /// server's own certificate first. Needs --tls-key. Re-read on SIGHUP: a single process
    /// swaps it for new connections; in cluster mode the reload's new workers load it, and a
    /// file that does not load fails the reload and keeps the old workers serving. The
    /// --admin-listen address stays plain HTTP.
    #[arg(long, env = "HASHPRESS_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "HASHPRESS_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Log filter: error, warn, info, debug, trace, or a tracing directive like `hashpress=debug`.
    #[arg(
        long,
        env = "HASHPRESS_LOG_LEVEL",
        default_value = "info",
        value_name = "FILTER"
    )]
    pub log_level: String,

    /// Log line format.
    #[arg(long, env = "HASHPRESS_LOG_FORMAT", default_value = "auto", value_enum)]
    pub log_format: LogFormat,
}

/// What is served: the directory or bucket, and how to reach a store.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// `--root`.
    pub root: RootArg,
    /// `--s3-endpoint`, `--s3-region`, `--s3-retries`, `--s3-deadline`.
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_retries: usize,
    pub s3_deadline: Duration,
}

/// What the handlers read, shared by every request of a process.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `--allow-write`.
    pub allow_write: bool,
    /// `--max-body`.
    pub max_body: Limit,
    /// `--body-read-timeout`.
    pub body_read_timeout: Duration,
    /// `--digest-cache`, in bytes; 0 = off.
    pub digest_cache: u64,
    /// `--dir-sort-names`.
    pub dir_sort_names: usize,
    /// `--access-log`: one line per request.
    pub access_log: bool,
    /// `--metrics`: false skips request recording (to measure its cost).
    pub record_metrics: bool,
    /// I/O threads of this process (`--io-threads` resolved): reported in `/metrics`.
    pub io_threads: usize,
}

/// How long a connection is kept alive (as nginx's `keepalive_*`).
#[derive(Clone, Copy, Debug)]
pub struct KeepAlive {
    /// Answers per connection; the last carries `Connection: close`. 0 = no limit.
    pub requests: u64,
    /// Age past which answers carry `Connection: close`. Zero = no limit.
    pub time: Duration,
    /// Time an idle connection has for its next request (head included).
    /// Zero turns keep-alive off.
    pub timeout: Duration,
}

/// Connection-level limits and timings.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Time a client has to send its first request head (`--header-read-timeout`).
    pub header_read_timeout: Duration,
    /// Largest request head in bytes (`--max-header-bytes`), request line
    /// and final blank line included; hyper answers 431 past it.
    pub max_header_bytes: usize,
    /// Connections served at once (`--max-connections`); more wait in the backlog.
    pub max_connections: usize,
    /// How long the drain may take after shutdown begins (`--grace`).
    pub grace: Duration,
    /// `--keepalive-requests`, `--keepalive-time`, `--keepalive-timeout`.
    pub keep_alive: KeepAlive,
}

/// The supervisor's own settings (cluster mode).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `--ready-timeout`.
    pub ready_timeout: Duration,
    /// `--reload-exe`.
    pub reload_exe: Option<PathBuf>,
    /// `--max-worker-rss`.
    pub max_worker_rss: Option<u64>,
}

/// `hashpress serve`, resolved once by `ServeArgs::resolve`: every "0 =
/// automatic" applied, every cross-flag check passed. Sections read by many
/// parts are shared (`Arc`), not copied.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--listen`.
    pub listen: SocketAddr,
    /// `--workers`: 0 = serve in this one process.
    pub workers: usize,
    /// `--log-level`, `--log-format`.
    pub log_level: String,
    pub log_format: LogFormat,
    pub storage: Arc<StorageConfig>,
    pub api: Arc<ApiConfig>,
    /// The CPU pool of each serving process (threads and queue resolved).
    pub pool: PoolLimits,
    pub connections: ConnectionLimits,
    /// `--token-file`: checked readable at resolve time.
    pub token_file: Option<PathBuf>,
    /// `--admin-listen` (single process only).
    pub admin_listen: Option<SocketAddr>,
    pub cluster: ClusterConfig,
    /// `--tls-cert` and `--tls-key`: HTTPS when set.
    pub tls: Option<TlsFiles>,
}

impl Config {
    /// What is reachable beyond this machine without a token: for the log,
    /// once it is set up.
    pub fn exposure_warnings(&self) -> Vec<String> {
        crate::http::auth::exposure_warnings(
            self.listen,
            self.admin_listen,
            self.token_file.is_some(),
        )
    }
}

impl ServeArgs {
    /// Checks the flags together and resolves them into the `Config` every
    /// part of the server reads. The only place defaults that depend on the
    /// machine or on other flags are computed.
    pub fn resolve(self) -> Result<Config, StartError> {
        self.validate()?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // In cluster mode the workers together get one I/O thread per core.
        let io_threads = match self.io_threads {
            0 => (cores / self.workers.max(1)).max(1),
            n => n,
        };
        let pool_threads = match self.pool_threads {
            0 => cores,
            n => n,
        };
        let pool_queue = match self.pool_queue {
            0 => 1024 * pool_threads,
            n => n,
        };
        Ok(Config {
            listen: self.listen,
            workers: self.workers,
            log_level: self.log_level,
            log_format: self.log_format,
            storage: Arc::new(StorageConfig {
                root: self.root,
                s3_endpoint: self.s3_endpoint,
                s3_region: self.s3_region,
                s3_retries: self.s3_retries,
                s3_deadline: self.s3_deadline,
            }),
            api: Arc::new(ApiConfig {
                allow_write: self.allow_write,
                max_body: self.max_body,
                body_read_timeout: self.body_read_timeout,
                digest_cache: self.digest_cache,
                dir_sort_names: self.dir_sort_names,
                access_log: self.access_log,
                record_metrics: self.metrics,
                io_threads,
            }),
            pool: PoolLimits {
                threads: pool_threads,
                queue: pool_queue,
                max_wait: self.max_queue_wait,
                priority: self.pool_priority,
            },
            connections: ConnectionLimits {
                header_read_timeout: self.header_read_timeout,
                max_header_bytes: self.max_header_bytes.min(usize::MAX as u64) as usize,
                max_connections: self.max_connections,
                grace: self.grace,
                keep_alive: KeepAlive {
                    requests: self.keepalive_requests,
                    time: self.keepalive_time,
                    timeout: self.keepalive_timeout,
                },
            },
            tls: match (self.tls_cert, self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                _ => None,
            },
            token_file: self.token_file,
            admin_listen: self.admin_listen,
            cluster: ClusterConfig {
                ready_timeout: self.ready_timeout,
                reload_exe: self.reload_exe,
                max_worker_rss: self.max_worker_rss.get(),
            },
        })
    }

    /// Every check that involves more than one flag, or a file a flag names.
    fn validate(&self) -> Result<(), StartError> {
        if self.workers > 0 && self.admin_listen.is_some() {
            return Err(StartError::config(
                "--admin-listen is served in single-process mode only; add --workers 0, or \
                 scrape /metrics on the main listener (any worker answers with the totals of all)",
            ));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(StartError::config("--tls-cert needs --tls-key")),
            (None, Some(_)) => return Err(StartError::config("--tls-key needs --tls-cert")),
            _ => {}
        }
        // A bad token file is the operator's to fix now, not in N workers.
        if let Some(path) = &self.token_file {
            crate::http::auth::Tokens::load(path).map_err(StartError::Config)?;
        }
        Ok(())
    }
}

/// A byte limit that may be absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Unlimited,
    Bytes(u64),
}

impl Limit {
    pub fn get(self) -> Option<u64> {
        match self {
            Limit::Unlimited => None,
            Limit::Bytes(n) => Some(n),
        }
    }
}

/// A count of at least 1.
fn parse_positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("'{s}' is not a whole number of at least 1")),
    }
}

fn parse_limit(s: &str) -> Result<Limit, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") || t.eq_ignore_ascii_case("none") {
        return Ok(Limit::Unlimited);
    }
    parse_size(t).map(Limit::Bytes)
}

/// Parses "1048576", "64K", "64KiB", "1.5G" (K = 1000, KiB = 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size; use e.g. 1048576, 64KiB, 1GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit '{other}'; use B, K, KiB, M, MiB, G, GiB"
            ));
        }
    };
    Ok((num * mult as f64) as u64)
}

/// Parses "30s", "500ms", "2m", "1h" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration; use e.g. 500ms, 30s, 2m"))?;
    let secs = match unit.trim() {
        "" | "s" => num,
        "ms" => num / 1000.0,
        "m" | "min" => num * 60.0,
        "h" => num * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit '{other}'; use ms, s, m or h"
            ));
        }
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Finds `--config FILE` (or HASHPRESS_CONFIG) before clap runs, and exports
/// the file's keys as environment variables that are not set yet.
///
/// Must run before any thread is started (it calls `set_var`).
pub fn apply_config_file(args: &[std::ffi::OsString]) -> Result<(), StartError> {
    let mut path: Option<PathBuf> = std::env::var_os("HASHPRESS_CONFIG").map(PathBuf::from);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            path = it.next().map(PathBuf::from);
        } else if let Some(v) = a.strip_prefix("--config=") {
            path = Some(PathBuf::from(v));
        }
    }
    let Some(path) = path else { return Ok(()) };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        StartError::config(format!("cannot read config file {}: {e}", path.display()))
    })?;
    let table: toml::Table = text.parse().map_err(|e| {
        StartError::config(format!(
            "config file {} is not valid TOML: {e}",
            path.display()
        ))
    })?;
    let cmd = Cli::command();
    let serve = cmd
        .find_subcommand("serve")
        .expect("serve subcommand exists");
    let known: Vec<String> = serve
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .filter(|l| l != "config" && l != "help")
        .collect();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        if !known.contains(&flag) {
            return Err(StartError::config(format!(
                "config file {}: unknown key '{key}'; known keys: {}",
                path.display(),
                known.join(", ")
            )));
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(StartError::config(format!(
                    "config file {}: key '{key}' must be a string, number or boolean, not {}",
                    path.display(),
                    other.type_str()
                )));
            }
        };
        let var = format!("HASHPRESS_{}", flag.replace('-', "_").to_ascii_uppercase());
        if std::env::var_os(&var).is_none() {
            // Called from main before the runtime or any thread starts.
            crate::sys::set_env_before_threads(&var, &value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("64k"), Ok(64_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert!(parse_size("12 parsecs").is_err());
        assert_eq!(parse_limit("unlimited"), Ok(Limit::Unlimited));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("soon").is_err());
    }

    fn serve_args(flags: &[&str]) -> ServeArgs {
        let argv = ["hashpress", "serve"].iter().chain(flags);
        match Cli::try_parse_from(argv).expect("valid flags").command {
            Command::Serve(args) => *args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn resolve_applies_the_automatic_defaults_once() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let c = serve_args(&["--workers", "0"]).resolve().unwrap();
        assert_eq!(c.api.io_threads, cores);
        assert_eq!(c.pool.threads, cores);
        assert_eq!(c.pool.queue, 1024 * cores);
        let c = serve_args(&["--workers", "2", "--pool-threads", "3"])
            .resolve()
            .unwrap();
        assert_eq!(c.api.io_threads, (cores / 2).max(1));
        assert_eq!(c.pool.queue, 3 * 1024);
    }

    #[test]
    fn validate_refuses_flags_that_do_not_go_together() {
        let e = serve_args(&["--workers", "2", "--admin-listen", "127.0.0.1:0"])
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("--admin-listen"), "{e}");
        let e = serve_args(&["--token-file", "/nonexistent/tokens"])
            .resolve()
            .unwrap_err();
        assert!(matches!(e, StartError::Config(_)), "{e}");
        let e = serve_args(&["--tls-cert", "c.pem"]).resolve().unwrap_err();
        assert!(e.to_string().contains("--tls-key"), "{e}");
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
