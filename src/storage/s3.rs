//! The object-store backend: the objects under `s3://BUCKET/PREFIX`, through
//! `object_store`'s S3 client (SigV4, retries and backoff are its own).
//!
//! Reads: the first request is a GET of the first range; its answer gives
//! the size, the ETag and the last-modified time. Every later range carries
//! `If-Match` with that ETag, and its answer's ETag and size are checked as
//! well (some S3-compatible stores ignore `If-Match` on GET), so the bytes of
//! one read always come from one version: an object overwritten mid-read
//! fails with `Changed`, never a mixed digest. A few ranges are fetched
//! ahead by spawned tasks while the pool hashes the current one; the range
//! size shrinks as more objects are read at once, so the read-ahead of the
//! whole process stays within `READ_AHEAD_BUDGET`.
//!
//! Writes: output is buffered into parts; the multipart upload starts only
//! when the first part is full (a small output is one PUT). An upload that
//! is dropped before its commit finished (an error, a client that left) is
//! aborted by a task spawned from `Drop`: dropping a multipart upload does
//! not abort it on S3, and its parts would be stored, and billed, forever.
//!
//! Every request to the store, retries included, ends within `--s3-deadline`.
//! Error sentences are written here from the kind of failure and the HTTP
//! status; the store's own error text is never passed on or logged, since an
//! S3 error body may quote the signed request, session token included.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::{ClientConfigKey, HttpError, HttpErrorKind};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, BackoffConfig, GetOptions, GetRange, MultipartUpload, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
};
use tokio::task::{JoinHandle, JoinSet};

use super::s3_client::QuickAckConnector;
use super::{BoxFuture, Identity, Meta, Object, Piece, Storage, StorageError, Upload, Work};
use crate::config::StorageConfig;
use crate::metrics::{Slot, StorageOp, StorageOutcome};
use crate::root::RelPath;

/// Object bytes one process holds in read-ahead (ranges in flight or
/// fetched and not yet hashed), shared by every object being read. One
/// object alone gets 2 MiB ranges, 7 ahead: the store serves them in
/// parallel. Against 4 MiB ranges 3 ahead, with the same budget and RSS,
/// hashing a 256 MiB object went from ~200 to ~270 MB/s on s3s-fs (whose
/// CPU is the limit, and which answers a range on one core) and from ~440
/// to ~470 on garage (8 MiB ranges were no faster, and one 1 GiB read then
/// raised RSS by 66 MiB). Measured again on a 1 GiB object from a 1-node
/// garage (1 MiB blocks), where both sides are CPU bound on 2 cores: 4 MiB
/// ranges 3 ahead and 8 MiB 1 ahead were no faster (~445 and ~340 MB/s
/// against ~455), nor was one long GET of the rest of the object (~340-370
/// against ~410-460: garage streams one GET a block or two ahead at most),
/// and garage spent the same CPU per MB on our ranges as on rclone's single
/// stream (~0.23 ticks/MB either way).
const READ_AHEAD_BUDGET: u64 = 16 << 20;
/// Most ranges fetched ahead of the one being consumed (fewer when many
/// objects are read at once and ranges are at their floor).
const READ_AHEAD: usize = 7;
/// Range sizes: large enough that a round trip per range is cheap against
/// its transfer, small enough that many concurrent reads fit the budget.
const RANGE_MIN: u64 = 256 << 10;
const RANGE_MAX: u64 = 8 << 20;
/// Stores keep objects in blocks and read and verify a block whole for any
/// byte of it (garage: 1 MiB blocks, each checksummed on read; MinIO: 1 MiB
/// erasure blocks). A range that ends inside a block costs the store that
/// block twice: with 3.1 MiB ranges garage spent ~25% more CPU per byte
/// than with ranges cut on 1 MiB boundaries. Ranges of at least this size
/// end on a multiple of it; smaller ones are powers of two, which divide it.
const RANGE_ALIGN: u64 = 1 << 20;
// Ranges are also whole multiples of parallel gzip's block, so the pieces
// cut from them are whole blocks too (a short piece would be a short block).
const _: () = assert!(
    RANGE_ALIGN.is_multiple_of(crate::kernel::gzip::BLOCK as u64)
        && RANGE_MIN.is_multiple_of(crate::kernel::gzip::BLOCK as u64)
        && RANGE_MIN.is_power_of_two()
);
/// S3's smallest part (all parts but the last must be at least this).
const PART_MIN: usize = 5 << 20;
/// Parts uploading at once per upload.
const PARTS_IN_FLIGHT: usize = 2;
/// S3 allows 10,000 parts: part sizes double every 1,000 parts, so an
/// output of any size fits while small outputs use small parts.
const PARTS_PER_SIZE: usize = 1000;
/// How long a stopping server waits for its aborts of abandoned uploads.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// `s3://BUCKET[/PREFIX]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub bucket: String,
    /// Without leading or trailing '/'; empty for the whole bucket.
    pub prefix: String,
}

