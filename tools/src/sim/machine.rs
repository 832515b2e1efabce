//! One simulated machine: its disk (the journal's fault-injecting storage) and its clock,
//! which outlive crashes, and the process on it — down, a candidate asking the witness what
//! to be, or the production node in the `stepped` topology with its replication `Control`,
//! its coordination `Driver`, and the replication shell that carries the production protocol
//! machines' frames over the simulated network instead of TCP.
//!
//! The shell does what `ringfence_replicator`'s `primary.rs` and `standby.rs` do with sockets
//! and threads: the primary side answers each frame with `PrimarySession`, streams the journal
//! with `Tail` and reports to `Control`; the standby side joins with `StandbySession` and
//! drives the production follower, `Following` — which answer leads to a stream, a retry or a
//! stop, what is acknowledged and when, silence, backoff, the follower's state in `Control` —
//! with the simulated network and clock, keeping at its edge only a backlog of the records
//! the node's full ring has not taken yet (the thread waits for room instead).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ringfence_core::pipeline::{
    Clock, Completion, Intake, ManualClock, Node, NodeConfig, NodeParts, Session, SnapshotHook,
    Topology,
};
use ringfence_core::prng::Prng;
use ringfence_core::{Engine, EngineConfig, Epoch, Outcome, Query, Sequence, Sequenced, SkuId};
use ringfence_journal::error::JournalError;
use ringfence_journal::fault::FaultStorage;
use ringfence_journal::format::{SEGMENT_HEADER_LEN, SEGMENT_LEN_MIN};
use ringfence_journal::recovery::{self, Recovered};
use ringfence_journal::snapshot::{
    SnapshotPolicy, SnapshotStatsHandle, SnapshotWriter, Snapshotter,
};
use ringfence_journal::storage::Storage as _;
use ringfence_journal::tail::Tail;
use ringfence_journal::writer::{Durability, WriterOptions};
use ringfence_journal::{heal, rebuild};
use ringfence_replicator::auth::{ClusterId, ClusterSecret, Nonce};
use ringfence_replicator::config::ReplicationConfig;
use ringfence_replicator::control::{self, Control, Role, start_primary_run, take_office};
use ringfence_replicator::coordination::CoordinationConfig;
use ringfence_replicator::coordination::driver::{self, Decided, Driver, Startup};
use ringfence_replicator::coordination::pilot::{Identity, Timing};
use ringfence_replicator::coordination::records::{LeaderValue, Member, Switchover, SyncRecord};
use ringfence_replicator::coordination::store::{
    Coordinator, CoordinatorError, LeaseId, MemoryCoordinator, View,
};
use ringfence_replicator::following::{Answer, Following, Handshaking, Next, Step, Stopped, Turn};
use ringfence_replicator::index::DirIndex;
use ringfence_replicator::message::{Ack, Message, decode, encode};
use ringfence_replicator::policy::{AckMode, Gate};
use ringfence_replicator::position::{self, EpochList, JournalIndex, StandbyPosition};
use ringfence_replicator::primary::SnapshotToSend;
use ringfence_replicator::session::{PrimarySession, PrimaryStep, Purpose, StandbySession};
use ringfence_replicator::standby::{self, Applied, JournalEnd};

use crate::replication::{CheckedSnapshot, RejoinSeries};
use ringfence_replicator::stream::{write_records, write_snapshot_chunk};

use super::fetch::{Fetched, Fetching, Start};
use super::net::{ConnId, Network};
use super::trace::Trace;

/// Bytes of records per `Records` frame (the TCP shell sends up to 256 KiB).
const RECORDS_FRAME_BYTES: usize = 32 << 10;
/// How often a running node's coordination driver takes a round (the thread's tick).
const DRIVER_PERIOD_MS: u64 = 25;
/// A process that exited on an error is started again by its supervisor after this long.
const RESTART_AFTER_EXIT_MS: u64 = 100;
/// How often a running node's snapshot writer runs the job its hook handed over: a job can
/// wait, and die with a crash, for up to this long.
const SNAPSHOT_WRITER_PERIOD_MS: u64 = 7;
/// A standby's handshake gives up after this long.
const HANDSHAKE_TIMEOUT_MS: u64 = 500;

/// The witness both machines share (`MemoryCoordinator` has etcd's semantics), and, by
/// machine, whether the network between that machine and the witness is cut: a partition
/// from etcd alone, the peer and the clients still reachable.
#[derive(Clone)]
pub struct Witness(pub Arc<Mutex<MemoryCoordinator>>, Arc<[AtomicBool; 2]>, Arc<LostAnswers>);

/// By machine, whether the witness's answers to its writes are lost (the write takes effect,
/// and the call fails as unreachable: etcd was slow to sync it and the call timed out; reads,
/// which sync nothing, are answered); and how many campaigns took the key with their answer
/// lost.
#[derive(Default)]
struct LostAnswers {
    lossy: [AtomicBool; 2],
    campaigns_won: AtomicU64,
}

impl Witness {
    /// An empty witness, every machine reaching it.
    pub fn new() -> Witness {
        let memory = MemoryCoordinator::new("sim");
        Witness(Arc::new(Mutex::new(memory)), Arc::default(), Arc::default())
    }

    /// Makes the witness's answers to machine `index` get lost, or arrive again.
    pub fn set_lossy(&self, index: usize, lossy: bool) {
        self.2.lossy[index].store(lossy, Ordering::Relaxed);
    }

    /// Whether the witness's answers to machine `index` are lost.
    pub fn is_lossy(&self, index: usize) -> bool {
        self.2.lossy[index].load(Ordering::Relaxed)
    }

    /// Campaigns that took the leader key and whose answer was lost.
    pub fn campaigns_won_unanswered(&self) -> u64 {
        self.2.campaigns_won.load(Ordering::Relaxed)
    }

    /// Cuts machine `index` off from the witness, or lets it reach the witness again.
    pub fn set_cut(&self, index: usize, cut: bool) {
        self.1[index].store(cut, Ordering::Relaxed);
    }

    /// Whether machine `index` is cut off from the witness.
    pub fn is_cut(&self, index: usize) -> bool {
        self.1[index].load(Ordering::Relaxed)
    }

    /// The witness as the process of machine `index`, on `disk`, reaches it.
    fn reached_from(&self, index: usize, disk: &FaultStorage) -> Reached {
        Reached { witness: self.clone(), index, disk: disk.clone() }
    }
}

/// The witness as one process reaches it. A process whose disk reached an armed sync point
/// died there: the simulator crashes its machine at the end of the step, and nothing it asks
/// in between reaches the witness (a real process would not have lived to ask).
struct Reached {
    witness: Witness,
    index: usize,
    disk: FaultStorage,
}

impl Reached {
    /// Asks the witness `f`, a write: its answer is lost while this machine's are.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut MemoryCoordinator) -> Result<T, CoordinatorError>,
    ) -> Result<T, CoordinatorError> {
        let answer = self.answered(f);
        if answer.is_ok() && self.witness.is_lossy(self.index) {
            return Err(CoordinatorError::Unreachable("the answer was lost".into()));
        }
        answer
    }

    /// Asks the witness `f`, answered unless the process died or the machine is cut off.
    fn answered<T>(
        &self,
        f: impl FnOnce(&mut MemoryCoordinator) -> Result<T, CoordinatorError>,
    ) -> Result<T, CoordinatorError> {
        if self.disk.is_halted() {
            return Err(CoordinatorError::Unreachable("the process died at a sync point".into()));
        }
        if self.witness.is_cut(self.index) {
            return Err(CoordinatorError::Unreachable("this machine is cut off from it".into()));
        }
        f(&mut self.witness.0.lock().expect("the witness lock is never poisoned"))
    }
}

impl Coordinator for Reached {
    fn grant(&mut self, ttl_s: u64) -> Result<LeaseId, CoordinatorError> {
        self.with(|w| w.grant(ttl_s))
    }
    fn keep_alive(&mut self, lease: LeaseId) -> Result<u64, CoordinatorError> {
        self.with(|w| w.keep_alive(lease))
    }
    fn read(&mut self) -> Result<View, CoordinatorError> {
        self.answered(MemoryCoordinator::read)
    }
    fn campaign(
        &mut self,
        leader: &LeaderValue,
        lease: LeaseId,
        sync_revision: i64,
        sync: &SyncRecord,
    ) -> Result<bool, CoordinatorError> {
        let lost = &self.witness.2;
        self.with(|w| {
            let won = w.campaign(leader, lease, sync_revision, sync);
            if won == Ok(true) && lost.lossy[self.index].load(Ordering::Relaxed) {
                lost.campaigns_won.fetch_add(1, Ordering::Relaxed);
            }
            won
        })
    }
    fn record_sync(
        &mut self,
        leader: &LeaderValue,
        sync: &SyncRecord,
    ) -> Result<bool, CoordinatorError> {
        self.with(|w| w.record_sync(leader, sync))
    }
    fn resign(&mut self, leader: &LeaderValue) -> Result<bool, CoordinatorError> {
        self.with(|w| w.resign(leader))
    }
    fn register(&mut self, member: &Member, lease: LeaseId) -> Result<(), CoordinatorError> {
        self.with(|w| w.register(member, lease))
    }
    fn request_switchover(
        &mut self,
        request: &Switchover,
        lease: LeaseId,
    ) -> Result<(), CoordinatorError> {
        self.with(|w| w.request_switchover(request, lease))
    }
    fn revoke(&mut self, lease: LeaseId) -> Result<(), CoordinatorError> {
        self.with(|w| w.revoke(lease))
    }
}

/// The cluster's settings, the same for both machines.
#[derive(Clone)]
pub struct ClusterSettings {
    pub engine: EngineConfig,
    pub cluster: ClusterId,
    pub secret: ClusterSecret,
    pub mode: AckMode,
    pub timing: Timing,
    /// The SKUs whose stock the checker balances after every command.
    pub skus: Vec<SkuId>,
    /// A deliberately broken variant, for the tests that prove the checkers bite.
    pub mutation: Mutation,
    /// Failover through the witness (`serve --etcd`); otherwise an operator promotes by hand
    /// (`ringfence promote`) and restarts an old primary as a standby.
    pub coordinated: bool,
    /// Snapshots and retention on every node (`[snapshots]`), or none.
    pub snapshots: Option<SnapshotPolicy>,
    /// Both nodes' journal durability.
    pub durability: Durability,
}

