//! When a primary's answers wait for its standby: the acknowledgement policy, a pure state
//! machine fed by the standby's connection events, its acknowledgements, the operator's mode
//! and the time; it decides the gate egress applies and whether writes are held.
//!
//! ```text
//!            standby connects              acked within slack of the journal
//!   Alone ───────────────────► CatchingUp ───────────────────────────────► InSync
//!     ▲   ◄─── disconnects ───                                             │  ▲
//!     │                          silent, stalled or disconnected           │  │ acked within
//!     │                                                                    ▼  │ slack again
//!     └────────── operator: async, then sync ──────────────────────── StandbyLost
//!                                                          (after the timeout: writes held)
//! ```
//!
//! - **Alone** (no standby has caught up since the node started or was promoted) and
//!   **CatchingUp**: answers wait for the local journal only, and `/v1/node` says so. The
//!   operator's promotion or start-up is the decision that nobody else holds newer data.
//! - **InSync**: an answer leaves only when the standby acknowledged its sequence.
//! - **StandbyLost**: the standby that was in sync went silent, or left a record sent to it
//!   unacknowledged. Answers keep waiting; once it has been silent (or that record has waited)
//!   for the replication timeout, writes are held (refused, and what it did
//!   not acknowledge is answered `replication_unavailable`) rather than acknowledged
//!   unreplicated: without a witness a dead standby and a partitioned one look the same, and
//!   the partitioned one may be promoted. It leaves only when the standby catches up again,
//!   or when the operator switches to `async`.
//! - Mode **async**: answers wait for the local journal only, whatever the standby does; the
//!   last unreplicated commands can be lost on failover. Switching back to `sync` starts from
//!   `Alone` (the standby may be behind after an async period) until a standby catches up.

use ringfence_core::Sequence;

use crate::message::Answering;

/// How answers wait for the standby, as the operator chose it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    /// An answer waits for the standby's acknowledgement once a standby has caught up.
    Sync,
    /// Answers wait for the local journal only.
    Async,
}

impl AckMode {
    /// The name used on the command line, in the config file and in `/v1/node`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            AckMode::Sync => "sync",
            AckMode::Async => "async",
        }
    }

    /// Parses `sync` or `async`.
    #[must_use]
    pub fn parse(text: &str) -> Option<AckMode> {
        match text {
            "sync" => Some(AckMode::Sync),
            "async" => Some(AckMode::Async),
            _ => None,
        }
    }
}

/// Where the primary's replication stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyState {
    /// No standby has caught up since start or promotion: answers wait for the journal only.
    Alone,
    /// A standby is connected and behind: answers wait for the journal only.
    CatchingUp,
    /// Answers wait for the standby.
    InSync,
    /// The standby that was in sync is silent or gone, since `since_ms`.
    StandbyLost {
        /// When it was last heard from.
        since_ms: u64,
    },
}

impl PolicyState {
    /// The name shown in `/v1/node`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            PolicyState::Alone => "alone",
            PolicyState::CatchingUp => "catching_up",
            PolicyState::InSync => "in_sync",
            PolicyState::StandbyLost { .. } => "standby_lost",
        }
    }
}

/// What egress waits for, as the policy decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Gate {
    /// The local journal only: the replicator stage marks everything it passes safe.
    Local,
    /// The standby's durable acknowledgement.
    Standby,
    /// Writes are held: refused at intake, and unacknowledged ones answered unreplicated.
    Held,
}

/// The acknowledgement policy of a primary. Pure: every input carries the time it happened.
#[derive(Clone, Debug)]
pub struct AckPolicy {
    mode: AckMode,
    state: PolicyState,
    timeout_ms: u64,
    /// How far behind the journal an acknowledgement may be for the standby to count as
    /// caught up (records). Under a steady stream acknowledgements trail by about a batch.
    slack: u64,
    /// The standby's last acknowledgement time, while one is connected.
    heard_ms: Option<u64>,
    /// A primary restarted after a standby had been in sync: writes are held from the start,
    /// until that standby is back in sync (or the witness or the operator lets it go on
    /// alone), since the standby may already have been promoted.
    lost_at_start: bool,
}

