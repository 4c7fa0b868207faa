//! `hashpress hash` and `hashpress check` on the command line: output that
//! `sha256sum -c` reads, and coreutils' exit statuses.

use std::process::{Command, Output, Stdio};

use crate::helpers::*;

fn run(cwd: &std::path::Path, args: &[&str], stdin: &[u8]) -> Output {
    run_with_stdin(Command::new(BIN).args(args).current_dir(cwd), stdin)
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

/// A tree wider than the pipeline's batches (many listing jobs and groups
/// of files, files that overflow a group's inline budget and files hashed
/// in pieces, empty files, directories interleaved with files): the output
/// is byte for byte what `sha256sum` prints for the same files in `sort`
/// order, and the same again with two algorithms in NDJSON.
#[test]
fn hash_r_of_a_wide_mixed_tree_is_what_sha256sum_prints() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("w");
    for i in 0..700u64 {
        // Directories and files share a parent, some names sort around
        // "d3/" ("d3.x" < "d3/" < "d30"), sizes cycle through empty, a
        // few bytes, 4 KiB, 300 KB (four overflow a group's 1 MiB) and,
        // now and then, more than a piece (1 MiB) or than a mapping (4 MiB).
        let sub = match i % 7 {
            0 => t.clone(),
            k => t.join(format!("d{}", (i / 7) % 40)).join(format!("s{k}")),
        };
        std::fs::create_dir_all(&sub).unwrap();
        let len = match i % 5 {
            0 => 0,
            1 => (i % 13) as usize,
            2 => 4096,
            3 => 300_000,
            _ if i % 97 == 4 => (1 << 20) + 12_345,
            // Three of the command line's 4 MiB mappings, the last partial.
            _ if i == 9 => (9 << 20) + 4_099,
            _ => 4096 + i as usize,
        };
        std::fs::write(sub.join(format!("f{i:03}")), pseudo_random(len, i)).unwrap();
        if i % 50 == 0 {
            std::fs::write(t.join(format!("d{}.x", i / 50)), b"dot").unwrap();
        }
    }
    let out = run(dir.path(), &["hash", "-r", "w"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = Command::new("sh")
        .arg("-c")
        .arg("find w -type f -print0 | sort -z | xargs -0 sha256sum")
        .current_dir(dir.path())
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    assert!(want.status.success());
    assert_eq!(want.stdout.iter().filter(|&&b| b == b'\n').count(), 714);
    assert!(
        out.stdout == want.stdout,
        "hashpress:\n{}\nsha256sum:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&want.stdout)
    );

    let out = run(
        dir.path(),
        &["hash", "-r", "--json", "--alg", "md5,sha256", "w"],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let md5 = Command::new("sh")
        .arg("-c")
        .arg("find w -type f -print0 | sort -z | xargs -0 md5sum")
        .current_dir(dir.path())
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    let (sha, md5) = (
        String::from_utf8_lossy(&want.stdout),
        String::from_utf8_lossy(&md5.stdout),
    );
    assert_eq!(lines.len(), 714);
    for ((l, s), m) in lines.iter().zip(sha.lines()).zip(md5.lines()) {
        let (hex, path) = s.split_once("  ").unwrap();
        assert_eq!(l["path"].as_str(), Some(path));
        assert_eq!(l["sha256"].as_str(), Some(hex));
        assert_eq!(
            Some(m),
            l["md5"].as_str().map(|h| format!("{h}  {path}")).as_deref()
        );
    }
}

/// `hashpress compress` / `decompress` as pigz and gzip behave: outputs read
/// by `gzip -d` and ruzstd, -k/-c, standard input, the exit statuses, and
/// no progress bar on a piped stderr.
#[test]
fn compress_and_decompress_like_pigz() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let big = text_like((9 << 20) + 3);
    let small = b"hello, world\n".to_vec();
    std::fs::write(d.join("big.txt"), &big).unwrap();
    std::fs::write(d.join("small.txt"), &small).unwrap();

    // Default: gzip, FILE.gz, the input removed; nothing on stderr.
    let out = run(d, &["compress", "-p", "2", "big.txt", "small.txt"], b"");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.is_empty() && out.stdout.is_empty(), "{out:?}");
    assert!(!d.join("big.txt").exists() && !d.join("small.txt").exists());
    assert_eq!(gunzip(&std::fs::read(d.join("big.txt.gz")).unwrap()), big);
    assert_eq!(
        gunzip(&std::fs::read(d.join("small.txt.gz")).unwrap()),
        small
    );

    // decompress gives the files back and removes the .gz.
    let out = run(d, &["decompress", "big.txt.gz", "small.txt.gz"], b"");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    assert_eq!(std::fs::read(d.join("big.txt")).unwrap(), big);
    assert_eq!(std::fs::read(d.join("small.txt")).unwrap(), small);
    assert!(!d.join("big.txt.gz").exists());

    // zstd with -k: FILE.zst of 4 MiB frames, the input kept.
    let out = run(
        d,
        &[
            "compress",
            "-k",
            "--format",
            "zstd",
            "-l",
            "19",
            "small.txt",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = run(d, &["compress", "-k", "--format", "zstd", "big.txt"], b"");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(std::fs::read(d.join("big.txt")).unwrap(), big);
    let (back, frames) = unzstd(&std::fs::read(d.join("big.txt.zst")).unwrap());
    assert_eq!(back, big);
    assert_eq!(frames.len(), 3);
    assert_eq!(
        unzstd(&std::fs::read(d.join("small.txt.zst")).unwrap()).0,
        small
    );

    // -c: to standard output, inputs kept; several files are one stream.
    let out = run(d, &["compress", "-c", "small.txt", "small.txt"], b"");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(gunzip(&out.stdout), [&small[..], &small[..]].concat());
    // `-` (and no FILE): standard input to standard output.
    let out = run(d, &["compress", "--format", "zstd"], &big);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(unzstd(&out.stdout).0, big);
    let out = run(d, &["decompress", "-"], &out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout, big);
    let gz = std::fs::read(d.join("small.txt.zst")).unwrap();
    let out = run(d, &["decompress", "-c", "small.txt.zst"], b"");
    assert_eq!(out.stdout, small);
    assert!(d.join("small.txt.zst").exists(), "-c keeps the input");
    assert_eq!(std::fs::read(d.join("small.txt.zst")).unwrap(), gz);

    // Errors: an existing output is kept (1), a missing input fails alone (1).
    let out = run(d, &["compress", "-k", "--format", "zstd", "small.txt"], b"");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(
        unzstd(&std::fs::read(d.join("small.txt.zst")).unwrap()).0,
        small
    );
    let out = run(
        d,
        &["compress", "-k", "-f", "--format", "zstd", "small.txt"],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "-f overwrites: {out:?}");
    std::fs::remove_file(d.join("small.txt.zst")).unwrap();
    let out = run(d, &["compress", "-k", "nope.txt", "small.txt"], b"");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.txt"));
    assert_eq!(
        gunzip(&std::fs::read(d.join("small.txt.gz")).unwrap()),
        small
    );
    // Usage errors: 2.
    let out = run(d, &["compress", "-l", "10", "small.txt"], b"");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 to 9"));
    let out = run(
        d,
        &["compress", "--format", "zstd", "-l", "20", "small.txt"],
        b"",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = run(d, &["compress", "--format", "br", "small.txt"], b"");
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // A corrupt input: 1, and no output left under its name or a temporary.
    let mut bad = std::fs::read(d.join("big.txt.zst")).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(d.join("bad.txt.zst"), &bad).unwrap();
    std::fs::write(d.join("plain.gz"), b"not gzip at all").unwrap();
    let before: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let out = run(
        d,
        &["decompress", "bad.txt.zst", "plain.gz", "small.txt"],
        b"",
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.txt.zst") && err.contains("plain.gz"),
        "{err}"
    );
    assert!(err.contains("unknown suffix"), "{err}");
    let after: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before.len(), after.len(), "nothing written: {after:?}");
    assert!(d.join("bad.txt.zst").exists(), "a failed input is kept");
}

/// The progress bar is drawn when stderr is a terminal (a pty by `script`)
/// and never into a pipe.
#[test]
fn progress_bar_only_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.txt"), text_like(20 << 20)).unwrap();
    let out = run(d, &["compress", "-k", "-c", "a.txt"], b"");
    assert!(out.status.success());
    assert!(out.stderr.is_empty(), "piped stderr: {:?}", out.stderr);
    let out = run(d, &["hash", "-r", "."], b"");
    assert!(out.stderr.is_empty(), "piped stderr: {:?}", out.stderr);
    // Under a pseudo-terminal (util-linux `script`, on every Debian), the bar
    // shows the byte counts; stdout goes to a file, not the terminal.
    let cmd = format!("{BIN} compress -k -f -l 9 a.txt 2>&1 >/dev/null");
    let tty = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(d)
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux)");
    assert!(tty.status.success(), "{tty:?}");
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(shown.contains("MiB"), "no bar on a terminal: {shown:?}");
}
