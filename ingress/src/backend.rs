//! The boundary between the network front and the node: submit a command with a token, get
//! its outcome later, never block.
//!
//! The server is generic over [`Backend`]; [`NodeBackend`] drives the pipeline node, the same
//! in production and in the loopback tests. It stamps time, keeps sequence order, answers
//! `busy` when full, and wakes the event loop through a `mio::Waker` when completions are
//! ready.
//!
//! Replication is not this crate's: a [`ReplicationControl`], implemented by the replicator,
//! tells `GET /v1/node` how replication stands and carries out the admin calls that change it
//! (promote a standby, switch the ack mode). The backend only routes those calls to it and
//! translates the node's refusals (`not_primary`, `replication_unavailable`) into typed ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringfence_core::pipeline::{
    Intake, Metrics, Node, Refused, Session, SnapshotHook, Topology, Unanswered, WakeHook,
};
use ringfence_core::{Command, Engine, Epoch, Outcome, Sequence, Sequenced};

use crate::wire::NodeInfo;

/// Why a command got no outcome: refused at submission (nothing was published), or, as a
/// completion, published and left without one (see [`BackendCompletion::result`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The ring (or queue) is full: retry shortly.
    #[error("busy: the node's input ring is full")]
    Busy,
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The node failed and stopped.
    #[error("the node failed: {0}")]
    Failed(String),
    /// A write sent to a standby (or to a primary a newer one deposed): send it to the
    /// primary, at `primary` (its HTTP address) when this node knows it.
    #[error("{}", not_primary_message(.primary.as_deref()))]
    NotPrimary {
        /// The primary's HTTP address, if known.
        primary: Option<String>,
    },
    /// Writes are held (reads are served): sync replication lost its standby (until it is
    /// back or replication is switched to async), the lease could not be renewed, or a
    /// switchover or promotion is under way. As a completion: the command was applied here
    /// but the standby never acknowledged it; retry with the same request id.
    #[error("replication unavailable: the standby is not acknowledging writes")]
    ReplicationUnavailable,
    /// The journal cannot make writes durable (the cause, e.g. a full disk): writes are
    /// refused, reads are served. As a completion: the command was not made durable; retry
    /// with the same request id once the node is back.
    #[error("journal failed: {0}")]
    JournalFailed(String),
}

/// The message of a `not_primary` refusal, naming the primary when it is known.
#[must_use]
pub fn not_primary_message(primary: Option<&str>) -> String {
    match primary {
        Some(primary) => format!("not primary; primary at {primary}"),
        None => "not primary; the primary is not known here".to_owned(),
    }
}

/// The answer to one submitted command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendCompletion {
    /// The token given at submission.
    pub token: u64,
    /// The outcome, or why the node could not answer: [`Refusal::Failed`] when the node
    /// failed, [`Refusal::ReplicationUnavailable`] when the command was applied here but never
    /// acknowledged by the standby.
    pub result: Result<Outcome, Refusal>,
}

/// Node status for `GET /v1/node` and the binary `NODE` request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// Role, epoch, sequences, state hash.
    pub info: NodeInfo,
    /// The engine's logical time (ms since the Unix epoch) after `info.last_sequence`: the
    /// "as of" of the state hash.
    pub state_as_of_ms: u64,
    /// Last sequence the pipeline has applied (may run a moment ahead of
    /// `info.last_sequence`, which is paired with the state hash).
    pub applied_sequence: u64,
    /// One line on the journal, e.g. `memory (no persistence)` or the directory.
    pub journal: String,
    /// One line on the peer, e.g. `none`.
    pub peer: String,
    /// How replication stands; `None` on a node without replication.
    pub replication: Option<ReplicationStatus>,
    /// Why the node stopped (a stage failed, e.g. the journal could not write), if it did:
    /// `/health` then answers 503 with it.
    pub failure: Option<String>,
    /// Why a write would not be taken now, if it would not: `/ready` then answers 503 with it.
    pub not_ready: Option<NotReady>,
}

/// Why a node does not take writes now: a code for `/ready`'s `error` and a sentence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NotReady {
    /// `node_failed`, `shutting_down`, `not_primary`, `replication_unavailable` or
    /// `journal_failed`.
    pub code: &'static str,
    /// For the operator.
    pub message: String,
}

