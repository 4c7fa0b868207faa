//! The `hashpress` binary: parse the command line, pick the role, run it.

use std::process::ExitCode;

use clap::Parser;
use hashpress::config::{Cli, Command, apply_config_file};
use hashpress::{supervisor, worker};

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
        Command::Serve(args) => {
            let args = *args;
            // Started by a supervisor: the worker role, whatever --workers says.
            if let Some(id) = worker::child::worker_id() {
                return worker::child::run(args, id);
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
                let listen = args.listen;
                return worker::run(
                    args,
                    worker::ListenerSource::Bind(listen),
                    worker::Hooks::single(),
                );
            }
            // Checked here, once, rather than in N crash-looping workers.
            if let Err(e) = hashpress::storage::Backend::open(&args, true) {
                eprintln!("hashpress: {e}");
                return ExitCode::from(2);
            }
            supervisor::run(args)
        }
    }
}
