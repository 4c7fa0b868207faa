//! Nothing outside the root is ever read or written, whatever the URL says.

use std::ffi::CString;
use std::path::Path;

use crate::helpers::*;

const SECRET: &str = "TOP-SECRET-CONTENT";

struct Fixture {
    base: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let base = tempfile::tempdir().unwrap();
        let b = base.path();
        std::fs::write(b.join("secret.txt"), SECRET).unwrap();
        let root = b.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("ok.txt"), b"fine").unwrap();
        std::fs::write(root.join("sub/inner.txt"), b"inner").unwrap();
        std::os::unix::fs::symlink(b.join("secret.txt"), root.join("link_out")).unwrap();
        std::os::unix::fs::symlink("../secret.txt", root.join("rel_link_out")).unwrap();
        std::os::unix::fs::symlink(b, root.join("dirlink")).unwrap();
        std::os::unix::fs::symlink("ok.txt", root.join("link_in")).unwrap();
        Fixture { base }
    }

    fn root(&self) -> std::path::PathBuf {
        self.base.path().join("root")
    }

    fn base_listing(&self) -> Vec<String> {
        let mut v: Vec<String> = walk(self.base.path());
        v.sort();
        v
    }
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        out.push(p.display().to_string());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

fn hostile_paths(fx: &Fixture) -> Vec<String> {
    hostile_table(&fx.base.path().join("secret.txt").display().to_string())
}

/// Paths that try to leave the served root, every trick we know; `abs` is
/// the absolute path of a file outside it. The storage tests run the same
/// table against a bucket prefix.
pub fn hostile_table(abs: &str) -> Vec<String> {
    let mut v: Vec<String> = [
        "../secret.txt",
        "..%2fsecret.txt",
        "%2e%2e/secret.txt",
        "%2E%2E%2Fsecret.txt",
        ".%2e/secret.txt",
        "%2e./secret.txt",
        "%252e%252e%252fsecret.txt",
        "%252e%252e/secret.txt",
        "sub/../../secret.txt",
        "sub/%2e%2e/%2e%2e/secret.txt",
        "./../secret.txt",
        "sub/./../../secret.txt",
        "..%5csecret.txt",
        "..\\secret.txt",
        "sub%5c..%5c..%5csecret.txt",
        "%c0%ae%c0%ae/secret.txt",
        "%ef%bc%8e%ef%bc%8e/secret.txt",
        "....//secret.txt",
        "ok.txt%00../../secret.txt",
        "%00",
        "sub%00/inner.txt",
        "link_out",
        "rel_link_out",
        "dirlink/secret.txt",
        "dirlink/root/ok.txt",
        "sub/../link_out",
        "%2e%2e",
        "..",
        "..;/secret.txt",
        "%2fetc%2fpasswd",
        "/etc/passwd",
        "//etc/passwd",
        "%2f%2e%2e%2fsecret.txt",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("/{abs}"));
    v.push(abs.replace('/', "%2f"));
    v.push(format!("{}secret.txt", "../".repeat(40)));
    v.push("a/".repeat(3000));
    v.push("x".repeat(300));
    v
}

#[test]
fn hostile_path_table_never_escapes() {
    let fx = Fixture::new();
    let srv = Server::start(&fx.root(), &["--allow-write"]);
    let before = fx.base_listing();
    let mut table = Vec::new();
    for path in hostile_paths(&fx) {
        for (method, prefix) in [
            ("GET", "/hash-file/"),
            ("GET", "/compress/"),
            ("POST", "/compress/"),
        ] {
            let r = request(srv.addr, method, &format!("{prefix}{path}"), &[], b"");
            table.push(format!("{method} {prefix}{path} -> {}", r.status));
            assert!(
                [400, 403, 404, 414].contains(&r.status),
                "{method} {prefix}{path}: status {}",
                r.status
            );
            assert!(
                !r.text().contains(SECRET),
                "{method} {prefix}{path} leaked the secret"
            );
            if r.status != 414 {
                r.error_code();
            }
        }
    }
    // Nothing was written anywhere (no .gz beside the secret, nothing in root).
    assert_eq!(
        fx.base_listing(),
        before,
        "the tree changed:\n{}",
        table.join("\n")
    );
    // And the server is still healthy and serving what is inside.
    assert_eq!(srv.get("/hash-file/ok.txt").status, 200);
    assert_eq!(srv.get("/hash-file/sub/inner.txt").status, 200);
}

#[test]
fn escapes_answer_403_and_symlinks_inside_are_followed() {
    let fx = Fixture::new();
    let srv = Server::start(&fx.root(), &[]);
    for path in [
        "../secret.txt",
        "%2e%2e/secret.txt",
        "sub/../../secret.txt",
        "link_out",
        "rel_link_out",
        "dirlink/secret.txt",
        "/etc/passwd",
    ] {
        let r = srv.get(&format!("/hash-file/{path}"));
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(r.error_code(), "outside_root", "{path}");
    }
    // A double-encoded dot-dot is a literal (missing) name, not an escape.
    assert_eq!(srv.get("/hash-file/%252e%252e/secret.txt").status, 404);
    // A relative symlink that stays inside is an ordinary file.
    let r = srv.get("/hash-file/link_in");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["bytes"], 4);
}

#[test]
fn fifo_and_devices_are_not_files() {
    let fx = Fixture::new();
    let fifo = CString::new(fx.root().join("pipe").display().to_string()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let srv = Server::start(&fx.root(), &[]);
    // Opening a FIFO for reading must not wait for a writer.
    let r = srv.get("/hash-file/pipe");
    assert_eq!((r.status, r.error_code().as_str()), (400, "not_a_file"));
}
