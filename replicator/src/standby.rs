//! The standby's side of replication over TCP: connects to the primary, authenticates both
//! ways, says where its journal ends, then feeds every record it receives to its node
//! (`Session::try_submit_record`: checked, journaled byte for byte, applied) and acknowledges
//! what its journal holds durably. Reconnects with backoff when the link breaks.
//!
//! The fence: before it takes records of an epoch it stores that epoch as its promise, and it
//! refuses a primary whose epoch is below its promise. A promoted standby promised an epoch
//! above its old primary's, so the old primary never gets another acknowledgement from it.

use std::io::{self, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use ringfence_core::pipeline::{Node, Refused, Session, Unanswered, WakeHook};
use ringfence_core::{Epoch, Sequence};
use ringfence_journal::epoch::Epochs;
use ringfence_journal::error::JournalError;
use ringfence_journal::scan::{ReadOnlyDir, ReadSource};

use crate::auth;
use crate::config::ReplicationConfig;
use crate::control::{Control, EpochStore, log};
use crate::following::{Answer, Following, Next, Step, Turn};
use crate::index::DirIndex;
use crate::message::{Behind, Message, PROTOCOL_VERSION, RefuseCode, SnapshotChunk};
use crate::position::{JournalIndex, StandbyPosition};
use crate::session::{Outgoing, Purpose, StandbySession, StandbyStep};
use crate::stream::{FrameReader, WireError};

/// Where the standby's journal ends, as it tells the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalEnd {
    /// Its last sequence (0 when empty).
    pub last_sequence: Sequence,
    /// That record's epoch (0 when empty).
    pub last_epoch: Epoch,
}

/// What the primary answered to a join.
pub enum Joined {
    /// Stream from this sequence, in this epoch; the connection is ready for records.
    Stream {
        /// The primary's epoch.
        epoch: Epoch,
        /// The first record it sends.
        from: Sequence,
        /// The reader and writer of the connection.
        socket: TcpStream,
        /// Reads the records.
        reader: FrameReader<TcpStream>,
        /// The protocol state of the connection, now streaming.
        session: Box<StandbySession>,
    },
    /// Drop every record after `keep_through`, then join again.
    Diverged {
        /// The last sequence to keep.
        keep_through: Sequence,
        /// The primary's epoch: store it as the promise before dropping anything.
        epoch: Epoch,
    },
    /// The primary lost records this standby holds and may have answered for them; it holds
    /// writes and streams nothing ([`on_behind`]).
    Behind(Behind),
}

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// Could not connect or the connection broke.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The connection broke or carried something that is not this protocol.
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The primary refused, with its reason (which says the primary refused).
    #[error("{text}")]
    Refused {
        /// Its code.
        code: RefuseCode,
        /// The epoch it named, its current one, if it proved it holds the secret; else 0.
        epoch: Epoch,
        /// Its reason.
        text: String,
    },
    /// The other side failed to prove it holds the secret, or broke the protocol.
    #[error("{0}")]
    Protocol(String),
}

/// Connects to `primary` and performs the handshake from `end` with promise `promised`.
pub fn join(
    config: &ReplicationConfig,
    primary: &str,
    end: JournalEnd,
    promised: Epoch,
) -> Result<Joined, JoinError> {
    join_with(config, primary, end, promised, connect_timeout)
}

/// [`join`], connecting with `connect` (given the primary's address as written and the
/// handshake timeout).
fn join_with(
    config: &ReplicationConfig,
    primary: &str,
    end: JournalEnd,
    promised: Epoch,
    connect: impl FnOnce(&str, Duration) -> io::Result<TcpStream>,
) -> Result<Joined, JoinError> {
    let position =
        StandbyPosition { last_sequence: end.last_sequence, last_epoch: end.last_epoch, promised };
    let Handshake { socket, mut reader, mut session, deadline } =
        handshake(config, primary, Purpose::Join(position), promised, connect)?;
    // The answer to the join ends the handshake, and comes by its deadline too.
    let message = reader.read_handshake_message(deadline)?;
    match session.on_message(&message, &config.secret, &config.cluster) {
        StandbyStep::Following { epoch, from } => {
            // The stream's reads wait the handshake timeout at most, as they did before the
            // handshake's own reads set what was left of its deadline.
            let timeout = Duration::from_millis(config.handshake_timeout_ms);
            socket.set_read_timeout(Some(timeout))?;
            Ok(Joined::Stream { epoch, from, socket, reader, session: Box::new(session) })
        }
        StandbyStep::Diverged { keep_through, epoch } => {
            Ok(Joined::Diverged { keep_through, epoch })
        }
        StandbyStep::Behind(behind) => Ok(Joined::Behind(behind)),
        step => Err(closed(&socket, step)),
    }
}

/// A connection whose handshake has sent its `Join` or `FetchSnapshot`.
struct Handshake {
    socket: TcpStream,
    reader: FrameReader<TcpStream>,
    /// Waits for the primary's answer.
    session: StandbySession,
    /// When the handshake must be over: `handshake_timeout_ms` after the connection opened.
    deadline: Instant,
}

/// Connects to `primary` with `connect` (which resolves its address and connects, within the
/// handshake timeout) and authenticates both ways; the session then waits for the primary's
/// answer to the `Join` or `FetchSnapshot` it sent.
///
/// Once connected, the handshake as a whole has the handshake timeout, not each read: a peer at
/// the primary's address that sends a byte now and then cannot keep the follower waiting.
fn handshake(
    config: &ReplicationConfig,
    primary: &str,
    purpose: Purpose,
    promised: Epoch,
    connect: impl FnOnce(&str, Duration) -> io::Result<TcpStream>,
) -> Result<Handshake, JoinError> {
    let timeout = Duration::from_millis(config.handshake_timeout_ms);
    let socket = connect(primary, timeout)?;
    let deadline = Instant::now() + timeout;
    socket.set_nodelay(true)?;
    // Reads wait for the time left (`read_handshake_message`); the writes are small enough
    // for any send buffer, so this timeout is a backstop.
    socket.set_write_timeout(Some(timeout))?;
    let mut reader = FrameReader::new(socket.try_clone()?);
    let nonce = auth::nonce().map_err(|e| JoinError::Protocol(e.to_string()))?;
    let (mut session, hello) =
        StandbySession::start(config.cluster, config.engine.clone(), nonce, purpose, promised);
    send(&socket, &hello)?;
    let message = reader.read_handshake_message(deadline)?;
    match session.on_message(&message, &config.secret, &config.cluster) {
        StandbyStep::Reply(reply) => send(&socket, &reply)?,
        step => return Err(closed(&socket, step)),
    }
    Ok(Handshake { socket, reader, session, deadline })
}

