//! `ringfence-perf load` against a node running in this test process, as an operator points it
//! at a node of theirs: the rows it prints, the reservations it made, and what it refuses.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::perf;
use ringfence_core::pipeline::{MemoryJournal, NoReplicator, NoSnapshots, Node};
use ringfence_core::pipeline::{NodeConfig, Topology};
use ringfence_core::{
    Action, Command, CreateSku, Engine, EngineConfig, Outcome, Query, RequestKey, Sequence, SkuId,
};
use ringfence_ingress::{Client, HashWatch, NodeBackend, Role, ServerConfig, ServerHandle};
use serde_json::Value;

const TOKEN: &str = "load-test-admin-token-of-32-chars";
const ORDERS: &str = "load-test-orders-token-of-32-chars";
const READ: &str = "load-test-read-token-of-32-chars!";

/// A node on ephemeral loopback ports (in-memory journal) that enforces roles: its admin token
/// is [`TOKEN`], its order service's [`ORDERS`], its readers' [`READ`].
fn node() -> ServerHandle {
    node_with(ServerConfig::loopback())
}

/// [`node`], its network front set by `config` (ports, limits) but for the tokens.
fn node_with(mut config: ServerConfig) -> ServerHandle {
    let (orders_max, holdings_max, request_keys_max) = (16_384, 16_384, 16_384);
    let engine =
        EngineConfig { orders_max, holdings_max, request_keys_max, ..EngineConfig::small() };
    let node_config = NodeConfig { engine, ..NodeConfig::for_tests(Topology::Compact) };
    config.admin_token = Some(TOKEN.to_owned());
    config.role_tokens = vec![(Role::Orders, ORDERS.to_owned()), (Role::Read, READ.to_owned())];
    ringfence_ingress::start(config, move |waker| {
        let engine = Engine::new(node_config.engine.clone());
        let epoch = node_config.epoch;
        let (hook, watch) = HashWatch::new(NoSnapshots, &engine);
        let node = Node::start_with(
            node_config,
            engine,
            Sequence(1),
            MemoryJournal::new(),
            NoReplicator::default(),
            hook,
        )
        .map_err(std::io::Error::other)?;
        NodeBackend::new(node, waker, watch, epoch, "memory".into(), None)
    })
    .expect("the node starts on loopback")
}

fn client(server: &ServerHandle) -> Client {
    let mut client = Client::connect(&[server.binary_addr().unwrap()]).unwrap();
    client.authenticate(TOKEN).unwrap();
    client
}

/// Creates SKU `sku` with `stock` units, one per user.
fn create_sku(server: &ServerHandle, sku: u64, stock: u32) {
    let spec = CreateSku {
        sku: SkuId(sku),
        stock,
        price_cents: 100,
        per_user_limit: 1,
        payment_timeout_ms: 3_600_000,
        sale_start: None,
        sale_end: None,
    };
    let command = Command::Client {
        key: RequestKey::from_u128(u128::from(sku)),
        action: Action::CreateSku(spec),
    };
    assert!(matches!(client(server).call(command), Ok(Outcome::SkuCreated(_))));
}

/// The SKU's available and reserved units.
fn stock(server: &ServerHandle, sku: u64) -> (u64, u64) {
    match client(server).call(Command::Query(Query::Sku(SkuId(sku)))).unwrap() {
        Outcome::Sku(view) => (view.available, view.reserved),
        other => panic!("{other:?}"),
    }
}