impl AckPolicy {
    /// A primary that has had no standby yet.
    #[must_use]
    pub fn new(mode: AckMode, timeout_ms: u64, slack: u64) -> AckPolicy {
        assert!(timeout_ms > 0, "a replication timeout of zero would hold every write");
        AckPolicy {
            mode,
            state: PolicyState::Alone,
            timeout_ms,
            slack,
            heard_ms: None,
            lost_at_start: false,
        }
    }

    /// A primary that restarts after a standby was in sync with it: its standby counts as
    /// lost from the start, so in `sync` mode writes are held until it is back in sync.
    #[must_use]
    pub fn restarted_in_sync(mode: AckMode, timeout_ms: u64, slack: u64) -> AckPolicy {
        let mut policy = AckPolicy::new(mode, timeout_ms, slack);
        policy.state = PolicyState::StandbyLost { since_ms: 0 };
        policy.lost_at_start = true;
        policy
    }

    /// The operator's mode.
    #[must_use]
    pub fn mode(&self) -> AckMode {
        self.mode
    }

    /// Where replication stands.
    #[must_use]
    pub fn state(&self) -> PolicyState {
        self.state
    }

    /// When answers leave, as the primary's heartbeats tell its standby: alone (on the
    /// journal) until a standby caught up in `sync` mode, after the standby (or held) once one
    /// did, and as the operator chose under `async`.
    #[must_use]
    pub fn answering(&self) -> Answering {
        if self.mode == AckMode::Async {
            return Answering::Async;
        }
        match self.state {
            PolicyState::Alone | PolicyState::CatchingUp => Answering::Alone,
            PolicyState::InSync | PolicyState::StandbyLost { .. } => Answering::AfterStandby,
        }
    }

    /// What answers wait for now.
    #[must_use]
    pub fn gate(&self, now_ms: u64) -> Gate {
        if self.mode == AckMode::Async {
            return Gate::Local;
        }
        match self.state {
            PolicyState::Alone | PolicyState::CatchingUp => Gate::Local,
            PolicyState::InSync => Gate::Standby,
            PolicyState::StandbyLost { since_ms } => {
                if self.lost_at_start || now_ms.saturating_sub(since_ms) >= self.timeout_ms {
                    Gate::Held
                } else {
                    Gate::Standby
                }
            }
        }
    }

    /// A standby completed the handshake and is streaming.
    pub fn on_connected(&mut self, now_ms: u64) {
        self.heard_ms = Some(now_ms);
        if self.state == PolicyState::Alone {
            self.state = PolicyState::CatchingUp;
        }
    }

    /// The standby acknowledged `durable`; the journal holds up to `journaled`, and the oldest
    /// record sent to the standby that it has not acknowledged was sent at `awaited_since_ms`.
    /// It counts as caught up within the slack of the journal, unless that record has waited
    /// the timeout: such a standby is lost again at the next tick ([`AckPolicy::on_tick`]),
    /// and would flap between the two at every heartbeat.
    pub fn on_ack(
        &mut self,
        durable: Sequence,
        journaled: Sequence,
        now_ms: u64,
        awaited_since_ms: Option<u64>,
    ) {
        self.heard_ms = Some(now_ms);
        let stalled = self.stalled(now_ms, awaited_since_ms);
        let caught_up = durable.0.saturating_add(self.slack) >= journaled.0 && !stalled;
        match self.state {
            PolicyState::CatchingUp | PolicyState::StandbyLost { .. } if caught_up => {
                self.state = PolicyState::InSync;
                self.lost_at_start = false;
            }
            // An acknowledgement from a standby that reconnected after being lost, still
            // behind: it keeps the lost state (and its clock) until it has caught up.
            _ => {}
        }
    }

    /// The standby's connection ended (closed, refused, or timed out by the shell).
    pub fn on_disconnected(&mut self, now_ms: u64) {
        let heard = self.heard_ms.take().unwrap_or(now_ms);
        self.state = match self.state {
            PolicyState::InSync => PolicyState::StandbyLost { since_ms: heard },
            PolicyState::CatchingUp => PolicyState::Alone,
            other => other,
        };
    }