/// A deliberately broken variant of the pair that the checkers must catch; only the tests
/// choose one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mutation {
    /// The product as built.
    #[default]
    None,
    /// The primary counts records as acknowledged by the standby as soon as it sends them.
    AckUnsent,
    /// Both engines skip the stock check (with the `mutations` feature).
    #[cfg_attr(not(all(test, feature = "mutations")), allow(dead_code))]
    SkipStockCheck,
    /// Recovery drops a damaged record and what follows silently instead of refusing (with
    /// the `mutations` feature).
    #[cfg_attr(not(all(test, feature = "mutations")), allow(dead_code))]
    RecoveryIgnoresDamage,
    /// A node taking office under the witness journals in the epoch it held before, instead
    /// of the epoch it took with the leader key: its records and its predecessor's unreplicated
    /// ones share sequences and an epoch.
    #[cfg_attr(not(test), allow(dead_code))]
    OfficeKeepsEpoch,
    /// Nodes started with `--max-failover-loss` run without it: a node may take the key over
    /// an `async` record however far behind.
    #[cfg_attr(not(test), allow(dead_code))]
    IgnoresFailoverBound,
}

/// What the checkers learn from a node's BLP after every journaled command: its state hash
/// at each sequence, and any SKU whose units did not balance.
#[derive(Debug, Default)]
pub struct Observed {
    /// Sequence → running hash after applying it (overwritten when a dropped tail is redone).
    pub hashes: BTreeMap<u64, u64>,
    /// The first broken stock balance seen.
    pub unbalanced: Option<String>,
}

/// The snapshot hook the simulator starts its nodes with: the checkers' eyes on the BLP.
struct Observer {
    observed: Arc<Mutex<Observed>>,
    skus: Vec<SkuId>,
}

impl SnapshotHook for Observer {
    fn after_apply(&mut self, engine: &Engine, command: &Sequenced) {
        let mut observed = self.observed.lock().expect("never poisoned");
        observed.hashes.insert(command.sequence.0, engine.running_hash());
        for &sku in &self.skus {
            let Outcome::Sku(view) = engine.query(&Query::Sku(sku)) else { continue };
            let held = view.available + view.reserved + view.sold;
            if (held != view.stock || view.reserved + view.sold > view.stock)
                && observed.unbalanced.is_none()
            {
                observed.unbalanced = Some(format!(
                    "after sequence {}: SKU {} holds stock {} but available {} + reserved {} + \
                     sold {}",
                    command.sequence, sku.0, view.stock, view.available, view.reserved, view.sold
                ));
            }
        }
    }
}

/// What a machine's snapshot writers and snapshot fetches did.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct SnapshotCounts {
    pub written: u64,
    pub failed: u64,
    pub segments_retired: u64,
    /// Snapshots fetched from the primary and installed in place of the journal.
    pub installed: u64,
    /// Records of the journals those snapshots replaced that their epoch histories showed
    /// were never the primary's: what `serve` keeps in `rollback/`.
    pub unagreed: u64,
}

/// A running node's hook: the checkers' observer, and its snapshotter when it takes
/// snapshots.
struct Hooks {
    observer: Observer,
    snapshotter: Option<Snapshotter<FaultStorage>>,
}

impl SnapshotHook for Hooks {
    fn after_apply(&mut self, engine: &Engine, command: &Sequenced) {
        self.observer.after_apply(engine, command);
        if let Some(snapshotter) = self.snapshotter.as_mut() {
            snapshotter.after_apply(engine, command);
        }
    }
}

/// A process that crashed or was stopped: when it starts again.
pub struct Down {
    pub restart_ms: u64,
}

/// A process that recovered its journal and asks the witness what to be.
pub struct Candidate {
    recovered: Option<Recovered<FaultStorage>>,
    startup: Option<Startup>,
    said: String,
}

/// The process on a machine.
pub enum Process {
    Down(Down),
    Candidate(Box<Candidate>),
    /// Fetching the primary's snapshot before it starts its node as a standby.
    Fetching(Box<Fetching>),
    Running(Box<Running>),
}

/// A running node and its shells.
pub struct Running {
    pub node: Node,
    pub control: Arc<Control>,
    /// The coordination driver, when the cluster has a witness.
    driver: Option<Driver>,
    /// The session clients' commands go through; completions are routed by token.
    pub clients: Session,
    accepted: BTreeMap<ConnId, Accepted>,
    follower: Option<Follower>,
    next_driver_ms: u64,
    /// Set by the driver's rejoin: restart as a candidate, for this reason.
    rejoin: Arc<Mutex<Option<String>>>,
    /// Promoted in place after it took a record from its primary in this run: that record's
    /// epoch.
    pub followed_epoch: Option<u64>,
    /// A standby under the witness whose journal failed in this run stood down: it follows
    /// nobody and does not stand for the key.
    stood_down: bool,
    /// The snapshot writer the node's hook hands jobs to, and its counters as last seen.
    snapshots: Option<Snapshots>,
}

/// A running node's snapshot writer, its counters, and the counters as last reported
/// (written, failed, segments retired).
type Snapshots = (SnapshotWriter<FaultStorage>, SnapshotStatsHandle, (u64, u64, u64));

/// A connection a standby made to this node.
struct Accepted {
    session: PrimarySession,
    /// Streaming: the stream's id in `Control`, and the next record to send.
    stream: Option<(u64, Sequence)>,
}

/// The standby's side: its connection to the primary, the records waiting for room in its
/// node's ring, and the production follower's decisions (`Following`, which `standby.rs`'s
/// thread drives over TCP) driven over the simulated network and clock.
struct Follower {
    /// This machine.
    me: usize,
    node: Session,
    primary: usize,
    conn: Option<(ConnId, StandbySession)>,
    /// The decisions: the records submitted to the node and answered by it, the stream in
    /// progress, the backoff between attempts.
    following: Following,
    /// Records received but not yet taken by the node (its ring was full); dropped with the
    /// connection, since the primary streams again from what the node took. (The thread
    /// waits for room instead.)
    backlog: VecDeque<Vec<u8>>,
    handshake_deadline_ms: u64,
    next_attempt_ms: u64,
    /// Following stopped for good: why.
    stopped: Option<Stopped>,
    /// The node took a record from the primary in this run.
    received: bool,
    /// The highest record it acknowledged to its primary in this run.
    acknowledged: Sequence,
}

/// What a machine reports to the world after a tick.
#[derive(Default)]
pub struct TickReport {
    /// Client completions to route, with the epoch the node acknowledged them in.
    pub completions: Vec<(Completion, Epoch)>,
}

/// One simulated machine.
pub struct Machine {
    pub index: usize,
    pub name: String,
    /// Power losses so far: the machine's boot, as the kernel's boot id tells it.
    boots: u64,
    pub disk: FaultStorage,
    pub clock: Arc<ManualClock>,
    /// How fast `clock` runs against the witness's, in parts per million (negative: slow).
    pub clock_drift_ppm: i64,
    pub process: Process,
    pub paused: bool,
    pub observed: Arc<Mutex<Observed>>,
    /// Sequence to truncate the journal after at the next start (a diverged tail), and where
    /// the journal ended when the primary said so.
    pending_truncate: Option<(Sequence, (Sequence, Epoch))>,
    /// The divergence the round before, until the standby streams again: where its journal
    /// ended and what the primary said to keep (`position::divergence_cut`).
    told_before: Option<((Sequence, Epoch), Sequence)>,
    /// The operator moves its data directory aside at the next start, which then begins
    /// empty (a standby whose history it chose to give up).
    pub start_empty: bool,
    /// `--max-failover-loss` it starts with, until the operator lifts it.
    pub max_failover_loss: Option<u64>,
    /// The operator cut its journal at start: the last sequence it kept (a truncation at
    /// damage, an emptied directory), until the world notes it.
    pub cut_to: Option<Sequence>,
    /// Times the operator repaired a journal recovery refused as corrupt (rebuilt, healed or
    /// truncated).
    pub repairs: u64,
    /// Of those, the rebuilds after a snapshot (nothing dropped).
    pub rebuilds: u64,
    /// And the heals from the peer's journal (nothing dropped).
    pub heals: u64,
    /// Diverged tails cut before the primary's answer: an epoch the primary never held.
    pub epochs_dropped: u64,
    /// Primaries whose journal failed that began handing the key to their standby.
    pub failed_handovers: u64,
    /// Switchovers (or handovers) this machine's pilot called off before giving up the key.
    pub handovers_called_off: u64,
    /// Standbys under the witness whose journal failed, which stood down.
    pub standbys_stood_down: u64,
    /// Whether the operator tries `journal rebuild` before a truncation.
    pub rebuild_first: bool,
    /// Whether the operator tries `journal heal` from the peer's journal before a truncation.
    pub heal_first: bool,
    /// A halt is armed on the disk: whether a power loss (else a kill) strikes there.
    halt_power_loss: Option<bool>,
    /// Its primary refused it for lack of retired records: it fetches the primary's snapshot
    /// when it next starts as a standby.
    fetch_at_start: bool,
    /// What its snapshot writers and snapshot fetches did over the run.
    pub snapshot_counts: SnapshotCounts,
    /// Times it took the leader key as a standby and its promotion failed, so it gave the key
    /// up without taking office.
    pub promotions_failed: u64,
    /// Times it restarted itself, without a witness, because its follower stopped diverged or
    /// behind retention (`Control::rejoin_with`).
    pub rejoin_restarts: u64,
    /// Times a snapshot fetch at its start failed and it started on its journal instead.
    pub fetches_failed: u64,
    /// A standby's stream turns that ended with records handed to its node not yet answered
    /// (journaled and applied): what an early turn (`RunLength::early_follower_turns`) gives
    /// the acknowledgement checker to see.
    pub turns_with_records_unanswered: u64,
    /// Restarts to rejoin in a row, and when the run that ends the series started (ms): as
    /// `serve` passes them to its next run (`RejoinSeries`), so that restarts back off. A run
    /// started any other way (by the operator, a supervisor) starts none.
    rejoin_series: (u32, u64),
    /// This machine's next run follows a restart to rejoin.
    rejoin_next_run: bool,
    /// A crash to arm when the next snapshot is written: at its `after`-th sync point from
    /// there, a power loss or a kill.
    pub halt_at_next_snapshot: Option<(u64, bool)>,
    /// Processes that started running a node: a running process is the same one as long as
    /// this has not changed.
    pub runs_started: u64,
    /// Its follower acknowledged a record its journal did not yet hold durably (under its
    /// durability; checked by `check::every_step`): what it acknowledged, and what it held.
    pub acknowledged_unheld: Option<(Sequence, Sequence)>,
    /// Draws, each turn of a standby, whether its follower runs before its node steps
    /// (`RunLength::early_follower_turns`); `None` when they never do.
    pub early_turns: Option<Prng>,
    prng: Prng,
}

