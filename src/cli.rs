//! `hashpress hash` and `hashpress check`: the manifests and checks of the
//! server, on the command line, without a server. The same walk, pipeline,
//! formats and merge as `GET /manifest` and `POST /manifest/{dir}/check`,
//! on a CPU pool of one thread per core in this process.

use std::io::{self, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{CheckArgs, HashArgs};
use crate::cpu_pool::{CpuPool, PoolLimits};
use crate::kernel::{AlgorithmList, MultiHasher};
use crate::metrics::Slot;
use crate::root::Root;
use crate::tree::check::{Check, Verdict};
use crate::tree::format::{self, Format};
use crate::tree::manifest::{Manifest, Record, hash_file, ndjson_line};

/// Exit statuses, as coreutils' checksum tools use them.
const MISMATCH: u8 = 1;
const TROUBLE: u8 = 2;

fn runtime() -> io::Result<(tokio::runtime::Runtime, CpuPool)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // A command line never sheds: it has all the time it needs.
    let pool = CpuPool::new(
        PoolLimits {
            threads: cores,
            queue: 4096,
            max_wait: Duration::from_secs(365 * 24 * 3600),
            // Nothing small to keep waiting on the command line.
            express: false,
        },
        Box::leak(Slot::new_boxed()),
    );
    Ok((rt, pool))
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("hashpress: {msg}");
    ExitCode::from(TROUBLE)
}

/// Writes one record the way `format` says, with its path under `prefix`.
fn write_record(
    out: &mut Vec<u8>,
    format: Format,
    algs: &AlgorithmList,
    prefix: &[u8],
    r: Record,
) -> bool {
    let with_prefix = |p: &[u8]| {
        let mut full = prefix.to_vec();
        full.extend_from_slice(p);
        full
    };
    match r {
        Record::File { path, digests } => {
            let path = with_prefix(&path);
            if format == Format::Ndjson {
                ndjson_line(&Record::File { path, digests }, algs, out);
            } else {
                let primary = algs.as_slice()[0];
                let hex = &digests
                    .entries
                    .iter()
                    .find(|(a, _)| *a == primary)
                    .expect("computed")
                    .1;
                format::text_line(format, primary, hex, &path, out);
            }
            true
        }
        Record::Skipped { .. } => true,
        Record::Error { path, error } => {
            eprintln!(
                "hashpress: {}: {}",
                String::from_utf8_lossy(&with_prefix(&path)),
                error.message()
            );
            false
        }
    }
}

/// `hashpress hash [-r] [--alg LIST] [--format F] [--json] PATH...`
pub fn hash(args: &HashArgs) -> ExitCode {
    let algs = match AlgorithmList::parse(&args.alg) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let format = if args.json {
        Format::Ndjson
    } else {
        Format::parse(&args.format).expect("clap checked the value")
    };
    let (rt, pool) = match runtime() {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    let mut status = 0u8;
    let stdout = io::stdout();
    for path in &args.paths {
        let mut out = Vec::new();
        let shown = path.as_os_str().as_encoded_bytes();
        if shown == b"-" {
            let mut h = MultiHasher::new(&algs);
            let mut buf = vec![0u8; 1 << 20];
            let mut stdin = io::stdin().lock();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => h.update(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return fail(format!("-: {e}")),
                }
            }
            let r = Record::File {
                path: b"-".to_vec(),
                digests: h.finish(),
            };
            write_record(&mut out, format, &algs, b"", r);
        } else if path.is_dir() {
            if !args.recursive {
                eprintln!("hashpress: {}: Is a directory (add -r)", path.display());
                status = TROUBLE;
                continue;
            }
            let ok = rt.block_on(walk_into(&pool, path, &algs, format, &stdout));
            if !ok {
                status = TROUBLE;
            }
        } else {
            // One file: the walk of its directory would list its siblings too;
            // open it through a root on its parent, the same confinement.
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            let name = path.file_name().map(|n| n.as_encoded_bytes().to_vec());
            let r = match (Root::open(parent.unwrap_or(Path::new("."))), name) {
                (Ok(root), Some(name)) => rt.block_on(one_file(&pool, root, name, &algs)),
                (Err(e), _) => Err(e.to_string()),
                (_, None) => Err("not a file name".into()),
            };
            match r {
                Ok(digests) => {
                    let r = Record::File {
                        path: shown.to_vec(),
                        digests,
                    };
                    write_record(&mut out, format, &algs, b"", r);
                }
                Err(e) => {
                    eprintln!("hashpress: {}: {e}", path.display());
                    status = TROUBLE;
                }
            }
        }
        if stdout.lock().write_all(&out).is_err() {
            return ExitCode::from(TROUBLE);
        }
    }
    ExitCode::from(status)
}

