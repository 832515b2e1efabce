//! The node: the LMAX pipeline around the business-logic processor.
//!
//! Kept apart from the pure engine: this module owns threads, the ring buffer and clocks.
//!
//! ```text
//! sessions, timer ── stamp time, try_publish (Busy when full) ──► INPUT RING (disruptor)
//!   parallel: ├─ journaler  : append; flush at end of batch → durable
//!             ├─ replicator : send;   flush at end of batch  (safe: the replicator's watermark)
//!             └─ BLP        : apply, write the outcome into the slot → applied
//!   compact:  └─ processor  : per command append, send, apply; per batch flush both
//!   egress (after every stage, and only up to min(durable, safe, applied))
//!     ─► the submitting session's completion queue (+ its notify hook)
//! ```
//!
//! **API.** [`Node::start`] (empty engine) or [`Node::start_with`] (recovered engine, next
//! sequence, snapshot hook) → [`Node::session`] per submitting thread → [`Session::try_submit`]
//! / [`Session::try_submit_batch`] (never block; `Busy` when the ring is full) → completions by
//! [`Session::poll`] (non-blocking, optional wake hook) or [`Session::wait`] →
//! [`Node::shutdown`]. [`Node::sequences`] and [`Node::metrics`] observe it.
//!
//! **Invariants.**
//! - Every command in the ring — client commands, queries, snapshot requests and ticks — is
//!   journaled, replicated and applied in ring order; journal sequences are contiguous from the
//!   node's first sequence.
//! - An answer leaves only when `sequence <= min(durable, replication_safe, applied)`; answers
//!   leave in sequence order.
//! - Only the applying stage writes a slot's outcome, only egress reads it, and the ring's
//!   barriers order the two; producers reuse a slot only after egress passed it.
//! - A failed stage (panic or stage error) stops the node: intake closes, no stage does more
//!   work, and every unanswered command is answered with the failure, never with an outcome.

mod config;
mod egress;
mod metrics;
mod node;
mod session;
mod shared;
mod slot;
pub mod stage;
mod stages;
mod wait;

pub use config::{
    EgressDriver, NodeConfig, NodeConfigError, Pins, RING_SIZE_MIN, Topology, WaitStrategy,
};
pub use metrics::{Metrics, PUBLISH_PERIOD, StageMetrics, batch_histogram, latency_histogram};
pub use node::{Node, NodeError, Sequences, ShutdownReport};
pub use session::{CallError, Completion, Refused, Session, StageFailure};
pub use stage::{
    Journal, MemoryJournal, NoReplicator, NoSnapshots, Replicator, SnapshotHook, StageError,
    Watermark,
};
pub use stages::SERVICE_TIME_SAMPLE_EVERY;
pub use wait::WakeHook;
