//! Which release this binary is: the crate version and the git commit it
//! was built from (`build.rs`; "unknown" outside a git checkout or a
//! packaged tarball). Shown by `--version`, written by every process into
//! the metrics region (`hashpress_build_info`), logged when a worker is ready.

/// The crate version, e.g. "0.1.0".
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit, 12 hex digits, or "unknown".
pub const COMMIT: &str = env!("HASHPRESS_GIT_COMMIT");
/// What `hashpress --version` prints after the program name.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("HASHPRESS_GIT_COMMIT"),
    ")"
);

/// A process's release, as recorded in the metrics region.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Build {
    pub version: String,
    pub commit: String,
}

impl Build {
    /// This binary's.
    pub fn own() -> Build {
        Build {
            version: VERSION.to_string(),
            commit: COMMIT.to_string(),
        }
    }

    /// `version` and `commit` joined by a newline (neither contains one):
    /// how the region stores it.
    pub fn encode(&self) -> Vec<u8> {
        format!("{}\n{}", self.version, self.commit).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Build> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (version, commit) = text.split_once('\n')?;
        Some(Build {
            version: version.to_string(),
            commit: commit.to_string(),
        })
    }
}

impl std::fmt::Display for Build {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (commit {})", self.version, self.commit)
    }
}
