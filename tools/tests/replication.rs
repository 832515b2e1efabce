//! A primary and a hot standby as real processes on loopback: a flash sale survives kill -9 of
//! the primary and a promotion with nothing acknowledged lost and nothing oversold; the old
//! primary rejoins as a standby, dropping the tail nobody acknowledged; a silent standby in
//! sync mode stops the primary acknowledging writes until it is back; handshakes with the
//! wrong secret or cluster are refused without disturbing the live stream; a pair carried over
//! to larger tables keeps every order, and a new standby fetches them.

mod common;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    CLUSTER_SECRET, HTTP_LISTENING, Serve, fake_primary_step, journal_dump_json, ringfence_within,
    text, try_call,
};
use ringfence_core::record::RecordBuf;
use ringfence_core::{EngineConfig, Epoch, Sequence, Sequenced, Timestamp};
use ringfence_replicator::auth::{ClusterId, ClusterSecret};
use ringfence_replicator::message::{Hello, Message, Start, encode, records_frame_header};
use ringfence_replicator::position::EpochList;
use ringfence_replicator::session::{PrimarySession, PrimaryStep};
use ringfence_replicator::standby::{self, Joined, JournalEnd};
use ringfence_replicator::stream::{FrameReader, write_message, write_records};

const STOCK: u64 = 60;
const PER_USER: u64 = 2;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringfence-repl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_secret(dir: &Path, secret: &str) -> String {
    let path = dir.join(format!("secret-{}", secret.len()));
    std::fs::write(&path, secret).unwrap();
    path.to_str().unwrap().to_owned()
}

const SECRET: &str = CLUSTER_SECRET;

fn primary(dir: &Path, secret: &str, extra: &[&str]) -> Serve {
    let mut args = vec!["--cluster-secret-file", secret, "--replication-listen", "127.0.0.1:0"];
    if !extra.contains(&"--replication-timeout-ms") {
        // A loaded CI machine can stall a process for a second or two; only the test about a
        // silent standby wants the timeout to fire.
        args.extend_from_slice(&["--replication-timeout-ms", "10000"]);
    }
    args.extend_from_slice(extra);
    Serve::start_with(dir, &args)
}

fn standby(dir: &Path, secret: &str, primary: SocketAddr) -> Serve {
    standby_with(dir, secret, primary, &[])
}

fn standby_with(dir: &Path, secret: &str, primary: SocketAddr, extra: &[&str]) -> Serve {
    standby_of_named(dir, secret, &primary.to_string(), extra)
}

