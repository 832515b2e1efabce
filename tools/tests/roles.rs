//! `ringfence serve` with role tokens: from the environment and `[auth]` in the config file,
//! each held to the token rule, no two roles sharing one; a public listener needs role tokens
//! or `--open-client-commands`; and a node started with them enforces them.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::channel;
use std::time::Duration;

use common::{HTTP_LISTENING, Logged, TempDir, text};

/// How long a start or a refusal may take on a busy machine before the test calls it a hang.
const DEADLINE: Duration = Duration::from_secs(120);
const ADMIN: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
const ORDERS: &str = "ordersordersordersordersorders00";
const READ: &str = "readreadreadreadreadreadreadread";
const ROLE_ENV: [&str; 3] =
    ["RINGFENCE_ORDERS_TOKEN", "RINGFENCE_PAYMENTS_TOKEN", "RINGFENCE_READ_TOKEN"];

/// `ringfence serve` on a fresh data directory in `dir` with `args` and `env` (no other token
/// variables set).
fn serve_command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringfence"));
    command.arg("serve").arg("--data-dir").arg(dir.join("data")).args(args);
    command.env_remove("RINGFENCE_ADMIN_TOKEN");
    for name in ROLE_ENV {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command
}

/// Runs a `serve` expected to refuse to start; killed if it has not exited within DEADLINE.
/// Runs `serve` expecting a refusal whose log holds every needle; returns the error line.
fn refused(dir: &Path, args: &[&str], env: &[(&str, &str)], needles: &[&str]) -> String {
    let child = serve_command(dir, args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (send, receive) = channel();
    std::thread::spawn(move || {
        let _ = send.send(child.wait_with_output());
    });
    let output: Output = match receive.recv_timeout(DEADLINE) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("serve {args:?} was not refused within {DEADLINE:?}");
        }
    };
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "serve started: {stderr}");
    assert!(stderr.contains("ringfence serve: error:"), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "no `{needle}` in: {stderr}");
    }
    let error = stderr.lines().find(|line| line.contains("ringfence serve: error:"));
    error.expect("checked above").to_owned()
}

const LOOPBACK: [&str; 4] = ["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"];

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn weak_or_shared_role_tokens_are_refused_at_start() {
    // Goal: a role token below the rule (from the environment or an [auth] file) stops the
    // start naming the role, the source and the rule; two roles with one token stop it naming
    // both roles; `--open-client-commands` with role tokens is a contradiction.
    let dir = TempDir::new("roles-refused");
    let admin = write(&dir.path().join("admin.token"), &format!("{ADMIN}\n"));
    let mut args = LOOPBACK.to_vec();
    args.extend(["--admin-token-file", &admin]);
    let rule = "at least 32 characters";
    refused(
        dir.path(),
        &args,
        &[("RINGFENCE_ORDERS_TOKEN", "hunter2")],
        // The variable is read before the file: the advice is to change or unset it.
        &["orders token", "too weak", rule, "set RINGFENCE_ORDERS_TOKEN to it, or unset"],
    );
    let weak = write(&dir.path().join("read.token"), "short\n");
    let config =
        write(&dir.path().join("weak.toml"), &format!("[auth]\nread_token_file = \"{weak}\"\n"));
    let mut with_config = args.clone();
    with_config.extend(["--config", &config]);
    let read_rule = ["read token", "read.token", "too weak", rule, "[auth] read_token_file"];
    let said = refused(dir.path(), &with_config, &[], &read_rule);
    assert!(!said.contains("admin"), "the read token's rule names the admin token: {said}");

    // The admin token reused as the orders token, through the config file.
    let config = write(
        &dir.path().join("shared.toml"),
        &format!("[auth]\norders_token_file = \"{admin}\"\n"),
    );
    let mut with_config = args.clone();
    with_config.extend(["--config", &config]);
    refused(dir.path(), &with_config, &[], &["admin and orders roles have the same token"]);
    refused(
        dir.path(),
        &args,
        &[("RINGFENCE_PAYMENTS_TOKEN", READ), ("RINGFENCE_READ_TOKEN", READ)],
        &["payments and read roles have the same token"],
    );

    let mut open = args.clone();
    open.push("--open-client-commands");
    refused(dir.path(), &open, &[("RINGFENCE_READ_TOKEN", READ)], &["contradicts"]);
}

#[test]
fn a_public_listener_with_only_the_admin_token_needs_an_acknowledgement() {
    // Goal: a chosen admin token alone no longer opens 0.0.0.0: buyer commands would be open
    // to anyone, so serve refuses unless role tokens are configured or the operator passes
    // --open-client-commands (see protected.rs for the acknowledged start).
    let dir = TempDir::new("roles-public");
    let admin = write(&dir.path().join("admin.token"), &format!("{ADMIN}\n"));
    let args = ["--listen", "127.0.0.1:0", "--http", "0.0.0.0:0", "--admin-token-file", &admin];
    let needles = ["protected mode", "0.0.0.0:0", "only the admin token", "--open-client-commands"];
    refused(dir.path(), &args, &[], &needles);
    assert!(!dir.path().join("data").join("admin.token").exists());
}

