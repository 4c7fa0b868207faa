//! tracing setup: human lines on a terminal, JSON otherwise or on request.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::start_error::StartError;

pub fn init(filter: &str, format: LogFormat) -> Result<(), StartError> {
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| StartError::config(format!("invalid --log-level '{filter}': {e}")))?;
    let json = wants_json(format);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
    result.map_err(|e| StartError::config(format!("cannot install the logger: {e}")))
}

/// Whether `format` means JSON lines for this process's stderr. The
/// supervisor resolves `auto` once and hands the answer to its workers,
/// whose stderr is a pipe to it and would otherwise always look like JSON.
pub fn wants_json(format: LogFormat) -> bool {
    match format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    }
}
