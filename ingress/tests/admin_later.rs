//! Admin calls that wait on the witness (a switchover, a mode switch through etcd) are carried
//! out off the event loop's thread: the node serves everyone meanwhile, each call is answered
//! in its own HTTP slot when it ends, and only a few may wait at once.

mod common;

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Http, TOKEN};
use ringfence_core::Command;
use ringfence_ingress::wire::NodeInfo;
use ringfence_ingress::{AdminCall, Backend, BackendCompletion, NodeStatus, Refusal, ServerConfig};

/// How long a condition may take to come true on a busy machine before the test calls it a
/// hang.
const DEADLINE: Duration = Duration::from_secs(20);

/// What the witness-backed calls have seen.
#[derive(Default)]
struct Calls {
    /// Calls whose work has started on the admin thread.
    started: usize,
    /// Calls whose work has ended.
    ended: usize,
    /// The mode each finished switch set.
    modes: Vec<String>,
    /// Set by a finished promotion.
    primary: bool,
}

/// A backend whose admin calls wait, as calls through the witness do, until the test releases
/// them one by one.
struct Witness {
    calls: Arc<Mutex<Calls>>,
    release: Arc<Mutex<Receiver<()>>>,
}

impl Witness {
    /// Work that counts itself started, waits for a release, then records `finish`.
    fn waiting<T: Send + 'static>(
        &self,
        finish: impl FnOnce(&mut Calls) -> T + Send + 'static,
    ) -> AdminCall<T> {
        let (calls, release) = (Arc::clone(&self.calls), Arc::clone(&self.release));
        AdminCall::Later(Box::new(move || {
            calls.lock().unwrap().started += 1;
            release.lock().unwrap().recv_timeout(DEADLINE).expect("the test releases the call");
            let mut calls = calls.lock().unwrap();
            calls.ended += 1;
            Ok(finish(&mut calls))
        }))
    }
}

impl Backend for Witness {
    fn try_submit(&mut self, _command: Command, _token: u64) -> Result<(), Refusal> {
        Err(Refusal::Busy)
    }

    fn poll(&mut self) -> Option<BackendCompletion> {
        None
    }

    fn status(&self) -> NodeStatus {
        let primary = self.calls.lock().unwrap().primary;
        let info = NodeInfo { primary, epoch: if primary { 2 } else { 1 }, ..NodeInfo::default() };
        NodeStatus { info, ..NodeStatus::default() }
    }

    fn promote(&mut self, _force: bool) -> AdminCall<u64> {
        self.waiting(|calls| {
            calls.primary = true;
            2
        })
    }

    fn set_replication_mode(&mut self, mode: &str) -> AdminCall<()> {
        let mode = mode.to_owned();
        self.waiting(move |calls| calls.modes.push(mode))
    }
}

struct Setup {
    server: ringfence_ingress::ServerHandle,
    calls: Arc<Mutex<Calls>>,
    release: Sender<()>,
}

impl Setup {
    fn start() -> Setup {
        let calls = Arc::new(Mutex::new(Calls::default()));
        let (release, released) = mpsc::channel();
        let backend =
            Witness { calls: Arc::clone(&calls), release: Arc::new(Mutex::new(released)) };
        let config = ServerConfig {
            listen: None,
            admin_token: Some(TOKEN.into()),
            ..ServerConfig::loopback()
        };
        let server = ringfence_ingress::start(config, move |_| Ok(backend)).unwrap();
        Setup { server, calls, release }
    }

    fn http(&self) -> Http {
        Http::connect(self.server.http_addr().unwrap())
    }

