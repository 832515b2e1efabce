//! The primary's side of replication over TCP: accepts a standby, authenticates it, decides
//! where its journal agrees with ours (`position`), then streams the journal's records from
//! there while another thread reads the standby's acknowledgements into the acknowledgement
//! policy (`policy`). Sockets and threads only: every decision is made by those modules.
//!
//! Threads: `rf-repl-listen` accepts; each handshake runs on a short-lived thread with a
//! deadline, `handshake_timeout_ms` after the connection was accepted for the whole handshake,
//! not for each read; at most `handshakes_max` at once (a flood of bad handshakes is closed
//! without touching the live stream, and a peer that sends a byte now and then holds its slot
//! no longer than one that sends nothing), one address holding at most half of them before it
//! proves the secret (`handshakes`: a peer at one address cannot keep a standby at another
//! out); `rf-repl-send` streams the journal
//! (`ringfence_journal::tail`) and sends heartbeats; `rf-repl-acks` reads acknowledgements. A
//! newly authenticated standby replaces the previous one (which is likely dead if it is
//! reconnecting).

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

use ringfence_core::{Epoch, Sequence};
use ringfence_journal::scan::{ReadOnlyDir, ReadSource};
use ringfence_journal::snapshot;
use ringfence_journal::tail::Tail;

use crate::auth;
use crate::control::{Control, log};
use crate::handshakes::{HandshakeSlot, Handshakes};
use crate::index::DirIndex;
use crate::message::{Message, Refuse, RefuseCode, SNAPSHOT_CHUNK_MAX};
use crate::position::JournalIndex;
use crate::session::{Outgoing, PrimarySession, PrimaryStep};
use crate::stream::{FrameReader, WireError, write_message, write_records, write_snapshot_chunk};

/// Bytes of records per `Records` message.
const RECORDS_BATCH_BYTES: usize = 256 << 10;

/// The streaming connection to the current standby.
struct Stream {
    socket: TcpStream,
}

