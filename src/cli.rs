//! `hashpress hash` and `hashpress check`: the manifests and checks of the
//! server, on the command line, without a server. The same walk, pipeline,
//! formats and merge as `GET /manifest` and `POST /manifest/{dir}/check`,
//! on a CPU pool of one thread per core in this process. `hashpress
//! compress` and `hashpress decompress`: the server's codecs and parallel
//! compression (`BlockPipeline`) as a pigz-like tool.

use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use indicatif::ProgressBar;

use crate::block_pipeline::BlockPipeline;
use crate::config::{CheckArgs, CompressArgs, DecompressArgs, HashArgs, OutputArgs};
use crate::cpu_pool::{CpuPool, PoolError, PoolLimits, PoolPriority};
use crate::kernel::codec::Format as CodecFormat;
use crate::kernel::{AlgorithmList, BlockCutter, Codec, MultiHasher};
use crate::metrics::Slot;
use crate::progress;
use crate::root::Root;
use crate::tree::check::{Check, Verdict};
use crate::tree::format::{self, Format};
use crate::tree::manifest::{Manifest, Options, Record, hash_file, ndjson_line};

/// Exit statuses, as coreutils' checksum tools use them.
const MISMATCH: u8 = 1;
const TROUBLE: u8 = 2;

/// The runtime and pool of `hash` and `check`: runs of a few milliseconds
/// where the tree is big, whose pool is all the program does.
fn runtime() -> io::Result<(tokio::runtime::Runtime, CpuPool)> {
    // Before the pool threads' first allocations (`sys::no_huge_pages`).
    crate::sys::no_huge_pages();
    runtime_with(None, PoolPriority::Normal)
}

/// The runtime and a pool of `threads` (default: one per core).
fn runtime_with(
    threads: Option<usize>,
    priority: PoolPriority,
) -> io::Result<(tokio::runtime::Runtime, CpuPool)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cores =
        threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // A command line never sheds: it has all the time it needs.
    let pool = CpuPool::new(
        PoolLimits {
            threads: cores,
            queue: 4096,
            max_wait: Duration::from_secs(365 * 24 * 3600),
            priority,
        },
        Box::leak(Slot::new_boxed()),
    );
    Ok((rt, pool))
}

/// Ends a `hash` or `check` run once its output is out. Tearing the process
/// down (waking the pool threads to exit, the allocator handing its arenas
/// back with `madvise`, each a TLB shootdown of the other cores) was a
/// third of the CPU time of a run on an empty tree; the kernel frees it all
/// at once anyway.
fn end(status: u8) -> ! {
    let flushed = io::stdout().lock().flush();
    crate::sys::exit_now(if flushed.is_ok() { status } else { TROUBLE })
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
            let bar = progress::bytes(None);
            let options = args.walk.options();
            let ok = rt.block_on(walk_into(
                &pool, path, &algs, format, options, &stdout, &bar,
            ));
            bar.finish_and_clear();
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
    end(status)
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
    match hash_file(pool.lane(), name, file, algs.clone()).await {
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
    options: Options,
    stdout: &io::Stdout,
    bar: &ProgressBar,
) -> bool {
    let root = match Root::open(dir) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("hashpress: {}: {e}", dir.display());
            return false;
        }
    };
    let mut m = match Manifest::start(pool, root, None, algs, None, options).await {
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
        if let Record::File { digests, .. } = &r {
            bar.inc(digests.bytes);
        }
        ok &= bar.suspend(|| write_record(&mut out, format, algs, &prefix, r));
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
        let options = args.walk.options();
        let mut m = match Manifest::start(&pool, root, None, &algs, None, options).await {
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
        end(0)
    } else {
        end(MISMATCH)
    }
}

/// Why one input of `compress` or `decompress` failed: a sentence for stderr.
struct Trouble(String);

impl From<io::Error> for Trouble {
    fn from(e: io::Error) -> Trouble {
        Trouble(e.to_string())
    }
}

impl From<PoolError> for Trouble {
    fn from(e: PoolError) -> Trouble {
        Trouble(format!("the compression threads failed: {e:?}"))
    }
}