fn send(socket: &TcpStream, message: &Outgoing) -> io::Result<()> {
    let mut frame = Vec::new();
    crate::message::encode(&message.message(), &mut frame);
    let mut written = 0;
    let deadline = Instant::now() + SEND_TIMEOUT;
    while written < frame.len() {
        match (&*socket).write(&frame[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A streaming socket does not block; a full send buffer empties as the primary
            // reads (acknowledgements are small, so this is rare).
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_micros(100));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How long a message may wait for room in the socket's send buffer.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// The error for a session that closed (or asked for something out of place), after sending
/// its last word.
fn closed(socket: &TcpStream, step: StandbyStep) -> JoinError {
    match step {
        StandbyStep::Close { last, reason, refused } => {
            if let Some(last) = last {
                let _ = send(socket, &last);
            }
            match refused {
                Some((code, epoch)) => JoinError::Refused { code, epoch, text: reason },
                None => JoinError::Protocol(reason),
            }
        }
        other => JoinError::Protocol(format!("the primary's answer was out of place: {other:?}")),
    }
}

/// What a standby says when the primary at `primary` refused it for speaking another
/// replication protocol version, `text` being the primary's reason (which names the version
/// each speaks). Retrying cannot help: only one release on both nodes does.
#[must_use]
pub fn version_refused(primary: &str, text: &str) -> String {
    format!(
        "this standby (replication protocol version {PROTOCOL_VERSION}) cannot follow the \
         primary at {primary}: {text}. Retrying cannot help: across protocol versions a pair \
         stops for the upgrade. Stop both nodes, install the one release on both, then start \
         the node that led last, then the other (docs/failover.md, \"Upgrading a pair\")"
    )
}

/// The snapshot a primary sent: the sequence it covers, its last record's epoch, and the
/// file's bytes.
pub struct FetchedSnapshot {
    /// Every record up to this sequence is included.
    pub through: Sequence,
    /// The epoch of record `through` (0 when the primary could not tell).
    pub through_epoch: Epoch,
    /// The snapshot file, whole.
    pub bytes: Vec<u8>,
}

/// A snapshot arriving in chunks: checks that they are contiguous from 0, keep the snapshot's
/// sequence, epoch and length, and stay within a size limit.
pub struct SnapshotReceiver {
    len_max: u64,
    bytes: Vec<u8>,
    expected: Option<(Sequence, Epoch, u64)>,
}

impl SnapshotReceiver {
    /// A receiver that refuses a snapshot above `len_max` bytes.
    #[must_use]
    pub fn new(len_max: u64) -> SnapshotReceiver {
        SnapshotReceiver { len_max, bytes: Vec::new(), expected: None }
    }

    /// Whether a chunk arrived yet (the first one completes the session's handshake).
    #[must_use]
    pub fn started(&self) -> bool {
        self.expected.is_some()
    }

    /// Takes the next chunk; the whole snapshot once the last one arrived.
    pub fn on_chunk(
        &mut self,
        chunk: &SnapshotChunk<'_>,
    ) -> Result<Option<FetchedSnapshot>, JoinError> {
        let this = (chunk.through(), chunk.through_epoch(), chunk.total_len());
        let broken = |what: &str| JoinError::Protocol(format!("snapshot transfer: {what}"));
        if chunk.total_len() > self.len_max {
            let (len, len_max) = (chunk.total_len(), self.len_max);
            return Err(broken(&format!("{len} bytes, above the limit of {len_max}")));
        }
        if *self.expected.get_or_insert(this) != this {
            return Err(broken("the snapshot changed part way"));
        }
        if chunk.offset() != self.bytes.len() as u64 {
            let at = chunk.offset();
            return Err(broken(&format!("a chunk at {at} after {} bytes", self.bytes.len())));
        }
        self.bytes.extend_from_slice(chunk.bytes());
        if !chunk.is_last() {
            return Ok(None);
        }
        assert_eq!(self.bytes.len() as u64, chunk.total_len(), "the last chunk ends the file");
        let (through, through_epoch) = (chunk.through(), chunk.through_epoch());
        Ok(Some(FetchedSnapshot { through, through_epoch, bytes: std::mem::take(&mut self.bytes) }))
    }
}

/// Fetches the primary's newest snapshot (for a standby whose missing records were retired),
/// telling it the epoch this standby `promised`: a primary below it refuses and steps down.
/// Refuses a snapshot above `len_max` bytes, and chunks that are not contiguous from 0 or that
/// change the snapshot's sequence, epoch or length part way.
pub fn fetch_snapshot(
    config: &ReplicationConfig,
    primary: &str,
    len_max: u64,
    promised: Epoch,
) -> Result<FetchedSnapshot, JoinError> {
    let Handshake { socket, mut reader, mut session, .. } =
        handshake(config, primary, Purpose::FetchSnapshot, promised, connect_timeout)?;
    // The primary proved it holds the secret: its chunks may take their time.
    socket.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut receiver = SnapshotReceiver::new(len_max);
    loop {
        let message = reader.read_message()?;
        let Message::SnapshotChunk(chunk) = &message else {
            return Err(closed(
                &socket,
                session.on_message(&message, &config.secret, &config.cluster),
            ));
        };
        if !receiver.started() {
            let step = session.on_message(&message, &config.secret, &config.cluster);
            if step != StandbyStep::ReceiveSnapshot {
                return Err(closed(&socket, step));
            }
        }
        if let Some(fetched) = receiver.on_chunk(chunk)? {
            return Ok(fetched);
        }
    }
}

/// A blocking lookup and connection attempt, for a caller with nothing else to wait for.
fn connect_timeout(primary: &str, timeout: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    connect_to_any(&resolve(primary)?, deadline, |address, until| {
        let left = until.saturating_duration_since(Instant::now());
        TcpStream::connect_timeout(&address, left.max(Duration::from_millis(1)))
    })
}

/// The addresses `address` (`host:port`) names, in the resolver's order of preference (a
/// name may stand for an IPv6 and an IPv4 address, say); a name is looked up with the
/// system's resolver, which may wait (on DNS) as long as its own configuration allows.
pub(crate) fn resolve(address: &str) -> io::Result<Vec<SocketAddr>> {
    let addresses: Vec<SocketAddr> = address.to_socket_addrs()?.collect();
    if addresses.is_empty() {
        let text = format!("{address} resolves to no address");
        return Err(io::Error::new(io::ErrorKind::NotFound, text));
    }
    Ok(addresses)
}

/// Connects to the first of `addresses` that answers by `deadline`, trying them in order, each
/// with an equal share of the time left (a refused address fails at once and leaves its share
/// to the next); the last error when none does.
fn connect_to_any(
    addresses: &[SocketAddr],
    deadline: Instant,
    mut connect: impl FnMut(SocketAddr, Instant) -> io::Result<TcpStream>,
) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
    for (tried, &address) in addresses.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let untried = u32::try_from(addresses.len() - tried).unwrap_or(u32::MAX);
        match connect(address, Instant::now() + left / untried) {
            Ok(socket) => return Ok(socket),
            Err(error) => last = error,
        }
    }
    Err(last)
}

/// A follower its control stopped, with the records it submitted to its node: it can follow
/// again from where it stood ([`follow`]; a promotion that fails part way restarts it).
pub(crate) struct Parked {
    follower: Follower,
    applied: Applied,
}

impl Parked {
    /// A follower that has submitted nothing yet: its node's journal ends where `control`'s
    /// replicator stage last saw it.
    pub(crate) fn new(control: &Control, follower: Follower) -> Parked {
        Parked { follower, applied: Applied::at(session_end(control)) }
    }
}

/// The follower thread: joins the primary and applies its stream, reconnecting with backoff,
/// until the control stops it (shutdown or promotion). Returns the follower once stopped, to
/// follow again; `None` when it stopped on its own because it cannot go on (its state says
/// why, and that only a restart helps). The decisions are [`Following`]'s; this loop carries
/// them out with sockets, the follower's poll and the monotonic clock.
pub(crate) fn follow(control: &Control, primary: &str, parked: Parked) -> Option<Parked> {
    let stop = control.follower_stop();
    let Parked { mut follower, applied } = parked;
    let mut following = Following::new(control, primary, applied);
    while !stop.load(Ordering::Acquire) {
        let (journaled, promised) = following.attempt(control);
        let connect = |primary: &str, timeout| {
            let deadline = Instant::now() + timeout;
            let addresses = resolve_unless_stopped(control, &mut follower, primary, deadline)?;
            connect_to_any(&addresses, deadline, |address, until| {
                connect_unless_stopped(control, &mut follower, address, until)
            })
        };
        let joined = join_with(control.config(), primary, journaled, promised, connect);
        let journal = || ReadOnlyDir::open(&control.config().data_dir);
        let answer = Answer::of_join(&joined);
        let next = following.on_answer(control, answer, journal, follower.now_ms());
        let next = match (next, joined) {
            (Next::Stream, Ok(Joined::Stream { socket, reader, session, .. })) => {
                let link = Link { socket, reader, session };
                let streamed = stream(control, &mut follower, &mut following, link);
                following.stream_ended(control, streamed, follower.now_ms())
            }
            (next, joined) => {
                if let Ok(Joined::Stream { socket, .. }) = joined {
                    // The stream ended before it began (its promise could not be stored).
                    let _ = socket.shutdown(Shutdown::Both);
                }
                control.set_follower_socket(None);
                next
            }
        };
        assert_ne!(next, Next::Stream, "a stream ends before the next attempt");
        if let Next::Stop(_) = next {
            return None;
        }
        let pause = Duration::from_millis(following.pause_ms());
        sleep_unless_stopped(control, &mut follower, pause);
    }
    Some(Parked { follower, applied: following.into_applied() })
}

/// Waits `pause` before the next connection attempt, or less if the follower is stopped:
/// stopping wakes the follower's poll, so a promotion does not wait out the backoff.
fn sleep_unless_stopped(control: &Control, follower: &mut Follower, pause: Duration) {
    let until = Instant::now() + pause;
    loop {
        match follower.wait(control, until) {
            Ok(Waited::Woken) => {}
            Ok(Waited::Stopped | Waited::TimedOut) => return,
            // A poll that cannot wait would spin: sleep out the pause instead.
            Err(_) => return thread::sleep(until.saturating_duration_since(Instant::now())),
        }
    }
}

/// How a wait on the follower's poll ended.
enum Waited {
    /// The follower was stopped.
    Stopped,
    /// The deadline passed.
    TimedOut,
    /// Something woke the poll (its events say what): look again.
    Woken,
}

/// Connects to the primary at `address` within `timeout`, unless the follower is stopped
/// first: stopping wakes the follower's poll, so a promotion or a shutdown does not wait out
/// the connection timeout of a primary whose machine is gone. The connection is then the
/// follower's socket, which stopping shuts down, so the handshake's reads (which wait up to
/// the same timeout for a primary that accepts but does not answer: one paused, say) are cut
/// short as well.
fn connect_unless_stopped(
    control: &Control,
    follower: &mut Follower,
    address: SocketAddr,
    deadline: Instant,
) -> io::Result<TcpStream> {
    let stop = control.follower_stop();
    let mut stream = mio::net::TcpStream::connect(address)?;
    let registry = follower.poll.registry();
    registry.register(&mut stream, CONNECTING, Interest::WRITABLE)?;
    let connected = loop {
        match follower.wait(control, deadline) {
            Ok(Waited::Woken) => {}
            Ok(Waited::Stopped) => break Err(follower_stopped()),
            Ok(Waited::TimedOut) => {
                break Err(io::Error::new(io::ErrorKind::TimedOut, "connection timed out"));
            }
            Err(error) => break Err(error),
        }
        if !follower.events.iter().any(|event| event.token() == CONNECTING) {
            continue;
        }
        // Writable: connected, or failed (refused, unreachable), or not yet (spurious).
        match stream.take_error() {
            Ok(None) => {}
            Ok(Some(error)) | Err(error) => break Err(error),
        }
        match stream.peer_addr() {
            Ok(_) => break Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotConnected => {}
            Err(error) => break Err(error),
        }
    };
    let _ = follower.poll.registry().deregister(&mut stream);
    connected?;
    let socket = TcpStream::from(std::os::fd::OwnedFd::from(stream));
    socket.set_nonblocking(false)?;
    control.set_follower_socket(Some(socket.try_clone()?));
    // Stopped before the socket was recorded: nothing shuts it down, so give up here.
    if stop.load(Ordering::Acquire) {
        return Err(follower_stopped());
    }
    Ok(socket)
}

fn follower_stopped() -> io::Error {
    io::Error::other("the follower was stopped")
}

/// Resolves `primary` (`host:port`) by `deadline`, unless the follower is stopped first. An
/// address of numbers needs no lookup. A name is looked up on a thread of its own, which
/// wakes the follower's poll with the answer: the system's resolver cannot be interrupted,
/// and a promotion must not wait for the DNS of a primary that is gone. A lookup still
/// running at the deadline is kept, and the next attempt waits for its answer instead of
/// starting another, so a follower has at most one lookup running.
fn resolve_unless_stopped(
    control: &Control,
    follower: &mut Follower,
    primary: &str,
    deadline: Instant,
) -> io::Result<Vec<SocketAddr>> {
    if let Ok(address) = primary.parse::<SocketAddr>() {
        return Ok(vec![address]);
    }
    let answer = match follower.lookup.take() {
        Some(lookup) if lookup.name == primary => lookup.answer,
        _ => {
            let (send, answer) = mpsc::sync_channel(1);
            let (name, waker, resolver) = (primary.to_owned(), follower.waker(), follower.resolver);
            thread::Builder::new().name("rf-repl-resolve".into()).spawn(move || {
                let _ = send.send(resolver(&name));
                let _ = waker.wake();
            })?;
            answer
        }
    };
    loop {
        match answer.try_recv() {
            Ok(resolved) => return resolved,
            Err(mpsc::TryRecvError::Disconnected) => {
                return Err(io::Error::other("the lookup of the primary's address failed"));
            }
            Err(mpsc::TryRecvError::Empty) => {}
        }
        let error = match follower.wait(control, deadline)? {
            Waited::Woken => continue,
            Waited::Stopped => follower_stopped(),
            Waited::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("looking up {primary} timed out; still waiting for its answer"),
            ),
        };
        follower.lookup = Some(Lookup { name: primary.to_owned(), answer });
        return Err(error);
    }
}

