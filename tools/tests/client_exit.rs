//! `ringfence client`'s exit status: a node's refusal of the token is a refusal like any other
//! (exit 1, the HTTP API's error JSON on standard output), wherever the client presents it; a
//! node it cannot reach is an error (exit 2, a line on standard error).

mod common;

use std::net::TcpListener;
use std::process::Command;

use common::{Serve, TempDir, text};

const WRONG: &str = "wrongwrongwrongwrongwrongwrong00";

/// Runs `ringfence client --addr addr` with `args` and `env` (no other token variables set):
/// its exit code, standard output and standard error.
fn client(addr: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .args(["client", "--addr", addr])
        .args(args)
        .env_remove("RINGFENCE_ADMIN_TOKEN")
        .env_remove("RINGFENCE_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

/// Asserts that `answer` is a refusal coded `code`: exit 1 and the error JSON, nothing on
/// standard error.
fn assert_refused(answer: &(Option<i32>, String, String), code: &str) {
    assert_eq!(answer.0, Some(1), "{answer:?}");
    let json: serde_json::Value = serde_json::from_str(answer.1.trim())
        .unwrap_or_else(|e| panic!("{e}: not the error JSON: {answer:?}"));
    assert_eq!(json["error"], code, "{answer:?}");
    assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()), "{answer:?}");
    assert!(answer.2.is_empty(), "a refusal is not an error: {answer:?}");
}

#[test]
fn a_refused_token_exits_1_with_the_error_json() {
    // Goal: a wrong role token, a wrong named admin token and a wrong admin token from the
    // environment (sent only for an admin command) each exit 1 with `auth_failed`, and the
    // wrong token past the address's budget exits 1 with `rate_limited`.
    let dir = TempDir::new("client-exit");
    let config = dir.path().join("ringfence.toml");
    let limits = "[server]\nauth_failures_burst = 3\nauth_failure_refill_ms = 600000\n";
    std::fs::write(&config, limits).unwrap();
    let node = Serve::start_with(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);
    let addr = node.binary.to_string();
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, format!("{WRONG}\n")).unwrap();
    let wrong = wrong.to_str().unwrap();

    assert_refused(&client(&addr, &["--token-file", wrong, "sku", "5"], &[]), "auth_failed");
    let named = ["--admin-token-file", wrong, "sku", "5"];
    assert_refused(&client(&addr, &named, &[]), "auth_failed");
    let create = ["create-sku", "--sku", "5", "--stock", "1", "--price-cents", "100"];
    let from_env = [("RINGFENCE_ADMIN_TOKEN", WRONG)];
    assert_refused(&client(&addr, &create, &from_env), "auth_failed");
    assert_refused(&client(&addr, &["--token-file", wrong, "ping"], &[]), "rate_limited");
    // The refusals changed nothing: the SKU was never created.
    let (status, _) = node.call("GET", "/v1/skus/5", "", false);
    assert_eq!(status, 404);
    drop(node);
}

#[test]
fn a_node_not_reached_exits_2_with_an_error_line() {
    // Goal: nothing listening at the address is an error reaching the node, not a refusal.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let answer = client(&closed.to_string(), &["ping"], &[]);
    assert_eq!(answer.0, Some(2), "{answer:?}");
    assert!(answer.1.is_empty(), "{answer:?}");
    assert!(answer.2.starts_with("ringfence client: error: no node reachable"), "{answer:?}");
}
