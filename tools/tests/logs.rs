//! `serve`'s log: timestamps and levels on every line, a filter from `RINGFENCE_LOG`, and
//! JSON lines with `RINGFENCE_LOG_FORMAT=json`. Each run is a node that logs its start and
//! then stops on an HTTP address already taken, so every test ends by itself.

mod common;

use std::process::{Command, Output};

use common::{TempDir, log_message, text};

/// `serve` on a fresh directory with an HTTP address another socket holds, which it finds
/// only when it opens its listeners after recovery (so it logs its start first), with the log
/// environment `env`.
fn refused_start(dir: &TempDir, env: &[(&str, &str)]) -> Output {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = taken.local_addr().unwrap().to_string();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringfence"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--http", &http, "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("RINGFENCE_LOG")
        .env_remove("RINGFENCE_LOG_FORMAT")
        .env_remove("RINGFENCE_ADMIN_TOKEN");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("ringfence runs");
    drop(taken);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("starting the listeners"), "{}", text(&output.stderr));
    output
}

#[test]
fn log_lines_carry_a_timestamp_and_a_level() {
    // Goal: every log line starts with an RFC 3339 UTC time and a level before its message.
    let dir = TempDir::new("log-text");
    let stderr = text(&refused_start(&dir, &[]).stderr);
    let logged: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("ringfence serve:")).collect();
    assert!(logged.len() >= 3, "{stderr}");
    for line in &logged {
        assert_ne!(log_message(line), *line, "no timestamp and level: {line}");
        assert!(log_message(line).starts_with("ringfence: "), "{line}");
        let year: u32 = line[..4].parse().expect("a year first");
        assert!(year >= 2024, "{line}");
    }
    assert!(logged.iter().any(|l| l.contains(" INFO ") && l.contains("data directory")));
    // The release comes first, with the formats and protocols it speaks.
    let first = log_message(logged[0]);
    let release = concat!("ringfence: ringfence ", env!("CARGO_PKG_VERSION"), " (formats: ");
    assert!(first.starts_with(release) && first.contains("replication "), "{first}");
}

#[test]
fn the_filter_keeps_what_it_names_and_a_bad_filter_is_reported() {
    // Goal: RINGFENCE_LOG=warn drops the INFO lines; a filter that does not parse is named in
    // a warning and the default (info) applies.
    let dir = TempDir::new("log-filter");
    let quiet = text(&refused_start(&dir, &[("RINGFENCE_LOG", "warn")]).stderr);
    assert!(!quiet.contains(" INFO "), "{quiet}");
    let dir = TempDir::new("log-filter-bad");
    let noisy = text(&refused_start(&dir, &[("RINGFENCE_LOG", "ringfence=[")]).stderr);
    assert!(noisy.contains(" WARN ") && noisy.contains("RINGFENCE_LOG"), "{noisy}");
    assert!(noisy.contains(" INFO "), "{noisy}");
}

#[test]
fn json_lines_are_one_object_per_event() {
    // Goal: with RINGFENCE_LOG_FORMAT=json a log shipper reads timestamp, level, target and
    // message from each line.
    let dir = TempDir::new("log-json");
    let stderr = text(&refused_start(&dir, &[("RINGFENCE_LOG_FORMAT", "json")]).stderr);
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(events.len() >= 3, "{stderr}");
    for event in &events {
        assert!(["INFO", "WARN"].contains(&event["level"].as_str().unwrap()), "{event}");
        assert_eq!(event["target"], "ringfence", "{event}");
        assert!(event["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{event}");
        assert!(event["fields"]["message"].is_string(), "{event}");
    }
}
