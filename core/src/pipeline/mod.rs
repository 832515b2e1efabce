//! The node: the LMAX pipeline around the business-logic processor.
//!
//! Kept apart from the pure engine: this module owns the ring buffer and the drivers (threads,
//! or the caller's own `step` calls) that move it.
//!
//! ```text
//! sessions, timer ── stamp time, try_publish (Busy when full) ──► INPUT RING (disruptor)
//!   parallel: journaler       : frame once, append; flush at end of batch → durable
//!             behind it, ├─ replicator : send the framed bytes; flush (safe: its watermark)
//!                        └─ BLP        : apply, write the outcome and its gate → applied
//!   compact:  processor       : per slot frame, append, send, apply; per batch flush both
//!   stepped:  processor       : the same, run by `Node::step` on the caller's thread
//!   egress (after every stage, and only up to min(durable, safe, applied))
//!     ─► the submitting session's completion queue (+ its notify hook)
//! ```
//!
//! The consumer side is thread-free (`stages.rs`): a `StageCore` reads one batch when a driver
//! calls it, and egress releases what is safe when polled. Time enters through a [`Clock`].
//! Threads, pinning and waiting belong to the drivers, so a test or the simulator runs the very
//! code production runs, on one thread, with a [`ManualClock`].
//!
//! **API.** [`Node::start`] (empty engine), [`Node::start_with`] (recovered engine, next
//! sequence, snapshot hook) or [`Node::start_parts`] (any clock) → [`Node::session`] per
//! submitting thread → [`Session::try_submit`] / [`Session::try_submit_batch`] (never block;
//! `Busy` when the ring is full) → completions by [`Session::poll`] (non-blocking, optional
//! wake hook) or [`Session::wait`] → [`Node::shutdown`]. A [`Topology::Stepped`] node moves
//! only in [`Node::step`]. [`Node::sequences`] and [`Node::metrics`] observe it.
//!
//! **Invariants.**
//! - Every mutating command in the ring (client commands, ticks) is journaled, replicated and
//!   applied in ring order, and journal sequences are contiguous from the node's first
//!   sequence. Queries and snapshot requests are applied in ring order too but change nothing
//!   and are not journaled: they take a ring position and no sequence.
//! - A slot is answered only when its gate — its own sequence, or for a read the last
//!   sequence before it — is `<= min(durable, replication_safe, applied)`; answers leave in
//!   ring order.
//! - Only the applying stage writes a slot's outcome and gate, only egress reads them, and the
//!   ring's barriers order the two; producers reuse a slot only after egress passed it.
//! - A failed stage (panic or stage error) stops the node: intake closes, no stage does more
//!   work, and every unanswered command is answered with the failure, never with an outcome.
//! - A `Tick` is published only when the clock reaches the engine's earliest payment deadline,
//!   so an idle node journals nothing.

mod clock;
mod completions;
mod config;
mod egress;
mod messages;
mod metrics;
mod node;
mod session;
mod shared;
mod slot;
pub mod stage;
mod stages;
mod wait;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{
    EgressDriver, Intake, NodeConfig, NodeConfigError, Pins, RING_SIZE_MIN, Topology, WaitStrategy,
};
pub use egress::PUBLISH_TO_EGRESS_SAMPLE_EVERY;
pub use messages::{Completion, StageFailure, Ticket, Unanswered};
pub use metrics::{Metrics, PUBLISH_PERIOD, StageMetrics, batch_histogram, latency_histogram};
pub use node::{Node, NodeError, NodeParts, Promoter, Sequences, ShutdownReport, StepReport};
pub use session::{CallError, Refused, Session};
pub use stage::{
    Framed, HoldReason, Journal, MemoryJournal, NoReplicator, NoSnapshots, Replicator,
    SnapshotHook, StageError, Watermark, WriteHold,
};
pub use stages::SERVICE_TIME_SAMPLE_EVERY;
pub use wait::WakeHook;
