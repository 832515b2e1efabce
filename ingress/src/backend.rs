//! The boundary between the network front and the node: submit a command with a token, get
//! its outcome later, never block.
//!
//! The server is generic over [`Backend`] so it runs against the real pipeline node in
//! production and against [`EngineBackend`] — a plain engine on its own thread — where a test
//! or a tool wants no ring. Both stamp time, keep sequence order, answer `busy` when full, and
//! wake the event loop through a `mio::Waker` when completions are ready.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringfence_core::pipeline::{
    Journal, Metrics, NoSnapshots, Node, Refused, Session, SnapshotHook, StageError, WakeHook,
};
use ringfence_core::{Command, Engine, Epoch, Outcome, Sequence, Sequenced, Timestamp};

use crate::wire::NodeInfo;

/// Why a submission was refused; nothing was published.
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
}

/// The answer to one submitted command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendCompletion {
    /// The token given at submission.
    pub token: u64,
    /// The outcome, or why the node could not answer.
    pub result: Result<Outcome, String>,
}

/// Node status for `GET /v1/node` and the binary `NODE` request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// Role, epoch, sequences, state hash.
    pub info: NodeInfo,
    /// One line on the journal, e.g. `memory (no persistence)` or the directory.
    pub journal: String,
    /// One line on the peer, e.g. `none`.
    pub peer: String,
}

/// A node as the network front sees it. Every method returns promptly.
pub trait Backend: Send + 'static {
    /// Publishes `command`; its completion will carry `token`. Never blocks.
    fn try_submit(&mut self, command: Command, token: u64) -> Result<(), Refusal>;

    /// The next ready completion. After it returns `None`, the backend wakes the server's
    /// `mio::Waker` when the next completion arrives.
    fn poll(&mut self) -> Option<BackendCompletion>;

    /// The node's current status.
    fn status(&self) -> NodeStatus;

    /// Appends node metrics (ring fill, stage lags, ...) in Prometheus text format.
    fn write_metrics(&self, out: &mut String) {
        let _ = out;
    }

    /// Stops intake and waits for the node to finish what it accepted.
    fn close(&mut self) {}
}

/// A [`Backend`] that runs the engine on one thread, fed by a bounded queue, with a tick every
/// `tick_ms` while idle. Each batch taken from the queue is appended to the journal and
/// flushed before it is applied and answered, so no answer leaves before its command is
/// journaled; the snapshot hook sees every applied command. It is the compact topology without
/// a ring, for tests, tools, and nodes that want the simplest moving parts.
pub struct EngineBackend {
    input: Option<SyncSender<(Command, u64)>>,
    completions: Receiver<BackendCompletion>,
    shared: Arc<EngineShared>,
    thread: Option<JoinHandle<()>>,
}

struct EngineShared {
    last_sequence: AtomicU64,
    running_hash: AtomicU64,
    durable: AtomicU64,
    /// Set when `poll` found nothing; the engine thread then wakes the server once.
    armed: AtomicBool,
    waker: Arc<mio::Waker>,
    failed: AtomicBool,
    failure: std::sync::Mutex<Option<String>>,
    journal: String,
    epoch: Epoch,
}

/// Settings of an [`EngineBackend`].
#[derive(Clone, Debug)]
pub struct EngineBackendOptions {
    /// Commands waiting at most; beyond it submissions are refused as busy.
    pub queue_max: usize,
    /// Commands journaled and applied per batch at most.
    pub batch_max: usize,
    /// A `Tick` is applied after this long without commands, so deadlines fire.
    pub tick_ms: u64,
    /// Epoch written with every journal record.
    pub epoch: Epoch,
    /// How `GET /v1/node` describes the journal.
    pub journal: String,
}

impl Default for EngineBackendOptions {
    fn default() -> Self {
        EngineBackendOptions {
            queue_max: 4_096,
            batch_max: 256,
            tick_ms: 5,
            epoch: Epoch(0),
            journal: "none (state kept in memory only)".into(),
        }
    }
}

/// Milliseconds since the Unix epoch by the wall clock.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Called on the engine thread when the backend stops, with the snapshot hook, the engine and
/// the last sequence applied (e.g. to write a final snapshot).
pub type OnStop<H> = Box<dyn FnOnce(H, &Engine, Sequence) + Send>;