/// Where this standby's journal ends: the last record its replicator stage saw.
fn session_end(control: &Control) -> JournalEnd {
    let last = Sequence(control.link().available());
    let epoch = control.last_record_epoch();
    JournalEnd { last_sequence: last, last_epoch: if last.0 == 0 { Epoch(0) } else { epoch } }
}

/// A streaming connection to the primary.
struct Link {
    socket: TcpStream,
    reader: FrameReader<TcpStream>,
    session: Box<StandbySession>,
}

/// Applies the primary's stream until it ends or the follower is stopped.
fn stream(
    control: &Control,
    follower: &mut Follower,
    following: &mut Following,
    link: Link,
) -> Result<(), String> {
    control.set_follower_socket(link.socket.try_clone().ok());
    let socket = link.socket.try_clone().map_err(|e| e.to_string());
    let result = socket.and_then(|socket| {
        let result = apply_stream(control, follower, following, link);
        let _ = socket.shutdown(Shutdown::Both);
        result
    });
    control.set_follower_socket(None);
    result
}

fn apply_stream(
    control: &Control,
    follower: &mut Follower,
    following: &mut Following,
    link: Link,
) -> Result<(), String> {
    let Link { socket, mut reader, mut session } = link;
    // From here the socket is read without blocking: the follower waits on the socket and on
    // its node's answers at once (`Follower::poll`), so an acknowledgement leaves as soon as
    // the journal made its records durable, however the primary's messages are batched.
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut readable =
        mio::net::TcpStream::from_std(socket.try_clone().map_err(|e| e.to_string())?);
    let registry = follower.poll.registry();
    registry.register(&mut readable, SOCKET, Interest::READABLE).map_err(|e| e.to_string())?;
    let streamed = follow_stream(control, follower, following, &socket, &mut reader, &mut session);
    let _ = follower.poll.registry().deregister(&mut readable);
    streamed
}

