//! `log_format` as the daemon applies it: the file's setting, under
//! `MASTERNODE_LOG_FORMAT`, under `--log-format`; a bad value from any of them
//! is a configuration error. Real processes with stderr to a file, where the
//! default (auto) would be JSON, so a `text` that is honoured shows.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::procs::BIN;
use crate::common::subnet;

/// A one-node network (min_active 1) whose config ends with `extra`.
fn one_node(extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let [a, b] = subnet();
    let ip = move |i: usize| std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, a, b, i as u8));
    let config = masternode::devnet::lay_out(dir.path(), 1, ip).unwrap().remove(0);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(extra);
    std::fs::write(&config, text).unwrap();
    (dir, config)
}

/// Runs the daemon until it says its admin API listens, stops it with
/// SIGTERM; its stderr and stdout lines.
fn run_until_listening(dir: &Path, config: &Path, flags: &[&str], env: &[(&str, &str)]) -> (Vec<String>, Vec<String>) {
    let err_path = dir.join("stderr");
    let out_path = dir.join("stdout");
    let mut child = Command::new(BIN)
        .arg("run")
        .args(flags)
        .arg("--config")
        .arg(config)
        .env_remove("MASTERNODE_LOG_FORMAT")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !std::fs::read_to_string(&err_path).unwrap().contains("admin API listening") {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("exited with {status}: {}", std::fs::read_to_string(&err_path).unwrap());
        }
        assert!(start.elapsed() < Duration::from_secs(20), "never listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let lines = |p: &Path| std::fs::read_to_string(p).unwrap().lines().map(str::to_string).collect::<Vec<_>>();
    (lines(&err_path), lines(&out_path))
}

/// Every line is a JSON object with the fields tracing carries.
fn assert_json_lines(lines: &[String], what: &str) {
    assert!(lines.len() >= 3, "{what}: {lines:?}");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{what}: {e}: {line}"));
        assert!(v.is_object(), "{what}: {line}");
        assert!(["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&v["level"].as_str().unwrap_or("")), "{line}");
        assert!(v["fields"]["message"].is_string(), "{what}: {line}");
        assert!(v["timestamp"].is_string() && v["target"].is_string(), "{what}: {line}");
    }
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v["fields"]["message"].as_str().map(str::to_string))
        .map(|m| if m.contains("admin API listening") { "listening" } else { "other" })
        .collect();
    assert!(messages.contains(&"listening"), "{what}: {lines:?}");
}

/// No line is JSON; the lines carry level and message as text.
fn assert_text_lines(lines: &[String], what: &str) {
    assert!(lines.len() >= 3, "{what}: {lines:?}");
    for line in lines {
        assert!(serde_json::from_str::<serde_json::Value>(line).is_err(), "{what}: JSON line {line}");
    }
    assert!(lines.iter().any(|l| l.contains(" INFO ") && l.contains("admin API listening")), "{what}: {lines:?}");
}

#[test]
fn log_format_from_the_file_under_the_environment_under_the_flag() {
    let (dir, config) = one_node("log_format = \"json\"\n");
    let (err, out) = run_until_listening(dir.path(), &config, &[], &[]);
    assert_json_lines(&err, "file json");
    assert!(out.iter().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "stdout: {out:?}");

    let env_text = [("MASTERNODE_LOG_FORMAT", "text")];
    let (err, _) = run_until_listening(dir.path(), &config, &[], &env_text);
    assert_text_lines(&err, "file json, environment text");
    let (err, _) = run_until_listening(dir.path(), &config, &["--log-format", "json"], &env_text);
    assert_json_lines(&err, "environment text, flag json");

    let (dir, config) = one_node("log_format = \"text\"\n");
    let (err, _) = run_until_listening(dir.path(), &config, &[], &[]);
    assert_text_lines(&err, "file text (stderr is a file, where auto is JSON)");
}

#[test]
fn a_bad_log_format_exits_78_with_one_line() {
    let (dir, config) = one_node("log_format = \"xml\"\n");
    let run = |flags: &[&str], env: &[(&str, &str)], config: &Path| {
        let out = Command::new(BIN)
            .arg("run")
            .args(flags)
            .arg("--config")
            .arg(config)
            .env_remove("MASTERNODE_LOG_FORMAT")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).trim().to_string())
    };
    let (code, err) = run(&[], &[], &config);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("log_format \"xml\"") && !err.contains('\n'), "{err}");
    let (_good_dir, good) = one_node("");
    for (flags, env) in [(vec!["--log-format", "yaml"], vec![]), (vec![], vec![("MASTERNODE_LOG_FORMAT", "JSON")])] {
        let (code, err) = run(&flags, &env, &good);
        assert_eq!(code, Some(78), "{flags:?} {env:?}: {err}");
        assert!(err.contains("log_format") && !err.contains('\n'), "{err}");
    }
    drop(dir);
}