impl NotReady {
    fn from_refused(refused: Refused) -> NotReady {
        let code = match &refused {
            Refused::Failed(_) => "node_failed",
            Refused::ShuttingDown => "shutting_down",
            Refused::NotPrimary => "not_primary",
            Refused::ReplicationUnavailable => "replication_unavailable",
            Refused::JournalFailed(_) => "journal_failed",
            _ => "not_ready",
        };
        // The code is `error`'s; the message need not start with it again.
        let text = refused.to_string();
        let message = text.strip_prefix(code).and_then(|rest| rest.strip_prefix(": "));
        NotReady { code, message: message.unwrap_or(&text).to_owned() }
    }
}

/// What `/v1/node` shows about replication, filled by the replicator.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplicationStatus {
    /// `primary` or `standby`.
    pub role: String,
    /// `sync`, `async` or `replicated-write` (free text from the replicator).
    pub mode: String,
    /// The cluster this node belongs to: both nodes of a pair name the same one.
    pub cluster: String,
    /// The highest epoch this node has promised not to go below: on a primary, at least the
    /// epoch it leads; on a standby that follows, its primary's epoch.
    pub promised_epoch: u64,
    /// E.g. `alone`, `catching_up`, `in_sync`, `standby_lost`, `following`, `connecting`,
    /// `deposed`.
    pub state: String,
    /// The peer's address.
    pub peer: Option<String>,
    /// Last sequence applied here.
    pub applied_sequence: u64,
    /// On a primary, the standby's durable acknowledgement; on a standby, what it acked.
    pub acked_sequence: u64,
    /// Records the standby is behind.
    pub lag_records: u64,
    /// How far behind the standby is in time, when known.
    pub lag_ms: Option<u64>,
    /// Times the replication connection was re-established.
    pub reconnects: u64,
    /// Automatic failover through the witness (etcd), when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coordination: Option<CoordinationStatus>,
}

/// What `/v1/node` shows about coordination through the witness (etcd).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CoordinationStatus {
    /// This node's name.
    pub node: String,
    /// `leader`, `taking_office`, `standby` or `handing_over`.
    pub state: String,
    /// The node holding the leader key, and its epoch.
    pub leader: Option<String>,
    /// The leader's epoch.
    pub leader_epoch: u64,
    /// A leader: time left before it stops acknowledging alone unless renewed (ms).
    pub lease_remaining_ms: Option<u64>,
    /// The standby the in-sync record names (the only one that may take over in sync mode).
    pub in_sync_standby: Option<String>,
    /// The mode the in-sync record holds.
    pub recorded_mode: Option<String>,
    /// `reachable`, or why the witness is not.
    pub witness: String,
    /// Why this node does not take over, while it waits.
    pub waiting: Option<String>,
    /// After a promotion over an async record: records the old primary had journaled
    /// beyond what this node held (at least), as the record reported them.
    pub failover_loss_records: Option<u64>,
    /// Under an async record, the most records this node may lose to take over
    /// (`--max-failover-loss`); absent: any number.
    pub max_failover_loss: Option<u64>,
}

/// The answer of an admin call that is not an engine command: ready now, or work that waits
/// on something slower than the node (the witness, for seconds at worst), which the event
/// loop hands to its admin thread and answers when it ends, serving everyone else meanwhile.
pub enum AdminCall<T> {
    /// Carried out already: the answer.
    Done(Result<T, String>),
    /// To be carried out off the event loop's thread; returns the answer.
    Later(Box<dyn FnOnce() -> Result<T, String> + Send>),
}

impl<T: 'static> AdminCall<T> {
    /// The same call with its answer mapped by `f`, now or when it ends.
    pub fn map<U>(self, f: impl FnOnce(T) -> U + Send + 'static) -> AdminCall<U> {
        match self {
            AdminCall::Done(result) => AdminCall::Done(result.map(f)),
            AdminCall::Later(work) => AdminCall::Later(Box::new(move || work().map(f))),
        }
    }
}

impl<T> From<Result<T, String>> for AdminCall<T> {
    fn from(result: Result<T, String>) -> Self {
        AdminCall::Done(result)
    }
}

