//! Admin calls that wait on the witness, when they go wrong: a call that panics on the
//! `ringfence-admin` thread is answered as failed and leaves the thread serving, and a retried
//! promotion queued behind the promotion it retries gets the same answer.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Http, TOKEN};
use ringfence_core::Command;
use ringfence_ingress::wire::NodeInfo;
use ringfence_ingress::{AdminCall, Backend, BackendCompletion, NodeStatus, Refusal, ServerConfig};

const DEADLINE: Duration = Duration::from_secs(10);

/// A backend whose calls through "the witness" are carried out later:
/// - a switch to `async` panics on the admin thread (a broken invariant in the coordination
///   code, say);
/// - a switch to `sync` succeeds at once;
/// - a promotion refuses at once when the node is already primary (as
///   `Driver::switchover` does: "this node is already the primary"), else waits for the test's
///   release and makes the node primary in epoch 2.
struct Witness {
    primary: Arc<Mutex<bool>>,
    started: Arc<AtomicUsize>,
    release: Arc<Mutex<Receiver<()>>>,
}

impl Backend for Witness {
    fn try_submit(&mut self, _command: Command, _token: u64) -> Result<(), Refusal> {
        Err(Refusal::Busy)
    }

    fn poll(&mut self) -> Option<BackendCompletion> {
        None
    }

    fn status(&self) -> NodeStatus {
        let primary = *self.primary.lock().unwrap();
        let info = NodeInfo { primary, epoch: if primary { 2 } else { 1 }, ..NodeInfo::default() };
        NodeStatus { info, ..NodeStatus::default() }
    }

    fn promote(&mut self, _force: bool) -> AdminCall<u64> {
        let (primary, started, release) =
            (Arc::clone(&self.primary), Arc::clone(&self.started), Arc::clone(&self.release));
        AdminCall::Later(Box::new(move || {
            started.fetch_add(1, Ordering::SeqCst);
            if *primary.lock().unwrap() {
                return Err("this node is already the primary".into());
            }
            release.lock().unwrap().recv_timeout(DEADLINE).expect("released");
            *primary.lock().unwrap() = true;
            Ok(2)
        }))
    }

    fn set_replication_mode(&mut self, mode: &str) -> AdminCall<()> {
        let started = Arc::clone(&self.started);
        let panics = mode == "async";
        AdminCall::Later(Box::new(move || {
            started.fetch_add(1, Ordering::SeqCst);
            if panics {
                panic!("an assertion failed on the admin thread");
            }
            Ok(())
        }))
    }
}

struct Setup {
    server: ringfence_ingress::ServerHandle,
    started: Arc<AtomicUsize>,
    release: Sender<()>,
}

impl Setup {
    fn start(drain_timeout_ms: u64) -> Setup {
        let started = Arc::new(AtomicUsize::new(0));
        let (release, released) = mpsc::channel();
        let backend = Witness {
            primary: Arc::new(Mutex::new(false)),
            started: Arc::clone(&started),
            release: Arc::new(Mutex::new(released)),
        };
        let config = ServerConfig {
            listen: None,
            admin_token: Some(TOKEN.into()),
            drain_timeout_ms,
            ..ServerConfig::loopback()
        };
        let server = ringfence_ingress::start(config, move |_| Ok(backend)).unwrap();
        Setup { server, started, release }
    }

    fn http(&self) -> Http {
        Http::connect(self.server.http_addr().unwrap())
    }

    fn wait_started(&self, count: usize) {
        let deadline = Instant::now() + DEADLINE;
        while self.started.load(Ordering::SeqCst) < count {
            assert!(Instant::now() < deadline, "{count} admin calls never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Let a panic, if any, unwind and the thread end.
        std::thread::sleep(Duration::from_millis(200));
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
fn a_call_that_panics_on_the_admin_thread_is_still_answered() {
    // Goal: the operator whose call panicked on the admin thread gets an answer (an error),
    // not a connection left waiting forever on a slot nobody will ever fill.
    let setup = Setup::start(1_000);
    let mut operator = setup.http();
    operator.stream().set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    operator.send(&switch("async"));
    setup.wait_started(1);
    let answer = operator.read_response();
    assert!(answer.is_some(), "no answer within 3 s to the call that panicked on the admin thread");
    setup.server.shutdown().unwrap();
}

#[test]
fn after_a_call_panicked_on_the_admin_thread_the_next_one_is_carried_out() {
    // Goal: one call that panicked does not stop every later witness call of this process.
    let setup = Setup::start(1_000);
    let mut first = setup.http();
    first.send(&switch("async"));
    setup.wait_started(1);
    let mut second = setup.http();
    second.stream().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let answer =
        second.call("POST", "/v1/admin/replication", Some(r#"{"mode":"sync"}"#), Some(TOKEN));
    assert_eq!(
        answer.status,
        200,
        "a later mode switch is refused: {}",
        String::from_utf8_lossy(&answer.body)
    );
    setup.server.shutdown().unwrap();
}

#[test]
fn a_shutdown_after_a_call_panicked_on_the_admin_thread_is_not_held_to_the_drain_timeout() {
    // Goal: with nothing in flight and every connection gone, a stop is prompt, whatever became
    // of an admin call that panicked earlier.
    let setup = Setup::start(60_000);
    let mut first = setup.http();
    first.send(&switch("async"));
    setup.wait_started(1);
    drop(first);
    std::thread::sleep(Duration::from_millis(200));
    let began = Instant::now();
    setup.server.shutdown().unwrap();
    let took = began.elapsed();
    assert!(took < Duration::from_secs(2), "the shutdown took {took:?} (drain_timeout_ms 60000)");
}

#[test]
fn a_retried_promotion_queued_behind_the_promotion_it_retries_gets_the_same_answer() {
    // Goal: an operator whose promotion (request id `failover-1`) is still under way retries
    // it with the same id on a new connection (its first client gave up). The promotion ends
    // and makes the node primary; the retry is answered as a retry: 200 with the same epoch
    // ("A retry with the request_id of the promotion this server made answers 200 again").
    let setup = Setup::start(1_000);
    let mut first = setup.http();
    first.send(&promote("failover-1"));
    setup.wait_started(1);
    let mut retry = setup.http();
    retry.send(&promote("failover-1"));
    std::thread::sleep(Duration::from_millis(200));

    setup.release.send(()).unwrap();
    let promoted = first.read_response().expect("the promotion is answered");
    assert_eq!(promoted.status, 200);
    assert_eq!(promoted.json()["epoch"], 2);
    let retried = retry.read_response().expect("the retry is answered");
    assert_eq!(
        retried.status,
        200,
        "the retry of the promotion that succeeded: {}",
        String::from_utf8_lossy(&retried.body)
    );
    setup.server.shutdown().unwrap();
}
