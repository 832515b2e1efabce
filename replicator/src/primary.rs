//! The primary's side of replication over TCP: accepts a standby, authenticates it, decides
//! where its journal agrees with ours (`position`), then streams the journal's records from
//! there while another thread reads the standby's acknowledgements into the acknowledgement
//! policy (`policy`). Sockets and threads only: every decision is made by those modules.
//!
//! Threads: `rf-repl-listen` accepts; each handshake runs on a short-lived thread with a
//! deadline, at most `handshakes_max` at once (a flood of bad handshakes is closed without
//! touching the live stream); `rf-repl-send` streams the journal (`ringfence_journal::tail`)
//! and sends heartbeats; `rf-repl-acks` reads acknowledgements. A newly authenticated standby
//! replaces the previous one (which is likely dead if it is reconnecting).

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use ringfence_core::{Epoch, Sequence};
use ringfence_journal::scan::{ReadOnlyDir, ReadSource as _};
use ringfence_journal::snapshot;
use ringfence_journal::tail::Tail;

use crate::auth;
use crate::control::{Control, log};
use crate::index::DirIndex;
use crate::message::{
    Challenge, Diverged, Heartbeat, Message, Refuse, RefuseCode, SNAPSHOT_CHUNK_MAX, Start,
};
use crate::position::{JoinDecision, StandbyPosition, decide};
use crate::stream::{FrameReader, write_message, write_records, write_snapshot_chunk};

/// Bytes of records per `Records` message.
const RECORDS_BATCH_BYTES: usize = 256 << 10;

/// The streaming connection to the current standby.
struct Stream {
    socket: TcpStream,
}