impl Machine {
    /// A machine with an empty disk, its process to start at `restart_ms`.
    pub fn new(index: usize, clock: Arc<ManualClock>, prng: Prng) -> Machine {
        Machine {
            index,
            name: ["a", "b"][index].to_owned(),
            boots: 0,
            disk: FaultStorage::new(),
            clock,
            clock_drift_ppm: 0,
            process: Process::Down(Down { restart_ms: 0 }),
            paused: false,
            observed: Arc::default(),
            pending_truncate: None,
            told_before: None,
            start_empty: false,
            max_failover_loss: None,
            cut_to: None,
            repairs: 0,
            rebuilds: 0,
            heals: 0,
            epochs_dropped: 0,
            failed_handovers: 0,
            handovers_called_off: 0,
            standbys_stood_down: 0,
            rebuild_first: true,
            heal_first: true,
            halt_power_loss: None,
            fetch_at_start: false,
            snapshot_counts: SnapshotCounts::default(),
            promotions_failed: 0,
            rejoin_restarts: 0,
            fetches_failed: 0,
            turns_with_records_unanswered: 0,
            rejoin_series: (0, 0),
            rejoin_next_run: false,
            halt_at_next_snapshot: None,
            runs_started: 0,
            acknowledged_unheld: None,
            early_turns: None,
            prng,
        }
    }

    /// The running node, if the process runs one.
    pub fn running(&self) -> Option<&Running> {
        match &self.process {
            Process::Running(running) => Some(running),
            _ => None,
        }
    }

    /// The running node, mutably.
    pub fn running_mut(&mut self) -> Option<&mut Running> {
        match &mut self.process {
            Process::Running(running) => Some(running),
            _ => None,
        }
    }

    /// Whether the machine runs a primary that acknowledges on its own journal (gate
    /// `Local`), not waiting for its standby.
    pub fn acknowledges_alone(&self) -> bool {
        self.running().is_some_and(|running| {
            let facts = running.control.facts();
            facts.primary && facts.gate == Gate::Local
        })
    }

    /// Whether this machine's node sequences client writes and is not deposed.
    pub fn is_primary(&self) -> bool {
        self.running().is_some_and(|r| r.control.is_primary())
    }

    /// Kills the process where it stands. `power_loss` also loses what the disk had not
    /// synced, with a torn write-back drawn from the seed; otherwise every byte written
    /// survives (a killed process's page cache does).
    pub fn crash(&mut self, power_loss: bool, (now_ms, restart_ms): (u64, u64), net: &mut Network) {
        let disk = self.disk.clone();
        self.crash_from(&disk, power_loss, restart_ms);
        net.end_node(self.index, now_ms, false);
    }

    /// Whether a power loss is armed here: at a sync point, or at the next snapshot's.
    pub fn power_loss_armed(&self) -> bool {
        self.halt_power_loss == Some(true)
            || self.halt_at_next_snapshot.is_some_and(|(_, power_loss)| power_loss)
    }

    /// Arms a crash at the disk's `after`-th sync point from now (mid-write, mid-promotion,
    /// mid-snapshot: wherever the process is when it syncs): a kill there, or a power loss.
    /// Whether it armed one (a machine whose process is down, or already armed, is left be).
    pub fn arm_halt(&mut self, after: u64, power_loss: bool) -> bool {
        if self.halt_power_loss.is_some() || matches!(self.process, Process::Down(_)) {
            return false;
        }
        self.disk.halt_after_sync_points(after);
        self.halt_power_loss = Some(power_loss);
        true
    }

    /// Takes back every crash armed and not yet struck: at a sync point, or at the next
    /// snapshot's. One that struck (the disk halted) is left for `crash_if_halted`. Returns
    /// how many it took back.
    pub fn disarm_halts(&mut self) -> u64 {
        let at_snapshot = u64::from(self.halt_at_next_snapshot.take().is_some());
        if self.halt_power_loss.is_some() && self.disk.disarm_halt() {
            self.halt_power_loss = None;
            return at_snapshot + 1;
        }
        at_snapshot
    }

    /// If the disk reached the armed sync point, the process dies there: whatever it did
    /// after it (every write failed) is lost with it. What it halted at, if it did.
    pub fn crash_if_halted(
        &mut self,
        (now_ms, restart_ms): (u64, u64),
        net: &mut Network,
    ) -> Option<(String, bool)> {
        let halted = self.disk.halted()?;
        let power_loss = self.halt_power_loss.expect("a halt was armed");
        self.crash_from(&halted.disk, power_loss, restart_ms);
        // The process died at the sync point: nothing it did after it left the machine.
        net.end_node(self.index, now_ms, true);
        Some((format!("sync point {} ({})", halted.point, halted.what), power_loss))
    }

    /// Stops the node as SIGTERM does: drains it (what cannot be answered is failed), its
    /// journal syncs and marks where it ends, and the process is down until `restart_ms`. What
    /// the shutdown reported.
    pub fn stop_cleanly(&mut self, (now_ms, restart_ms): (u64, u64), net: &mut Network) -> String {
        assert!(!self.paused, "a paused machine does not take a signal");
        let process = std::mem::replace(&mut self.process, Process::Down(Down { restart_ms }));
        let Process::Running(running) = process else {
            self.process = process;
            return "not running".to_owned();
        };
        let Running { node, clients, follower, .. } = *running;
        drop((clients, follower));
        let said = match node.shutdown() {
            Ok(report) => format!("through {}", report.last_sequence),
            Err(error) => format!("shutdown: {error}"),
        };
        net.end_node(self.index, now_ms, false);
        // The process is gone; what it wrote stays, as after a kill.
        self.disk = self.disk.process_crash();
        assert!(self.disk.halted().is_none(), "a stopped machine's disk is halted");
        self.halt_power_loss = None;
        said
    }

    fn crash_from(&mut self, disk: &FaultStorage, power_loss: bool, restart_ms: u64) {
        let process = std::mem::replace(&mut self.process, Process::Down(Down { restart_ms }));
        match process {
            Process::Running(running) => {
                let Running { node, clients, follower, .. } = *running;
                drop((clients, follower));
                node.abandon();
            }
            // A candidate's or a fetching process's open journal goes with it, before the
            // disk is read: what it wrote is the kernel's, as a killed process's is.
            other => drop(other),
        }
        self.disk = if power_loss {
            self.boots += 1;
            disk.power_loss(Some(self.prng.next_u64()))
        } else {
            disk.process_crash()
        };
        // A fresh disk: an armed halt died with the process.
        assert!(self.disk.halted().is_none(), "a crashed machine's disk is halted");
        self.halt_power_loss = None;
        self.paused = false;
    }

    /// One tick at `now_ms`: start, decide, or step the node and its shells.
    pub fn tick(
        &mut self,
        now_ms: u64,
        settings: &ClusterSettings,
        (witness, net, trace): (&Witness, &mut Network, &mut Trace),
        (operator_primary, peer): (usize, &FaultStorage),
    ) -> TickReport {
        assert!(!self.paused, "a paused machine is not ticked");
        match &mut self.process {
            Process::Down(down) if now_ms >= down.restart_ms => {
                self.boot(now_ms, settings, peer, trace);
                TickReport::default()
            }
            Process::Down(_) => TickReport::default(),
            Process::Candidate(_) if !settings.coordinated => {
                self.start_as_told(now_ms, settings, operator_primary, trace);
                TickReport::default()
            }
            Process::Candidate(_) => {
                self.decide(now_ms, settings, witness, trace);
                TickReport::default()
            }
            Process::Fetching(_) => {
                let nonce = nonce(&mut self.prng);
                let Process::Fetching(fetching) = &mut self.process else { unreachable!() };
                let fetched = fetching.tick(now_ms, (self.index, nonce), net, settings);
                self.on_fetched(now_ms, fetched, settings, net, trace);
                TickReport::default()
            }
            Process::Running(_) => self.run(now_ms, settings, net, trace),
        }
    }

    /// The journal options every simulated node runs with.
    pub(super) fn options(settings: &ClusterSettings) -> WriterOptions {
        WriterOptions {
            segment_len: SEGMENT_LEN_MIN,
            durability: settings.durability,
            engine_config: settings.engine.clone(),
        }
    }