/// Where one input's output goes: standard output, or a file that appears
/// under its name only once complete (a hidden temporary beside it, renamed).
enum Sink {
    Stdout(io::StdoutLock<'static>),
    File {
        tmp: Temporary,
        dest: PathBuf,
        file: io::BufWriter<std::fs::File>,
    },
}

/// A temporary output file, removed when dropped unless renamed into place:
/// after an error or a corrupt input, nothing is left behind.
struct Temporary(Option<PathBuf>);

impl Drop for Temporary {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Sink {
    /// Refuses an existing `dest` unless `force`.
    fn create(dest: &Path, force: bool) -> Result<Sink, Trouble> {
        if !force && std::fs::symlink_metadata(dest).is_ok() {
            return Err(Trouble(format!(
                "{} already exists (-f overwrites it)",
                dest.display()
            )));
        }
        let name = dest.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dest.with_file_name(format!(".{name}.hashpress-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Trouble(format!("{}: {e}", tmp.display())))?;
        Ok(Sink::File {
            tmp: Temporary(Some(tmp)),
            dest: dest.to_path_buf(),
            file: io::BufWriter::with_capacity(1 << 20, file),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(s) => s,
            Sink::File { file, .. } => file,
        }
    }

    /// The output complete: flushed, given the input's permissions and
    /// modification time (as gzip does), synced and renamed into place.
    fn commit(self, like: Option<&std::fs::Metadata>) -> Result<(), Trouble> {
        match self {
            Sink::Stdout(mut s) => Ok(s.flush()?),
            Sink::File {
                mut tmp,
                dest,
                file,
            } => {
                let path = tmp.0.clone().expect("not renamed yet");
                let done = (|| {
                    let file = file.into_inner().map_err(|e| e.into_error())?;
                    if let Some(m) = like {
                        file.set_permissions(m.permissions())?;
                        if let Ok(t) = m.modified() {
                            file.set_modified(t)?;
                        }
                    }
                    file.sync_all()?;
                    std::fs::rename(&path, &dest)
                })();
                done.map_err(|e| Trouble(format!("{}: {e}", dest.display())))?;
                tmp.0 = None;
                Ok(())
            }
        }
    }
}

/// Reads until `buf` is full or the input ends; the bytes read.
fn read_full(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Compresses `input` into `out` with the server's parallel path: blocks
/// cut as they are read, compressed on the pool, written in order.
async fn compress_stream(
    pool: &CpuPool,
    codec: Codec,
    input: &mut dyn Read,
    out: &mut dyn Write,
    bar: &ProgressBar,
) -> Result<(), Trouble> {
    let mut blocks = BlockPipeline::<Trouble>::new(pool.lane(), codec, pool.threads());
    out.write_all(&blocks.header())?;
    let mut cutter = Some(BlockCutter::new(codec));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        while let Some(c) = cutter.as_mut().filter(|_| !blocks.full()) {
            let n = read_full(input, &mut buf)?;
            let mut rest = &buf[..n];
            while let Some(b) = c.fill(&mut rest) {
                blocks.push(move || Ok(b.compress()));
            }
            // A short read is the end of the input.
            if n < buf.len()
                && let Some(b) = cutter.take().and_then(BlockCutter::end)
            {
                blocks.push(move || Ok(b.compress()));
            }
        }
        match blocks.next().await {
            Some(b) => {
                let b = b?;
                out.write_all(&b.out)?;
                bar.inc(b.bytes_in);
            }
            None if cutter.is_none() => break,
            None => {}
        }
    }
    out.write_all(&blocks.trailer())?;
    Ok(())
}

/// An input of `compress`/`decompress`: standard input, or a file with its
/// metadata (for the progress total and the output's mode and time).
fn open_input(path: &Path) -> Result<(Box<dyn Read>, Option<std::fs::Metadata>), Trouble> {
    if path.as_os_str() == "-" {
        return Ok((Box::new(io::stdin().lock()), None));
    }
    let file =
        std::fs::File::open(path).map_err(|e| Trouble(format!("{}: {e}", path.display())))?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Trouble(format!("{}: not a regular file", path.display())));
    }
    Ok((Box::new(file), Some(meta)))
}

/// Total bytes of the regular files among `paths`, for the progress bar;
/// `None` when standard input is one of them.
fn total_size(paths: &[PathBuf]) -> Option<u64> {
    paths
        .iter()
        .map(|p| (p.as_os_str() != "-").then(|| std::fs::metadata(p).map_or(0, |m| m.len())))
        .sum()
}

/// Compressed data is not for a terminal (gzip and pigz refuse too).
fn refuse_terminal(to_stdout: bool) -> Option<ExitCode> {
    use std::io::IsTerminal;
    (to_stdout && io::stdout().is_terminal()).then(|| {
        fail("compressed data not written to a terminal (use -c with a redirection or a pipe)")
    })
}

/// `hashpress compress [-l N] [-k] [-c] [-f] [--format F] [-p N] FILE...`
pub fn compress(args: &CompressArgs) -> ExitCode {
    let format = CodecFormat::parse(&args.format).expect("clap checked the value");
    let codec = match format.codec(args.level.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let to_stdout = args.output.stdout || args.files.iter().any(|f| f.as_os_str() == "-");
    if let Some(code) = refuse_terminal(to_stdout) {
        return code;
    }
    let threads = args.threads.map(usize::from);
    // Its pool only yields to the thread reading and writing the streams.
    let (rt, pool) = match runtime_with(threads, PoolPriority::Low) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    each_input(&args.files, &args.output, |path, to_stdout, bar| {
        let (mut input, meta) = open_input(path)?;
        let mut sink = if to_stdout {
            Sink::Stdout(io::stdout().lock())
        } else {
            if path.to_string_lossy().ends_with(format.suffix()) {
                return Err(Trouble(format!(
                    "{} already has the {} suffix",
                    path.display(),
                    format.suffix()
                )));
            }
            let mut dest = path.as_os_str().to_owned();
            dest.push(format.suffix());
            Sink::create(Path::new(&dest), args.output.force)?
        };
        rt.block_on(compress_stream(
            &pool,
            codec,
            &mut input,
            sink.writer(),
            bar,
        ))?;
        sink.commit(meta.as_ref())
    })
}

/// Runs `one` on each input with the progress bar, as gzip does: an input
/// that fails is reported and the others are still done; one that succeeds
/// is removed unless kept (-k, -c, standard input).
fn each_input(
    files: &[PathBuf],
    output: &OutputArgs,
    mut one: impl FnMut(&Path, bool, &ProgressBar) -> Result<(), Trouble>,
) -> ExitCode {
    let bar = progress::bytes(total_size(files));
    let mut status = 0u8;
    for path in files {
        let stdin = path.as_os_str() == "-";
        let to_stdout = output.stdout || stdin;
        match one(path, to_stdout, &bar) {
            Ok(()) if !(output.keep || to_stdout) => {
                if let Err(e) = std::fs::remove_file(path) {
                    bar.suspend(|| eprintln!("hashpress: {}: {e}", path.display()));
                    status = MISMATCH;
                }
            }
            Ok(()) => {}
            Err(Trouble(e)) => {
                bar.suspend(|| eprintln!("hashpress: {}: {e}", shown_input(path)));
                status = MISMATCH;
            }
        }
    }
    bar.finish_and_clear();
    ExitCode::from(status)
}

fn shown_input(path: &Path) -> String {
    if path.as_os_str() == "-" {
        "(stdin)".into()
    } else {
        path.display().to_string()
    }
}

/// `hashpress decompress [-k] [-c] [-f] FILE...`
pub fn decompress(args: &DecompressArgs) -> ExitCode {
    each_input(&args.files, &args.output, |path, to_stdout, bar| {
        // The output name first: a wrong name is refused before anything is read.
        let dest = if to_stdout {
            None
        } else {
            let name = path.to_string_lossy();
            let stem = CodecFormat::ALL
                .iter()
                .find_map(|f| name.strip_suffix(f.suffix()).filter(|s| !s.is_empty()));
            let Some(stem) = stem else {
                return Err(Trouble(format!(
                    "{name}: unknown suffix (expected .gz or .zst; -c writes to standard output)"
                )));
            };
            Some(PathBuf::from(stem))
        };
        let (input, meta) = open_input(path)?;
        let mut input = io::BufReader::with_capacity(1 << 20, BarReader(input, bar));
        let head = input.fill_buf()?;
        let Some(format) = CodecFormat::sniff(head) else {
            return Err(Trouble("not in gzip or zstd format".into()));
        };
        let mut sink = match &dest {
            None => Sink::Stdout(io::stdout().lock()),
            Some(d) => Sink::create(d, args.output.force)?,
        };
        let mut decoder = format.decoder(input)?;
        io::copy(&mut decoder, sink.writer())
            .map_err(|e| Trouble(format!("corrupt {} data: {e}", format.name())))?;
        sink.commit(meta.as_ref())
    })
}

/// Counts the compressed bytes read, for the progress bar.
struct BarReader<'a>(Box<dyn Read>, &'a ProgressBar);

impl Read for BarReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read(buf)?;
        self.1.inc(n as u64);
        Ok(n)
    }
}
