//! `hashpress hash` and `hashpress check` on the command line: output that
//! `sha256sum -c` reads, and coreutils' exit statuses.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::helpers::*;

fn run(cwd: &std::path::Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn hash_r_is_read_by_sha256sum_and_check_reports_like_it() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    std::fs::create_dir_all(t.join("a/b")).unwrap();
    std::fs::write(t.join("a/b/deep"), pseudo_random(2_500_000, 3)).unwrap();
    std::fs::write(t.join("sp ace"), b"x").unwrap();
    std::fs::write(t.join("new\nline"), b"y").unwrap();
    std::fs::write(t.join("empty"), b"").unwrap();

    let out = run(dir.path(), &["hash", "-r", "t"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.path().join("SUMS"), &out.stdout).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("  t/sp ace\n") && text.contains("\\"),
        "{text}"
    );
    let sha = Command::new("sha256sum")
        .args(["-c", "--strict", "SUMS"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        sha.status.success(),
        "{}",
        String::from_utf8_lossy(&sha.stdout)
    );

    // All good: 0, one "OK" per file.
    let out = run(dir.path(), &["check", "SUMS"], b"");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).matches(": OK").count(),
        4
    );

    // A change and a removal: 1; a new file fails only with --new.
    std::fs::write(t.join("sp ace"), b"changed").unwrap();
    std::fs::remove_file(t.join("empty")).unwrap();
    let out = run(dir.path(), &["check", "SUMS"], b"");
    assert_eq!(out.status.code(), Some(1));
    let o = String::from_utf8_lossy(&out.stdout);
    assert!(o.contains("t/sp ace: FAILED\n"), "{o}");
    assert!(o.contains("t/empty: FAILED open or read\n"), "{o}");
    std::fs::write(t.join("sp ace"), b"x").unwrap();
    std::fs::write(t.join("empty"), b"").unwrap();
    std::fs::write(t.join("extra"), b"z").unwrap();
    assert_eq!(
        run(dir.path(), &["check", "SUMS", "-C", "."], b"")
            .status
            .code(),
        Some(0)
    );
    let out = run(
        dir.path(),
        &["check", "--new", "-", "-C", "."],
        &std::fs::read(dir.path().join("SUMS")).unwrap(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("t/extra: NEW"));

    // A manifest that does not parse, or a directory without -r: 2.
    let out = run(dir.path(), &["check", "-"], b"nonsense\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));
    assert_eq!(run(dir.path(), &["hash", "t"], b"").status.code(), Some(2));

    // Standard input, several digests as JSON, checked against hashlib.
    let data = pseudo_random(100_000, 5);
    std::fs::write(dir.path().join("blob"), &data).unwrap();
    let want = oracle(&dir.path().join("blob"), "sha256,md5");
    let out = run(
        dir.path(),
        &["hash", "--alg", "md5,sha256", "--json", "-"],
        &data,
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["path"], "-");
    assert_eq!(v["md5"].as_str(), Some(want["md5"].as_str()));
    assert_eq!(v["sha256"].as_str(), Some(want["sha256"].as_str()));
    // One file, BSD tags.
    let out = run(
        dir.path(),
        &["hash", "--format", "bsd", "--alg", "md5", "blob"],
        b"",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("MD5 (blob) = {}\n", want["md5"])
    );
}