/// The replicator's side of the admin API, held by [`NodeBackend`]. Called on the event-loop
/// thread: every method must return promptly (a promotion may take a few milliseconds); what
/// waits longer is returned as [`AdminCall::Later`].
pub trait ReplicationControl: Send + Sync + 'static {
    /// How replication stands now.
    fn status(&self) -> ReplicationStatus;

    /// Promotes this standby: stops following, stores the new epoch durably and calls
    /// [`Node::promote`] on `node`. Returns the new epoch. Without `force` a standby that may
    /// lack acknowledged writes is refused.
    fn promote(&self, node: &Node, force: bool) -> AdminCall<Epoch>;

    /// Switches the ack mode (`sync` or `async`); the implementation logs the change.
    fn set_mode(&self, mode: &str) -> AdminCall<()>;

    /// Appends replication metrics (lag, ack latency, reconnects) in Prometheus text format.
    fn write_metrics(&self, out: &mut String) {
        let _ = out;
    }
}

/// What a backend without replication answers to the replication admin calls.
pub const NO_REPLICATION: &str = "this node has no replication configured";

/// A node as the network front sees it. Every method returns promptly.
pub trait Backend: Send + 'static {
    /// Publishes `command`; its completion will carry `token`. Never blocks.
    fn try_submit(&mut self, command: Command, token: u64) -> Result<(), Refusal>;

    /// The next ready completion. After it returns `None`, the backend wakes the server's
    /// `mio::Waker` when the next completion arrives.
    fn poll(&mut self) -> Option<BackendCompletion>;

    /// Advances a node that runs on the event loop's thread ([`Topology::Stepped`]): handles
    /// what was submitted, releases the answers that are safe. Returns how soon it must be
    /// advanced again with no new input (its timer), or `None` for a node on its own threads,
    /// which this leaves alone.
    fn step(&mut self) -> Option<Duration> {
        None
    }

    /// The node's current status.
    fn status(&self) -> NodeStatus;

    /// Appends node metrics (ring fill, stage lags, ...) in Prometheus text format.
    fn write_metrics(&self, out: &mut String) {
        let _ = out;
    }

    /// Stops intake and waits for the node to finish what it accepted.
    fn close(&mut self) {}

    /// Promotes this standby to primary (`force`: even if it may lack acknowledged writes);
    /// answers the new epoch. Must return promptly: what waits is [`AdminCall::Later`].
    fn promote(&mut self, _force: bool) -> AdminCall<u64> {
        AdminCall::Done(Err(NO_REPLICATION.to_owned()))
    }

    /// Switches replication's ack mode to `mode` (`sync` or `async`). Must return promptly:
    /// what waits is [`AdminCall::Later`].
    fn set_replication_mode(&mut self, mode: &str) -> AdminCall<()> {
        let _ = mode;
        AdminCall::Done(Err(NO_REPLICATION.to_owned()))
    }
}

/// Milliseconds since the Unix epoch by the wall clock.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Called when a [`NodeBackend`] has shut its node down: the final engine, the last sequence
/// journaled and applied, and the SKUs seen (for a final snapshot's catalogue).
pub type OnNodeStop = Box<dyn FnOnce(&Engine, Sequence) + Send>;

/// Publishes the BLP's running hash, last sequence and logical time after every command, so
/// `GET /v1/node` can show them without a round trip through the ring. Wraps the node's
/// snapshot hook.
pub struct HashWatch<H> {
    inner: H,
    watch: Arc<EngineWatch>,
    /// Commands applied since the table sizes were last published.
    since_tables: u32,
}

/// The engine tables `/metrics` shows the size of, in [`EngineWatch`]'s order.
const TABLES: [&str; 6] = ["skus", "orders", "holdings", "batches", "coupons", "request_keys"];

/// How often (in commands) the table sizes are published while commands keep coming: a gauge
/// at most this many rows behind, for a status read and a few stores in one command of this
/// many. They are published too whenever the applying stage runs out of commands.
const TABLES_EVERY: u32 = 64;

