//! The standby's decisions while it follows its primary, as a state machine with no socket,
//! thread or clock in it: what an answer to a join leads to (stream, retry, or stop for good),
//! what a streamed message leads to, what is acknowledged and when, when the primary's
//! silence ends a stream, and how long to pause before the next attempt.
//!
//! Two drivers feed it the same inputs — a join's answer, each message that arrived, the
//! node's answers, time passing, a stream's end — and carry out its outputs at their edges:
//! `standby::follow` with TCP sockets, a `mio` poll and the monotonic clock, and the
//! simulator with its network and simulated clock. Time comes in as milliseconds on the
//! driver's monotonic clock. How records reach the node stays at the edge: the thread waits
//! for room in a full ring, the simulator keeps a backlog.

use ringfence_core::pipeline::Session;
use ringfence_core::{Epoch, Sequence};
use ringfence_journal::error::JournalError;
use ringfence_journal::scan::ReadSource;

use crate::control::{self, Control, log, warn};
use crate::message::{Ack, Behind, Message, RefuseCode};
use crate::session::{Outgoing, StandbySession, StandbyStep};
use crate::standby::{self, Applied, JoinError, Joined, JournalEnd};

/// The pause before the first attempt after a failure, and the longest pause: each failure
/// in a row doubles it.
pub const BACKOFF_MIN_MS: u64 = 50;
/// See [`BACKOFF_MIN_MS`]; also how long a stream must last to count as healthy.
pub const BACKOFF_MAX_MS: u64 = 1_000;
const _: () = assert!(BACKOFF_MIN_MS > 0 && BACKOFF_MIN_MS <= BACKOFF_MAX_MS);

/// What an attempt to join the primary came to.
#[derive(Debug)]
pub enum Answer {
    /// The primary streams from `from` in `epoch`.
    Stream {
        /// The primary's epoch.
        epoch: Epoch,
        /// Its first record.
        from: Sequence,
    },
    /// This journal holds records after `keep_through` that the primary's does not.
    Diverged {
        /// The last sequence to keep.
        keep_through: Sequence,
        /// The primary's epoch.
        epoch: Epoch,
    },
    /// The primary lost records this standby holds ([`standby::on_behind`]).
    Behind(Behind),
    /// The primary refused, with its code, the epoch it named and its reason.
    Refused {
        /// Its code.
        code: RefuseCode,
        /// Its epoch if it proved it holds the secret, else 0.
        epoch: Epoch,
        /// Its reason.
        text: String,
    },
    /// The connection failed or broke the protocol before the answer: why.
    Failed(String),
}

impl Answer {
    /// What the TCP shell's join came to.
    #[must_use]
    pub fn of_join(joined: &Result<Joined, JoinError>) -> Answer {
        match joined {
            Ok(Joined::Stream { epoch, from, .. }) => Answer::Stream { epoch: *epoch, from: *from },
            Ok(Joined::Diverged { keep_through, epoch }) => {
                Answer::Diverged { keep_through: *keep_through, epoch: *epoch }
            }
            Ok(Joined::Behind(behind)) => Answer::Behind(*behind),
            Err(JoinError::Refused { code, epoch, text }) => {
                Answer::Refused { code: *code, epoch: *epoch, text: text.clone() }
            }
            Err(error) => Answer::Failed(error.to_string()),
        }
    }

    /// What a step of the session comes to while the handshake waits for the answer to its
    /// join, read as the TCP shell's join reads it.
    #[must_use]
    pub fn of_step(step: StandbyStep) -> Handshaking {
        let answer = match step {
            StandbyStep::Reply(reply) => return Handshaking::Reply(reply),
            StandbyStep::Following { epoch, from } => Answer::Stream { epoch, from },
            StandbyStep::Diverged { keep_through, epoch } => {
                Answer::Diverged { keep_through, epoch }
            }
            StandbyStep::Behind(behind) => Answer::Behind(behind),
            StandbyStep::Close { last, reason, refused } => {
                let answer = match refused {
                    Some((code, epoch)) => Answer::Refused { code, epoch, text: reason },
                    None => Answer::Failed(reason),
                };
                return Handshaking::Answered { answer, last };
            }
            other => Answer::Failed(format!("the primary's answer was out of place: {other:?}")),
        };
        Handshaking::Answered { answer, last: None }
    }
}

