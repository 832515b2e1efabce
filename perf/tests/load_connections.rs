//! `ringfence-perf load` asked for more connections than the node takes from one address: it
//! stops before the runs and says which limit, not only that a connection closed.

mod common;

use std::net::SocketAddr;

use common::perf;
use ringfence_core::pipeline::{MemoryJournal, NoReplicator, NoSnapshots, Node};
use ringfence_core::pipeline::{NodeConfig, Topology};
use ringfence_core::{
    Action, Command, CreateSku, Engine, EngineConfig, Outcome, RequestKey, Sequence, SkuId,
};
use ringfence_ingress::{Client, HashWatch, NodeBackend, Role, ServerConfig, ServerHandle};

const TOKEN: &str = "load-test-admin-token-of-32-chars";
const ORDERS: &str = "load-test-orders-token-of-32-chars";
/// The node's `connections_per_address_max`.
const PER_ADDRESS: usize = 4;

/// A node on ephemeral loopback ports (in-memory journal) that takes [`PER_ADDRESS`]
/// connections from one address and enforces roles: admin [`TOKEN`], orders [`ORDERS`].
fn node() -> ServerHandle {
    let node_config = NodeConfig::for_tests(Topology::Compact);
    let mut config = ServerConfig::loopback();
    config.connections_per_address_max = PER_ADDRESS;
    config.admin_token = Some(TOKEN.to_owned());
    config.role_tokens = vec![(Role::Orders, ORDERS.to_owned())];
    ringfence_ingress::start(config, move |waker| {
        let engine = Engine::new(EngineConfig::small());
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

/// Creates SKU `sku`, open, with `stock` units, one per user.
fn create_sku(addr: SocketAddr, sku: u64, stock: u32) {
    let mut client = Client::connect(&[addr]).unwrap();
    client.authenticate(TOKEN).unwrap();
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
    assert!(matches!(client.call(command), Ok(Outcome::SkuCreated(_))));
}

#[test]
fn load_names_the_per_address_limit_when_the_node_refuses_its_connections() {
    // Goal: over either protocol, `--connections` above the node's per-address limit exits 2
    // before any run, naming `connections_per_address_max` and the most connections that
    // were taken; exactly the limit runs (the check gives its connections back first).
    let server = node();
    let dir = std::env::temp_dir().join(format!("rf-perf-load-connections-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("orders.token");
    std::fs::write(&token, format!("{ORDERS}\n")).unwrap();
    let token = token.to_str().unwrap();
    let (binary, http) = (server.binary_addr().unwrap(), server.http_addr().unwrap());
    create_sku(binary, 7, 1_000);
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