/// The values a [`HashWatch`] publishes, as one consistent triple: a reader never sees the
/// hash of one sequence paired with another sequence (a sequence lock: the writer makes the
/// version odd while it writes, and a reader retries when the version was odd or moved).
#[derive(Debug, Default)]
pub struct EngineWatch {
    version: AtomicU64,
    running_hash: AtomicU64,
    last_sequence: AtomicU64,
    now_ms: AtomicU64,
    /// Rows in use in each of [`TABLES`] (orders: the live ones, which keep their slot), as
    /// of the last publication; each read on its own.
    rows: [AtomicU32; TABLES.len()],
    /// Rows each table was allocated with (`[engine]`).
    capacity: [u32; TABLES.len()],
}

/// One consistent reading of an [`EngineWatch`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchedState {
    /// The running hash after `last_sequence`.
    pub running_hash: u64,
    /// The last command applied.
    pub last_sequence: u64,
    /// The engine's logical time after it.
    pub now_ms: u64,
}

impl EngineWatch {
    fn new(engine: &Engine) -> EngineWatch {
        let config = engine.config();
        let capacity = [
            config.skus_max,
            config.orders_max,
            config.holdings_max,
            config.batches_max,
            config.coupons_max,
            config.request_keys_max,
        ];
        let watch = EngineWatch { capacity, ..EngineWatch::default() };
        watch.publish(engine);
        watch.publish_tables(engine);
        watch
    }

    /// Publishes the tables' sizes (the applying stage, every [`TABLES_EVERY`] commands and
    /// when it goes idle).
    fn publish_tables(&self, engine: &Engine) {
        let status = engine.status();
        let rows = [
            status.skus,
            status.orders_live,
            status.holdings,
            status.batches,
            status.coupons,
            status.request_keys,
        ];
        for (cell, (rows, capacity)) in self.rows.iter().zip(rows.into_iter().zip(self.capacity)) {
            assert!(rows <= capacity, "a table holds more rows than it was allocated");
            cell.store(rows, Ordering::Relaxed);
        }
    }

    /// The tables' sizes and capacities as Prometheus gauges, labelled by table.
    pub fn write_tables(&self, out: &mut String) {
        use crate::metrics::header;
        use std::fmt::Write as _;
        let name = "ringfence_engine_table_rows";
        let help = format!(
            "Rows in use in each engine table (orders: live ones, reserved, paid or shipped, \
             which keep their slot), published every {TABLES_EVERY} commands and when the node \
             goes idle."
        );
        header(out, name, &help, "gauge");
        for (table, rows) in TABLES.iter().zip(&self.rows) {
            let _ = writeln!(out, "{name}{{table=\"{table}\"}} {}", rows.load(Ordering::Relaxed));
        }
        let name = "ringfence_engine_table_capacity";
        let help = "Rows each engine table was allocated with ([engine] *_max); a command that \
                    needs a row of a full table is refused capacity_exhausted.";
        header(out, name, help, "gauge");
        for (table, capacity) in TABLES.iter().zip(self.capacity) {
            let _ = writeln!(out, "{name}{{table=\"{table}\"}} {capacity}");
        }
    }

    fn publish(&self, engine: &Engine) {
        self.publish_state(WatchedState {
            running_hash: engine.running_hash(),
            last_sequence: engine.last_sequence().0,
            now_ms: engine.now().0,
        });
    }

