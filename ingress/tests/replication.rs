//! The network front's side of replication, through real sockets: a standby refuses writes
//! naming its primary and serves reads; the admin API promotes it and switches the ack mode;
//! `replication_unavailable` reads the same on both ports; and the client library moves a
//! write refused as `not_primary` to the next address.

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Http, TOKEN, start, start_over, test_node_config};
use ringfence_core::pipeline::{Intake, Node, NodeConfig, Topology};
use ringfence_core::{
    Action, Command, CreateSku, Engine, Epoch, Outcome, Query, Rejection, Reserve, Sequence,
    Sequenced, SkuId, Timestamp, UserId,
};
use ringfence_ingress::wire::ErrorCode;
use ringfence_ingress::{
    AdminCall, Backend, BackendCompletion, Client, ClientError, NodeStatus, Refusal,
    ReplicationControl, ReplicationStatus, ServerConfig, ServerHandle, keys,
};

const PRIMARY_HTTP: &str = "10.0.0.1:7080";

/// Replication as the replicator would report and drive it, without sockets: promotion
/// raises the node to epoch 2.
#[derive(Default)]
struct FakeControl {
    promoted: AtomicBool,
    mode: Mutex<String>,
}

impl ReplicationControl for FakeControl {
    fn status(&self) -> ReplicationStatus {
        let promoted = self.promoted.load(Ordering::Acquire);
        ReplicationStatus {
            role: if promoted { "primary" } else { "standby" }.into(),
            mode: self.mode.lock().unwrap().clone(),
            state: if promoted { "alone" } else { "following" }.into(),
            peer: Some("10.0.0.1:7400".into()),
            applied_sequence: 1,
            acked_sequence: 1,
            ..ReplicationStatus::default()
        }
    }

    fn promote(&self, node: &Node, _force: bool) -> AdminCall<Epoch> {
        if let Err(error) = node.promote(Epoch(2)) {
            return AdminCall::Done(Err(error.to_string()));
        }
        self.promoted.store(true, Ordering::Release);
        AdminCall::Done(Ok(Epoch(2)))
    }

    fn set_mode(&self, mode: &str) -> AdminCall<()> {
        *self.mode.lock().unwrap() = mode.to_owned();
        AdminCall::Done(Ok(()))
    }

    fn write_metrics(&self, out: &mut String) {
        out.push_str("ringfence_replication_lag_records 0\n");
    }
}

fn create_sku(sku: u64) -> Command {
    Command::Client {
        key: keys::request_key(&format!("create-{sku}")),
        action: Action::CreateSku(CreateSku {
            sku: SkuId(sku),
            stock: 10,
            price_cents: 500,
            per_user_limit: 0,
            payment_timeout_ms: 600_000,
            sale_start: None,
            sale_end: None,
        }),
    }
}

fn reserve(request_id: &str, user: u64) -> Command {
    Command::Client {
        key: keys::request_key(request_id),
        action: Action::Reserve(Reserve {
            user: UserId(user),
            sku: SkuId(1),
            qty: 1,
            coupon: None,
        }),
    }
}

/// A standby whose state holds SKU 1, as if its primary had sent that record, with `control`.
fn start_standby(control: Arc<FakeControl>) -> ServerHandle {
    let node_config = NodeConfig { intake: Intake::Replica, ..test_node_config(Topology::Compact) };
    let mut engine = Engine::new(node_config.engine.clone());
    let now = Timestamp(ringfence_ingress::backend::now_ms());
    let created =
        engine.apply(&Sequenced { sequence: Sequence(1), timestamp: now, command: create_sku(1) });
    assert!(matches!(created, Outcome::SkuCreated(_)), "{created:?}");
    let replication: common::Replication = (control, Some(PRIMARY_HTTP.into()));
    start_over(ServerConfig::loopback(), node_config, engine, Some(replication))
}

const RESERVE_BODY: &str = r#"{"request_id":"r-1","user":7,"sku":1,"qty":1}"#;