impl Location {
    /// Parses what follows `s3://`.
    pub fn parse(rest: &str) -> Result<Location, String> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // S3's bucket naming rules: 3-63 of a-z, 0-9, '.', '-'.
        let valid = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !valid {
            return Err(format!(
                "'{bucket}' is not a bucket name (3 to 63 characters: a-z, 0-9, '.', '-'); \
                 use --root s3://BUCKET[/PREFIX]"
            ));
        }
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty() {
            RelPath::parse(prefix)
                .ok()
                .filter(|p| p.display() == prefix)
                .ok_or_else(|| {
                    format!(
                        "the prefix '{prefix}' must be a plain key path: no empty, '.' or '..' \
                         segments, no control characters, no backslashes"
                    )
                })?;
        }
        Ok(Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}", self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// The store's settings: `--root`, the `--s3-*` flags and the AWS environment.
pub struct Config {
    location: Location,
    builder: AmazonS3Builder,
    /// For messages: the endpoint, or the AWS default.
    endpoint: String,
    deadline: Duration,
}

/// Where a missing credential can come from, for the "no credentials" check.
const CREDENTIAL_SOURCES: [AmazonS3ConfigKey; 3] = [
    AmazonS3ConfigKey::WebIdentityTokenFile,
    AmazonS3ConfigKey::ContainerCredentialsRelativeUri,
    AmazonS3ConfigKey::ContainerCredentialsFullUri,
];

impl Config {
    pub fn from_args(location: &Location, args: &StorageConfig) -> Result<Config, String> {
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&location.bucket);
        if let Some(endpoint) = &args.s3_endpoint {
            b = b.with_endpoint(endpoint);
        }
        if let Some(region) = &args.s3_region {
            b = b.with_region(region);
        }
        let get = |b: &AmazonS3Builder, k: AmazonS3ConfigKey| b.get_config_value(&k);
        let endpoint = get(&b, AmazonS3ConfigKey::Endpoint);
        if let Some(e) = &endpoint {
            // An S3-compatible endpoint (garage, MinIO, R2...) names buckets in
            // the path: most of them have no per-bucket DNS names.
            b = b.with_virtual_hosted_style_request(false);
            let http_allowed = get(&b, AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            if e.starts_with("http://") && !http_allowed {
                return Err(format!(
                    "the S3 endpoint {e} is plain http: set AWS_ALLOW_HTTP=true to allow it"
                ));
            }
        }
        let has_keys = (
            get(&b, AmazonS3ConfigKey::AccessKeyId).is_some(),
            get(&b, AmazonS3ConfigKey::SecretAccessKey).is_some(),
        );
        let skip_signature = get(&b, AmazonS3ConfigKey::SkipSignature)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let other_source = CREDENTIAL_SOURCES.iter().any(|k| get(&b, *k).is_some());
        match has_keys {
            (true, true) => {}
            (true, false) | (false, true) => {
                return Err(
                    "incomplete S3 credentials: set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                        .into(),
                );
            }
            (false, false) if skip_signature || other_source => {}
            (false, false) => {
                return Err(format!(
                    "no credentials for {location}: set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones), or \
                     AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, or AWS_SKIP_SIGNATURE=true \
                     for a public bucket"
                ));
            }
        }
        // Retries with exponential backoff inside the deadline; each attempt
        // gets its share of it, so a store that accepts connections and then
        // hangs is retried rather than waited on for the whole deadline.
        let deadline = args.s3_deadline;
        let attempts = args.s3_retries as u32 + 1;
        let attempt = (deadline / attempts).max(Duration::from_millis(200));
        let connect = attempt.min(Duration::from_secs(5));
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        b = b
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: (deadline / 4).max(Duration::from_millis(100)),
                    base: 2.0,
                },
                max_retries: args.s3_retries,
                retry_timeout: deadline,
            })
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                ms(attempt),
            )
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                ms(connect),
            );
        // A plain-http store (local or on the LAN) is read through a client
        // whose sockets acknowledge at once: see `s3_client` for the 40 ms
        // stall per range it removes.
        if endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
        {
            b = b.with_http_connector(QuickAckConnector {
                timeout: attempt,
                connect_timeout: connect,
            });
        }
        let endpoint = endpoint.unwrap_or_else(|| {
            let region = get(&b, AmazonS3ConfigKey::Region)
                .or_else(|| get(&b, AmazonS3ConfigKey::DefaultRegion))
                .unwrap_or_else(|| "us-east-1".into());
            format!("https://s3.{region}.amazonaws.com")
        });
        Ok(Config {
            location: location.clone(),
            builder: b,
            endpoint: without_userinfo(&endpoint),
            deadline,
        })
    }

    /// At start: one listing of at most one key under the prefix, on a
    /// runtime of its own (the serving runtime does not exist yet).
    pub fn check(&self) -> Result<(), String> {
        let store = self.build()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime to check the store: {e}"))?;
        let prefix =
            (!self.location.prefix.is_empty()).then(|| format!("{}/", self.location.prefix));
        let opts = PaginatedListOptions {
            max_keys: Some(1),
            ..Default::default()
        };
        let answer = rt.block_on(async {
            tokio::time::timeout(self.deadline, store.list_paginated(prefix.as_deref(), opts)).await
        });
        drop(store);
        // Not a plain drop: that would wait for a name lookup still running on
        // a blocking thread (a dead DNS server), however long it takes.
        rt.shutdown_timeout(Duration::from_millis(100));
        let (loc, endpoint) = (&self.location, &self.endpoint);
        let bucket = &loc.bucket;
        match answer {
            Ok(Ok(_)) => Ok(()),
            Err(_) => Err(format!(
                "the object store at {endpoint} did not answer within --s3-deadline ({:?}) \
                 when listing {loc}",
                self.deadline
            )),
            Ok(Err(e)) => Err(match classify(&e) {
                StorageError::NotFound => {
                    format!("bucket '{bucket}' does not exist at {endpoint}")
                }
                StorageError::Denied(why) => {
                    format!("access denied to bucket '{bucket}' at {endpoint}: {why}")
                }
                StorageError::Timeout(why) | StorageError::Unavailable(why) => {
                    format!("the object store at {endpoint} cannot be reached: {why}")
                }
                other => format!("listing {loc} at {endpoint} failed: {other}"),
            }),
        }
    }

    fn build(&self) -> Result<AmazonS3, String> {
        self.builder
            .clone()
            .build()
            .map_err(|e| format!("the S3 settings for {} are not valid: {e}", self.location))
    }
}