    /// Called by the one writer, the applying stage.
    fn publish_state(&self, state: WatchedState) {
        let version = self.version.load(Ordering::Relaxed);
        assert!(version % 2 == 0, "one writer publishes at a time");
        self.version.store(version + 1, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        self.running_hash.store(state.running_hash, Ordering::Relaxed);
        self.last_sequence.store(state.last_sequence, Ordering::Relaxed);
        self.now_ms.store(state.now_ms, Ordering::Relaxed);
        self.version.store(version + 2, Ordering::Release);
    }

    /// The last published triple.
    #[must_use]
    pub fn read(&self) -> WatchedState {
        loop {
            let before = self.version.load(Ordering::Acquire);
            let state = WatchedState {
                running_hash: self.running_hash.load(Ordering::Relaxed),
                last_sequence: self.last_sequence.load(Ordering::Relaxed),
                now_ms: self.now_ms.load(Ordering::Relaxed),
            };
            std::sync::atomic::fence(Ordering::Acquire);
            if before % 2 == 0 && self.version.load(Ordering::Relaxed) == before {
                return state;
            }
            std::hint::spin_loop();
        }
    }
}

impl<H: SnapshotHook> HashWatch<H> {
    /// Wraps `inner`; read the published values through the returned watch.
    pub fn new(inner: H, engine: &Engine) -> (HashWatch<H>, Arc<EngineWatch>) {
        let watch = Arc::new(EngineWatch::new(engine));
        (HashWatch { inner, watch: Arc::clone(&watch), since_tables: 0 }, watch)
    }
}

impl<H: SnapshotHook> SnapshotHook for HashWatch<H> {
    fn after_apply(&mut self, engine: &Engine, command: &Sequenced) {
        self.inner.after_apply(engine, command);
        self.watch.publish(engine);
        self.since_tables += 1;
        if self.since_tables == TABLES_EVERY {
            self.since_tables = 0;
            self.watch.publish_tables(engine);
        }
    }

    fn idle(&mut self, engine: &Engine) {
        self.inner.idle(engine);
        if self.since_tables > 0 {
            self.since_tables = 0;
            self.watch.publish_tables(engine);
        }
    }
}

/// Appends more Prometheus text to `/metrics` (e.g. the snapshot writer's counters); called on
/// the event loop thread, so it must be quick.
pub type MetricsWriter = Box<dyn Fn(&mut String) + Send>;

/// The pipeline [`Node`] as a [`Backend`]: one session whose completions wake the event loop;
/// with [`ringfence_core::pipeline::EgressDriver::Polled`] the event loop also runs egress
/// (through the session's `poll`), which is the compact layout for small machines.
pub struct NodeBackend {
    node: Option<Node>,
    session: Option<Session>,
    watch: Arc<EngineWatch>,
    journal: String,
    on_stop: Option<OnNodeStop>,
    metrics: Option<MetricsWriter>,
    replication: Option<Arc<dyn ReplicationControl>>,
    /// The primary's HTTP address, named in `not_primary` refusals.
    primary_http: Option<String>,
}

impl NodeBackend {
    /// Opens a session on `node` that wakes `waker`. `watch` comes from the [`HashWatch`] the
    /// node was started with; `epoch` is the epoch it was started in (status reads the node's
    /// current epoch, which a promotion raises).
    pub fn new(
        node: Node,
        waker: Arc<mio::Waker>,
        watch: Arc<EngineWatch>,
        epoch: Epoch,
        journal: String,
        on_stop: Option<OnNodeStop>,
    ) -> std::io::Result<NodeBackend> {
        assert_eq!(node.epoch(), epoch, "the node was started in another epoch");
        let wake: WakeHook = Arc::new(move || {
            let _ = waker.wake();
        });
        // Only a node with polled egress takes the hook; with an egress thread it is not needed.
        let _ = node.set_egress_waker(Arc::clone(&wake));
        let session = node.session_with_notify(wake).map_err(std::io::Error::other)?;
        Ok(NodeBackend {
            node: Some(node),
            session: Some(session),
            watch,
            journal,
            on_stop,
            metrics: None,
            replication: None,
            primary_http: None,
        })
    }

    /// Adds `writer`'s figures to the node's on `/metrics`.
    #[must_use]
    pub fn with_metrics(mut self, writer: MetricsWriter) -> NodeBackend {
        self.metrics = Some(writer);
        self
    }