/// Accepts standbys until `control` stops.
pub(crate) fn listen(control: Arc<Control>, listener: TcpListener) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let busy = Arc::new(AtomicUsize::new(0));
    let current: Arc<Mutex<Option<Stream>>> = Arc::new(Mutex::new(None));
    while !control.stopping() {
        let (socket, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(error) => {
                log(format_args!("replication: accept failed: {error}"));
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if busy.load(Ordering::Acquire) >= control.config().handshakes_max {
            control.count_refused(&format!("{peer}: too many handshakes at once"));
            continue;
        }
        busy.fetch_add(1, Ordering::AcqRel);
        let (control, busy, current) =
            (Arc::clone(&control), Arc::clone(&busy), Arc::clone(&current));
        let spawned = thread::Builder::new().name("rf-repl-handshake".into()).spawn(move || {
            if let Err(reason) = serve_standby(&control, socket, &current) {
                control.count_refused(&format!("standby {peer}: {reason}"));
            }
            busy.fetch_sub(1, Ordering::AcqRel);
        });
        if let Err(error) = spawned {
            log(format_args!("replication: cannot start a handshake thread: {error}"));
        }
    }
    if let Some(stream) = current.lock().expect("never poisoned").take() {
        let _ = stream.socket.shutdown(Shutdown::Both);
    }
    Ok(())
}

/// Authenticates a standby, answers its join, and if it may stream, starts its threads.
fn serve_standby(
    control: &Arc<Control>,
    socket: TcpStream,
    current: &Arc<Mutex<Option<Stream>>>,
) -> Result<(), String> {
    let config = control.config();
    let deadline = Duration::from_millis(config.handshake_timeout_ms);
    socket.set_read_timeout(Some(deadline)).map_err(|e| e.to_string())?;
    socket.set_write_timeout(Some(deadline)).map_err(|e| e.to_string())?;
    socket.set_nodelay(true).map_err(|e| e.to_string())?;
    let peer = socket.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string());
    let mut reader = FrameReader::new(socket.try_clone().map_err(|e| e.to_string())?);
    let mut writer = socket.try_clone().map_err(|e| e.to_string())?;
    let mut scratch = Vec::new();
    let refuse = |writer: &mut TcpStream, scratch: &mut Vec<u8>, code, text: &str| {
        let epoch = control.epoch();
        let _ = write_message(writer, &Message::Refuse(Refuse::new(code, epoch, text)), scratch);
        Err(text.to_owned())
    };
    let hello = match reader.read_message().map_err(|e| e.to_string())? {
        Message::Hello(hello) => hello,
        other => {
            return refuse(&mut writer, &mut scratch, RefuseCode::BadMessage, &unexpected(&other));
        }
    };
    if hello.cluster != config.cluster {
        let text = format!("cluster `{}` is not this cluster `{}`", hello.cluster, config.cluster);
        return refuse(&mut writer, &mut scratch, RefuseCode::Cluster, &text);
    }
    let standby_nonce = hello.standby_nonce;
    let primary_nonce = auth::nonce().map_err(|e| e.to_string())?;
    let proof =
        auth::primary_proof(&config.secret, &config.cluster, &standby_nonce, &primary_nonce);
    let challenge = Message::Challenge(Challenge { primary_nonce, primary_proof: proof });
    write_message(&mut writer, &challenge, &mut scratch).map_err(|e| e.to_string())?;
    let (proof, join) = match reader.read_message().map_err(|e| e.to_string())? {
        Message::Join(join) => (join.standby_proof, Some(join)),
        Message::FetchSnapshot(fetch) => (fetch.standby_proof, None),
        other => {
            return refuse(&mut writer, &mut scratch, RefuseCode::BadMessage, &unexpected(&other));
        }
    };
    let (secret, cluster) = (&config.secret, &config.cluster);
    if auth::verify_standby(secret, cluster, &standby_nonce, &primary_nonce, &proof).is_err() {
        return refuse(&mut writer, &mut scratch, RefuseCode::Auth, "wrong cluster secret");
    }
    if !control.is_primary() {
        return refuse(&mut writer, &mut scratch, RefuseCode::NotPrimary, "this node is a standby");
    }
    let Some(join) = join else {
        return match send_snapshot(control, &mut writer, &peer) {
            Ok(()) => Ok(()),
            Err(text) => refuse(&mut writer, &mut scratch, RefuseCode::Internal, &text),
        };
    };
    let position = StandbyPosition {
        last_sequence: join.last_sequence,
        last_epoch: join.last_epoch,
        promised: join.promised_epoch,
    };
    let epoch = control.epoch();
    let mut index = DirIndex::open(&config.data_dir, Sequence(control.link().available()))
        .map_err(|e| e.to_string())?;
    let from = match decide(&mut index, epoch, position) {
        JoinDecision::Stream { from } => from,
        JoinDecision::Diverged { keep_through } => {
            log(format_args!(
                "replication: standby {peer} holds records after {keep_through} this journal \
                 does not ({}..={} from epoch {}): told to drop them and rejoin",
                keep_through.next(),
                position.last_sequence,
                position.last_epoch
            ));
            let message = Message::Diverged(Diverged { epoch, keep_through });
            let _ = write_message(&mut writer, &message, &mut scratch);
            return Ok(());
        }
        JoinDecision::NeedsSnapshot { first_held } => {
            let text = format!(
                "the standby needs records from {}, but this journal starts at {first_held} \
                 (older segments were retired after a snapshot): the standby fetches this \
                 node's newest snapshot when it starts",
                position.last_sequence.next()
            );
            return refuse(&mut writer, &mut scratch, RefuseCode::NeedsSnapshot, &text);
        }
        JoinDecision::Superseded { promised } => {
            control.depose(promised, &peer);
            let text = format!("this primary (epoch {epoch}) was superseded by epoch {promised}");
            return refuse(&mut writer, &mut scratch, RefuseCode::StaleEpoch, &text);
        }
    };
    let last = Sequence(control.link().available());
    let start = Message::Start(Start { epoch, from_sequence: from, primary_last: last });
    write_message(&mut writer, &start, &mut scratch).map_err(|e| e.to_string())?;
    log(format_args!(
        "replication: standby {peer} joined, streaming from {from} (journal at {last})"
    ));
    start_stream(control, socket, reader, from, current, &peer)
}