/// The streaming loop: takes the whole messages that have arrived, hands their records to the
/// node, acknowledges what the node has answered ([`Following::turn`]), then waits for more of
/// either.
fn follow_stream(
    control: &Control,
    follower: &mut Follower,
    following: &mut Following,
    socket: &TcpStream,
    reader: &mut FrameReader<TcpStream>,
    session: &mut StandbySession,
) -> Result<(), String> {
    let stop = control.follower_stop();
    while !stop.load(Ordering::Acquire) {
        let drained = take_arrived(control, follower, following, socket, reader, session)?;
        let now_ms = follower.now_ms();
        let Turn { ack, next } = following.turn(control, session, &mut follower.node, now_ms)?;
        if let Some(ack) = ack {
            send(socket, &Outgoing::Ack(ack)).map_err(|e| e.to_string())?;
        }
        let left_ms = next?;
        if !drained {
            // More has arrived already, and the poll (edge-triggered) would not say so again.
            continue;
        }
        let wait = Some(Duration::from_millis(left_ms).min(STOP_CHECK));
        match follower.poll.poll(&mut follower.events, wait) {
            // A signal (a stopped process continued, say) ended the wait: look again.
            Err(error) if error.kind() != io::ErrorKind::Interrupted => {
                return Err(error.to_string());
            }
            _ => {}
        }
    }
    Ok(())
}