/// Where a handshake stands after one of the primary's messages ([`Answer::of_step`]).
#[derive(Debug)]
pub enum Handshaking {
    /// Send this; the handshake goes on.
    Reply(Outgoing),
    /// The attempt came to `answer`: send `last` if any, and carry the answer to
    /// [`Following::on_answer`].
    Answered {
        /// The answer.
        answer: Answer,
        /// The last word before closing.
        last: Option<Outgoing>,
    },
}

/// What the follower does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Take the primary's stream: the promise of its epoch is stored.
    Stream,
    /// Close the connection, pause ([`Following::pause_ms`]) and join again.
    Retry,
    /// Stop following: retrying cannot help, and the control's follower state says so.
    Stop(Stopped),
}

/// Why a follower stopped for good; only a restart of its node helps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// This journal holds records after `keep_through` that the primary's does not: the
    /// restart drops them.
    Diverged {
        /// The last sequence to keep.
        keep_through: Sequence,
    },
    /// The records this standby lacks were retired from the primary's journal: the restart
    /// fetches the primary's snapshot.
    NeedsSnapshot,
    /// This node's journal failed: it takes no record until it is restarted.
    JournalFailed,
}

/// What a message on the stream leads to.
#[derive(Debug)]
pub enum Step {
    /// Submit the message's records to the node, in order.
    Submit,
    /// Nothing to do now (a heartbeat: the next turn acknowledges).
    Continue,
    /// Send `last` if any, then close: the stream ended, for `reason`
    /// ([`Following::stream_ended`]).
    Close {
        /// The last word.
        last: Option<Outgoing>,
        /// Why.
        reason: String,
    },
}

/// One turn of a stream: the acknowledgement to send, and how long the follower may wait for
/// more before the primary counts as silent, or why the stream ends.
#[derive(Debug)]
pub struct Turn {
    /// Send this first, if any.
    pub ack: Option<Ack>,
    /// `Ok(ms)`: wait at most this long; `Err(reason)`: the stream ends.
    pub next: Result<u64, String>,
}

/// A standby following its primary: the records it submitted to its node, the stream in
/// progress, and the backoff between attempts.
#[derive(Debug)]
pub struct Following {
    /// The primary's address, for the log and the follower's state.
    primary: String,
    applied: Applied,
    /// Silence for three heartbeats (or the replication timeout) means the primary is gone.
    silence_ms: u64,
    /// When the primary was last heard from.
    heard_ms: u64,
    /// The stream in progress: when it began, and the last record submitted then.
    stream: Option<(u64, Sequence)>,
    backoff_ms: u64,
    /// Failed attempts in a row (a stream that took records, or lasted, ends a series).
    failures: u64,
    /// The primary's last refusal, shown in `/v1/node` while the follower retries.
    refused: Option<String>,
}

impl Following {
    /// A follower of `primary` for the node of `control`, which `applied` says it submitted
    /// to.
    #[must_use]
    pub fn new(control: &Control, primary: &str, applied: Applied) -> Following {
        let config = control.config();
        let silence_ms = config.heartbeat_ms.saturating_mul(3).max(config.timeout_ms);
        assert!(silence_ms > 0, "a primary may be silent for a moment");
        Following {
            primary: primary.to_owned(),
            applied,
            silence_ms,
            heard_ms: 0,
            stream: None,
            backoff_ms: BACKOFF_MIN_MS,
            failures: 0,
            refused: None,
        }
    }

    /// The records submitted to the node and answered by it.
    #[must_use]
    pub fn applied(&self) -> &Applied {
        &self.applied
    }

    /// The same, for the edge that submits records and takes the node's answers meanwhile.
    pub fn applied_mut(&mut self) -> &mut Applied {
        &mut self.applied
    }

    /// The records submitted, to follow again from there.
    #[must_use]
    pub fn into_applied(self) -> Applied {
        self.applied
    }

    /// Whether a stream is in progress.
    #[must_use]
    pub fn is_streaming(&self) -> bool {
        self.stream.is_some()
    }

    /// An attempt to join begins: shows it in the follower's state, and returns where the
    /// journal ends once the node has taken what was submitted (records still in its ring are
    /// journaled and applied before anything that follows them) and the epoch promised.
    pub fn attempt(&mut self, control: &Control) -> (JournalEnd, Epoch) {
        assert!(self.stream.is_none(), "an attempt while a stream is in progress");
        let state = self.refused.as_deref().unwrap_or("connecting");
        control.set_follower(state, self.applied.answered, 0);
        (self.applied.submitted, control.epochs().promised)
    }

