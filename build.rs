//! Records the git commit the binary is built from, as the compile-time
//! variable `HASHPRESS_GIT_COMMIT` (`src/build_info.rs`), so that
//! `--version` and `hashpress_build_info` say which release a process runs.
//!
//! - In a git checkout: `git rev-parse HEAD`, and cargo is told to run this
//!   script again when HEAD moves (a commit, a checkout), so the value is
//!   never stale.
//! - In a `cargo package` tarball (or a crates.io download): cargo wrote the
//!   commit it packaged from into `.cargo_vcs_info.json`.
//! - Anywhere else: "unknown". Nothing here may fail the build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = from_git(&dir)
        .or_else(|| from_vcs_info(&dir))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=HASHPRESS_GIT_COMMIT={commit}");
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?;
    let s = s.trim();
    (out.status.success() && !s.is_empty()).then(|| s.to_string())
}

/// HEAD of the repository whose top level is `dir`. A tree unpacked inside
/// some other repository (`target/package/…` of `cargo package`) is not
/// that repository's HEAD.
fn from_git(dir: &Path) -> Option<String> {
    let top = PathBuf::from(git(dir, &["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    let commit = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    // What moves when HEAD does: HEAD itself (checkout), the branch's ref
    // file (commit), packed-refs (gc). Worktrees keep these in different
    // directories; git says where. Only existing files are named: cargo
    // would rerun on every build for a missing one.
    let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        watch.push(branch);
    }
    for name in watch {
        // Relative to `dir` (what `-C` made the working directory) or absolute.
        if let Some(p) = git(dir, &["rev-parse", "--git-path", &name]).map(|p| dir.join(p))
            && p.exists()
        {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    Some(commit)
}

/// `"sha1": "…"` from the file `cargo package` writes.
fn from_vcs_info(dir: &Path) -> Option<String> {
    let path = dir.join(".cargo_vcs_info.json");
    let text = std::fs::read_to_string(&path).ok()?;
    println!("cargo:rerun-if-changed={}", path.display());
    let rest = &text[text.find("\"sha1\"")? + 6..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let sha: String = rest
        .strip_prefix('"')?
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    (sha.len() >= 12).then(|| sha[..12].to_string())
}