    /// Hands the replication admin calls and status to `control`; `primary_http` is the
    /// primary's HTTP address that `not_primary` refusals name, if known.
    #[must_use]
    pub fn with_replication(
        mut self,
        control: Arc<dyn ReplicationControl>,
        primary_http: Option<String>,
    ) -> NodeBackend {
        self.replication = Some(control);
        self.primary_http = primary_http;
        self
    }
}

impl Backend for NodeBackend {
    fn try_submit(&mut self, command: Command, token: u64) -> Result<(), Refusal> {
        let Some(session) = self.session.as_mut() else { return Err(Refusal::ShuttingDown) };
        match session.try_submit(command, token) {
            Ok(_) => Ok(()),
            Err(Refused::Busy | Refused::SessionFull | Refused::BatchTooLarge { .. }) => {
                Err(Refusal::Busy)
            }
            Err(Refused::ShuttingDown) => Err(Refusal::ShuttingDown),
            Err(Refused::NotPrimary) => {
                Err(Refusal::NotPrimary { primary: self.primary_http.clone() })
            }
            Err(Refused::ReplicationUnavailable) => Err(Refusal::ReplicationUnavailable),
            Err(Refused::JournalFailed(cause)) => Err(Refusal::JournalFailed(cause.to_string())),
            Err(Refused::Failed(failure)) => Err(Refusal::Failed(failure.to_string())),
            Err(other) => Err(Refusal::Failed(other.to_string())),
        }
    }

    fn step(&mut self) -> Option<Duration> {
        let (node, session) = (self.node.as_ref()?, self.session.as_ref()?);
        if node.topology() != Topology::Stepped {
            return None;
        }
        // With no deadline set, nothing is due until a command sets one.
        Some(node.step_for(session).next_due.unwrap_or(Duration::MAX))
    }

    fn poll(&mut self) -> Option<BackendCompletion> {
        let completion = self.session.as_mut()?.poll()?;
        let result = completion.result.map_err(|unanswered| match unanswered {
            Unanswered::Unreplicated { .. } => Refusal::ReplicationUnavailable,
            Unanswered::NotDurable { cause, .. } => Refusal::JournalFailed(cause.to_string()),
            other => Refusal::Failed(other.to_string()),
        });
        Some(BackendCompletion { token: completion.token, result })
    }

    fn status(&self) -> NodeStatus {
        // After `close` the node is gone and the server is stopping: only the journal is left.
        let (primary, epoch, sequences) = match &self.node {
            Some(node) => (node.intake() == Intake::Sequencer, node.epoch().0, node.sequences()),
            None => {
                let not_ready = Some(NotReady::from_refused(Refused::ShuttingDown));
                return NodeStatus {
                    journal: self.journal.clone(),
                    not_ready,
                    ..NodeStatus::default()
                };
            }
        };
        let node = self.node.as_ref().expect("matched above");
        let failure = node.failure().map(|failure| failure.to_string());
        let not_ready = node.check_writable().err().map(NotReady::from_refused);
        let replication = self.replication.as_ref().map(|control| control.status());
        let peer = replication.as_ref().and_then(|r| r.peer.clone()).unwrap_or("none".into());
        let watched = self.watch.read();
        NodeStatus {
            info: NodeInfo {
                primary,
                epoch,
                last_sequence: watched.last_sequence,
                running_hash: watched.running_hash,
                journal_durable: sequences.durable.0,
            },
            state_as_of_ms: watched.now_ms,
            applied_sequence: sequences.applied.0,
            journal: self.journal.clone(),
            peer,
            replication,
            failure,
            not_ready,
        }
    }

    fn write_metrics(&self, out: &mut String) {
        if let Some(node) = &self.node {
            write_node_metrics(&node.metrics(), out);
        }
        self.watch.write_tables(out);
        if let Some(control) = &self.replication {
            control.write_metrics(out);
        }
        if let Some(writer) = &self.metrics {
            writer(out);
        }
    }

    fn promote(&mut self, force: bool) -> AdminCall<u64> {
        let Some(control) = self.replication.as_ref() else {
            return AdminCall::Done(Err(NO_REPLICATION.to_owned()));
        };
        let Some(node) = self.node.as_ref() else {
            return AdminCall::Done(Err("the node is shut down".to_owned()));
        };
        match control.promote(node, force) {
            AdminCall::Done(Ok(epoch)) => {
                // The control promises a node that now sequences its own writes in the new
                // epoch.
                assert_eq!(node.intake(), Intake::Sequencer, "a promoted node sequences writes");
                assert_eq!(node.epoch(), epoch, "a promoted node journals in the epoch returned");
                AdminCall::Done(Ok(epoch.0))
            }
            call => call.map(|epoch| epoch.0),
        }
    }

