//! The node: builds the ring and its dependency graph, puts the stage cores under a driver —
//! threads with pinning and waiting (`parallel`, `compact`) or the caller's own calls to
//! [`Node::step`] (`stepped`) — hands out sessions, reports sequences and metrics, and shuts
//! down cleanly.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use disruptor::{BusySpin, build_multi_producer};

use super::clock::{Clock, SystemClock};
use super::completions::completion_queue;
use super::config::{EgressDriver, Intake, NodeConfig, NodeConfigError, Topology};
use super::egress::{self, Egress, EgressRun, PolledEgress};
use super::messages::{Control, Reply, StageFailure};
use super::metrics::{Metrics, StageMetrics};
use super::session::{Refused, RingProducer, Session, publish_one};
use super::shared::{Shared, panic_message};
use super::slot::{RingPoller, Slot, SlotKind};
use super::stage::{Journal, NoSnapshots, Replicator, SnapshotHook};
use super::stages::{
    Blp, Journaler, Processor, Replication, StageCore, StagePlace, Step, StepStage, Work,
    publish_next_due, publish_tick_if_due, run_stage, run_timer,
};
use super::wait::{Parker, WakeHook};
use crate::command::Command;
use crate::engine::Engine;
use crate::types::{Epoch, Sequence, Timestamp};

/// After a drain times out and the node is failed, how long stages get to notice and exit
/// before `shutdown` gives up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Why a node could not start, or what stopped it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is invalid.
    #[error("invalid node configuration: {0}")]
    Config(#[from] NodeConfigError),
    /// The first sequence does not follow the recovered engine's last one.
    #[error(
        "next sequence {next} must be at least 1 and above the engine's last sequence {last}: \
         start from the journal's last sequence plus one"
    )]
    Sequence {
        /// The sequence asked for.
        next: Sequence,
        /// The engine's last applied sequence.
        last: Sequence,
    },
    /// The operating system refused a thread.
    #[error("could not start thread for stage `{stage}`: {source}")]
    Spawn {
        /// The stage.
        stage: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// `sessions_max` sessions are open.
    #[error("{max} sessions are open, the configured maximum: close one or raise sessions_max")]
    TooManySessions {
        /// The limit.
        max: u32,
    },
    /// The node is shutting down or shut down.
    #[error("the node is shut down")]
    ShutDown,
    /// Only a replica can be promoted.
    #[error("this node already sequences its own commands: only a standby can be promoted")]
    NotReplica,
    /// A promotion must raise the epoch.
    #[error("promotion to epoch {epoch} does not raise the current epoch {current}")]
    EpochNotRaised {
        /// The epoch asked for.
        epoch: Epoch,
        /// The node's epoch.
        current: Epoch,
    },
    /// A stage failed and the node stopped (or a shutdown could not drain).
    #[error("{0}")]
    Failed(StageFailure),
    /// The journal did not sync what the node journaled within the time given
    /// ([`Promoter::sync_journal`]).
    #[error(
        "the journal did not sync through sequence {through} within {waited_ms} ms (synced \
         through {synced}): a disk this slow, or failing, should not take office"
    )]
    SyncTimedOut {
        /// The sequence the sync had to reach.
        through: Sequence,
        /// How far it reached.
        synced: Sequence,
        /// How long it was given.
        waited_ms: u64,
    },
    /// A stepped node's journal, with nothing left to read, synced short of what it had to
    /// reach ([`Promoter::sync_journal`]): stepping again would ask the same of the disk.
    #[error(
        "the journal did not sync through sequence {through} (synced through {synced}): its \
         disk completed a sync short of it, and a disk that does so should not take office"
    )]
    SyncStalled {
        /// The sequence the sync had to reach.
        through: Sequence,
        /// How far it reached.
        synced: Sequence,
    },
    /// The journal failed while the node ran (`Refused::JournalFailed`): the shutdown answered
    /// every command, but the engine's state is not handed back, since it may hold commands
    /// the journal never made durable. The journal is what recovery starts from.
    #[error("the journal failed at sequence {fence} ({cause}); recover by starting from it")]
    JournalFailed {
        /// The first sequence the journal could not make durable.
        fence: Sequence,
        /// Why.
        cause: Arc<str>,
    },
}

/// What a clean shutdown leaves.
pub struct ShutdownReport {
    /// The BLP's state after the last command: for a final snapshot or a check.
    pub engine: Engine,
    /// The last sequence journaled, applied and answered.
    pub last_sequence: Sequence,
    /// Final metrics.
    pub metrics: Metrics,
}