/// `https://user:pass@host/` → `https://host/`: endpoints go into messages.
fn without_userinfo(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s && !url[s + 3..at].contains('/') => {
            format!("{}{}", &url[..s + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

pub struct S3Storage {
    shared: Arc<Shared>,
}

/// What every object and upload of one storage needs.
struct Shared {
    store: AmazonS3,
    location: Location,
    bucket: Arc<str>,
    deadline: Duration,
    metrics: &'static Slot,
    /// The serving runtime: `Drop` of an upload spawns its abort here, from
    /// whatever thread the upload was dropped on.
    runtime: tokio::runtime::Handle,
    /// Aborts of abandoned uploads still running; `close` waits for them.
    aborts: Mutex<JoinSet<()>>,
}

impl S3Storage {
    /// Builds the client; must run inside the serving runtime.
    pub fn new(config: Config, metrics: &'static Slot) -> Result<S3Storage, String> {
        let store = config.build()?;
        Ok(S3Storage {
            shared: Arc::new(Shared {
                store,
                bucket: Arc::from(config.location.bucket.as_str()),
                location: config.location,
                deadline: config.deadline,
                metrics,
                runtime: tokio::runtime::Handle::current(),
                aborts: Mutex::new(JoinSet::new()),
            }),
        })
    }
}

impl Shared {
    /// The object path of `key`: under the prefix, whatever the key says
    /// (it was checked by `RelPath::parse`: no `..`, no leading '/').
    fn path(&self, key: &RelPath) -> Result<Path, StorageError> {
        let Some(key) = key.as_os_str().to_str() else {
            return Err(StorageError::BadKey(
                "object keys are UTF-8; this path is not".into(),
            ));
        };
        let full = if self.location.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.location.prefix)
        };
        Path::parse(&full).map_err(|_| {
            StorageError::BadKey("this path cannot name an object in the store".into())
        })
    }

    /// One request to the store, bounded by the deadline, recorded in the metrics.
    async fn call<T>(
        &self,
        op: StorageOp,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T, StorageError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.deadline, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(StorageError::Timeout(format!(
                "the object store did not answer within --s3-deadline ({:?})",
                self.deadline
            ))),
        };
        let outcome = match &result {
            Ok(_) => StorageOutcome::Ok,
            Err(e) => outcome(e),
        };
        self.metrics.record_storage(op, outcome, started.elapsed());
        if let Err(e) = &result
            && !matches!(outcome, StorageOutcome::NotFound | StorageOutcome::Changed)
        {
            tracing::warn!(op = op.name(), outcome = outcome.name(), error = %e, "storage request failed");
        }
        result
    }

    /// Spawns the abort of an abandoned multipart upload.
    fn abort_later(self: &Arc<Self>, mut upload: Multipart) {
        let shared = Arc::clone(self);
        let task = async move {
            // Parts still uploading would land after the abort: stop them first.
            upload.parts.shutdown().await;
            let _ = shared
                .call(StorageOp::AbortUpload, upload.upload.abort())
                .await;
        };
        let mut aborts = self.aborts.lock().unwrap_or_else(|p| p.into_inner());
        // Reap finished aborts so the set does not grow with the uptime.
        while aborts.try_join_next().is_some() {}
        aborts.spawn_on(task, &self.runtime);
    }
}

/// The `outcome` label of a failed request.
fn outcome(e: &StorageError) -> StorageOutcome {
    match e {
        StorageError::NotFound => StorageOutcome::NotFound,
        StorageError::Denied(_) | StorageError::Forbidden(_) => StorageOutcome::Denied,
        StorageError::Changed(_) => StorageOutcome::Changed,
        StorageError::Timeout(_) => StorageOutcome::Timeout,
        _ => StorageOutcome::Unavailable,
    }
}

/// Turns the client's error into ours, with a sentence of our own (see the
/// module comment: the store's text is not passed on).
fn classify(e: &object_store::Error) -> StorageError {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => StorageError::NotFound,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => denied(e),
        E::Precondition { .. } | E::NotModified { .. } => {
            StorageError::Changed("was overwritten while it was read".into())
        }
        _ => {
            if let Some(kind) = transport_error(e) {
                return match kind {
                    HttpErrorKind::Timeout => StorageError::Timeout(
                        "the object store did not answer in time, after the retries".into(),
                    ),
                    HttpErrorKind::Connect => StorageError::Unavailable(
                        "cannot connect to the object store, after the retries".into(),
                    ),
                    _ => StorageError::Unavailable(
                        "the connection to the object store failed, after the retries".into(),
                    ),
                };
            }
            // Some calls (listing) leave the status in a generic error.
            match (http_status(e), s3_code(e)) {
                (Some(401 | 403), _) => denied(e),
                (Some(404), Some(code)) if code == "NoSuchBucket" => StorageError::NotFound,
                (Some(status), code) => StorageError::Unavailable(format!(
                    "the object store answered HTTP {status}{}",
                    code.map_or(String::new(), |c| format!(" ({c})"))
                )),
                (None, _) => {
                    StorageError::Unavailable("the object store's answer could not be used".into())
                }
            }
        }
    }
}

