//! A backend for the event loop's tests that holds every command until the test releases it,
//! then answers it `unknown_sku` (or, `mixed`, some with refusals).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringfence_core::{Command, Outcome, Rejection};
use ringfence_ingress::{Backend, BackendCompletion, NodeStatus, Refusal, ServerConfig};

/// How long a condition may take to come true on a busy machine before the test calls it a
/// hang.
const DEADLINE: Duration = Duration::from_secs(20);

/// What the gate has seen.
#[derive(Default)]
pub struct GateState {
    /// Tokens submitted and not yet released.
    pub held: Vec<u64>,
    /// Tokens released, to be answered at the server's next poll.
    pub ready: VecDeque<u64>,
    pub submitted: u64,
    /// Submissions since the server last polled, and the most seen between two polls: the
    /// server polls at least once per turn of its event loop.
    pub since_poll: u64,
    pub most_between_polls: u64,
    pub waker: Option<Arc<mio::Waker>>,
    /// Answer some commands with refusals instead (`busy`, then a failure, in every four).
    pub mixed: bool,
    /// Commands answered so far.
    pub answered: u64,
}

/// A backend that holds every command until the test releases it, then answers it
/// `unknown_sku`.
#[derive(Clone, Default)]
pub struct Gate(pub Arc<Mutex<GateState>>);

impl Backend for Gate {
    fn try_submit(&mut self, _command: Command, token: u64) -> Result<(), Refusal> {
        let mut state = self.0.lock().unwrap();
        state.held.push(token);
        state.submitted += 1;
        state.since_poll += 1;
        state.most_between_polls = state.most_between_polls.max(state.since_poll);
        Ok(())
    }

    fn poll(&mut self) -> Option<BackendCompletion> {
        let mut state = self.0.lock().unwrap();
        state.since_poll = 0;
        let token = state.ready.pop_front()?;
        state.answered += 1;
        let result = match (state.mixed, state.answered % 4) {
            (true, 1) => Err(Refusal::Busy),
            (true, 2) => Err(Refusal::Failed("gone".into())),
            _ => Ok(Outcome::Rejected(Rejection::UnknownSku)),
        };
        Some(BackendCompletion { token, result })
    }

    fn status(&self) -> NodeStatus {
        NodeStatus::default()
    }
}

impl Gate {
    pub fn start(config: ServerConfig) -> (ringfence_ingress::ServerHandle, Gate) {
        let gate = Gate::default();
        let backend = gate.clone();
        let server = ringfence_ingress::start(config, move |waker| {
            backend.0.lock().unwrap().waker = Some(waker);
            Ok(backend)
        })
        .unwrap();
        (server, gate)
    }

    pub fn held(&self) -> usize {
        self.0.lock().unwrap().held.len()
    }

    /// Commands submitted since the server started, answered or not.
    pub fn submitted(&self) -> u64 {
        self.0.lock().unwrap().submitted
    }

    /// Waits (bounded) until at least `count` commands are held, and returns how many are.
    pub fn wait_held(&self, count: usize) -> usize {
        let deadline = Instant::now() + DEADLINE;
        while self.held() < count {
            assert!(Instant::now() < deadline, "{} held, waiting for {count}", self.held());
            std::thread::sleep(Duration::from_millis(5));
        }
        self.held()
    }

    /// Answers every command held, and returns how many that was: more may have arrived since
    /// the last `wait_held`.
    pub fn release_all(&self) -> usize {
        let mut state = self.0.lock().unwrap();
        let held = std::mem::take(&mut state.held);
        let count = held.len();
        state.ready.extend(held);
        state.waker.as_ref().expect("the server gave its waker").wake().unwrap();
        count
    }
}