impl EngineBackend {
    /// Starts an engine thread with no journal: state lives as long as the process.
    pub fn start(
        engine: Engine,
        next_sequence: Sequence,
        queue_max: usize,
        tick_ms: u64,
        waker: Arc<mio::Waker>,
    ) -> EngineBackend {
        let options =
            EngineBackendOptions { queue_max, tick_ms, ..EngineBackendOptions::default() };
        let on_stop: OnStop<NoSnapshots> = Box::new(|_, _, _| {});
        EngineBackend::start_journaled(
            engine,
            next_sequence,
            NoJournal,
            NoSnapshots,
            on_stop,
            options,
            waker,
        )
    }

    /// Starts the engine thread with a journal and a snapshot hook. `next_sequence` is one past
    /// the last recovered command (1 for a fresh engine).
    pub fn start_journaled<J: Journal, H: SnapshotHook>(
        engine: Engine,
        next_sequence: Sequence,
        journal: J,
        hook: H,
        on_stop: OnStop<H>,
        options: EngineBackendOptions,
        waker: Arc<mio::Waker>,
    ) -> EngineBackend {
        assert!(next_sequence.0 >= 1, "sequences start at 1");
        assert!(options.queue_max >= 1 && options.batch_max >= 1 && options.tick_ms >= 1);
        let (input, commands) = std::sync::mpsc::sync_channel(options.queue_max);
        let (done, completions) = std::sync::mpsc::channel();
        let shared = Arc::new(EngineShared {
            last_sequence: AtomicU64::new(engine.last_sequence().0),
            running_hash: AtomicU64::new(engine.running_hash()),
            durable: AtomicU64::new(next_sequence.0 - 1),
            armed: AtomicBool::new(true),
            waker,
            failed: AtomicBool::new(false),
            failure: std::sync::Mutex::new(None),
            journal: options.journal.clone(),
            epoch: options.epoch,
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("ringfence-engine".into())
            .spawn(move || {
                let mut processor = Processor {
                    engine,
                    sequence: next_sequence,
                    journal,
                    hook,
                    shared: thread_shared,
                    done,
                    batch: Vec::with_capacity(options.batch_max),
                };
                processor.run(&commands, &options);
                let through = Sequence(processor.sequence.0 - 1);
                on_stop(processor.hook, &processor.engine, through);
            })
            .expect("spawning the engine thread");
        EngineBackend { input: Some(input), completions, shared, thread: Some(thread) }
    }
}

/// A journal that keeps nothing: for an engine whose state need not outlive the process.
struct NoJournal;

impl Journal for NoJournal {
    fn append(&mut self, _epoch: Epoch, _command: &Sequenced) -> Result<(), StageError> {
        Ok(())
    }

    fn flush(&mut self) -> Result<Sequence, StageError> {
        Ok(Sequence(0))
    }
}

struct Processor<J, H> {
    engine: Engine,
    sequence: Sequence,
    journal: J,
    hook: H,
    shared: Arc<EngineShared>,
    done: std::sync::mpsc::Sender<BackendCompletion>,
    batch: Vec<(Sequenced, Option<u64>)>,
}

impl<J: Journal, H: SnapshotHook> Processor<J, H> {
    fn run(&mut self, commands: &Receiver<(Command, u64)>, options: &EngineBackendOptions) {
        let tick = Duration::from_millis(options.tick_ms);
        loop {
            self.batch.clear();
            let first = match commands.recv_timeout(tick) {
                Ok((command, token)) => (command, Some(token)),
                Err(RecvTimeoutError::Timeout) => (Command::Tick, None),
                Err(RecvTimeoutError::Disconnected) => return,
            };
            self.stamp(first.0, first.1);
            while self.batch.len() < options.batch_max {
                match commands.try_recv() {
                    Ok((command, token)) => self.stamp(command, Some(token)),
                    Err(_) => break,
                }
            }
            if let Err(error) = self.journal_batch() {
                self.fail(&error.to_string());
                return;
            }
            self.apply_batch();
        }
    }

    fn stamp(&mut self, command: Command, token: Option<u64>) {
        let sequenced =
            Sequenced { sequence: self.sequence, timestamp: Timestamp(now_ms()), command };
        self.sequence = self.sequence.next();
        self.batch.push((sequenced, token));
    }

    fn journal_batch(&mut self) -> Result<(), StageError> {
        for (sequenced, _) in &self.batch {
            self.journal.append(self.shared.epoch, sequenced)?;
        }
        let durable = self.journal.flush()?;
        self.shared.durable.store(durable.0, Ordering::Release);
        Ok(())
    }

    fn apply_batch(&mut self) {
        for (sequenced, token) in &self.batch {
            let outcome = self.engine.apply(sequenced);
            self.hook.after_apply(&self.engine, sequenced);
            let Some(token) = *token else { continue };
            let _ = self.done.send(BackendCompletion { token, result: Ok(outcome) });
        }
        self.shared.last_sequence.store(self.engine.last_sequence().0, Ordering::Release);
        self.shared.running_hash.store(self.engine.running_hash(), Ordering::Release);
        self.wake();
    }

    /// The journal failed: nothing in this batch is safe, so nothing is applied or answered
    /// with an outcome; the node stops and says why.
    fn fail(&mut self, error: &str) {
        let message = format!("journal failed: {error}");
        eprintln!("ringfence: error: {message}; the node stops");
        *self.shared.failure.lock().expect("failure lock") = Some(message.clone());
        self.shared.failed.store(true, Ordering::Release);
        for (_, token) in &self.batch {
            if let Some(token) = *token {
                let _ = self.done.send(BackendCompletion { token, result: Err(message.clone()) });
            }
        }
        self.wake();
    }

    fn wake(&self) {
        if self.shared.armed.swap(false, Ordering::AcqRel) {
            let _ = self.shared.waker.wake();
        }
    }
}

impl Backend for EngineBackend {
    fn try_submit(&mut self, command: Command, token: u64) -> Result<(), Refusal> {
        if self.shared.failed.load(Ordering::Acquire) {
            let failure = self.shared.failure.lock().expect("failure lock").clone();
            return Err(Refusal::Failed(failure.unwrap_or_default()));
        }
        let Some(input) = &self.input else { return Err(Refusal::ShuttingDown) };
        match input.try_send((command, token)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Refusal::Busy),
            Err(TrySendError::Disconnected(_)) => Err(Refusal::Failed("engine thread gone".into())),
        }
    }

    fn poll(&mut self) -> Option<BackendCompletion> {
        if let Ok(completion) = self.completions.try_recv() {
            return Some(completion);
        }
        self.shared.armed.store(true, Ordering::Release);
        // A completion sent between the failed receive and arming would not wake anyone.
        let completion = self.completions.try_recv().ok();
        if completion.is_some() {
            self.shared.armed.store(false, Ordering::Release);
        }
        completion
    }

    fn status(&self) -> NodeStatus {
        let last_sequence = self.shared.last_sequence.load(Ordering::Acquire);
        NodeStatus {
            info: NodeInfo {
                primary: true,
                epoch: self.shared.epoch.0,
                last_sequence,
                running_hash: self.shared.running_hash.load(Ordering::Acquire),
                journal_durable: self.shared.durable.load(Ordering::Acquire),
            },
            journal: self.shared.journal.clone(),
            peer: "none".into(),
        }
    }

    fn close(&mut self) {
        self.input = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for EngineBackend {
    fn drop(&mut self) {
        self.close();
    }
}

/// Called when a [`NodeBackend`] has shut its node down: the final engine, the last sequence
/// journaled and applied, and the SKUs seen (for a final snapshot's catalogue).
pub type OnNodeStop = Box<dyn FnOnce(&Engine, Sequence) + Send>;

/// Publishes the BLP's running hash and last sequence after every command, so `GET /v1/node`
/// can show them without a round trip through the ring. Wraps the node's snapshot hook.
pub struct HashWatch<H> {
    inner: H,
    watch: Arc<EngineWatch>,
}

/// The values a [`HashWatch`] publishes.
#[derive(Debug, Default)]
pub struct EngineWatch {
    running_hash: AtomicU64,
    last_sequence: AtomicU64,
}

impl<H: SnapshotHook> HashWatch<H> {
    /// Wraps `inner`; read the published values through the returned watch.
    pub fn new(inner: H, engine: &Engine) -> (HashWatch<H>, Arc<EngineWatch>) {
        let watch = Arc::new(EngineWatch {
            running_hash: AtomicU64::new(engine.running_hash()),
            last_sequence: AtomicU64::new(engine.last_sequence().0),
        });
        (HashWatch { inner, watch: Arc::clone(&watch) }, watch)
    }
}

impl<H: SnapshotHook> SnapshotHook for HashWatch<H> {
    fn after_apply(&mut self, engine: &Engine, command: &Sequenced) {
        self.inner.after_apply(engine, command);
        self.watch.running_hash.store(engine.running_hash(), Ordering::Relaxed);
        self.watch.last_sequence.store(engine.last_sequence().0, Ordering::Relaxed);
    }
}

/// The pipeline [`Node`] as a [`Backend`]: one session whose completions wake the event loop;
/// with [`ringfence_core::pipeline::EgressDriver::Polled`] the event loop also runs egress
/// (through the session's `poll`), which is the compact layout for small machines.
pub struct NodeBackend {
    node: Option<Node>,
    session: Option<Session>,
    watch: Arc<EngineWatch>,
    epoch: Epoch,
    journal: String,
    on_stop: Option<OnNodeStop>,
}

impl NodeBackend {
    /// Opens a session on `node` that wakes `waker`. `watch` comes from the [`HashWatch`] the
    /// node was started with.
    pub fn new(
        node: Node,
        waker: Arc<mio::Waker>,
        watch: Arc<EngineWatch>,
        epoch: Epoch,
        journal: String,
        on_stop: Option<OnNodeStop>,
    ) -> std::io::Result<NodeBackend> {
        let wake: WakeHook = Arc::new(move || {
            let _ = waker.wake();
        });
        // Only a node with polled egress takes the hook; with an egress thread it is not needed.
        let _ = node.set_egress_waker(Arc::clone(&wake));
        let session = node.session_with_notify(wake).map_err(std::io::Error::other)?;
        Ok(NodeBackend { node: Some(node), session: Some(session), watch, epoch, journal, on_stop })
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
            Err(Refused::Failed(failure)) => Err(Refusal::Failed(failure.to_string())),
            Err(other) => Err(Refusal::Failed(other.to_string())),
        }
    }

    fn poll(&mut self) -> Option<BackendCompletion> {
        let completion = self.session.as_mut()?.poll()?;
        let result = completion.result.map_err(|failure| failure.to_string());
        Some(BackendCompletion { token: completion.token, result })
    }

    fn status(&self) -> NodeStatus {
        let durable = self.node.as_ref().map_or(0, |node| node.sequences().durable.0);
        NodeStatus {
            info: NodeInfo {
                primary: true,
                epoch: self.epoch.0,
                last_sequence: self.watch.last_sequence.load(Ordering::Relaxed),
                running_hash: self.watch.running_hash.load(Ordering::Relaxed),
                journal_durable: durable,
            },
            journal: self.journal.clone(),
            peer: "none".into(),
        }
    }

    fn write_metrics(&self, out: &mut String) {
        if let Some(node) = &self.node {
            write_node_metrics(&node.metrics(), out);
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
            Err(error) => eprintln!("ringfence: error: node shutdown: {error}"),
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
        ("ringfence_published_sequence", "Last sequence published.", metrics.published.0),
        ("ringfence_durable_sequence", "Last sequence durable in the journal.", metrics.durable.0),
    ];
    for (name, help, value) in gauges {
        header(out, name, help, "gauge");
        let _ = writeln!(out, "{name} {value}");
    }
    let counters = [
        ("ringfence_node_busy_total", "Publications refused: ring full.", metrics.busy_rejections),
        ("ringfence_ticks_skipped_total", "Timer ticks skipped: ring full.", metrics.ticks_skipped),
    ];
    for (name, help, value) in counters {
        header(out, name, help, "counter");
        let _ = writeln!(out, "{name} {value}");
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
    let summaries = [
        (
            "ringfence_blp_service_seconds",
            "BLP service time per command (sampled).",
            &metrics.blp_service_ns,
        ),
        (
            "ringfence_publish_to_egress_seconds",
            "Publish to answer release.",
            &metrics.publish_to_egress_ns,
        ),
    ];
    for (name, help, histogram) in summaries {
        header(out, name, help, "summary");
        for quantile in [0.5, 0.9, 0.99, 0.999] {
            let seconds = histogram.value_at_quantile(quantile) as f64 / 1e9;
            let _ = writeln!(out, "{name}{{quantile=\"{quantile}\"}} {seconds:.9}");
        }
        let sum = histogram.mean() * histogram.len() as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum:.9}");
        let _ = writeln!(out, "{name}_count {}", histogram.len());
    }
}
