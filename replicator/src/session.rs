//! One replication connection's protocol, on each side, as pure state machines: fed the
//! messages that arrive, the time and the journal's progress; they answer with the messages to
//! send and what the shell must do. No socket, thread, clock or random source: the shell
//! (`primary.rs`, `standby.rs`) reads and writes frames and passes nonces and times in, and the
//! simulator can drive the very same machines.
//!
//! ```text
//!   standby                                   primary
//!   Hello(cluster, standby nonce)      ──►    AwaitHello
//!                                      ◄──    Challenge(primary nonce, primary proof)
//!   verify primary proof
//!   Join(proof, last, epoch, promise)  ──►    AwaitJoin: verify, decide (position.rs)
//!     or FetchSnapshot(proof)                 ─ Start(epoch, from) → Streaming
//!                                             ─ Diverged(keep through) → closed
//!                                             ─ Behind(last, its epoch) → closed
//!                                             ─ snapshot chunks → closed
//!                                             ─ Refuse(code, text) → closed
//!   Streaming: records, heartbeats     ◄──    Streaming: records, heartbeats when idle
//!   Ack(written, durable, echo)        ──►    acknowledgements into the policy
//! ```

use ringfence_core::{EngineConfig, Epoch, Sequence};

use crate::auth::{self, ClusterId, ClusterSecret, Nonce};
use crate::message::{
    Ack, Answering, Behind, Challenge, Diverged, FetchSnapshot, Heartbeat, Hello, Join, Message,
    MessageError, PROTOCOL_VERSION, Records, Refuse, RefuseCode, Start,
};
use crate::position::{JoinDecision, JournalIndex, StandbyPosition, decide};

/// A message a machine asks the shell to send (owned, unlike a decoded [`Message`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// Standby → primary, first.
    Hello(Hello),
    /// Primary → standby.
    Challenge(Challenge),
    /// Standby → primary.
    Join(Join),
    /// Standby → primary, instead of `Join`.
    FetchSnapshot(FetchSnapshot),
    /// Primary → standby.
    Start(Start),
    /// Primary → standby.
    Diverged(Diverged),
    /// Primary → standby, then the connection closes.
    Behind(Behind),
    /// Primary → standby.
    Heartbeat(Heartbeat),
    /// Standby → primary.
    Ack(Ack),
    /// Either way, then the connection closes.
    Refuse {
        /// Why.
        code: RefuseCode,
        /// The sender's epoch.
        epoch: Epoch,
        /// For the operator.
        text: String,
    },
}

impl Outgoing {
    /// The message to encode.
    #[must_use]
    pub fn message(&self) -> Message<'_> {
        match self {
            Outgoing::Hello(hello) => Message::Hello(hello.clone()),
            Outgoing::Challenge(challenge) => Message::Challenge(*challenge),
            Outgoing::Join(join) => Message::Join(*join),
            Outgoing::FetchSnapshot(fetch) => Message::FetchSnapshot(*fetch),
            Outgoing::Start(start) => Message::Start(*start),
            Outgoing::Diverged(diverged) => Message::Diverged(*diverged),
            Outgoing::Behind(behind) => Message::Behind(*behind),
            Outgoing::Heartbeat(heartbeat) => Message::Heartbeat(*heartbeat),
            Outgoing::Ack(ack) => Message::Ack(*ack),
            Outgoing::Refuse { code, epoch, text } => {
                Message::Refuse(Refuse::new(*code, *epoch, text))
            }
        }
    }
}

/// What the primary's machine asks of its shell after a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrimaryStep {
    /// Send this and wait for the next message.
    Reply(Outgoing),
    /// Send `Start`, then stream the journal from its `from_sequence`.
    Stream(Start),
    /// Send the newest snapshot in chunks, then close.
    SendSnapshot,
    /// The standby acknowledged: feed the policy.
    Acknowledged(Ack),
    /// Send this (a refusal or `Diverged`) if any, then close. `reason` is for the log.
    Close {
        /// The last message, if any.
        last: Option<Outgoing>,
        /// Why the connection ends.
        reason: String,
        /// A newer primary exists (the standby promised this epoch): step down.
        deposed_by: Option<Epoch>,
    },
}

/// What the primary knows when it answers a join.
pub struct PrimaryView<'a> {
    /// This cluster.
    pub cluster: &'a ClusterId,
    /// The shared secret.
    pub secret: &'a ClusterSecret,
    /// Its engine settings, which a standby must share.
    pub engine: &'a EngineConfig,
    /// Its current epoch.
    pub epoch: Epoch,
    /// Whether it is the primary now (a standby refuses joins).
    pub is_primary: bool,
    /// Its journal.
    pub journal: &'a mut dyn JournalIndex,
    /// The last sequence its journal holds whole.
    pub journal_last: Sequence,
    /// Records a standby holds past this journal may have been acknowledged: the primary
    /// restarted after a standby was in sync, and its journal answers before it syncs, so a
    /// power loss may have taken records its answers promised. A standby holding records this
    /// journal lacks is then refused, never told to drop them: promoting it loses nothing.
    pub standby_tail_acknowledged: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PrimaryState {
    AwaitHello,
    AwaitJoin { standby_nonce: Nonce },
    Streaming,
    Closed,
}

/// The primary's side of one connection.
#[derive(Clone, Debug)]
pub struct PrimarySession {
    state: PrimaryState,
    primary_nonce: Nonce,
    /// The last record sent, and the last acknowledgement taken.
    sent: Sequence,
    acked: Ack,
    /// When something was last sent (ms, the shell's clock), for heartbeats.
    sent_at_ms: u64,
    /// What the last heartbeat told the standby about answers; none sent yet.
    answering_sent: Option<Answering>,
    /// The engine settings the standby's hello named; none before it.
    standby_engine: Option<EngineConfig>,
}

impl PrimarySession {
    /// A connection just accepted; `primary_nonce` is fresh for this handshake.
    #[must_use]
    pub fn new(primary_nonce: Nonce) -> PrimarySession {
        // Until an acknowledgement says otherwise, the standby's directory counts as catching up.
        let acked =
            Ack { written: Sequence(0), durable: Sequence(0), echo_ms: 0, catching_up: true };
        let state = PrimaryState::AwaitHello;
        PrimarySession {
            state,
            primary_nonce,
            sent: Sequence(0),
            acked,
            sent_at_ms: 0,
            answering_sent: None,
            standby_engine: None,
        }
    }

    /// Whether the connection is streaming.
    #[must_use]
    pub fn is_streaming(&self) -> bool {
        self.state == PrimaryState::Streaming
    }

    /// Handles one message from the standby.
    pub fn on_message(&mut self, message: &Message<'_>, view: &mut PrimaryView<'_>) -> PrimaryStep {
        match (self.state, message) {
            (PrimaryState::AwaitHello, Message::Hello(hello)) => self.on_hello(hello, view),
            (PrimaryState::AwaitJoin { standby_nonce }, Message::Join(join)) => self
                .check_proof(standby_nonce, &join.standby_proof, view)
                .unwrap_or_else(|| self.on_join(join, view)),
            (PrimaryState::AwaitJoin { standby_nonce }, Message::FetchSnapshot(fetch)) => {
                self.check_proof(standby_nonce, &fetch.standby_proof, view).unwrap_or_else(|| {
                    // As for a join: a standby that promised a newer epoch follows another
                    // primary, and this one's snapshot may hold records that one does not.
                    if fetch.promised_epoch > view.epoch {
                        return self.superseded(view.epoch, fetch.promised_epoch);
                    }
                    self.state = PrimaryState::Closed;
                    PrimaryStep::SendSnapshot
                })
            }
            (PrimaryState::Streaming, Message::Ack(ack)) => self.on_ack(*ack, view.epoch),
            (PrimaryState::Streaming, Message::Refuse(refuse)) => {
                self.state = PrimaryState::Closed;
                let deposed_by = (refuse.code == RefuseCode::StaleEpoch).then_some(refuse.epoch);
                let reason = format!("the standby refused the stream: {}", one_line(refuse.text));
                PrimaryStep::Close { last: None, reason, deposed_by }
            }
            (_, other) => {
                let text = format!("unexpected {} message", other.kind());
                self.refuse(RefuseCode::BadMessage, view.epoch, text)
            }
        }
    }