#[test]
fn a_standby_refuses_writes_naming_the_primary_and_serves_reads() {
    // Goal: on a standby, a write gets 503 not_primary with the primary's address on HTTP and
    // a non-fatal NotPrimary error naming it on the binary port, while reads, /v1/node,
    // /metrics and /health are served and show the standby role and replication status.
    let server = start_standby(Arc::new(FakeControl::default()));
    let mut http = Http::connect(server.http_addr().unwrap());
    let refused = http.call("POST", "/v1/orders", Some(RESERVE_BODY), None);
    assert_eq!(refused.status, 503);
    let body = refused.json();
    assert_eq!(
        (body["error"].as_str(), body["primary"].as_str()),
        (Some("not_primary"), Some(PRIMARY_HTTP))
    );
    assert!(body["message"].as_str().unwrap().contains(PRIMARY_HTTP), "{body}");
    let sku = http.call("GET", "/v1/skus/1", None, None);
    assert_eq!((sku.status, sku.json()["available"].as_u64()), (200, Some(10)));
    assert_eq!(http.call("GET", "/v1/orders/5", None, None).json()["error"], "unknown_order");
    assert_eq!(http.call("GET", "/health", None, None).status, 200);
    let node = http.call("GET", "/v1/node", None, None).json();
    assert_eq!((node["role"].as_str(), node["epoch"].as_u64()), (Some("standby"), Some(1)));
    assert_eq!(
        (node["last_sequence"].as_u64(), node["applied_sequence"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(node["replication"]["role"], "standby");
    assert_eq!(node["replication"]["state"], "following");
    assert_eq!(node["peer"]["status"], "10.0.0.1:7400");
    let metrics = String::from_utf8(http.call("GET", "/metrics", None, None).body).unwrap();
    assert!(metrics.contains("ringfence_not_primary_total 1\n"), "{metrics}");
    assert!(metrics.contains("ringfence_replication_lag_records 0\n"), "{metrics}");

    let mut client = Client::connect(&[server.binary_addr().unwrap()]).unwrap();
    let answers =
        client.pipeline(&[reserve("r-1", 7), Command::Query(Query::Sku(SkuId(1)))]).unwrap();
    let refusal = answers[0].as_ref().unwrap_err();
    assert_eq!((refusal.code, refusal.fatal), (ErrorCode::NotPrimary, false));
    assert_eq!(refusal.message, format!("not primary; primary at {PRIMARY_HTTP}"));
    assert!(matches!(answers[1], Ok(Outcome::Sku(_))), "{:?}", answers[1]);
    assert!(!client.node().unwrap().primary);
    server.shutdown().unwrap();
}

#[test]
fn promotion_over_http_makes_the_standby_take_writes() {
    // Goal: POST /v1/admin/promote needs the admin token; with it the standby becomes the
    // primary in epoch 2 (shown on both ports), takes writes, and a second promotion is 409.
    let control = Arc::new(FakeControl::default());
    let server = start_standby(Arc::clone(&control));
    let mut http = Http::connect(server.http_addr().unwrap());
    assert_eq!(http.call("POST", "/v1/admin/promote", None, None).status, 401);
    assert_eq!(http.call("POST", "/v1/admin/promote", None, Some("wrong")).status, 401);
    assert_eq!(
        http.call("POST", "/v1/admin/promote", Some(r#"{"epoch":9}"#), Some(TOKEN)).status,
        400
    );
    assert!(!control.promoted.load(Ordering::Acquire));
    let keyed = Some(r#"{"request_id":"promote-1"}"#);
    let promoted = http.call("POST", "/v1/admin/promote", keyed, Some(TOKEN));
    assert_eq!(promoted.status, 200, "{}", promoted.json());
    assert_eq!(promoted.json(), serde_json::json!({ "role": "primary", "epoch": 2 }));
    // A retry with the same request id answers the promotion again; another id is refused.
    let retried = http.call("POST", "/v1/admin/promote", keyed, Some(TOKEN));
    assert_eq!((retried.status, retried.json()), (200, promoted.json()));
    let other =
        http.call("POST", "/v1/admin/promote", Some(r#"{"request_id":"p-2"}"#), Some(TOKEN));
    assert_eq!(other.status, 409, "{}", other.json());
    let node = http.call("GET", "/v1/node", None, None).json();
    assert_eq!((node["role"].as_str(), node["epoch"].as_u64()), (Some("primary"), Some(2)));
    assert_eq!(node["replication"]["role"], "primary");
    let reserved = http.call("POST", "/v1/orders", Some(RESERVE_BODY), None);
    assert_eq!(reserved.status, 201, "{}", reserved.json());
    let again = http.call("POST", "/v1/admin/promote", None, Some(TOKEN));
    assert_eq!((again.status, again.json()["error"].clone()), (409, "not_standby".into()));
    let mut client = Client::connect(&[server.binary_addr().unwrap()]).unwrap();
    let info = client.node().unwrap();
    assert!(info.primary);
    assert_eq!((info.epoch, info.last_sequence), (2, 2));
    server.shutdown().unwrap();
}

#[test]
fn replication_mode_switch_takes_sync_or_async_only() {
    // Goal: POST /v1/admin/replication needs the token, passes `sync` or `async` to the
    // replicator and answers the mode; any other mode is 400; a node without replication
    // refuses the switch (409) and a promotion of a primary is 409.
    let control = Arc::new(FakeControl::default());
    let server = start_standby(Arc::clone(&control));
    let mut http = Http::connect(server.http_addr().unwrap());
    let path = "/v1/admin/replication";
    assert_eq!(http.call("POST", path, Some(r#"{"mode":"async"}"#), None).status, 401);
    let switched = http.call("POST", path, Some(r#"{"mode":"async"}"#), Some(TOKEN));
    assert_eq!((switched.status, switched.json()), (200, serde_json::json!({ "mode": "async" })));
    assert_eq!(*control.mode.lock().unwrap(), "async");
    assert_eq!(http.call("GET", "/v1/node", None, None).json()["replication"]["mode"], "async");
    for bad in [r#"{"mode":"eventual"}"#, r#"{"mode":1}"#, r#"{}"#, "{"] {
        let response = http.call("POST", path, Some(bad), Some(TOKEN));
        assert_eq!(response.status, 400, "{bad}");
    }
    assert_eq!(*control.mode.lock().unwrap(), "async");
    assert_eq!(http.call("GET", path, None, Some(TOKEN)).status, 405);
    server.shutdown().unwrap();

    let alone = start(ServerConfig::loopback());
    let mut http = Http::connect(alone.http_addr().unwrap());
    let refused = http.call("POST", path, Some(r#"{"mode":"sync"}"#), Some(TOKEN));
    assert_eq!((refused.status, refused.json()["error"].clone()), (409, "mode_refused".into()));
    let node = http.call("GET", "/v1/node", None, None).json();
    assert!(node["replication"].is_null(), "{node}");
    let promote = http.call("POST", "/v1/admin/promote", None, Some(TOKEN));
    assert_eq!((promote.status, promote.json()["error"].clone()), (409, "not_standby".into()));
    alone.shutdown().unwrap();
}

/// A node whose replication is held: writes are refused at submission, or, with
/// `unreplicated`, accepted and completed without an outcome, as a primary that lost its
/// sync standby answers what it applied but could not replicate.
struct HeldWrites {
    unreplicated: bool,
    ready: VecDeque<BackendCompletion>,
}

impl Backend for HeldWrites {
    fn try_submit(&mut self, command: Command, token: u64) -> Result<(), Refusal> {
        let result = match command {
            Command::Query(_) => Ok(Outcome::Rejected(Rejection::UnknownSku)),
            _ if self.unreplicated => Err(Refusal::ReplicationUnavailable),
            _ => return Err(Refusal::ReplicationUnavailable),
        };
        // The event loop drains completions right after it serves the request.
        self.ready.push_back(BackendCompletion { token, result });
        Ok(())
    }

    fn poll(&mut self) -> Option<BackendCompletion> {
        self.ready.pop_front()
    }

    fn status(&self) -> NodeStatus {
        NodeStatus::default()
    }
}

#[test]
fn replication_unavailable_reads_the_same_on_both_ports() {
    // Goal: a write refused, or left without an outcome, because replication is unavailable
    // is a 503 replication_unavailable with Retry-After on HTTP and a non-fatal
    // ReplicationUnavailable error with a retry hint on the binary port; reads still answer.
    for unreplicated in [false, true] {
        let backend = HeldWrites { unreplicated, ready: VecDeque::new() };
        let server = ringfence_ingress::start(ServerConfig::loopback(), |_| Ok(backend)).unwrap();
        let mut http = Http::connect(server.http_addr().unwrap());
        let response = http.call("POST", "/v1/orders", Some(RESERVE_BODY), None);
        assert_eq!(response.status, 503);
        assert_eq!(response.json()["error"], "replication_unavailable");
        assert_eq!(response.header("retry-after"), Some("1"));
        let message = response.json()["message"].as_str().unwrap().to_owned();
        let expected = if unreplicated { "same request id" } else { "writes are held" };
        assert!(message.contains(expected), "{message}");
        assert_eq!(http.call("GET", "/v1/skus/1", None, None).status, 404);
        let mut client = Client::connect(&[server.binary_addr().unwrap()]).unwrap();
        let answers = client.pipeline(&[reserve("r-1", 7)]).unwrap();
        let refusal = answers[0].as_ref().unwrap_err();
        assert_eq!((refusal.code, refusal.fatal), (ErrorCode::ReplicationUnavailable, false));
        assert!(refusal.retry_after_ms > 0 && refusal.message.contains(expected), "{refusal:?}");
        client.ping().unwrap();
        let metrics = String::from_utf8(http.call("GET", "/metrics", None, None).body).unwrap();
        assert!(metrics.contains("ringfence_replication_unavailable_total 2\n"), "{metrics}");
        server.shutdown().unwrap();
    }
}

#[test]
fn client_moves_a_not_primary_write_to_the_next_address() {
    // Goal: a client whose first address is a standby sends a write there, is told
    // not_primary, and resends it with the same key to the next address, the primary; a retry
    // gets the same answer. A client with only the standby gets the refusal at once; one whose
    // addresses are all standbys gets it when its timeout has passed.
    let standby = start_standby(Arc::new(FakeControl::default()));
    let primary = start(ServerConfig::loopback());
    let mut client = Client::connect(&[primary.binary_addr().unwrap()]).unwrap();
    client.authenticate(TOKEN).unwrap();
    assert!(matches!(client.call(create_sku(1)).unwrap(), Outcome::SkuCreated(_)));
    let addrs = [standby.binary_addr().unwrap(), primary.binary_addr().unwrap()];
    let mut client = Client::connect(&addrs).unwrap();
    assert_eq!(client.peer(), addrs[0]);
    let first = client.call(reserve("r-failover", 9)).unwrap();
    assert!(matches!(first, Outcome::Reserved { .. }), "{first:?}");
    assert_eq!(client.peer(), addrs[1]);
    assert_eq!(client.call(reserve("r-failover", 9)).unwrap(), first);

    let mut alone = Client::connect(&addrs[..1]).unwrap();
    let refusal = alone.pipeline(&[reserve("r-alone", 10)]).unwrap().remove(0).unwrap_err();
    assert_eq!(refusal.code, ErrorCode::NotPrimary);
    let mut no_primary = Client::connect(&[addrs[0], addrs[0]]).unwrap();
    no_primary.set_timeout(Duration::from_millis(300));
    match no_primary.call(reserve("r-nowhere", 11)) {
        Err(ClientError::Refused(refusal)) => assert_eq!(refusal.code, ErrorCode::NotPrimary),
        other => panic!("expected not_primary once the timeout passed, got {other:?}"),
    }
    standby.shutdown().unwrap();
    primary.shutdown().unwrap();
}