    /// Starts the process: drops a diverged tail if the primary asked, recovers the journal
    /// (repairing damage as the runbook says, `peer` being the other machine's disk), and
    /// becomes a candidate. A journal recovery refuses stays down: the checkers report it.
    fn boot(
        &mut self,
        now_ms: u64,
        settings: &ClusterSettings,
        peer: &FaultStorage,
        trace: &mut Trace,
    ) {
        if std::mem::take(&mut self.start_empty) {
            let what = "operator moves its data directory aside and starts it empty";
            trace.event(now_ms, &format!("{}: {what}", self.name));
            self.disk = FaultStorage::new();
            self.halt_power_loss = None;
            self.pending_truncate = None;
            self.told_before = None;
            self.cut_to = Some(Sequence(0));
        }
        if let Some((told, end)) = self.pending_truncate.take() {
            // As `serve` does: a second answer naming only the last record drops the epoch.
            let keep_through = match DirIndex::over(self.disk.clone(), end.0) {
                Ok(mut own) => position::divergence_cut(self.told_before, end, told, &mut own),
                Err(_) => told,
            };
            self.epochs_dropped += u64::from(keep_through < told);
            self.told_before = Some((end, told));
            match recovery::truncate(&self.disk, keep_through.next()) {
                Ok(_) => trace
                    .event(now_ms, &format!("{}: dropped records after {keep_through}", self.name)),
                Err(JournalError::NothingToReplayFrom { .. }) => {
                    // As `serve` does: the tail cannot be cut in place; the primary's snapshot
                    // replaces the journal instead.
                    let what = "cannot drop the tail in place: takes the primary's snapshot";
                    trace.event(now_ms, &format!("{}: {what}", self.name));
                    self.fetch_at_start = true;
                }
                Err(error) => {
                    trace.event(now_ms, &format!("{}: truncate failed: {error}", self.name))
                }
            }
        }
        let mut recovered = recovery::recover_from(self.disk.clone(), Machine::options(settings));
        let damaged = damaged_at(&recovered);
        if damaged.is_some() && self.rebuild_first {
            let error = recovered.as_ref().err().map(ToString::to_string).unwrap_or_default();
            trace.event(now_ms, &format!("{}: recovery refused: {error}", self.name));
            // The runbook's repairs: first the one that drops nothing, where a snapshot covers
            // the damage.
            match rebuild::rebuild(&self.disk) {
                Ok(rebuilt) => {
                    let what = format!(
                        "{}: operator rebuilds the journal after snapshot {}, through {}",
                        self.name, rebuilt.through, rebuilt.last
                    );
                    trace.event(now_ms, &what);
                    self.repairs += 1;
                    self.rebuilds += 1;
                    recovered =
                        recovery::recover_from(self.disk.clone(), Machine::options(settings));
                }
                Err(why) => trace.event(now_ms, &format!("{}: cannot rebuild: {why}", self.name)),
            }
        }
        if damaged_at(&recovered).is_some() && self.heal_first {
            // Then the other that drops nothing: the damaged records copied back from the
            // peer's journal, which matters when this one holds records the peer lacks.
            match heal::heal(&self.disk, &mut peer.clone()) {
                Ok(healed) => {
                    let sequences: Vec<String> = healed.iter().map(heal::span).collect();
                    let what = format!(
                        "{}: operator heals the journal from its peer's: sequence {}",
                        self.name,
                        sequences.join(", ")
                    );
                    trace.event(now_ms, &what);
                    self.repairs += 1;
                    self.heals += 1;
                    recovered =
                        recovery::recover_from(self.disk.clone(), Machine::options(settings));
                }
                Err(why) => trace.event(now_ms, &format!("{}: cannot heal: {why}", self.name)),
            }
        }
        let damaged = damaged_at(&recovered);
        if let Some(sequence) = damaged {
            if !self.rebuild_first {
                let error = recovered.as_ref().err().map(ToString::to_string).unwrap_or_default();
                trace.event(now_ms, &format!("{}: recovery refused: {error}", self.name));
            }
            // Then the one for a node whose peer holds its records: drop the damaged record and
            // what follows, and rejoin; the primary streams them again.
            let truncated = recovery::truncate(&self.disk, sequence);
            let done = truncated.as_ref().map_or_else(ToString::to_string, |_| "done".to_owned());
            trace
                .event(now_ms, &format!("{}: operator truncates at {sequence}: {done}", self.name));
            let mut kept = truncated.is_ok().then_some(Sequence(sequence.0 - 1));
            if let Err(JournalError::NothingToReplayFrom { .. }) = truncated {
                // Refused: nothing would be left to replay from. The other repair the message
                // names: an empty data directory, which fetches the primary's snapshot.
                trace.event(now_ms, &format!("{}: operator empties its data directory", self.name));
                self.disk = FaultStorage::new();
                self.halt_power_loss = None;
                kept = Some(Sequence(0));
            }
            if let Some(kept) = kept {
                self.cut_to = Some(self.cut_to.map_or(kept, |cut| cut.min(kept)));
            }
            self.repairs += 1;
            recovered = recovery::recover_from(self.disk.clone(), Machine::options(settings));
        }
        match recovered {
            Ok(recovered) => {
                let last = recovered.next_sequence.0 - 1;
                let report = &recovered.report;
                let torn = report.torn_tail.is_some();
                trace.event(
                    now_ms,
                    &format!("{}: recovered through {last} (torn tail: {torn})", self.name),
                );
                if settings.coordinated
                    && !self.before_candidacy(&recovered, settings, now_ms, trace)
                {
                    // As `serve` exits on the error: its supervisor starts it again.
                    self.process = Process::Down(Down { restart_ms: now_ms + 1_000 });
                    return;
                }
                let candidate =
                    Candidate { recovered: Some(recovered), startup: None, said: String::new() };
                self.process = Process::Candidate(Box::new(candidate));
            }
            Err(error) => {
                trace.event(now_ms, &format!("{}: RECOVERY REFUSED: {error}", self.name));
                self.process = Process::Down(Down { restart_ms: u64::MAX });
            }
        }
    }

    /// As `serve` does once before a node stands for the key, or starts as a standby without
    /// one: a former primary that answered before syncing, or a standby that acknowledged
    /// records once written, that lost its page cache (this machine's power losses are its
    /// boots) is marked catching up. Whether the node may go on (a failure to mark ends this
    /// start).
    fn before_candidacy(
        &self,
        recovered: &Recovered<FaultStorage>,
        settings: &ClusterSettings,
        now_ms: u64,
        trace: &mut Trace,
    ) -> bool {
        if settings.durability == Durability::Batch {
            // Only a journal that answers before it syncs needs the boot (and its file's syncs).
            return true;
        }
        let dir = recovered.writer.data_dir();
        let rebooted = dir.note_boot(&format!("boot {}", self.boots)).map_err(|e| e.to_string());
        match rebooted.and_then(|rebooted| control::before_candidacy(dir, false, rebooted)) {
            Ok(marked) => {
                if let Some(why) = marked {
                    trace.event(now_ms, &format!("{}: catching up (lost power; {why})", self.name));
                }
                true
            }
            Err(error) => {
                trace.event(now_ms, &format!("{}: marking catching up: {error}", self.name));
                false
            }
        }
    }

    /// Bit rot on a machine that is down: one bit flipped inside the written part of one of
    /// its segments, or, `at_end`, inside the journal's last record (damage recovery refuses,
    /// after a crash as after a clean stop, unless the bit reads as a unit a write-back never
    /// wrote). With `copied_through`, a record after that sequence is left alone (it has no
    /// other copy), the draws being the same. What it flipped, if anything.
    pub fn rot(
        &mut self,
        prng: &mut Prng,
        at_end: bool,
        copied_through: Option<Sequence>,
    ) -> Option<String> {
        if !matches!(self.process, Process::Down(_)) {
            return None;
        }
        let files = self.disk.list().ok()?;
        let segments: Vec<&String> = files.iter().filter(|name| name.ends_with(".seg")).collect();
        if segments.is_empty() {
            return None;
        }
        let name = match segments.iter().max().filter(|_| at_end) {
            Some(newest) => (*newest).clone(),
            None => (*prng.pick(&segments)).clone(),
        };
        let bytes = self.disk.live_bytes(&name)?;
        let last = bytes.iter().rposition(|&byte| byte != 0)?;
        if last <= SEGMENT_HEADER_LEN {
            return None;
        }
        let (from, to) = match last_record(&bytes).filter(|_| at_end) {
            Some(record) => (record.start, record.end - 1),
            None => (SEGMENT_HEADER_LEN, last),
        };
        let offset = prng.range_inclusive(from as u64, to as u64) as usize;
        let mask = 1 << prng.below(8);
        if let Some(through) = copied_through
            && record_containing(&bytes, offset).is_none_or(|sequence| sequence > through)
        {
            return None;
        }
        self.disk.corrupt(&name, offset, mask);
        Some(format!("{name} byte {offset} bit mask {mask:#04x}"))
    }

    /// What this machine's disk has made durable (what a power loss now would leave), and
    /// the journal a scan of it finds; `None` for the scan when it fails.
    pub fn durable_journal(&self) -> (FaultStorage, Option<ringfence_journal::scan::Layout>) {
        let durable = self.disk.power_loss(None);
        let layout = ringfence_journal::scan::scan(&mut durable.clone()).ok();
        (durable, layout)
    }

    /// The last record this machine's journal would still hold after a power loss now: where
    /// a scan of the bytes its disk has made durable finds the journal's intact records end.
    pub fn durable_end(&self) -> Sequence {
        let (_, layout) = self.durable_journal();
        layout.and_then(|layout| layout.last_sequence()).unwrap_or(Sequence(0))
    }

    fn identity(&self, settings: &ClusterSettings) -> Identity {
        Identity {
            node: self.name.clone(),
            replication: self.name.clone(),
            http: None,
            max_failover_loss: self.bound(settings),
        }
    }

    /// The `--max-failover-loss` its process runs with: its own, unless the mutation leaves
    /// it out (the checkers still hold the node to it).
    fn bound(&self, settings: &ClusterSettings) -> Option<u64> {
        let ignored = settings.mutation == Mutation::IgnoresFailoverBound;
        self.max_failover_loss.filter(|_| !ignored)
    }

    /// Without a witness: starts in the role the operator gave it — primary if it is the one
    /// the operator calls primary, else that one's standby (`serve --role standby`).
    fn start_as_told(
        &mut self,
        now_ms: u64,
        settings: &ClusterSettings,
        primary: usize,
        trace: &mut Trace,
    ) {
        let Process::Candidate(candidate) = &mut self.process else { unreachable!() };
        let recovered = candidate.recovered.take().expect("recovered until started");
        let role = if primary == self.index {
            Role::Primary
        } else {
            Role::Standby { primary: ["a", "b"][primary].to_owned() }
        };
        let standby = matches!(role, Role::Standby { .. });
        if standby && !self.before_candidacy(&recovered, settings, now_ms, trace) {
            // As `serve` exits on the error: its supervisor starts it again.
            self.process = Process::Down(Down { restart_ms: now_ms + 1_000 });
            return;
        }
        trace.event(now_ms, &format!("{}: starts as {role:?} (the operator's choice)", self.name));
        self.launch(now_ms, settings, recovered, (role, None), trace);
    }