/// Accepts standbys until `control` stops. It waits in `poll` for a connection or for
/// [`Control::stop`]'s wake-up, so an idle listener costs nothing.
pub(crate) fn listen(control: Arc<Control>, listener: TcpListener) -> io::Result<()> {
    const LISTENER: Token = Token(0);
    const STOP: Token = Token(1);
    // A backstop only: `stop` wakes the poll.
    const WAIT_MAX: Duration = Duration::from_secs(1);
    listener.set_nonblocking(true)?;
    let mut listener = mio::net::TcpListener::from_std(listener);
    let mut poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    control.set_listener_waker(mio::Waker::new(poll.registry(), STOP)?);
    let mut events = Events::with_capacity(4);
    // A handshake gives way to a new connection only once held a tenth of its time.
    let ripe_after = Duration::from_millis(control.config().handshake_timeout_ms / 10);
    let handshakes = Handshakes::new(control.config().handshakes_max, ripe_after);
    let current: Arc<Mutex<Option<Stream>>> = Arc::new(Mutex::new(None));
    while !control.stopping() {
        match poll.poll(&mut events, Some(WAIT_MAX)) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
        // Readiness is edge-triggered: every connection waiting is taken now.
        while !control.stopping() {
            let (socket, peer) = match listener.accept() {
                Ok((socket, peer)) => (TcpStream::from(std::os::fd::OwnedFd::from(socket)), peer),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    log(format_args!("replication: accept failed: {error}"));
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let Some(handshake) = admit(&control, &handshakes, socket, peer) else {
                continue;
            };
            let (control, current) = (Arc::clone(&control), Arc::clone(&current));
            let gave_way = handshake.slot.gave_way();
            let spawned =
                thread::Builder::new().name("rf-repl-handshake".into()).spawn(move || {
                    // One that gave way to a new connection was counted when it did.
                    if let Err(reason) = serve_standby(&control, handshake, &current)
                        && !gave_way.load(Ordering::Acquire)
                    {
                        control.count_refused(&format!("standby {peer}: {reason}"));
                    }
                });
            if let Err(error) = spawned {
                log(format_args!("replication: cannot start a handshake thread: {error}"));
            }
        }
    }
    if let Some(stream) = current.lock().expect("never poisoned").take() {
        let _ = stream.socket.shutdown(Shutdown::Both);
    }
    Ok(())
}

/// The handshake of the connection `socket` just accepted from `peer`, in a slot of
/// `handshakes`; the handshake that gave way to it was closed, and is counted. `None` when the
/// connection is refused (no handshake may give way to it: every slot held by a peer that
/// proved the secret, or the one that would give way held too short a time) or cannot be
/// served, counted too.
fn admit(
    control: &Control,
    handshakes: &Arc<Handshakes>,
    socket: TcpStream,
    peer: SocketAddr,
) -> Option<Handshake> {
    // The handshake and the stream read and write with blocking calls and deadlines.
    let clone = socket.set_nonblocking(false).and_then(|()| socket.try_clone());
    let clone = match clone {
        Ok(clone) => clone,
        Err(error) => {
            control.count_refused(&format!("{peer}: {error}"));
            return None;
        }
    };
    // The handshake's time counts from here, not from when its thread starts.
    let accepted = Instant::now();
    let Some((slot, gave_way)) = handshakes.admit(peer, clone, accepted) else {
        control.count_refused(&format!("{peer}: too many handshakes at once"));
        return None;
    };
    if let Some(gave_way) = gave_way {
        control.count_refused(&format!(
            "{}: its handshake, unfinished after {} ms, gave way to a new connection from {peer}",
            gave_way.peer,
            gave_way.held.as_millis()
        ));
    }
    let timeout = Duration::from_millis(control.config().handshake_timeout_ms);
    Some(Handshake { socket, deadline: accepted + timeout, slot })
}

/// A connection just accepted, to be served by a handshake thread.
struct Handshake {
    socket: TcpStream,
    /// When the handshake must be over: `handshake_timeout_ms` after the accept.
    deadline: Instant,
    slot: HandshakeSlot,
}

/// Runs the handshake with a standby (`session::PrimarySession`) and whatever it leads to:
/// streaming, a snapshot transfer, or a refusal.
fn serve_standby(
    control: &Arc<Control>,
    handshake: Handshake,
    current: &Arc<Mutex<Option<Stream>>>,
) -> Result<(), String> {
    let Handshake { socket, deadline, slot } = handshake;
    let config = control.config();
    // Reads wait for the time left before the deadline (`read_handshake_message`). The
    // handshake's writes are a few hundred bytes in all, within any socket's send buffer, so
    // they do not wait on the peer; the timeout is a backstop.
    let timeout = Duration::from_millis(config.handshake_timeout_ms);
    socket.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    socket.set_nodelay(true).map_err(|e| e.to_string())?;
    let peer = socket.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string());
    let mut reader = FrameReader::new(socket.try_clone().map_err(|e| e.to_string())?);
    let mut writer = socket.try_clone().map_err(|e| e.to_string())?;
    let mut scratch = Vec::new();
    let mut session = PrimarySession::new(auth::nonce().map_err(|e| e.to_string())?);
    loop {
        let handshake = (&mut session, &mut writer, &mut scratch);
        let message = next_message(control, &mut reader, deadline, handshake)?;
        let journal_last = Sequence(control.stream_end(control.link().available()));
        // Only a join consults the journal. Opening the index lists the data directory, which
        // any join does, proven or not (bounded by the handshake slots); the records are read
        // only for a join whose proof checked out.
        let mut index: Box<dyn JournalIndex> = if matches!(message, Message::Join(_)) {
            Box::new(DirIndex::open(&config.data_dir, journal_last).map_err(|e| e.to_string())?)
        } else {
            Box::new(NoIndex)
        };
        let mut view = control.primary_view(&mut *index);
        // The index was opened where the journal ended then; the stage may have moved on.
        view.journal_last = journal_last;
        match session.on_message(&message, &mut view) {
            PrimaryStep::Reply(reply) => {
                write_message(&mut writer, &reply.message(), &mut scratch)
                    .map_err(|e| e.to_string())?;
            }
            PrimaryStep::Stream(start) => {
                // Streaming is not a handshake: the slot goes back for the next one (unless it
                // gave way to a new connection meanwhile: then the connection is closed).
                slot.prove()?;
                drop(slot);
                write_message(&mut writer, &Message::Start(start), &mut scratch)
                    .map_err(|e| e.to_string())?;
                log(format_args!(
                    "replication: standby {peer} joined, streaming from {} (journal at {})",
                    start.from_sequence, start.primary_last
                ));
                let stream = Streaming { socket, reader, session, peer };
                return start_stream(control, stream, start.from_sequence, current);
            }
            PrimaryStep::SendSnapshot => {
                // The transfer keeps its slot, and no new connection takes it from a standby
                // that proved the secret.
                slot.prove()?;
                return send_snapshot(control, &mut writer, &peer).inspect_err(|text| {
                    let refuse =
                        Message::Refuse(Refuse::new(RefuseCode::Internal, view.epoch, text));
                    let _ = write_message(&mut writer, &refuse, &mut scratch);
                });
            }
            PrimaryStep::Acknowledged(_) => {
                unreachable!("acknowledgements come only when streaming")
            }
            PrimaryStep::Close { last, reason, deposed_by } => {
                if let Some(newer) = deposed_by {
                    control.depose(newer, &format!("standby {peer}"));
                }
                let diverged = matches!(last, Some(Outgoing::Diverged(_)));
                if let Some(last) = last {
                    let _ = write_message(&mut writer, &last.message(), &mut scratch);
                }
                if diverged {
                    log(format_args!("replication: standby {peer}: {reason}"));
                    return Ok(());
                }
                return Err(reason);
            }
        }
    }
}