/// Runs `load` with `args` and the token file: exit code, JSON rows, stderr.
fn load(token: &Path, addr: SocketAddr, args: &[&str]) -> (Option<i32>, Vec<Value>, String) {
    let addr = addr.to_string();
    let mut all = vec!["load", "--json", "--addr", &addr, "--token-file", token.to_str().unwrap()];
    all.extend(args);
    let output = perf(&all);
    let rows = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON row"))
        .collect();
    (output.status.code(), rows, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn load_reserves_on_a_running_node_over_both_protocols_and_counts_what_it_was_refused() {
    // Goal: each fixed rate sends exactly rate × duration reservations, every one reserved
    // (the warm-up's too, not counted in the row); over HTTP as over the binary protocol; a
    // `max` run stops at the units left; answers that are not reservations are counted by
    // code (each request's own refusal: `forbidden` for a read token, over both protocols);
    // a run that needs more units than the SKU has, an unknown SKU and a wrong token are
    // refused before anything is sent; the closing note compares the reservations
    // acknowledged with what the SKU shows. The node enforces roles, so every reservation made
    // carried the orders token (binary AUTH, or the HTTP header).
    let server = node();
    let dir = std::env::temp_dir().join(format!("rf-perf-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("orders.token");
    std::fs::write(&token, format!("{ORDERS}\n")).unwrap();
    let (binary, http) = (server.binary_addr().unwrap(), server.http_addr().unwrap());
    create_sku(&server, 7, 3_000);
    let fixed = ["--rate", "1000", "--duration-s", "0.5", "--warmup-s", "0.2", "--first-user", "1"];
    let (code, rows, stderr) =
        load(&token, binary, &["--sku", "7"].iter().chain(&fixed).copied().collect::<Vec<_>>());
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!((row["variant"].as_str(), row["ops"].as_u64()), (Some("binary @1000/s"), Some(500)));
    assert_eq!((row["not_reserved"].as_u64(), row["lost"].as_u64()), (Some(0), Some(0)), "{row}");
    assert_eq!(row["latency_from"], "intended_send");
    assert_eq!(stock(&server, 7), (2_300, 700), "the warm-up's 200 and the row's 500");

    // The same users again: each already holds its one unit.
    let (code, rows, stderr) =
        load(&token, binary, &["--sku", "7"].iter().chain(&fixed).copied().collect::<Vec<_>>());
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(rows[0]["not_reserved"].as_u64(), Some(500), "{:?}", rows[0]);
    assert_eq!(rows[0]["not_reserved_by_code"], serde_json::json!({ "limit_exceeded": 500 }));
    assert_eq!(stock(&server, 7), (2_300, 700));

    let out = dir.join("out");
    let over_http = [
        "--http",
        "--sku",
        "7",
        "--rate",
        "1000",
        "--duration-s",
        "0.3",
        "--warmup-s",
        "0",
        "--out",
        out.to_str().unwrap(),
    ];
    let (code, rows, stderr) = load(&token, http, &over_http);
    // The row's histogram in HdrHistogram's text format, and the chart.
    let hgrm = std::fs::read_to_string(out.join("http--1000-s.hgrm")).unwrap();
    assert!(hgrm.contains("Value     Percentile TotalCount 1/(1-Percentile)"), "{hgrm}");
    assert!(hgrm.contains("Total count    =          300]"), "{hgrm}");
    let svg = std::fs::read_to_string(out.join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("http @1000/s"), "{svg}");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        (rows[0]["variant"].as_str(), rows[0]["ops"].as_u64()),
        (Some("http @1000/s"), Some(300))
    );
    assert_eq!(rows[0]["not_reserved"].as_u64(), Some(0), "{:?}", rows[0]);
    assert_eq!(stock(&server, 7), (2_000, 1_000));

    // `max` sends as fast as answers come, and stops at the units left once the warm-up and
    // the fixed rates have theirs (200 and 500 here).
    let then_max = [
        "--sku",
        "7",
        "--rate",
        "1000",
        "--rate",
        "max",
        "--duration-s",
        "0.5",
        "--warmup-s",
        "0.2",
    ];
    let (code, rows, stderr) = load(&token, binary, &then_max);
    assert_eq!(code, Some(0), "{stderr}");
    let ops: Vec<_> = rows.iter().map(|row| (row["variant"].clone(), row["ops"].clone())).collect();
    let expected = [("binary @1000/s", 500), ("binary max", 1_300)];
    assert_eq!(ops, expected.map(|(variant, ops)| (variant.into(), ops.into())), "{rows:?}");
    assert!(rows.iter().all(|row| row["not_reserved"] == 0), "{rows:?}");
    assert_eq!(rows[1]["latency_from"], "send");
    assert_eq!(stock(&server, 7), (0, 3_000));

    // Refused before anything is sent.
    create_sku(&server, 8, 100);
    let under_a_day = "each under a day";
    let refusals: [(&[&str], &str); 6] = [
        (&["--sku", "8", "--rate", "1000", "--duration-s", "1"], "SKU 8 has 100 units available"),
        (&["--sku", "9"], "unknown_sku"),
        (&["--sku", "9", "--http"], "HTTP 404: \"unknown_sku\""),
        (&["--sku", "8", "--duration-s", "inf"], under_a_day),
        (&["--sku", "8", "--duration-s", "1e20"], under_a_day),
        (&["--sku", "8", "--warmup-s", "NaN"], under_a_day),
    ];
    for (args, said) in refusals {
        let target = if args.contains(&"--http") { http } else { binary };
        let (code, rows, stderr) = load(&token, target, args);
        assert_eq!((code, rows.len()), (Some(2), 0), "{args:?}: {stderr}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
    }
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let (code, _, stderr) = load(&wrong, binary, &["--sku", "8"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("auth_failed (wrong token)"), "{stderr}");
    let (code, _, stderr) = load(&wrong, http, &["--sku", "8", "--http"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("HTTP 401"), "{stderr}");
    // A token that may read the SKU but not reserve: every answer is a refusal, by its code.
    let read = dir.join("read.token");
    std::fs::write(&read, READ).unwrap();
    let fixed = ["--sku", "8", "--rate", "100", "--duration-s", "0.5", "--warmup-s", "0"];
    for (target, protocol) in [(binary, None), (http, Some("--http"))] {
        let args: Vec<&str> = fixed.iter().copied().chain(protocol).collect();
        let (code, rows, stderr) = load(&read, target, &args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert_eq!(rows[0]["not_reserved_by_code"], serde_json::json!({ "forbidden": 50 }));
    }
    assert_eq!(stock(&server, 8), (100, 0), "nothing was reserved");
    // The table's closing note holds the node to what it acknowledged.
    let addr = binary.to_string();
    let args = ["load", "--addr", &addr, "--token-file", token.to_str().unwrap(), "--sku", "8"];
    let timing = ["--rate", "100", "--duration-s", "0.5", "--warmup-s", "0.2"];
    let output = perf(&args.iter().chain(&timing).copied().collect::<Vec<_>>());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let said = "70 reservations acknowledged in all, the warm-up's included; the SKU's reserved \
                units rose by as many";
    assert!(stdout.contains(said), "{stdout}");
    assert_eq!(stock(&server, 8), (30, 70));
    server.shutdown().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn load_setup_is_bounded_against_a_node_that_trickles_its_answer() {
    // Goal: reading the SKU before a run waits for the whole answer within its bound: a peer
    // that sends a byte every 200 ms (each read answered well within a per-read timeout)
    // makes `load --http` exit 2 saying so, not wait as long as the peer keeps sending.
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickler = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if stream.write_all(b"H").is_err() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        })
    };
    let started = std::time::Instant::now();
    let output = perf(&["load", "--http", "--addr", &addr.to_string(), "--sku", "1"]);
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trickler.join().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no whole answer within 10 s"), "{stderr}");
    // A liveness bound: the setup's own bound is 10 s.
    assert!(took < std::time::Duration::from_secs(60), "{took:?}");
}

#[test]
fn load_names_the_per_address_limit_when_the_node_refuses_its_connections() {
    // Goal: over either protocol, `--connections` above the node's per-address limit exits 2
    // before any run, naming `connections_per_address_max` and the most connections that
    // were taken; exactly the limit runs (the check gives its connections back first).
    let per_address = ServerConfig { connections_per_address_max: 4, ..ServerConfig::loopback() };
    let server = node_with(per_address);
    let dir = std::env::temp_dir().join(format!("rf-perf-load-connections-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("orders.token");
    std::fs::write(&token, format!("{ORDERS}\n")).unwrap();
    let token = token.to_str().unwrap();
    let (binary, http) = (server.binary_addr().unwrap(), server.http_addr().unwrap());
    create_sku(&server, 7, 1_000);
    let fixed = ["--sku", "7", "--rate", "100", "--duration-s", "0.2", "--warmup-s", "0"];
    for (addr, protocol) in [(binary, None), (http, Some("--http"))] {
        let addr = addr.to_string();
        let args = ["load", "--addr", &addr, "--token-file", token];
        let run = |connections: &str| {
            let extra = ["--connections", connections];
            let all: Vec<&str> =
                args.iter().chain(&fixed).chain(&extra).copied().chain(protocol).collect();
            let output = perf(&all);
            (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
        };
        let (code, stderr) = run("7");
        assert_eq!(code, Some(2), "{protocol:?}: {stderr}");
        for said in ["connections_per_address_max", "lower --connections to 4", "connection 5 of"] {
            assert!(stderr.contains(said), "{protocol:?}: no `{said}` in: {stderr}");
        }
        assert!(stderr.contains("too many connections from this address"), "{stderr}");
        let (code, stderr) = run("4");
        assert_eq!(code, Some(0), "{protocol:?}: {stderr}");
    }
    server.shutdown().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