    fn set_replication_mode(&mut self, mode: &str) -> AdminCall<()> {
        match self.replication.as_ref() {
            Some(control) => control.set_mode(mode),
            None => AdminCall::Done(Err(NO_REPLICATION.to_owned())),
        }
    }

    fn close(&mut self) {
        self.session = None;
        let Some(node) = self.node.take() else { return };
        match node.shutdown() {
            Ok(report) => {
                if let Some(on_stop) = self.on_stop.take() {
                    on_stop(&report.engine, report.last_sequence);
                }
            }
            Err(error) => tracing::error!(target: "ringfence", "node shutdown: {error}"),
        }
    }
}

impl Drop for NodeBackend {
    fn drop(&mut self) {
        self.close();
    }
}

/// The node's metrics in Prometheus text format.
pub fn write_node_metrics(metrics: &Metrics, out: &mut String) {
    use crate::metrics::header;
    use std::fmt::Write as _;
    let gauges = [
        ("ringfence_ring_size", "Slots in the input ring.", metrics.ring_size),
        ("ringfence_ring_fill", "Commands published and not yet released.", metrics.ring_fill),
        ("ringfence_durable_sequence", "Last sequence durable in the journal.", metrics.durable.0),
        (
            "ringfence_journal_failed",
            "1 once the journal failed: writes are refused until the node is restarted.",
            u64::from(metrics.journal_fence.is_some()),
        ),
    ];
    for (name, help, value) in gauges {
        header(out, name, help, "gauge");
        let _ = writeln!(out, "{name} {value}");
    }
    let counters = [
        (
            "ringfence_published_total",
            "Ring positions published (commands, reads, ticks).",
            metrics.published,
        ),
        ("ringfence_node_busy_total", "Publications refused: ring full.", metrics.busy_rejections),
        (
            "ringfence_ticks_total",
            "Ticks published for due payment deadlines.",
            metrics.ticks_published,
        ),
        ("ringfence_ticks_skipped_total", "Due ticks skipped: ring full.", metrics.ticks_skipped),
    ];
    for (name, help, value) in counters {
        header(out, name, help, "counter");
        let _ = writeln!(out, "{name} {value}");
    }
    let clocks = [
        (
            "ringfence_time_shift_seconds",
            "Seconds the node's command stamps stand ahead of its clock (negative: behind), \
             continuing its journal's or its primary's time line.",
            Some(metrics.time_shift_ms),
        ),
        (
            "ringfence_primary_clock_offset_seconds",
            "Standby: least lead (seconds) of its clock over a record's stamp on arrival, over \
             10-20 s.",
            metrics.primary_clock_offset_ms,
        ),
    ];
    for (name, help, value_ms) in clocks {
        if let Some(value_ms) = value_ms {
            header(out, name, help, "gauge");
            let _ = writeln!(out, "{name} {}", value_ms as f64 / 1e3);
        }
    }
    header(out, "ringfence_stage_sequence", "Last sequence each stage passed.", "gauge");
    for stage in &metrics.stages {
        let _ = writeln!(
            out,
            "ringfence_stage_sequence{{stage=\"{}\"}} {}",
            stage.name, stage.sequence.0
        );
    }
    header(out, "ringfence_stage_lag", "Commands each stage is behind the producers.", "gauge");
    for stage in &metrics.stages {
        let _ = writeln!(out, "ringfence_stage_lag{{stage=\"{}\"}} {}", stage.name, stage.lag);
    }
    let histograms = [
        (
            "ringfence_blp_service_seconds",
            "BLP service time per command (sampled).",
            &metrics.blp_service_ns,
        ),
        (
            "ringfence_publish_to_egress_seconds",
            "Publish to answer release (sampled).",
            &metrics.publish_to_egress_ns,
        ),
    ];
    for (name, help, histogram) in histograms {
        crate::metrics::write_histogram(out, name, help, histogram);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_its_code_once() {
        // Goal: `/ready` carries the code in `error` and a sentence in `message` that does not
        // start with the code again (`ringfence status` prints both, one after the other).
        let held = NotReady::from_refused(Refused::ReplicationUnavailable);
        assert_eq!(held.code, "replication_unavailable");
        assert!(held.message.starts_with("writes are held: "), "{}", held.message);
        let failed = NotReady::from_refused(Refused::JournalFailed("disk full".into()));
        assert_eq!(failed.code, "journal_failed");
        assert!(failed.message.starts_with("the journal cannot"), "{}", failed.message);
        let standby = NotReady::from_refused(Refused::NotPrimary);
        assert!(standby.message.starts_with("this node is a standby"), "{}", standby.message);
    }

    #[test]
    fn the_table_gauges_follow_the_engine_every_few_commands() {
        // Goal: `/metrics` shows each table's rows beside its capacity, as of at most
        // TABLES_EVERY commands ago: the SKUs made since start appear once that many commands
        // were applied, not before; and all of them once the stage goes idle.
        use ringfence_core::pipeline::NoSnapshots;
        use ringfence_core::{Action, CreateSku, EngineConfig, RequestKey, SkuId, Timestamp};
        let mut engine = Engine::new(EngineConfig::small());
        let (mut hook, watch) = HashWatch::new(NoSnapshots, &engine);
        let rows = |watch: &EngineWatch, table: &str| {
            let mut out = String::new();
            watch.write_tables(&mut out);
            let line = format!("ringfence_engine_table_rows{{table=\"{table}\"}} ");
            out.lines().find_map(|l| l.strip_prefix(&line)?.parse::<u32>().ok()).unwrap()
        };
        let mut out = String::new();
        watch.write_tables(&mut out);
        assert!(out.contains("ringfence_engine_table_capacity{table=\"skus\"} 64\n"), "{out}");
        assert!(out.contains("ringfence_engine_table_capacity{table=\"request_keys\"} 4096\n"));
        for n in 1..=u64::from(TABLES_EVERY) {
            let spec = CreateSku {
                sku: SkuId(n),
                stock: 10,
                price_cents: 100,
                per_user_limit: 0,
                payment_timeout_ms: 60_000,
                sale_start: None,
                sale_end: None,
            };
            let command = Sequenced {
                sequence: Sequence(n),
                timestamp: Timestamp(n),
                command: Command::Client {
                    key: RequestKey::from_u128(u128::from(n)),
                    action: Action::CreateSku(spec),
                },
            };
            let _ = engine.apply(&command);
            hook.after_apply(&engine, &command);
            let shown = rows(&watch, "skus");
            let expected = if n < u64::from(TABLES_EVERY) { 0 } else { n as u32 };
            assert_eq!(shown, expected, "after {n} commands");
        }
        assert_eq!(rows(&watch, "request_keys"), TABLES_EVERY);
        assert_eq!(rows(&watch, "orders"), 0);
        // One command more, then nothing: the stage's idle moment publishes it.
        let command = Sequenced {
            sequence: Sequence(u64::from(TABLES_EVERY) + 1),
            timestamp: Timestamp(u64::from(TABLES_EVERY) + 1),
            command: Command::Client {
                key: RequestKey::from_u128(0),
                action: Action::Restock { sku: SkuId(1), qty: 1 },
            },
        };
        let _ = engine.apply(&command);
        hook.after_apply(&engine, &command);
        assert_eq!(rows(&watch, "request_keys"), TABLES_EVERY, "not yet");
        hook.idle(&engine);
        assert_eq!(rows(&watch, "request_keys"), TABLES_EVERY + 1);
    }

    #[test]
    fn a_reader_never_sees_a_hash_paired_with_another_sequence() {
        // Goal: `/v1/node` states the hash at the sequence it was taken, even while the
        // applying stage publishes new values concurrently.
        let watch = Arc::new(EngineWatch::default());
        let state = |n: u64| WatchedState {
            running_hash: n.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            last_sequence: n,
            now_ms: n * 10,
        };
        let writer = {
            let watch = Arc::clone(&watch);
            std::thread::spawn(move || (1..=200_000).for_each(|n| watch.publish_state(state(n))))
        };
        let mut last = 0;
        while !writer.is_finished() || last < 200_000 {
            let read = watch.read();
            assert_eq!(read, state(read.last_sequence), "a torn reading");
            assert!(read.last_sequence >= last, "went backwards");
            last = read.last_sequence;
        }
        writer.join().unwrap();
    }
}
