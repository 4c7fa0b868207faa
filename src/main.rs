//! The `hashpress` binary: parse the command line, pick the role, run it.

use std::process::ExitCode;

use clap::Parser;
use hashpress::config::{Cli, Command, apply_config_file};
use hashpress::supervisor;

/// Every request allocates and frees a few dozen small objects and one
/// 8 KiB read buffer; glibc's malloc spent a third of a tiny request's
/// instructions on them (callgrind), mimalloc's per-thread free lists far less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Err(e) = apply_config_file(&argv) {
        eprintln!("hashpress: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse_from(argv);
    match cli.command {
        Command::Hash(args) => hashpress::cli::hash(&args),
        Command::Check(args) => hashpress::cli::check(&args),
        Command::Compress(args) => hashpress::cli::compress(&args),
        Command::Decompress(args) => hashpress::cli::decompress(&args),
        Command::Serve(args) => {
            let args = *args;
            // Started by a supervisor: the worker role, whatever --workers says.
            if let Some(id) = supervisor::child::worker_id() {
                return supervisor::child::run(args, id);
            }
            if let Err(e) = hashpress::logging::init(&args.log_level, args.log_format) {
                eprintln!("hashpress: {e}");
                return ExitCode::from(2);
            }
            // Checked once, before any worker starts: a bad token file or an
            // exposed address without one is the operator's to fix now.
            if let Err(e) = hashpress::http::auth::check_startup(
                args.listen,
                args.admin_listen,
                args.token_file.as_deref(),
            ) {
                eprintln!("hashpress: {e}");
                return ExitCode::from(2);
            }
            if args.workers > 0 && args.admin_listen.is_some() {
                eprintln!(
                    "hashpress: --admin-listen is served in single-process mode only; \
                     add --workers 0, or scrape /metrics on the main listener (any worker \
                     answers with the totals of all)"
                );
                return ExitCode::from(2);
            }
            if args.workers == 0 {
                serve(args)
            } else {
                supervisor::run(args)
            }
        }
    }
}

/// `--workers 0`: serve in this process.
fn serve(args: hashpress::config::ServeArgs) -> ExitCode {
    let root = match hashpress::serve::open_root(&args, true) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let runtime = match hashpress::serve::io_runtime(args.effective_io_threads()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("hashpress: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().map_or(args.listen, |a| a);
        tracing::info!(
            root = %args.root,
            io_threads = args.effective_io_threads(),
            pool_threads = args.effective_pool_threads(),
            pool_queue = args.effective_pool_queue(),
            max_queue_wait_ms = args.max_queue_wait.as_millis() as u64,
            allow_write = args.allow_write,
            "listening on http://{addr}"
        );
        hashpress::serve::serve(args, listener, root).await;
        ExitCode::SUCCESS
    })
}