    fn decide(
        &mut self,
        now_ms: u64,
        settings: &ClusterSettings,
        witness: &Witness,
        trace: &mut Trace,
    ) {
        let me = self.identity(settings);
        let clock: Arc<dyn Clock> = Arc::clone(&self.clock) as Arc<dyn Clock>;
        let Process::Candidate(candidate) = &mut self.process else { unreachable!() };
        let startup = match candidate.startup.as_mut() {
            Some(startup) => startup,
            None => {
                let config = CoordinationConfig {
                    endpoints: Vec::new(),
                    node: me.node.clone(),
                    timing: settings.timing,
                    max_failover_loss: me.max_failover_loss,
                };
                let reached = witness.reached_from(self.index, &self.disk);
                match Startup::try_connect(config, Box::new(reached), clock) {
                    Ok(startup) => candidate.startup.insert(startup),
                    Err(_) => return,
                }
            }
        };
        let recovered = candidate.recovered.as_ref().expect("recovered until decided");
        let last = Sequence(recovered.next_sequence.0 - 1);
        let floor = recovered.epochs.current.0.max(recovered.epochs.promised.0);
        let catching_up = recovered.writer.data_dir().catching_up();
        let facts = driver::candidate_facts(last, floor, settings.mode, catching_up);
        let decided = match startup.decide_round(&me, &facts, &mut candidate.said) {
            Ok(Some(decided)) => decided,
            Ok(None) => return,
            Err(error) => {
                trace.event(now_ms, &format!("{}: candidate: {error}", self.name));
                return;
            }
        };
        let startup = candidate.startup.take().expect("connected");
        let recovered = candidate.recovered.take().expect("recovered");
        let what = match &decided {
            Decided::Primary { leader, .. } => format!("primary in epoch {}", leader.epoch),
            Decided::Standby { leader } => {
                format!("standby of {} (epoch {})", leader.node, leader.epoch)
            }
        };
        trace.event(now_ms, &format!("{}: starts as {what}", self.name));
        let role = match &decided {
            Decided::Primary { .. } => Role::Primary,
            Decided::Standby { leader } => Role::Standby { primary: leader.replication.clone() },
        };
        let coordinated = Some((startup, me, decided));
        self.launch(now_ms, settings, recovered, (role, coordinated), trace);
    }

    /// Starts the node in the role given, or, for a standby whose primary refused it for lack
    /// of retired records, first fetches the primary's snapshot (the journal is closed
    /// first: the snapshot replaces it).
    fn launch(
        &mut self,
        now_ms: u64,
        settings: &ClusterSettings,
        recovered: Recovered<FaultStorage>,
        start: Start,
        trace: &mut Trace,
    ) {
        let Role::Standby { primary } = &start.0 else {
            let started = self.start_node(now_ms, settings, recovered, start, None);
            return self.started(now_ms, started, trace);
        };
        if !self.fetch_at_start {
            let started = self.start_node(now_ms, settings, recovered, start, None);
            return self.started(now_ms, started, trace);
        }
        let primary = usize::from(primary != "a");
        trace.event(now_ms, &format!("{}: fetches the primary's snapshot", self.name));
        let fetching = Fetching::new(primary, start, recovered, now_ms);
        self.process = Process::Fetching(Box::new(fetching));
    }