    /// The attempt came to `answer` at `now_ms`. `journal` opens this node's journal, read
    /// when the primary says it is behind.
    pub fn on_answer<S: ReadSource>(
        &mut self,
        control: &Control,
        answer: Answer,
        journal: impl FnOnce() -> Result<S, JournalError>,
        now_ms: u64,
    ) -> Next {
        assert!(self.stream.is_none(), "an answer while a stream is in progress");
        let primary = self.primary.clone();
        match answer {
            Answer::Stream { epoch, from } => self.start_stream(control, (epoch, from), now_ms),
            Answer::Diverged { keep_through, epoch } => {
                if let Err(error) = standby::promise_epoch(control.epoch_store(), epoch) {
                    log(format_args!("replication: storing the promise of epoch {epoch}: {error}"));
                }
                log(format_args!(
                    "replication: this standby holds records after {keep_through} that the \
                     primary {primary} does not: it drops them when it starts again as a \
                     standby (it restarts itself), and rejoins"
                ));
                control.set_follower(control::DIVERGED, self.applied.answered, 0);
                Next::Stop(Stopped::Diverged { keep_through })
            }
            Answer::Behind(behind) => {
                let said = standby::on_behind(control, journal(), behind, &primary);
                if self.refused.as_deref() != Some(said.as_str()) {
                    log(format_args!("replication: {said}"));
                }
                self.refused = Some(said);
                self.failures += 1;
                Next::Retry
            }
            Answer::Refused { code: RefuseCode::NeedsSnapshot, epoch, text } => {
                // Retrying cannot help: the records this node lacks are gone from the
                // primary's journal. A restarted standby fetches the primary's snapshot. The
                // primary proved the secret and leads in `epoch`: promised now, as a start
                // would, so that the fetch carries it and no primary older than this one
                // (deposed since, reached at the same address) can serve it.
                if let Err(error) = standby::promise_epoch(control.epoch_store(), epoch) {
                    log(format_args!("replication: storing the promise: {error}"));
                }
                log(format_args!(
                    "replication: the primary {primary} refused this standby: {text}; it fetches \
                     the primary's snapshot when it starts again as a standby (it restarts \
                     itself)"
                ));
                control.set_follower(control::NEEDS_SNAPSHOT, self.applied.answered, 0);
                Next::Stop(Stopped::NeedsSnapshot)
            }
            Answer::Refused { code: RefuseCode::Version, text, .. } => {
                // Retrying cannot help while the two releases differ, so it is a warning, said
                // once. The follower retries all the same, as it does every refusal that came
                // before the primary proved the secret: anything at the primary's address can
                // send one, and a primary put back on this release is followed again. (A
                // standby refused so at its start stops there: `serve` exits, saying this.)
                let said = format!("refused by the primary, retrying: {text}");
                if self.refused.as_deref() != Some(said.as_str()) {
                    warn(format_args!(
                        "replication: {}",
                        standby::version_refused(&primary, &text)
                    ));
                }
                self.refused = Some(said);
                self.failures += 1;
                Next::Retry
            }
            Answer::Refused { code, text, .. } => {
                if code == RefuseCode::Busy {
                    // The primary has another standby, or a journal that differs from this
                    // one: whatever this standby held of it before, it is not its copy now.
                    control.holds_primary_journal(false);
                }
                self.refused = Some(format!("refused by the primary, retrying: {text}"));
                self.failed(&format!("cannot follow {primary}: {text}"))
            }
            Answer::Failed(error) => {
                self.refused = None;
                self.failed(&format!("cannot follow {primary}: {error}"))
            }
        }
    }

    /// An attempt failed: counted, and logged a few times in a series.
    fn failed(&mut self, said: &str) -> Next {
        self.failures += 1;
        if self.failures <= 3 || self.failures % 100 == 0 {
            log(format_args!("replication: {said}"));
        }
        Next::Retry
    }

    /// The primary streams from `from` in `epoch`: the promise is stored before any record is
    /// taken ([`standby::promise`]); a promise that cannot be stored ends the stream at once.
    fn start_stream(
        &mut self,
        control: &Control,
        (epoch, from): (Epoch, Sequence),
        now_ms: u64,
    ) -> Next {
        self.refused = None;
        self.stream = Some((now_ms, self.applied.submitted.last_sequence));
        self.heard_ms = now_ms;
        if let Err(error) = standby::promise(control, &self.applied, (epoch, from)) {
            return self.stream_ended(control, Err(error), now_ms);
        }
        log(format_args!("replication: following the primary in epoch {epoch} from {from}"));
        Next::Stream
    }

