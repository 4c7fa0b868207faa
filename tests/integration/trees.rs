//! Whole trees: manifests that `sha256sum -c` and `b3sum -c` accept, a
//! summary digest anyone can recompute with coreutils, and checks that find
//! what changed, what is missing and what is new.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use crate::helpers::*;

/// Nested directories, an empty file, names with spaces, non-ASCII, a
/// newline and a backslash, a FIFO, a symlink loop and a symlink that leads
/// outside the root (unreadable: an error line, and the walk goes on).
fn make_tree(root: &Path, outside: &Path) {
    let t = root.join("tree");
    std::fs::create_dir_all(t.join("a/b/c")).unwrap();
    std::fs::create_dir_all(t.join("empty dir")).unwrap();
    std::fs::write(t.join("a/b/c/deep.bin"), pseudo_random(300_000, 1)).unwrap();
    std::fs::write(t.join("a/one"), b"1").unwrap();
    std::fs::write(t.join("a.txt"), b"a dot txt").unwrap();
    std::fs::write(t.join("empty"), b"").unwrap();
    std::fs::write(t.join("with space.txt"), b"space").unwrap();
    std::fs::write(t.join("\u{e9}t\u{e9}.txt"), b"accent").unwrap();
    std::fs::write(t.join("new\nline"), b"newline").unwrap();
    std::fs::write(t.join("back\\slash"), b"backslash").unwrap();
    std::fs::write(t.join("big.bin"), pseudo_random(3 << 20, 2)).unwrap();
    symlink("..", t.join("a/up")).unwrap();
    std::fs::write(outside.join("secret"), b"s").unwrap();
    symlink(outside.join("secret"), t.join("m-outside")).unwrap();
    let fifo =
        std::ffi::CString::new(t.join("pipe").into_os_string().into_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
}

fn ndjson(body: &[u8]) -> Vec<serde_json::Value> {
    body.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

fn sh(cwd: &Path, script: &str) -> (bool, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn manifests_are_what_sha256sum_reads_and_recomputes() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    make_tree(dir.path(), outside.path());
    let srv = Server::start(dir.path(), &[]);
    let tree = dir.path().join("tree");

    // sha256sum format: `sha256sum -c` in the tree accepts every line.
    let r = srv.get("/manifest/tree?format=sha256sum");
    assert_eq!(r.status, 200, "{}", r.text());
    std::fs::write(dir.path().join("SHA256SUMS"), &r.body).unwrap();
    let (ok, out) = sh(&tree, "sha256sum -c --strict ../SHA256SUMS");
    assert!(ok, "sha256sum -c refused it:\n{out}\n{}", r.text());
    assert_eq!(out.matches(": OK").count(), 9, "{out}");
    // Escaped names are written as coreutils writes them.
    assert!(r.text().contains("  new\\nline\n"), "{}", r.text());
    assert!(r.text().contains("  back\\\\slash\n"), "{}", r.text());

    // NDJSON: one line per file in byte-wise order, errors and skipped
    // entries in place, and a summary whose digest coreutils recomputes.
    let r = srv.get("/manifest/tree?alg=sha256,md5");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let lines = ndjson(&r.body);
    let paths: Vec<&str> = lines.iter().filter_map(|l| l["path"].as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(paths, sorted);
    assert_eq!(paths[0], "a.txt", "'.' sorts before '/': {paths:?}");
    let find = |p: &str| lines.iter().find(|l| l["path"] == p).unwrap().clone();
    assert!(find("a/up")["skipped"].as_str().is_some());
    assert!(find("pipe")["skipped"].as_str().is_some());
    assert_eq!(find("m-outside")["error"], "outside_root");
    let deep = find("a/b/c/deep.bin");
    let want = oracle(&tree.join("a/b/c/deep.bin"), "sha256,md5");
    assert_eq!(deep["sha256"].as_str(), Some(want["sha256"].as_str()));
    assert_eq!(deep["md5"].as_str(), Some(want["md5"].as_str()));
    assert_eq!(deep["bytes"], 300_000);
    let summary = lines.last().unwrap();
    assert_eq!(summary["files"], 9);
    assert_eq!(summary["errors"], 1);
    assert_eq!(summary["skipped"], 2);
    let (ok, out) = sh(
        &tree,
        "find . -type f -printf '%P\\0' | sort -z | xargs -0 sha256sum | sha256sum",
    );
    assert!(ok, "{out}");
    assert_eq!(
        summary["manifest_sha256"].as_str().unwrap(),
        out.split_whitespace().next().unwrap()
    );

    // A BLAKE3 manifest's digest is over b3sum-format lines (no SHA-256 pass).
    let b3 = ndjson(&srv.get("/manifest/tree/a?alg=blake3").body);
    let mut text = Vec::new();
    for l in b3.iter().filter(|l| l["blake3"].is_string()) {
        text.extend_from_slice(
            format!(
                "{}  {}\n",
                l["blake3"].as_str().unwrap(),
                l["path"].as_str().unwrap()
            )
            .as_bytes(),
        );
    }
    let want = {
        use sha2::Digest as _;
        let d = sha2::Sha256::digest(&text);
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    assert_eq!(
        b3.last().unwrap()["manifest_sha256"].as_str(),
        Some(want.as_str())
    );
    assert!(b3[0].get("sha256").is_none());

    // BSD and BagIt lines.
    let bsd = srv.get("/manifest/tree/a?format=bsd&alg=md5").text();
    assert!(bsd.starts_with("MD5 (b/c/deep.bin) = "), "{bsd}");
    let bag = srv.get("/manifest/tree?format=bagit").text();
    assert!(bag.contains("  new%0Aline\n"), "{bag}");
    // The whole root.
    let all = ndjson(&srv.get("/manifest/").body);
    assert!(all.iter().any(|l| l["path"] == "tree/a/one"));
}

#[test]
fn checks_find_changed_missing_and_new_files() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    make_tree(dir.path(), outside.path());
    let srv = Server::start(dir.path(), &[]);
    let tree = dir.path().join("tree");
    let before = srv.get("/manifest/tree?alg=blake3").body;
    let sums = srv.get("/manifest/tree?format=sha256sum").body;

    // Unchanged: every listed file ok, verdict pass.
    let r = srv.post("/manifest/tree/check", &before);
    assert_eq!(r.status, 200, "{}", r.text());
    let lines = ndjson(&r.body);
    let summary = lines.last().unwrap();
    assert_eq!(summary["verdict"], "pass", "{}", r.text());
    assert_eq!(summary["ok"], 9);

    std::fs::write(tree.join("a/one"), b"2").unwrap();
    std::fs::remove_file(tree.join("with space.txt")).unwrap();
    std::fs::write(tree.join("a/zz-new"), b"new").unwrap();
    for (body, query) in [(&before, ""), (&sums, "")] {
        let r = srv.post(&format!("/manifest/tree/check{query}"), body);
        assert_eq!(r.status, 200, "{}", r.text());
        let lines = ndjson(&r.body);
        let status = |p: &str| {
            lines
                .iter()
                .find(|l| l["path"] == p)
                .map(|l| l["status"].as_str().unwrap().to_string())
        };
        assert_eq!(status("a/one").as_deref(), Some("changed"), "{}", r.text());
        assert_eq!(status("with space.txt").as_deref(), Some("missing"));
        assert_eq!(status("a/zz-new").as_deref(), Some("new"));
        assert_eq!(status("a.txt").as_deref(), Some("ok"));
        let s = lines.last().unwrap();
        // New: a/zz-new, and m-outside, which is not listed (unreadable).
        assert_eq!(
            (
                s["changed"].as_u64(),
                s["missing"].as_u64(),
                s["new"].as_u64()
            ),
            (Some(1), Some(1), Some(2))
        );
        assert_eq!(s["verdict"], "fail");
        // Records in path order, the summary last.
        let paths: Vec<&str> = lines.iter().filter_map(|l| l["path"].as_str()).collect();
        let mut sorted = paths.clone();
        sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        assert_eq!(paths, sorted);
    }

    // A body that does not parse: 400 naming the line.
    let r = srv.post("/manifest/tree/check", b"abcd  a\nnot a manifest line\n");
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "bad_body");
    assert!(r.text().contains("line 2"), "{}", r.text());
}

#[test]
fn hostile_and_wrong_directories() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let srv = Server::start(dir.path(), &[]);
    for (path, status, code) in [
        ("/manifest/f", 400, "not_a_file"),
        ("/manifest/nope", 404, "not_found"),
        ("/manifest/..", 403, "outside_root"),
        ("/manifest/d/%2e%2e/%2e%2e", 403, "outside_root"),
        ("/manifest/d?format=xml", 400, "bad_query"),
    ] {
        let r = srv.get(path);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (status, code),
            "{path}: {}",
            r.text()
        );
    }
    let r = srv.post("/manifest/d", b"");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("/check"));
}

