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

use ringfence_core::{Command, Engine, Outcome, Sequence, Sequenced, Timestamp};

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

/// A [`Backend`] that applies commands to an [`Engine`] on one thread, fed by a bounded queue,
/// with a tick every `tick_ms`. No journal: state lives as long as the process.
pub struct EngineBackend {
    input: Option<SyncSender<(Command, u64)>>,
    completions: Receiver<BackendCompletion>,
    shared: Arc<EngineShared>,
    thread: Option<JoinHandle<()>>,
}

struct EngineShared {
    last_sequence: AtomicU64,
    running_hash: AtomicU64,
    /// Set when `poll` found nothing; the engine thread then wakes the server once.
    armed: AtomicBool,
    waker: Arc<mio::Waker>,
}

/// Milliseconds since the Unix epoch by the wall clock.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl EngineBackend {
    /// Starts the engine thread. `next_sequence` is the first sequence to stamp (1 for a fresh
    /// engine, one past the last recovered command otherwise); `queue_max` bounds commands
    /// waiting, beyond which submissions are refused as busy.
    pub fn start(
        engine: Engine,
        next_sequence: Sequence,
        queue_max: usize,
        tick_ms: u64,
        waker: Arc<mio::Waker>,
    ) -> EngineBackend {
        assert!(next_sequence.0 >= 1, "sequences start at 1");
        assert!(queue_max >= 1 && tick_ms >= 1);
        let (input, commands) = std::sync::mpsc::sync_channel(queue_max);
        let (done, completions) = std::sync::mpsc::channel();
        let shared = Arc::new(EngineShared {
            last_sequence: AtomicU64::new(engine.last_sequence().0),
            running_hash: AtomicU64::new(engine.running_hash()),
            armed: AtomicBool::new(true),
            waker,
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("ringfence-engine".into())
            .spawn(move || {
                run_engine(engine, next_sequence, &commands, &done, &thread_shared, tick_ms);
            })
            .expect("spawning the engine thread");
        EngineBackend { input: Some(input), completions, shared, thread: Some(thread) }
    }
}

fn run_engine(
    mut engine: Engine,
    mut sequence: Sequence,
    commands: &Receiver<(Command, u64)>,
    done: &std::sync::mpsc::Sender<BackendCompletion>,
    shared: &EngineShared,
    tick_ms: u64,
) {
    let tick = Duration::from_millis(tick_ms);
    loop {
        let (command, token) = match commands.recv_timeout(tick) {
            Ok((command, token)) => (command, Some(token)),
            Err(RecvTimeoutError::Timeout) => (Command::Tick, None),
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let sequenced = Sequenced { sequence, timestamp: Timestamp(now_ms()), command };
        let outcome = engine.apply(&sequenced);
        sequence = sequence.next();
        shared.last_sequence.store(engine.last_sequence().0, Ordering::Release);
        shared.running_hash.store(engine.running_hash(), Ordering::Release);
        if let Some(token) = token {
            if done.send(BackendCompletion { token, result: Ok(outcome) }).is_err() {
                return;
            }
            if shared.armed.swap(false, Ordering::AcqRel) {
                let _ = shared.waker.wake();
            }
        }
    }
}

impl Backend for EngineBackend {
    fn try_submit(&mut self, command: Command, token: u64) -> Result<(), Refusal> {
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
                epoch: 0,
                last_sequence,
                running_hash: self.shared.running_hash.load(Ordering::Acquire),
                journal_durable: 0,
            },
            journal: "none (state kept in memory only)".into(),
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