    /// A whole frame arrived that is no message of this version: it is refused, and the
    /// connection closes. A `Hello` of another version (its magic and version keep their
    /// places in every version) is refused with `Version`, so a standby of another release
    /// learns why; anything else with `BadMessage`. `epoch` is the primary's current one.
    pub fn on_malformed(&mut self, error: &MessageError, epoch: Epoch) -> PrimaryStep {
        if let MessageError::Version { version } = *error {
            // Worded for both logs: the standby's shows it as the primary's refusal.
            let text = format!(
                "the standby speaks replication protocol version {version}; this primary speaks \
                 {PROTOCOL_VERSION}: run the same ringfence release on the primary and the standby"
            );
            return self.refuse(RefuseCode::Version, epoch, text);
        }
        self.refuse(RefuseCode::BadMessage, epoch, error.to_string())
    }

    fn on_hello(&mut self, hello: &Hello, view: &PrimaryView<'_>) -> PrimaryStep {
        if hello.cluster != *view.cluster {
            let text =
                format!("cluster `{}` is not this cluster `{}`", hello.cluster, view.cluster);
            return self.refuse(RefuseCode::Cluster, view.epoch, text);
        }
        let standby_nonce = hello.standby_nonce;
        self.standby_engine = Some(hello.engine.clone());
        let (secret, cluster, nonce) = (view.secret, view.cluster, &self.primary_nonce);
        let primary_proof = auth::primary_proof(secret, cluster, &standby_nonce, nonce);
        self.state = PrimaryState::AwaitJoin { standby_nonce };
        PrimaryStep::Reply(Outgoing::Challenge(Challenge {
            primary_nonce: self.primary_nonce,
            primary_proof,
        }))
    }

    /// A refusal if the standby's proof is wrong or this node cannot serve it; else `None`.
    fn check_proof(
        &mut self,
        standby_nonce: Nonce,
        proof: &auth::Proof,
        view: &PrimaryView<'_>,
    ) -> Option<PrimaryStep> {
        let (secret, cluster, nonce) = (view.secret, view.cluster, &self.primary_nonce);
        if auth::verify_standby(secret, cluster, &standby_nonce, nonce, proof).is_err() {
            return Some(self.refuse(RefuseCode::Auth, view.epoch, "wrong cluster secret".into()));
        }
        let theirs = self.standby_engine.as_ref().expect("a hello came before the proof");
        if theirs != view.engine {
            // Told only to a standby that proved it holds the secret. The advice comes first:
            // with every setting different, the text's end is cut to fit a refusal.
            let text = format!(
                "give both nodes the same [engine] settings (the records replay to the same \
                 state and answers only under the same ones); the standby's differ from this \
                 primary's: {}",
                view.engine.differences(theirs, "the standby")
            );
            return Some(self.refuse(RefuseCode::Engine, view.epoch, text));
        }
        if !view.is_primary {
            let text = "this node is not the primary".to_owned();
            return Some(self.refuse(RefuseCode::NotPrimary, view.epoch, text));
        }
        None
    }

    fn on_join(&mut self, join: &Join, view: &mut PrimaryView<'_>) -> PrimaryStep {
        let position = StandbyPosition {
            last_sequence: join.last_sequence,
            last_epoch: join.last_epoch,
            promised: join.promised_epoch,
        };
        let epoch = view.epoch;
        if position.last_sequence == Sequence(u64::MAX) {
            // No journal reaches the last sequence (the record after it could not be
            // numbered): a standby that says so is broken, and the decision's arithmetic
            // would pass the end.
            let text = format!("the standby says it holds record {}", position.last_sequence);
            return self.refuse(RefuseCode::BadMessage, epoch, text);
        }
        match decide(view.journal, epoch, position) {
            JoinDecision::Stream { from } if from > view.journal_last.next() => {
                let text = format!(
                    "the standby holds records up to {}, past this journal's end {}",
                    position.last_sequence, view.journal_last
                );
                self.refuse(RefuseCode::BadMessage, epoch, text)
            }
            JoinDecision::Stream { from } => {
                self.state = PrimaryState::Streaming;
                // The standby holds up to `from - 1`, perhaps not all durably yet (records it
                // took before a reconnect may still be on their way to its journal): its
                // acknowledgements say so, and only they count.
                self.sent = Sequence(from.0 - 1);
                PrimaryStep::Stream(Start {
                    epoch,
                    from_sequence: from,
                    primary_last: view.journal_last,
                })
            }
            JoinDecision::Diverged { keep_through } if view.standby_tail_acknowledged => {
                self.behind(keep_through, position, view)
            }
            JoinDecision::Diverged { keep_through } => {
                self.state = PrimaryState::Closed;
                let reason = format!(
                    "the standby holds records after {keep_through} this journal does not \
                     ({}..={}, last from epoch {}): told to drop them and rejoin",
                    keep_through.next(),
                    position.last_sequence,
                    position.last_epoch
                );
                let last = Some(Outgoing::Diverged(Diverged { epoch, keep_through }));
                PrimaryStep::Close { last, reason, deposed_by: None }
            }
            JoinDecision::NeedsSnapshot { first_held } => {
                let text = if position.last_sequence.next() == first_held {
                    format!(
                        "the standby's last record {} (epoch {}) was retired from this journal \
                         after a snapshot, and the record after it is of another epoch, so \
                         nothing tells whether the standby's is this journal's: the standby \
                         fetches this node's newest snapshot when it starts",
                        position.last_sequence, position.last_epoch
                    )
                } else {
                    format!(
                        "the standby needs records from {}, but this journal starts at \
                         {first_held} (older segments were retired after a snapshot): the \
                         standby fetches this node's newest snapshot when it starts",
                        position.last_sequence.next()
                    )
                };
                self.refuse(RefuseCode::NeedsSnapshot, epoch, text)
            }
            JoinDecision::Superseded { promised } => self.superseded(epoch, promised),
        }
    }

    /// The standby promised `promised`, above this primary's `epoch`: a newer primary exists.
    /// It is refused, and this node steps down.
    fn superseded(&mut self, epoch: Epoch, promised: Epoch) -> PrimaryStep {
        let text = format!("this primary (epoch {epoch}) was superseded by epoch {promised}");
        let step = self.refuse(RefuseCode::StaleEpoch, epoch, text);
        let PrimaryStep::Close { last, reason, .. } = step else { unreachable!() };
        PrimaryStep::Close { last, reason, deposed_by: Some(promised) }
    }

    /// The standby holds records after `keep_through` that this journal lacks, and this
    /// primary may have answered for them before losing them: it tells the standby so, with
    /// its journal's last record, and drops nothing. The standby checks that it holds that
    /// record too, and so this whole journal: then promoting it loses nothing.
    fn behind(
        &mut self,
        keep_through: Sequence,
        position: StandbyPosition,
        view: &mut PrimaryView<'_>,
    ) -> PrimaryStep {
        let (epoch, last_sequence) = (view.epoch, view.journal_last);
        let last_epoch = if last_sequence.0 == 0 {
            Some(Epoch(0))
        } else {
            view.journal.epoch_at(last_sequence)
        };
        let lost = format!(
            "the standby holds records {}..={} (last from epoch {}) that this primary lost after \
             answering for them, its journal not synced before answers",
            keep_through.next(),
            position.last_sequence,
            position.last_epoch
        );
        let last_epoch = last_epoch.filter(|&last_epoch| last_epoch <= epoch);
        let Some(last_epoch) = last_epoch.filter(|_| last_sequence < position.last_sequence) else {
            // This journal runs past the standby's (it took records since), or its last record
            // cannot be read back: the standby cannot hold it whole. It is refused, and retries.
            let text = format!(
                "{lost}, and this journal differs from the standby's before its end \
                 {last_sequence}: each holds records the other lacks. Compare the two \
                 journals and keep one history: this primary's (move the standby's data \
                 directory aside and start it with an empty one) or the standby's (promote it \
                 and start this node as its standby)"
            );
            return self.refuse(RefuseCode::Busy, epoch, text);
        };
        self.state = PrimaryState::Closed;
        let reason = format!(
            "{lost}: told it this journal ends at {last_sequence} (epoch {last_epoch}); promote \
             the standby, then start this node as its standby"
        );
        let last = Some(Outgoing::Behind(Behind { epoch, last_sequence, last_epoch }));
        PrimaryStep::Close { last, reason, deposed_by: None }
    }

