//! The messages that cross between a node's parts: where an answer goes, what a submitter gets
//! back, and what a session tells egress. A leaf module: it depends on nothing else in the
//! pipeline but the parker, so sessions, egress and the shared state can all name its types
//! without depending on one another.

use std::sync::Arc;

use super::completions::CompletionSender;
use super::wait::Parker;
use crate::outcome::Outcome;
use crate::types::Sequence;

/// Where the answer goes: a session and the token it chose. Session 0 is nobody (timer ticks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) session: u64,
    pub(crate) token: u64,
}

impl Reply {
    pub(crate) const NOBODY: Reply = Reply { session: 0, token: 0 };
}

/// A submission's place in the input ring: unique per node, increasing in publication order.
/// Not a journal sequence — queries take a ring slot but no journal sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// Why the node stopped: the stage that failed and what it said.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stage `{stage}` failed: {message}")]
pub struct StageFailure {
    /// `journaler`, `replicator`, `blp`, `snapshot`, `egress`, `timer` or `shutdown`.
    pub stage: &'static str,
    /// The panic message or stage error.
    pub message: Arc<str>,
}

/// Why a submitted command got no outcome.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unanswered {
    /// The node failed before the command was safe.
    #[error("{0}")]
    Failed(StageFailure),
    /// The command was journaled and applied here, but the standby never acknowledged it and
    /// the replicator stopped waiting (sync mode, standby lost). Whether it survives a
    /// failover is unknown: retry with the same request key to learn its outcome.
    #[error(
        "replication_unavailable: command {sequence} was applied on this node but the standby \
         did not acknowledge it; retry with the same request id"
    )]
    Unreplicated {
        /// The command's journal sequence.
        sequence: Sequence,
    },
    /// The journal failed before the command was durable (`Refused::JournalFailed`). If the
    /// failure struck before the command was written it was never applied; if it struck while
    /// syncing, the command was applied here and may or may not be in the journal. Either
    /// way: retry with the same request key once the node is back to learn its outcome.
    #[error(
        "journal_failed: command {sequence} was not made durable ({cause}); retry with the \
         same request id once the node is back"
    )]
    NotDurable {
        /// The command's journal sequence.
        sequence: Sequence,
        /// Why the journal failed.
        cause: Arc<str>,
    },
}

/// The answer to one submitted command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The token the submitter chose.
    pub token: u64,
    /// The submission's ticket, as `try_submit` returned it.
    pub ticket: Ticket,
    /// For a mutating command, its journal sequence; for a query or snapshot request, the
    /// sequence of the last command whose effect it saw.
    pub sequence: Sequence,
    /// The BLP's outcome, released only once the command (or, for a read, everything it saw)
    /// was journaled, replicated and applied; or why it got none.
    pub result: Result<Outcome, Unanswered>,
}

/// Messages from sessions to egress, which owns the routing table.
pub(crate) enum Control {
    /// A new session: where its completions go and how to wake it.
    Register { id: u64, sender: CompletionSender, notify: Option<Arc<Parker>> },
    /// The session was dropped.
    Deregister(u64),
}
