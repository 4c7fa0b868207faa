//! Which file a SIGHUP reload executes.
//!
//! Operators deploy a new release by changing what a *path* names: they
//! point a `current` symlink at `releases/v2`, rename the old file aside and
//! move the new one in, or replace the file in place. The running process's
//! own executable (`/proc/self/exe`) follows none of the first two: it names
//! the inode we were loaded from, wherever it now is. So the supervisor
//! remembers, at start, the path it was invoked by (argv[0] made absolute,
//! symlinks deliberately not resolved) and a reload executes that path
//! again, seeing whatever it names by then. `--reload-exe` overrides it.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// The path a reload executes: `flag` (`--reload-exe`) if given, else the
/// path we were invoked by; made absolute against the start directory so
/// that it means the same thing whatever happens later.
pub fn reload_path(flag: Option<&Path>) -> Result<PathBuf, String> {
    let cwd =
        std::env::current_dir().map_err(|e| format!("cannot read the current directory: {e}"))?;
    if let Some(p) = flag {
        return Ok(absolute(p, &cwd));
    }
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let path_var = std::env::var_os("PATH");
    invoked(&argv0, &cwd, path_var.as_deref()).ok_or_else(|| {
        format!(
            "cannot tell which file started this process (argv[0] {argv0:?} is neither a path \
             nor found in PATH); pass --reload-exe"
        )
    })
}

/// The file `argv0` named when we were started: a path (it has a `/`),
/// taken relative to `cwd`, or a bare name, looked up in `path_var` the way
/// a shell or `execvp` does. The first directory holding an executable file
/// of that name wins; an empty entry means the current directory.
pub fn invoked(argv0: &OsStr, cwd: &Path, path_var: Option<&OsStr>) -> Option<PathBuf> {
    if argv0.is_empty() {
        return None;
    }
    if argv0.as_encoded_bytes().contains(&b'/') {
        return Some(absolute(Path::new(argv0), cwd));
    }
    std::env::split_paths(path_var?)
        .map(|dir| absolute(&dir.join(argv0), cwd))
        .find(|p| is_executable_file(p))
}

/// `p` joined to `cwd` if relative, with `.` components dropped. `..` is
/// kept: removing it would be resolving the symlinks it may follow.
fn absolute(p: &Path, cwd: &Path) -> PathBuf {
    cwd.join(p)
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

fn is_executable_file(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn exe(path: &Path) {
        std::fs::write(path, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn a_path_is_made_absolute_without_resolving_symlinks() {
        let cwd = Path::new("/srv/app");
        let got = |a: &str| invoked(OsStr::new(a), cwd, None);
        assert_eq!(
            got("/srv/app/current/hashpress"),
            Some("/srv/app/current/hashpress".into())
        );
        assert_eq!(
            got("./current/hashpress"),
            Some("/srv/app/current/hashpress".into())
        );
        assert_eq!(
            got("current/./bin/../hashpress"),
            Some("/srv/app/current/bin/../hashpress".into())
        );
        assert_eq!(got(""), None);
        // A bare name without PATH is nothing we can find.
        assert_eq!(got("hashpress"), None);

        // Through a real symlink: the link's path, not its target.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("v1")).unwrap();
        exe(&dir.path().join("v1/hashpress"));
        symlink("v1", dir.path().join("current")).unwrap();
        assert_eq!(
            invoked(OsStr::new("current/hashpress"), dir.path(), None),
            Some(dir.path().join("current/hashpress"))
        );
    }

    #[test]
    fn a_bare_name_is_looked_up_in_path_like_execvp() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        for d in [&a, &b, &c] {
            std::fs::create_dir(d).unwrap();
        }
        // a: not executable; b: a directory of that name; c: the one.
        std::fs::write(a.join("hashpress"), b"").unwrap();
        std::fs::create_dir(b.join("hashpress")).unwrap();
        exe(&c.join("hashpress"));
        let path = std::env::join_paths([&a, &b, &c]).unwrap();
        assert_eq!(
            invoked(OsStr::new("hashpress"), Path::new("/"), Some(&path)),
            Some(c.join("hashpress"))
        );
        // A relative PATH entry (and the empty one, "here") is relative to cwd.
        assert_eq!(
            invoked(
                OsStr::new("hashpress"),
                dir.path(),
                Some(OsStr::new("/nonexistent:c"))
            ),
            Some(c.join("hashpress"))
        );
        assert_eq!(
            invoked(
                OsStr::new("hashpress"),
                &c,
                Some(OsStr::new("/nonexistent::"))
            ),
            Some(c.join("hashpress"))
        );
        assert_eq!(invoked(OsStr::new("nothere"), &c, Some(&path)), None);
    }
}
