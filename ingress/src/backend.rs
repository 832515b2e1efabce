//! The boundary between the network front and the node: submit a command with a token, get
//! its outcome later, never block.
//!
//! The server is generic over [`Backend`]; [`NodeBackend`] drives the pipeline node, the same
//! in production and in the loopback tests. It stamps time, keeps sequence order, answers
//! `busy` when full, and wakes the event loop through a `mio::Waker` when completions are
//! ready.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ringfence_core::pipeline::{Metrics, Node, Refused, Session, SnapshotHook, WakeHook};
use ringfence_core::{Command, Engine, Epoch, Outcome, Sequence, Sequenced};

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

/// Milliseconds since the Unix epoch by the wall clock.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
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
    epoch: Epoch,
    journal: String,
    on_stop: Option<OnNodeStop>,
    metrics: Option<MetricsWriter>,
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
        let metrics = None;
        let session = Some(session);
        Ok(NodeBackend { node: Some(node), session, watch, epoch, journal, on_stop, metrics })
    }

    /// Adds `writer`'s figures to the node's on `/metrics`.
    #[must_use]
    pub fn with_metrics(mut self, writer: MetricsWriter) -> NodeBackend {
        self.metrics = Some(writer);
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
        if let Some(writer) = &self.metrics {
            writer(out);
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
        (
            "ringfence_published_total",
            "Ring positions published (commands, reads, ticks).",
            metrics.published,
        ),
        ("ringfence_durable_sequence", "Last sequence durable in the journal.", metrics.durable.0),
    ];
    for (name, help, value) in gauges {
        header(out, name, help, "gauge");
        let _ = writeln!(out, "{name} {value}");
    }
    let counters = [
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