    /// What a fetch came to: the snapshot is installed, the journal recovered from it, and
    /// the node started; after a failed fetch the node starts on its journal as it was, or,
    /// with a witness, exits.
    fn on_fetched(
        &mut self,
        now_ms: u64,
        fetched: Fetched,
        settings: &ClusterSettings,
        net: &mut Network,
        trace: &mut Trace,
    ) {
        // As `serve` does, a snapshot refused by its check is a failed fetch.
        let fetched = match fetched {
            Fetched::Waiting => return,
            Fetched::Done(fetched) => CheckedSnapshot::check(&self.disk, fetched),
            Fetched::Failed(error) => Err(error),
        };
        let down = Process::Down(Down { restart_ms: now_ms + RESTART_AFTER_EXIT_MS });
        let Process::Fetching(mut fetching) = std::mem::replace(&mut self.process, down) else {
            unreachable!("a fetch ends only while fetching")
        };
        fetching.close(net, self.index, now_ms);
        let Fetching { recovered, start, .. } = *fetching;
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(error) if settings.coordinated => {
                // As `serve` does with a witness: it exits, to be started again.
                return trace.event(now_ms, &format!("{}: exits: {error}", self.name));
            }
            Err(error) => {
                // As `serve` does without a witness: nothing was dropped, and the node starts
                // on its journal as a standby whose follower retries; refused again, it
                // restarts to fetch.
                trace.event(now_ms, &format!("{}: {error}; starts on its journal", self.name));
                self.fetch_at_start = false;
                self.fetches_failed += 1;
                let started = self.start_node(now_ms, settings, recovered, start, None);
                return self.started(now_ms, started, trace);
            }
        };
        let installed = self.install_fetched(settings, recovered, &fetched);
        match installed {
            Ok((recovered, end, unagreed)) => {
                self.snapshot_counts.unagreed += unagreed;
                self.fetch_at_start = false;
                self.snapshot_counts.installed += 1;
                // The node's history is the primary's now: what it applied before is gone, and
                // the state it starts from is checked against the primary's at `through`.
                let mut observed = self.observed.lock().expect("never poisoned");
                observed.hashes.clear();
                observed.hashes.insert(end.last_sequence.0, recovered.engine.running_hash());
                drop(observed);
                trace.event(
                    now_ms,
                    &format!(
                        "{}: installed the primary's snapshot through {}",
                        self.name, end.last_sequence
                    ),
                );
                let started = self.start_node(now_ms, settings, recovered, start, Some(end));
                self.started(now_ms, started, trace);
            }
            Err(error) => trace.event(now_ms, &format!("{}: exits: {error}", self.name)),
        }
    }

    /// As `serve` does: the snapshot's epoch is promised before its records are taken, then
    /// the journal is closed and replaced, and recovered from the snapshot.
    fn install_fetched(
        &self,
        settings: &ClusterSettings,
        recovered: Recovered<FaultStorage>,
        fetched: &CheckedSnapshot,
    ) -> Result<(Recovered<FaultStorage>, JournalEnd, u64), String> {
        standby::promise_epoch(recovered.writer.data_dir(), fetched.through_epoch)?;
        let last_sequence = Sequence(recovered.next_sequence.0 - 1);
        let end = JournalEnd { last_sequence, last_epoch: recovered.last_epoch };
        drop(recovered);
        // What `serve` keeps in `rollback/` first (the simulated disk has no directory for it).
        let history = fetched.history();
        let agreed = crate::replication::agreed_through(
            &mut self.disk.clone(),
            history,
            fetched.through,
            end,
        )?;
        assert!(agreed <= end.last_sequence, "agreed past the journal's end");
        let unagreed = end.last_sequence.0 - agreed.0;
        let end = crate::replication::install_snapshot(&self.disk, fetched, end)?;
        let options = Machine::options(settings);
        let recovered = recovery::recover_from(self.disk.clone(), options)
            .map_err(|e| format!("recovery after the snapshot: {e}"))?;
        Ok((recovered, end, unagreed))
    }

    /// The process runs its node, or, if it could not start it (as `serve` exits when it
    /// cannot store the epoch it took office in), its supervisor starts it again shortly.
    fn started(&mut self, now_ms: u64, started: Result<Running, String>, trace: &mut Trace) {
        self.process = match started {
            Ok(running) => {
                self.runs_started += 1;
                Process::Running(Box::new(running))
            }
            Err(error) => {
                trace.event(now_ms, &format!("{}: exits: {error}", self.name));
                Process::Down(Down { restart_ms: now_ms + RESTART_AFTER_EXIT_MS })
            }
        };
    }

    fn start_node(
        &mut self,
        now_ms: u64,
        settings: &ClusterSettings,
        recovered: Recovered<FaultStorage>,
        (role, coordinated): Start,
        from_snapshot: Option<JournalEnd>,
    ) -> Result<Running, String> {
        if !std::mem::take(&mut self.rejoin_next_run) {
            // Started by the operator or a supervisor: not one of a series of restarts.
            self.rejoin_series.0 = 0;
        }
        let standby_of = match &role {
            Role::Standby { primary } => Some(usize::from(primary != "a")),
            Role::Primary => None,
        };
        let snapshot_end = crate::replication::recovered_snapshot_end(&recovered.report);
        let Recovered { engine, next_sequence, last_epoch, mut epochs, writer, .. } = recovered;
        if let Some((_, _, Decided::Primary { leader, .. })) = &coordinated {
            // As `serve` does: the epoch taken with the leader key is stored before the node
            // journals in it.
            let epoch = Epoch(leader.epoch);
            if settings.mutation != Mutation::OfficeKeepsEpoch {
                take_office(writer.data_dir(), epoch)
                    .map_err(|e| format!("taking office in epoch {epoch}: {e}"))?;
            }
            epochs = writer.data_dir().epochs();
        } else if coordinated.is_none() && role == Role::Primary {
            // As `serve` does: without a witness, every run of a primary has its own epoch.
            start_primary_run(writer.data_dir())
                .map_err(|e| format!("storing this run's epoch: {e}"))?;
            epochs = writer.data_dir().epochs();
        }
        let clock: Arc<dyn Clock> = Arc::clone(&self.clock) as Arc<dyn Clock>;
        let mut replication = ReplicationConfig::new(
            "127.0.0.1:0".parse().expect("an address"),
            settings.cluster,
            settings.secret.clone(),
            settings.engine.clone(),
            std::path::PathBuf::from(format!("/sim/{}", self.name)),
        );
        replication.mode = settings.mode;
        replication.answers_after_sync = settings.durability == Durability::Batch;
        replication.timeout_ms = 400;
        replication.heartbeat_ms = 100;
        let journal_end = crate::replication::effective_end(
            next_sequence,
            last_epoch,
            from_snapshot.or(snapshot_end),
        );
        let end = (journal_end.last_sequence, journal_end.last_epoch);
        let dir = Box::new(writer.data_dir().clone());
        let control = Control::new(replication, role, end, dir, Arc::clone(&clock));
        let intake = if standby_of.is_some() { Intake::Replica } else { Intake::Sequencer };
        let config = NodeConfig {
            intake,
            epoch: epochs.current,
            tick_period_ms: 10,
            engine: settings.engine.clone(),
            ..NodeConfig::for_tests(Topology::Stepped)
        };
        let observer =
            Observer { observed: Arc::clone(&self.observed), skus: settings.skus.clone() };
        let (snapshotter, snapshots) = match &settings.snapshots {
            Some(policy) => {
                let dir = writer.data_dir().clone();
                let (snapshotter, writer) =
                    Snapshotter::stepped(dir, policy.clone(), settings.engine.clone());
                let stats = snapshotter.stats_handle();
                (Some(snapshotter), Some((writer, stats, (0, 0, 0))))
            }
            None => (None, None),
        };
        let hook = Hooks { observer, snapshotter };
        let replicator = control.link().stage();
        let parts = NodeParts { engine, next_sequence, journal: writer, replicator, hook, clock };
        let node =
            Node::start_parts(config, parts).map_err(|e| format!("starting the node: {e}"))?;
        // As `Control::start` does in `serve`.
        control.use_journal(node.promoter());
        let rejoin = Arc::new(Mutex::new(None));
        let asked = Arc::clone(&rejoin);
        let rejoin_fn = Box::new(move |reason: &str| {
            *asked.lock().expect("never poisoned") = Some(reason.to_owned());
        });
        let driver = match coordinated {
            Some((startup, me, decided)) => {
                let promoter = node.promoter();
                Some(Driver::new(startup, (me, decided), Arc::clone(&control), promoter, rejoin_fn))
            }
            None => {
                // As `serve` does without a witness: the control loop restarts a standby that
                // must rejoin.
                if let Role::Standby { .. } = control.role() {
                    let hold = RejoinSeries::hold_after(self.rejoin_series.0);
                    self.rejoin_series.1 = now_ms;
                    control.rejoin_with(rejoin_fn, hold);
                }
                None
            }
        };
        let clients = node.session().expect("a fresh node opens a session");
        let follower = standby_of.map(|primary| {
            let session = node.session().expect("a fresh node opens a session");
            Follower::new((self.index, primary), session, &control, journal_end, now_ms)
        });
        Ok(Running {
            node,
            control,
            driver,
            clients,
            accepted: BTreeMap::new(),
            followed_epoch: None,
            stood_down: false,
            follower,
            next_driver_ms: now_ms,
            rejoin,
            snapshots,
        })
    }

    fn run(
        &mut self,
        now_ms: u64,
        settings: &ClusterSettings,
        net: &mut Network,
        trace: &mut Trace,
    ) -> TickReport {
        let name = self.name.clone();
        let index = self.index;
        let nonce = nonce(&mut self.prng);
        let Process::Running(running) = &mut self.process else { unreachable!() };
        let mut report = TickReport::default();
        // A standby's follower may take its turn before the node has journaled and answered
        // what the follower handed it since its last turn, as its threads may run in
        // production; otherwise the node steps first.
        let early_turn = running.follower.is_some()
            && self.early_turns.as_mut().is_some_and(|turns| turns.chance(1, 2));
        if !early_turn {
            running.node.step();
        }
        running.control.tick();
        if now_ms >= running.next_driver_ms {
            running.next_driver_ms = now_ms + DRIVER_PERIOD_MS;
            let was_primary = running.control.is_primary();
            if let Some(driver) = running.driver.as_mut() {
                let was_handing_over = driver.pilot().state() == "handing_over";
                driver.step();
                if driver.pilot().state() == "handing_over"
                    && !was_handing_over
                    && let Some(fence) = running.node.promoter().journal_fence()
                {
                    let why = format!("its journal failed at {fence}");
                    trace.event(now_ms, &format!("{name}: hands over the leader key: {why}"));
                    self.failed_handovers += 1;
                }
                if was_handing_over && driver.pilot().state() == "leader" {
                    trace.event(now_ms, &format!("{name}: calls the switchover off"));
                    self.handovers_called_off += 1;
                }
                if driver.pilot().state() == "standby"
                    && !running.stood_down
                    && let Some(fence) = running.node.promoter().journal_fence()
                {
                    running.stood_down = true;
                    let why = format!("its journal failed at {fence} as a standby");
                    trace.event(now_ms, &format!("{name}: follows nobody: {why}"));
                    self.standbys_stood_down += 1;
                }
            }
            if running.control.is_primary() && !was_primary {
                let epoch = running.control.epoch();
                trace.event(now_ms, &format!("{name}: promoted to primary in epoch {epoch}"));
            }
        }
        if running.control.role() == Role::Primary
            && let Some(follower) = running.follower.take()
        {
            // Promoted (by the witness or by hand): the follower stops, as `Control`'s
            // promotion stops its thread.
            let last_epoch = follower.following.applied().submitted.last_epoch.0;
            running.followed_epoch = follower.received.then_some(last_epoch);
            if let Some((conn, _)) = follower.conn {
                net.close(conn, index, now_ms);
            }
        }
        running.serve_standbys(now_ms, settings, net, &self.disk, trace, &name);
        if let Some(follower) = running.follower.as_mut() {
            let at = (&*running.control, &self.disk);
            follower.tick(at, net, (index, nonce), settings, (now_ms, trace, &name));
            // The node steps before and after the follower, never during: what its journal
            // holds durably now is what it held when the follower acknowledged.
            let durable = running.node.sequences().durable;
            let applied = follower.following.applied();
            if follower.following.is_streaming()
                && applied.submitted.last_sequence > applied.answered
            {
                self.turns_with_records_unanswered += 1;
            }
            if follower.acknowledged > durable {
                let unheld = (follower.acknowledged, durable);
                self.acknowledged_unheld = self.acknowledged_unheld.or(Some(unheld));
            }
            if let Some(Stopped::Diverged { keep_through }) = follower.stopped {
                let end = &follower.following.applied().submitted;
                self.pending_truncate = Some((keep_through, (end.last_sequence, end.last_epoch)));
            }
            if follower.following.is_streaming() {
                self.told_before = None;
            }
            self.fetch_at_start |= follower.stopped == Some(Stopped::NeedsSnapshot);
        }
        running.node.step();
        if now_ms % SNAPSHOT_WRITER_PERIOD_MS == 0 {
            let pending = || {
                running.snapshots.as_ref().is_some_and(|(_, stats, _)| {
                    let stats = stats.get();
                    stats.pauses > stats.written + stats.failed
                })
            };
            if self.halt_at_next_snapshot.is_some() && pending() {
                // Its next sync points are the snapshot's and retention's: a crash mid-snapshot.
                let (after, power_loss) = self.halt_at_next_snapshot.take().expect("checked");
                self.arm_halt(after, power_loss);
            }
            let Process::Running(running) = &mut self.process else { unreachable!() };
            self.snapshot_counts =
                running.write_snapshot(self.snapshot_counts, now_ms, trace, &name);
        }
        let Process::Running(running) = &mut self.process else { unreachable!() };
        let epoch = running.node.epoch();
        while let Some(completion) = running.clients.poll() {
            report.completions.push((completion, epoch));
        }
        let rejoin = running.rejoin.lock().expect("never poisoned").take();
        if let Some(reason) = rejoin {
            // The driver's words when the key was taken and the promotion failed.
            self.promotions_failed += u64::from(reason.starts_with("promotion into epoch"));
            let how = if running.driver.is_some() {
                "as a candidate"
            } else {
                self.rejoin_restarts += 1;
                let (restarts, started_ms) = self.rejoin_series;
                let ran = std::time::Duration::from_millis(now_ms - started_ms);
                self.rejoin_series.0 = RejoinSeries::next_after(restarts, ran);
                self.rejoin_next_run = true;
                "to rejoin"
            };
            trace.event(now_ms, &format!("{name}: restarts {how}: {reason}"));
            self.crash(false, (now_ms, now_ms + 1), net);
        }
        report
    }

    /// Delivers one frame that arrived on `conn`.
    pub fn deliver(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        bytes: &[u8],
        settings: &ClusterSettings,
        net: &mut Network,
        trace: &mut Trace,
    ) {
        let name = self.name.clone();
        let index = self.index;
        let disk = self.disk.clone();
        if matches!(self.process, Process::Fetching(_)) {
            return self.deliver_to_fetch(now_ms, bytes, settings, net, trace);
        }
        let Process::Running(running) = &mut self.process else {
            net.close(conn, index, now_ms);
            return;
        };
        let message = match decode(bytes) {
            Ok(Some((message, used))) if used == bytes.len() => message,
            Ok(_) => {
                trace.event(now_ms, &format!("{name}: a frame that is not one message: closed"));
                net.close(conn, index, now_ms);
                return;
            }
            Err(error) => {
                trace.event(now_ms, &format!("{name}: bad frame ({error}): closed"));
                net.close(conn, index, now_ms);
                return;
            }
        };
        let is_follower = running
            .follower
            .as_ref()
            .is_some_and(|f| f.conn.as_ref().is_some_and(|(c, _)| *c == conn));
        if is_follower {
            let follower = running.follower.as_mut().expect("checked");
            let at = (&*running.control, &disk);
            follower.on_message(&message, at, net, settings, (now_ms, trace, &name));
        } else {
            running.on_standby_message(now_ms, conn, &message, net, &disk, trace, &name);
        }
    }

    /// A frame for a process fetching a snapshot.
    fn deliver_to_fetch(
        &mut self,
        now_ms: u64,
        bytes: &[u8],
        settings: &ClusterSettings,
        net: &mut Network,
        trace: &mut Trace,
    ) {
        let Process::Fetching(fetching) = &mut self.process else { unreachable!() };
        let fetched = match decode(bytes) {
            Ok(Some((message, used))) if used == bytes.len() => {
                fetching.on_message(now_ms, &message, (self.index, net), settings)
            }
            Ok(_) => Fetched::Failed("a frame that is not one message".into()),
            Err(error) => Fetched::Failed(format!("a bad frame: {error}")),
        };
        self.on_fetched(now_ms, fetched, settings, net, trace);
    }

    /// A standby connects to this machine: the shell accepts if a process runs here.
    pub fn accept(&mut self, conn: ConnId) -> bool {
        let nonce = nonce(&mut self.prng);
        let Some(running) = self.running_mut() else { return false };
        running
            .accepted
            .insert(conn, Accepted { session: PrimarySession::new(nonce), stream: None });
        true
    }

    /// The operator promotes this standby by hand (`ringfence promote`): its new epoch.
    pub fn promote(&mut self) -> Result<Epoch, String> {
        let running = self.running_mut().ok_or("not running")?;
        running.control.promote(&running.node, false)
    }

    /// What it waits for under coordination: as a candidate, or as a running node whose
    /// pilot waits (a standby that may not take the key).
    pub fn waiting(&self) -> Option<String> {
        match &self.process {
            Process::Candidate(candidate) => Some(candidate.said.clone()),
            Process::Running(running) => running.driver.as_ref()?.status().waiting,
            Process::Down(_) | Process::Fetching(_) => None,
        }
    }

    /// How many records its old primary had journaled beyond it, as the witness's `async`
    /// record said when it took the leader key (`/v1/node`'s `failover_loss_records`).
    pub fn failover_loss_records(&self) -> Option<u64> {
        self.running()?.driver.as_ref()?.status().failover_loss_records
    }

    /// What a candidate last said it waits for (empty before its first round).
    pub fn candidate_said(&self) -> Option<&str> {
        match &self.process {
            Process::Candidate(candidate) => Some(&candidate.said),
            _ => None,
        }
    }

    /// The operator switches this primary's acknowledgement mode (`ringfence replication
    /// --mode`): through the witness when the cluster has one (`async` is recorded there
    /// first), on the node's `Control` otherwise. The epoch it answers in.
    pub fn set_mode(&mut self, mode: AckMode) -> Result<Epoch, String> {
        let running = self.running_mut().ok_or("not running")?;
        if !running.control.is_primary() {
            return Err("the mode is set on the primary".into());
        }
        match running.driver.as_mut() {
            Some(driver) => driver.set_mode(mode)?,
            None => running.control.set_mode(mode),
        }
        Ok(running.control.epoch())
    }

    /// Asks the witness for a switchover to this (standby) machine, as `ringfence promote`
    /// does under coordination.
    pub fn request_switchover(&mut self) -> Result<(), String> {
        let running = self.running_mut().ok_or("not running")?;
        running.driver.as_mut().ok_or("no witness: nothing to switch over through")?.switchover()
    }
}

