//! The `hashpress` binary: parse the command line, pick the role, run it.
//! The one place that prints a start-up error and picks the exit status.

use std::process::ExitCode;

use clap::Parser;
use hashpress::config::{Cli, Command, ServeArgs, apply_config_file};
use hashpress::start_error::StartError;
use hashpress::{supervisor, worker};

/// Every request allocates and frees a few dozen small objects and one
/// 8 KiB read buffer; glibc's malloc spent a third of a tiny request's
/// instructions on them (callgrind), mimalloc's per-thread free lists far less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let started = apply_config_file(&argv).and_then(|()| match Cli::parse_from(argv).command {
        Command::Hash(args) => Ok(hashpress::cli::hash(&args)),
        Command::Check(args) => Ok(hashpress::cli::check(&args)),
        Command::Compress(args) => Ok(hashpress::cli::compress(&args)),
        Command::Decompress(args) => Ok(hashpress::cli::decompress(&args)),
        Command::Serve(args) => serve(*args).map(|()| ExitCode::SUCCESS),
    });
    started.unwrap_or_else(|e| {
        eprintln!("hashpress: {e}");
        e.exit_code()
    })
}

fn serve(args: ServeArgs) -> Result<(), StartError> {
    let config = args.resolve()?;
    // Started by a supervisor: the worker role, whatever --workers says.
    if let Some(id) = worker::child::worker_id() {
        return worker::child::run(config, id);
    }
    hashpress::logging::init(&config.log_level, config.log_format)?;
    for warning in config.exposure_warnings() {
        tracing::warn!("{warning}");
    }
    if config.workers == 0 {
        let listen = config.listen;
        return worker::run(
            config,
            worker::ListenerSource::Bind(listen),
            worker::Hooks::single(),
        );
    }
    // Checked here, once, rather than in N crash-looping workers.
    hashpress::storage::Backend::open(&config.storage, true).map_err(StartError::Config)?;
    if let Some(files) = &config.tls {
        hashpress::tls::Certs::load(files).map_err(StartError::Config)?;
    }
    supervisor::run(config)
}