/// Every stage's position: journal sequences, and the ring positions that reads share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sequences {
    /// Ring positions published by producers (every submission and tick; reads included).
    pub published: u64,
    /// Last appended by the journaler.
    pub journaled: Sequence,
    /// Last the journal reported durable.
    pub durable: Sequence,
    /// Last handed to the replicator.
    pub replicated: Sequence,
    /// Last the replicator reports safe.
    pub replication_safe: Sequence,
    /// Last applied by the BLP.
    pub applied: Sequence,
    /// Ring positions the BLP has passed.
    pub applied_positions: u64,
    /// Last released by egress.
    pub released: Sequence,
    /// Ring positions egress has passed.
    pub released_positions: u64,
}

/// What one [`Node::step`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Slots the processor read (commands, reads, ticks).
    pub processed: u64,
    /// Slots egress released.
    pub released: u64,
    /// Whether a due tick was published first.
    pub ticked: bool,
    /// How long, by the node's clock, until the earliest payment deadline comes due (zero if
    /// it is due already), or `None` while no order awaits payment: when the driver must step
    /// the node again even if nothing is submitted meanwhile.
    pub next_due: Option<Duration>,
}

/// Everything a node is built from besides its configuration.
pub struct NodeParts<J, R, H> {
    /// The engine: fresh, or recovered from a snapshot and the journal.
    pub engine: Engine,
    /// The journal sequence of the first command this node journals (the journal's last
    /// sequence plus one).
    pub next_sequence: Sequence,
    /// The journaler.
    pub journal: J,
    /// The replicator.
    pub replicator: R,
    /// Called on the BLP thread after every journaled command and at snapshot requests.
    pub hook: H,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
}

struct StageThread {
    name: &'static str,
    handle: JoinHandle<Option<Engine>>,
}

/// The processor and a producer of a stepped node, advanced by [`Node::step`].
struct Stepped {
    stage: Option<Box<dyn StepStage>>,
    /// The engine, once the processor read the stop marker.
    engine: Option<Engine>,
    ticker: RingProducer,
}

/// Promotes a replica node in place from any thread ([`Node::promoter`]).
#[derive(Clone)]
pub struct Promoter {
    shared: Arc<Shared>,
    /// A stepped node's processor, which [`Promoter::sync_journal`] runs itself.
    stepped: Option<Arc<Mutex<Stepped>>>,
}

/// Why a sync asked of the journal will never complete, if it will not: the node failed, or
/// its journal is fenced. A fenced journal flushes and syncs nothing more (its state after a
/// failed write or sync is not trusted for more): what it has not synced by now it never
/// will, and a node whose journal failed takes no writes anyway. Waiting out a timeout would
/// only delay the refusal.
fn sync_refusal(shared: &Shared) -> Option<NodeError> {
    if let Some(failure) = shared.failure() {
        return Some(NodeError::Failed(failure));
    }
    let fence = shared.journal_fence()?;
    let cause = shared.journal_fault().unwrap_or_else(|| "a write failed".into());
    Some(NodeError::JournalFailed { fence, cause })
}

/// [`Promoter::sync_journal`] on a stepped node: steps its processor on this thread until the
/// journal has synced through `through`. Once nothing is left to read, the idle journal syncs
/// what was asked; if its disk synced short of it, stepping again would ask the same, so
/// that is said at once. No clock is read: a stepped run stays a function of its inputs.
fn sync_stepped(
    shared: &Shared,
    stepped: &Mutex<Stepped>,
    through: Sequence,
) -> Result<(), NodeError> {
    while shared.synced.get() < through {
        if let Some(refusal) = sync_refusal(shared) {
            return Err(refusal);
        }
        let mut stepped = stepped.lock().expect("a stepped node is not stepped after a panic");
        let Some(stage) = stepped.stage.as_mut() else {
            return Err(NodeError::ShutDown);
        };
        match stage.step(shared) {
            Step::Worked(_) => continue,
            Step::Idle => stage.idle(shared),
            // Shutting down: `Node::step` finishes the stage.
            Step::Stopped => return Err(NodeError::ShutDown),
        }
        let synced = shared.synced.get();
        if synced < through {
            return Err(sync_refusal(shared).unwrap_or(NodeError::SyncStalled { through, synced }));
        }
    }
    Ok(())
}

