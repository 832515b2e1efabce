//! `ringfence serve` as a process: it starts on a fresh data directory, serves HTTP, and a
//! restart — after SIGTERM or after SIGKILL — recovers every answered command from the journal.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Serve, ringfence, text};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringfence-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn reserve(node: &Serve, request_id: &str, user: u64) -> (u16, serde_json::Value) {
    let body = format!(r#"{{"request_id":"{request_id}","user":{user},"sku":1,"qty":1}}"#);
    node.call("POST", "/v1/orders", &body, false)
}

#[test]
fn restart_recovers_state_after_sigterm_and_after_sigkill() {
    // Goal: everything answered before a clean stop or a crash is there after restart: stock
    // figures, orders and their states, and retries still get their original answers.
    let dir = temp_dir("restart");
    let mut node = Serve::start(&dir);
    let sku =
        r#"{"sku":1,"stock":50,"price_cents":700,"per_user_limit":1,"payment_timeout_ms":600000}"#;
    assert_eq!(node.call("POST", "/v1/skus", sku, true).0, 201);
    let (status, first) = reserve(&node, "r-1", 1);
    assert_eq!(status, 201);
    let order = first["order_id"].as_str().unwrap().to_owned();
    for user in 2..=5 {
        assert_eq!(reserve(&node, &format!("r-{user}"), user).0, 201);
    }
    let pay = r#"{"request_id":"pay-1","payment_ref":"psp-1","amount_cents":700}"#;
    assert_eq!(node.call("POST", &format!("/v1/orders/{order}/pay"), pay, false).0, 200);
    let before = node.call("GET", "/v1/skus/1", "", false).1;
    assert!(node.signal("-TERM").success(), "a clean stop exits with success");

    let mut node = Serve::start(&dir);
    assert_eq!(node.call("GET", "/v1/skus/1", "", false).1, before);
    assert_eq!(reserve(&node, "r-1", 1), (201, first.clone()), "a retry gets the original answer");
    let view = node.call("GET", &format!("/v1/orders/{order}"), "", false).1;
    assert_eq!(view["state"], "paid");
    for user in 6..=9 {
        assert_eq!(reserve(&node, &format!("r-{user}"), user).0, 201);
    }
    let before_crash = node.call("GET", "/v1/skus/1", "", false).1;
    assert_eq!(before_crash["reserved"], 8);
    node.signal("-KILL");

    let node = Serve::start(&dir);
    assert_eq!(node.call("GET", "/v1/skus/1", "", false).1, before_crash);
    let (status, error) = reserve(&node, "r-again-1", 1);
    assert_eq!((status, error["error"].clone()), (409, "limit_exceeded".into()));
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_refuses_a_bad_config_file_with_a_clear_error() {
    // Goal: an unknown setting stops the start with an error naming the file and the key.
    let dir = temp_dir("badconfig");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ringfence.toml");
    std::fs::write(&config, "[server]\nlisten_on = \"127.0.0.1:1\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ringfence.toml") && stderr.contains("listen_on"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_refuses_capacities_the_machine_cannot_hold_before_recovery() {
    // Goal: an engine writes every table at start, so capacities beyond the machine's memory
    // are refused up front with the figures (here about 250 GiB for two engines), not met by
    // the out-of-memory killer while the tables are written; nothing is created in the data
    // directory but its lock.
    let dir = temp_dir("toobig");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ringfence.toml");
    let engine = "[engine]\nrequest_keys_max = 1073741824\norders_max = 1048576\n";
    std::fs::write(&config, format!("data_dir = {:?}\n{engine}", dir.join("data"))).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("[engine] the tables need"), "{stderr}");
    assert!(stderr.contains("2 engine(s)") && stderr.contains("MiB is available"), "{stderr}");
    let journal = std::fs::read_dir(dir.join("data")).map_or(0, |entries| {
        entries.filter(|e| e.as_ref().is_ok_and(|e| e.file_name() != "ringfence.lock")).count()
    });
    assert_eq!(journal, 0, "refused before recovery wrote anything");
    let _ = std::fs::remove_dir_all(&dir);
}

fn client(node: &Serve, args: &[&str]) -> (i32, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .args(["client", "--addr", &node.binary.to_string()])
        .args(args)
        .env("RINGFENCE_ADMIN_TOKEN", &node.token)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&output.stderr)));
    (output.status.code().unwrap(), json)
}