/// `b3sum -c` accepts the BLAKE3 manifest in sha256sum format.
#[test]
#[ignore = "needs b3sum (Debian's b3sum; .ci/run installs it)"]
fn b3sum_reads_blake3_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    make_tree(dir.path(), outside.path());
    let srv = Server::start(dir.path(), &[]);
    let r = srv.get("/manifest/tree?format=sha256sum&alg=blake3");
    std::fs::write(dir.path().join("B3SUMS"), &r.body).unwrap();
    let (ok, out) = sh(&dir.path().join("tree"), "b3sum -c ../B3SUMS");
    assert!(ok, "b3sum -c refused it (or b3sum is missing):\n{out}");
    assert_eq!(out.matches(": OK").count(), 9, "{out}");
}

/// A directory of more names than a walk sorts in memory (lowered here to
/// 100) is read in sorted runs through a temporary file and merged: the
/// manifest, the command line's `hash -r` and its `check` come out exactly
/// as `find | sort | sha256sum` (and read nothing when the temporary file
/// cannot be made: an error, not a wrong order).
#[test]
fn a_directory_bigger_than_the_sort_memory_comes_out_sorted() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::create_dir(&big).unwrap();
    for i in 0..2_500u64 {
        // Hashed names (no order on disk to lean on), a few directories
        // with neighbours around their '/' ("n.x" < "n/" < "n0"), one of
        // them itself too big for memory.
        let name = format!("{:08x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32);
        if i % 500 == 0 {
            let sub = big.join(&name);
            std::fs::create_dir(&sub).unwrap();
            let count = if i == 0 { 250 } else { 3 };
            for j in 0..count {
                std::fs::write(sub.join(format!("s{j:03}")), format!("{i}/{j}")).unwrap();
            }
            std::fs::write(big.join(format!("{name}.x")), b"dot").unwrap();
            std::fs::write(big.join(format!("{name}0")), b"zero").unwrap();
        } else {
            std::fs::write(big.join(&name), i.to_string()).unwrap();
        }
    }
    let (ok, want) = sh(
        dir.path(),
        "cd big && find . -type f -printf '%P\\0' | sort -z | xargs -0 sha256sum",
    );
    assert!(ok, "{want}");
    assert_eq!(want.lines().count(), 2_500 - 5 + 250 + 4 * 3 + 10);

    let srv = Server::start(dir.path(), &["--dir-sort-names", "100"]);
    let r = srv.get("/manifest/big?format=sha256sum");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text() == want,
        "GET /manifest differs from find | sort:\n{}",
        r.text()
    );
    let lines = ndjson(&srv.get("/manifest/big").body);
    let summary = lines.last().unwrap();
    assert_eq!(summary["files"], want.lines().count());
    assert_eq!(summary["errors"], 0);
    let (ok, sum) = sh(
        dir.path(),
        "cd big && find . -type f -printf '%P\\0' | sort -z | xargs -0 sha256sum | sha256sum",
    );
    assert!(ok, "{sum}");
    assert_eq!(
        summary["manifest_sha256"].as_str(),
        sum.split_whitespace().next()
    );

    // The command line, by flag and by environment.
    let hash = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.arg("hash").arg("-r").args(args).arg(".");
        cmd.current_dir(&big);
        clean_env(&mut cmd);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let dotted: String = want
        .lines()
        .map(|l| l.replacen("  ", "  ./", 1) + "\n")
        .collect();
    for out in [
        hash(&[], &["--dir-sort-names", "100"]),
        hash(&[("HASHPRESS_DIR_SORT_NAMES", "7")], &[]),
    ] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == dotted.as_bytes(),
            "hash -r differs from find | sort:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // Spilling really happens: with nowhere to spill, the walk fails.
    let out = hash(
        &[("TMPDIR", "/nonexistent/tmp")],
        &["--dir-sort-names", "100"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let out = hash(&[("TMPDIR", "/nonexistent/tmp")], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // check walks the same way and finds every file.
    std::fs::write(dir.path().join("SUMS"), &want).unwrap();
    let mut check = Command::new(BIN);
    check.args(["check", "--dir-sort-names", "100", "-C", "big", "SUMS"]);
    check.current_dir(dir.path());
    clean_env(&mut check);
    let out = check.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches(": OK\n").count(),
        want.lines().count(),
        "{text}"
    );
}

/// Big files are hashed window by window from mappings of the page cache:
/// files that span several windows, or end mid-page, or are just big
/// enough to be mapped, digest as Python's hashlib and the BLAKE3 reference
/// say, through `GET /hash-file` and `GET /manifest` alike.
#[test]
fn big_files_hash_as_the_references_do_across_windows() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("big")).unwrap();
    let sizes = [(9 << 20) + 12345, 5 << 20, (1 << 20) + 1, (256 << 10) + 1];
    for (i, n) in sizes.iter().enumerate() {
        let data = pseudo_random(*n, 40 + i as u64);
        std::fs::write(dir.path().join(format!("big/f{i}")), data).unwrap();
    }
    let srv = Server::start(dir.path(), &[]);
    let algs = "sha256,md5,blake3";
    let mut wants = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let want = oracle(&dir.path().join(format!("big/f{i}")), algs);
        let r = srv.get(&format!("/hash-file/big/f{i}?alg={algs}"));
        assert_digests(&r, &want, *n);
        wants.push(want);
    }
    assert_big_manifest(&srv, algs, &sizes, &wants);
}