impl Promoter {
    /// Makes every record the replica was given, and every record the journal has appended,
    /// durable on its disk, whatever the durability policy, before it returns: a standby
    /// about to take office then holds everything it acknowledged to its primary, and a
    /// primary about to stop counting on its standby everything the pair acknowledged, even
    /// across a power loss right after (under `none` an acknowledgement said only "written").
    /// Waits up to `timeout` for the journaling stage of a threaded node; a stepped node's is
    /// run here, on the caller's thread, and refuses with [`NodeError::SyncStalled`] as soon as
    /// its journal goes idle short of the sync, without reading a clock. Returns the last
    /// sequence synced; refuses at once with [`NodeError::JournalFailed`] once the journal is
    /// fenced, which syncs nothing more.
    pub fn sync_journal(&self, timeout: Duration) -> Result<Sequence, NodeError> {
        let shared = &*self.shared;
        // Every record a replica was given (the last one the producer let through), and every
        // record a sequencer journaled: nothing is acknowledged before it is appended.
        let given = Sequence(shared.next_record.load(Ordering::Acquire).saturating_sub(1));
        let through = given.max(shared.appended.get());
        shared.sync_requested.advance(through);
        match &self.stepped {
            Some(stepped) => sync_stepped(shared, stepped, through)?,
            None => {
                let deadline = Instant::now() + timeout;
                while shared.synced.get() < through {
                    if let Some(refusal) = sync_refusal(shared) {
                        return Err(refusal);
                    }
                    shared.wake_stages();
                    std::thread::sleep(Duration::from_micros(200));
                    if Instant::now() >= deadline && shared.synced.get() < through {
                        let waited_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
                        let synced = shared.synced.get();
                        return Err(NodeError::SyncTimedOut { through, synced, waited_ms });
                    }
                }
            }
        }
        Ok(through)
    }

    /// Where the journal failed, once it did: the first command it could not make durable.
    /// From it on every command is answered `NotDurable` and writes are refused until the
    /// node is restarted ([`Metrics::journal_fence`]).
    #[must_use]
    pub fn journal_fence(&self) -> Option<Sequence> {
        self.shared.journal_fence()
    }

    /// Milliseconds between the node's command stamps and its clock: after a promotion, how
    /// far this machine's clock stands from the time line the node took over
    /// ([`Metrics::time_shift_ms`]).
    #[must_use]
    pub fn time_shift_ms(&self) -> i64 {
        self.shared.time_line.shift_ms()
    }

    /// [`Node::promote`].
    pub fn promote(&self, epoch: Epoch) -> Result<(), NodeError> {
        if let Some(failure) = self.shared.failure() {
            return Err(NodeError::Failed(failure));
        }
        if self.shared.is_closed() {
            return Err(NodeError::ShutDown);
        }
        if self.shared.intake() != Intake::Replica {
            return Err(NodeError::NotReplica);
        }
        if epoch <= self.shared.epoch() {
            return Err(NodeError::EpochNotRaised { epoch, current: self.shared.epoch() });
        }
        self.shared.promote(epoch);
        Ok(())
    }
}

/// A running node. See the module documentation of [`crate::pipeline`] for the API's shape.
pub struct Node {
    shared: Arc<Shared>,
    producer: Option<RingProducer>,
    threads: Vec<StageThread>,
    timer: Option<JoinHandle<()>>,
    egress: Option<Arc<PolledEgress>>,
    stepped: Option<Arc<Mutex<Stepped>>>,
    drain_timeout: Duration,
    stopped: bool,
}

impl Node {
    /// Starts a node with an empty engine at sequence 1 and no snapshot hook.
    pub fn start<J: Journal, R: Replicator>(
        config: NodeConfig,
        journal: J,
        replicator: R,
    ) -> Result<Node, NodeError> {
        config.validate()?;
        let engine = Engine::new(config.engine.clone());
        Node::start_with(config, engine, Sequence(1), journal, replicator, NoSnapshots)
    }