/// Credentials or permissions refused, said as precisely as the S3 error
/// code allows.
fn denied(e: &object_store::Error) -> StorageError {
    StorageError::Denied(match s3_code(e).as_deref() {
        Some("InvalidAccessKeyId") => {
            "the store does not know the access key id (InvalidAccessKeyId)".into()
        }
        Some("SignatureDoesNotMatch") => {
            "the secret access key does not match the key id (SignatureDoesNotMatch)".into()
        }
        Some("ExpiredToken") => "the session token has expired (ExpiredToken)".into(),
        Some(code) => format!("the store refused access ({code})"),
        None => "the store refused access (HTTP 403)".into(),
    })
}

/// The transport failure under a client error, if that is what it was.
fn transport_error(e: &object_store::Error) -> Option<HttpErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<HttpError>() {
            return Some(h.kind());
        }
        cur = err.source();
    }
    None
}

/// The HTTP status in a client error's text ("status code: 503 ..."); the
/// client keeps it in a private type.
fn http_status(e: &object_store::Error) -> Option<u16> {
    let text = e.to_string();
    let at = text.find("status code: ")? + "status code: ".len();
    text.get(at..at + 3)?.parse().ok()
}

/// The S3 error code (`<Code>NoSuchBucket</Code>`) in a client error's
/// text: a word from a fixed vocabulary, safe to show.
fn s3_code(e: &object_store::Error) -> Option<String> {
    let text = e.to_string();
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    let code = &text[start..start + len];
    (!code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| code.to_string())
}