/// `GET /manifest/big?alg=ALGS` lists the files `big/f{i}` of `sizes`, each
/// with the digests of `wants[i]` for every algorithm of ALGS, and no error.
fn assert_big_manifest(
    srv: &Server,
    algs: &str,
    sizes: &[usize],
    wants: &[std::collections::HashMap<String, String>],
) {
    let r = srv.get(&format!("/manifest/big?alg={algs}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let lines = ndjson(&r.body);
    assert_eq!(lines.len(), sizes.len() + 1, "{}", r.text());
    for (i, n) in sizes.iter().enumerate() {
        let line = &lines[i];
        assert_eq!(line["path"], format!("f{i}"));
        assert_eq!(line["bytes"].as_u64(), Some(*n as u64), "{line}");
        for alg in algs.split(',') {
            assert_eq!(
                line[alg].as_str(),
                Some(wants[i][alg].as_str()),
                "f{i} {alg}"
            );
        }
    }
    assert_eq!(lines[sizes.len()]["errors"], 0);
}

/// A file truncated while the server hashes it from a mapping (where a read
/// past the new end raises SIGBUS): each answer is 409 `source_changed` (in
/// a manifest, that error on the file's line) or the digest of the bytes
/// the file held, never another one; and the serving process lives on.
#[test]
fn files_truncated_while_hashed_answer_409_never_a_wrong_digest() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    let path = dir.path().join("d/moving.bin");
    let data = std::sync::Arc::new(pseudo_random(48 << 20, 9));
    std::fs::write(&path, &*data).unwrap();
    let mut srv = Server::start(dir.path(), &[]);
    // Slow digests beside BLAKE3: a request lasts long enough to be caught.
    let algs = "blake3,sha512,sha1,md5";
    let blake3_of = |n: usize| blake3::hash(&data[..n]).to_hex().to_string();
    let whole = blake3_of(data.len());
    let started = std::time::Instant::now();
    let r = srv.get(&format!("/hash-file/d/moving.bin?alg={algs}"));
    assert_eq!(r.json()["digests"]["blake3"], whole, "{}", r.text());
    let undisturbed = started.elapsed();

    let mut changed = 0;
    for round in 0..8u32 {
        std::fs::write(&path, &*data).unwrap();
        let url = if round % 2 == 0 {
            format!("/hash-file/d/moving.bin?alg={algs}")
        } else {
            format!("/manifest/d?alg={algs}")
        };
        let addr = srv.addr;
        let req = std::thread::spawn(move || request(addr, "GET", &url, &[], b""));
        std::thread::sleep(undisturbed * (round % 4 + 1) / 6);
        // At a page boundary or mid-page; to nothing, near the start, or
        // past the middle.
        let cut = [0, 3 * 4096 + 100, 20 << 20, (30 << 20) + 1][(round / 2 % 4) as usize];
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut as u64)
            .unwrap();
        let r = req.join().unwrap();
        // The file's answer: a digest for some bytes, or why there is none.
        let (digest, bytes, error) = if round % 2 == 0 {
            if r.status == 409 {
                (None, None, Some(r.error_code()))
            } else {
                assert_eq!(r.status, 200, "{}", r.text());
                let v = r.json();
                (
                    Some(v["digests"]["blake3"].clone()),
                    v["bytes"].as_u64(),
                    None,
                )
            }
        } else {
            assert_eq!(r.status, 200, "{}", r.text());
            let line = ndjson(&r.body).remove(0);
            match line["error"].as_str() {
                Some(code) => (None, None, Some(code.to_string())),
                None => (Some(line["blake3"].clone()), line["bytes"].as_u64(), None),
            }
        };
        match (digest, bytes, error) {
            (None, None, Some(code)) => {
                assert_eq!(code, "source_changed", "round {round}: {}", r.text());
                changed += 1;
            }
            (Some(digest), Some(n), None) => {
                let n = n as usize;
                assert!(n == data.len() || n == cut, "round {round}: {n} bytes");
                assert_eq!(digest, blake3_of(n), "round {round}: a wrong digest");
            }
            other => panic!("round {round}: {other:?} in {}", r.text()),
        }
    }
    assert!(changed > 0, "no truncation landed while a file was hashed");
    // The same process serves on, and hashes the file whole again.
    assert!(srv.child.try_wait().unwrap().is_none(), "the server died");
    std::fs::write(&path, &*data).unwrap();
    let r = srv.get(&format!("/hash-file/d/moving.bin?alg={algs}"));
    assert_eq!(r.json()["digests"]["blake3"], whole, "{}", r.text());
    let r = srv.get(&format!("/manifest/d?alg={algs}"));
    assert_eq!(ndjson(&r.body)[0]["blake3"], whole, "{}", r.text());
}