    /// Starts a node from a recovered `engine`, numbering commands from `next_sequence` (the
    /// journal's last sequence plus one), calling `snapshot_hook` on the BLP thread after every
    /// journaled command, on the system clock. `config.engine` is not used: the engine keeps
    /// its own configuration.
    pub fn start_with<J: Journal, R: Replicator, H: SnapshotHook>(
        config: NodeConfig,
        engine: Engine,
        next_sequence: Sequence,
        journal: J,
        replicator: R,
        snapshot_hook: H,
    ) -> Result<Node, NodeError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let parts =
            NodeParts { engine, next_sequence, journal, replicator, hook: snapshot_hook, clock };
        Node::start_parts(config, parts)
    }

    /// Starts a node from its parts: the general form of [`Node::start_with`], with the clock
    /// chosen by the caller (a [`super::ManualClock`] for a test or the simulator).
    pub fn start_parts<J: Journal, R: Replicator, H: SnapshotHook>(
        config: NodeConfig,
        parts: NodeParts<J, R, H>,
    ) -> Result<Node, NodeError> {
        config.validate()?;
        let NodeParts { engine, next_sequence, journal, replicator, hook, clock } = parts;
        let last = engine.last_sequence();
        if next_sequence.0 == 0 || next_sequence <= last {
            return Err(NodeError::Sequence { next: next_sequence, last });
        }
        let (control, control_rx) = mpsc::channel();
        let safe = replicator.safe();
        let hold = replicator.hold();
        let time = (clock, engine.now());
        let shared = Arc::new(Shared::new(&config, next_sequence, safe, hold, time, control));
        publish_next_due(&engine, &shared);
        // An acknowledgement read on another thread releases answers at once.
        let parker = Arc::clone(&shared.egress_parker);
        let _ = shared.safe.set_wake_hook(Arc::new(move || parker.wake()));
        let mut node = Node {
            shared,
            producer: None,
            threads: Vec::new(),
            timer: None,
            egress: None,
            stepped: None,
            drain_timeout: Duration::from_millis(config.drain_timeout_ms),
            stopped: false,
        };
        let frame = J::NEEDS_BYTES || R::NEEDS_BYTES;
        let journaler = Journaler { journal, frame };
        let replication = Replication { replicator };
        let blp = Blp::new(engine, hook);
        let started = match node.shared.topology {
            Topology::Parallel => {
                node.start_parallel(&config, journaler, replication, blp, control_rx)
            }
            Topology::Compact | Topology::Stepped => {
                let processor = Processor { journaler, replication, blp, phase: "blp" };
                node.start_compact(&config, processor, control_rx)
            }
        };
        if let Err(error) = started.and_then(|()| node.start_timer(&config)) {
            let _ = node.stop();
            return Err(error);
        }
        Ok(node)
    }

    fn start_parallel<J: Journal, R: Replicator, H: SnapshotHook>(
        &mut self,
        config: &NodeConfig,
        journaler: Journaler<J>,
        replication: Replication<R>,
        blp: Blp<H>,
        control: mpsc::Receiver<Control>,
    ) -> Result<(), NodeError> {
        // The journaler reads the producer's barrier and frames each record once; replicator
        // and BLP read behind it side by side (the replicator sends the journaler's bytes; the
        // BLP waits for appends, never for a sync); egress reads behind both; producers wait
        // for egress before reusing a slot.
        let builder = build_multi_producer(config.ring_size, Slot::empty, BusySpin);
        let (journal_poller, builder) = builder.new_event_poller();
        let (replicator_poller, builder) = builder.and_then().new_event_poller();
        let (blp_poller, builder) = builder.new_event_poller();
        let (egress_poller, builder) = builder.and_then().new_event_poller();
        self.producer = Some(builder.build());
        let shared = &self.shared;
        let journaler =
            StageCore::new("journaler", journal_poller, journaler, shared).upstream_of_stages();
        let replication = StageCore::new("replicator", replicator_poller, replication, shared);
        let blp = StageCore::new("blp", blp_poller, blp, shared);
        let pins = config.pins;
        self.spawn_stage(journaler, 0, pins.journaler)?;
        self.spawn_stage(replication, 1, pins.replicator)?;
        self.spawn_stage(blp, 2, pins.blp)?;
        let egress = Egress::new(egress_poller, Arc::clone(&self.shared), control);
        self.start_egress(config, Box::new(egress))
    }

    fn start_compact<J: Journal, R: Replicator, H: SnapshotHook>(
        &mut self,
        config: &NodeConfig,
        processor: Processor<J, R, H>,
        control: mpsc::Receiver<Control>,
    ) -> Result<(), NodeError> {
        // One processor reads the producer's barrier; egress reads behind it.
        let builder = build_multi_producer(config.ring_size, Slot::empty, BusySpin);
        let (processor_poller, builder) = builder.new_event_poller();
        let (egress_poller, builder) = builder.and_then().new_event_poller();
        let producer = builder.build();
        let processor = StageCore::new("processor", processor_poller, processor, &self.shared);
        if self.shared.topology == Topology::Stepped {
            let stage: Box<dyn StepStage> = Box::new(processor);
            let ticker = producer.clone();
            let stepped = Stepped { stage: Some(stage), engine: None, ticker };
            self.stepped = Some(Arc::new(Mutex::new(stepped)));
        } else {
            self.spawn_stage(processor, 0, config.pins.blp)?;
        }
        self.producer = Some(producer);
        let egress = Egress::new(egress_poller, Arc::clone(&self.shared), control);
        self.start_egress(config, Box::new(egress))
    }

    fn spawn_stage<P: RingPoller, W: Work>(
        &mut self,
        stage: StageCore<P, W>,
        parker: usize,
        core: Option<usize>,
    ) -> Result<(), NodeError> {
        let name = stage.name();
        let place = StagePlace { parker, core };
        let shared = Arc::clone(&self.shared);
        let handle = thread::Builder::new()
            .name(format!("rf-{name}"))
            .spawn(move || run_stage(stage, &shared, &place))
            .map_err(|source| NodeError::Spawn { stage: name, source })?;
        self.threads.push(StageThread { name, handle });
        Ok(())
    }

    fn start_egress(
        &mut self,
        config: &NodeConfig,
        egress: Box<dyn EgressRun>,
    ) -> Result<(), NodeError> {
        if self.shared.egress_polled {
            self.egress = Some(Arc::new(PolledEgress::new(egress, Arc::clone(&self.shared))));
            return Ok(());
        }
        assert_eq!(config.egress, EgressDriver::Thread);
        let shared = Arc::clone(&self.shared);
        let core = config.pins.egress;
        let handle = thread::Builder::new()
            .name("rf-egress".to_owned())
            .spawn(move || {
                egress::run_thread(egress, &shared, core);
                None
            })
            .map_err(|source| NodeError::Spawn { stage: "egress", source })?;
        self.threads.push(StageThread { name: "egress", handle });
        Ok(())
    }

    fn start_timer(&mut self, config: &NodeConfig) -> Result<(), NodeError> {
        // A stepped node's ticks are published by `step`, on the caller's thread.
        if config.tick_period_ms == 0 || self.stepped.is_some() {
            return Ok(());
        }
        let producer = self.producer.as_ref().expect("the ring is built before the timer").clone();
        let shared = Arc::clone(&self.shared);
        let period = Duration::from_millis(config.tick_period_ms);
        let handle = thread::Builder::new()
            .name("rf-timer".to_owned())
            .spawn(move || run_timer(producer, &shared, period))
            .map_err(|source| NodeError::Spawn { stage: "timer", source })?;
        self.timer = Some(handle);
        Ok(())
    }

    /// Advances a [`Topology::Stepped`] node on the calling thread: publishes a `Tick` if the
    /// clock has reached a payment deadline, lets the processor handle everything published,
    /// then releases every answer that is safe. Does nothing for threaded topologies.
    pub fn step(&self) -> StepReport {
        let Some(stepped) = &self.stepped else { return StepReport::default() };
        let shared = &*self.shared;
        let mut stepped = stepped.lock().expect("a stepped node is not stepped after a panic");
        let mut report = StepReport::default();
        if stepped.stage.is_some() {
            let before = shared.ticks_published.load(Ordering::Relaxed);
            publish_tick_if_due(&mut stepped.ticker, shared);
            report.ticked = shared.ticks_published.load(Ordering::Relaxed) > before;
        }
        while let Some(stage) = stepped.stage.as_mut() {
            match stage.step(shared) {
                Step::Worked(read) => report.processed += read,
                Step::Idle => {
                    stage.idle(shared);
                    break;
                }
                Step::Stopped => {
                    let stage = stepped.stage.take().expect("checked above");
                    stepped.engine = stage.finish(shared);
                }
            }
        }
        drop(stepped);
        report.released = self.poll_egress();
        let due_ms = shared.next_due_ms.load(Ordering::Acquire);
        if due_ms != u64::MAX {
            let now_ms = shared.stamp(shared.clock.now_ns()).0;
            report.next_due = Some(Duration::from_millis(due_ms.saturating_sub(now_ms)));
        }
        report
    }

    /// [`Node::step`] for the owner of `session` who polls it next, as an event loop does
    /// after each step: as in [`Session::poll`], the answers the step releases to `session` do
    /// not also fire its notify hook, which would only turn the loop once more for nothing.
    /// The next `poll` that finds nothing arms the hook again.
    pub fn step_for(&self, session: &Session) -> StepReport {
        session.disarm_notify();
        self.step()
    }

    /// Opens a session: a producer on the ring and a completion queue of
    /// `session_pending_max` entries. Read completions with `poll` or `wait`.
    pub fn session(&self) -> Result<Session, NodeError> {
        self.open_session(None)
    }

    /// Opens a session whose `notify` hook egress calls (from its thread) when a completion
    /// arrives after [`Session::poll`] returned `None`: e.g. `mio::Waker::wake`. At most one
    /// call per arming; the hook must not block or panic.
    pub fn session_with_notify(&self, notify: WakeHook) -> Result<Session, NodeError> {
        let parker = Arc::new(Parker::default());
        let registered = parker.register_hook(notify);
        assert!(registered, "a fresh parker has no hook");
        self.open_session(Some(parker))
    }

    fn open_session(&self, notify: Option<Arc<Parker>>) -> Result<Session, NodeError> {
        let shared = &self.shared;
        self.check_running()?;
        let Some(producer) = self.producer.as_ref() else { return Err(NodeError::ShutDown) };
        let open = shared.sessions_open.fetch_add(1, Ordering::AcqRel);
        if open >= shared.sessions_max {
            shared.sessions_open.fetch_sub(1, Ordering::AcqRel);
            return Err(NodeError::TooManySessions { max: shared.sessions_max });
        }
        let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
        // Only a session of a node with an egress thread parks waiting for its answers; one
        // whose egress is polled runs egress itself.
        let blocking = self.egress.is_none();
        let (sender, completions) = completion_queue(shared.session_pending_max as usize, blocking);
        let register = Control::Register { id, sender, notify: notify.clone() };
        if !shared.send_control(register) {
            shared.sessions_open.fetch_sub(1, Ordering::AcqRel);
            return Err(NodeError::ShutDown);
        }
        let egress = self.egress.clone();
        Ok(Session::new(id, producer.clone(), completions, notify, Arc::clone(shared), egress))
    }

    fn check_running(&self) -> Result<(), NodeError> {
        if let Some(failure) = self.shared.failure() {
            return Err(NodeError::Failed(failure));
        }
        if self.shared.is_closed() {
            return Err(NodeError::ShutDown);
        }
        Ok(())
    }

    /// Runs egress on the calling thread when the node was configured with
    /// [`EgressDriver::Polled`] (or is stepped): releases every answer that is safe and routes
    /// it to its session. Returns how many slots were released; always 0 with an egress thread.
    pub fn poll_egress(&self) -> u64 {
        self.egress.as_ref().map_or(0, |egress| egress.poll())
    }

    /// Sets the hook a polled egress's owner is woken with (e.g. `mio::Waker::wake`): called
    /// from a stage thread when answers may be ready after `poll_egress` found none. Returns
    /// false if egress has its own thread or a hook was already set.
    pub fn set_egress_waker(&self, hook: WakeHook) -> bool {
        self.egress.is_some() && self.shared.egress_parker.register_hook(hook)
    }

    /// Where the node's writes come from now.
    pub fn intake(&self) -> Intake {
        self.shared.intake()
    }

    /// The epoch the commands this node sequences are journaled in.
    pub fn epoch(&self) -> Epoch {
        self.shared.epoch()
    }

    /// Whether a client write would be taken now, and if not why: the node failed or is
    /// shutting down, it is a standby (or deposed), or replication holds writes (a lost sync
    /// standby, a lease not renewed, a switchover or promotion under way).
    /// What a readiness probe reports.
    pub fn check_writable(&self) -> Result<(), Refused> {
        if let Some(failure) = self.shared.failure() {
            return Err(Refused::Failed(failure));
        }
        if self.shared.is_closed() {
            return Err(Refused::ShuttingDown);
        }
        self.shared.check_writable()
    }

    /// Promotes a replica in place: from now on it sequences client commands and publishes
    /// ticks, journaling them in `epoch`; records are refused (`Refused::NotReplica`). The
    /// caller stops feeding records first and stores `epoch` durably before calling (so no
    /// command of the new epoch is journaled before the epoch file allows it); records
    /// already submitted are journaled and applied in ring order before the first command.
    pub fn promote(&self, epoch: Epoch) -> Result<(), NodeError> {
        self.promoter().promote(epoch)
    }

    /// A handle that promotes this node from another thread (a coordination driver) without
    /// owning it; the same checks and rules as [`Node::promote`].
    #[must_use]
    pub fn promoter(&self) -> Promoter {
        Promoter { shared: Arc::clone(&self.shared), stepped: self.stepped.clone() }
    }

    /// Milliseconds between the node's command stamps and its clock ([`Metrics::time_shift_ms`]).
    #[must_use]
    pub fn time_shift_ms(&self) -> i64 {
        self.shared.time_line.shift_ms()
    }

    /// The stamp a command published now would get: the clock's reading on the node's time
    /// line.
    #[must_use]
    pub fn stamp_now(&self) -> Timestamp {
        self.shared.stamp(self.shared.clock.now_ns())
    }

    /// The topology the node runs.
    #[must_use]
    pub fn topology(&self) -> Topology {
        self.shared.topology
    }

    /// The failure that stopped the node, if one did.
    #[must_use]
    pub fn failure(&self) -> Option<StageFailure> {
        self.shared.failure()
    }

    /// Every stage's position.
    #[must_use]
    pub fn sequences(&self) -> Sequences {
        let shared = &self.shared;
        Sequences {
            published: shared.published.load(Ordering::Acquire),
            journaled: shared.appended.get(),
            durable: shared.durable.get(),
            replicated: shared.sent.get(),
            replication_safe: shared.safe.get(),
            applied: shared.applied.sequence(),
            applied_positions: shared.applied.positions(),
            released: shared.released.get(),
            released_positions: shared.released_positions.load(Ordering::Acquire),
        }
    }

    /// A metrics snapshot. Sequences and counters are live; histograms are at most
    /// [`super::metrics::PUBLISH_PERIOD`] behind.
    #[must_use]
    pub fn metrics(&self) -> Metrics {
        let shared = &self.shared;
        let sequences = self.sequences();
        let published = sequences.published;
        let stages = shared
            .stages
            .iter()
            .map(|cells| {
                let sequence = match cells.name {
                    "journaler" => sequences.journaled,
                    "replicator" => sequences.replicated,
                    "blp" | "processor" => sequences.applied,
                    _ => sequences.released,
                };
                let positions = cells.positions.load(Ordering::Acquire);
                StageMetrics {
                    name: cells.name,
                    sequence,
                    lag: published.saturating_sub(positions),
                    batch_sizes: cells.histograms.batches(),
                }
            })
            .collect();
        Metrics {
            topology: shared.topology.name(),
            wait: shared.wait.name(),
            published,
            durable: sequences.durable,
            journal_fence: shared.journal_fence(),
            replication_safe: sequences.replication_safe,
            stages,
            busy_rejections: shared.busy_rejections.load(Ordering::Relaxed),
            ticks_published: shared.ticks_published.load(Ordering::Relaxed),
            ticks_skipped: shared.ticks_skipped.load(Ordering::Relaxed),
            timer_wakeups: shared.timer_wakeups.load(Ordering::Relaxed),
            ring_size: shared.ring_size,
            time_shift_ms: shared.time_line.shift_ms(),
            primary_clock_offset_ms: (shared.intake() == Intake::Replica)
                .then(|| shared.time_line.primary_offset_ms())
                .flatten(),
            ring_fill: published.saturating_sub(sequences.released_positions),
            blp_service_ns: shared.blp_service.latency(),
            publish_to_egress_ns: shared.stage_cells("egress").histograms.latency(),
        }
    }

    /// Stops a stepped node where it stands, as a killed process stops: nothing is drained,
    /// flushed or answered, and its stages (the journal writer among them) are dropped as they
    /// are, so what the journal had not synced is only in its storage's live image. The
    /// simulator's crash; a threaded node is shut down instead.
    pub fn abandon(mut self) {
        assert!(self.stepped.is_some(), "only a stepped node is abandoned: it runs no thread");
        self.stopped = true;
        self.shared.close();
    }

    /// Stops intake, drains the ring (every accepted command is journaled, applied and
    /// answered), flushes the journal and joins every thread. Fails with the stage's failure if
    /// one stopped the node, or if the ring did not drain within `drain_timeout_ms`.
    pub fn shutdown(mut self) -> Result<ShutdownReport, NodeError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<ShutdownReport, NodeError> {
        assert!(!self.stopped, "a node stops once");
        self.stopped = true;
        let shared = Arc::clone(&self.shared);
        shared.close();
        if let Some(timer) = self.timer.take() {
            timer.thread().unpark();
            if let Err(panic) = timer.join() {
                shared.fail("timer", &panic_message(panic.as_ref()));
            }
        }
        let engine = if self.stepped.is_some() {
            self.drain_stepped()
        } else {
            self.drain();
            self.join()
        };
        self.producer = None;
        let metrics = self.metrics();
        if let Some(failure) = shared.failure() {
            return Err(NodeError::Failed(failure));
        }
        if let (Some(fence), Some(cause)) = (shared.journal_fence(), shared.journal_fault()) {
            return Err(NodeError::JournalFailed { fence, cause });
        }
        let engine = engine.expect("the BLP hands back its engine when no stage failed");
        let last_sequence = shared.applied.sequence();
        assert_eq!(shared.released.get(), last_sequence, "everything applied was answered");
        Ok(ShutdownReport { engine, last_sequence, metrics })
    }

    /// Publishes the stop marker. Returns false while the ring is full.
    fn publish_stop(&mut self) -> bool {
        let shared = Arc::clone(&self.shared);
        let Some(producer) = self.producer.as_mut() else { return true };
        let Some(position) =
            publish_one(producer, &shared, SlotKind::Stop, Command::Tick, Reply::NOBODY)
        else {
            return false;
        };
        shared.stop_at.store(position, Ordering::Release);
        shared.wake_all();
        true
    }

    /// A stepped node's drain: no threads to wait for, so it steps until the processor and
    /// egress passed the stop marker. A journal or standby that holds answers back would
    /// leave them unanswered: then the node is failed, which answers them with the failure.
    fn drain_stepped(&mut self) -> Option<Engine> {
        let mut marker = false;
        for _ in 0..4 {
            marker = marker || self.publish_stop();
            self.step();
            if marker && self.egress_passed_stop() {
                break;
            }
        }
        if !(marker && self.egress_passed_stop()) {
            self.shared.fail("shutdown", "the ring did not drain: answers are held back");
            self.step();
        }
        let stepped = self.stepped.as_ref().expect("a stepped node");
        stepped.lock().expect("stepped node lock").engine.take()
    }

    fn egress_passed_stop(&self) -> bool {
        let stop_at = self.shared.stop_at.load(Ordering::Acquire);
        self.shared.released_positions.load(Ordering::Acquire) > stop_at && stop_at != u64::MAX
    }

    /// Publishes the stop marker and waits for every stage to pass it. On timeout the node is
    /// failed (so stages stop working and egress answers the rest with the failure) and given
    /// a grace period; what still runs after it is left detached.
    fn drain(&mut self) {
        let shared = Arc::clone(&self.shared);
        let mut deadline = Instant::now() + self.drain_timeout;
        let mut timed_out = false;
        let mut marker = false;
        loop {
            marker = marker || self.publish_stop();
            self.poll_egress();
            if marker && self.all_stopped() {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                if timed_out {
                    return;
                }
                timed_out = true;
                let message = format!(
                    "the ring did not drain within {} ms; still running: {}",
                    self.drain_timeout.as_millis(),
                    self.running().join(", ")
                );
                shared.fail("shutdown", &message);
                deadline = now + SHUTDOWN_GRACE;
            }
            thread::sleep(Duration::from_micros(200));
        }
    }

    fn all_stopped(&self) -> bool {
        let polled_done = self.egress.is_none() || self.egress_passed_stop();
        polled_done && self.threads.iter().all(|thread| thread.handle.is_finished())
    }

    fn running(&self) -> Vec<&'static str> {
        let mut running: Vec<_> = self
            .threads
            .iter()
            .filter(|thread| !thread.handle.is_finished())
            .map(|thread| thread.name)
            .collect();
        if self.egress.is_some() && !self.egress_passed_stop() {
            running.push("egress (polled)");
        }
        running
    }

    /// Joins every finished thread (others are detached) and returns the BLP's engine.
    fn join(&mut self) -> Option<Engine> {
        let mut engine = None;
        for thread in self.threads.drain(..) {
            if !thread.handle.is_finished() {
                continue;
            }
            match thread.handle.join() {
                Ok(Some(returned)) => engine = Some(returned),
                Ok(None) => {}
                Err(panic) => self.shared.fail(thread.name, &panic_message(panic.as_ref())),
            }
        }
        engine
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.stop();
        }
    }
}

impl std::fmt::Debug for ShutdownReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownReport")
            .field("engine", &self.engine.status())
            .field("last_sequence", &self.last_sequence)
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("topology", &self.shared.topology)
            .field("sequences", &self.sequences())
            .finish_non_exhaustive()
    }
}