    /// Time passes: a connected standby in sync counts as lost once it has acknowledged
    /// nothing for the timeout (a paused or partitioned standby keeps its socket open), or
    /// once the oldest record sent to it and not yet acknowledged, sent at `awaited_since_ms`,
    /// has waited that long: a standby whose journal stopped moving while its connection
    /// still answers every heartbeat holds the answers waiting for it no longer than a silent
    /// one does.
    pub fn on_tick(&mut self, now_ms: u64, awaited_since_ms: Option<u64>) {
        if self.state != PolicyState::InSync {
            return;
        }
        let heard = self.heard_ms.unwrap_or(now_ms);
        let since = awaited_since_ms.map_or(heard, |sent| sent.min(heard));
        if now_ms.saturating_sub(since) >= self.timeout_ms {
            self.state = PolicyState::StandbyLost { since_ms: since };
        }
    }

    /// Whether a record sent to the standby at `awaited_since_ms` has waited the timeout
    /// unacknowledged.
    fn stalled(&self, now_ms: u64, awaited_since_ms: Option<u64>) -> bool {
        awaited_since_ms.is_some_and(|sent| now_ms.saturating_sub(sent) >= self.timeout_ms)
    }

    /// The witness now records this primary as alone: a lost standby stops holding writes
    /// (`Alone`; the standby must catch up again). Returns whether the state changed.
    pub fn go_alone(&mut self) -> bool {
        if !matches!(self.state, PolicyState::StandbyLost { .. }) {
            return false;
        }
        self.state = PolicyState::Alone;
        self.heard_ms = None;
        self.lost_at_start = false;
        true
    }