/// Sends the newest snapshot to a standby that asked for one: its records were retired.
fn send_snapshot(control: &Control, writer: &mut TcpStream, peer: &str) -> Result<(), String> {
    let config = control.config();
    let mut source = ReadOnlyDir::open(&config.data_dir).map_err(|e| e.to_string())?;
    let snapshots = snapshot::list(&source).map_err(|e| e.to_string())?;
    let Some((through, name)) = snapshots.last().cloned() else {
        return Err("this primary has no snapshot to send".into());
    };
    let bytes = source.read_file(&name).map_err(|e| format!("reading {name}: {e}"))?;
    let total = bytes.len() as u64;
    // Record `through`'s epoch, for the standby's rejoining `Join`; 0 if this journal no longer
    // holds it (then it starts after `through` and the join check does not need it).
    let through_epoch =
        ringfence_journal::tail::epoch_at(&mut source, through).ok().flatten().unwrap_or(Epoch(0));
    log(format_args!("replication: sending snapshot {name} ({total} bytes) to standby {peer}"));
    // The transfer may take a while: the standby reads as fast as it writes.
    let _ = writer.set_write_timeout(Some(Duration::from_secs(30)));
    for (index, chunk) in bytes.chunks(SNAPSHOT_CHUNK_MAX).enumerate() {
        let offset = (index * SNAPSHOT_CHUNK_MAX) as u64;
        write_snapshot_chunk(writer, through, through_epoch, total, offset, chunk)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn unexpected(message: &Message<'_>) -> String {
    format!("unexpected {} message during the handshake", message.kind())
}

/// Replaces the current stream with this standby's and starts its sender and ack reader.
fn start_stream(
    control: &Arc<Control>,
    socket: TcpStream,
    reader: FrameReader<TcpStream>,
    from: Sequence,
    current: &Arc<Mutex<Option<Stream>>>,
    peer: &str,
) -> Result<(), String> {
    let config = control.config();
    let id = control.on_connected(peer);
    // Reads time out at the replication timeout; the policy decides what silence means.
    socket
        .set_read_timeout(Some(Duration::from_millis(config.timeout_ms.max(1))))
        .map_err(|e| e.to_string())?;
    socket.set_write_timeout(Some(Duration::from_millis(config.timeout_ms.max(1)))).ok();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let mut current = current.lock().expect("never poisoned");
        if let Some(old) =
            current.replace(Stream { socket: socket.try_clone().map_err(|e| e.to_string())? })
        {
            let _ = old.socket.shutdown(Shutdown::Both);
        }
    }
    let sender = socket.try_clone().map_err(|e| e.to_string())?;
    let (send_control, send_stop) = (Arc::clone(control), Arc::clone(&stop));
    thread::Builder::new()
        .name("rf-repl-send".into())
        .spawn(move || {
            if let Err(error) = send_records(&send_control, sender, from, &send_stop) {
                if !send_stop.load(Ordering::Acquire) {
                    log(format_args!("replication: streaming to the standby stopped: {error}"));
                }
            }
            send_stop.store(true, Ordering::Release);
        })
        .map_err(|e| e.to_string())?;
    read_acks(control, reader, &stop, id);
    stop.store(true, Ordering::Release);
    control.link().notify();
    let _ = socket.shutdown(Shutdown::Both);
    control.on_disconnected(id);
    Ok(())
}

/// Streams the journal from `from` to the standby until stopped or the socket fails.
fn send_records(
    control: &Control,
    mut socket: TcpStream,
    from: Sequence,
    stop: &AtomicBool,
) -> io::Result<()> {
    let config = control.config();
    let link = control.link();
    let source = ReadOnlyDir::open(&config.data_dir).map_err(io::Error::other)?;
    let mut tail = Tail::open(source, from).map_err(io::Error::other)?;
    let heartbeat = Duration::from_millis(config.heartbeat_ms.max(1));
    let mut records = Vec::with_capacity(RECORDS_BATCH_BYTES + 4096);
    let mut scratch = Vec::new();
    link.set_streaming(true);
    while !stop.load(Ordering::Acquire) && !control.stopping() {
        let seen = tail.next().0 - 1;
        let available = link.wait_beyond(seen, heartbeat);
        if available <= seen {
            let beat = Heartbeat {
                epoch: control.epoch(),
                last_sequence: Sequence(available),
                sent_at_ms: control.now_ms(),
            };
            write_message(&mut socket, &Message::Heartbeat(beat), &mut scratch)?;
            continue;
        }
        records.clear();
        let first = tail.next();
        let count = tail
            .read(Sequence(available), &mut records, RECORDS_BATCH_BYTES)
            .map_err(io::Error::other)?;
        if count > 0 {
            write_records(&mut socket, first, count, &records)?;
        }
    }
    link.set_streaming(false);
    Ok(())
}

/// Reads acknowledgements into the policy until the stream stops, fails or goes silent.
fn read_acks(control: &Control, mut reader: FrameReader<TcpStream>, stop: &AtomicBool, id: u64) {
    while !stop.load(Ordering::Acquire) && !control.stopping() {
        match reader.read_message() {
            Ok(Message::Ack(ack)) => control.on_ack(id, ack.written, ack.durable, ack.echo_ms),
            Ok(Message::Refuse(refuse)) => {
                log(format_args!("replication: the standby refused the stream: {}", refuse.text));
                if refuse.code == RefuseCode::StaleEpoch {
                    control.depose(refuse.epoch, "the standby");
                }
                return;
            }
            Ok(other) => {
                log(format_args!("replication: unexpected {} from the standby", other.kind()));
                return;
            }
            Err(error) => {
                if !stop.load(Ordering::Acquire) {
                    log(format_args!("replication: standby connection ended: {error}"));
                }
                return;
            }
        }
    }
}