/// The handshake's next message, by `deadline`. A whole frame that is no message of this
/// version (a `Hello` of another version, say) is refused, the peer told why, before the
/// connection closes; a frame cut off by the deadline or too long is not: the peer is not
/// listening to frames, or not sending them.
fn next_message<'r>(
    control: &Control,
    reader: &'r mut FrameReader<TcpStream>,
    deadline: Instant,
    (session, writer, scratch): (&mut PrimarySession, &mut TcpStream, &mut Vec<u8>),
) -> Result<Message<'r>, String> {
    match reader.read_handshake_message(deadline) {
        Ok(message) => Ok(message),
        Err(WireError::Message(error)) => {
            let step = session.on_malformed(&error, control.epoch());
            let PrimaryStep::Close { last: Some(last), reason, .. } = step else {
                unreachable!("a malformed message is refused: {step:?}")
            };
            let _ = write_message(writer, &last.message(), scratch);
            Err(reason)
        }
        Err(error) => Err(error.to_string()),
    }
}

// What the node's memory check counts for a snapshot being sent: one buffer's worth.
const _: () = assert!(SNAPSHOT_CHUNK_MAX <= snapshot::SNAPSHOT_BUFFER_BYTES);

/// Sends the newest snapshot to a standby that asked for one: its records were retired.
fn send_snapshot(control: &Control, writer: &mut TcpStream, peer: &str) -> Result<(), String> {
    let config = control.config();
    let mut source = ReadOnlyDir::open(&config.data_dir).map_err(|e| e.to_string())?;
    let mut snapshot = SnapshotToSend::newest(&mut source)?;
    let (through, epoch, total) = (snapshot.through, snapshot.through_epoch, snapshot.len);
    let name = snapshot.name.clone();
    log(format_args!("replication: sending snapshot {name} ({total} bytes) to standby {peer}"));
    // The transfer may take a while: the standby reads as fast as it writes.
    let _ = writer.set_write_timeout(Some(Duration::from_secs(30)));
    snapshot.send_chunks(&mut |offset, chunk| {
        write_snapshot_chunk(writer, through, epoch, total, offset, chunk)
    })
}

/// The newest snapshot of a primary's data directory, read whole to be sent to a standby.
pub struct SnapshotToSend {
    /// The file's name.
    pub name: String,
    /// Every record up to this sequence is in it.
    pub through: Sequence,
    /// Record `through`'s epoch, for the standby's rejoining `Join`: from the journal, or,
    /// where the journal no longer holds the record, as the snapshot recorded it; 0 if neither
    /// knows it (a snapshot written before snapshots recorded it).
    pub through_epoch: Epoch,
    /// The file's length.
    pub len: u64,
    /// The file, opened: read a chunk at a time as it is sent, never whole.
    file: Box<dyn std::io::Read + Send>,
}