/// Takes every whole message that has arrived, handing its records to the node, until the
/// socket runs dry (returns `true`) or `heartbeat_ms` has passed (returns `false`: more may
/// be waiting). The bound keeps acknowledgements flowing while the primary streams a backlog,
/// whose socket never runs dry: the primary drops a stream it hears nothing on for its
/// replication timeout, at least four heartbeats (`tools::replication::settings`). Below it,
/// the acknowledgements of a burst still go out as one.
fn take_arrived(
    control: &Control,
    follower: &mut Follower,
    following: &mut Following,
    socket: &TcpStream,
    reader: &mut FrameReader<TcpStream>,
    session: &mut StandbySession,
) -> Result<bool, String> {
    let config = control.config();
    let ack_due = Instant::now() + Duration::from_millis(config.heartbeat_ms.max(1));
    loop {
        let message = match reader.read_message() {
            Ok(message) => message,
            Err(error) if error.is_timeout() => return Ok(true),
            Err(error) => return Err(format!("the stream ended: {error}")),
        };
        match following.on_message(control, session, &message, follower.now_ms()) {
            Step::Submit => {
                let Message::Records(records) = &message else { unreachable!("records") };
                for bytes in records.iter() {
                    submit(control, &mut follower.node, bytes, following.applied_mut())?;
                }
            }
            Step::Continue => {}
            Step::Close { last, reason } => {
                if let Some(last) = last {
                    let _ = send(socket, &last);
                }
                return Err(reason);
            }
        }
        if Instant::now() >= ack_due {
            return Ok(false);
        }
    }
}

/// The longest the follower waits before looking at its stop flag again (a backstop: stopping
/// wakes it).
const STOP_CHECK: Duration = Duration::from_millis(100);
/// The follower's poll tokens: the stream's socket, its node's answers or a stop, and a
/// connection being opened.
const SOCKET: Token = Token(0);
const WAKE: Token = Token(1);
const CONNECTING: Token = Token(2);

/// A standby's follower: its session on the node and what it waits on. The session wakes the
/// poll (through a `mio::Waker`) when the node answers a record, and so does stopping the
/// follower (`Follower::waker`).
pub struct Follower {
    node: Session,
    poll: Poll,
    events: Events,
    waker: Arc<mio::Waker>,
    /// Looks up the primary's address by name ([`resolve`]; tests wait forever instead).
    resolver: Resolver,
    /// A lookup of the primary's address still running ([`resolve_unless_stopped`]).
    lookup: Option<Lookup>,
    /// Where [`Follower::now_ms`] counts from.
    origin: Instant,
}

/// Turns a `host:port` into the addresses to connect to, in order of preference.
pub(crate) type Resolver = fn(&str) -> io::Result<Vec<SocketAddr>>;

/// A lookup running on its own thread: its name, and where its answer arrives.
struct Lookup {
    name: String,
    answer: mpsc::Receiver<io::Result<Vec<SocketAddr>>>,
}

impl Follower {
    /// Opens the follower's session on `node`; it looks names up with `resolver`.
    pub(crate) fn open(node: &Node, resolver: Resolver) -> io::Result<Follower> {
        let poll = Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE)?);
        let answered = Arc::clone(&waker);
        let hook: WakeHook = Arc::new(move || {
            let _ = answered.wake();
        });
        let session = node.session_with_notify(hook).map_err(io::Error::other)?;
        let events = Events::with_capacity(8);
        let origin = Instant::now();
        Ok(Follower { node: session, poll, events, waker, resolver, lookup: None, origin })
    }

    /// Milliseconds since the follower opened, on the monotonic clock: the time [`Following`]
    /// takes.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Waits on the poll until something wakes it, `deadline` passes, or the follower is
    /// stopped (looked at first). An interrupted poll counts as woken.
    fn wait(&mut self, control: &Control, deadline: Instant) -> io::Result<Waited> {
        if control.follower_stop().load(Ordering::Acquire) {
            return Ok(Waited::Stopped);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Waited::TimedOut);
        }
        match self.poll.poll(&mut self.events, Some(left)) {
            Err(error) if error.kind() != io::ErrorKind::Interrupted => Err(error),
            _ => Ok(Waited::Woken),
        }
    }

    /// What wakes the follower from its waits on its poll (the pause before the next attempt,
    /// a lookup of the primary's address, a connection being opened, the stream) to look at
    /// its stop flag. The handshake's reads
    /// do not wait on the poll: stopping shuts their socket down instead.
    pub(crate) fn waker(&self) -> Arc<mio::Waker> {
        Arc::clone(&self.waker)
    }
}

/// The primary starts streaming in `epoch` from `from`: stores the promise (and the epoch the
/// records may carry) durably before the first record is taken — the fence a promoted
/// standby holds its old primary with.
pub fn promise(
    control: &Control,
    applied: &Applied,
    (epoch, from): (Epoch, Sequence),
) -> Result<(), String> {
    let epochs = control.epochs();
    let raised =
        Epochs { current: epochs.current.max(epoch), promised: epochs.promised.max(epoch) };
    // Stored even when nothing rises: a store whose directory sync failed left the epochs in
    // force but perhaps not durable, and storing them again makes them so.
    control.store_epochs(raised)?;
    let expected = applied.submitted.last_sequence.next();
    assert_eq!(from, expected, "the session checked the primary streams from our next record");
    if !control.config().answers_after_sync {
        // This standby acknowledges what it writes before its journal syncs it: a power loss
        // from here on may take records it acknowledged, which its next start must know.
        control.epoch_store().set_acknowledges_written(true)?;
    }
    control.stream_started();
    Ok(())
}

