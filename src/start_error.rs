//! Why `hashpress serve` could not start. Every start-up step returns this
//! one type; `main` alone prints it and turns it into the exit status, so
//! nothing else writes to stderr or exits.

use std::fmt;
use std::process::ExitCode;

#[derive(Debug)]
pub enum StartError {
    /// The operator's to fix (exit status 2): a flag, a combination of
    /// flags, a file, a store that does not answer. The text is a sentence.
    Config(String),
    /// The system refused (exit status 1): binding the port, a runtime, a
    /// memory region, signal handlers. `what` says what we were doing.
    System {
        what: String,
        source: std::io::Error,
    },
}

impl StartError {
    pub fn config(msg: impl Into<String>) -> StartError {
        StartError::Config(msg.into())
    }

    pub fn system(what: impl Into<String>, source: std::io::Error) -> StartError {
        StartError::System {
            what: what.into(),
            source,
        }
    }

    /// 2 for a configuration error (as clap's usage errors), 1 otherwise.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            StartError::Config(_) => ExitCode::from(2),
            StartError::System { .. } => ExitCode::FAILURE,
        }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(m) => f.write_str(m),
            StartError::System { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for StartError {}
