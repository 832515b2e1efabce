//! `/health` and `/ready` tell the truth: a node whose journal cannot write is reported
//! degraded and not ready (naming the cause) while it serves reads, a node whose journal broke
//! is reported failed; a standby is live but not ready.

mod common;

use common::{Http, TOKEN, test_node_config};
use ringfence_core::pipeline::{
    Clock, Framed, Intake, Journal, NoReplicator, NoSnapshots, Node, StageError, Topology,
};
use ringfence_core::{Engine, Sequence};
use ringfence_ingress::{HashWatch, NodeBackend, ServerConfig, ServerHandle};

/// A journal whose disk fills up after `room` records; or, if `broken`, that fails beyond
/// an I/O error (a journal it cannot trust any more).
struct FillingDisk {
    room: u64,
    last: Sequence,
    broken: bool,
}

impl Journal for FillingDisk {
    const NEEDS_BYTES: bool = false;

    fn append(&mut self, record: &Framed<'_>) -> Result<(), StageError> {
        if self.room == 0 && self.broken {
            return Err(StageError::Fatal("segment 9 is not the next segment".into()));
        }
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

fn serve(intake: Intake, room: u64, broken: bool) -> ServerHandle {
    let config = ServerConfig { admin_token: Some(TOKEN.to_owned()), ..ServerConfig::loopback() };
    let node_config = test_node_config(Topology::Compact);
    let node_config = ringfence_core::pipeline::NodeConfig { intake, ..node_config };
    ringfence_ingress::start(config, move |waker| {
        let engine = Engine::new(node_config.engine.clone());
        let (hook, watch) = HashWatch::new(NoSnapshots, &engine);
        let epoch = node_config.epoch;
        let journal = FillingDisk { room, last: Sequence(0), broken };
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
fn a_full_disk_makes_the_node_degraded_and_unready_and_reads_go_on() {
    // Goal: with the disk full the node is not reported ready: the write that hit the full
    // disk is not acknowledged and names the cause, `/ready` answers 503 `journal_failed`,
    // `/health` 200 `degraded` with the cause, and reads are still answered.
    let server = serve(Intake::Sequencer, 2, false);
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
    let body = refused.json();
    assert_eq!(body["error"].as_str(), Some("journal_failed"), "{body}");
    assert!(body["message"].as_str().unwrap().contains("No space left"), "{body}");
    let health = http.call("GET", "/health", None, None);
    assert_eq!((health.status, health.json()["status"].as_str()), (200, Some("degraded")));
    let reason = health.json()["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("No space left"), "{reason}");
    let ready = http.call("GET", "/ready", None, None);
    assert_eq!((ready.status, ready.json()["error"].as_str()), (503, Some("journal_failed")));
    let sku = http.call("GET", "/v1/skus/1", None, None);
    assert_eq!((sku.status, sku.json()["reserved"].as_u64()), (200, Some(1)), "reads go on");
    server.shutdown().unwrap();
}

#[test]
fn a_broken_journal_makes_the_node_unhealthy_and_unready() {
    // Goal: a journal failure that is not an I/O error stops the node: `/health` answers 503
    // naming the stage, `/ready` 503 `node_failed`.
    let server = serve(Intake::Sequencer, 1, true);
    let mut http = Http::connect(server.http_addr().unwrap());
    common::create_sku(&mut http, 1, 10, 0, 60_000);
    let reserve = r#"{"request_id":"r-1","user":1,"sku":1,"qty":1}"#;
    assert_eq!(http.call("POST", "/v1/orders", Some(reserve), None).status, 503);
    let health = http.call("GET", "/health", None, None);
    assert_eq!(health.status, 503);
    let reason = health.json()["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("journaler") && reason.contains("not the next segment"), "{reason}");
    let ready = http.call("GET", "/ready", None, None);
    assert_eq!((ready.status, ready.json()["error"].as_str()), (503, Some("node_failed")));
    server.shutdown().unwrap();
}

#[test]
fn a_standby_is_live_but_not_ready_for_writes() {
    // Goal: a load balancer sends writes only to a ready node: a standby says why not.
    let server = serve(Intake::Replica, u64::MAX, false);
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
