//! `ringfence serve` refusing what would expose the admin API: a weak admin token, whatever its
//! source, and — protected mode — a listener beyond loopback with a token serve made itself. A
//! strong token the operator chose lets it listen anywhere.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::channel;
use std::time::Duration;

use common::{HTTP_LISTENING, Logged, Serve, TempDir, text};

/// How long a refusal may take on a busy machine before the test calls it a hang.
const DEADLINE: Duration = Duration::from_secs(120);
/// A token that follows the rule: 32 hex digits.
const STRONG: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
const SKU: &str =
    r#"{"sku":1,"stock":5,"price_cents":100,"per_user_limit":1,"payment_timeout_ms":60000}"#;

/// `ringfence serve` on `data_dir` with `args`, `RINGFENCE_ADMIN_TOKEN` set to `env_token` (or
/// unset), expected to exit by itself: it is killed if it has not within [`DEADLINE`].
fn serve_refused(data_dir: &Path, args: &[&str], env_token: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringfence"));
    command.arg("serve").arg("--data-dir").arg(data_dir).args(args);
    match env_token {
        Some(token) => command.env("RINGFENCE_ADMIN_TOKEN", token),
        None => command.env_remove("RINGFENCE_ADMIN_TOKEN"),
    };
    let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (send, receive) = channel();
    std::thread::spawn(move || {
        let _ = send.send(child.wait_with_output());
    });
    match receive.recv_timeout(DEADLINE) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("serve {args:?} was not refused within {DEADLINE:?}");
        }
    }
}

/// Asserts a refused start: a non-zero exit and a message containing every one of `needles`.
fn assert_refused(output: &Output, needles: &[&str]) {
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "serve started: {stderr}");
    assert!(stderr.contains("ringfence serve: error:"), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "no `{needle}` in: {stderr}");
    }
}

const LOOPBACK: [&str; 4] = ["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"];
const RULE: [&str; 3] = ["too weak", "at least 32 characters", "head -c 32 /dev/urandom | base64"];

#[test]
fn a_weak_token_is_refused_from_every_source_naming_the_rule() {
    // Goal: a token shorter than the rule — from a token file, the environment, the config
    // file or serve's own file in the data directory — stops the start with a message that
    // names the source, the rule and how to make a good token; an operator's, before the
    // data directory is made.
    let dir = TempDir::new("weak-token");
    let data = dir.path().join("data");
    let file = dir.path().join("weak.token");
    std::fs::write(&file, "correct-horse-battery-staple\n").unwrap();
    let mut args = LOOPBACK.to_vec();
    args.extend(["--admin-token-file", file.to_str().unwrap()]);
    let output = serve_refused(&data, &args, None);
    assert_refused(&output, &[&RULE[..], &["weak.token"]].concat());

    let output = serve_refused(&data, &LOOPBACK, Some("hunter2"));
    assert_refused(&output, &[&RULE[..], &["RINGFENCE_ADMIN_TOKEN"]].concat());

    let config = dir.path().join("ringfence.toml");
    std::fs::write(&config, "admin_token = \"abcdefghijklmnopqrstuvwxyz01234\"\n").unwrap();
    let mut args = LOOPBACK.to_vec();
    args.extend(["--config", config.to_str().unwrap()]);
    let output = serve_refused(&data, &args, None);
    assert_refused(&output, &[&RULE[..], &["config file"]].concat());
    // An operator's token is checked before the data directory is made.
    assert!(!data.exists(), "a refused start made the data directory");

    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("admin.token"), "0123456789abcdef\n").unwrap();
    let output = serve_refused(&data, &LOOPBACK, None);
    assert_refused(&output, &[&RULE[..], &["admin.token", "delete the file"]].concat());
}

#[test]
fn protected_mode_refuses_a_public_listener_without_a_chosen_token() {
    // Goal: binding 0.0.0.0 with no token the operator chose is refused before anything
    // listens or a token is generated; the message says to configure a token or bind
    // loopback.
    let dir = TempDir::new("protected");
    let data = dir.path().join("data");
    for args in [
        ["--listen", "127.0.0.1:0", "--http", "0.0.0.0:0"],
        ["--listen", "0.0.0.0:0", "--http", "127.0.0.1:0"],
    ] {
        let output = serve_refused(&data, &args, None);
        let needles = ["protected mode", "0.0.0.0:0", "--admin-token-file", "loopback"];
        assert_refused(&output, &needles);
        assert!(!data.join("admin.token").exists(), "a refused start generates no token");
    }
}

#[test]
fn a_chosen_strong_token_lets_serve_listen_beyond_loopback() {
    // Goal: with a strong token from a file, serve binds 0.0.0.0 (an ephemeral port, stopped
    // at once), does not claim protected mode, and accepts the token for an admin call.
    let dir = TempDir::new("public");
    let file = dir.path().join("chosen.token");
    std::fs::write(&file, format!("{STRONG}\n")).unwrap();
    let child = Logged::spawn(
        Command::new(env!("CARGO_BIN_EXE_ringfence"))
            .args(["serve", "--listen", "127.0.0.1:0", "--http", "0.0.0.0:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--admin-token-file")
            .arg(&file)
            // Only the admin token: buyer commands would be open, which must be acknowledged.
            .arg("--open-client-commands")
            .env_remove("RINGFENCE_ADMIN_TOKEN"),
    );
    let (address, log) = child.wait_for(HTTP_LISTENING, DEADLINE);
    let http: SocketAddr = address.parse().unwrap();
    assert!(http.ip().is_unspecified(), "{http}");
    assert!(log.iter().all(|line| !line.contains("protected mode")), "{log:?}");
    let request = format!(
        "POST /v1/skus HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {STRONG}\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{SKU}",
        SKU.len()
    );
    let mut stream = TcpStream::connect(("127.0.0.1", http.port())).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    drop(child);
}

#[test]
fn serve_own_token_on_loopback_runs_in_protected_mode() {
    // Goal: the default case still starts — a generated token, loopback listeners — and the
    // log says it runs in protected mode; the generated token follows the rule.
    let dir = TempDir::new("own-token");
    let node = Serve::start(dir.path());
    node.wait_for_log("protected mode", DEADLINE);
    assert!(node.token.len() >= 32, "{}", node.token);
    assert_eq!(node.call("POST", "/v1/skus", SKU, true).0, 201);
}