/// A store that answered a range request on an empty object with "416 Range
/// Not Satisfiable", or with a whole (empty) body.
fn refused_range(e: &object_store::Error) -> bool {
    http_status(e) == Some(416) || e.to_string().contains("non-partial response")
}

impl Storage for S3Storage {
    fn describe(&self) -> String {
        self.shared.location.to_string()
    }

    fn open(&self, key: &RelPath) -> Work<Box<dyn Object>> {
        let shared = Arc::clone(&self.shared);
        let path = self.shared.path(key);
        Work::Async(Box::pin(async move {
            let object = S3Object::open(shared, path?).await?;
            Ok(Box::new(object) as Box<dyn Object>)
        }))
    }

    fn create(&self, key: &RelPath) -> Work<Box<dyn Upload>> {
        let shared = Arc::clone(&self.shared);
        let path = self.shared.path(key);
        // Nothing to ask the store yet: the upload starts with the first part.
        Work::Async(Box::pin(async move {
            Ok(Box::new(S3Upload {
                shared,
                path: path?,
                written: Vec::new(),
                part: Vec::new(),
                multipart: None,
                committed: false,
            }) as Box<dyn Upload>)
        }))
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut aborts =
                std::mem::take(&mut *self.shared.aborts.lock().unwrap_or_else(|p| p.into_inner()));
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                while aborts.join_next().await.is_some() {}
            })
            .await;
        })
    }
}

/// Objects being read by this process: they share `READ_AHEAD_BUDGET`.
static READERS: AtomicUsize = AtomicUsize::new(0);

/// Counts one object being read for as long as it lives.
struct Reader;

impl Reader {
    fn start() -> Reader {
        READERS.fetch_add(1, Ordering::Relaxed);
        Reader
    }

    /// The size of the next range: the budget split between the objects
    /// being read, each holding the range it consumes and `READ_AHEAD` more.
    fn range(&self) -> u64 {
        let readers = READERS.load(Ordering::Relaxed).max(1) as u64;
        let share = READ_AHEAD_BUDGET / ((READ_AHEAD as u64 + 1) * readers);
        let size = if share >= RANGE_ALIGN {
            share - share % RANGE_ALIGN
        } else {
            // The largest power of two within the share (0 below 1: clamped).
            share.checked_ilog2().map_or(0, |b| 1 << b)
        };
        size.clamp(RANGE_MIN, RANGE_MAX)
    }

    /// How many ranges to keep in flight: `READ_AHEAD`, fewer once ranges
    /// are at their floor and the budget would not hold that many (at
    /// least one, so every read goes on).
    fn depth(&self) -> usize {
        let readers = READERS.load(Ordering::Relaxed).max(1) as u64;
        let fits = READ_AHEAD_BUDGET / (self.range() * readers);
        (fits.saturating_sub(1) as usize).clamp(1, READ_AHEAD)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        READERS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A range being fetched by a task of its own, so that it progresses while
/// the request waits on the pool. Dropped, it cancels the fetch.
struct Fetch(JoinHandle<Result<Bytes, StorageError>>);

impl Future for Fetch {
    type Output = Result<Bytes, StorageError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| {
            r.unwrap_or_else(|_| {
                Err(StorageError::Unavailable(
                    "a range fetch stopped unexpectedly".into(),
                ))
            })
        })
    }
}