/// A standby given its primary as `host:port` (or an address).
fn standby_of_named(dir: &Path, secret: &str, primary: &str, extra: &[&str]) -> Serve {
    let mut args = vec![
        "--role",
        "standby",
        "--primary",
        primary,
        "--cluster-secret-file",
        secret,
        "--replication-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    Serve::start_with(dir, &args)
}

fn reservation(request: u64) -> (String, u64) {
    let user = request % 40 + 1;
    (format!(r#"{{"request_id":"sale-{request}","user":{user},"sku":1,"qty":1}}"#), user)
}

fn create_sale(node: &Serve) {
    let sku = format!(
        r#"{{"sku":1,"stock":{STOCK},"price_cents":900,"per_user_limit":{PER_USER},"payment_timeout_ms":600000}}"#
    );
    let (status, body) = node.call("POST", "/v1/skus", &sku, true);
    assert_eq!(status, 201, "{body}");
}

/// Waits until `node`'s `/v1/node` satisfies `ready`.
fn wait_node(node: &Serve, within: Duration, ready: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let (_, view) = node.call("GET", "/v1/node", "", false);
        if ready(&view) {
            return;
        }
        assert!(Instant::now() < deadline, "node never got there: {view}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn last_sequence(view: &serde_json::Value) -> u64 {
    view["last_sequence"].as_u64().unwrap()
}

/// `ringfence journal dump DIR --to N --json`: every record up to `n`, one JSON line each
/// (sequence, time, epoch, command).
fn dump_to(dir: &Path, n: u64) -> Vec<String> {
    let lines = journal_dump_json(dir, &["--to", &n.to_string()]);
    assert_eq!(lines.len() as u64, n, "records 1..={n}");
    lines
}

/// `ringfence replay DIR --until-seq N --json`: the state hash at `n`.
fn hash_at(dir: &Path, n: u64) -> String {
    let args = ["replay", dir.to_str().unwrap(), "--until-seq", &n.to_string(), "--json"];
    let output = ringfence_within(&args, Duration::from_secs(60));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["through_sequence"], n, "{summary}");
    summary["running_hash"].as_str().unwrap().to_owned()
}

#[test]
fn a_killed_primary_loses_no_acknowledged_order_and_rejoins_as_a_standby() {
    // Goal: the flash-sale failover story end to end. Buyers hammer the primary; it is killed
    // mid-sale; the standby is promoted; retries with the same request ids get the original
    // answers; nothing is oversold and per-user limits hold; the old primary restarts as a
    // standby of the new one, drops what it never replicated, and both journals agree. The
    // primary runs `compact` whatever the machine (`auto` picks `inline` on two cores, which
    // the next test covers).
    let compact = Some("node: compact topology");
    killed_primary_loses_nothing("failover", &["--topology", "compact"], compact);
}

#[test]
fn a_killed_inline_primary_loses_no_acknowledged_order() {
    // Goal: the same with the primary's processor on its event loop (`--topology inline`):
    // its answers still wait for the standby's acknowledgement, which arrives on the
    // replication thread and must wake the loop, and a kill loses nothing acknowledged.
    let layout = Some("node: inline topology");
    killed_primary_loses_nothing("failover-inline", &["--topology", "inline"], layout);
}

/// The failover story, the primary started with `primary_args` added; `layout`, if given, is
/// what its log must say of its topology.
fn killed_primary_loses_nothing(name: &str, primary_args: &[&str], layout: Option<&str>) {
    let root = temp_dir(name);
    let secret = write_secret(&root, SECRET);
    let (dir_a, dir_b) = (root.join("a"), root.join("b"));
    let mut old = primary(&dir_a, &secret, primary_args);
    if let Some(layout) = layout {
        old.wait_for_log(layout, Duration::from_secs(20));
    }
    let new = standby(&dir_b, &secret, old.replication.unwrap());
    create_sale(&old);
    wait_node(&old, Duration::from_secs(20), |v| v["replication"]["state"] == "in_sync");
    let led = old.call("GET", "/v1/node", "", false).1["epoch"].as_u64().unwrap();

    let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
    let http = old.http;
    let buyers: Vec<_> = (0..3)
        .map(|buyer| {
            let acknowledged = Arc::clone(&acknowledged);
            thread::spawn(move || {
                for request in (buyer..150).step_by(3) {
                    let (body, _) = reservation(request);
                    if let Some((status, answer)) = try_call(http, "POST", "/v1/orders", &body) {
                        if status == 201 || status == 409 {
                            acknowledged.lock().unwrap().insert(request, (status, answer));
                        }
                    }
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(150));
    old.signal("-KILL");
    for buyer in buyers {
        buyer.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(!acknowledged.is_empty(), "some reservations were answered before the kill");

    let (status, promoted) = new.call("POST", "/v1/admin/promote", "", true);
    assert_eq!(status, 200, "{promoted}");
    assert_eq!(promoted["role"], "primary");
    let step = ringfence_replicator::control::PROMOTION_EPOCH_STEP;
    assert_eq!(promoted["epoch"].as_u64(), Some(led + step), "past the old primary's runs");
    // Every buyer retries every request on the new primary with the same request id.
    let mut per_user: BTreeMap<u64, u64> = BTreeMap::new();
    let mut reserved = 0;
    for request in 0..150 {
        let (body, user) = reservation(request);
        let (status, answer) = try_call(new.http, "POST", "/v1/orders", &body).unwrap();
        if let Some(before) = acknowledged.get(&request) {
            assert_eq!((status, &answer), (before.0, &before.1), "request {request} changed");
        }
        if status == 201 {
            reserved += 1;
            *per_user.entry(user).or_default() += 1;
        }
    }
    let (_, sku) = new.call("GET", "/v1/skus/1", "", false);
    assert_eq!(sku["reserved"], reserved, "{sku}");
    assert!(reserved <= STOCK, "oversold: {reserved} of {STOCK}");
    assert!(per_user.values().all(|&n| n <= PER_USER), "a per-user limit broke: {per_user:?}");

    // The old primary comes back as a standby of the new one.
    let new_replication = new.replication.unwrap();
    let old = standby(&dir_a, &secret, new_replication);
    let (_, view) = new.call("GET", "/v1/node", "", false);
    let target = last_sequence(&view);
    wait_node(&old, Duration::from_secs(30), |v| last_sequence(v) >= target);
    let (_, old_view) = old.call("GET", "/v1/node", "", false);
    assert_eq!(old_view["role"], "standby");
    // It follows in the new primary's epoch, which `ringfence status` checks.
    let promised = &old_view["replication"]["promised_epoch"];
    assert_eq!(promised, &new.call("GET", "/v1/node", "", false).1["epoch"], "{old_view}");
    wait_node(&new, Duration::from_secs(20), |v| v["replication"]["state"] == "in_sync");
    wait_node(&old, Duration::from_secs(20), |v| v["replication"]["state"] == "following");
    let (code, said) = ringfence_status(&[&new.http.to_string(), &old.http.to_string()]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains(&format!("standby, epoch {}", old_view["epoch"])), "{said}");
    let (status, refused) = old.call("POST", "/v1/orders", &reservation(999).0, false);
    assert_eq!((status, refused["error"].as_str()), (503, Some("not_primary")), "{refused}");
    drop(old);
    drop(new);
    assert_eq!(dump_to(&dir_a, target), dump_to(&dir_b, target), "record for record");
    assert_eq!(hash_at(&dir_a, target), hash_at(&dir_b, target), "the journals agree");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_silent_standby_stops_sync_acknowledgements_until_it_is_back() {
    // Goal: SIGSTOP on the standby: within the timeout the primary refuses writes with
    // `replication_unavailable` and still serves reads; the operator's switch to async lets
    // writes through; after SIGCONT and back in sync, writes are acknowledged again and the
    // standby holds the same state: nothing was lost or applied twice. `ringfence status`
    // says healthy (exit 0) while in sync, names the held writes (exit 1), and a stopped node
    // that accepts connections but never answers (exit 2, once its timeout passed).
    let root = temp_dir("sigstop");
    let secret = write_secret(&root, SECRET);
    let (dir_a, dir_b) = (root.join("a"), root.join("b"));
    let node = primary(&dir_a, &secret, &["--replication-timeout-ms", "1000"]);
    let follower = standby(&dir_b, &secret, node.replication.unwrap());
    create_sale(&node);
    wait_node(&node, Duration::from_secs(20), |v| v["replication"]["state"] == "in_sync");
    assert_eq!(try_call(node.http, "POST", "/v1/orders", &reservation(1).0).unwrap().0, 201);
    let target = last_sequence(&node.call("GET", "/v1/node", "", false).1);
    wait_node(&follower, Duration::from_secs(20), |v| last_sequence(v) >= target);
    let (a, b) = (node.http.to_string(), follower.http.to_string());
    let (code, said) = ringfence_status(&[&a, &b]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.ends_with("healthy\n") && said.contains("following"), "{said}");
    let epoch = node.call("GET", "/v1/node", "", false).1["epoch"].clone();
    let following = format!(
        "following, peer {}, 0 records behind; cluster ringfence, promised \
                             epoch {epoch}",
        node.replication.unwrap()
    );
    assert!(said.contains(&following), "{following}: {said}");
    let pid = follower.pid().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let (status, body) = try_call(node.http, "POST", "/v1/orders", &reservation(2).0).unwrap();
        if status == 503 && body.contains("replication_unavailable") {
            break body;
        }
        assert!(Instant::now() < deadline, "writes still acknowledged: {status} {body}");
        thread::sleep(Duration::from_millis(50));
    };
    assert!(refused.contains("replication_unavailable"));
    let (code, said) = ringfence_status(&[&a]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("its standby went silent: writes are held"), "{said}");
    assert!(said.contains("not ready: replication_unavailable"), "{said}");
    let (code, said) = ringfence_status(&[&a, &b]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains(&format!("problem: {b}: no answer")), "{said}");
    let (status, sku) = try_call(node.http, "GET", "/v1/skus/1", "").unwrap();
    assert_eq!(status, 200, "reads are served: {sku}");
    // The operator chooses to go on without the standby, then back to sync.
    let (status, mode) = node.call("POST", "/v1/admin/replication", r#"{"mode":"async"}"#, true);
    assert_eq!((status, mode["mode"].as_str()), (200, Some("async")), "{mode}");
    assert_eq!(try_call(node.http, "POST", "/v1/orders", &reservation(3).0).unwrap().0, 201);
    let (_, view) = node.call("GET", "/v1/node", "", false);
    assert_eq!(view["replication"]["mode"], "async", "{view}");
    let (status, _) = node.call("POST", "/v1/admin/replication", r#"{"mode":"sync"}"#, true);
    assert_eq!(status, 200);
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    wait_node(&node, Duration::from_secs(20), |v| v["replication"]["state"] == "in_sync");
    // Request 2 may have been applied before the hold (answered `replication_unavailable`);
    // its retry gets its real outcome, once.
    let (status, _) = try_call(node.http, "POST", "/v1/orders", &reservation(2).0).unwrap();
    assert_eq!(status, 201);
    assert_eq!(try_call(node.http, "POST", "/v1/orders", &reservation(4).0).unwrap().0, 201);
    let (_, sku) = node.call("GET", "/v1/skus/1", "", false);
    assert_eq!(sku["reserved"], 4, "{sku}");
    let (_, view) = node.call("GET", "/v1/node", "", false);
    let target = last_sequence(&view);
    wait_node(&follower, Duration::from_secs(20), |v| last_sequence(v) >= target);
    let (_, replica_sku) = follower.call("GET", "/v1/skus/1", "", false);
    assert_eq!(replica_sku, sku, "the standby holds the same state");
    drop(follower);
    drop(node);
    let _ = std::fs::remove_dir_all(&root);
}

/// `ringfence status` on the nodes at `nodes` (HTTP addresses): its exit code and its text.
fn ringfence_status(nodes: &[&str]) -> (Option<i32>, String) {
    // Bounds for a loaded machine: a node that answers does so in milliseconds.
    let mut args = vec!["status", "--timeout-ms", "5000"];
    nodes.iter().for_each(|http| args.extend(["--http", http]));
    let output = ringfence_within(&args, Duration::from_secs(30));
    (output.status.code(), text(&output.stdout))
}

/// Sends a `Hello` for `cluster` and reads what comes back.
fn bad_handshake(replication: SocketAddr, cluster: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(replication).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let cluster = ClusterId::new(cluster).unwrap();
    let hello = Hello { cluster, standby_nonce: [7; 32], engine: EngineConfig::default() };
    let mut frame = Vec::new();
    encode(&Message::Hello(hello), &mut frame);
    let _ = stream.write_all(&frame);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

#[test]
fn wrong_secrets_and_clusters_are_refused_and_a_flood_leaves_the_stream_alone() {
    // Goal: a standby with another secret never joins; another cluster id is refused by
    // name; a flood of bad handshakes during a sale does not stop the live standby.
    let root = temp_dir("handshake");
    let secret = write_secret(&root, SECRET);
    let wrong = write_secret(&root, "another-secret-not-the-cluster-one");
    let (dir_a, dir_b, dir_c) = (root.join("a"), root.join("b"), root.join("c"));
    let node = primary(&dir_a, &secret, &[]);
    let replication = node.replication.unwrap();
    let follower = standby(&dir_b, &secret, replication);
    create_sale(&node);
    wait_node(&node, Duration::from_secs(20), |v| v["replication"]["state"] == "in_sync");

    let intruder = standby(&dir_c, &wrong, replication);
    intruder.wait_for_log("does not hold the cluster secret", Duration::from_secs(20));
    drop(intruder);
    // A standby of other engine settings would apply the same records to other outcomes
    // (another shard's order ids): refused at its start, naming what differs.
    let config = root.join("shard-3.toml");
    std::fs::write(&config, "[engine]\nshard = 3\n").unwrap();
    let (config, at) = (config.display().to_string(), replication.to_string());
    let standby_args = ["--role", "standby", "--primary", &at, "--cluster-secret-file", &secret];
    let listen = ["--replication-listen", "127.0.0.1:0"];
    let stderr = refused_serve(
        &root.join("d"),
        &[&["--config", &config], &standby_args[..], &listen].concat(),
    );
    assert!(stderr.contains("differ from this primary's: shard = 0 (the standby: 3)"), "{stderr}");
    let answer = bad_handshake(replication, "some-other-cluster");
    assert!(String::from_utf8_lossy(&answer).contains("some-other-cluster"), "{answer:?}");
    let flood: Vec<_> = (0..4)
        .map(|_| thread::spawn(move || (0..25).for_each(|_| drop(bad_handshake(replication, "x")))))
        .collect();
    for request in 0..20 {
        let (status, body) =
            try_call(node.http, "POST", "/v1/orders", &reservation(request).0).unwrap();
        assert!(status == 201 || status == 409, "{status} {body}");
    }
    for thread in flood {
        thread.join().unwrap();
    }
    let (_, view) = node.call("GET", "/v1/node", "", false);
    assert_eq!(view["replication"]["state"], "in_sync", "{view}");
    let target = last_sequence(&view);
    wait_node(&follower, Duration::from_secs(20), |v| last_sequence(v) >= target);
    drop(follower);
    drop(node);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_restarted_standby_catches_up_without_gap_or_duplicate() {
    // Goal: a standby stopped mid-sale and restarted resumes where its journal ends: after
    // more writes, both journals hold the same commands to the same sequence. It is restarted
    // with its primary named by host, as a deployment behind DNS names it.
    let root = temp_dir("restart");
    let secret = write_secret(&root, SECRET);
    let (dir_a, dir_b) = (root.join("a"), root.join("b"));
    let node = primary(&dir_a, &secret, &["--replication", "async"]);
    let mut follower = standby(&dir_b, &secret, node.replication.unwrap());
    create_sale(&node);
    for request in 0..20 {
        try_call(node.http, "POST", "/v1/orders", &reservation(request).0).unwrap();
    }
    follower.signal("-KILL");
    for request in 20..40 {
        try_call(node.http, "POST", "/v1/orders", &reservation(request).0).unwrap();
    }
    // Restarted under the primary's host name: the journal check at start and the follower
    // both look it up.
    let named = format!("localhost:{}", node.replication.unwrap().port());
    let follower = standby_of_named(&dir_b, &secret, &named, &[]);
    let (_, view) = node.call("GET", "/v1/node", "", false);
    let target = last_sequence(&view);
    wait_node(&follower, Duration::from_secs(30), |v| last_sequence(v) >= target);
    // Both sides say the standby has caught up, in records and in time.
    let caught_up = |v: &serde_json::Value| {
        v["replication"]["lag_records"] == 0 && v["replication"]["lag_ms"] == 0
    };
    wait_node(&node, Duration::from_secs(10), caught_up);
    wait_node(&follower, Duration::from_secs(10), |v| v["replication"]["lag_records"] == 0);
    let (_, metrics) = node.get_text("/metrics");
    assert!(metrics.contains("ringfence_replication_lag_records 0"), "{metrics}");
    drop(follower);
    drop(node);
    assert_eq!(dump_to(&dir_a, target), dump_to(&dir_b, target), "record for record");
    assert_eq!(hash_at(&dir_a, target), hash_at(&dir_b, target));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_starting_standbys_journal_check_is_logged_by_its_primary_as_the_expected_step() {
    // Goal: a standby starting up joins its primary once to check its journal, closes, then
    // joins again to follow. Up to the standby being in sync, the primary's log says that
    // first close is this expected step, and nothing about a standby connection that ended.
    let root = temp_dir("check-logged");
    let secret = write_secret(&root, SECRET);
    let node = primary(&root.join("a"), &secret, &[]);
    let follower = standby(&root.join("b"), &secret, node.replication.unwrap());
    let check = "closed the connection before acknowledging anything, as a starting standby \
                 does once it has checked its journal against this one (if it repeats, look at \
                 the standby); now alone";
    let awaited = [check, "replication: in_sync"];
    let mut lines = node.drain_log();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !awaited.iter().all(|what| lines.iter().any(|line| line.contains(what))) {
        let left = deadline.saturating_duration_since(Instant::now());
        match node.process.lines.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("not said within 30 s: {awaited:?}: {lines:#?}"),
        }
    }
    let said = |what: &str| lines.iter().any(|line| line.contains(what));
    assert!(!said("standby connection ended"), "{lines:#?}");
    assert!(!said("standby disconnected"), "{lines:#?}");
    drop(follower);
    drop(node);
    let _ = std::fs::remove_dir_all(&root);
}

/// Reservations `requests` on `node`, each acknowledged.
fn sell(node: &Serve, requests: std::ops::Range<u64>) {
    for request in requests {
        let (status, body) = try_call(node.http, "POST", "/v1/orders", &reservation(request).0)
            .expect("the primary answers");
        assert_eq!(status, 201, "{body}");
    }
}

/// An `async` pair split with an unreplicated tail, both nodes killed: `a` (the primary)
/// acknowledged 5 reservations its standby `b` holds, then 7 alone after `b` was killed.
struct SplitPair {
    root: PathBuf,
    secret: String,
    dirs: (PathBuf, PathBuf),
    /// Where the old primary listened for its standby.
    old_replication: SocketAddr,
    /// The last record the two hold alike, and the old primary's epoch.
    common: u64,
    led: u64,
}

fn split_async_pair(name: &str) -> SplitPair {
    let root = temp_dir(name);
    let secret = write_secret(&root, SECRET);
    let (dir_a, dir_b) = (root.join("a"), root.join("b"));
    let mut old = primary(&dir_a, &secret, &["--replication", "async"]);
    let old_replication = old.replication.unwrap();
    let mut follower = standby(&dir_b, &secret, old_replication);
    create_sale(&old);
    sell(&old, 0..5);
    let (_, view) = old.call("GET", "/v1/node", "", false);
    let (common, led) = (last_sequence(&view), view["epoch"].as_u64().unwrap());
    wait_node(&follower, Duration::from_secs(20), |v| last_sequence(v) >= common);
    follower.signal("-KILL");
    sell(&old, 5..12);
    old.signal("-KILL");
    SplitPair { root, secret, dirs: (dir_a, dir_b), old_replication, common, led }
}

impl SplitPair {
    /// The old primary, `rejoined` as a standby of the new one, dropped its 7 records and kept
    /// them in `rollback/`.
    fn dropped_tail(&self, rejoined: &Serve) {
        let line = rejoined.wait_for_log("dropping", Duration::from_secs(30));
        let (first, last) = (self.common + 1, self.common + 7);
        assert!(line.contains(&format!("dropping 7 records ({first}..={last}")), "{line}");
        let kept = rejoined.wait_for_log("`journal dump --json` lines", Duration::from_secs(5));
        assert!(kept.contains("kept 7 of them"), "{kept}");
    }

    /// The old primary, `rejoined` as a standby of the `new` one, and the new one sold the
    /// same once it reached the new primary's last record `target`, and their journals agree
    /// record for record.
    fn agree(self, rejoined: Serve, new: Serve, target: u64) {
        wait_node(&rejoined, Duration::from_secs(30), |v| last_sequence(v) >= target);
        let (_, sku_old) = rejoined.call("GET", "/v1/skus/1", "", false);
        let (_, sku_new) = new.call("GET", "/v1/skus/1", "", false);
        assert_eq!(sku_old, sku_new);
        assert_eq!(sku_new["reserved"], 8, "5 replicated + 3 in the new epoch: {sku_new}");
        drop(rejoined);
        drop(new);
        let (dir_a, dir_b) = &self.dirs;
        assert_eq!(dump_to(dir_a, target), dump_to(dir_b, target), "record for record");
        assert_eq!(hash_at(dir_a, target), hash_at(dir_b, target));
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[test]
fn an_old_primarys_unreplicated_tail_is_dropped_when_it_rejoins() {
    // Goal: the divergence path. In async mode the primary acknowledges writes its dead
    // standby never receives; the standby is promoted and takes other writes in a new epoch; the
    // old primary, restarted as its standby, drops exactly its unreplicated tail (and says
    // so), takes the new primary's records, and the two journals agree.
    let pair = split_async_pair("diverge");
    let (secret, (dir_a, dir_b)) = (&pair.secret, &pair.dirs);

    // The standby restarts (its primary is gone). It cannot know it holds everything the
    // primary acknowledged (it has not caught up since it joined), so a plain promotion is
    // refused; forced, accepting the loss, it is promoted past its primary's epochs and sells
    // on.
    let new = standby(dir_b, secret, pair.old_replication);
    let (status, refused) = new.call("POST", "/v1/admin/promote", "", true);
    assert_eq!((status, refused["error"].as_str()), (503, Some("promotion_failed")), "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("force"), "{refused}");
    let (status, promoted) = new.call("POST", "/v1/admin/promote", r#"{"force":true}"#, true);
    let forced = pair.led + ringfence_replicator::control::PROMOTION_EPOCH_STEP;
    assert_eq!((status, promoted["epoch"].as_u64()), (200, Some(forced)), "{promoted}");
    sell(&new, 100..103);
    let (_, view) = new.call("GET", "/v1/node", "", false);
    let target = last_sequence(&view);

    let rejoined = standby(dir_a, secret, new.replication.unwrap());
    pair.dropped_tail(&rejoined);
    pair.agree(rejoined, new, target);
}

#[test]
fn a_running_standby_told_it_diverged_restarts_itself_and_rejoins_without_etcd() {
    // Goal: with no pilot to restart it, a standby whose journal is found to diverge while it
    // runs restarts itself: at start it drops its unreplicated tail, keeping it in
    // `rollback/`, and follows the new primary to the same journal. The old primary of an
    // `async` pair starts as a standby of its old standby before that one is promoted, so the
    // divergence is found by its running follower, not at its start.
    let pair = split_async_pair("diverge-live");
    let (secret, (dir_a, dir_b)) = (&pair.secret, &pair.dirs);

    // Neither is a primary yet: the old primary cannot check its journal at start, and its
    // follower retries until its old standby is promoted.
    let new = standby(dir_b, secret, pair.old_replication);
    let mut rejoined = standby(dir_a, secret, new.replication.unwrap());
    rejoined.wait_for_log("starting as a standby and retrying", Duration::from_secs(10));
    let (status, promoted) = new.call("POST", "/v1/admin/promote", r#"{"force":true}"#, true);
    assert_eq!(status, 200, "{promoted}");
    sell(&new, 100..103);
    let (_, view) = new.call("GET", "/v1/node", "", false);
    let target = last_sequence(&view);

    let restart =
        rejoined.wait_for_log("restarting to rejoin the primary", Duration::from_secs(30));
    assert!(restart.contains("diverged"), "{restart}");
    pair.dropped_tail(&rejoined);
    // The same process, started again: it listens on new ports (the log before the restart,
    // which `wait_for_log` also reads, named the old ones).
    let http = rejoined.next_log(HTTP_LISTENING, Duration::from_secs(60));
    rejoined.http = http.strip_prefix(HTTP_LISTENING).unwrap().parse().unwrap();
    pair.agree(rejoined, new, target);
}

#[test]
fn each_run_of_a_primary_has_its_own_epoch_so_records_it_lost_are_never_mistaken_for_its_own() {
    // Goal: same sequence and epoch mean the same record, across restarts of a primary
    // without a witness. A standby may hold records its primary streamed and then lost
    // (written, not yet synced, when its machine lost power). The restarted primary sequences
    // past those sequences in a new epoch, so a standby claiming one of them in the old epoch
    // is told to drop back to what the primary kept, never to stream on after records that
    // are not the primary's.
    let root = temp_dir("run-epoch");
    let secret = write_secret(&root, SECRET);
    let dir = root.join("a");
    let mut first = primary(&dir, &secret, &[]);
    create_sale(&first);
    for request in 0..3 {
        let (status, body) = try_call(first.http, "POST", "/v1/orders", &reservation(request).0)
            .expect("the primary answers");
        assert_eq!(status, 201, "{body}");
    }
    let (_, view) = first.call("GET", "/v1/node", "", false);
    let (kept, first_epoch) = (last_sequence(&view), view["epoch"].as_u64().unwrap());
    first.signal("-KILL");
    let second = primary(&dir, &secret, &[]);
    for request in 3..9 {
        let (status, body) = try_call(second.http, "POST", "/v1/orders", &reservation(request).0)
            .expect("the restarted primary answers");
        assert_eq!(status, 201, "{body}");
    }
    let (_, view) = second.call("GET", "/v1/node", "", false);
    assert!(last_sequence(&view) >= kept + 6, "{view}");

    // A standby holding records kept+1..=kept+3 of the first run, which the primary lost.
    let config = ringfence_replicator::config::ReplicationConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        ClusterId::new("ringfence").unwrap(),
        ClusterSecret::from_bytes(SECRET.as_bytes()).unwrap(),
        EngineConfig::default(),
        root.join("b"),
    );
    let end = JournalEnd { last_sequence: Sequence(kept + 3), last_epoch: Epoch(first_epoch) };
    let primary_at = second.replication.unwrap().to_string();
    match standby::join(&config, &primary_at, end, Epoch(first_epoch)) {
        Ok(Joined::Diverged { keep_through, epoch }) => {
            assert_eq!((keep_through, epoch), (Sequence(kept), Epoch(first_epoch + 1)));
        }
        Ok(Joined::Stream { from, .. }) => panic!("told to stream from {from}"),
        Ok(Joined::Behind(behind)) => panic!("told the primary is behind: {behind:?}"),
        Err(error) => panic!("the join failed: {error}"),
    }
    let (_, view) = second.call("GET", "/v1/node", "", false);
    assert_eq!(view["epoch"].as_u64(), Some(first_epoch + 1), "{view}");
    second.wait_for_log(&format!("sequences in epoch {}", first_epoch + 1), Duration::from_secs(5));
    drop(second);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_primary_that_answered_before_syncing_never_makes_its_standby_drop_what_it_lost() {
    // Goal: the `none` durability pair survives the primary's power loss. With its standby in
    // sync, the primary acknowledges reservations written but not synced; its machine loses
    // power, played here by killing it and cutting its journal before the last three
    // acknowledged records. The standby is killed and restarted too, so it has not caught up
    // with its primary since. Restarted as primary, the old primary tells its standby it is
    // behind instead of telling it to drop them, and holds writes; the standby finds it holds
    // the primary's whole journal, and is promoted by hand without force; it gives every
    // acknowledged reservation its original answer.
    let root = temp_dir("unsynced");
    let secret = write_secret(&root, SECRET);
    let (dir_a, dir_b) = (root.join("a"), root.join("b"));
    let listen = format!("127.0.0.1:{}", common::etcd::free_port());
    let args = [
        "--cluster-secret-file",
        &secret,
        "--replication-listen",
        &listen,
        "--replication-timeout-ms",
        "10000",
        "--durability",
        "none",
    ];
    let mut old = Serve::start_with(&dir_a, &args);
    let follower = standby(&dir_b, &secret, old.replication.unwrap());
    create_sale(&old);
    wait_node(&old, Duration::from_secs(20), |v| v["replication"]["state"] == "in_sync");
    let mut answers = BTreeMap::new();
    for request in 0..6 {
        let (status, body) =
            try_call(old.http, "POST", "/v1/orders", &reservation(request).0).unwrap();
        assert_eq!(status, 201, "{body}");
        answers.insert(request, body);
    }
    let last = last_sequence(&old.call("GET", "/v1/node", "", false).1);
    wait_node(&follower, Duration::from_secs(20), |v| last_sequence(v) >= last);
    old.signal("-KILL");
    let cut_at = (last - 2).to_string();
    let args_cut = ["journal", "truncate", dir_a.to_str().unwrap(), "--at-seq", &cut_at];
    let cut = ringfence_within(&args_cut, Duration::from_secs(60));
    assert!(cut.status.success(), "{}", text(&cut.stderr));
    drop(follower);
    let follower = standby(&dir_b, &secret, old.replication.unwrap());

    let restarted = Serve::start_with(&dir_a, &args);
    let line = restarted.wait_for_log("refused standby", Duration::from_secs(20));
    let lost = format!("{}..={last}", last - 2);
    assert!(line.contains(&lost) && line.contains("promote the standby"), "{line}");
    let (status, body) =
        try_call(restarted.http, "POST", "/v1/orders", &reservation(100).0).unwrap();
    assert_eq!(status, 503, "the restarted primary took a write: {body}");
    let (_, view) = follower.call("GET", "/v1/node", "", false);
    assert!(last_sequence(&view) >= last, "the standby dropped records: {view}");
    let told = view["replication"]["state"].as_str().unwrap_or_default();
    assert!(!told.starts_with("diverged"), "the standby was told to drop its tail: {view}");
    // The standby's `/v1/node` says why it does not follow, and what to do.
    wait_node(&follower, Duration::from_secs(10), |v| {
        v["replication"]["state"].as_str().is_some_and(|s| s.contains("promote the standby"))
    });
    drop(restarted);

    let (status, promoted) = follower.call("POST", "/v1/admin/promote", "", true);
    assert_eq!(status, 200, "{promoted}");
    for (request, before) in &answers {
        let (status, answer) =
            try_call(follower.http, "POST", "/v1/orders", &reservation(*request).0).unwrap();
        assert_eq!((status, &answer), (201, before), "request {request} changed");
    }
    drop(follower);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_standby_journaling_without_sync_is_unfit_to_promote_after_its_machine_restarted() {
    // Goal: under durability `none` a standby acknowledges records once written, so a power
    // loss may take records it acknowledged. Restarted on a machine that rebooted since its
    // last run (played here by another boot id in its data directory), it marks its directory
    // catching up, and says so: `promote` refuses it without force, though its primary is
    // gone, until it has caught up with the primary again, which removes the mark.
    let root = temp_dir("standby-reboot");
    let secret = write_secret(&root, SECRET);
    let (dir_a, dir_b) = (root.join("a"), root.join("b"));
    let listen = format!("127.0.0.1:{}", common::etcd::free_port());
    let args =
        ["--cluster-secret-file", &secret, "--replication-listen", &listen, "--durability", "none"];
    let unsynced = ["--durability", "none"];
    let mut old = Serve::start_with(&dir_a, &args);
    let primary_at = old.replication.unwrap();
    let follower = standby_with(&dir_b, &secret, primary_at, &unsynced);
    create_sale(&old);
    wait_node(&old, Duration::from_secs(20), |v| v["replication"]["state"] == "in_sync");
    for request in 0..3 {
        let (status, body) =
            try_call(old.http, "POST", "/v1/orders", &reservation(request).0).unwrap();
        assert_eq!(status, 201, "{body}");
    }
    let last = last_sequence(&old.call("GET", "/v1/node", "", false).1);
    wait_node(&follower, Duration::from_secs(20), |v| last_sequence(v) >= last);
    let marker = dir_b.join(ringfence_journal::datadir::ACKS_WRITTEN_FILE);
    assert!(marker.exists(), "the standby never recorded that it acknowledges unsynced");
    old.signal("-KILL");
    drop(follower);
    std::fs::write(dir_b.join("boot"), "a boot before the power loss").unwrap();

    let follower = standby_with(&dir_b, &secret, primary_at, &unsynced);
    let line = follower.wait_for_log("acknowledged records once written", Duration::from_secs(10));
    assert!(line.contains("catching up"), "{line}");
    let catch_up = dir_b.join("catch-up");
    assert!(catch_up.exists(), "no catch-up marker after the restart");
    let (status, refused) = follower.call("POST", "/v1/admin/promote", "", true);
    assert_eq!(refused["error"], "promotion_failed", "{status}: {refused}");
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(message.contains("restarted"), "{message}");

    // The primary is back (killed, not rebooted): the standby catches up, and the mark goes.
    let primary = Serve::start_with(&dir_a, &args);
    wait_node(&follower, Duration::from_secs(30), |v| v["replication"]["state"] == "following");
    let deadline = Instant::now() + Duration::from_secs(10);
    while catch_up.exists() {
        assert!(Instant::now() < deadline, "the catch-up marker stayed after catching up");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(primary);
    drop(follower);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_fresh_standby_of_a_primary_that_retired_its_first_records_starts_from_a_snapshot() {
    // Goal: the records a new standby lacks were retired after a snapshot; it fetches the
    // primary's snapshot, starts from it, streams the journal after it without gap or
    // duplicate, and reaches the primary's state and hash.
    let root = temp_dir("snapshot");
    let secret = write_secret(&root, SECRET);
    let (dir_a, dir_b) = (root.join("a"), root.join("b"));
    let config = root.join("small-segments.toml");
    // A small engine: every snapshot restores its image into a fresh engine to check it, and
    // at the default capacities that takes long enough, in a debug build on a busy machine,
    // for the primary to take thousands of commands before the first segment is retired.
    let settings = "[node]\nsegment_bytes = 65536\nsnapshot_every_commands = 400\n\
                    snapshots_kept = 1\n[engine]\norders_max = 65536\nholdings_max = 65536\n\
                    request_keys_max = 65536\n";
    std::fs::write(&config, settings).unwrap();
    let config = config.to_str().unwrap().to_owned();
    let node = primary(&dir_a, &secret, &["--config", &config]);
    let sku = r#"{"sku":1,"stock":100000,"price_cents":900,"per_user_limit":0,"payment_timeout_ms":600000}"#;
    assert_eq!(node.call("POST", "/v1/skus", sku, true).0, 201);
    let first_segment = dir_a.join(format!("{:020}.seg", 1));
    let mut request = 0;
    // Retirement waits for a snapshot past the first segment, written off the BLP's thread,
    // so it comes after a time rather than a count of requests.
    let deadline = Instant::now() + Duration::from_secs(60);
    while first_segment.exists() {
        assert!(Instant::now() < deadline, "the primary never retired its first segment");
        let user = request + 1;
        let body = format!(r#"{{"request_id":"bulk-{request}","user":{user},"sku":1,"qty":1}}"#);
        assert_eq!(try_call(node.http, "POST", "/v1/orders", &body).unwrap().0, 201);
        request += 1;
    }
    // Every segment after the first (made at the directory's creation) was made ready ahead.
    let (_, metrics) = node.get_text("/metrics");
    let value = |name: &str| {
        let line = metrics.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' '));
        line.and_then(|value| value.parse::<u64>().ok())
    };
    let started = value("ringfence_journal_segments_started_total").unwrap_or(0);
    assert!(started >= 2, "{started} segments started: {metrics}");
    let from_spare = value("ringfence_journal_segments_from_spare_total");
    assert_eq!(from_spare, Some(started - 1), "{metrics}");
    // The snapshot writer runs at idle priority and may still owe snapshots that were due
    // during the loop, each retiring the records before it. One asked for now comes after them
    // all: once it is written, nothing more is retired while the standby starts from it and
    // joins (a join asking for a record retired meanwhile is refused `needs a snapshot`).
    let (status, _) = node.call("POST", "/v1/admin/snapshot", "{}", true);
    assert_eq!(status, 202);
    let (_, view) = node.call("GET", "/v1/node", "", false);
    let asked = last_sequence(&view);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, metrics) = node.get_text("/metrics");
        let through = metrics
            .lines()
            .find_map(|line| line.strip_prefix("ringfence_snapshot_through ")?.parse::<f64>().ok());
        if through.is_some_and(|through| through as u64 >= asked) {
            break;
        }
        assert!(Instant::now() < deadline, "the snapshot asked for was never written: {metrics}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The standby's tables as the primary's: the same records give the same answers only so.
    let engine = root.join("engine.toml");
    std::fs::write(&engine, format!("[engine]{}", settings.split_once("[engine]").unwrap().1))
        .unwrap();
    let engine = engine.to_str().unwrap().to_owned();
    let follower = standby_with(&dir_b, &secret, node.replication.unwrap(), &["--config", &engine]);
    follower.wait_for_log("fetched the primary's snapshot", Duration::from_secs(5));
    for extra in 0..10 {
        let body =
            format!(r#"{{"request_id":"late-{extra}","user":{},"sku":1,"qty":1}}"#, extra + 1);
        assert_eq!(try_call(node.http, "POST", "/v1/orders", &body).unwrap().0, 201);
    }
    let (_, view) = node.call("GET", "/v1/node", "", false);
    let target = last_sequence(&view);
    wait_node(&follower, Duration::from_secs(30), |v| last_sequence(v) >= target);
    let (_, sku_primary) = node.call("GET", "/v1/skus/1", "", false);
    let (_, sku_standby) = follower.call("GET", "/v1/skus/1", "", false);
    assert_eq!(sku_primary, sku_standby);
    assert_eq!(sku_standby["reserved"], request + 10);
    let (_, standby_view) = follower.call("GET", "/v1/node", "", false);
    assert_eq!(standby_view["state_hash"], view["state_hash"]);
    drop(follower);
    drop(node);
    let _ = std::fs::remove_dir_all(&root);
}

/// Accepts the standby's next connection and runs the primary's handshake in `epoch`; returns
/// the connection once streaming starts, and the sequence it starts from.
fn fake_primary_accept(
    listener: &std::net::TcpListener,
    epoch: u64,
) -> (TcpStream, FrameReader<TcpStream>, Sequence) {
    let (socket, _) = listener.accept().unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut reader = FrameReader::new(socket.try_clone().unwrap());
    let mut session = PrimarySession::new([5; 32]);
    let mut journal = EpochList::flat(3, 1);
    loop {
        let message = reader.read_message().unwrap();
        match fake_primary_step(&mut session, &message, epoch, &mut journal) {
            PrimaryStep::Reply(reply) => {
                write_message(&mut &socket, &reply.message(), &mut Vec::new()).unwrap();
            }
            PrimaryStep::Stream(start) => {
                write_message(&mut &socket, &Message::Start(start), &mut Vec::new()).unwrap();
                return (socket, reader, start.from_sequence);
            }
            // A primary superseded by the standby's promise would step down; this one sends
            // `Start` anyway, as a stale primary that does not know would.
            PrimaryStep::Close { deposed_by: Some(_), .. } => {
                let start = Start {
                    epoch: Epoch(epoch),
                    from_sequence: Sequence(2),
                    primary_last: Sequence(3),
                };
                write_message(&mut &socket, &Message::Start(start), &mut Vec::new()).unwrap();
                return (socket, reader, start.from_sequence);
            }
            other => panic!("the standby's handshake failed: {other:?}"),
        }
    }
}

/// Record `sequence` (a tick) as written in `epoch`.
fn record(sequence: u64, epoch: u64) -> Vec<u8> {
    let tick = Sequenced {
        sequence: Sequence(sequence),
        timestamp: Timestamp(1_800_000_000_000 + sequence),
        command: ringfence_core::Command::Tick,
    };
    RecordBuf::default().encode(Epoch(epoch), &tick).to_vec()
}

/// What the standby answers next, or that it closed the connection.
fn standby_answer(reader: &mut FrameReader<TcpStream>) -> Option<String> {
    loop {
        match reader.read_message() {
            Ok(Message::Ack(_)) => {}
            Ok(Message::Refuse(refuse)) => {
                return Some(format!("{:?}: {}", refuse.code, refuse.text));
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => return None,
        }
    }
}

#[test]
fn a_standby_refuses_damaged_gapped_and_stale_streams_and_applies_nothing_of_them() {
    // Goal: bad input on the replication stream, from a primary that authenticated: a record
    // whose checksum fails, a gap, a record above the stream's epoch and a primary below the
    // standby's promise each end the connection with a logged, typed error, and none of them
    // is journaled or applied: the standby holds exactly the one good record.
    let root = temp_dir("bad-stream");
    let secret = write_secret(&root, SECRET);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fake = listener.local_addr().unwrap();
    let dir = root.join("b");
    let starting = thread::spawn(move || standby(&dir, &secret, fake));
    // The standby's start-up check, then its follower: the first connection is the check.
    let (probe, _, from) = fake_primary_accept(&listener, 1);
    assert_eq!(from, Sequence(1));
    drop(probe);
    let follower = starting.join().unwrap();

    let (socket, mut reader, _) = fake_primary_accept(&listener, 1);
    let mut damaged = record(2, 1);
    damaged[40] ^= 0x01;
    write_records(&mut &socket, Sequence(1), 1, &record(1, 1)).unwrap();
    (&socket).write_all(&records_frame_header(Sequence(2), 1, damaged.len())).unwrap();
    (&socket).write_all(&damaged).unwrap();
    assert_eq!(standby_answer(&mut reader), None, "a damaged record closes the stream");
    follower.wait_for_log("malformed", Duration::from_secs(10));

    let (socket, mut reader, from) = fake_primary_accept(&listener, 1);
    assert_eq!(from, Sequence(2), "the good record was kept, the damaged one not");
    write_records(&mut &socket, Sequence(3), 1, &record(3, 1)).unwrap();
    let gap = standby_answer(&mut reader).expect("a gap is refused");
    assert!(gap.starts_with("BadMessage"), "{gap}");

    let (socket, mut reader, _) = fake_primary_accept(&listener, 1);
    write_records(&mut &socket, Sequence(2), 1, &record(2, 2)).unwrap();
    let ahead = standby_answer(&mut reader).expect("a record above the stream's epoch is refused");
    assert!(ahead.contains("epoch"), "{ahead}");

    // The standby promised epoch 1 when it first followed; a primary of epoch 0 is stale.
    let (socket, mut reader, _) = fake_primary_accept(&listener, 0);
    drop(socket);
    let stale = standby_answer(&mut reader).expect("a stale primary is refused");
    assert!(stale.starts_with("StaleEpoch"), "{stale}");

    // Give the node a moment to journal and apply the good record.
    wait_node(&follower, Duration::from_secs(20), |v| last_sequence(v) >= 1);
    let (_, view) = follower.call("GET", "/v1/node", "", false);
    assert_eq!(last_sequence(&view), 1, "{view} {:#?}", follower.drain_log());
    drop(follower);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_standby_acknowledging_records_at_once_is_never_refused_for_it() {
    // Goal: under a stream of writes from several clients, the standby acknowledges records
    // as soon as they arrive, which can be before the primary's sending thread has counted
    // them sent; the primary must count them first, not refuse the acknowledgement as a
    // protocol error, drop the stream and panic its sending thread. (A race: one record per
    // frame, no fsyncs and busy cores make it likely, not certain, within the run.)
    let root = temp_dir("prompt-acks");
    let secret = write_secret(&root, SECRET);
    let (dir_a, dir_b) = (root.join("a"), root.join("b"));
    let node = primary(&dir_a, &secret, &["--durability", "none"]);
    // Without fsyncs the standby acknowledges a record a few microseconds after it arrives.
    let replication = node.replication.unwrap();
    let follower = standby_with(&dir_b, &secret, replication, &["--durability", "none"]);
    create_sale(&node);
    wait_node(&node, Duration::from_secs(20), |v| v["replication"]["state"] == "in_sync");
    let http = node.http;
    // Pipelined, so that records reach the standby in a steady stream, while spinning
    // threads take the cores from the nodes' threads at any moment (as a loaded machine
    // does), between sending records and counting them among others.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..3)
        .map(|_| {
            let done = std::sync::Arc::clone(&done);
            thread::spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let clients: Vec<_> = (0..4u64)
        .map(|client| thread::spawn(move || pipelined_reservations(http, client, 2_000)))
        .collect();
    clients.into_iter().for_each(|c| c.join().unwrap());
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    spinners.into_iter().for_each(|s| s.join().unwrap());
    let (_, view) = node.call("GET", "/v1/node", "", false);
    let target = last_sequence(&view);
    wait_node(&follower, Duration::from_secs(30), |v| last_sequence(v) >= target);
    let log = node.drain_log();
    let refused = log.iter().filter(|line| line.contains("was sent") || line.contains("panicked"));
    let refused: Vec<&String> = refused.collect();
    assert!(refused.is_empty(), "{refused:#?}");
    drop((follower, node));
    let _ = std::fs::remove_dir_all(&root);
}

/// Sends `count` reservations on one keep-alive connection, each after the answer to the one
/// before: one record at a time reaches the standby.
fn pipelined_reservations(http: SocketAddr, client: u64, count: u64) {
    let mut stream = TcpStream::connect(http).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = [0; 4096];
    for request in 0..count {
        let body = reservation(100_000 * (client + 1) + request).0;
        let request = format!(
            "POST /v1/orders HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        // One answer per request, small enough for one read.
        let read = stream.read(&mut answer).unwrap();
        assert!(read > 0, "the node hung up");
    }
}

/// `ringfence serve` with `args` after the loopback listeners, expected to exit refusing;
/// its standard error.
fn refused_serve(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"];
    all.extend(["--data-dir", dir.to_str().unwrap()]);
    all.extend_from_slice(args);
    let refused = ringfence_within(&all, Duration::from_secs(60));
    assert!(!refused.status.success(), "serve started: {}", text(&refused.stderr));
    text(&refused.stderr)
}

#[test]
fn a_standby_whose_primary_speaks_another_protocol_version_does_not_start() {
    // Goal: a primary of another replication protocol version refuses the standby's join at
    // its start (`Refuse { Version }`). Retrying cannot help, so `serve` exits saying which
    // versions the two speak and how to upgrade, as it does for a wrong secret or cluster,
    // rather than starting a standby that retries for ever.
    use ringfence_replicator::message::{PROTOCOL_VERSION, Refuse, RefuseCode};
    let root = temp_dir("version-refused");
    let secret = write_secret(&root, SECRET);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let primary = listener.local_addr().unwrap().to_string();
    let other = PROTOCOL_VERSION + 1;
    let text = format!(
        "the standby speaks replication protocol version {PROTOCOL_VERSION}; this primary \
         speaks {other}: run the same ringfence release on the primary and the standby"
    );
    let told = text.clone();
    // Refuses every connection, as such a primary would (a standby that retried comes back).
    thread::spawn(move || {
        for peer in listener.incoming() {
            let Ok(peer) = peer else { return };
            let mut reader = FrameReader::new(peer.try_clone().unwrap());
            if reader.read_message().is_ok() {
                let refuse = Message::Refuse(Refuse::new(RefuseCode::Version, Epoch(0), &told));
                let _ = write_message(&mut &peer, &refuse, &mut Vec::new());
            }
        }
    });
    let dir = root.join("b");
    let args = ["--role", "standby", "--primary", &primary, "--cluster-secret-file", &secret];
    let said = refused_serve(&dir, &[&args[..], &["--replication-listen", "127.0.0.1:0"]].concat());
    let ours = format!("this standby (replication protocol version {PROTOCOL_VERSION})");
    assert!(said.contains(&ours) && said.contains(&text), "{said}");
    assert!(said.contains("Retrying cannot help") && said.contains("Upgrading a pair"), "{said}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_pair_carried_over_to_larger_tables_keeps_every_order_and_a_new_standby_fetches_them() {
    // Goal: a sale outgrew its order table (`capacity_exhausted`). With both nodes stopped
    // cleanly, the primary's directory is carried over to larger tables: the primary starts
    // under them with every order it acknowledged and takes the order it refused before, and
    // a standby on an empty directory with the same settings fetches its snapshot and holds
    // the same state. Before the carry-over, and for the old standby's directory, a node
    // under the new settings refuses, naming the way out.
    let root = temp_dir("reconfigure");
    let secret = write_secret(&root, SECRET);
    let (dir_a, dir_b, dir_c) = (root.join("a"), root.join("b"), root.join("c"));
    let tables = "holdings_max = 1024\nrequest_keys_max = 4096\n";
    let (small, large) = (root.join("small.toml"), root.join("large.toml"));
    std::fs::write(&small, format!("[engine]\norders_max = 8\n{tables}")).unwrap();
    std::fs::write(&large, format!("[engine]\norders_max = 64\n{tables}")).unwrap();
    let (small, large) = (small.to_str().unwrap(), large.to_str().unwrap());

    let mut node = primary(&dir_a, &secret, &["--config", small]);
    let mut follower =
        standby_with(&dir_b, &secret, node.replication.unwrap(), &["--config", small]);
    create_sale(&node);
    let reserve = |node: &Serve, request| {
        let (status, body) = try_call(node.http, "POST", "/v1/orders", &reservation(request).0)
            .expect("the primary answers");
        (status, serde_json::from_str::<serde_json::Value>(&body).unwrap())
    };
    let orders: Vec<String> = (0..8)
        .map(|request| {
            let (status, body) = reserve(&node, request);
            assert_eq!(status, 201, "{body}");
            body["order_id"].as_str().unwrap().to_owned()
        })
        .collect();
    let (status, body) = reserve(&node, 8);
    assert_eq!((status, body["error"].as_str()), (503, Some("capacity_exhausted")), "{body}");
    let (_, view) = node.call("GET", "/v1/node", "", false);
    wait_node(&follower, Duration::from_secs(30), |v| last_sequence(v) >= last_sequence(&view));
    assert!(follower.signal("-TERM").success());
    assert!(node.signal("-TERM").success());

    let before = refused_serve(&dir_a, &["--config", large]);
    assert!(before.contains("orders_max = 64 (written with: 8)"), "{before}");
    assert!(before.contains("ringfence journal reconfigure"), "{before}");
    let dir = dir_a.to_str().unwrap();
    let carried = ringfence_within(
        &["journal", "reconfigure", dir, "--config", large],
        Duration::from_secs(60),
    );
    let said = text(&carried.stdout);
    assert!(carried.status.success(), "{said}{}", text(&carried.stderr));
    assert!(said.contains("settings   orders_max = 64 (before: 8)"), "{said}");
    let through = last_sequence(&view);
    assert!(said.contains(&format!("continues at sequence {}", through + 1)), "{said}");

    let node = primary(&dir_a, &secret, &["--config", large]);
    let at = node.replication.unwrap().to_string();
    let standby_args = ["--role", "standby", "--primary", &at, "--cluster-secret-file", &secret];
    let old_standby = refused_serve(&dir_b, &[&["--config", large], &standby_args[..]].concat());
    assert!(old_standby.contains("written with other [engine] settings"), "{old_standby}");
    let follower = standby_with(&dir_c, &secret, node.replication.unwrap(), &["--config", large]);
    follower.wait_for_log("fetched the primary's snapshot", Duration::from_secs(30));
    wait_node(&node, Duration::from_secs(30), |v| v["replication"]["state"] == "in_sync");
    let (status, body) = reserve(&node, 8);
    assert_eq!(status, 201, "the larger table takes the order refused before: {body}");
    let (_, view) = node.call("GET", "/v1/node", "", false);
    assert_eq!(last_sequence(&view), through + 1, "the journal went on after the carry-over");
    wait_node(&follower, Duration::from_secs(30), |v| last_sequence(v) > through);
    let (_, standby_view) = follower.call("GET", "/v1/node", "", false);
    assert_eq!(standby_view["state_hash"], view["state_hash"]);
    for order in &orders {
        for holder in [&node, &follower] {
            let (status, body) = holder.call("GET", &format!("/v1/orders/{order}"), "", false);
            assert_eq!((status, body["state"].as_str()), (200, Some("reserved")), "{body}");
        }
    }
    drop(follower);
    drop(node);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_standby_seeded_from_a_backup_of_its_primary_streams_only_what_followed_the_backup() {
    // Goal: a backup of a serving primary, taken as the data directory of a new standby,
    // joins where the backup ends: the primary streams the records after it, no snapshot is
    // fetched, and the pair is in sync with the same state.
    let root = temp_dir("seeded");
    let secret = write_secret(&root, SECRET);
    let (dir_a, dir_b) = (root.join("a"), root.join("b"));
    let node = primary(&dir_a, &secret, &[]);
    create_sale(&node);
    for request in 0..5 {
        let (status, _) = node.call("POST", "/v1/orders", &reservation(request).0, false);
        assert_eq!(status, 201);
    }
    let backup = ringfence_within(
        &["journal", "backup", dir_a.to_str().unwrap(), dir_b.to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert!(backup.status.success(), "{}", text(&backup.stderr));
    let (_, view) = node.call("GET", "/v1/node", "", false);
    let through = last_sequence(&view);
    for request in 5..8 {
        let (status, _) = node.call("POST", "/v1/orders", &reservation(request).0, false);
        assert_eq!(status, 201);
    }
    let follower = standby(&dir_b, &secret, node.replication.unwrap());
    let joined = format!("continues this journal at {}", through + 1);
    follower.wait_for_log(&joined, Duration::from_secs(30));
    wait_node(&node, Duration::from_secs(30), |v| v["replication"]["state"] == "in_sync");
    let (_, view) = node.call("GET", "/v1/node", "", false);
    wait_node(&follower, Duration::from_secs(30), |v| last_sequence(v) == last_sequence(&view));
    let (_, standby_view) = follower.call("GET", "/v1/node", "", false);
    assert_eq!(standby_view["state_hash"], view["state_hash"]);
    let log = follower.drain_log().join("\n");
    assert!(!log.contains("fetched the primary's snapshot"), "{log}");
    drop(follower);
    drop(node);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_promotion_by_hand_that_fails_on_the_disk_leaves_the_standby_following_its_primary() {
    // Goal: a promotion by hand stops the follower first. One that fails before it stored
    // the new epoch (here the epoch file's temporary name is taken by a directory) leaves a
    // standby of the old epoch that follows its primary again: it takes the primary's next
    // records, and its state never says it follows while it does not.
    let root = temp_dir("promote-fails");
    let secret = write_secret(&root, SECRET);
    let (dir_a, dir_b) = (root.join("a"), root.join("b"));
    let node = primary(&dir_a, &secret, &["--replication", "async"]);
    let follower = standby(&dir_b, &secret, node.replication.unwrap());
    create_sale(&node);
    let target = last_sequence(&node.call("GET", "/v1/node", "", false).1);
    wait_node(&follower, Duration::from_secs(30), |v| {
        last_sequence(v) >= target && v["replication"]["state"] == "following"
    });
    let blocker = dir_b.join(".epoch.tmp");
    std::fs::create_dir_all(blocker.join("x")).unwrap();
    let (status, answer) = follower.call("POST", "/v1/admin/promote", "", true);
    assert_eq!(status, 503, "the promotion was meant to fail: {answer}");
    std::fs::remove_dir_all(&blocker).unwrap();
    let (_, view) = follower.call("GET", "/v1/node", "", false);
    assert_eq!(view["role"], "standby", "{view}");
    for request in 0..3 {
        let (status, body) = node.call("POST", "/v1/orders", &reservation(request).0, false);
        assert_eq!(status, 201, "{body}");
    }
    let target = last_sequence(&node.call("GET", "/v1/node", "", false).1);
    wait_node(&follower, Duration::from_secs(30), |v| {
        last_sequence(v) >= target && v["replication"]["state"] == "following"
    });
    assert!(answer.to_string().contains("follows its primary again"), "{answer}");
    drop(follower);
    drop(node);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_standby_catching_up_a_backlog_acknowledges_while_it_reads() {
    // Goal: while a primary streams a backlog the standby's socket never runs dry. The
    // standby still acknowledges what its node took every heartbeat period, not only once
    // the socket is empty: a primary hears nothing for its replication timeout only from a
    // standby that is gone, so it does not drop and rebuild the stream of a healthy standby
    // for as long as the catch-up lasts. A fake primary streams 300,000 records at once;
    // the standby's first acknowledgement comes while most of them are still to be read. Its
    // heartbeat period is short, so that a machine many times faster than this one still
    // has most of the backlog to read when the period ends.
    const BACKLOG: u64 = 300_000;
    const PER_FRAME: u64 = 1_000;
    let root = temp_dir("backlog-acks");
    let secret = write_secret(&root, SECRET);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fake = listener.local_addr().unwrap();
    let (dir, config) = (root.join("b"), root.join("standby.toml"));
    std::fs::write(&config, "[replication]\nheartbeat_ms = 10\n").unwrap();
    let starting = thread::spawn(move || {
        standby_with(&dir, &secret, fake, &["--config", config.to_str().unwrap()])
    });
    // The standby's start-up check, then its follower: the first connection is the check.
    drop(fake_primary_accept(&listener, 1));
    let follower = starting.join().unwrap();
    let (socket, mut reader, from) = fake_primary_accept(&listener, 1);
    assert_eq!(from, Sequence(1));
    // Every frame of the backlog, written at once: the socket never waits for the writer.
    let mut backlog = Vec::new();
    for first in (1..=BACKLOG).step_by(PER_FRAME as usize) {
        let records: Vec<u8> = (first..first + PER_FRAME).flat_map(|s| record(s, 1)).collect();
        backlog.extend_from_slice(&records_frame_header(
            Sequence(first),
            PER_FRAME as u32,
            records.len(),
        ));
        backlog.extend_from_slice(&records);
    }
    let sender = socket.try_clone().unwrap();
    // The standby gone (the test is over) ends the stream.
    let streaming = thread::spawn(move || (&sender).write_all(&backlog).is_ok());
    let first_ack = match reader.read_message() {
        Ok(Message::Ack(ack)) => ack,
        Ok(other) => panic!("unexpected {other:?}"),
        // What the standby said of it, if it closed the connection.
        Err(error) => panic!("no acknowledgement: {error}\nstandby: {:#?}", follower.drain_log()),
    };
    assert!(
        first_ack.written.0 < BACKLOG / 2,
        "the standby acknowledged only once it had read the backlog: {first_ack:?}"
    );
    drop(follower);
    drop(socket);
    streaming.join().unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn serve_refuses_a_heartbeat_period_above_a_quarter_of_the_replication_timeout() {
    // Goal: an idle standby acknowledges only when a heartbeat reaches it, so heartbeats as
    // rare as the replication timeout make an idle pair flap (standby lost, writes refused,
    // reconnect) every timeout. `serve` refuses such a period before it starts, naming both
    // settings (the shared check `config check` runs too).
    let root = temp_dir("heartbeat-refused");
    let secret = write_secret(&root, SECRET);
    let config = root.join("ringfence.toml");
    std::fs::write(&config, "[replication]\ntimeout_ms = 1000\nheartbeat_ms = 1500\n").unwrap();
    let config = config.to_str().unwrap();
    let args = ["--cluster-secret-file", &secret, "--replication-listen", "127.0.0.1:0"];
    let refused = refused_serve(&root.join("a"), &[&args[..], &["--config", config]].concat());
    assert!(refused.contains("heartbeat_ms = 1500"), "{refused}");
    assert!(refused.contains("a quarter of timeout_ms (1000"), "{refused}");
    let _ = std::fs::remove_dir_all(&root);
}
