//! Flags, environment, config file and `--help`.

use crate::helpers::*;

#[test]
fn precedence_is_flag_then_env_then_file_then_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hp.toml");
    std::fs::write(
        &file,
        "pool-threads = 3\npool_queue = 11\nmax-body = \"1KiB\"\n",
    )
    .unwrap();
    let cfg = file.to_str().unwrap();
    let threads = |srv: &Server| srv.metric("hashpress_pool_threads").unwrap();
    let queue = |srv: &Server| srv.metric("hashpress_pool_queue_capacity").unwrap();

    // File over default.
    let srv = Server::start(dir.path(), &["--config", cfg]);
    assert_eq!((threads(&srv), queue(&srv)), (3.0, 11.0));
    assert_eq!(srv.post("/hash", &[0u8; 1025]).status, 413);
    drop(srv);
    // Environment over file.
    let srv = Server::start_with(
        dir.path(),
        &["--config", cfg],
        &[("HASHPRESS_POOL_THREADS", "5")],
    );
    assert_eq!((threads(&srv), queue(&srv)), (5.0, 11.0));
    drop(srv);
    // Flag over environment.
    let srv = Server::start_with(
        dir.path(),
        &["--config", cfg, "--pool-threads", "7"],
        &[("HASHPRESS_POOL_THREADS", "5")],
    );
    assert_eq!(threads(&srv), 7.0);
    drop(srv);
    // Default: one per core, queue 1024 per thread.
    let srv = Server::start(dir.path(), &[]);
    let cores = std::thread::available_parallelism().unwrap().get() as f64;
    assert_eq!((threads(&srv), queue(&srv)), (cores, 1024.0 * cores));
}

#[test]
fn bad_config_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "pool-thread = 3\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown key 'pool-thread'"), "{err}");
    assert!(err.contains("pool-threads"), "{err}");

    let out = std::process::Command::new(BIN)
        .args(["serve", "--max-body", "12 parsecs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-body"));
}

/// Every flag of `serve`, taken from the command definition itself (so a
/// new flag is checked without touching this test), is in `--help` with a
/// sentence, its environment variable, and its default where it has one.
#[test]
fn help_explains_every_flag_with_its_default() {
    use clap::CommandFactory;
    let out = std::process::Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let cli = hashpress::config::Cli::command();
    let serve = cli.find_subcommand("serve").expect("a serve subcommand");
    // Each flag's paragraph: its header line (indented six spaces, where
    // wrapped text is indented ten) and the lines up to the next header.
    let mut paragraphs: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        if let Some(head) = line
            .strip_prefix("      --")
            .filter(|_| !line.starts_with("       "))
        {
            let name = head.split([' ', '=']).next().unwrap_or(head);
            paragraphs.push((format!("--{name}"), String::new()));
        }
        if let Some((_, p)) = paragraphs.last_mut() {
            p.push_str(line);
            p.push('\n');
        }
    }
    let mut checked = 0;
    for arg in serve.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let flag = format!("--{long}");
        let para = paragraphs
            .iter()
            .find(|(name, _)| *name == flag)
            .map(|(_, p)| p.as_str())
            .unwrap_or_else(|| panic!("{flag} missing from --help"));
        assert!(
            arg.get_help().is_some_and(|h| h.to_string().len() > 10),
            "{flag} has no sentence"
        );
        let env = format!("HASHPRESS_{}", long.to_uppercase().replace('-', "_"));
        assert!(
            para.contains(&format!("[env: {env}=")),
            "{flag}: no {env} in\n{para}"
        );
        for default in arg.get_default_values() {
            let d = default.to_string_lossy();
            assert!(
                para.contains(&format!("[default: {d}]")),
                "{flag}: default {d} not shown"
            );
        }
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} flags found");
    let top = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&top.stdout).contains("serve"));
}

/// `--io-threads 1` runs tokio's current-thread scheduler: the whole API works
/// on it in one process and in cluster workers (a body long enough to be
/// hashed on the pool, file jobs that come back from the pool, gzip
/// streams), and the setting shows in `/metrics`. The automatic value is one
/// thread per core in one process, cores ÷ workers in each worker.
#[test]
fn io_threads_one_serves_everything_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(5 * 1024 * 1024 + 17, 41);
    let file = dir.path().join("f.bin");
    std::fs::write(&file, &data).unwrap();
    let want = oracle(&file, "sha256,blake3");
    let cores = std::thread::available_parallelism().unwrap().get();
    for (mode, auto) in [
        (&["--workers", "0"][..], cores),
        (&["--workers", "2"][..], (cores / 2).max(1)),
    ] {
        let default = Server::start(dir.path(), mode);
        assert_eq!(
            default.metric("hashpress_io_threads"),
            Some(auto as f64),
            "{mode:?}"
        );
        drop(default);
        let args = [mode, &["--io-threads", "1"][..]].concat();
        let srv = Server::start(dir.path(), &args);
        assert_eq!(srv.metric("hashpress_io_threads"), Some(1.0), "{mode:?}");
        assert_digests(
            &srv.post("/hash?alg=sha256,blake3", &data),
            &want,
            data.len(),
        );
        assert_digests(
            &srv.get("/hash-file/f.bin?alg=sha256,blake3"),
            &want,
            data.len(),
        );
        let gz = srv.get("/compress/f.bin");
        assert_eq!(gz.status, 200, "{mode:?}");
        assert!(gunzip(&gz.body) == data, "{mode:?}: gzip round trip");
    }
}