fn http(addr: SocketAddr, method: &str, path: &str, bearer: Option<&str>) -> String {
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let mut stream = TcpStream::connect(("127.0.0.1", addr.port())).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// A `serve` in `dir` with the admin token from `--admin-token-file` and `role`'s token from
/// `[auth] <role>_token_file`, listening on `listen` (binary, HTTP), with `env` set. Returns
/// it with the two token files.
fn serve_with_role_token(
    dir: &Path,
    (role, token): (&str, &str),
    [binary, http]: [&str; 2],
    env: &[(&str, &str)],
) -> (Logged, String, String) {
    let admin = write(&dir.join("admin.token"), &format!("{ADMIN}\n"));
    let role_file = write(&dir.join(format!("{role}.token")), &format!("{token}\n"));
    let config = write(
        &dir.join("ringfence.toml"),
        &format!("[auth]\n{role}_token_file = \"{role_file}\"\n"),
    );
    let args =
        ["--listen", binary, "--http", http, "--admin-token-file", &admin, "--config", &config];
    (Logged::spawn(&mut serve_command(dir, &args, env)), admin, role_file)
}

#[test]
fn role_tokens_from_config_and_environment_are_enforced_on_a_public_listener() {
    // Goal: with an orders token from [auth] and a read token from the environment, serve
    // listens on 0.0.0.0 without an acknowledgement and every call needs a token of the right
    // role: no token 401, the orders token may read but not snapshot (403), /health is open.
    let dir = TempDir::new("roles-enforced");
    let listen = ["127.0.0.1:0", "0.0.0.0:0"];
    let env = [("RINGFENCE_READ_TOKEN", READ)];
    let (child, ..) = serve_with_role_token(dir.path(), ("orders", ORDERS), listen, &env);
    let (address, log) = child.wait_for(HTTP_LISTENING, DEADLINE);
    let addr: SocketAddr = address.parse().unwrap();
    assert!(log.iter().any(|line| line.contains("roles enforced")), "{log:?}");
    assert!(http(addr, "GET", "/health", None).starts_with("HTTP/1.1 200"));
    assert!(http(addr, "GET", "/v1/node", None).starts_with("HTTP/1.1 401"));
    assert!(http(addr, "GET", "/v1/node", Some(READ)).starts_with("HTTP/1.1 200"));
    assert!(http(addr, "GET", "/v1/node", Some(ORDERS)).starts_with("HTTP/1.1 200"));
    let snapshot = http(addr, "POST", "/v1/admin/snapshot", Some(ORDERS));
    assert!(snapshot.starts_with("HTTP/1.1 403"), "{snapshot}");
    assert!(snapshot.contains("`admin` role"), "{snapshot}");
    let snapshot = http(addr, "POST", "/v1/admin/snapshot", Some(ADMIN));
    assert!(snapshot.starts_with("HTTP/1.1 202"), "{snapshot}");
    // `ringfence status` reads with the token it is given, and says when it was refused.
    let status = |token_file: Option<&str>| {
        let node = format!("127.0.0.1:{}", addr.port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringfence"));
        command.args(["status", "--http", &node]).env_remove("RINGFENCE_TOKEN");
        command.args(token_file.map(|file| ["--token-file", file]).into_iter().flatten());
        let output = command.output().unwrap();
        (output.status.code(), text(&output.stdout))
    };
    let (code, said) = status(None);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("/v1/node answered 401 unauthorized"), "{said}");
    let read = write(&dir.path().join("read.token"), &format!("{READ}\n"));
    let (code, said) = status(Some(&read));
    assert_eq!((code, said.ends_with("healthy\n")), (Some(0), true), "{said}");
    drop(child);
}

#[test]
fn the_client_uses_an_admin_token_it_was_given_by_name() {
    // Goal: on a node that enforces roles, `ringfence client` sends the admin token named with
    // --admin-token-file for admin commands even when a role token is given too, and for
    // every command when it is the only token; a role token alone is still held to its role.
    let dir = TempDir::new("roles-client");
    let listen = ["127.0.0.1:0", "127.0.0.1:0"];
    let (child, admin, read) = serve_with_role_token(dir.path(), ("read", READ), listen, &[]);
    let (binary, _) = child.wait_for("ringfence: binary protocol v1 listening on ", DEADLINE);
    let client = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_ringfence"))
            .args(["client", "--addr", &binary])
            .args(args)
            .env_remove("RINGFENCE_ADMIN_TOKEN")
            .env_remove("RINGFENCE_TOKEN")
            .output()
            .unwrap();
        (output.status.code(), text(&output.stdout), text(&output.stderr))
    };
    let create = ["create-sku", "--sku", "5", "--stock", "3", "--price-cents", "100"];
    let with_read = ["--token-file", read.as_str()];
    let refused = client(&[with_read.as_slice(), &create].concat());
    assert_eq!(refused.0, Some(1), "{refused:?}");
    assert!(refused.1.contains("forbidden"), "the read token alone: {refused:?}");
    let both = [with_read.as_slice(), &["--admin-token-file", &admin], &create].concat();
    let created = client(&both);
    assert_eq!(created.0, Some(0), "{created:?}");
    assert!(created.1.contains("\"stock\":3"), "{created:?}");
    let read_back = client(&["--admin-token-file", &admin, "sku", "5"]);
    assert_eq!(read_back.0, Some(0), "the admin token alone reads: {read_back:?}");
    assert!(read_back.1.contains("\"available\":3"), "{read_back:?}");
}
