//! `ringfence promote` and `ringfence replication` against a node's HTTP API: the answer is
//! printed, the exit status says whether the node did it (0), refused (1) or could not be
//! reached (2).

mod common;

use std::process::{Command as Process, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TempDir, ringfence_within, text};
use ringfence_core::Command;
use ringfence_ingress::wire::NodeInfo;
use ringfence_ingress::{AdminCall, Backend, BackendCompletion, NodeStatus, Refusal, ServerConfig};

const TOKEN: &str = "admin-cli-token";
const DEADLINE: Duration = Duration::from_secs(60);

/// A node that only answers the replication admin calls: a standby until promoted.
struct Replicated {
    primary: bool,
    modes: Arc<Mutex<Vec<String>>>,
}

impl Backend for Replicated {
    fn try_submit(&mut self, _command: Command, _token: u64) -> Result<(), Refusal> {
        Err(Refusal::NotPrimary { primary: None })
    }

    fn poll(&mut self) -> Option<BackendCompletion> {
        None
    }

    fn status(&self) -> NodeStatus {
        let info = NodeInfo { primary: self.primary, epoch: 1, ..NodeInfo::default() };
        NodeStatus { info, ..NodeStatus::default() }
    }

    fn promote(&mut self, _force: bool) -> AdminCall<u64> {
        self.primary = true;
        AdminCall::Done(Ok(2))
    }

    fn set_replication_mode(&mut self, mode: &str) -> AdminCall<()> {
        self.modes.lock().unwrap().push(mode.to_owned());
        AdminCall::Done(Ok(()))
    }
}

fn start(modes: &Arc<Mutex<Vec<String>>>) -> ringfence_ingress::ServerHandle {
    let config =
        ServerConfig { listen: None, admin_token: Some(TOKEN.into()), ..ServerConfig::loopback() };
    let backend = Replicated { primary: false, modes: Arc::clone(modes) };
    ringfence_ingress::start(config, move |_| Ok(backend)).unwrap()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("stdout is not JSON ({e}): {} / {}", text(&output.stdout), text(&output.stderr))
    })
}

#[test]
fn promote_and_replication_print_the_nodes_answer() {
    // Goal: with the token from a file or from RINGFENCE_ADMIN_TOKEN, promote prints the new
    // role and epoch and replication the mode now in force, exiting 0; a second promotion is
    // refused (409 not_standby) and exits 1 with the answer printed and explained.
    let modes = Arc::new(Mutex::new(Vec::new()));
    let server = start(&modes);
    let addr = server.http_addr().unwrap().to_string();
    let dir = TempDir::new("admin-cli");
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let token_file = token_file.to_str().unwrap();

    let promoted =
        ringfence_within(&["promote", "--http", &addr, "--admin-token-file", token_file], DEADLINE);
    assert_eq!(promoted.status.code(), Some(0), "{}", text(&promoted.stderr));
    assert_eq!(json(&promoted), serde_json::json!({ "role": "primary", "epoch": 2 }));

    let switched = Process::new(env!("CARGO_BIN_EXE_ringfence"))
        .args(["replication", "--http", &addr, "--mode", "async"])
        .env("RINGFENCE_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(switched.status.code(), Some(0), "{}", text(&switched.stderr));
    assert_eq!(json(&switched), serde_json::json!({ "mode": "async" }));
    assert_eq!(*modes.lock().unwrap(), ["async"]);

    let again =
        ringfence_within(&["promote", "--http", &addr, "--admin-token-file", token_file], DEADLINE);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(json(&again)["error"], "not_standby");
    assert!(text(&again.stderr).contains("refused: 409 not_standby"), "{}", text(&again.stderr));
    server.shutdown().unwrap();
}

#[test]
fn bad_tokens_modes_and_addresses_fail_clearly() {
    // Goal: a wrong token exits 1 with the node's 401; an unknown mode is refused by the
    // command line before anything is sent; an unreadable token file and an address nobody
    // listens on exit 2 naming what failed.
    let modes = Arc::new(Mutex::new(Vec::new()));
    let server = start(&modes);
    let addr = server.http_addr().unwrap().to_string();
    let dir = TempDir::new("admin-cli-bad");
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    let wrong = wrong.to_str().unwrap();

    let unauthorized = ringfence_within(
        &["replication", "--http", &addr, "--mode", "sync", "--admin-token-file", wrong],
        DEADLINE,
    );
    assert_eq!(unauthorized.status.code(), Some(1));
    assert_eq!(json(&unauthorized)["error"], "unauthorized");
    let bad_mode = ringfence_within(
        &["replication", "--http", &addr, "--mode", "eventual", "--admin-token-file", wrong],
        DEADLINE,
    );
    assert_eq!(bad_mode.status.code(), Some(2));
    assert!(text(&bad_mode.stderr).contains("eventual"), "{}", text(&bad_mode.stderr));
    assert!(modes.lock().unwrap().is_empty());

    let missing = dir.path().join("missing.token");
    let missing = missing.to_str().unwrap();
    let no_token =
        ringfence_within(&["promote", "--http", &addr, "--admin-token-file", missing], DEADLINE);
    assert_eq!(no_token.status.code(), Some(2));
    assert!(text(&no_token.stderr).contains("missing.token"), "{}", text(&no_token.stderr));

    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let nobody = nobody.to_string();
    let unreachable =
        ringfence_within(&["promote", "--http", &nobody, "--admin-token-file", wrong], DEADLINE);
    assert_eq!(unreachable.status.code(), Some(2));
    let stderr = text(&unreachable.stderr);
    assert!(stderr.contains(&format!("reaching the node at {nobody}")), "{stderr}");
    server.shutdown().unwrap();
}