impl SnapshotToSend {
    /// Opens the newest snapshot in `source`. The file opened is sent whole even if
    /// retention removes its name meanwhile.
    pub fn newest<R: ReadSource>(source: &mut R) -> Result<SnapshotToSend, String> {
        let snapshots = snapshot::list(source).map_err(|e| e.to_string())?;
        let Some((through, name)) = snapshots.last().cloned() else {
            return Err("this primary has no snapshot to send".into());
        };
        let reading = |e: std::io::Error| format!("reading {name}: {e}");
        let file = source.open_file(&name).map_err(reading)?;
        let len = source.file_len(&name).map_err(reading)?;
        let head = source.read_head(&name, snapshot::SNAPSHOT_HEADER_LEN).map_err(reading)?;
        let journal = ringfence_journal::tail::epoch_at(source, through).ok().flatten();
        let recorded = || snapshot::through_in(&name, &head).ok().and_then(|(_, epoch)| epoch);
        let through_epoch = journal.or_else(recorded).unwrap_or(Epoch(0));
        Ok(SnapshotToSend { name, through, through_epoch, len, file })
    }

    /// Hands `send` the file in chunks of at most `SNAPSHOT_CHUNK_MAX` bytes, read one at a
    /// time, with their offsets: one `SnapshotChunk` frame each. Stops at `send`'s first
    /// error; fails where the file does not hold the `len` bytes it had when opened.
    pub fn send_chunks(
        &mut self,
        send: &mut dyn FnMut(u64, &[u8]) -> std::io::Result<()>,
    ) -> Result<(), String> {
        use std::io::Read as _;
        let mut chunk = vec![0_u8; SNAPSHOT_CHUNK_MAX];
        let mut offset = 0_u64;
        loop {
            let mut filled = 0;
            while filled < chunk.len() {
                match self.file.read(&mut chunk[filled..]) {
                    Ok(0) => break,
                    Ok(read) => filled += read,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("reading {}: {e}", self.name)),
                }
            }
            if filled == 0 {
                break;
            }
            if offset + filled as u64 > self.len {
                return Err(format!(
                    "{} grew past {} bytes while it was sent",
                    self.name, self.len
                ));
            }
            send(offset, &chunk[..filled]).map_err(|e| e.to_string())?;
            offset += filled as u64;
        }
        if offset != self.len {
            return Err(format!("{} ended at {offset} of its {} bytes", self.name, self.len));
        }
        Ok(())
    }
}

/// A connection that completed the handshake and streams.
struct Streaming {
    socket: TcpStream,
    reader: FrameReader<TcpStream>,
    session: PrimarySession,
    peer: String,
}

/// Replaces the current stream with this standby's, starts its sender, and reads its
/// acknowledgements until the stream ends.
fn start_stream(
    control: &Arc<Control>,
    stream: Streaming,
    from: Sequence,
    current: &Arc<Mutex<Option<Stream>>>,
) -> Result<(), String> {
    let Streaming { socket, reader, session, peer } = stream;
    let config = control.config();
    let id = control.on_connected(&peer);
    // Reads time out at the replication timeout; the policy decides what silence means.
    let timeout = Some(Duration::from_millis(config.timeout_ms.max(1)));
    socket.set_read_timeout(timeout).map_err(|e| e.to_string())?;
    socket.set_write_timeout(timeout).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let replaced = Stream { socket: socket.try_clone().map_err(|e| e.to_string())? };
    if let Some(old) = current.lock().expect("never poisoned").replace(replaced) {
        let _ = old.socket.shutdown(Shutdown::Both);
    }
    let session = Arc::new(Mutex::new(session));
    let sender = socket.try_clone().map_err(|e| e.to_string())?;
    let (send_control, send_stop, send_session) =
        (Arc::clone(control), Arc::clone(&stop), Arc::clone(&session));
    thread::Builder::new()
        .name("rf-repl-send".into())
        .spawn(move || {
            let start = (from, id);
            let sent = send_records(&send_control, sender, start, &send_session, &send_stop);
            if let Err(error) = sent
                && !send_stop.load(Ordering::Acquire)
            {
                log(format_args!("replication: streaming to the standby stopped: {error}"));
            }
            send_stop.store(true, Ordering::Release);
        })
        .map_err(|e| e.to_string())?;
    let why = read_acks(control, (reader, &socket, &peer), &session, &stop, id);
    stop.store(true, Ordering::Release);
    control.link().notify();
    let _ = socket.shutdown(Shutdown::Both);
    control.on_disconnected(id, why.as_deref().unwrap_or("standby disconnected"));
    Ok(())
}