    /// Checks an acknowledgement against what was sent and acknowledged before.
    fn on_ack(&mut self, ack: Ack, epoch: Epoch) -> PrimaryStep {
        // The decoder refused `durable > written`.
        assert!(ack.durable <= ack.written, "an ack above what it wrote");
        let text = if ack.written > self.sent {
            format!("acknowledged {} but only {} was sent", ack.written, self.sent)
        } else if ack.written < self.acked.written || ack.durable < self.acked.durable {
            format!("acknowledgement went back from {:?} to {ack:?}", self.acked)
        } else {
            self.acked = ack;
            return PrimaryStep::Acknowledged(ack);
        };
        self.refuse(RefuseCode::BadMessage, epoch, text)
    }

    fn refuse(&mut self, code: RefuseCode, epoch: Epoch, text: String) -> PrimaryStep {
        self.state = PrimaryState::Closed;
        let last = Some(Outgoing::Refuse { code, epoch, text: text.clone() });
        PrimaryStep::Close { last, reason: text, deposed_by: None }
    }

    /// Records up to `through` were sent at `now_ms`.
    pub fn on_sent(&mut self, through: Sequence, now_ms: u64) {
        assert!(self.is_streaming(), "records sent outside streaming");
        assert!(through >= self.sent, "records sent out of order");
        self.sent = through;
        self.sent_at_ms = now_ms;
    }

    /// The heartbeat to send at `now_ms` if nothing was sent for `period_ms`, or if answers
    /// now leave otherwise than the last heartbeat said (the first one goes out at once): it
    /// tells the standby the primary is alive, how far its journal goes and when its answers
    /// leave, and carries the time the standby echoes back (the round trip).
    pub fn heartbeat_due(
        &mut self,
        now_ms: u64,
        period_ms: u64,
        (epoch, journal_last): (Epoch, Sequence),
        answering: Answering,
    ) -> Option<Heartbeat> {
        let idle = now_ms.saturating_sub(self.sent_at_ms) >= period_ms;
        if !self.is_streaming() || !idle && self.answering_sent == Some(answering) {
            return None;
        }
        self.sent_at_ms = now_ms;
        self.answering_sent = Some(answering);
        Some(Heartbeat { epoch, last_sequence: journal_last, sent_at_ms: now_ms, answering })
    }
}

/// What a standby's connection is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Join from this position and follow.
    Join(StandbyPosition),
    /// Fetch the primary's newest snapshot.
    FetchSnapshot,
}