impl Drop for Fetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct S3Object {
    shared: Arc<Shared>,
    path: Path,
    meta: Meta,
    /// The version every range must come from (`If-Match`).
    etag: Arc<str>,
    /// Fetched bytes not handed out yet. Keeps its whole range buffer,
    /// consumed or not, until the next range replaces it (see `spare`).
    current: Bytes,
    /// Range buffers whose bytes have all been used, for the next fetches:
    /// a read recycles a handful of buffers instead of allocating one per
    /// range. (Allocated on I/O threads and freed by the pool threads that
    /// used them last, fresh buffers were held back by the allocator's
    /// per-thread caches: 100 MiB of RSS for a 32 MiB read-ahead.)
    spare: Vec<BytesMut>,
    /// Ranges being fetched, in order.
    ahead: VecDeque<Fetch>,
    /// The first byte not requested yet.
    requested: u64,
    reader: Reader,
}

impl S3Object {
    async fn open(shared: Arc<Shared>, path: Path) -> Result<S3Object, StorageError> {
        let reader = Reader::start();
        let first = reader.range();
        let options = GetOptions {
            range: Some(GetRange::Bounded(0..first)),
            ..Default::default()
        };
        let answer = shared
            .call(StorageOp::Get, async {
                match shared.store.get_opts(&path, options).await {
                    Ok(r) => {
                        let meta = r.meta.clone();
                        let range = r.range.clone();
                        r.bytes().await.map(|b| Some((meta, range, b)))
                    }
                    // An empty object has no byte 0 to start a range at.
                    Err(e) if refused_range(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await?;
        let (meta, current) = match answer {
            Some((meta, range, bytes)) => {
                if bytes.len() as u64 != range.end - range.start {
                    return Err(StorageError::Unavailable(
                        "the object store sent fewer bytes than it announced".into(),
                    ));
                }
                (meta, bytes)
            }
            None => {
                let meta = shared
                    .call(StorageOp::Head, shared.store.head(&path))
                    .await?;
                if meta.size != 0 {
                    return Err(StorageError::Unavailable(
                        "the object store refused to read the object's first range".into(),
                    ));
                }
                (meta, Bytes::new())
            }
        };
        shared.metrics.add_storage_bytes(true, current.len() as u64);
        let etag: Arc<str> = Arc::from(meta.e_tag.clone().unwrap_or_default());
        let identity = Identity::Object {
            bucket: Arc::clone(&shared.bucket),
            key: Arc::from(path.to_string()),
            etag: Arc::clone(&etag),
            size: meta.size,
            last_modified_ns: meta.last_modified.timestamp_nanos_opt().unwrap_or(0) as i128,
        };
        Ok(S3Object {
            requested: current.len() as u64,
            current,
            shared,
            path,
            meta: Meta {
                size: meta.size,
                identity,
            },
            etag,
            ahead: VecDeque::new(),
            spare: Vec::new(),
            reader,
        })
    }

    /// Keeps `Reader::depth` ranges in flight until the end of the object.
    fn top_up(&mut self) {
        while self.ahead.len() < self.reader.depth() && self.requested < self.meta.size {
            let start = self.requested;
            let size = self.reader.range();
            let mut end = start + size;
            // Back on a block boundary after smaller ranges (more readers
            // then) left `start` inside a block.
            if size >= RANGE_ALIGN {
                end -= end % RANGE_ALIGN;
            }
            let end = end.min(self.meta.size);
            self.requested = end;
            let (shared, path, etag, size) = (
                Arc::clone(&self.shared),
                self.path.clone(),
                Arc::clone(&self.etag),
                self.meta.size,
            );
            let buf = self.spare.pop().unwrap_or_default();
            self.ahead.push_back(Fetch(tokio::spawn(async move {
                fetch_range(&shared, &path, &etag, size, start..end, buf).await
            })));
        }
    }
}

/// One range of one version of the object, read into `buf`.
async fn fetch_range(
    shared: &Shared,
    path: &Path,
    etag: &str,
    size: u64,
    range: std::ops::Range<u64>,
    mut buf: BytesMut,
) -> Result<Bytes, StorageError> {
    let want = range.end - range.start;
    let options = GetOptions {
        range: Some(GetRange::Bounded(range)),
        // Stores without ETags: nothing to pin, but the size check below stays.
        if_match: (!etag.is_empty()).then(|| etag.to_string()),
        ..Default::default()
    };
    let answer = shared
        .call(StorageOp::Get, async {
            let r = shared.store.get_opts(path, options).await?;
            // What `If-Match` should have refused, refused here: counted
            // as `changed` like a 412 from the store.
            if r.meta.e_tag.as_deref().unwrap_or_default() != etag || r.meta.size != size {
                return Err(object_store::Error::Precondition {
                    path: path.to_string(),
                    source: "the ETag or the size differs from the first answer's".into(),
                });
            }
            buf.clear();
            buf.reserve(want as usize);
            let mut body = r.into_stream();
            while let Some(frame) = body.next().await {
                buf.extend_from_slice(&frame?);
            }
            Ok(buf.freeze())
        })
        .await;
    let bytes = match answer {
        Ok(b) => b,
        Err(StorageError::NotFound) => {
            return Err(StorageError::Changed(
                "was deleted while it was read".into(),
            ));
        }
        Err(e) => return Err(e),
    };
    if bytes.len() as u64 != want {
        return Err(StorageError::Unavailable(
            "the object store sent fewer bytes than it announced".into(),
        ));
    }
    shared.metrics.add_storage_bytes(true, want);
    Ok(bytes)
}

impl Object for S3Object {
    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn next(&mut self, max: usize) -> BoxFuture<'_, Result<Option<Piece>, StorageError>> {
        Box::pin(async move {
            loop {
                // Ranges keep coming while the current one is consumed.
                self.top_up();
                if !self.current.is_empty() {
                    let n = max.min(self.current.len());
                    // A slice, then advance: `current` keeps its reference
                    // to the range buffer even once empty, so the buffer
                    // can be reclaimed below rather than freed by a job.
                    let piece = self.current.slice(..n);
                    self.current.advance(n);
                    return Ok(Some(Piece::Bytes(piece)));
                }
                let Some(fetch) = self.ahead.pop_front() else {
                    return Ok(None);
                };
                let used = std::mem::replace(&mut self.current, fetch.await?);
                // Reclaimed only once no job holds a piece of it any more.
                if let Ok(buf) = used.try_into_mut()
                    && self.spare.len() <= READ_AHEAD
                {
                    self.spare.push(buf);
                }
            }
        })
    }

    fn identity_after(&self) -> Result<Identity, StorageError> {
        // Every range was checked against the first answer's version.
        Ok(self.meta.identity.clone())
    }
}

/// A multipart upload under way.
struct Multipart {
    upload: Box<dyn MultipartUpload>,
    /// Parts uploading, each in a task of its own.
    parts: JoinSet<Result<(), StorageError>>,
    started: usize,
}

struct S3Upload {
    shared: Arc<Shared>,
    path: Path,
    /// Output from `write` not yet handed to a part.
    written: Vec<u8>,
    /// The part being filled.
    part: Vec<u8>,
    /// `None` until the first part is full.
    multipart: Option<Multipart>,
    committed: bool,
}

fn gzip_attributes() -> Attributes {
    Attributes::from_iter([(Attribute::ContentType, "application/gzip")])
}

impl S3Upload {
    /// The size of the next part (see `PARTS_PER_SIZE`).
    fn part_size(&self) -> usize {
        let n = self.multipart.as_ref().map_or(0, |m| m.started);
        PART_MIN << (n / PARTS_PER_SIZE).min(10)
    }

    /// Starts uploading `part`, beginning the multipart upload if need be.
    async fn send_part(&mut self, part: Vec<u8>) -> Result<(), StorageError> {
        if self.multipart.is_none() {
            let options = PutMultipartOptions {
                attributes: gzip_attributes(),
                ..Default::default()
            };
            let upload = self
                .shared
                .call(
                    StorageOp::CreateUpload,
                    self.shared.store.put_multipart_opts(&self.path, options),
                )
                .await?;
            self.multipart = Some(Multipart {
                upload,
                parts: JoinSet::new(),
                started: 0,
            });
        }
        let m = self.multipart.as_mut().expect("started above");
        let len = part.len() as u64;
        let put = m.upload.put_part(PutPayload::from(part));
        m.started += 1;
        let shared = Arc::clone(&self.shared);
        m.parts.spawn(async move {
            shared.call(StorageOp::UploadPart, put).await?;
            shared.metrics.add_storage_bytes(false, len);
            Ok(())
        });
        Ok(())
    }

    /// Waits until at most `limit` parts are uploading.
    async fn drain_parts(&mut self, limit: usize) -> Result<(), StorageError> {
        let Some(m) = self.multipart.as_mut() else {
            return Ok(());
        };
        while m.parts.len() > limit {
            match m.parts.join_next().await {
                Some(Ok(Ok(()))) | None => {}
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(_)) => {
                    return Err(StorageError::Unavailable(
                        "a part upload stopped unexpectedly".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), StorageError> {
        self.part.append(&mut self.written);
        let last = std::mem::take(&mut self.part);
        if self.multipart.is_none() {
            // Small enough for one part: one PUT, atomic by itself.
            let len = last.len() as u64;
            let options = PutOptions {
                attributes: gzip_attributes(),
                ..Default::default()
            };
            let put = self
                .shared
                .store
                .put_opts(&self.path, PutPayload::from(last), options);
            self.shared.call(StorageOp::Put, put).await?;
            self.shared.metrics.add_storage_bytes(false, len);
            self.committed = true;
            return Ok(());
        }
        if !last.is_empty() {
            self.send_part(last).await?;
        }
        self.drain_parts(0).await?;
        let m = self.multipart.as_mut().expect("checked above");
        self.shared
            .call(StorageOp::CompleteUpload, m.upload.complete())
            .await?;
        self.committed = true;
        Ok(())
    }
}

impl Upload for S3Upload {
    fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.written.extend_from_slice(data);
        Ok(())
    }

    fn write_now(&mut self, data: &[u8]) -> Option<Result<(), StorageError>> {
        // Into memory: parts are sent by `flush`, on the request's task.
        Some(self.write(data))
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            if self.part.is_empty() {
                std::mem::swap(&mut self.part, &mut self.written);
            } else {
                self.part.append(&mut self.written);
            }
            while self.part.len() >= self.part_size() {
                let size = self.part_size();
                let rest = self.part.split_off(size);
                let part = std::mem::replace(&mut self.part, rest);
                self.send_part(part).await?;
                self.drain_parts(PARTS_IN_FLIGHT - 1).await?;
            }
            Ok(())
        })
    }

    fn commit(mut self: Box<Self>) -> Work<()> {
        Work::Async(Box::pin(async move { self.finish().await }))
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        if !self.committed
            && let Some(m) = self.multipart.take()
        {
            tracing::info!(key = %self.path, "aborting an unfinished multipart upload");
            self.shared.abort_later(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let l = Location::parse("my-bucket").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("my-bucket", ""));
        let l = Location::parse("b.c1/x y/é/").unwrap();
        assert_eq!(l.prefix, "x y/é");
        for bad in ["", "ab", "UPPER", "b/a/../c", "b//x", "b/./x", "b/a\\c"] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_lose_their_userinfo() {
        assert_eq!(
            without_userinfo("https://k:s@host:9000/x"),
            "https://host:9000/x"
        );
        assert_eq!(without_userinfo("http://host/a@b"), "http://host/a@b");
    }

    #[test]
    fn read_ahead_shares_the_budget() {
        let mut readers = vec![Reader::start()];
        // Alone: whole blocks.
        let alone = readers[0].range();
        assert!(
            alone >= RANGE_ALIGN && alone.is_multiple_of(RANGE_ALIGN),
            "{alone}"
        );
        // Shared: each holds the range it consumes and READ_AHEAD more,
        // within the budget; below a block, a power of two that divides it.
        readers.extend((0..7).map(|_| Reader::start()));
        let range = readers[0].range();
        assert!(range * (READ_AHEAD as u64 + 1) * 8 <= READ_AHEAD_BUDGET);
        assert!(range < RANGE_ALIGN && range.is_power_of_two(), "{range}");
        assert_eq!(readers[0].depth(), READ_AHEAD);
        // Past the floor, each read still gets a useful range, and fewer
        // of them ahead keep the budget.
        readers.extend((0..8).map(|_| Reader::start()));
        assert_eq!(readers[0].range(), RANGE_MIN);
        let depth = readers[0].depth() as u64;
        assert!((depth + 1) * RANGE_MIN * 16 <= READ_AHEAD_BUDGET, "{depth}");
        assert!(depth >= 2, "{depth}");
        readers.extend((0..100).map(|_| Reader::start()));
        assert_eq!(readers[0].range(), RANGE_MIN);
        assert_eq!(readers[0].depth(), 1);
    }
}
