//! A fake primary for a standby's start: on the production `PrimarySession`, it answers the
//! standby's join from a list of epochs, and a fetch with a snapshot the test chooses; and
//! the standby process, run until its node is up.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ringfence_core::{Epoch, Sequence};
use ringfence_replicator::message::Message;
use ringfence_replicator::position::EpochList;
use ringfence_replicator::session::{PrimarySession, PrimaryStep};
use ringfence_replicator::stream::{FrameReader, write_message, write_snapshot_chunk};

use super::{Logged, fake_primary_step};

/// What the fake primary sends for a fetch: the snapshot's announced sequence, epoch and
/// bytes, and the length its chunks announce when not the bytes'.
pub struct Offer {
    pub through: Sequence,
    pub through_epoch: Epoch,
    pub bytes: Vec<u8>,
    pub announced_len: Option<u64>,
}

impl Offer {
    /// `bytes`, announced as a snapshot through `through` of `through_epoch`, whole.
    pub fn of(through: Sequence, through_epoch: Epoch, bytes: Vec<u8>) -> Offer {
        Offer { through, through_epoch, bytes, announced_len: None }
    }
}

/// The epochs the fake primary leads in: for joins, and for fetches (another node at the same
/// address, where they differ).
#[derive(Clone, Copy)]
pub struct Leading {
    pub join: u64,
    pub fetch: u64,
}

impl Leading {
    /// One primary, in `epoch`.
    pub fn in_epoch(epoch: u64) -> Leading {
        Leading { join: epoch, fetch: epoch }
    }
}

/// A fake primary on `listener`, `leading` in its epochs, whose journal is `journal`: answers
/// each join as a primary would (refusing one that needs retired records: `needs_snapshot`),
/// each fetch with `offer` (unless a standby's promise supersedes it), and closes every other
/// connection unanswered. Runs until `stop`; what it did with each connection.
pub fn serve(
    listener: TcpListener,
    (leading, journal): (Leading, EpochList),
    offer: Offer,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<String>> {
    listener.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        let mut served = Vec::new();
        while !stop.load(Ordering::Acquire) {
            let Ok((socket, _)) = listener.accept() else {
                thread::sleep(Duration::from_millis(5));
                continue;
            };
            socket.set_nonblocking(false).unwrap();
            socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut reader = FrameReader::new(socket.try_clone().unwrap());
            let mut session = PrimarySession::new([5; 32]);
            let mut journal = journal.clone();
            loop {
                let Ok(message) = reader.read_message() else {
                    served.push("closed".to_owned());
                    break;
                };
                let epoch = match message {
                    Message::FetchSnapshot(_) => leading.fetch,
                    _ => leading.join,
                };
                match fake_primary_step(&mut session, &message, epoch, &mut journal) {
                    PrimaryStep::Reply(reply) => {
                        write_message(&mut &socket, &reply.message(), &mut Vec::new()).unwrap();
                    }
                    PrimaryStep::Close { last, reason, .. } => {
                        if let Some(last) = last {
                            let _ = write_message(&mut &socket, &last.message(), &mut Vec::new());
                        }
                        served.push(format!("refused: {reason}"));
                        break;
                    }
                    PrimaryStep::SendSnapshot => {
                        let total = offer.announced_len.unwrap_or(offer.bytes.len() as u64);
                        let mut offset = 0;
                        for chunk in offer.bytes.chunks(64 * 1024) {
                            let _ = write_snapshot_chunk(
                                &mut &socket,
                                offer.through,
                                offer.through_epoch,
                                total,
                                offset,
                                chunk,
                            );
                            offset += chunk.len() as u64;
                        }
                        served.push("snapshot sent".to_owned());
                        // The standby closes once it has the whole file.
                        let _ = reader.read_message();
                        break;
                    }
                    other => {
                        served.push(format!("dropped: {other:?}"));
                        break;
                    }
                }
            }
        }
        served
    })
}

/// Starts `dir` as a standby of the fake primary on `primary`, with `extra` arguments; the
/// process (it may exit at start).
pub fn standby_process(dir: &Path, secret: &Path, primary: SocketAddr, extra: &[&str]) -> Logged {
    let (primary, secret) = (primary.to_string(), secret.to_str().unwrap().to_owned());
    Logged::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_ringfence"))
            .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(["--role", "standby", "--primary", &primary, "--cluster-secret-file", &secret])
            .args(["--replication-listen", "127.0.0.1:0"])
            .args(extra)
            .env_remove("RINGFENCE_ADMIN_TOKEN"),
    )
}

/// Runs the standby until it logs a line containing one of `until` or exits; returns its
/// lines, then kills it.
pub fn run_standby_until(mut process: Logged, until: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut lines = Vec::new();
    loop {
        lines.extend(process.lines.try_iter());
        if lines.iter().any(|l| until.iter().any(|u| l.contains(u))) {
            break;
        }
        if process.child.try_wait().unwrap().is_some() {
            thread::sleep(Duration::from_millis(200));
            lines.extend(process.lines.try_iter());
            break;
        }
        assert!(Instant::now() < deadline, "the standby never got there: {lines:#?}");
        thread::sleep(Duration::from_millis(20));
    }
    let _ = process.child.kill();
    let _ = process.child.wait();
    lines
}