/// The primary lost records this standby holds and may have answered for them ([`Behind`]):
/// stores its epoch as the promise (a promotion of this node goes above the epoch the primary
/// took when it restarted), and checks whether this node's journal, read from `journal`,
/// holds the primary's whole journal ([`record_to_compare`]). If it does, this standby holds
/// every record the primary acknowledged, and may be promoted by hand as if it had caught up
/// (unless its directory is catching up). Returns the follower's state for `/v1/node` and the
/// log.
pub fn on_behind<S: ReadSource>(
    control: &Control,
    journal: Result<S, JournalError>,
    behind: Behind,
    primary: &str,
) -> String {
    if let Err(error) = promise_epoch(control.epoch_store(), behind.epoch) {
        log(format_args!("replication: storing the promise of epoch {}: {error}", behind.epoch));
    }
    let last = behind.last_sequence;
    let lost = format!(
        "the primary {primary} lost records this standby holds after {last}, and may have \
         answered for them; it holds writes"
    );
    let index =
        journal.and_then(|journal| DirIndex::over(journal, session_end(control).last_sequence));
    let mut index = match index {
        Ok(index) => index,
        Err(error) => {
            control.holds_primary_journal(false);
            return format!(
                "{lost}. Reading this journal to compare it with the primary's: {error}"
            );
        }
    };
    let (at, ours) = record_to_compare(&mut index, last);
    let holds_all = last.0 == 0 || ours == Some(behind.last_epoch);
    control.holds_primary_journal(holds_all);
    let force =
        "compare the journals (`ringfence journal dump`) before `ringfence promote --force`";
    if holds_all && control.epoch_store().catching_up() {
        return format!(
            "{lost}. This standby holds its whole journal, but its data directory was created or \
             truncated, or its machine restarted, since it last caught up, so it may lack some \
             of the records after {last}: {force}"
        );
    }
    if holds_all {
        return format!(
            "{lost}. This standby holds its whole journal: promote the standby (`ringfence \
             promote`), then start the old primary as its standby"
        );
    }
    let ours =
        ours.map_or_else(|| "cannot be read".to_owned(), |epoch| format!("has epoch {epoch}"));
    format!(
        "{lost}. Its last record has epoch {}, this standby's record {at} {ours}, so the \
         journals may differ before its end: {force}",
        behind.last_epoch
    )
}

/// The record of the journal `index` that tells whether it holds the whole journal of a
/// primary whose last record is `last`, and its epoch: record `last` itself, or, when that one
/// is behind a snapshot, the first record held after it; and when the journal holds neither
/// (rebuilt after a snapshot, nothing taken since), the record the newest snapshot was taken
/// through, if at or after `last` and its epoch recorded. Each carries the epoch of the
/// primary's record `last` exactly when the node holds the primary's journal: the same
/// sequence and epoch are the same record; and a record of that epoch after `last` was
/// sequenced by the primary of that epoch, which sequenced `last` too, and the join rule keeps
/// a journal agreeing with its primary's up to every record it took from it (a snapshot's
/// state is such a journal's, applied).
pub fn record_to_compare(
    index: &mut dyn JournalIndex,
    last: Sequence,
) -> (Sequence, Option<Epoch>) {
    let at = index.first().map_or(last, |first| first.max(last));
    if let Some(epoch) = index.epoch_at(at) {
        return (at, Some(epoch));
    }
    match index.snapshot_point() {
        Some((through, epoch)) if through >= last => (through, Some(epoch)),
        _ => (at, None),
    }
}

/// The primary this standby rejoins leads in `epoch`: stores it as the promise, so that a
/// promotion of this node takes an epoch above it, never the same one (two histories under one
/// epoch would look alike to the next join's comparison).
pub fn promise_epoch(store: &dyn EpochStore, epoch: Epoch) -> Result<(), String> {
    let epochs = store.epochs();
    // Stored even when the promise stands already: see [`promise`].
    store.store(Epochs { current: epochs.current, promised: epochs.promised.max(epoch) })
}

/// What the standby shows after taking its node's answers: following or catching up, and by
/// how much. Once it holds everything the primary acknowledged (all it reported, with the
/// primary's answers waiting for this standby), it has caught up: it may be promoted by hand,
/// and its directory is a faithful copy again.
pub fn report_progress(control: &Control, session: &StandbySession, held: Sequence) {
    let lag = session.primary_last().0.saturating_sub(held.0);
    let caught_up = session.holds_everything_acknowledged(held);
    // `following` means promotable: with nothing left to receive, it is still catching up
    // until the primary said its answers wait for this standby.
    control.set_follower(if caught_up { "following" } else { "catching_up" }, held, lag);
    if caught_up {
        control.caught_up();
    } else if session.primary_answers_alone() {
        control.primary_answers_alone();
    }
}

/// The standby's records submitted to its node: the last one, how many are not yet answered,
/// and the last answered. Kept across connections: records submitted before a connection
/// broke are still journaled and answered after it.
#[derive(Debug)]
pub struct Applied {
    /// Where the journal will end once the node has taken what was submitted.
    pub submitted: JournalEnd,
    pending: u64,
    /// The last record the node answered: journaled (durable under its policy) and applied.
    pub answered: Sequence,
    /// The node's journal failed: nothing more can be taken until the node is restarted.
    pub journal_failed: bool,
}

impl Applied {
    /// Nothing in flight; the journal ends at `end`.
    #[must_use]
    pub fn at(end: JournalEnd) -> Applied {
        Applied { submitted: end, pending: 0, answered: end.last_sequence, journal_failed: false }
    }

    /// Record `bytes` (checked by the node) was submitted.
    pub fn submitted(&mut self, bytes: &[u8]) {
        let header = ringfence_core::record::read_header(bytes);
        assert_eq!(header.sequence, self.submitted.last_sequence.next(), "submitted in order");
        self.submitted = JournalEnd { last_sequence: header.sequence, last_epoch: header.epoch };
        self.pending += 1;
    }