    /// `message` arrived on the stream at `now_ms`; `session` is the connection's.
    pub fn on_message(
        &mut self,
        control: &Control,
        session: &mut StandbySession,
        message: &Message<'_>,
        now_ms: u64,
    ) -> Step {
        assert!(self.stream.is_some(), "a streamed message with no stream in progress");
        self.heard_ms = self.heard_ms.max(now_ms);
        let config = control.config();
        match session.on_message(message, &config.secret, &config.cluster) {
            StandbyStep::Apply { count } => {
                let Message::Records(records) = message else { unreachable!("records") };
                assert_eq!(records.count(), count, "the session counted the message's records");
                Step::Submit
            }
            StandbyStep::Continue => Step::Continue,
            StandbyStep::Close { last, reason, .. } => Step::Close { last, reason },
            other => Step::Close {
                last: None,
                reason: format!("the primary's answer was out of place: {other:?}"),
            },
        }
    }

    /// A turn of the stream at `now_ms`: takes the node's answers and acknowledges what it
    /// answered, then tells how long to wait for more. `Err` when the node failed a record.
    pub fn turn(
        &mut self,
        control: &Control,
        session: &mut StandbySession,
        node: &mut Session,
        now_ms: u64,
    ) -> Result<Turn, String> {
        assert!(self.stream.is_some(), "a turn with no stream in progress");
        self.applied.collect(node)?;
        let applied = &self.applied;
        assert!(applied.answered <= applied.submitted.last_sequence, "answered, not submitted");
        // A record is answered only once journaled (durable under this node's policy) and
        // applied here: what is answered is what this standby holds.
        let held = applied.answered;
        #[cfg(feature = "mutations")]
        let held = if crate::mutation::standby_acks_submitted() {
            applied.submitted.last_sequence
        } else {
            held
        };
        // Progress first: a directory that has just caught up says so in this acknowledgement.
        standby::report_progress(control, session, held);
        let ack = session.ack(held, held, control.epoch_store().catching_up());
        let silent_ms = now_ms.saturating_sub(self.heard_ms);
        let next = if silent_ms >= self.silence_ms {
            Err(format!("the primary was silent for {} ms", self.silence_ms))
        } else {
            Ok(self.silence_ms - silent_ms)
        };
        Ok(Turn { ack, next })
    }

    /// The stream (or the attempt to start one) ended at `now_ms`, `result` saying why when
    /// it broke: the backoff starts afresh after a healthy stream, and a failed journal stops
    /// the follower.
    pub fn stream_ended(
        &mut self,
        control: &Control,
        result: Result<(), String>,
        now_ms: u64,
    ) -> Next {
        let (began_ms, before) = self.stream.take().expect("a stream in progress");
        // A stream that took records, or lasted, was healthy: the next one starts afresh. One
        // that broke at once — say, the epoch it brings cannot be stored on a full disk — is
        // retried with backoff and logged a few times, not twenty times a second.
        let lasted = now_ms.saturating_sub(began_ms) >= BACKOFF_MAX_MS;
        if self.applied.submitted.last_sequence > before || lasted {
            self.failures = 0;
            self.backoff_ms = BACKOFF_MIN_MS;
        } else {
            self.failures += 1;
        }
        if let Err(error) = result
            && (self.failures <= 3 || self.failures % 100 == 0)
        {
            log(format_args!("replication: following {}: {error}", self.primary));
        }
        if !self.applied.journal_failed {
            return Next::Retry;
        }
        // Retrying cannot help: the node takes no record until it is restarted.
        log(format_args!(
            "replication: stopped following {}: this standby's journal failed; restart it once \
             the disk is fixed and it rejoins",
            self.primary
        ));
        control.set_follower("journal failed: restart to rejoin", self.applied.answered, 0);
        Next::Stop(Stopped::JournalFailed)
    }

    /// How long to pause before the next attempt; the pause after it doubles, up to
    /// [`BACKOFF_MAX_MS`].
    pub fn pause_ms(&mut self) -> u64 {
        assert!(self.stream.is_none(), "a pause while a stream is in progress");
        let pause_ms = self.backoff_ms;
        self.backoff_ms = (self.backoff_ms * 2).min(BACKOFF_MAX_MS);
        assert!((BACKOFF_MIN_MS..=BACKOFF_MAX_MS).contains(&pause_ms));
        pause_ms
    }
}
