//! `/health` and `/ready` tell the truth: a node whose journal cannot write is reported
//! failed (503, naming the cause) rather than healthy; a standby, and a node that cannot take
//! writes, is live but not ready.

mod common;

use common::{Http, TOKEN, test_node_config};
use ringfence_core::pipeline::{
    Clock, Framed, Intake, Journal, NoReplicator, NoSnapshots, Node, StageError, Topology,
};
use ringfence_core::{Engine, Sequence};
use ringfence_ingress::{HashWatch, NodeBackend, ServerConfig, ServerHandle};

/// A journal whose disk fills up after `room` records.
struct FillingDisk {
    room: u64,
    last: Sequence,
}

impl Journal for FillingDisk {
    const NEEDS_BYTES: bool = false;

    fn append(&mut self, record: &Framed<'_>) -> Result<(), StageError> {
        if self.room == 0 {
            let source = std::io::Error::from_raw_os_error(28);
            return Err(StageError::Io { context: "appending to the journal".into(), source });
        }
        self.room -= 1;
        self.last = record.sequenced.sequence;
        Ok(())
    }

    fn flush(&mut self, _clock: &dyn Clock) -> Result<Sequence, StageError> {
        Ok(self.last)
    }
}

fn serve(intake: Intake, room: u64) -> ServerHandle {
    let config = ServerConfig { admin_token: Some(TOKEN.to_owned()), ..ServerConfig::loopback() };
    let node_config = test_node_config(Topology::Compact);
    let node_config = ringfence_core::pipeline::NodeConfig { intake, ..node_config };
    ringfence_ingress::start(config, move |waker| {
        let engine = Engine::new(node_config.engine.clone());
        let (hook, watch) = HashWatch::new(NoSnapshots, &engine);
        let epoch = node_config.epoch;
        let journal = FillingDisk { room, last: Sequence(0) };
        let node = Node::start_with(
            node_config,
            engine,
            Sequence(1),
            journal,
            NoReplicator::default(),
            hook,
        )
        .map_err(std::io::Error::other)?;
        NodeBackend::new(node, waker, watch, epoch, "filling disk".into(), None)
    })
    .expect("server starts on loopback")
}

#[test]
fn a_journal_that_cannot_write_makes_the_node_unhealthy_and_unready() {
    // Goal: with the disk full the node is not reported healthy: the write that hit the full
    // disk is not acknowledged, and `/health` and `/ready` answer 503 naming the cause.
    let server = serve(Intake::Sequencer, 2);
    let mut http = Http::connect(server.http_addr().unwrap());
    assert_eq!(http.call("GET", "/health", None, None).status, 200);
    let ready = http.call("GET", "/ready", None, None);
    assert_eq!((ready.status, ready.json()["ready"].as_bool()), (200, Some(true)));
    common::create_sku(&mut http, 1, 10, 0, 60_000);
    let reserve = r#"{"request_id":"r-1","user":1,"sku":1,"qty":1}"#;
    assert_eq!(http.call("POST", "/v1/orders", Some(reserve), None).status, 201);
    let reserve = r#"{"request_id":"r-2","user":2,"sku":1,"qty":1}"#;
    let refused = http.call("POST", "/v1/orders", Some(reserve), None);
    assert_eq!(refused.status, 503, "the write the full disk refused is not acknowledged");
    let health = http.call("GET", "/health", None, None);
    assert_eq!(health.status, 503);
    let reason = health.json()["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("journaler") && reason.contains("No space left"), "{reason}");
    let ready = http.call("GET", "/ready", None, None);
    assert_eq!((ready.status, ready.json()["error"].as_str()), (503, Some("node_failed")));
    server.shutdown().unwrap();
}

#[test]
fn a_standby_is_live_but_not_ready_for_writes() {
    // Goal: a load balancer sends writes only to a ready node: a standby says why not.
    let server = serve(Intake::Replica, u64::MAX);
    let mut http = Http::connect(server.http_addr().unwrap());
    assert_eq!(http.call("GET", "/health", None, None).status, 200);
    let ready = http.call("GET", "/ready", None, None);
    assert_eq!(ready.status, 503);
    let body = ready.json();
    assert_eq!(
        (body["error"].as_str(), body["role"].as_str()),
        (Some("not_primary"), Some("standby"))
    );
    server.shutdown().unwrap();
}