    /// Offers record `bytes` to `node`: `Ok(false)` when the node is busy (its ring or the
    /// session's in-flight records full: take its answers and offer it again), `Err` when it
    /// refused the record.
    pub fn try_submit(&mut self, node: &mut Session, bytes: &[u8]) -> Result<bool, String> {
        match node.try_submit_record(bytes, 0) {
            Ok(_) => {
                self.submitted(bytes);
                Ok(true)
            }
            Err(Refused::Busy | Refused::SessionFull) => Ok(false),
            Err(refused) => {
                self.journal_failed |= matches!(refused, Refused::JournalFailed(_));
                Err(format!("the node refused a record: {refused}"))
            }
        }
    }

    /// Takes every answer ready, without waiting.
    pub fn collect(&mut self, node: &mut Session) -> Result<(), String> {
        while let Some(completion) = node.poll() {
            if let Err(error) = completion.result {
                self.journal_failed |= matches!(error, Unanswered::NotDurable { .. });
                return Err(format!("the node failed a record: {error}"));
            }
            assert!(completion.sequence > self.answered, "records are answered in order");
            self.pending -= 1;
            self.answered = completion.sequence;
        }
        Ok(())
    }
}

/// Submits one record, waiting for room when the node is busy.
fn submit(
    control: &Control,
    node: &mut Session,
    bytes: &[u8],
    applied: &mut Applied,
) -> Result<(), String> {
    while !applied.try_submit(node, bytes)? {
        applied.collect(node)?;
        if control.follower_stop().load(Ordering::Acquire) {
            return Err("stopped".into());
        }
        thread::sleep(Duration::from_micros(50));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::atomic::AtomicU64;

    use ringfence_core::pipeline::{
        Clock, Framed, Intake, Journal, NoReplicator, NodeConfig, StageError, SystemClock, Topology,
    };
    use ringfence_core::record::RecordBuf;
    use ringfence_core::{Command, Sequenced, Timestamp};

    use super::*;
    use crate::control::Role;
    use crate::control::tests::{config, memory};
    use crate::message::{Ack, Answering, Heartbeat};
    use crate::position::EpochList;
    use crate::session::{PrimarySession, PrimaryStep, PrimaryView};
    use crate::stream::{write_message, write_records};

    /// The epoch the primary leads in, and its records' epoch.
    const EPOCH: Epoch = Epoch(1);

    /// A journal that appends every record at once but makes them durable only through
    /// `through`, as a disk whose syncs lag behind its writes: its node answers no record
    /// above that.
    struct DurableThrough {
        appended: Arc<AtomicU64>,
        through: Arc<AtomicU64>,
    }

    impl Journal for DurableThrough {
        fn append(&mut self, record: &Framed<'_>) -> Result<(), StageError> {
            self.appended.store(record.sequenced.sequence.0, Ordering::Release);
            Ok(())
        }
        fn flush(&mut self, _clock: &dyn Clock) -> Result<Sequence, StageError> {
            let appended = self.appended.load(Ordering::Acquire);
            Ok(Sequence(appended.min(self.through.load(Ordering::Acquire))))
        }
    }

    /// Record `sequence`, a tick of epoch [`EPOCH`], framed as the primary journals it.
    fn record(sequence: u64) -> Vec<u8> {
        let tick = Sequenced {
            sequence: Sequence(sequence),
            timestamp: Timestamp(1_800_000_000_000 + sequence),
            command: Command::Tick,
        };
        RecordBuf::default().encode(EPOCH, &tick).to_vec()
    }

    /// The primary's end of one stream: the production protocol machine over a loopback
    /// connection, for a journal of records `1..=last`, all of [`EPOCH`].
    struct Primary {
        socket: TcpStream,
        reader: FrameReader<TcpStream>,
        session: PrimarySession,
        journal: EpochList,
        last: u64,
        /// The last heartbeat's time, and when it was sent (heartbeats keep the stream alive).
        beat_ms: u64,
        beat_at: Instant,
    }

    impl Primary {
        /// Accepts the standby on `listener` and answers its handshake until it streams; the
        /// standby's journal is empty, so it streams from record 1.
        fn accept(listener: &TcpListener, last: u64) -> Primary {
            listener.set_nonblocking(true).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let socket = loop {
                match listener.accept() {
                    Ok((socket, _)) => break socket,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        assert!(Instant::now() < deadline, "the standby never connected");
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(error) => panic!("accepting the standby: {error}"),
                }
            };
            socket.set_nonblocking(false).unwrap();
            socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let reader = FrameReader::new(socket.try_clone().unwrap());
            let journal = EpochList::flat(last, EPOCH.0);
            let session = PrimarySession::new([5; 32]);
            let beat_at = Instant::now();
            let mut primary =
                Primary { socket, reader, session, journal, last, beat_ms: 0, beat_at };
            loop {
                let message = primary.reader.read_message().expect("the standby's handshake");
                let taken =
                    Primary::take(&mut primary.session, &mut primary.journal, last, &message);
                let reply = match taken {
                    PrimaryStep::Reply(reply) => reply,
                    PrimaryStep::Stream(start) => {
                        assert_eq!(start.from_sequence, Sequence(1));
                        Outgoing::Start(start)
                    }
                    step => panic!("the handshake ended with {step:?}"),
                };
                write_message(&mut &primary.socket, &reply.message(), &mut Vec::new()).unwrap();
                if matches!(reply, Outgoing::Start(_)) {
                    break;
                }
            }
            primary.socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            primary
        }

        /// The primary's `session` takes the standby's `message`, with `journal` (records
        /// `1..=last`) in view.
        fn take(
            session: &mut PrimarySession,
            journal: &mut EpochList,
            last: u64,
            message: &Message<'_>,
        ) -> PrimaryStep {
            let config = config();
            let mut view = PrimaryView {
                cluster: &config.cluster,
                secret: &config.secret,
                engine: &config.engine,
                epoch: EPOCH,
                is_primary: true,
                journal,
                journal_last: Sequence(last),
                standby_tail_acknowledged: false,
            };
            session.on_message(message, &mut view)
        }

        /// Streams records `1..=last` in one frame.
        fn send_records(&mut self) {
            let records: Vec<u8> = (1..=self.last).flat_map(record).collect();
            let count = u32::try_from(self.last).unwrap();
            self.session.on_sent(Sequence(self.last), 1);
            write_records(&mut &self.socket, Sequence(1), count, &records).unwrap();
        }

        /// Sends a heartbeat; the time it carries, which the standby's next acknowledgement
        /// echoes.
        fn beat(&mut self) -> u64 {
            self.beat_ms += 1;
            self.beat_at = Instant::now();
            let beat = Heartbeat {
                epoch: EPOCH,
                last_sequence: Sequence(self.last),
                sent_at_ms: self.beat_ms,
                answering: Answering::AfterStandby,
            };
            let message = Message::Heartbeat(beat);
            write_message(&mut &self.socket, &message, &mut Vec::new()).unwrap();
            self.beat_ms
        }

        /// The standby's next acknowledgement, as the primary's session takes it; panics if
        /// none comes by `deadline`. Heartbeats go out every 50 ms meanwhile.
        fn next_ack(&mut self, deadline: Instant) -> Ack {
            loop {
                if self.beat_at.elapsed() >= Duration::from_millis(50) {
                    self.beat();
                }
                let message = match self.reader.read_message() {
                    Ok(message) => message,
                    Err(error) if error.is_timeout() => {
                        assert!(Instant::now() < deadline, "no acknowledgement came");
                        continue;
                    }
                    Err(error) => panic!("the standby ended the stream: {error}"),
                };
                match Primary::take(&mut self.session, &mut self.journal, self.last, &message) {
                    PrimaryStep::Acknowledged(ack) => return ack,
                    step => panic!("the primary's session refused the standby: {step:?}"),
                }
            }
        }
    }

    /// The standby under test: its node and the production follower thread of `control`.
    /// Dropped, it stops the follower (its socket shut down, its poll woken) and joins it,
    /// lets the journal make every record durable, and stops the node once it has.
    struct Standby {
        control: Arc<Control>,
        waker: Arc<mio::Waker>,
        thread: Option<thread::JoinHandle<Option<Parked>>>,
        through: Arc<AtomicU64>,
        node: Option<Node>,
    }

    impl Drop for Standby {
        fn drop(&mut self) {
            self.control.stop();
            let _ = self.waker.wake();
            self.through.store(u64::MAX, Ordering::Release);
            if let Some(thread) = self.thread.take() {
                let parked = thread.join();
                if !thread::panicking() {
                    assert!(parked.expect("the follower panicked").is_some(), "it stopped");
                }
            }
            let Some(node) = self.node.take() else { return };
            // A node stops once it has answered what it journaled: records become durable at
            // the journal's next flush.
            let deadline = Instant::now() + Duration::from_secs(10);
            while node.sequences().durable < node.sequences().journaled && Instant::now() < deadline
            {
                thread::sleep(Duration::from_millis(1));
            }
            let stopped = node.shutdown();
            if !thread::panicking() {
                stopped.expect("the node stops");
            }
        }
    }

    #[test]
    fn a_standby_acknowledges_only_the_records_its_journal_holds_durably() {
        // Goal: in `sync` mode a primary's answer rests on its standby's acknowledgement, so
        // the standby acknowledges a record only once its node answered it: journaled
        // durably and applied. Here its journal takes records 1..=8 but makes only 1..=3
        // durable: every acknowledgement the primary receives covers 3 at most, also once the
        // whole stream has reached the journal; when the journal makes the rest durable, an
        // acknowledgement of 8 follows.
        const LAST: u64 = 8;
        const DURABLE: u64 = 3;
        let appended = Arc::new(AtomicU64::new(0));
        let through = Arc::new(AtomicU64::new(DURABLE));
        let journal =
            DurableThrough { appended: Arc::clone(&appended), through: Arc::clone(&through) };
        let node_config =
            NodeConfig { intake: Intake::Replica, ..NodeConfig::for_tests(Topology::Compact) };
        let node = Node::start(node_config, journal, NoReplicator::default()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let role = Role::Standby { primary: address.clone() };
        let empty = (Sequence(0), Epoch(0));
        let clock = Arc::new(SystemClock::new());
        let control = Control::new(config(), role, empty, memory(false), clock);
        let follower = Follower::open(&node, resolve).unwrap();
        let waker = follower.waker();
        let parked = Parked::new(&control, follower);
        let thread = {
            let control = Arc::clone(&control);
            thread::spawn(move || follow(&control, &address, parked))
        };
        let thread = Some(thread);
        let node = Some(node);
        let standby = Standby { control, waker, thread, through: Arc::clone(&through), node };

        let mut primary = Primary::accept(&listener, LAST);
        primary.send_records();
        let within = || Instant::now() + Duration::from_secs(10);
        let holds_durably = |ack: &Ack| {
            assert!(
                ack.written.0 <= DURABLE && ack.durable.0 <= DURABLE,
                "the standby acknowledged {ack:?}, but its journal holds only 1..={DURABLE} \
                 durably"
            );
        };
        // Until the durable records are acknowledged and the whole stream is in the journal.
        let deadline = within();
        loop {
            let ack = primary.next_ack(deadline);
            holds_durably(&ack);
            if ack.durable.0 == DURABLE && appended.load(Ordering::Acquire) == LAST {
                break;
            }
        }
        // A heartbeat sent now is echoed by an acknowledgement of what the standby holds with
        // every record in its journal.
        let beat = primary.beat();
        let deadline = within();
        loop {
            let ack = primary.next_ack(deadline);
            holds_durably(&ack);
            if ack.echo_ms >= beat {
                assert_eq!(ack.durable, Sequence(DURABLE), "{ack:?}");
                break;
            }
        }
        // The journal makes the rest durable: the standby acknowledges them all.
        through.store(LAST, Ordering::Release);
        let deadline = within();
        let ack = loop {
            let ack = primary.next_ack(deadline);
            if ack.durable.0 == LAST {
                break ack;
            }
        };
        assert_eq!(ack.written, Sequence(LAST), "{ack:?}");
        drop(standby);
        drop(primary);
    }
}