/// One file's digests, hashed on the pool like a manifest's files.
async fn one_file(
    pool: &CpuPool,
    root: Root,
    name: Vec<u8>,
    algs: &AlgorithmList,
) -> Result<crate::kernel::Digests, String> {
    // RelPath takes URL spelling: every byte escaped is any name.
    let escaped: String = name.iter().map(|b| format!("%{b:02X}")).collect();
    let rel = crate::root::RelPath::parse(&escaped).map_err(|_| "not a file name".to_string())?;
    let shown = String::from_utf8_lossy(&name).into_owned();
    let (file, _) = root
        .open_file(&rel)
        .map_err(|e| crate::error::ApiError::from_open(e, &shown).message())?;
    match hash_file(pool.lane(), name, file, algs.clone(), None).await {
        Record::File { digests, .. } => Ok(digests),
        Record::Error { error, .. } => Err(error.message()),
        Record::Skipped { why, .. } => Err(why.to_string()),
    }
}

/// Walks `dir`, writing each record as it comes; false if any file failed.
async fn walk_into(
    pool: &CpuPool,
    dir: &Path,
    algs: &AlgorithmList,
    format: Format,
    stdout: &io::Stdout,
) -> bool {
    let root = match Root::open(dir) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("hashpress: {}: {e}", dir.display());
            return false;
        }
    };
    let mut m = match Manifest::start(pool, root, None, algs, None).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("hashpress: {}: {}", dir.display(), e.message());
            return false;
        }
    };
    let mut prefix = dir.as_os_str().as_encoded_bytes().to_vec();
    while prefix.last() == Some(&b'/') && prefix.len() > 1 {
        prefix.pop();
    }
    if prefix != b"/" {
        prefix.push(b'/');
    }
    let mut ok = true;
    let mut out = Vec::with_capacity(64 << 10);
    while let Some(r) = m.next().await {
        ok &= write_record(&mut out, format, algs, &prefix, r);
        if out.len() >= 32 << 10 {
            if stdout.lock().write_all(&out).is_err() {
                return false;
            }
            out.clear();
        }
    }
    stdout.lock().write_all(&out).is_ok() && ok
}

/// `hashpress check [--new] MANIFEST [-C DIR]`
pub fn check(args: &CheckArgs) -> ExitCode {
    let alg = match AlgorithmList::parse(&args.alg) {
        Ok(a) => a.as_slice()[0],
        Err(e) => return fail(e),
    };
    let format = args
        .format
        .as_deref()
        .map(|f| Format::parse(f).expect("clap checked the value"));
    let text = if args.manifest.as_os_str() == "-" {
        let mut v = Vec::new();
        if let Err(e) = io::stdin().read_to_end(&mut v) {
            return fail(format!("-: {e}"));
        }
        v
    } else {
        match std::fs::read(&args.manifest) {
            Ok(v) => v,
            Err(e) => return fail(format!("{}: {e}", args.manifest.display())),
        }
    };
    let listed = match format::parse(&text, format, alg) {
        Ok((_, l)) => l,
        Err(e) => {
            return fail(format!(
                "{}: line {}: {}",
                args.manifest.display(),
                e.line,
                e.message
            ));
        }
    };
    let mut names: Vec<&str> = Vec::new();
    for l in listed.values() {
        for (a, _) in &l.digests {
            if !names.contains(&a.name()) {
                names.push(a.name());
            }
        }
    }
    if names.is_empty() {
        names.push(alg.name());
    }
    let algs = AlgorithmList::parse(&names.join(",")).expect("known names");
    let root = match Root::open(&args.dir) {
        Ok(r) => Arc::new(r),
        Err(e) => return fail(format!("{}: {e}", args.dir.display())),
    };
    let (rt, pool) = match runtime() {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    let show_new = args.new;
    let counts = rt.block_on(async {
        let mut m = match Manifest::start(&pool, root, None, &algs, None).await {
            Ok(m) => m,
            Err(e) => return Err(e.message()),
        };
        let mut c = Check::new(listed);
        let mut out = Vec::new();
        let stdout = io::stdout();
        let mut emit = |p: &[u8], v: &Verdict| {
            let word = match v {
                Verdict::Ok => "OK",
                Verdict::Changed { .. } => "FAILED",
                Verdict::Missing | Verdict::Error { .. } => "FAILED open or read",
                Verdict::New { .. } if show_new => "NEW",
                Verdict::New { .. } => return,
            };
            format::shown_path(p, &mut out);
            out.extend_from_slice(b": ");
            out.extend_from_slice(word.as_bytes());
            out.push(b'\n');
        };
        while let Some(r) = m.next().await {
            c.record(r, &mut emit);
        }
        c.finish(&mut emit);
        let _ = stdout.lock().write_all(&out);
        Ok(c.counts)
    });
    let counts = match counts {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if counts.changed > 0 {
        eprintln!(
            "hashpress: WARNING: {} computed checksum(s) did NOT match",
            counts.changed
        );
    }
    if counts.missing + counts.errors > 0 {
        eprintln!(
            "hashpress: WARNING: {} listed file(s) could not be read",
            counts.missing + counts.errors
        );
    }
    if counts.pass() && !(args.new && counts.new > 0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(MISMATCH)
    }
}