#[test]
fn client_subcommands_drive_a_node() {
    // Goal: `ringfence client` creates a SKU (admin), reserves, reads back, and exits non-zero
    // with the rejection code when refused.
    let dir = temp_dir("client");
    let node = Serve::start(&dir);
    let create = ["create-sku", "--sku", "5", "--stock", "1", "--price-cents", "250"];
    let (code, sku) = client(&node, &create);
    assert_eq!((code, sku["available"].clone()), (0, 1.into()));
    let reserve = ["reserve", "--request-id", "cli-1", "--user", "8", "--sku", "5"];
    let (code, reserved) = client(&node, &reserve);
    assert_eq!((code, reserved["state"].clone()), (0, "reserved".into()));
    assert_eq!(client(&node, &reserve).1, reserved, "a retry gets the original answer");
    let other = ["reserve", "--request-id", "cli-2", "--user", "9", "--sku", "5"];
    let (code, refused) = client(&node, &other);
    assert_eq!((code, refused["error"].clone()), (1, "sold_out".into()));
    let order = reserved["order_id"].as_str().unwrap();
    assert_eq!(client(&node, &["order", order]).1["user"], "8");
    assert_eq!(client(&node, &["node"]).1["role"], "primary");
    // `--addr` takes a host name too.
    let by_name = Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .args(["client", "--addr", &format!("localhost:{}", node.binary.port()), "ping"])
        .output()
        .unwrap();
    assert!(by_name.status.success(), "{}", String::from_utf8_lossy(&by_name.stderr));
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Journal records and bytes used, read by `journal verify --json` (which a live directory
/// allows).
fn journal_size(dir: &Path) -> (u64, u64) {
    let output = ringfence(&["journal", "verify", dir.to_str().unwrap(), "--json"]);
    assert!(output.status.success(), "verify on a live directory: {}", text(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    (json["records"].as_u64().unwrap(), json["bytes_used"].as_u64().unwrap())
}

#[test]
fn an_idle_node_journals_nothing_but_due_deadlines() {
    // Goal: an idle node's journal does not grow: no ticks and no reads are journaled; only a
    // payment deadline coming due adds a record (one tick). Prints the growth it measured.
    let dir = temp_dir("idle");
    let node = Serve::start(&dir);
    let sku =
        r#"{"sku":1,"stock":5,"price_cents":100,"per_user_limit":0,"payment_timeout_ms":1000}"#;
    assert_eq!(node.call("POST", "/v1/skus", sku, true).0, 201);
    assert_eq!(reserve(&node, "idle-1", 1).0, 201);
    let (records, bytes) = journal_size(&dir);
    let started = Instant::now();
    // Reads in the idle spell are answered but not journaled.
    for _ in 0..20 {
        assert_eq!(node.call("GET", "/v1/skus/1", "", false).0, 200);
        std::thread::sleep(Duration::from_millis(150));
    }
    let (status, metrics) = node.get_text("/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("ringfence_snapshots_failed_total 0"), "{metrics}");
    // The tables as they stand, though fewer commands were applied than publish them by count.
    assert!(metrics.contains("ringfence_engine_table_rows{table=\"skus\"} 1\n"), "{metrics}");
    // The release and its protocols, for an alert comparing the nodes of a pair.
    let build = metrics.lines().find(|l| l.starts_with("ringfence_build_info{")).expect("build");
    let protocol = ringfence_replicator::message::PROTOCOL_VERSION;
    assert!(build.contains(&format!("replication_protocol=\"{protocol}\"")), "{build}");
    let snapshots = ringfence_journal::snapshot::SNAPSHOT_FORMAT_VERSION;
    assert!(build.contains(&format!("snapshot_format=\"{snapshots}\"")), "{build}");
    assert!(build.contains(concat!("version=\"", env!("CARGO_PKG_VERSION"), "\"")), "{build}");
    assert!(build.ends_with("} 1"), "{build}");
    let (records_after, bytes_after) = journal_size(&dir);
    let seconds = started.elapsed().as_secs_f64();
    let grown = records_after - records;
    println!(
        "idle journal growth: {grown} records, {} bytes in {seconds:.1} s ({:.2} records/s)",
        bytes_after - bytes,
        grown as f64 / seconds
    );
    assert_eq!(grown, 1, "one tick for the one deadline that came due, nothing else");
    assert!(bytes_after - bytes <= 64, "a tick is one small record");
    let expired = node.call("GET", "/v1/skus/1", "", false).1;
    assert_eq!((expired["available"].clone(), expired["reserved"].clone()), (5.into(), 0.into()));
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_request_id_is_scoped_to_its_buyer() {
    // Goal: two buyers who pick the same request id each get their own reservation, and each
    // retry gets back its own: guessing another buyer's request id cannot spoil their order.
    let dir = temp_dir("scoped-keys");
    let node = Serve::start(&dir);
    let sku =
        r#"{"sku":1,"stock":50,"price_cents":700,"per_user_limit":0,"payment_timeout_ms":600000}"#;
    assert_eq!(node.call("POST", "/v1/skus", sku, true).0, 201);
    let (alice_status, alice) = reserve(&node, "req-1", 1);
    let (mallory_status, mallory) = reserve(&node, "req-1", 2);
    assert_eq!((alice_status, mallory_status), (201, 201), "{alice} {mallory}");
    assert_ne!(alice["order_id"], mallory["order_id"]);
    assert_eq!(reserve(&node, "req-1", 1), (201, alice), "Alice's retry is her own order");
    assert_eq!(reserve(&node, "req-1", 2), (201, mallory));
    assert_eq!(node.call("GET", "/v1/skus/1", "", false).1["reserved"], 2);
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_flood_under_one_user_leaves_other_buyers_served() {
    // Goal: one client sending a flood of new requests as one user fills only that user's
    // share of the order table (10 live orders) and of the request-key table (20 keys) —
    // `capacity_exhausted` for it beyond them — and other buyers keep reserving.
    let dir = temp_dir("flood");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("quota.toml");
    let quotas = "[engine]\nrequest_keys_per_user_max = 20\norders_per_user_max = 10\n";
    std::fs::write(&config, quotas).unwrap();
    // The config file in the data directory: a file the node's configuration names is its own.
    let node = Serve::start_with(&dir, &["--config", config.to_str().unwrap()]);
    let sku = r#"{"sku":1,"stock":1000,"price_cents":700,"per_user_limit":0,"payment_timeout_ms":600000}"#;
    assert_eq!(node.call("POST", "/v1/skus", sku, true).0, 201);
    let mut statuses = std::collections::BTreeMap::new();
    let mut count = |(status, body): (u16, serde_json::Value)| {
        *statuses.entry((status, body["error"].as_str().map(str::to_owned))).or_insert(0) += 1;
    };
    for n in 0..200 {
        count(reserve(&node, &format!("flood-{n}"), 666));
    }
    // Refused cancels are remembered (they are outcomes), so they use up the user's keys.
    for n in 0..20 {
        let body = format!(r#"{{"request_id":"cancel-{n}","user":666}}"#);
        count(node.call("POST", &format!("/v1/orders/{}/cancel", n + 1), &body, false));
    }
    let exhausted = (503, Some("capacity_exhausted".to_owned()));
    assert_eq!(statuses.get(&(201, None)), Some(&10), "{statuses:?}");
    assert_eq!(statuses.get(&(404, Some("unknown_order".to_owned()))), Some(&10), "{statuses:?}");
    assert_eq!(statuses.get(&exhausted), Some(&200), "{statuses:?}");
    for user in 1..=30 {
        let (status, body) = reserve(&node, "buy", user);
        assert_eq!(status, 201, "buyer {user}: {body}");
    }
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_client_sends_its_role_token_to_a_node_that_enforces_roles() {
    // Goal: with role tokens configured, `ringfence client` without a token is refused for a
    // buyer command, and with `--token-file` (an `orders` token) it reserves; admin commands
    // still authenticate with the admin token.
    let dir = temp_dir("client-roles");
    std::fs::create_dir_all(&dir).unwrap();
    let orders = dir.join("orders.token");
    std::fs::write(&orders, "ordersordersordersordersorders00").unwrap();
    let config = dir.join("roles.toml");
    let text = format!("[auth]\norders_token_file = {:?}\n", orders.to_str().unwrap());
    std::fs::write(&config, text).unwrap();
    let node = Serve::start_with(&dir.join("data"), &["--config", config.to_str().unwrap()]);
    let create = ["create-sku", "--sku", "5", "--stock", "3", "--price-cents", "250"];
    assert_eq!(client(&node, &create).0, 0);
    let reserve = ["reserve", "--request-id", "cli-1", "--user", "8", "--sku", "5"];
    let (code, refused) = client(&node, &reserve);
    assert_eq!((code, refused["error"].as_str()), (1, Some("unauthorized")), "{refused}");
    let mut with_token = vec!["--token-file", orders.to_str().unwrap()];
    with_token.extend_from_slice(&reserve);
    let (code, reserved) = client(&node, &with_token);
    assert_eq!((code, reserved["state"].as_str()), (0, Some("reserved")), "{reserved}");
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_topology_flag_it_does_not_know_is_refused_naming_the_choices() {
    // Goal: `--topology` overrides `[node] topology` and is checked like it: an unknown layout
    // stops the start, naming the layouts there are, `inline` among them.
    let dir = temp_dir("topology");
    let data = dir.join("data");
    let args = ["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir"];
    let mut args = args.to_vec();
    args.extend([data.to_str().unwrap(), "--topology", "sideways"]);
    let output = common::ringfence_within(&args, Duration::from_secs(60));
    assert!(!output.status.success(), "serve started with --topology sideways");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("`sideways`: use auto, inline, compact or parallel"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_snapshot_through_0_whose_header_names_an_epoch_is_passed_over_and_the_node_stops_cleanly() {
    // Goal: a snapshot file is data; a node never panics on one. A node that took no command
    // writes a snapshot through 0 at its clean stop. Given one whose header names an epoch
    // (crafted, or damaged and resealed), the next run passes it over as damaged, and its own
    // clean stop writes a snapshot and exits 0: before, the shadow writer and that stop read
    // it as the history of record 0 and panicked, and the node exited 1 at every stop.
    const THROUGH_EPOCH_OFFSET: usize = 114;
    const HEADER_CRC_OFFSET: usize = 124;
    let dir = temp_dir("snapshot-through-0");
    let mut first = Serve::start(&dir);
    assert!(first.signal("-TERM").success(), "{:#?}", first.drain_log());
    let file = dir.join("snapshot-00000000000000000000.snap");
    let mut bytes = std::fs::read(&file).expect("the clean stop wrote a snapshot through 0");
    bytes[THROUGH_EPOCH_OFFSET..THROUGH_EPOCH_OFFSET + 8].copy_from_slice(&1_u64.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..HEADER_CRC_OFFSET]);
    bytes[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&file, &bytes).unwrap();
    let mut second = Serve::start(&dir);
    assert_eq!(reserve(&second, "r-1", 1).0, 404, "no SKU: the node serves");
    let status = second.signal("-TERM");
    let log = second.drain_log();
    let panicked: Vec<_> = log.iter().filter(|line| line.contains("panicked")).collect();
    assert!(status.success() && panicked.is_empty(), "exit {status}: {panicked:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts `serve` with `extra` arguments as a run that a restart (`exec`) started: SIGINT and
/// SIGTERM blocked, as the restarting thread left them, and SIGTERM already pending if
/// `pending` (a stop sent as the `exec` was under way).
fn start_as_restarted(dir: &Path, extra: &[&str], pending: bool) -> common::Logged {
    use std::os::unix::process::CommandExt as _;
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringfence"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .env_remove("RINGFENCE_ADMIN_TOKEN");
    // SAFETY: between fork and exec the closure makes only async-signal-safe calls
    // (`sigemptyset`, `sigaddset`, `sigprocmask`, `kill`, `getpid`) on a local set.
    unsafe {
        command.pre_exec(move || {
            let mut set = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&raw mut set);
            libc::sigaddset(&raw mut set, libc::SIGINT);
            libc::sigaddset(&raw mut set, libc::SIGTERM);
            if libc::sigprocmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut()) != 0
                // Sent to the process, as `kill` and supervisors send it.
                || (pending && libc::kill(libc::getpid(), libc::SIGTERM) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    common::Logged::spawn(&mut command)
}

/// Waits (bounded) for `child` to exit.
fn exit_within(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "still running after {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_stop_carried_into_a_restarted_run_or_sent_while_it_starts_ends_it() {
    // Goal: a node that replaced itself (`exec`, to rejoin its primary) starts with the stop
    // signals blocked, as its restarting thread left them, and with SIGTERM pending if one was
    // sent as the `exec` was under way. It takes that stop at its start and ends as a node
    // stopped while it starts does: terminated by the signal, not running on. And a SIGTERM
    // sent to such a run while it waits in its start-up (for an etcd that does not answer)
    // ends it too, where it would otherwise wait for a watch installed only once it serves.
    use std::os::unix::process::ExitStatusExt as _;
    let dir = temp_dir("stop-pending");
    let mut carried = start_as_restarted(&dir, &[], true);
    let status = exit_within(&mut carried.child, Duration::from_secs(60));
    assert_eq!(status.signal(), Some(libc::SIGTERM), "ended by the carried stop: {status:?}");
    carried.wait_for("ringfence: signal 15 while starting: exiting", Duration::from_secs(5));

    let secret = temp_dir("stop-pending-secret");
    std::fs::write(&secret, "a cluster secret of the test").unwrap();
    let secret_flag = format!("--cluster-secret-file={}", secret.display());
    let witness = ["--etcd=http://127.0.0.1:9", "--node-name=a", &secret_flag];
    let mut waiting = start_as_restarted(&dir, &witness, false);
    waiting.wait_for("ringfence: coordination:", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    assert!(waiting.child.try_wait().unwrap().is_none(), "still waiting for the witness");
    let sent =
        Command::new("kill").args(["-TERM", &waiting.child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let status = exit_within(&mut waiting.child, Duration::from_secs(30));
    assert_eq!(status.signal(), Some(libc::SIGTERM), "ended by the stop: {status:?}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&secret);
}

#[test]
fn a_sigterm_sent_as_soon_as_the_node_answers_stops_it_cleanly() {
    // Goal: the stop is watched before the listeners open, so a SIGTERM sent the moment the
    // HTTP port takes a connection (before the node has said it listens) stops the node
    // cleanly, exit 0, never as a node stopped while it starts. Five tries: the stop used to
    // be watched only after the listeners opened, and about two tries in five then ended by
    // the signal.
    for attempt in 0..5 {
        let dir = temp_dir(&format!("early-stop-{attempt}"));
        let (binary, http) = (common::etcd::free_port(), common::etcd::free_port());
        let mut node = common::Logged::spawn(
            Command::new(env!("CARGO_BIN_EXE_ringfence"))
                .args(["serve", "--data-dir"])
                .arg(&dir)
                .args(["--listen", &format!("127.0.0.1:{binary}")])
                .args(["--http", &format!("127.0.0.1:{http}")])
                .env_remove("RINGFENCE_ADMIN_TOKEN"),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
            assert!(Instant::now() < deadline, "the node never listened");
            assert!(node.child.try_wait().unwrap().is_none(), "the node exited before listening");
        }
        // At once: a `kill` process would take longer to start than the window it is for.
        let pid = libc::pid_t::try_from(node.child.id()).unwrap();
        // SAFETY: a signal to the node this test started and has not yet waited for.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = exit_within(&mut node.child, Duration::from_secs(60));
        assert!(status.success(), "try {attempt}: not a clean stop: {status:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