/// Streams the journal from `from` to the standby until stopped or the socket fails, with a
/// heartbeat whenever the session says one is due.
fn send_records(
    control: &Control,
    mut socket: TcpStream,
    (from, stream): (Sequence, u64),
    session: &Mutex<PrimarySession>,
    stop: &AtomicBool,
) -> io::Result<()> {
    let config = control.config();
    let link = control.link();
    let source = ReadOnlyDir::open(&config.data_dir).map_err(io::Error::other)?;
    let mut tail = Tail::open(source, from).map_err(io::Error::other)?;
    let period_ms = config.heartbeat_ms.max(1);
    let mut records = Vec::with_capacity(RECORDS_BATCH_BYTES + 4096);
    let mut scratch = Vec::new();
    let _streaming = link.streaming();
    while !stop.load(Ordering::Acquire) && !control.stopping() {
        let seen = tail.next().0 - 1;
        let appended = link.wait_beyond(seen, Duration::from_millis(period_ms));
        let available = control.stream_end(appended);
        if available <= seen {
            if available < appended {
                // The journal failed: what follows its fence is never streamed, and the
                // wait above returns at once; heartbeats keep their period.
                thread::sleep(Duration::from_millis(period_ms));
            }
            heartbeat(control, &mut socket, session, Sequence(available), &mut scratch)?;
            continue;
        }
        records.clear();
        let first = tail.next();
        let count = tail
            .read(Sequence(available), &mut records, RECORDS_BATCH_BYTES)
            .map_err(io::Error::other)?;
        if count > 0 {
            let through = Sequence(tail.next().0 - 1);
            // Counted as sent before the bytes go: the standby can acknowledge them before
            // this thread would otherwise get to count them, and an acknowledgement above
            // what was counted is refused as a protocol error. The session may have ended
            // meanwhile (the acknowledgement thread closed it): then the stream stops.
            {
                let mut session = lock(session);
                if !session.is_streaming() {
                    return Ok(());
                }
                session.on_sent(through, control.now_ms());
            }
            control.on_sent(stream, through);
            write_records(&mut socket, first, count, &records)?;
            // Streaming leaves no idle moment for a heartbeat; one goes out anyway when the
            // answers start waiting for this standby, which makes it a promotable copy.
            heartbeat(control, &mut socket, session, through, &mut scratch)?;
        }
    }
    Ok(())
}

/// Sends the heartbeat the session says is due, if any.
fn heartbeat(
    control: &Control,
    socket: &mut TcpStream,
    session: &Mutex<PrimarySession>,
    last: Sequence,
    scratch: &mut Vec<u8>,
) -> io::Result<()> {
    let period_ms = control.config().heartbeat_ms.max(1);
    let (now_ms, position) = (control.now_ms(), (control.epoch(), last));
    let due = lock(session).heartbeat_due(now_ms, period_ms, position, control.answering());
    match due {
        Some(beat) => write_message(socket, &Message::Heartbeat(beat), scratch),
        None => Ok(()),
    }
}

fn lock(session: &Mutex<PrimarySession>) -> std::sync::MutexGuard<'_, PrimarySession> {
    session.lock().expect("the session lock is never poisoned")
}