/// What the standby's machine asks of its shell after a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StandbyStep {
    /// Send this and wait for the next message.
    Reply(Outgoing),
    /// The primary starts streaming in `epoch` from `from`. The shell stores `epoch` as its
    /// promise (and current epoch) durably before it takes any record.
    Following {
        /// The primary's epoch.
        epoch: Epoch,
        /// Its first record.
        from: Sequence,
    },
    /// Submit the records of the message just handled, in order, to the node.
    Apply {
        /// How many.
        count: u32,
    },
    /// Nothing to do (a heartbeat: acknowledge when the node's progress says so).
    Continue,
    /// The standby must drop every record after `keep_through`, then join again. The shell
    /// stores `epoch` as its promise first: the primary it rejoins leads in that epoch, so
    /// this node, promoted later, must take a higher one.
    Diverged {
        /// The last sequence to keep.
        keep_through: Sequence,
        /// The primary's epoch.
        epoch: Epoch,
    },
    /// The primary lost records this standby holds, and may have answered for them: it
    /// streams nothing and holds writes. The shell checks whether this journal holds the
    /// primary's whole journal (`standby::on_behind`: then promoting it loses nothing) and
    /// retries. The connection is closed.
    Behind(Behind),
    /// The snapshot transfer may begin (the shell reads the chunks).
    ReceiveSnapshot,
    /// Send this if any, then close: the reason is for the log.
    Close {
        /// The last message, if any.
        last: Option<Outgoing>,
        /// Why.
        reason: String,
        /// When the primary refused: its code, and the epoch it named (its current one) if it
        /// had proved it holds the secret, else 0 (an answer to the `Hello` proves nothing).
        refused: Option<(RefuseCode, Epoch)>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StandbyState {
    AwaitChallenge,
    AwaitStart,
    Streaming { epoch: Epoch, next: Sequence },
    Closed,
}

/// The standby's side of one connection.
#[derive(Clone, Debug)]
pub struct StandbySession {
    state: StandbyState,
    purpose: Purpose,
    standby_nonce: Nonce,
    promised: Epoch,
    /// The primary's journal end as last reported, and the last heartbeat's time to echo.
    primary_last: Sequence,
    echo_ms: u64,
    /// When the primary's answers leave, as its last heartbeat on this stream said.
    answering: Option<Answering>,
    /// The last acknowledgement sent.
    acked: Ack,
}

impl StandbySession {
    /// Opens a connection for `purpose` with a fresh nonce; returns the `Hello` to send first.
    #[must_use]
    pub fn start(
        cluster: ClusterId,
        engine: EngineConfig,
        standby_nonce: Nonce,
        purpose: Purpose,
        promised: Epoch,
    ) -> (StandbySession, Outgoing) {
        // Until an acknowledgement says otherwise, the standby's directory counts as catching up.
        let acked =
            Ack { written: Sequence(0), durable: Sequence(0), echo_ms: 0, catching_up: true };
        let session = StandbySession {
            state: StandbyState::AwaitChallenge,
            purpose,
            standby_nonce,
            promised,
            primary_last: Sequence(0),
            echo_ms: 0,
            answering: None,
            acked,
        };
        (session, Outgoing::Hello(Hello { cluster, standby_nonce, engine }))
    }

    /// The primary's journal end as it last reported it.
    #[must_use]
    pub fn primary_last(&self) -> Sequence {
        self.primary_last
    }

    /// Whether a standby holding `held` holds every record the primary acknowledged: it holds
    /// all the primary reported, and the primary's last heartbeat on this stream said its
    /// answers wait for this standby (or that the operator chose `async`). Holding all it
    /// was told of is not enough while the primary still answers alone: until it has
    /// received an acknowledgement that shows this standby caught up, it acknowledges records
    /// the standby may never get.
    #[must_use]
    pub fn holds_everything_acknowledged(&self, held: Sequence) -> bool {
        let waits = matches!(self.answering, Some(Answering::AfterStandby | Answering::Async));
        waits && held >= self.primary_last
    }

    /// Whether the primary's last heartbeat on this stream said it answers on its journal
    /// alone: then it acknowledges records this standby may never get, whatever the standby
    /// held before (a primary switched from `async` back to `sync` answers alone until its
    /// standby has caught up).
    #[must_use]
    pub fn primary_answers_alone(&self) -> bool {
        self.answering == Some(Answering::Alone)
    }

    /// Handles one message from the primary.
    pub fn on_message(
        &mut self,
        message: &Message<'_>,
        secret: &ClusterSecret,
        cluster: &ClusterId,
    ) -> StandbyStep {
        match (self.state, message) {
            (StandbyState::AwaitChallenge, Message::Challenge(challenge)) => {
                self.on_challenge(challenge, secret, cluster)
            }
            (StandbyState::AwaitStart, Message::Start(start)) => self.on_start(start),
            (StandbyState::AwaitStart, Message::Behind(behind)) => self.on_behind(*behind),
            (StandbyState::AwaitStart, Message::Diverged(diverged)) => self.on_diverged(*diverged),
            (StandbyState::AwaitStart, Message::SnapshotChunk(_))
                if self.purpose == Purpose::FetchSnapshot =>
            {
                self.state = StandbyState::Closed;
                StandbyStep::ReceiveSnapshot
            }
            (StandbyState::Streaming { epoch, next }, Message::Records(records)) => {
                self.on_records(epoch, next, records)
            }
            (StandbyState::Streaming { .. }, Message::Heartbeat(beat)) => self.on_heartbeat(beat),
            (state, Message::Refuse(refuse)) => {
                self.state = StandbyState::Closed;
                // Before the challenge anyone at the address may answer. A primary refuses
                // there only a peer of another version or cluster, or a hello it could not
                // read: those refusals are taken, their epoch is not. Every other code a
                // primary sends once it has proved the secret, and each moves the standby
                // (`NeedsSnapshot` sends it to fetch, `Busy` clears its claim to hold the
                // primary's journal, `Auth` or `Engine` stops a start): before the proof it
                // is the peer's protocol error, and changes nothing.
                let proved = state != StandbyState::AwaitChallenge;
                let said_unproven = matches!(
                    refuse.code,
                    RefuseCode::Version | RefuseCode::Cluster | RefuseCode::BadMessage
                );
                // The text goes to the log and the node's status: a line of its own, whoever
                // sent it.
                let text = one_line(refuse.text);
                if !proved && !said_unproven {
                    let reason = format!(
                        "the peer refused ({:?}) before proving it holds the cluster secret, \
                         which a primary never does: {text}",
                        refuse.code
                    );
                    return StandbyStep::Close { last: None, reason, refused: None };
                }
                let epoch = if proved { refuse.epoch } else { Epoch(0) };
                let reason = format!("the primary refused: {text}");
                StandbyStep::Close { last: None, reason, refused: Some((refuse.code, epoch)) }
            }
            (_, other) => {
                self.refuse(RefuseCode::BadMessage, format!("unexpected {}", other.kind()))
            }
        }
    }

    fn on_challenge(
        &mut self,
        challenge: &Challenge,
        secret: &ClusterSecret,
        cluster: &ClusterId,
    ) -> StandbyStep {
        let (standby, primary) = (&self.standby_nonce, &challenge.primary_nonce);
        if auth::verify_primary(secret, cluster, standby, primary, &challenge.primary_proof)
            .is_err()
        {
            self.state = StandbyState::Closed;
            let reason = "the primary does not hold the cluster secret".to_owned();
            return StandbyStep::Close { last: None, reason, refused: None };
        }
        let standby_proof = auth::standby_proof(secret, cluster, standby, primary);
        self.state = StandbyState::AwaitStart;
        StandbyStep::Reply(match self.purpose {
            Purpose::Join(position) => Outgoing::Join(Join {
                standby_proof,
                last_sequence: position.last_sequence,
                last_epoch: position.last_epoch,
                promised_epoch: position.promised,
            }),
            Purpose::FetchSnapshot => Outgoing::FetchSnapshot(FetchSnapshot {
                standby_proof,
                promised_epoch: self.promised,
            }),
        })
    }

    fn on_start(&mut self, start: &Start) -> StandbyStep {
        let Purpose::Join(position) = self.purpose else {
            return self.refuse(RefuseCode::BadMessage, "a start when a snapshot was asked".into());
        };
        if let Some(refused) = self.refuse_below_promise(start.epoch) {
            return refused;
        }
        if start.from_sequence != position.last_sequence.next() {
            let text = format!(
                "the primary streams from {}, but this journal continues at {}",
                start.from_sequence,
                position.last_sequence.next()
            );
            return self.refuse(RefuseCode::BadMessage, text);
        }
        self.promised = start.epoch;
        self.primary_last = start.primary_last;
        self.state = StandbyState::Streaming { epoch: start.epoch, next: start.from_sequence };
        StandbyStep::Following { epoch: start.epoch, from: start.from_sequence }
    }

    /// The refusal of a primary leading in `epoch`, below this standby's promise, if it is.
    fn refuse_below_promise(&mut self, epoch: Epoch) -> Option<StandbyStep> {
        (epoch < self.promised).then(|| {
            let text = format!(
                "epoch {epoch} is below the epoch this standby promised ({})",
                self.promised
            );
            self.refuse(RefuseCode::StaleEpoch, text)
        })
    }

    fn on_diverged(&mut self, diverged: Diverged) -> StandbyStep {
        let Purpose::Join(position) = self.purpose else {
            return self
                .refuse(RefuseCode::BadMessage, "diverged when a snapshot was asked".into());
        };
        // A deposed primary does not decide what this journal drops: an honest one answers a
        // join that promised a newer epoch `Superseded` before it compares journals.
        if let Some(refused) = self.refuse_below_promise(diverged.epoch) {
            return refused;
        }
        if diverged.keep_through >= position.last_sequence {
            let text = format!(
                "the primary says this journal diverged after {}, but it ends at {}",
                diverged.keep_through, position.last_sequence
            );
            return self.refuse(RefuseCode::BadMessage, text);
        }
        self.state = StandbyState::Closed;
        StandbyStep::Diverged { keep_through: diverged.keep_through, epoch: diverged.epoch }
    }

    fn on_behind(&mut self, behind: Behind) -> StandbyStep {
        let Purpose::Join(position) = self.purpose else {
            return self.refuse(RefuseCode::BadMessage, "behind when a snapshot was asked".into());
        };
        if let Some(refused) = self.refuse_below_promise(behind.epoch) {
            return refused;
        }
        if behind.last_sequence >= position.last_sequence {
            let text = format!(
                "the primary says it lost records this standby holds, but its journal ends at \
                 {}, not before this one's {}",
                behind.last_sequence, position.last_sequence
            );
            return self.refuse(RefuseCode::BadMessage, text);
        }
        self.state = StandbyState::Closed;
        StandbyStep::Behind(behind)
    }

    fn on_records(&mut self, epoch: Epoch, next: Sequence, records: &Records<'_>) -> StandbyStep {
        if records.first_sequence() != next {
            let text = format!("records from {}, expected {next}", records.first_sequence());
            return self.refuse(RefuseCode::BadMessage, text);
        }
        let newest = records.iter().map(|r| ringfence_core::record::read_header(r).epoch).max();
        if newest.is_some_and(|newest| newest > epoch) {
            let text = format!("a record of an epoch above the stream's ({epoch})");
            return self.refuse(RefuseCode::BadMessage, text);
        }
        let last = records.last_sequence();
        self.state = StandbyState::Streaming { epoch, next: last.next() };
        self.primary_last = self.primary_last.max(last);
        StandbyStep::Apply { count: records.count() }
    }

    fn on_heartbeat(&mut self, beat: &Heartbeat) -> StandbyStep {
        if beat.epoch < self.promised {
            let text =
                format!("heartbeat from epoch {}, below our promise {}", beat.epoch, self.promised);
            return self.refuse(RefuseCode::StaleEpoch, text);
        }
        self.primary_last = self.primary_last.max(beat.last_sequence);
        self.echo_ms = beat.sent_at_ms;
        self.answering = Some(beat.answering);
        StandbyStep::Continue
    }

    fn refuse(&mut self, code: RefuseCode, text: String) -> StandbyStep {
        self.state = StandbyState::Closed;
        let last = Some(Outgoing::Refuse { code, epoch: self.promised, text: text.clone() });
        StandbyStep::Close { last, reason: text, refused: None }
    }

    /// The acknowledgement to send now that the node holds `written` (appended) and
    /// `durable`, with its data directory `catching_up` or not, or `None` if it would say
    /// nothing new and no heartbeat awaits its echo.
    pub fn ack(&mut self, written: Sequence, durable: Sequence, catching_up: bool) -> Option<Ack> {
        assert!(durable <= written, "durable above written");
        let echo_ms = std::mem::take(&mut self.echo_ms);
        let moved = written > self.acked.written
            || durable > self.acked.durable
            || catching_up != self.acked.catching_up;
        if !moved && echo_ms == 0 {
            return None;
        }
        let ack = Ack {
            written: written.max(self.acked.written),
            durable: durable.max(self.acked.durable),
            echo_ms,
            catching_up,
        };
        self.acked = ack;
        Some(ack)
    }
}

/// `text` with each control character (a line break, an escape sequence's start) shown as a
/// space, so that text from a peer stays one line of the log, in whatever format.
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{decode, encode};
    use crate::position::EpochList;

    /// Both nodes' engine settings.
    const ENGINE: EngineConfig = EngineConfig::small();

    /// A primary in `epoch` over `journal`.
    fn view<'a>(
        cluster: &'a ClusterId,
        secret: &'a ClusterSecret,
        journal: &'a mut EpochList,
        epoch: u64,
    ) -> PrimaryView<'a> {
        let journal_last = journal.last().unwrap_or(Sequence(0));
        PrimaryView {
            cluster,
            secret,
            engine: &ENGINE,
            epoch: Epoch(epoch),
            is_primary: true,
            journal,
            journal_last,
            standby_tail_acknowledged: false,
        }
    }

    /// The refusal a step sends, if it sends one.
    fn primary_refusal(step: &PrimaryStep) -> Option<RefuseCode> {
        match step {
            PrimaryStep::Close { last: Some(Outgoing::Refuse { code, .. }), .. } => Some(*code),
            _ => None,
        }
    }

    fn standby_refusal(step: &StandbyStep) -> Option<RefuseCode> {
        match step {
            StandbyStep::Close { last: Some(Outgoing::Refuse { code, .. }), .. } => Some(*code),
            _ => None,
        }
    }

    fn cluster() -> ClusterId {
        ClusterId::new("test").unwrap()
    }

    fn secret(text: &str) -> ClusterSecret {
        ClusterSecret::from_bytes(text.as_bytes()).unwrap()
    }

    /// Encodes and decodes, as the wire would.
    fn wire(outgoing: &Outgoing, run: &mut dyn FnMut(&Message<'_>)) {
        let mut bytes = Vec::new();
        encode(&outgoing.message(), &mut bytes);
        let (message, used) = decode(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        run(&message);
    }

    struct Pair {
        primary: PrimarySession,
        standby: StandbySession,
        journal: EpochList,
    }

    fn position(last: u64, epoch: u64, promised: u64) -> StandbyPosition {
        StandbyPosition {
            last_sequence: Sequence(last),
            last_epoch: Epoch(epoch),
            promised: Epoch(promised),
        }
    }

    /// Runs the handshake; returns the primary's answer to the join and the pair.
    fn handshake(standby_secret: &str, at: StandbyPosition, epoch: u64) -> (PrimaryStep, Pair) {
        let key = secret("the-shared-secret-16+");
        let (mut standby, hello) = StandbySession::start(
            cluster(),
            EngineConfig::small(),
            [1; 32],
            Purpose::Join(at),
            at.promised,
        );
        let mut pair_primary = PrimarySession::new([2; 32]);
        let mut journal = EpochList::flat(10, 1);
        let cluster = cluster();
        let mut step = None;
        let mut view = view(&cluster, &key, &mut journal, epoch);
        wire(&hello, &mut |m| step = Some(pair_primary.on_message(m, &mut view)));
        let Some(PrimaryStep::Reply(challenge)) = step.take() else { panic!("{step:?}") };
        let standby_key = secret(standby_secret);
        let mut reply = None;
        wire(&challenge, &mut |m| reply = Some(standby.on_message(m, &standby_key, &cluster)));
        let join = match reply.unwrap() {
            StandbyStep::Reply(join) => join,
            other => {
                let pair = Pair { primary: pair_primary, standby, journal: EpochList::flat(10, 1) };
                return (
                    PrimaryStep::Close {
                        last: None,
                        reason: format!("{other:?}"),
                        deposed_by: None,
                    },
                    pair,
                );
            }
        };
        wire(&join, &mut |m| step = Some(pair_primary.on_message(m, &mut view)));
        let pair = Pair { primary: pair_primary, standby, journal: EpochList::flat(10, 1) };
        (step.unwrap(), pair)
    }

    #[test]
    fn a_standby_behind_joins_and_streams_from_its_next_record() {
        // Goal: the common handshake: both prove the secret, the primary streams from 4.
        let (step, mut pair) = handshake("the-shared-secret-16+", position(3, 1, 1), 1);
        let PrimaryStep::Stream(start) = step else { panic!("{step:?}") };
        assert_eq!((start.from_sequence, start.primary_last), (Sequence(4), Sequence(10)));
        let key = secret("the-shared-secret-16+");
        let following = pair.standby.on_message(&Message::Start(start), &key, &cluster());
        assert_eq!(following, StandbyStep::Following { epoch: Epoch(1), from: Sequence(4) });
        assert!(pair.primary.is_streaming());
        let _ = &mut pair.journal;
    }

    #[test]
    fn a_standby_that_says_it_holds_the_last_sequence_is_refused() {
        // Goal: a join naming sequence 2^64 - 1 as the standby's last record (which no journal
        // reaches) is refused as a bad message, not decided with arithmetic past the end; the
        // one before it is decided as any record past the primary's journal is.
        let (step, _) = handshake("the-shared-secret-16+", position(u64::MAX, 1, 1), 1);
        assert_eq!(primary_refusal(&step), Some(RefuseCode::BadMessage), "{step:?}");
        let (step, _) = handshake("the-shared-secret-16+", position(u64::MAX - 1, 1, 1), 1);
        assert!(primary_refusal(&step).is_none(), "{step:?}");
    }

    #[test]
    fn a_primary_that_may_have_answered_for_records_it_lost_never_drops_them_from_its_standby() {
        // Goal: a standby holding records 11..=13 the primary lacks is told to drop them, unless
        // the primary may have acknowledged them before losing them (restarted after a standby
        // was in sync, its journal answering before it syncs). Then it is told the primary is
        // behind, with the primary's last record, which the standby's machine hands to its
        // shell to compare; nothing is dropped. A primary whose journal has since run past the
        // standby's refuses it instead, naming the records.
        let key = secret("the-shared-secret-16+");
        let ours = cluster();
        // (standby's last record and its epoch, primary's journal, tail acknowledged)
        let mut grown = EpochList::flat(15, 1);
        grown.epochs[10..].fill(2);
        let cases = [
            ((13, 1), EpochList::flat(10, 1), false),
            ((13, 1), EpochList::flat(10, 1), true),
            ((13, 1), grown, true),
        ];
        for ((last, last_epoch), mut journal, acknowledged) in cases {
            let at = position(last, last_epoch, 1);
            let (mut standby, hello) = StandbySession::start(
                ours,
                EngineConfig::small(),
                [1; 32],
                Purpose::Join(at),
                at.promised,
            );
            let mut primary = PrimarySession::new([2; 32]);
            let mut view = view(&ours, &key, &mut journal, 2);
            view.standby_tail_acknowledged = acknowledged;
            let mut step = None;
            wire(&hello, &mut |m| step = Some(primary.on_message(m, &mut view)));
            let Some(PrimaryStep::Reply(challenge)) = step.take() else { panic!("{step:?}") };
            let mut reply = None;
            wire(&challenge, &mut |m| reply = Some(standby.on_message(m, &key, &ours)));
            let Some(StandbyStep::Reply(join)) = reply else { panic!("{reply:?}") };
            wire(&join, &mut |m| step = Some(primary.on_message(m, &mut view)));
            let grew = view.journal_last > Sequence(last);
            match step.expect("an answer to the join") {
                PrimaryStep::Close { last: Some(Outgoing::Diverged(diverged)), .. } => {
                    assert!(!acknowledged, "told to drop records it may have acknowledged");
                    assert_eq!(diverged.keep_through, Sequence(10));
                }
                PrimaryStep::Close { last: Some(Outgoing::Behind(behind)), reason, .. } => {
                    assert!(acknowledged && !grew, "behind a standby holding less: {behind:?}");
                    let expected = Behind {
                        epoch: Epoch(2),
                        last_sequence: Sequence(10),
                        last_epoch: Epoch(1),
                    };
                    assert_eq!(behind, expected);
                    assert!(reason.contains("11..=13") && reason.contains("promote"), "{reason}");
                    let mut told = None;
                    let outgoing = Outgoing::Behind(behind);
                    wire(&outgoing, &mut |m| told = Some(standby.on_message(m, &key, &ours)));
                    assert_eq!(told, Some(StandbyStep::Behind(expected)));
                }
                PrimaryStep::Close { last: Some(Outgoing::Refuse { code, text, .. }), .. } => {
                    assert!(acknowledged && grew, "refused a standby it could tell it is behind");
                    assert_eq!(code, RefuseCode::Busy);
                    let split = "each holds records the other lacks";
                    assert!(text.contains("11..=13") && text.contains(split), "{text}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// A standby whose journal ends at 13 (epoch 1, promised 2), its join sent to a primary of
    /// epoch 3 holding 1..=10, awaiting the answer.
    fn joined_at_13(key: &ClusterSecret) -> StandbySession {
        let ours = cluster();
        let at = position(13, 1, 2);
        let (mut standby, hello) = StandbySession::start(
            ours,
            EngineConfig::small(),
            [1; 32],
            Purpose::Join(at),
            at.promised,
        );
        let mut primary = PrimarySession::new([2; 32]);
        let mut journal = EpochList::flat(10, 1);
        let mut view = view(&ours, key, &mut journal, 3);
        let mut step = None;
        wire(&hello, &mut |m| step = Some(primary.on_message(m, &mut view)));
        let Some(PrimaryStep::Reply(challenge)) = step.take() else { panic!("{step:?}") };
        let mut join = None;
        wire(&challenge, &mut |m| join = Some(standby.on_message(m, key, &ours)));
        assert!(matches!(join, Some(StandbyStep::Reply(_))), "{join:?}");
        standby
    }

    #[test]
    fn a_standby_refuses_to_drop_nothing_or_more_than_it_holds() {
        // Goal: told its journal diverged after a sequence at or past its own last record (a
        // primary's bug or a corrupted frame that passed its checks), a standby refuses the
        // answer rather than cut nothing or fail on it; a cut below its last is taken. Told by
        // a primary of an epoch below its promise (2), it refuses too: a deposed primary does
        // not cut its journal.
        let (key, ours) = (secret("the-shared-secret-16+"), cluster());
        let cases = [
            (3, 12, None),
            (3, 0, None),
            (2, 12, None),
            (3, 13, Some(RefuseCode::BadMessage)),
            (3, 40, Some(RefuseCode::BadMessage)),
            (1, 12, Some(RefuseCode::StaleEpoch)),
        ];
        for (epoch, keep_through, refused) in cases {
            let mut standby = joined_at_13(&key);
            let told = Diverged { epoch: Epoch(epoch), keep_through: Sequence(keep_through) };
            let mut answer = None;
            wire(&Outgoing::Diverged(told), &mut |m| {
                answer = Some(standby.on_message(m, &key, &ours))
            });
            let answer = answer.expect("an answer");
            if let Some(code) = refused {
                assert_eq!(standby_refusal(&answer), Some(code), "{told:?}: {answer:?}");
            } else {
                let expected =
                    StandbyStep::Diverged { keep_through: told.keep_through, epoch: told.epoch };
                assert_eq!(answer, expected);
            }
        }
    }

    #[test]
    fn a_standby_checks_that_a_primary_behind_it_is_behind() {
        // Goal: a primary behind this standby must lead in an epoch at least the standby's
        // promise, and its journal must end before the standby's: otherwise the standby
        // refuses it, rather than comparing journals on a false premise.
        let key = secret("the-shared-secret-16+");
        let ours = cluster();
        let behind = |epoch: u64, last: u64| Behind {
            epoch: Epoch(epoch),
            last_sequence: Sequence(last),
            last_epoch: Epoch(1),
        };
        let cases = [
            (behind(3, 10), None),
            (behind(3, 12), None),
            (behind(1, 10), Some(RefuseCode::StaleEpoch)),
            (behind(3, 13), Some(RefuseCode::BadMessage)),
            (behind(3, 20), Some(RefuseCode::BadMessage)),
        ];
        for (told, refused) in cases {
            let mut standby = joined_at_13(&key);
            let mut answer = None;
            wire(&Outgoing::Behind(told), &mut |m| {
                answer = Some(standby.on_message(m, &key, &ours))
            });
            let answer = answer.expect("an answer");
            match refused {
                None => assert_eq!(answer, StandbyStep::Behind(told)),
                Some(code) => assert_eq!(standby_refusal(&answer), Some(code), "{answer:?}"),
            }
        }
    }

    #[test]
    fn a_wrong_secret_is_refused_both_ways() {
        // Goal: a standby with another secret cannot verify the primary, and never sends a
        // proof; a standby proof made with another secret is refused by the primary.
        let (step, _) = handshake("another-secret-of-16+", position(0, 0, 1), 1);
        assert!(matches!(step, PrimaryStep::Close { .. }), "{step:?}");
        let key = secret("the-shared-secret-16+");
        let mut primary = PrimarySession::new([2; 32]);
        let mut journal = EpochList::flat(0, 1);
        let cluster = cluster();
        let mut view = view(&cluster, &key, &mut journal, 1);
        let hello = Hello { cluster, standby_nonce: [1; 32], engine: EngineConfig::small() };
        assert!(matches!(
            primary.on_message(&Message::Hello(hello), &mut view),
            PrimaryStep::Reply(_)
        ));
        let forged = Join {
            standby_proof: [9; 32],
            last_sequence: Sequence(0),
            last_epoch: Epoch(0),
            promised_epoch: Epoch(1),
        };
        let step = primary.on_message(&Message::Join(forged), &mut view);
        assert_eq!(primary_refusal(&step), Some(RefuseCode::Auth), "{step:?}");
    }

    /// Passes the standby's `hello` to the primary and its challenge back: the standby's
    /// proof (a `Join` or `FetchSnapshot`), made with the shared secret.
    fn proof(
        standby: &mut StandbySession,
        hello: Outgoing,
        primary: &mut PrimarySession,
        view: &mut PrimaryView<'_>,
    ) -> Outgoing {
        let Outgoing::Hello(hello) = hello else { panic!("{hello:?}") };
        let step = primary.on_message(&Message::Hello(hello), view);
        let PrimaryStep::Reply(Outgoing::Challenge(challenge)) = step else { panic!("{step:?}") };
        match standby.on_message(&Message::Challenge(challenge), view.secret, view.cluster) {
            StandbyStep::Reply(proof) => proof,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_message_of_another_version_is_refused_by_code() {
        // Goal: a frame that is no message of this version closes the connection with a
        // refusal the peer can act on: `Version` for a `Hello` of another version, naming
        // both, and `BadMessage` for anything else.
        let older = MessageError::Version { version: 5 };
        let step = PrimarySession::new([2; 32]).on_malformed(&older, Epoch(3));
        assert_eq!(primary_refusal(&step), Some(RefuseCode::Version), "{step:?}");
        let PrimaryStep::Close { reason, .. } = step else { unreachable!() };
        assert!(reason.contains("version 5; this primary speaks 6"), "{reason}");
        let magic = MessageError::BadMagic { found: *b"HTTP" };
        let step = PrimarySession::new([2; 32]).on_malformed(&magic, Epoch(3));
        assert_eq!(primary_refusal(&step), Some(RefuseCode::BadMessage), "{step:?}");
    }

    #[test]
    fn another_cluster_and_a_standby_node_refuse_joins() {
        // Goal: the cluster id is checked first; a node that is not primary refuses joins.
        let key = secret("the-shared-secret-16+");
        let mut journal = EpochList::flat(0, 1);
        let ours = cluster();
        let mut view = view(&ours, &key, &mut journal, 1);
        let other = Hello {
            cluster: ClusterId::new("other").unwrap(),
            standby_nonce: [1; 32],
            engine: EngineConfig::small(),
        };
        let step = PrimarySession::new([2; 32]).on_message(&Message::Hello(other), &mut view);
        assert_eq!(primary_refusal(&step), Some(RefuseCode::Cluster), "{step:?}");
        let (mut standby, hello) = StandbySession::start(
            ours,
            EngineConfig::small(),
            [1; 32],
            Purpose::FetchSnapshot,
            Epoch(1),
        );
        view.is_primary = false;
        let mut primary = PrimarySession::new([2; 32]);
        let Outgoing::FetchSnapshot(fetch) = proof(&mut standby, hello, &mut primary, &mut view)
        else {
            panic!()
        };
        let step = primary.on_message(&Message::FetchSnapshot(fetch), &mut view);
        assert_eq!(primary_refusal(&step), Some(RefuseCode::NotPrimary), "{step:?}");
    }

    #[test]
    fn a_standby_of_other_engine_settings_is_refused_once_it_proved_the_secret() {
        // Goal: records replay to the same answers only under the same settings, so a standby
        // of another shard or table size never joins nor fetches a snapshot; the refusal names
        // what differs, and only a standby that proved the secret learns the primary's.
        let key = secret("the-shared-secret-16+");
        let mut journal = EpochList::flat(0, 1);
        let ours = cluster();
        let mut view = view(&ours, &key, &mut journal, 1);
        let other = EngineConfig { shard: 7, orders_max: 2_048, ..EngineConfig::small() };
        for purpose in [Purpose::Join(position(0, 0, 1)), Purpose::FetchSnapshot] {
            for forged in [false, true] {
                let (mut standby, hello) =
                    StandbySession::start(ours, other.clone(), [1; 32], purpose, Epoch(1));
                let mut primary = PrimarySession::new([2; 32]);
                // The settings are checked only with the proof, after the challenge.
                let proof = proof(&mut standby, hello, &mut primary, &mut view);
                // A proof not made with the shared secret fails first.
                let proof = match proof {
                    Outgoing::Join(join) if forged => {
                        Outgoing::Join(Join { standby_proof: [9; 32], ..join })
                    }
                    Outgoing::FetchSnapshot(fetch) if forged => {
                        Outgoing::FetchSnapshot(FetchSnapshot { standby_proof: [9; 32], ..fetch })
                    }
                    proof => proof,
                };
                let step = primary.on_message(&proof.message(), &mut view);
                let PrimaryStep::Close { last: Some(Outgoing::Refuse { code, text, .. }), .. } =
                    &step
                else {
                    panic!("{step:?}")
                };
                if forged {
                    assert_eq!(*code, RefuseCode::Auth, "{step:?}");
                    assert!(!text.contains("shard"), "{text}");
                } else {
                    assert_eq!(*code, RefuseCode::Engine, "{step:?}");
                    let named = "shard = 1 (the standby: 7), orders_max = 1024 (the standby: 2048)";
                    assert!(text.contains(named), "{text}");
                }
            }
        }
        // Every setting different: the refusal, cut to what a `Refuse` carries, still says
        // what to do and begins naming them.
        let every = EngineConfig::default();
        assert!(every.settings().iter().zip(ENGINE.settings()).all(|(a, b)| a.1 != b.1));
        let (mut standby, hello) =
            StandbySession::start(ours, every, [1; 32], Purpose::FetchSnapshot, Epoch(1));
        let mut primary = PrimarySession::new([2; 32]);
        let proof = proof(&mut standby, hello, &mut primary, &mut view);
        let step = primary.on_message(&proof.message(), &mut view);
        let PrimaryStep::Close { last: Some(Outgoing::Refuse { code, text, epoch }), .. } = &step
        else {
            panic!("{step:?}")
        };
        assert!(text.len() > crate::message::REFUSE_TEXT_LEN_MAX, "{text}");
        let sent = Refuse::new(*code, *epoch, text).text;
        assert!(sent.starts_with("give both nodes the same [engine] settings"), "{sent}");
        assert!(sent.contains("shard = 1 (the standby: 0), skus_max = 64"), "{sent}");
    }

    #[test]
    fn a_standby_that_promised_a_newer_epoch_deposes_the_primary() {
        // Goal: the fence seen from the old primary: it refuses and learns it must step down.
        let (step, _) = handshake("the-shared-secret-16+", position(10, 1, 3), 2);
        let PrimaryStep::Close { deposed_by, .. } = step else { panic!("{step:?}") };
        assert_eq!(deposed_by, Some(Epoch(3)));
    }

    #[test]
    fn a_fetch_from_a_standby_that_promised_a_newer_epoch_gets_no_snapshot() {
        // Goal: the fence holds for a snapshot as for a join: a primary superseded between a
        // standby's join and its fetch sends nothing and steps down, while a standby whose
        // promise is this primary's epoch, or below it, gets the snapshot.
        let key = secret("the-shared-secret-16+");
        let mut journal = EpochList::flat(0, 1);
        let ours = cluster();
        let mut view = view(&ours, &key, &mut journal, 2);
        for (promised, superseded) in [(1, false), (2, false), (3, true)] {
            let engine = EngineConfig::small();
            let (mut standby, hello) = StandbySession::start(
                ours,
                engine,
                [1; 32],
                Purpose::FetchSnapshot,
                Epoch(promised),
            );
            let mut primary = PrimarySession::new([2; 32]);
            let proof = proof(&mut standby, hello, &mut primary, &mut view);
            let Outgoing::FetchSnapshot(fetch) = proof else { panic!("{proof:?}") };
            assert_eq!(fetch.promised_epoch, Epoch(promised));
            let step = primary.on_message(&Message::FetchSnapshot(fetch), &mut view);
            if superseded {
                let PrimaryStep::Close {
                    last: Some(Outgoing::Refuse { code, .. }),
                    deposed_by,
                    ..
                } = &step
                else {
                    panic!("{step:?}")
                };
                assert_eq!((*code, *deposed_by), (RefuseCode::StaleEpoch, Some(Epoch(3))));
            } else {
                assert_eq!(step, PrimaryStep::SendSnapshot, "promised {promised}");
            }
        }
    }

    #[test]
    fn a_refusal_before_the_primary_proved_the_secret_names_no_epoch_and_sends_no_fetch() {
        // Goal: anyone at the primary's address can answer a `Hello`. A refusal there is taken
        // when a primary may send it before any challenge (another version or cluster, a
        // hello it could not read), but not its epoch, which a standby would promise; every
        // other code (`NeedsSnapshot`, which sends it to fetch and drop its journal; `Busy`,
        // which clears its claim to the primary's journal; `Auth` or `Engine`, which stop a
        // start) is a protocol error there. After the challenge each is the primary's. The
        // refusal's text, said in the log, stays one line.
        let key = secret("the-shared-secret-16+");
        let start = || {
            let at = position(5, 2, 3);
            let engine = EngineConfig::small();
            StandbySession::start(cluster(), engine, [1; 32], Purpose::Join(at), Epoch(3)).0
        };
        let refuse = |code| Message::Refuse(Refuse::new(code, Epoch(u64::MAX), "told"));
        let refused = |step: StandbyStep| match step {
            StandbyStep::Close { refused, .. } => refused,
            other => panic!("{other:?}"),
        };
        let mut before = start();
        let forged = "told\n2026-12-08T00:00:00Z  INFO ringfence: \x1b[2Jpromoted";
        let told = Message::Refuse(Refuse::new(RefuseCode::Version, Epoch(1), forged));
        let StandbyStep::Close { reason, .. } = before.on_message(&told, &key, &cluster()) else {
            panic!("a refusal closes")
        };
        assert!(!reason.contains(['\n', '\x1b']) && reason.contains("told 2026"), "{reason}");
        for code in RefuseCode::ALL {
            let mut before = start();
            let step = before.on_message(&refuse(code), &key, &cluster());
            let unproven = [RefuseCode::Version, RefuseCode::Cluster, RefuseCode::BadMessage];
            let taken = unproven.contains(&code).then_some((code, Epoch(0)));
            assert_eq!(refused(step), taken, "{code:?}");
        }
        let mut after = start();
        let challenge = Challenge {
            primary_nonce: [2; 32],
            primary_proof: auth::primary_proof(&key, &cluster(), &[1; 32], &[2; 32]),
        };
        let joined = after.on_message(&Message::Challenge(challenge), &key, &cluster());
        assert!(matches!(joined, StandbyStep::Reply(Outgoing::Join(_))), "{joined:?}");
        let told = Message::Refuse(Refuse::new(RefuseCode::NeedsSnapshot, Epoch(7), "retired"));
        let step = after.on_message(&told, &key, &cluster());
        assert_eq!(refused(step), Some((RefuseCode::NeedsSnapshot, Epoch(7))));
    }

    #[test]
    fn a_start_below_the_promise_is_refused_by_the_standby() {
        // Goal: the fence seen from the standby: a primary of an older epoch gets no follower.
        let key = secret("the-shared-secret-16+");
        let at = position(5, 2, 3);
        let (mut standby, _) = StandbySession::start(
            cluster(),
            EngineConfig::small(),
            [1; 32],
            Purpose::Join(at),
            Epoch(3),
        );
        let challenge = Challenge {
            primary_nonce: [2; 32],
            primary_proof: auth::primary_proof(&key, &cluster(), &[1; 32], &[2; 32]),
        };
        assert!(matches!(
            standby.on_message(&Message::Challenge(challenge), &key, &cluster()),
            StandbyStep::Reply(Outgoing::Join(_))
        ));
        let start =
            Start { epoch: Epoch(2), from_sequence: Sequence(6), primary_last: Sequence(9) };
        let step = standby.on_message(&Message::Start(start), &key, &cluster());
        assert_eq!(standby_refusal(&step), Some(RefuseCode::StaleEpoch), "{step:?}");
    }

    #[test]
    fn a_following_standby_refuses_a_heartbeat_below_its_promise_and_a_record_above_the_stream() {
        // Goal: following a primary of epoch 2, the standby takes its heartbeats and records of
        // epoch 2 and below; a heartbeat of epoch 1 (a deposed primary's) is refused
        // `StaleEpoch`, and a record of epoch 3, above the stream's, `BadMessage`.
        let key = secret("the-shared-secret-16+");
        let following = || {
            let (step, mut pair) = handshake("the-shared-secret-16+", position(3, 1, 1), 2);
            let PrimaryStep::Stream(start) = step else { panic!("{step:?}") };
            let told = pair.standby.on_message(&Message::Start(start), &key, &cluster());
            assert_eq!(told, StandbyStep::Following { epoch: Epoch(2), from: Sequence(4) });
            pair.standby
        };
        let beat = |epoch| Heartbeat {
            epoch: Epoch(epoch),
            last_sequence: Sequence(10),
            sent_at_ms: 1_000,
            answering: Answering::AfterStandby,
        };
        let mut standby = following();
        let taken = standby.on_message(&Message::Heartbeat(beat(2)), &key, &cluster());
        assert_eq!(taken, StandbyStep::Continue);
        let mut standby = following();
        let refused = standby.on_message(&Message::Heartbeat(beat(1)), &key, &cluster());
        assert_eq!(standby_refusal(&refused), Some(RefuseCode::StaleEpoch), "{refused:?}");

        let record = |epoch| {
            let tick = ringfence_core::Sequenced {
                sequence: Sequence(4),
                timestamp: ringfence_core::Timestamp(5),
                command: ringfence_core::Command::Tick,
            };
            ringfence_core::record::RecordBuf::default().encode(Epoch(epoch), &tick).to_vec()
        };
        for (epoch, refused) in [(1, None), (2, None), (3, Some(RefuseCode::BadMessage))] {
            let mut standby = following();
            let bytes = record(epoch);
            let records = Message::Records(Records::new(Sequence(4), 1, &bytes).unwrap());
            let step = standby.on_message(&records, &key, &cluster());
            match refused {
                None => assert_eq!(step, StandbyStep::Apply { count: 1 }, "epoch {epoch}"),
                Some(code) => assert_eq!(standby_refusal(&step), Some(code), "{step:?}"),
            }
        }
    }

    #[test]
    fn acknowledgements_may_not_pass_what_was_sent_or_go_back() {
        // Goal: a standby cannot acknowledge records it was never sent, nor take one back.
        let (step, mut pair) = handshake("the-shared-secret-16+", position(3, 1, 1), 1);
        assert!(matches!(step, PrimaryStep::Stream(_)));
        pair.primary.on_sent(Sequence(8), 100);
        let ack = |w, d| {
            let (written, durable) = (Sequence(w), Sequence(d));
            Message::Ack(Ack { written, durable, echo_ms: 0, catching_up: false })
        };
        let key = secret("the-shared-secret-16+");
        let cluster = cluster();
        let mut view = view(&cluster, &key, &mut pair.journal, 1);
        assert!(matches!(
            pair.primary.on_message(&ack(6, 5), &mut view),
            PrimaryStep::Acknowledged(_)
        ));
        let mut again = pair.primary.clone();
        assert!(matches!(again.on_message(&ack(9, 9), &mut view), PrimaryStep::Close { .. }));
        assert!(matches!(
            pair.primary.on_message(&ack(6, 4), &mut view),
            PrimaryStep::Close { .. }
        ));
    }

    #[test]
    fn a_rejoining_standby_acknowledges_only_what_its_journal_answered() {
        // Goal: a standby that joins at 3 with records 2..=3 still on their way to its journal
        // acknowledges 1 as durable, not 3; the primary takes that (nothing assumed durable
        // at the join), and then 3 once it is.
        let (step, mut pair) = handshake("the-shared-secret-16+", position(3, 1, 1), 1);
        let PrimaryStep::Stream(start) = step else { panic!("{step:?}") };
        let key = secret("the-shared-secret-16+");
        pair.standby.on_message(&Message::Start(start), &key, &cluster());
        let early = pair.standby.ack(Sequence(1), Sequence(1), false).unwrap();
        assert_eq!((early.written, early.durable), (Sequence(1), Sequence(1)));
        let cluster = cluster();
        let mut view = view(&cluster, &key, &mut pair.journal, 1);
        let taken = pair.primary.on_message(&Message::Ack(early), &mut view);
        assert_eq!(taken, PrimaryStep::Acknowledged(early));
        let later = pair.standby.ack(Sequence(3), Sequence(3), false).unwrap();
        let taken = pair.primary.on_message(&Message::Ack(later), &mut view);
        assert_eq!(taken, PrimaryStep::Acknowledged(later));
    }

    #[test]
    fn a_standby_holds_everything_acknowledged_only_once_answers_wait_for_it() {
        // Goal: holding all the primary reported is not enough while the primary answers
        // alone: the standby counts as a copy of everything acknowledged only after a
        // heartbeat says answers wait for it (or that the mode is async), which the primary
        // sends at once when that changes, even in the middle of streaming.
        let (_, mut pair) = handshake("the-shared-secret-16+", position(5, 1, 1), 1);
        let key = secret("the-shared-secret-16+");
        let start =
            Start { epoch: Epoch(1), from_sequence: Sequence(6), primary_last: Sequence(5) };
        pair.standby.on_message(&Message::Start(start), &key, &cluster());
        assert!(!pair.standby.holds_everything_acknowledged(Sequence(5)), "no heartbeat yet");
        let at = (Epoch(1), Sequence(5));
        let alone = pair.primary.heartbeat_due(1_000, 100, at, Answering::Alone).unwrap();
        pair.standby.on_message(&Message::Heartbeat(alone), &key, &cluster());
        assert!(!pair.standby.holds_everything_acknowledged(Sequence(5)), "answers leave alone");
        pair.primary.on_sent(Sequence(5), 1_010);
        let waits = pair.primary.heartbeat_due(1_011, 100, at, Answering::AfterStandby);
        let waits = waits.expect("a change goes out at once, idle or not");
        pair.standby.on_message(&Message::Heartbeat(waits), &key, &cluster());
        assert!(pair.standby.holds_everything_acknowledged(Sequence(5)));
        assert!(!pair.standby.holds_everything_acknowledged(Sequence(4)), "one record behind");
        let later = (Epoch(1), Sequence(9));
        let beat = pair.primary.heartbeat_due(1_200, 100, later, Answering::Async).unwrap();
        pair.standby.on_message(&Message::Heartbeat(beat), &key, &cluster());
        assert!(!pair.standby.holds_everything_acknowledged(Sequence(5)), "behind the report");
        assert!(pair.standby.holds_everything_acknowledged(Sequence(9)), "async: all there is");
        assert!(!pair.standby.primary_answers_alone());
        // Switched back to sync while this standby is behind: the primary answers alone again.
        let back = pair.primary.heartbeat_due(1_300, 100, later, Answering::Alone).unwrap();
        pair.standby.on_message(&Message::Heartbeat(back), &key, &cluster());
        assert!(pair.standby.primary_answers_alone());
        assert!(!pair.standby.holds_everything_acknowledged(Sequence(9)), "answers leave alone");
    }

    #[test]
    fn heartbeats_go_out_only_when_idle_and_acks_only_when_something_moved() {
        // Goal: an idle stream heartbeats every period; the standby acknowledges progress and
        // echoes each heartbeat once.
        let (_, mut pair) = handshake("the-shared-secret-16+", position(3, 1, 1), 1);
        let at = (Epoch(1), Sequence(5));
        let first = pair.primary.heartbeat_due(1_000, 100, at, Answering::Alone);
        assert!(first.is_some(), "a stream opens with a heartbeat that says how answers leave");
        pair.primary.on_sent(Sequence(5), 1_000);
        assert_eq!(pair.primary.heartbeat_due(1_050, 100, at, Answering::Alone), None);
        let beat = pair.primary.heartbeat_due(1_100, 100, at, Answering::Alone).unwrap();
        assert_eq!(beat.sent_at_ms, 1_100);
        assert_eq!(pair.primary.heartbeat_due(1_150, 100, at, Answering::Alone), None);

        let key = secret("the-shared-secret-16+");
        let start =
            Start { epoch: Epoch(1), from_sequence: Sequence(4), primary_last: Sequence(5) };
        pair.standby.on_message(&Message::Start(start), &key, &cluster());
        let first = pair.standby.ack(Sequence(3), Sequence(3), true).unwrap();
        assert_eq!((first.written, first.durable), (Sequence(3), Sequence(3)), "where it stands");
        assert_eq!(pair.standby.ack(Sequence(3), Sequence(3), true), None, "nothing new");
        assert_eq!(
            pair.standby.on_message(&Message::Heartbeat(beat), &key, &cluster()),
            StandbyStep::Continue
        );
        let echoed = pair.standby.ack(Sequence(3), Sequence(3), true).unwrap();
        assert_eq!(echoed.echo_ms, 1_100);
        assert_eq!(pair.standby.ack(Sequence(3), Sequence(3), true), None, "echoed once");
        // A directory that stops catching up says so at once, with nothing else new.
        let caught_up = pair.standby.ack(Sequence(3), Sequence(3), false).unwrap();
        assert_eq!(
            (caught_up.written, caught_up.echo_ms, caught_up.catching_up),
            (Sequence(3), 0, false)
        );
        assert_eq!(pair.standby.ack(Sequence(3), Sequence(3), false), None, "said once");
        let moved = pair.standby.ack(Sequence(5), Sequence(4), false).unwrap();
        assert_eq!((moved.written, moved.durable, moved.echo_ms), (Sequence(5), Sequence(4), 0));
    }
}
