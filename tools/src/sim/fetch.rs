//! A standby that starts from its primary's snapshot, because the records it lacks were
//! retired from the primary's journal (`serve`'s start with `take_snapshot`): the simulated
//! process connects, fetches the newest snapshot with the production session and
//! `SnapshotReceiver`, and the machine then installs it (`install_snapshot`) and recovers
//! again before it starts its node.

use ringfence_journal::fault::FaultStorage;
use ringfence_journal::recovery::Recovered;
use ringfence_replicator::auth::Nonce;
use ringfence_replicator::control::Role;
use ringfence_replicator::coordination::driver::{Decided, Startup};
use ringfence_replicator::coordination::pilot::Identity;
use ringfence_replicator::message::Message;
use ringfence_replicator::session::{Purpose, StandbySession, StandbyStep};
use ringfence_replicator::standby::{FetchedSnapshot, SnapshotReceiver};

use super::machine::{ClusterSettings, send};
use super::net::{ConnId, Network};

/// A fetch gives up after this long (`fetch_snapshot`'s socket timeouts, shortened).
const FETCH_TIMEOUT_MS: u64 = 2_000;
/// The largest snapshot the simulated standby accepts.
const SNAPSHOT_LEN_MAX: u64 = 64 << 20;

/// The role a process was given, kept while it fetches a snapshot, until its node starts.
pub type Start = (Role, Option<(Startup, Identity, Decided)>);

/// A process fetching its primary's snapshot before it starts.
pub struct Fetching {
    /// The machine it fetches from.
    pub primary: usize,
    /// The role it starts in once the snapshot is installed.
    pub start: Start,
    /// Its journal, open until the snapshot replaces it (it stores the snapshot's epoch as
    /// its promise first).
    pub recovered: Recovered<FaultStorage>,
    conn: Option<(ConnId, StandbySession)>,
    receiver: SnapshotReceiver,
    deadline_ms: u64,
}

/// Where a fetch stands after a turn or a frame.
pub enum Fetched {
    Waiting,
    Done(FetchedSnapshot),
    Failed(String),
}

impl Fetching {
    /// A fetch from `primary`, to give up at `now_ms` plus the timeout.
    pub fn new(
        primary: usize,
        start: Start,
        recovered: Recovered<FaultStorage>,
        now_ms: u64,
    ) -> Fetching {
        let receiver = SnapshotReceiver::new(SNAPSHOT_LEN_MAX);
        let deadline_ms = now_ms + FETCH_TIMEOUT_MS;
        Fetching { primary, start, recovered, conn: None, receiver, deadline_ms }
    }

    /// One turn: connect and say hello first; give up past the deadline or once the primary
    /// closed the connection without the whole snapshot.
    pub fn tick(
        &mut self,
        now_ms: u64,
        (me, nonce): (usize, Nonce),
        net: &mut Network,
        settings: &ClusterSettings,
    ) -> Fetched {
        if now_ms >= self.deadline_ms {
            return Fetched::Failed("fetching the primary's snapshot timed out".into());
        }
        match &self.conn {
            Some((conn, _)) if !net.is_open(*conn, me, now_ms) => Fetched::Failed(
                "the primary closed the connection before the snapshot ended".into(),
            ),
            Some(_) => Fetched::Waiting,
            None => {
                let Some(conn) = net.connect(me, self.primary) else {
                    return Fetched::Failed("the primary cannot be reached".into());
                };
                let purpose = Purpose::FetchSnapshot;
                let engine = settings.engine.clone();
                // As `serve` fetches: with the promise its data directory holds.
                let promised = self.recovered.epochs.promised;
                let (session, hello) =
                    StandbySession::start(settings.cluster, engine, nonce, purpose, promised);
                send(net, conn, me, &hello.message(), now_ms);
                self.conn = Some((conn, session));
                Fetched::Waiting
            }
        }
    }

    /// One frame from the primary: the handshake, then the snapshot's chunks.
    pub fn on_message(
        &mut self,
        now_ms: u64,
        message: &Message<'_>,
        (me, net): (usize, &mut Network),
        settings: &ClusterSettings,
    ) -> Fetched {
        let Some((conn, session)) = self.conn.as_mut() else { return Fetched::Waiting };
        let Message::SnapshotChunk(chunk) = message else {
            return match session.on_message(message, &settings.secret, &settings.cluster) {
                StandbyStep::Reply(reply) => {
                    send(net, *conn, me, &reply.message(), now_ms);
                    Fetched::Waiting
                }
                StandbyStep::Close { reason, .. } => Fetched::Failed(reason),
                other => Fetched::Failed(format!("fetching a snapshot: {other:?}")),
            };
        };
        if !self.receiver.started() {
            let step = session.on_message(message, &settings.secret, &settings.cluster);
            if step != StandbyStep::ReceiveSnapshot {
                return Fetched::Failed(format!("fetching a snapshot: {step:?}"));
            }
        }
        match self.receiver.on_chunk(chunk) {
            Ok(Some(fetched)) => Fetched::Done(fetched),
            Ok(None) => Fetched::Waiting,
            Err(error) => Fetched::Failed(error.to_string()),
        }
    }

    /// Closes the connection, if one is open.
    pub fn close(&mut self, net: &mut Network, me: usize, now_ms: u64) {
        if let Some((conn, _)) = self.conn.take() {
            net.close(conn, me, now_ms);
        }
    }
}