    /// The operator switches mode. Back to `sync`, nobody counts as caught up until an
    /// acknowledgement says so again.
    pub fn set_mode(&mut self, mode: AckMode) {
        if mode == self.mode {
            return;
        }
        self.mode = mode;
        self.lost_at_start = false;
        if mode == AckMode::Sync {
            self.state =
                if self.heard_ms.is_some() { PolicyState::CatchingUp } else { PolicyState::Alone };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: u64 = 1_000;

    fn policy() -> AckPolicy {
        AckPolicy::new(AckMode::Sync, TIMEOUT, 10)
    }

    #[test]
    fn a_primary_alone_acknowledges_on_its_journal() {
        // Goal: no standby since start means local acknowledgements, and says so.
        let policy = policy();
        assert_eq!(policy.state(), PolicyState::Alone);
        assert_eq!(policy.gate(5_000_000), Gate::Local);
    }

    #[test]
    fn sync_holds_once_the_standby_has_caught_up() {
        // Goal: connected but behind stays local; within the slack switches to the standby.
        let mut policy = policy();
        policy.on_connected(0);
        assert_eq!(policy.state(), PolicyState::CatchingUp);
        policy.on_ack(Sequence(50), Sequence(100), 1, None);
        assert_eq!(policy.gate(1), Gate::Local, "40 records behind is not caught up");
        policy.on_ack(Sequence(95), Sequence(100), 2, None);
        assert_eq!(policy.state(), PolicyState::InSync);
        assert_eq!(policy.gate(2), Gate::Standby);
    }

    #[test]
    fn the_heartbeats_say_answers_wait_for_the_standby_once_it_caught_up() {
        // Goal: what a heartbeat tells the standby follows the gate: alone until a standby
        // caught up, after the standby from then on (also while it is lost and answers wait
        // or are held), async whatever the state once the operator chose it.
        let mut policy = policy();
        assert_eq!(policy.answering(), Answering::Alone);
        policy.on_connected(0);
        policy.on_ack(Sequence(50), Sequence(100), 1, None);
        assert_eq!(policy.answering(), Answering::Alone, "catching up: answers leave alone");
        policy.on_ack(Sequence(100), Sequence(100), 2, None);
        assert_eq!(policy.answering(), Answering::AfterStandby);
        policy.on_disconnected(3);
        assert_eq!(policy.answering(), Answering::AfterStandby, "lost: answers wait, then held");
        policy.set_mode(AckMode::Async);
        assert_eq!(policy.answering(), Answering::Async);
        let restarted = AckPolicy::restarted_in_sync(AckMode::Sync, 1_000, 8);
        assert_eq!(restarted.answering(), Answering::AfterStandby, "held from its start");
    }

    #[test]
    fn a_lost_standby_holds_writes_only_after_the_timeout() {
        // Goal: answers wait while the standby may come back; then writes are held.
        let mut policy = policy();
        policy.on_connected(0);
        policy.on_ack(Sequence(100), Sequence(100), 10, None);
        policy.on_disconnected(20);
        assert_eq!(policy.state(), PolicyState::StandbyLost { since_ms: 10 });
        assert_eq!(policy.gate(10 + TIMEOUT - 1), Gate::Standby);
        assert_eq!(policy.gate(10 + TIMEOUT), Gate::Held);
    }

    #[test]
    fn a_silent_standby_with_an_open_socket_is_lost_too() {
        // Goal: SIGSTOP on the standby keeps its socket open; silence alone must count.
        let mut policy = policy();
        policy.on_connected(0);
        policy.on_ack(Sequence(7), Sequence(7), 100, None);
        policy.on_tick(100 + TIMEOUT - 1, None);
        assert_eq!(policy.state(), PolicyState::InSync);
        policy.on_tick(100 + TIMEOUT, None);
        assert_eq!(policy.gate(100 + TIMEOUT), Gate::Held);
    }

    #[test]
    fn a_standby_that_answers_heartbeats_but_leaves_a_record_unacknowledged_is_lost_too() {
        // Goal: a standby whose journal stopped moving while its connection still answers
        // every heartbeat (the same acknowledgement again) counts as lost once the record
        // sent to it has waited the timeout, and writes are held, as for a silent one; it is
        // back in sync once its acknowledgements reach the journal, and not before, however
        // close to the journal (within the slack) the repeated one is. Before, each
        // heartbeat's acknowledgement kept it in sync and answers waited for it without end.
        let mut policy = policy();
        policy.on_connected(0);
        policy.on_ack(Sequence(7), Sequence(7), 100, None);
        // Record 8 is sent at 200; every heartbeat is answered, acknowledging 7 again.
        for heartbeat in 0..TIMEOUT / 100 {
            let now = 200 + heartbeat * 100;
            policy.on_ack(Sequence(7), Sequence(8), now, Some(200));
            policy.on_tick(now, Some(200));
            assert_eq!(policy.state(), PolicyState::InSync, "{now} ms: within the timeout");
        }
        policy.on_tick(200 + TIMEOUT, Some(200));
        assert_eq!(policy.state(), PolicyState::StandbyLost { since_ms: 200 });
        assert_eq!(policy.gate(200 + TIMEOUT), Gate::Held);
        for heartbeat in 1..=3 {
            let now = 200 + TIMEOUT + heartbeat * 100;
            policy.on_ack(Sequence(7), Sequence(8), now, Some(200));
            assert_eq!(policy.gate(now), Gate::Held, "{now} ms: the same acknowledgement again");
        }
        policy.on_ack(Sequence(8), Sequence(8), 600 + TIMEOUT, None);
        assert_eq!(policy.gate(600 + TIMEOUT), Gate::Standby, "caught up again");
        // Nothing awaited: heartbeats alone keep an idle standby in sync.
        policy.on_ack(Sequence(8), Sequence(8), 10 * TIMEOUT, None);
        policy.on_tick(10 * TIMEOUT, None);
        assert_eq!(policy.state(), PolicyState::InSync);
    }

    #[test]
    fn a_returning_standby_releases_the_hold_only_once_caught_up() {
        // Goal: reconnecting is not enough; the acknowledgements must reach the journal.
        let mut policy = policy();
        policy.on_connected(0);
        policy.on_ack(Sequence(10), Sequence(10), 0, None);
        policy.on_disconnected(0);
        policy.on_connected(5_000);
        policy.on_ack(Sequence(10), Sequence(500), 5_001, None);
        assert_eq!(policy.gate(5_001), Gate::Held, "still 490 behind");
        policy.on_ack(Sequence(495), Sequence(500), 5_002, None);
        assert_eq!(policy.gate(5_002), Gate::Standby);
    }

    #[test]
    fn async_never_waits_and_sync_again_starts_alone_or_catching_up() {
        // Goal: the operator's async releases a hold; back to sync requires a fresh catch-up.
        let mut policy = policy();
        policy.on_connected(0);
        policy.on_ack(Sequence(10), Sequence(10), 0, None);
        policy.on_disconnected(0);
        assert_eq!(policy.gate(TIMEOUT), Gate::Held);
        policy.set_mode(AckMode::Async);
        assert_eq!(policy.gate(TIMEOUT), Gate::Local);
        policy.set_mode(AckMode::Sync);
        assert_eq!(policy.state(), PolicyState::Alone, "no standby connected");
        policy.on_connected(2 * TIMEOUT);
        policy.set_mode(AckMode::Async);
        policy.set_mode(AckMode::Sync);
        assert_eq!(policy.state(), PolicyState::CatchingUp, "a connected standby must catch up");
    }

    #[test]
    fn going_alone_releases_a_hold_only_for_a_lost_standby() {
        // Goal: once the witness records the primary alone, a lost standby's hold lifts and a
        // returning standby must catch up again; a standby in sync is never dropped this way.
        let mut policy = policy();
        policy.on_connected(0);
        policy.on_ack(Sequence(10), Sequence(10), 0, None);
        assert!(!policy.go_alone(), "in sync: nothing to do");
        assert_eq!(policy.state(), PolicyState::InSync);
        policy.on_disconnected(1);
        assert_eq!(policy.gate(TIMEOUT + 1), Gate::Held);
        assert!(policy.go_alone());
        assert_eq!(policy.gate(TIMEOUT + 1), Gate::Local);
        policy.on_connected(TIMEOUT + 2);
        assert_eq!(policy.state(), PolicyState::CatchingUp);
    }

    #[test]
    fn a_standby_that_never_caught_up_leaves_the_primary_alone() {
        // Goal: losing a standby that was still catching up does not hold writes.
        let mut policy = policy();
        policy.on_connected(0);
        policy.on_ack(Sequence(1), Sequence(1_000), 1, None);
        policy.on_disconnected(2);
        policy.on_tick(10 * TIMEOUT, None);
        assert_eq!(policy.gate(10 * TIMEOUT), Gate::Local);
        assert_eq!(policy.state(), PolicyState::Alone);
    }

    #[test]
    fn a_primary_restarted_after_its_standby_was_in_sync_holds_until_it_is_again() {
        // Goal: a primary that restarts after a standby had been in sync refuses writes at
        // once (the standby may have been promoted meanwhile) until that standby has caught up
        // again; going on alone with the witness's consent, or async, lifts it.
        let mut policy = AckPolicy::restarted_in_sync(AckMode::Sync, TIMEOUT, 10);
        assert_eq!(policy.gate(0), Gate::Held, "held from the first millisecond");
        policy.on_connected(5);
        policy.on_ack(Sequence(50), Sequence(100), 6, None);
        assert_eq!(policy.gate(6), Gate::Held, "still behind");
        policy.on_ack(Sequence(95), Sequence(100), 7, None);
        assert_eq!((policy.state(), policy.gate(7)), (PolicyState::InSync, Gate::Standby));
        let mut alone = AckPolicy::restarted_in_sync(AckMode::Sync, TIMEOUT, 10);
        assert!(alone.go_alone());
        assert_eq!(alone.gate(0), Gate::Local);
        let mut switched = AckPolicy::restarted_in_sync(AckMode::Sync, TIMEOUT, 10);
        switched.set_mode(AckMode::Async);
        assert_eq!(switched.gate(0), Gate::Local);
    }
}