fn nonce(prng: &mut Prng) -> Nonce {
    let mut nonce = [0; 32];
    prng.fill(&mut nonce);
    nonce
}

pub(super) fn send(
    net: &mut Network,
    conn: ConnId,
    from: usize,
    message: &Message<'_>,
    now_ms: u64,
) {
    let mut frame = Vec::new();
    encode(message, &mut frame);
    net.send(conn, from, frame, now_ms);
}

impl Running {
    /// Runs the snapshot its hook asked for, if any, and reports what the writer did since
    /// last time; returns the run's counts, updated.
    fn write_snapshot(
        &mut self,
        counts: SnapshotCounts,
        now_ms: u64,
        trace: &mut Trace,
        name: &str,
    ) -> SnapshotCounts {
        let Some((writer, stats, seen)) = self.snapshots.as_mut() else { return counts };
        if !writer.step() {
            return counts;
        }
        let now = stats.get();
        let retired = now.segments_retired;
        let (written, failed) = (now.written - seen.0, now.failed - seen.1);
        let retired_now = retired - seen.2;
        *seen = (now.written, now.failed, retired);
        let what = match (&now.last, failed) {
            (_, 1..) => format!("snapshot failed: {}", now.last_error.clone().unwrap_or_default()),
            (Some(meta), _) => {
                format!("snapshot through {} ({retired_now} segments retired)", meta.through)
            }
            (None, _) => "snapshot written".to_owned(),
        };
        trace.event(now_ms, &format!("{name}: {what}"));
        SnapshotCounts {
            written: counts.written + written,
            failed: counts.failed + failed,
            segments_retired: counts.segments_retired + retired_now,
            installed: counts.installed,
            unagreed: counts.unagreed,
        }
    }

    /// The primary side of one frame from a standby (`primary.rs`'s `serve_standby` and
    /// `read_acks`).
    #[allow(clippy::too_many_arguments)]
    fn on_standby_message(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        message: &Message<'_>,
        net: &mut Network,
        disk: &FaultStorage,
        trace: &mut Trace,
        name: &str,
    ) {
        let me = usize::from(name != "a");
        let Some(accepted) = self.accepted.get_mut(&conn) else {
            net.close(conn, me, now_ms);
            return;
        };
        let journal_last = Sequence(self.control.stream_end(self.control.link().available()));
        // Only a join consults the journal (as in `primary.rs`); the others get an empty list
        // the session never reads.
        let mut index: Box<dyn JournalIndex> = if matches!(message, Message::Join(_)) {
            match DirIndex::over(disk.clone(), journal_last) {
                Ok(index) => Box::new(index),
                Err(error) => {
                    trace.event(now_ms, &format!("{name}: journal index: {error}"));
                    net.close(conn, me, now_ms);
                    return;
                }
            }
        } else {
            Box::new(EpochList::flat(0, 0))
        };
        let mut view = self.control.primary_view(&mut *index);
        view.journal_last = journal_last;
        match accepted.session.on_message(message, &mut view) {
            PrimaryStep::Reply(reply) => send(net, conn, me, &reply.message(), now_ms),
            PrimaryStep::Stream(start) => {
                send(net, conn, me, &Message::Start(start), now_ms);
                let stream = self.control.on_connected(name);
                accepted.stream = Some((stream, start.from_sequence));
                trace.event(
                    now_ms,
                    &format!("{name}: standby joined, streaming from {}", start.from_sequence),
                );
                // A newly joined standby replaces the previous stream.
                let old: Vec<ConnId> = self
                    .accepted
                    .iter()
                    .filter(|(c, a)| **c != conn && a.stream.is_some())
                    .map(|(c, _)| *c)
                    .collect();
                for old in old {
                    net.close(old, me, now_ms);
                }
            }
            PrimaryStep::SendSnapshot => {
                // `primary.rs`'s `send_snapshot`: the newest snapshot in chunks, then close.
                match SnapshotToSend::newest(&mut disk.clone()) {
                    Ok(mut snapshot) => {
                        let total = snapshot.len;
                        let (through, epoch) = (snapshot.through, snapshot.through_epoch);
                        let sent = snapshot.send_chunks(&mut |offset, chunk| {
                            let mut frame = Vec::with_capacity(chunk.len() + 64);
                            write_snapshot_chunk(&mut frame, through, epoch, total, offset, chunk)?;
                            net.send(conn, me, frame, now_ms);
                            Ok(())
                        });
                        let what = match sent {
                            Ok(()) => {
                                format!("{name}: sent snapshot {} ({total} bytes)", snapshot.name)
                            }
                            Err(error) => {
                                format!("{name}: sending snapshot {}: {error}", snapshot.name)
                            }
                        };
                        trace.event(now_ms, &what);
                    }
                    Err(error) => {
                        trace.event(now_ms, &format!("{name}: no snapshot to send: {error}"))
                    }
                }
                net.close(conn, me, now_ms);
            }
            PrimaryStep::Acknowledged(ack) => {
                let stream = accepted.stream.expect("acknowledgements come only when streaming").0;
                self.control.on_ack(stream, &ack);
            }
            PrimaryStep::Close { last, reason, deposed_by } => {
                if let Some(newer) = deposed_by {
                    self.control.depose(newer, "the standby");
                    trace.event(now_ms, &format!("{name}: deposed by epoch {newer}"));
                }
                if let Some(last) = last {
                    send(net, conn, me, &last.message(), now_ms);
                }
                trace.event(now_ms, &format!("{name}: closed a standby connection: {reason}"));
                net.close(conn, me, now_ms);
            }
        }
    }

    /// Streams the journal to each joined standby, heartbeats when idle or when the answers
    /// start or stop waiting for the standby, and forgets closed
    /// connections (`primary.rs`'s `send_records`).
    #[allow(clippy::too_many_arguments)]
    fn serve_standbys(
        &mut self,
        now_ms: u64,
        settings: &ClusterSettings,
        net: &mut Network,
        disk: &FaultStorage,
        trace: &mut Trace,
        name: &str,
    ) {
        let me = usize::from(name != "a");
        let closed: Vec<ConnId> =
            self.accepted.keys().copied().filter(|c| !net.is_open(*c, me, now_ms)).collect();
        for conn in closed {
            if let Some(Accepted { stream: Some((stream, _)), .. }) = self.accepted.remove(&conn) {
                self.control.on_disconnected(stream, "standby disconnected");
            }
        }
        let available = Sequence(self.control.stream_end(self.control.link().available()));
        let epoch = self.control.epoch();
        for (&conn, accepted) in &mut self.accepted {
            let Some((stream, next)) = accepted.stream.as_mut() else { continue };
            if *next <= available {
                let mut records = Vec::new();
                // A tail per read: `FaultStorage` hands a reader a copy of the segment, not a
                // map that sees later writes, so a kept tail would never see new records.
                let read = Tail::open(disk.clone(), *next)
                    .and_then(|mut tail| tail.read(available, &mut records, RECORDS_FRAME_BYTES));
                match read {
                    Ok(0) => {}
                    Ok(count) => {
                        let mut frame = Vec::with_capacity(records.len() + 32);
                        write_records(&mut frame, *next, count, &records)
                            .expect("a Vec takes every byte");
                        net.send(conn, me, frame, now_ms);
                        let through = Sequence(next.0 + u64::from(count) - 1);
                        accepted.session.on_sent(through, now_ms);
                        self.control.on_sent(*stream, through);
                        if settings.mutation == Mutation::AckUnsent {
                            let (written, durable) = (through, through);
                            let ack = Ack { written, durable, echo_ms: 0, catching_up: false };
                            self.control.on_ack(*stream, &ack);
                        }
                        *next = through.next();
                    }
                    Err(error) => {
                        trace.event(
                            now_ms,
                            &format!("{name}: reading the journal to stream: {error}"),
                        );
                        net.close(conn, me, now_ms);
                        continue;
                    }
                }
            }
            // Idle, or the answers now leave otherwise than the last heartbeat said.
            let (last, answering) = (Sequence(next.0 - 1), self.control.answering());
            if let Some(beat) =
                accepted.session.heartbeat_due(now_ms, 100, (epoch, last), answering)
            {
                send(net, conn, me, &Message::Heartbeat(beat), now_ms);
            }
        }
    }
}

