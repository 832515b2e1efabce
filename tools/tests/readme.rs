//! README.md's walkthrough, run as written against a live `serve`: the flash sale driven with
//! `curl` and `ringfence client`, then the journal tools on the live data directory, then the
//! configuration example. Only the addresses change (the test's node listens on ports the OS
//! chose); a README edit that breaks a command, or changes what it answers, fails here.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{Serve, TempDir, text};

/// The default addresses the walkthrough names, which the test's node does not listen on.
const README_HTTP: &str = "http://127.0.0.1:7080";
const README_CLIENT: &str = "ringfence client ";

/// The first ```sh block after the line of README.md that contains `after`.
fn readme_block(after: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md reads");
    let start = readme.find(after).unwrap_or_else(|| panic!("README.md has no `{after}`"));
    let rest = &readme[start..];
    let open = rest.find("```sh\n").expect("a sh block follows") + "```sh\n".len();
    let close = rest[open..].find("```").expect("the sh block is closed");
    rest[open..open + close].to_owned()
}

/// Runs `script` with bash in `dir`, the test's `ringfence` first on the path, stopping at the
/// first failing command.
fn run_in(dir: &Path, script: &str) -> Output {
    let binary = Path::new(env!("CARGO_BIN_EXE_ringfence"));
    let path = std::env::var("PATH").unwrap_or_default();
    let path = format!("{}:{path}", binary.parent().expect("the binary's folder").display());
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("RINGFENCE_ADMIN_TOKEN")
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "the README's block failed ({}):\n{script}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    output
}

/// The JSON answers a block printed, one per line that holds one.
fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    text(&output.stdout).lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let dir = TempDir::new("readme");
    let node = Serve::start(&dir.path().join("ringfence-data"));

    // The flash sale, as a user pastes it.
    let sale = readme_block("Drive a flash sale");
    assert!(sale.contains(README_HTTP) && sale.contains(README_CLIENT), "{sale}");
    let sale = sale
        .replace(README_HTTP, &format!("http://{}", node.http))
        .replace(README_CLIENT, &format!("ringfence client --addr {} ", node.binary));
    let output = run_in(dir.path(), &sale);
    let answers = json_lines(&output);
    let with = |key: &str, value: &str| {
        answers.iter().filter(|answer| answer[key] == value).cloned().collect::<Vec<_>>()
    };
    // The buyer's reservation and its retry: one order, answered twice.
    let reserved = with("state", "reserved");
    assert_eq!(reserved.len(), 2, "{answers:?}");
    assert_eq!(reserved[0]["order_id"], reserved[1]["order_id"]);
    assert_eq!(with("error", "limit_exceeded").len(), 1, "{answers:?}");
    // The second buyer's order paid, then shipped, then read back shipped.
    let shipped = with("state", "shipped");
    assert_eq!(shipped.len(), 2, "{answers:?}");
    let paid = with("state", "paid");
    assert_eq!(paid.len(), 1, "{answers:?}");
    assert_eq!(paid[0]["order_id"], shipped[0]["order_id"]);
    // Two of 100 units taken: one reserved, one sold; over HTTP and the binary protocol alike.
    let skus: Vec<_> = answers.iter().filter(|answer| answer["stock"] == 100).collect();
    let last = skus.last().expect("the SKU was read");
    assert_eq!(
        (&last["available"], &last["reserved"], &last["sold"]),
        (&98.into(), &1.into(), &1.into())
    );
    let node_view = answers.iter().find(|answer| answer["role"] == "primary").expect("/v1/node");
    let journaled = node_view["last_sequence"].as_u64().expect("a sequence");
    let stdout = text(&output.stdout);
    assert!(stdout.contains("ringfence_outcomes_total{outcome=\"reserved\"}"), "{stdout}");

    // The journal tools on the live directory.
    let tools = run_in(dir.path(), &readme_block("Then inspect what was recorded"));
    let exported = std::fs::read_to_string(dir.path().join("outcomes.jsonl")).expect("exported");
    assert_eq!(exported.lines().count() as u64, journaled, "one line per journaled command");
    let tools_out = text(&tools.stdout);
    assert!(tools_out.contains(&format!("{journaled} outcomes.jsonl")), "{tools_out}");

    // The configuration example passes its own check.
    let config = run_in(dir.path(), &readme_block("Start from the example"));
    assert!(dir.path().join("ringfence.toml").is_file(), "{}", text(&config.stdout));

    // The node served all of it and still answers.
    assert_eq!(node.get_text("/health").0, 200, "{:?}", node.drain_log());
}