/// Reads acknowledgements into the policy until the stream stops, fails, goes silent, or the
/// session refuses one. Returns why it ended, for the log; `None` when it was stopped here.
fn read_acks(
    control: &Control,
    (mut reader, socket, peer): (FrameReader<TcpStream>, &TcpStream, &str),
    session: &Mutex<PrimarySession>,
    stop: &AtomicBool,
    id: u64,
) -> Option<String> {
    let mut journal = NoIndex;
    let mut acknowledged = false;
    while !stop.load(Ordering::Acquire) && !control.stopping() {
        let message = match reader.read_message() {
            Ok(message) => message,
            Err(error) => {
                let timeout_ms = control.config().timeout_ms.max(1);
                let ended = || stream_ended(&error, (peer, acknowledged), timeout_ms);
                return (!stop.load(Ordering::Acquire)).then(ended);
            }
        };
        let mut view = control.primary_view(&mut journal);
        match lock(session).on_message(&message, &mut view) {
            PrimaryStep::Acknowledged(ack) => {
                acknowledged = true;
                control.on_ack(id, &ack);
            }
            PrimaryStep::Close { last, reason, deposed_by } => {
                if let Some(newer) = deposed_by {
                    control.depose(newer, "the standby");
                }
                if let Some(last) = last {
                    let _ = write_message(&mut &*socket, &last.message(), &mut Vec::new());
                }
                return Some(format!("the standby stream ends: {reason}"));
            }
            other => unreachable!("a streaming session answers {other:?}"),
        }
    }
    None
}

/// Why a standby's stream ended with `error`, for the log. A standby `peer` that closed it
/// before acknowledging anything (`acknowledged` false) is, as a rule, one that was starting:
/// it joins to check its journal against this one, closes once answered, and joins again to
/// follow. That expected step is said as such, not as a connection lost.
fn stream_ended(error: &WireError, (peer, acknowledged): (&str, bool), timeout_ms: u64) -> String {
    if error.is_timeout() {
        format!(
            "standby connection ended: the standby sent nothing for {timeout_ms} ms (the \
             replication timeout)"
        )
    } else if matches!(error, WireError::Closed) && !acknowledged {
        format!(
            "standby {peer} closed the connection before acknowledging anything, as a starting \
             standby does once it has checked its journal against this one (if it repeats, \
             look at the standby)"
        )
    } else {
        format!("standby connection ended: {error}")
    }
}

/// The journal for every message but a join: never asked (only a join consults it).
struct NoIndex;

impl JournalIndex for NoIndex {
    fn first(&mut self) -> Option<Sequence> {
        unreachable!("only a join consults the journal")
    }
    fn last(&mut self) -> Option<Sequence> {
        unreachable!("only a join consults the journal")
    }
    fn epoch_at(&mut self, _: Sequence) -> Option<Epoch> {
        unreachable!("only a join consults the journal")
    }
    fn last_at_or_below_epoch(&mut self, _: Epoch) -> Option<Sequence> {
        unreachable!("only a join consults the journal")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_that_timed_out_is_logged_as_a_silent_standby() {
        // Goal: the acknowledgement reader's read timeout is the replication timeout; when it
        // passes, the log says the standby was silent that long, whichever of the two errors
        // the system gave, and any other failure keeps its own words.
        for kind in [io::ErrorKind::WouldBlock, io::ErrorKind::TimedOut] {
            let why = stream_ended(&WireError::Io(kind.into()), ("b", true), 2_000);
            assert_eq!(
                why,
                "standby connection ended: the standby sent nothing for 2000 ms (the \
                 replication timeout)"
            );
        }
        let reset = WireError::Io(io::ErrorKind::ConnectionReset.into());
        let said = stream_ended(&reset, ("b", false), 2_000);
        assert_eq!(said, format!("standby connection ended: {reset}"));
        let closed = stream_ended(&WireError::Closed, ("b", true), 2_000);
        assert_eq!(closed, "standby connection ended: the peer closed the connection");
    }

    #[test]
    fn a_standby_that_closes_before_acknowledging_is_said_to_have_checked_its_journal() {
        // Goal: a standby starting up joins, reads the answer and closes, to check its journal
        // against this one, before it joins to follow: that close is said as the expected
        // step it is, not as a connection that ended. A close after an acknowledgement, or a
        // close part way through a frame, is still a connection that ended.
        let checked = stream_ended(&WireError::Closed, ("127.0.0.1:5", false), 2_000);
        assert_eq!(
            checked,
            "standby 127.0.0.1:5 closed the connection before acknowledging anything, as a \
             starting standby does once it has checked its journal against this one (if it \
             repeats, look at the standby)"
        );
        let cut = WireError::ClosedMidFrame { have: 3, need: 4 };
        let said = stream_ended(&cut, ("127.0.0.1:5", false), 2_000);
        assert!(said.starts_with("standby connection ended: "), "{said}");
    }
}