/// A manifest of BLAKE3 alone (or with memory-speed algorithms) hashes big
/// files in bigger pieces (16 MiB), the first one in the job that reopens
/// the file: files of exactly one piece, one byte more, and several pieces
/// with a partial last one digest as the reference BLAKE3 and XXH3 say,
/// through `GET /manifest` and `hashpress hash -r` alike.
#[test]
fn blake3_manifests_hash_big_files_in_bigger_pieces() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("big")).unwrap();
    let sizes = [16 << 20, (16 << 20) + 1, (32 << 20) + 4097];
    for (i, n) in sizes.iter().enumerate() {
        let data = pseudo_random(*n, 60 + i as u64);
        std::fs::write(dir.path().join(format!("big/f{i}")), data).unwrap();
    }
    let wants: Vec<_> = (0..sizes.len())
        .map(|i| oracle(&dir.path().join(format!("big/f{i}")), "blake3,xxh3"))
        .collect();
    let srv = Server::start(dir.path(), &[]);
    for algs in ["blake3", "blake3,xxh3"] {
        assert_big_manifest(&srv, algs, &sizes, &wants);
    }
    let out = Command::new(BIN)
        .args(["hash", "-r", "--alg", "blake3", "big"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: String = (0..sizes.len())
        .map(|i| format!("{}  big/f{i}\n", wants[i]["blake3"]))
        .collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
}
