//! A standby without etcd that its primary refuses for records it retired: at start it fetches
//! the primary's snapshot, and when that fetch fails it starts on its journal and retries;
//! refused again while it runs, it restarts itself in place (same pid), each restart in a row
//! after twice as long; a stop asked meanwhile stops it. The primary here is a fake that
//! refuses every join (its journal starts at record 10) and drops every snapshot fetch, as a
//! primary whose newest snapshot cannot be read would.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{CLUSTER_SECRET, HTTP_LISTENING, Serve, TempDir, fake_primary_step};
use ringfence_replicator::position::EpochList;
use ringfence_replicator::session::{PrimarySession, PrimaryStep};
use ringfence_replicator::stream::{FrameReader, write_message};

/// What the fake primary did with a connection.
#[derive(Debug, PartialEq, Eq)]
enum Served {
    /// A join, refused: the standby needs a snapshot.
    Refused,
    /// A snapshot fetch, closed unanswered.
    FetchDropped,
    /// The standby closed first.
    Closed,
}

/// Serves the next connection on `listener` as a primary in epoch 1 whose journal starts at
/// record 10. The answer to the standby's first message waits while `hold` is raised.
fn serve_one(listener: &TcpListener, hold: Option<&AtomicBool>) -> Served {
    let (socket, _) = listener.accept().unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut reader = FrameReader::new(socket.try_clone().unwrap());
    let mut session = PrimarySession::new([5; 32]);
    let mut journal = EpochList { first: 10, epochs: vec![1; 5] };
    loop {
        let Ok(message) = reader.read_message() else { return Served::Closed };
        while hold.is_some_and(|hold| hold.load(Ordering::Acquire)) {
            thread::sleep(Duration::from_millis(1));
        }
        match fake_primary_step(&mut session, &message, 1, &mut journal) {
            PrimaryStep::Reply(reply) => {
                write_message(&mut &socket, &reply.message(), &mut Vec::new()).unwrap();
            }
            PrimaryStep::Close { last: Some(last), reason, .. } => {
                assert!(reason.contains("retired"), "{reason}");
                let _ = write_message(&mut &socket, &last.message(), &mut Vec::new());
                return Served::Refused;
            }
            PrimaryStep::SendSnapshot => return Served::FetchDropped,
            other => panic!("the standby's session went elsewhere: {other:?}"),
        }
    }
}

fn standby(dir: &Path, secret: &Path, primary: SocketAddr) -> Serve {
    let (primary, secret) = (primary.to_string(), secret.to_str().unwrap().to_owned());
    let args = ["--role", "standby", "--primary", &primary, "--cluster-secret-file", &secret];
    Serve::start_with(dir, &[&args[..], &["--replication-listen", "127.0.0.1:0"]].concat())
}

/// A standby of a fake primary on `listener`, past its start: its check refused, its fetch
/// dropped, started on its empty journal.
fn started_on_its_journal(root: &TempDir, listener: &TcpListener) -> Serve {
    let secret = root.path().join("secret");
    std::fs::write(&secret, CLUSTER_SECRET).unwrap();
    let (dir, primary) = (root.path().join("b"), listener.local_addr().unwrap());
    let starting = thread::spawn(move || standby(&dir, &secret, primary));
    assert_eq!(serve_one(listener, None), Served::Refused, "the start's check");
    assert_eq!(serve_one(listener, None), Served::FetchDropped, "the start's fetch");
    let node = starting.join().unwrap();
    let line = node.wait_for_log("starting as a standby on this journal", Duration::from_secs(10));
    assert!(line.contains("fetching a snapshot from the primary"), "{line}");
    let (_, view) = node.call("GET", "/v1/node", "", false);
    assert_eq!(view["last_sequence"], 0, "{view}");
    node
}

#[test]
fn a_standby_whose_fetch_keeps_failing_restarts_itself_each_time_after_twice_as_long() {
    // Goal: a fetch that fails at start leaves the node running on its journal, not exited;
    // its follower, refused, restarts the node in place; restarts in a row back off (1 s,
    // 2 s, ...), so a fetch that keeps failing is retried, not looped on.
    let root = TempDir::new("rejoin-backoff");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut node = started_on_its_journal(&root, &listener);
    let pid = node.pid();
    let mut holds = Vec::new();
    // When the run before started, and how long it was to wait before restarting.
    let mut run: (Instant, u64) = (Instant::now(), 0);
    for _ in 0..3 {
        // The follower's join, refused: the node restarts, and its start fetches again.
        assert_eq!(serve_one(&listener, None), Served::Refused, "the follower's join");
        let restart = node.next_log("restarting to rejoin the primary", Duration::from_secs(60));
        let (started, hold) = run;
        assert!(started.elapsed() >= Duration::from_secs(hold), "restarted within its hold");
        assert!(restart.contains("retired"), "{restart}");
        let hold = restart.split("no sooner than ").nth(1).expect("the hold is logged");
        holds.push(hold.split(' ').next().unwrap().parse::<u64>().unwrap());
        assert_eq!(serve_one(&listener, None), Served::Refused, "the start's check");
        assert_eq!(serve_one(&listener, None), Served::FetchDropped, "the start's fetch");
        node.next_log("starting as a standby on this journal", Duration::from_secs(30));
        run = (Instant::now(), *holds.last().unwrap());
        node.next_log(HTTP_LISTENING, Duration::from_secs(30));
    }
    assert_eq!(holds, [1, 2, 4], "each restart in a row waits twice as long");
    assert_eq!(node.pid(), pid, "the same process all along");
    assert!(node.process.child.try_wait().unwrap().is_none(), "the node runs on");
}

#[test]
fn a_standby_refused_while_it_stops_stops_rather_than_restart() {
    // Goal: a refusal that comes while the node stops (SIGTERM) does not restart it: the
    // stop wins, and the process exits.
    let root = TempDir::new("rejoin-stop");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut node = started_on_its_journal(&root, &listener);
    // The follower's join, answered only once the node was told to stop.
    let hold = Arc::new(AtomicBool::new(true));
    let answering = {
        let hold = Arc::clone(&hold);
        thread::spawn(move || serve_one(&listener, Some(&hold)))
    };
    thread::sleep(Duration::from_millis(300));
    let pid = node.pid().to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status();
    assert!(status.unwrap().success());
    node.next_log("signal 15: stopping", Duration::from_secs(10));
    hold.store(false, Ordering::Release);
    assert_eq!(answering.join().unwrap(), Served::Refused);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    let exited = loop {
        lines.extend(node.process.lines.try_iter());
        if let Some(status) = node.process.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after the stop: {lines:#?}");
        thread::sleep(Duration::from_millis(20));
    };
    lines.extend(node.process.lines.try_iter());
    assert!(!lines.iter().any(|l| l.contains("restarting to rejoin")), "{lines:#?}");
    assert!(exited.success(), "{exited:?}: {lines:#?}");
}