impl Follower {
    fn new(
        (me, primary): (usize, usize),
        node: Session,
        control: &Control,
        submitted: JournalEnd,
        now_ms: u64,
    ) -> Follower {
        let following = Following::new(control, ["a", "b"][primary], Applied::at(submitted));
        Follower {
            me,
            node,
            primary,
            conn: None,
            following,
            backlog: VecDeque::new(),
            handshake_deadline_ms: 0,
            next_attempt_ms: now_ms,
            stopped: None,
            received: false,
            acknowledged: Sequence(0),
        }
    }

    /// Closes the connection and carries out what the follower does next: pause before the
    /// next attempt, or stop.
    fn after(&mut self, next: Next, net: &mut Network, (now_ms, trace, name): Said<'_>) {
        assert_ne!(next, Next::Stream, "a stream goes on over its connection");
        if let Some((conn, _)) = self.conn.take() {
            net.close(conn, self.me, now_ms);
        }
        self.backlog.clear();
        match next {
            Next::Stop(why) => {
                trace.event(now_ms, &format!("{name}: stopped following: {why:?}"));
                self.stopped = Some(why);
            }
            _ => self.next_attempt_ms = now_ms + self.following.pause_ms(),
        }
    }

    /// The stream ended, `result` saying why when it broke.
    fn end_stream(
        &mut self,
        control: &Control,
        result: Result<(), String>,
        net: &mut Network,
        (now_ms, trace, name): Said<'_>,
    ) {
        if let Err(error) = &result {
            trace.event(now_ms, &format!("{name}: the stream ended: {error}"));
        }
        let next = self.following.stream_ended(control, result, now_ms);
        self.after(next, net, (now_ms, trace, name));
    }

    /// The attempt to join came to `answer`.
    fn answered(
        &mut self,
        answer: Answer,
        (control, disk): (&Control, &FaultStorage),
        net: &mut Network,
        (now_ms, trace, name): Said<'_>,
    ) {
        let said = format!("{name}: the join came to {answer:?}");
        let disk = || Ok::<_, JournalError>(disk.clone());
        match self.following.on_answer(control, answer, disk, now_ms) {
            Next::Stream => assert!(self.backlog.is_empty(), "a backlog left from a stream"),
            next => {
                trace.event(now_ms, &said);
                self.after(next, net, (now_ms, trace, name));
            }
        }
    }

    /// One turn of the follower: a stream takes what its node answered and acknowledges it; a
    /// handshake may time out; between connections, the next attempt comes when its pause is
    /// over.
    fn tick(
        &mut self,
        (control, disk): (&Control, &FaultStorage),
        net: &mut Network,
        (me, nonce): (usize, Nonce),
        settings: &ClusterSettings,
        said: Said<'_>,
    ) {
        let (now_ms, trace, name) = said;
        if self.stopped.is_some() {
            return;
        }
        if let Some((conn, _)) = &self.conn
            && !net.is_open(*conn, self.me, now_ms)
        {
            let closed = "the primary's connection closed".to_owned();
            if self.following.is_streaming() {
                return self.end_stream(control, Err(closed), net, (now_ms, trace, name));
            }
            return self.answered(
                Answer::Failed(closed),
                (control, disk),
                net,
                (now_ms, trace, name),
            );
        }
        if self.following.is_streaming() {
            return self.stream_turn(control, net, (now_ms, trace, name));
        }
        if self.conn.is_some() {
            if now_ms >= self.handshake_deadline_ms {
                let late = Answer::Failed("the handshake timed out".to_owned());
                self.answered(late, (control, disk), net, (now_ms, trace, name));
            }
            return;
        }
        if now_ms < self.next_attempt_ms {
            return;
        }
        let (journaled, promised) = self.following.attempt(control);
        let Some(conn) = net.connect(me, self.primary) else {
            let refused = Answer::Failed("the connection was refused".to_owned());
            return self.answered(refused, (control, disk), net, (now_ms, trace, name));
        };
        let position = StandbyPosition {
            last_sequence: journaled.last_sequence,
            last_epoch: journaled.last_epoch,
            promised,
        };
        let engine = settings.engine.clone();
        let purpose = Purpose::Join(position);
        let (session, hello) =
            StandbySession::start(settings.cluster, engine, nonce, purpose, promised);
        send(net, conn, me, &hello.message(), now_ms);
        self.conn = Some((conn, session));
        self.handshake_deadline_ms = now_ms + HANDSHAKE_TIMEOUT_MS;
    }

    /// A turn of the stream: hands the node what its ring takes of the backlog, then
    /// acknowledges what it answered, unless the primary fell silent.
    fn stream_turn(&mut self, control: &Control, net: &mut Network, said: Said<'_>) {
        let (now_ms, ..) = said;
        let turn = self.submit_backlog().and_then(|()| {
            let (_, session) = self.conn.as_mut().expect("a stream has its connection");
            self.following.turn(control, session, &mut self.node, now_ms)
        });
        let (conn, _) = self.conn.as_ref().expect("a stream has its connection");
        let ended = turn.and_then(|Turn { ack, next }| {
            if let Some(ack) = ack {
                self.acknowledged = self.acknowledged.max(ack.written).max(ack.durable);
                send(net, *conn, self.me, &Message::Ack(ack), now_ms);
            }
            next.map(|_| ())
        });
        if let Err(error) = ended {
            self.end_stream(control, Err(error), net, said);
        }
    }

    /// A message from the primary on the follower's connection.
    fn on_message(
        &mut self,
        message: &Message<'_>,
        (control, disk): (&Control, &FaultStorage),
        net: &mut Network,
        settings: &ClusterSettings,
        said: Said<'_>,
    ) {
        let (now_ms, trace, name) = said;
        let Some((conn, session)) = self.conn.as_mut() else { return };
        let conn = *conn;
        if !self.following.is_streaming() {
            let step = session.on_message(message, &settings.secret, &settings.cluster);
            match Answer::of_step(step) {
                Handshaking::Reply(reply) => send(net, conn, self.me, &reply.message(), now_ms),
                Handshaking::Answered { answer, last } => {
                    if let Some(last) = last {
                        send(net, conn, self.me, &last.message(), now_ms);
                    }
                    self.answered(answer, (control, disk), net, (now_ms, trace, name));
                }
            }
            return;
        }
        let submitted = match self.following.on_message(control, session, message, now_ms) {
            Step::Submit => {
                let Message::Records(records) = message else { unreachable!("records") };
                self.backlog.extend(records.iter().map(<[u8]>::to_vec));
                self.submit_backlog()
            }
            Step::Continue => Ok(()),
            Step::Close { last, reason } => {
                if let Some(last) = last {
                    send(net, conn, self.me, &last.message(), now_ms);
                }
                trace.event(now_ms, &format!("{name}: follower closed: {reason}"));
                Err(reason)
            }
        };
        if let Err(error) = submitted {
            self.end_stream(control, Err(error), net, (now_ms, trace, name));
        }
    }

    /// Submits what the node's ring takes of the backlog, taking the node's answers once when
    /// it is full (as `standby.rs`'s `submit` does before it waits); `Err` when the node
    /// refused a record or failed one.
    fn submit_backlog(&mut self) -> Result<(), String> {
        let applied = self.following.applied_mut();
        let mut collected = false;
        while let Some(bytes) = self.backlog.front() {
            if applied.try_submit(&mut self.node, bytes)? {
                self.received = true;
                self.backlog.pop_front();
            } else if collected {
                return Ok(());
            } else {
                applied.collect(&mut self.node)?;
                collected = true;
            }
        }
        Ok(())
    }
}

/// The time, the trace and the machine's name, for a follower's events.
type Said<'a> = (u64, &'a mut Trace, &'a str);

/// The records `from..=through` as the journal framed them, for the byte comparison of two
/// journals.
pub fn journal_records(
    disk: &FaultStorage,
    from: Sequence,
    through: Sequence,
) -> Result<Vec<Vec<u8>>, String> {
    if from > through {
        return Ok(Vec::new());
    }
    let mut tail = Tail::open(disk.clone(), from).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut bytes = Vec::new();
    while tail.next() <= through {
        bytes.clear();
        let count = tail.read(through, &mut bytes, 1 << 20).map_err(|e| e.to_string())?;
        if count == 0 {
            break;
        }
        let mut at = 0;
        while at < bytes.len() {
            let (_, len) =
                ringfence_core::record::check(&bytes[at..]).map_err(|e| format!("{e:?}"))?;
            out.push(bytes[at..at + len].to_vec());
            at += len;
        }
    }
    Ok(out)
}

/// The first sequence a refused recovery names as damaged, if it refused for damage.
fn damaged_at<T>(recovered: &Result<T, JournalError>) -> Option<Sequence> {
    match recovered {
        Err(JournalError::Corrupt { sequence, .. }) => Some(*sequence),
        Err(JournalError::EndMoved { from, .. }) => Some(*from),
        _ => None,
    }
}

/// The sequence of the intact record of a segment's `bytes` that holds byte `offset`, if one
/// does.
fn record_containing(bytes: &[u8], offset: usize) -> Option<Sequence> {
    let mut at = SEGMENT_HEADER_LEN;
    while let Some((header, len)) = ringfence_journal::format::check_record(&bytes[at..]) {
        if offset < at + len {
            return (offset >= at).then_some(header.sequence);
        }
        at += len;
    }
    None
}

/// The byte range of the last intact record of a segment's `bytes`, if it holds one.
fn last_record(bytes: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut at = SEGMENT_HEADER_LEN;
    let mut last = None;
    while let Some((_, len)) = ringfence_journal::format::check_record(&bytes[at..]) {
        last = Some(at..at + len);
        at += len;
    }
    last
}