    /// Waits until `count` calls have started on the admin thread.
    fn wait_started(&self, count: usize) {
        let deadline = Instant::now() + DEADLINE;
        while self.calls.lock().unwrap().started < count {
            assert!(Instant::now() < deadline, "{count} admin calls never started");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn switch(mode: &str) -> Vec<u8> {
    let body = format!(r#"{{"mode":"{mode}"}}"#);
    Http::request_bytes("POST", "/v1/admin/replication", Some(&body), Some(TOKEN))
}

fn promote(request_id: &str) -> Vec<u8> {
    let body = format!(r#"{{"request_id":"{request_id}"}}"#);
    Http::request_bytes("POST", "/v1/admin/promote", Some(&body), Some(TOKEN))
}

#[test]
fn a_mode_switch_waiting_on_the_witness_leaves_the_node_serving() {
    // Goal: while a mode switch waits on the witness, other clients are served at once; the
    // switch is answered when it ends, and what its connection asked after it comes after it.
    let setup = Setup::start();
    let mut operator = setup.http();
    operator.send(&switch("async"));
    operator.send(&Http::request_bytes("GET", "/health", None, None));
    setup.wait_started(1);

    let mut buyer = setup.http();
    buyer.stream().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for _ in 0..3 {
        let health = buyer.call("GET", "/health", None, None);
        assert_eq!(health.status, 200, "the event loop serves while the call waits");
    }
    assert_eq!(setup.calls.lock().unwrap().ended, 0, "the switch is still waiting");

    setup.release.send(()).unwrap();
    let switched = operator.read_response().expect("the switch is answered once it ends");
    assert_eq!(switched.status, 200);
    assert_eq!(switched.json()["mode"], "async");
    let after = operator.read_response().expect("the request behind the switch is answered");
    assert_eq!(after.status, 200);
    assert_eq!(after.json()["status"], "ok");
    assert_eq!(setup.calls.lock().unwrap().modes, ["async"]);
    setup.server.shutdown().unwrap();
}

#[test]
fn only_a_few_admin_calls_wait_at_once_and_each_gets_its_own_answer() {
    // Goal: beyond the calls already waiting, one more is refused at once and nothing is done;
    // those waiting are carried out in the order asked and each answered in its own slot.
    let setup = Setup::start();
    let modes = ["async", "sync", "async", "sync"];
    let mut operator = setup.http();
    for mode in modes {
        operator.send(&switch(mode));
    }
    // None of the four can end before the test releases it, so these two find no room.
    operator.send(&promote("p-1"));
    operator.send(&switch("async"));
    setup.wait_started(1);
    let mut buyer = setup.http();
    assert_eq!(buyer.call("GET", "/health", None, None).status, 200);

    for _ in modes {
        setup.release.send(()).unwrap();
    }
    for mode in modes {
        let answer = operator.read_response().expect("each waiting call is answered");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json()["mode"], mode);
    }
    let refused = operator.read_response().expect("the promotion beyond the room is answered");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"], "promotion_failed");
    let message = refused.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("nothing was done"), "{message}");
    let refused = operator.read_response().expect("the switch beyond the room is answered");
    assert_eq!(refused.status, 409);
    assert_eq!(refused.json()["error"], "mode_refused");
    let calls = setup.calls.lock().unwrap();
    assert_eq!(calls.modes, modes, "carried out in order, once each");
    assert!(!calls.primary, "the refused promotion did nothing");
    drop(calls);
    setup.server.shutdown().unwrap();
}

#[test]
fn a_promotion_through_the_witness_is_answered_when_it_ends_and_a_retry_gets_the_same() {
    // Goal: a promotion that waits is answered with its epoch when it ends; its retry with the
    // same request id is answered 200 again without a second promotion, another is 409.
    let setup = Setup::start();
    let mut operator = setup.http();
    operator.send(&promote("failover-1"));
    setup.wait_started(1);
    setup.release.send(()).unwrap();
    let promoted = operator.read_response().expect("the promotion is answered");
    assert_eq!(promoted.status, 200);
    assert_eq!(promoted.json()["epoch"], 2);

    operator.send(&promote("failover-1"));
    let retried = operator.read_response().unwrap();
    assert_eq!(retried.status, 200, "a retry with the same id gets the same answer");
    assert_eq!(retried.json()["epoch"], 2);
    operator.send(&promote("failover-2"));
    assert_eq!(operator.read_response().unwrap().status, 409, "a primary is not promoted");
    assert_eq!(setup.calls.lock().unwrap().started, 1, "promoted once");
    setup.server.shutdown().unwrap();
}

#[test]
fn a_call_whose_connection_closed_is_carried_out_and_nobody_else_is_answered_by_it() {
    // Goal: the client that asked may hang up while its call waits; the call still ends, and
    // its answer goes to nobody, not to a connection that took the same slot meanwhile.
    let setup = Setup::start();
    let mut gone = setup.http();
    gone.send(&switch("async"));
    setup.wait_started(1);
    drop(gone);
    // A new connection likely takes the closed one's slot once the loop saw it close.
    std::thread::sleep(Duration::from_millis(200));
    let mut next = setup.http();
    assert_eq!(next.call("GET", "/health", None, None).status, 200);
    setup.release.send(()).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while setup.calls.lock().unwrap().ended < 1 {
        assert!(Instant::now() < deadline, "the call never ended");
        std::thread::sleep(Duration::from_millis(5));
    }
    let health = next.call("GET", "/health", None, None);
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok", "the switch's answer went to nobody");
    assert_eq!(setup.calls.lock().unwrap().modes, ["async"], "carried out all the same");
    setup.server.shutdown().unwrap();
}
