//! The coordination decisions, pure: fed what the witness holds ([`View`]), what the node's
//! replication is doing ([`Facts`]) and the time, the [`Pilot`] answers with one [`Plan`] for
//! the driver to carry out, and is told how it went. No clock, no socket, no sleep: the
//! driver thread and a simulator feed it alike.
//!
//! ```text
//!  candidate ── leader key held by X ─────────────────────────────► standby of X
//!      │                                                               │ key gone, and the
//!      └── key free, eligible: campaign (take key + write record) ◄───┘ record names us
//!                     │
//!                     ▼
//!                  primary ── key lost or held by another ──► rejoin (restart as candidate)
//!                     │
//!                     └── in-sync standby asks, or the journal failed: hold writes,
//!                         wait until it holds what was acknowledged, resign ────────────┘
//!                         (a switchover whose standby is lost first is called off)
//! ```
//!
//! The rules each [`Plan`] keeps (`ARCHITECTURE.md` states them as invariants):
//! - A node takes the key only when nobody holds it and the in-sync record makes it eligible
//!   (`SyncRecord::eligible`), in one transaction that also raises the record's epoch above
//!   every epoch recorded or held locally and leaves whom it names as it was: until the new
//!   leader has acknowledged something, what was acknowledged is what the nodes named before
//!   hold, so a leader that never takes office (its promotion fails, it loses power) leaves
//!   them eligible.
//! - A new leader acknowledges nothing before it takes office: its writes are held until the
//!   record names it as primary with no standby ([`After::TakeOffice`]).
//! - The record names a standby only after the gate waits for it and its acknowledgement has
//!   reached a mark taken at least one round after that (so everything acknowledged on the
//!   local journal alone is below its acknowledgement).
//! - The record says "no standby" or `async` *before* the node acknowledges without the
//!   standby: continuing alone ([`After::ContinueAlone`]) and switching to async
//!   ([`After::SetMode`]) are carried out only after the write succeeded.
//! - The lease deadline is `renewal sent + TTL − margin`, on the monotonic clock: the renewal
//!   is counted from when it was sent, never from when its answer came.

use ringfence_core::Sequence;

use crate::coordination::records::{LeaderValue, RECORDS_VERSION, SyncRecord};
use crate::coordination::store::View;
use crate::policy::{AckMode, Gate, PolicyState};

/// Who this node is, as the witness shows it, and the loss it accepts to take over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Its node name (stable across restarts).
    pub node: String,
    /// Where standbys connect to it.
    pub replication: String,
    /// Its HTTP address, for `not_primary` answers.
    pub http: Option<String>,
    /// Under an `async` record, the most records the recorded primary may have journaled
    /// beyond this node (as the record last said) for it to take over; `None`: any number.
    pub max_failover_loss: Option<u64>,
}

/// The margin must be at least the TTL over this: a primary's clock running that share slow
/// against the witness's (10%) still stops acknowledging alone before its lease expires.
pub const MARGIN_PER_TTL_MIN: u64 = 10;

/// The lease's timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// The lease's time to live, in seconds (etcd counts in seconds).
    pub ttl_s: u64,
    /// How often the lease is renewed and the witness read.
    pub renew_ms: u64,
    /// How long before the lease can expire the primary stops acknowledging on its own.
    pub margin_ms: u64,
}

impl Timing {
    /// The defaults for a TTL: renew every quarter, stop a quarter early.
    #[must_use]
    pub fn for_ttl(ttl_s: u64) -> Timing {
        Timing { ttl_s, renew_ms: ttl_s * 250, margin_ms: ttl_s * 250 }
    }

    /// Checks that a renewal can fail twice and still leave the margin, and that the margin
    /// covers clocks [`MARGIN_PER_TTL_MIN`] apart.
    pub fn validate(&self) -> Result<(), String> {
        if self.ttl_s == 0 {
            return Err("the lease TTL must be at least 1 s".into());
        }
        let ttl_ms = self.ttl_s.saturating_mul(1_000);
        if self.margin_ms.saturating_mul(MARGIN_PER_TTL_MIN) < ttl_ms {
            return Err(format!(
                "a {} ms margin is below a tenth of the {} s lease TTL: the primary stops \
                 acknowledging alone that long before its lease can expire, which covers its \
                 clock running slow against etcd's by that share of the TTL; raise margin_ms \
                 to {} or more (the default is a quarter)",
                self.margin_ms,
                self.ttl_s,
                ttl_ms.div_ceil(MARGIN_PER_TTL_MIN)
            ));
        }
        if self.renew_ms == 0 || 2 * self.renew_ms + self.margin_ms >= self.ttl_s * 1_000 {
            return Err(format!(
                "lease renewal every {} ms with a {} ms margin does not fit a {} s TTL: two \
                 renewals and the margin must fit within it",
                self.renew_ms, self.margin_ms, self.ttl_s
            ));
        }
        Ok(())
    }

    /// When a primary whose renewal was sent at `sent_ms` and granted `ttl_s` must stop
    /// acknowledging. The TTL is the witness's answer, counted as at most the one asked for;
    /// one shorter than the margin gives a deadline already passed.
    #[must_use]
    pub fn deadline(&self, sent_ms: u64, ttl_s: u64) -> u64 {
        let ttl_ms = ttl_s.min(self.ttl_s).saturating_mul(1_000);
        sent_ms.saturating_add(ttl_ms).saturating_sub(self.margin_ms).max(sent_ms)
    }
}

/// What the node's replication is doing, read from it just before the pilot decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    /// Whether it sequences (primary) or follows.
    pub primary: bool,
    /// The primary's acknowledgement policy state.
    pub policy: PolicyState,
    /// The acknowledgement mode in force.
    pub mode: AckMode,
    /// The gate egress applies.
    pub gate: Gate,
    /// Primary: the standby's durable acknowledgement. Standby: what it holds.
    pub acked: Sequence,
    /// Primary: the last acknowledgement on the current stream: what it said the standby
    /// holds durably, and when it came (on the clock `Pilot::on_view` is given). A handover
    /// gives the key only to a standby whose acknowledgement since the writes were held
    /// covers what it must hold.
    pub standby_last_ack: Option<(Sequence, u64)>,
    /// The journal's last record.
    pub available: Sequence,
    /// A standby must restart to rejoin, and why: its journal diverged from the primary's, or
    /// the records it lacks were retired (it fetches a snapshot at start).
    pub must_restart: Option<&'static str>,
    /// The highest epoch this node stored (current or promised).
    pub epoch_floor: u64,
    /// Its data directory was created or truncated since it last caught up with a primary:
    /// it may lack records it acknowledged, so an in-sync record naming it does not let it
    /// take over.
    pub catching_up: bool,
    /// Primary: its standby's data directory is catching up, as the standby's last
    /// acknowledgement said (or none came yet on this stream): the record does not name it.
    pub standby_catching_up: bool,
    /// Its journal failed, and the last record it flushed (made durable, or written on a
    /// journal that answers before it syncs), the one before the fence: nothing after it was
    /// acknowledged. It takes no record until it is restarted. A primary hands the key to a
    /// recorded standby in sync with it; a standby follows nobody and never takes the key,
    /// as it could not write as a primary.
    pub journal_failed: Option<Sequence>,
}

/// What the driver does after a sync record write succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Nothing more.
    Nothing,
    /// The record now names this new leader alone: it takes office, and its writes, held
    /// since it took the key, are released.
    TakeOffice,
    /// The record now says "no standby": the primary may acknowledge alone.
    ContinueAlone,
    /// The record now says this mode: switch the policy to it.
    SetMode(AckMode),
}

/// The one thing the driver does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to do.
    Nothing,
    /// Nobody leads and this node may: take the key (`Coordinator::campaign`).
    Campaign {
        /// The leader value to write.
        leader: LeaderValue,
        /// The record's revision read.
        sync_revision: i64,
        /// The record to write with it.
        sync: SyncRecord,
    },
    /// Follow this leader (a candidate at start).
    Follow(LeaderValue),
    /// Nobody leads and this node may not take over; why.
    Wait(String),
    /// Write the in-sync record while holding the key; then do `after`.
    Record {
        /// The record.
        sync: SyncRecord,
        /// What to do once written.
        after: After,
    },
    /// A handover: hold writes until the standby has acknowledged everything, then give it
    /// the key. Why: a planned switchover, or this primary's failed journal.
    Hold(String),
    /// Give up the leader key (the standby has everything).
    Resign,
    /// Call a switchover off: the standby it was for was lost or no longer asks, before the
    /// key was given up. This node stays the primary and ends the switchover's hold on writes
    /// (a standby lost holds them until it is recorded as gone, as always). Why.
    CallOff(String),
    /// Restart as a candidate: a new leader exists, the lease is gone, or the journal
    /// diverged. The reason, for the log.
    Rejoin(String),
}

/// What the node does now, as the pilot sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Standby {
        leader: LeaderValue,
    },
    /// Holds the key; `in_office` once the record names it as primary (until then its writes
    /// are held, and the record still names the nodes eligible before it took the key).
    Primary {
        leader: LeaderValue,
        in_office: bool,
    },
    /// A handover (a planned switchover, or a failed journal): writes held since `since_ms`;
    /// `resigned` once the key is given.
    Handover {
        leader: LeaderValue,
        since_ms: u64,
        resigned: bool,
    },
}

/// The coordination decisions of one running node.
#[derive(Clone, Debug)]
pub struct Pilot {
    me: Identity,
    timing: Timing,
    phase: Phase,
    /// Primary: when it must stop acknowledging unless renewed.
    deadline_ms: Option<u64>,
    /// The in-sync record as last read or written.
    recorded: Option<SyncRecord>,
    /// Primary: the journal position the standby's acknowledgement must reach before the
    /// record may name it.
    mark: Option<Sequence>,
    /// Primary: the revision of the switchover request it last called off, which it does not
    /// take up again (a request asked anew has another).
    called_off: Option<i64>,
}

/// How long a resigned primary waits for the standby to take the key before it runs again.
const HANDOVER_WAIT_TTLS: u64 = 2;

impl Pilot {
    /// A node that follows `leader`.
    #[must_use]
    pub fn standby(me: Identity, timing: Timing, leader: LeaderValue) -> Pilot {
        assert_ne!(leader.node, me.node, "a node never follows itself");
        Pilot {
            me,
            timing,
            phase: Phase::Standby { leader },
            deadline_ms: None,
            recorded: None,
            mark: None,
            called_off: None,
        }
    }

    /// A node that took the key as `leader` with `sync`, its lease renewed at `renewed_ms`. It
    /// is not in office yet: its first plan records it as primary ([`After::TakeOffice`]).
    #[must_use]
    pub fn primary(
        me: Identity,
        timing: Timing,
        (leader, sync): (LeaderValue, SyncRecord),
        renewed_ms: u64,
    ) -> Pilot {
        assert_eq!(leader.node, me.node, "a primary holds its own key");
        assert_eq!(sync.epoch, leader.epoch, "the key is taken with the record's epoch");
        let deadline_ms = Some(timing.deadline(renewed_ms, timing.ttl_s));
        let phase = Phase::Primary { leader, in_office: false };
        Pilot { me, timing, phase, deadline_ms, recorded: Some(sync), mark: None, called_off: None }
    }

    /// This node's identity.
    #[must_use]
    pub fn identity(&self) -> &Identity {
        &self.me
    }

    /// The leader this node knows: itself as primary, or the one it follows.
    #[must_use]
    pub fn leader(&self) -> &LeaderValue {
        match &self.phase {
            Phase::Standby { leader } | Phase::Primary { leader, .. } => leader,
            Phase::Handover { leader, .. } => leader,
        }
    }

    /// Whether this node holds the key and the record does not name it as primary yet: its
    /// writes are held.
    #[must_use]
    pub fn taking_office(&self) -> bool {
        matches!(self.phase, Phase::Primary { in_office: false, .. })
    }

    /// The record a leader not yet in office writes to take office: itself as primary, no
    /// standby, its mode. `None` when it is not such a leader.
    #[must_use]
    pub fn office_record(&self, facts: &Facts) -> Option<SyncRecord> {
        match &self.phase {
            Phase::Primary { leader, in_office: false } => Some(fresh_record(leader, facts)),
            _ => None,
        }
    }

    /// `leader`, `standby` or `handing_over`.
    #[must_use]
    pub fn state(&self) -> &'static str {
        match self.phase {
            Phase::Standby { .. } => "standby",
            Phase::Primary { .. } => "leader",
            Phase::Handover { .. } => "handing_over",
        }
    }

    /// The in-sync record as last read or written.
    #[must_use]
    pub fn recorded(&self) -> Option<&SyncRecord> {
        self.recorded.as_ref()
    }

    /// When a primary must stop acknowledging unless renewed.
    #[must_use]
    pub fn deadline_ms(&self) -> Option<u64> {
        self.deadline_ms
    }

    /// The lease renewal sent at `sent_ms` was answered with `ttl_s` left (0: expired).
    /// Returns the plan: a primary whose lease expired rejoins.
    pub fn renewed(&mut self, sent_ms: u64, ttl_s: u64) -> Plan {
        if ttl_s == 0 {
            self.deadline_ms = None;
            return match self.phase {
                Phase::Standby { .. } => Plan::Nothing,
                _ => Plan::Rejoin("the lease expired: another node may lead now".into()),
            };
        }
        if !matches!(self.phase, Phase::Standby { .. }) {
            let deadline = self.timing.deadline(sent_ms, ttl_s);
            // A late answer to an older renewal never moves the deadline back.
            self.deadline_ms = Some(self.deadline_ms.map_or(deadline, |d| d.max(deadline)));
        }
        Plan::Nothing
    }

    /// Decides what to do given the witness's keys and the node's facts at `now_ms`.
    pub fn on_view(&mut self, now_ms: u64, facts: &Facts, view: &View) -> Plan {
        self.recorded.clone_from(&view.sync);
        match self.phase.clone() {
            Phase::Standby { leader } => self.standby_view(&leader, facts, view),
            Phase::Primary { leader, in_office } => {
                self.primary_view(now_ms, (&leader, in_office), facts, view)
            }
            Phase::Handover { leader, since_ms, resigned } => {
                self.handover_view(now_ms, (&leader, since_ms, resigned), facts, view)
            }
        }
    }

    fn standby_view(&mut self, leader: &LeaderValue, facts: &Facts, view: &View) -> Plan {
        if let Some(why) = facts.must_restart {
            return Plan::Rejoin(why.into());
        }
        match &view.leader {
            Some((now, _)) if now == leader => Plan::Nothing,
            Some((now, _)) => Plan::Rejoin(format!(
                "{} leads now (epoch {}), not {} (epoch {})",
                now.node, now.epoch, leader.node, leader.epoch
            )),
            None => leaderless(&self.me, view, facts),
        }
    }

    fn primary_view(
        &mut self,
        now_ms: u64,
        (leader, in_office): (&LeaderValue, bool),
        facts: &Facts,
        view: &View,
    ) -> Plan {
        if let Some(plan) = lost_key(leader, view) {
            return plan;
        }
        if !in_office {
            // Written again until it succeeds; the writes stay held meanwhile.
            return Plan::Record { sync: fresh_record(leader, facts), after: After::TakeOffice };
        }
        let Some(recorded) = view.sync.clone() else {
            // Someone deleted the record: without it anyone may take over, so it is written
            // again at once, saying no standby (the policy's state is recorded next round).
            let sync =
                SyncRecord { mode: AckMode::Sync.name().into(), ..fresh_record(leader, facts) };
            return Plan::Record { sync, after: After::Nothing };
        };
        let since_ms = now_ms.max(1);
        if facts.journal_failed.is_some() {
            return self.failed_view((leader, since_ms), &recorded, facts, view);
        }
        if let Some(to) = switchover_asked(leader, view)
            && self.called_off != Some(view.switchover_revision)
            && facts.mode == AckMode::Sync
            && facts.policy == PolicyState::InSync
        {
            // A standby lost since it asked is not waited for, and a request called off is not
            // taken up again: the standby asks anew.
            let reason = format!("{to} asks to take over");
            self.phase = Phase::Handover { leader: leader.clone(), since_ms, resigned: false };
            return Plan::Hold(reason);
        }
        self.maintain_record(leader, recorded, facts, view)
    }

    /// This primary's journal failed: it acknowledges no write until it is restarted, and
    /// the pair would serve none. The standby the record names takes over if it follows this
    /// leader and its acknowledgements keep it in sync (one whose own disk failed too stops
    /// acknowledging, and handing it the key would only bounce it between two nodes that
    /// cannot write), as in a switchover: the key is given up once the standby holds
    /// everything this node may have acknowledged ([`standby_holds_enough`]). With no such
    /// standby nobody else may take over: the key is kept, and reads are served.
    fn failed_view(
        &mut self,
        (leader, since_ms): (&LeaderValue, u64),
        recorded: &SyncRecord,
        facts: &Facts,
        view: &View,
    ) -> Plan {
        let Some(standby) = recorded.standby.as_deref() else { return Plan::Nothing };
        let following = Some((leader.node.clone(), leader.epoch));
        let follows = view.members.iter().any(|m| m.node == standby && m.following == following);
        if !follows || facts.policy != PolicyState::InSync {
            return Plan::Nothing;
        }
        self.phase = Phase::Handover { leader: leader.clone(), since_ms, resigned: false };
        Plan::Hold(format!("this node's journal failed: it hands over to {standby}"))
    }

    /// Keeps the in-sync record true for what the policy does now.
    fn maintain_record(
        &mut self,
        leader: &LeaderValue,
        recorded: SyncRecord,
        facts: &Facts,
        view: &View,
    ) -> Plan {
        let with = |standby: Option<String>, mode: AckMode| SyncRecord {
            standby,
            mode: mode.name().into(),
            primary_last: facts.available.0,
            ..recorded.clone()
        };
        if facts.mode == AckMode::Async {
            self.mark = None;
            // Keep the loss window a promoted standby reports current.
            if recorded.ack_mode() != AckMode::Async || recorded.primary_last != facts.available.0 {
                return Plan::Record {
                    sync: with(recorded.standby.clone(), AckMode::Async),
                    after: After::Nothing,
                };
            }
            return Plan::Nothing;
        }
        match (facts.policy, facts.gate) {
            (PolicyState::InSync, Gate::Standby) => {
                self.record_standby(leader, &recorded, facts, view)
            }
            (PolicyState::StandbyLost { .. }, Gate::Held) => {
                self.mark = None;
                if recorded.standby.is_none() && recorded.ack_mode() == AckMode::Sync {
                    return Plan::Record { sync: recorded, after: After::ContinueAlone };
                }
                Plan::Record { sync: with(None, AckMode::Sync), after: After::ContinueAlone }
            }
            (PolicyState::Alone | PolicyState::CatchingUp, _) => {
                self.mark = None;
                if recorded.standby.is_some() || recorded.ack_mode() == AckMode::Async {
                    return Plan::Record { sync: with(None, AckMode::Sync), after: After::Nothing };
                }
                Plan::Nothing
            }
            _ => Plan::Nothing,
        }
    }

    /// The gate waits for the standby: name it in the record once its directory has caught up
    /// and its acknowledgement passed the mark taken a round after the gate closed.
    fn record_standby(
        &mut self,
        leader: &LeaderValue,
        recorded: &SyncRecord,
        facts: &Facts,
        view: &View,
    ) -> Plan {
        let followers: Vec<&str> = view
            .members
            .iter()
            .filter(|m| m.following.as_ref() == Some(&(leader.node.clone(), leader.epoch)))
            .map(|m| m.node.as_str())
            .collect();
        let [standby] = followers.as_slice() else {
            // None registered yet, or several: nobody is named; the primary stays recorded alone.
            return Plan::Nothing;
        };
        if facts.standby_catching_up {
            // Named now, a standby whose directory is catching up would be a copy nobody could
            // take over from: its marker keeps it waiting, and this primary, restarted after a
            // power loss, would wait for it. It is named once its acknowledgement says it has
            // caught up; until then answers wait for this journal too.
            return Plan::Nothing;
        }
        if recorded.standby.as_deref() == Some(*standby) && recorded.ack_mode() == AckMode::Sync {
            return Plan::Nothing;
        }
        let Some(mark) = self.mark else {
            self.mark = Some(facts.available);
            return Plan::Nothing;
        };
        if facts.acked < mark {
            return Plan::Nothing;
        }
        let sync = SyncRecord {
            standby: Some((*standby).to_owned()),
            mode: AckMode::Sync.name().into(),
            primary_last: facts.available.0,
            ..recorded.clone()
        };
        Plan::Record { sync, after: After::Nothing }
    }

    fn handover_view(
        &mut self,
        now_ms: u64,
        (leader, since_ms, resigned): (&LeaderValue, u64, bool),
        facts: &Facts,
        view: &View,
    ) -> Plan {
        let waited = now_ms.saturating_sub(since_ms);
        let too_long = waited > HANDOVER_WAIT_TTLS * self.timing.ttl_s * 1_000;
        if resigned {
            return match &view.leader {
                Some((now, _)) if now.node != self.me.node => {
                    Plan::Rejoin(format!("handed over to {} (epoch {})", now.node, now.epoch))
                }
                _ if too_long => Plan::Rejoin("the standby did not take over in time".into()),
                // It died or stalled after its last acknowledgement, before it took the key:
                // nobody else will, so this node takes it back now rather than after the wait
                // (a standby that took the key ends its stream only after, and is seen above).
                None if facts.policy != PolicyState::InSync => Plan::Rejoin(
                    "the standby was lost after the leader key was given to it, and nobody \
                     holds the key"
                        .into(),
                ),
                _ => Plan::Nothing,
            };
        }
        if let Some(plan) = lost_key(leader, view) {
            return plan;
        }
        if facts.journal_failed.is_some() {
            if too_long {
                return Plan::Rejoin("the standby did not take over in time".into());
            }
        } else if let Some(why) = self.switchover_off(leader, too_long, facts, view) {
            self.phase = Phase::Primary { leader: leader.clone(), in_office: true };
            self.called_off = Some(view.switchover_revision);
            return Plan::CallOff(why);
        }
        if standby_holds_enough(since_ms, facts, view) {
            return Plan::Resign;
        }
        Plan::Nothing
    }

    /// Why a switchover not yet carried out is called off, if it is: the standby it is for
    /// was lost (silent, or its acknowledgements stalled, for the replication timeout), its
    /// request lapsed (`driver::SWITCHOVER_REQUEST_TTL_S` after it was asked), or it did not
    /// confirm it holds everything within the handover's wait. Giving such a standby the key
    /// would leave nobody to take it, and the writes held for nothing.
    fn switchover_off(
        &self,
        leader: &LeaderValue,
        too_long: bool,
        facts: &Facts,
        view: &View,
    ) -> Option<String> {
        let standby =
            self.recorded.as_ref().and_then(|r| r.standby.as_deref()).unwrap_or("the standby");
        if facts.policy != PolicyState::InSync {
            return Some(format!(
                "{standby} was lost: its stream ended, or it acknowledged nothing within the \
                 replication timeout"
            ));
        }
        if switchover_asked(leader, view) != Some(standby) {
            return Some(format!("{standby}'s request lapsed"));
        }
        if too_long {
            return Some(format!(
                "{standby} did not confirm it holds everything within {HANDOVER_WAIT_TTLS} lease \
                 TTLs"
            ));
        }
        None
    }

    /// The key was given up.
    pub fn resigned(&mut self) {
        if let Phase::Handover { resigned, .. } = &mut self.phase {
            *resigned = true;
        }
        self.deadline_ms = None;
    }

    /// The campaign won: this standby now holds the key as `leader`, with `sync` recorded. It
    /// takes office once the record names it ([`Pilot::office_record`]).
    pub fn became_primary(&mut self, (leader, sync): (LeaderValue, SyncRecord), renewed_ms: u64) {
        assert_eq!(leader.node, self.me.node, "a campaign writes this node's value");
        assert_eq!(sync.epoch, leader.epoch, "the key is taken with the record's epoch");
        self.phase = Phase::Primary { leader, in_office: false };
        self.recorded = Some(sync);
        self.mark = None;
        self.called_off = None;
        self.deadline_ms = Some(self.timing.deadline(renewed_ms, self.timing.ttl_s));
    }

    /// The record was written; with [`After::TakeOffice`], the leader is in office.
    pub fn recorded_sync(&mut self, sync: SyncRecord, after: After) {
        if after == After::TakeOffice
            && let Phase::Primary { in_office, .. } = &mut self.phase
        {
            assert_eq!(sync.primary, self.me.node, "a leader takes office on a record naming it");
            assert_eq!(sync.standby, None, "and naming no standby yet");
            *in_office = true;
        }
        self.recorded = Some(sync);
    }

    /// The operator asks for `mode`: async is recorded before it is used; sync is used at
    /// once, and `Pilot::maintain_record` rewrites the record at the next round.
    pub fn mode_request(&self, mode: AckMode, facts: &Facts) -> Plan {
        let Phase::Primary { leader, in_office } = &self.phase else {
            return Plan::Wait("only the leader records the mode".into());
        };
        if !in_office {
            return Plan::Wait("this leader is taking office: try again in a moment".into());
        }
        if mode == AckMode::Sync {
            return Plan::Nothing;
        }
        let recorded = self.recorded.clone().unwrap_or_else(|| fresh_record(leader, facts));
        let sync =
            SyncRecord { mode: mode.name().into(), primary_last: facts.available.0, ..recorded };
        Plan::Record { sync, after: After::SetMode(mode) }
    }
}

/// The standby the in-sync record names, when it asks `leader` for a switchover.
fn switchover_asked<'v>(leader: &LeaderValue, view: &'v View) -> Option<&'v str> {
    let request = view.switchover.as_ref()?;
    let standby = view.sync.as_ref()?.standby.as_deref()?;
    (request.epoch == leader.epoch && request.to == standby).then_some(standby)
}

/// Whether a primary handing over since `since_ms` may give up the key: an acknowledgement on
/// the current stream since then (one that stopped or died just before would never take the
/// key, and the writes would wait for nobody; one that came back catching up could not) says
/// the standby holds everything the primary may have acknowledged.
/// In a switchover that is the whole journal. Once the journal failed it is what the journal
/// made durable (nothing after it was acknowledged), and under a `sync` record nothing is
/// waited for: every write acknowledged is on the standby it names.
fn standby_holds_enough(since_ms: u64, facts: &Facts, view: &View) -> bool {
    let Some((held, at_ms)) = facts.standby_last_ack else { return false };
    if at_ms <= since_ms || facts.standby_catching_up {
        return false;
    }
    match facts.journal_failed {
        None => held >= facts.available,
        Some(_) if view.sync.as_ref().is_some_and(|s| s.ack_mode() == AckMode::Sync) => true,
        Some(durable) => held >= durable,
    }
}

/// The plan when the leader key no longer holds `leader`, if it does not.
fn lost_key(leader: &LeaderValue, view: &View) -> Option<Plan> {
    match &view.leader {
        Some((now, _)) if now == leader => None,
        Some((now, _)) => Some(Plan::Rejoin(format!(
            "{} holds the leader key now (epoch {})",
            now.node, now.epoch
        ))),
        None => Some(Plan::Rejoin("the leader key is gone".into())),
    }
}

fn fresh_record(leader: &LeaderValue, facts: &Facts) -> SyncRecord {
    SyncRecord {
        version: RECORDS_VERSION,
        epoch: leader.epoch,
        primary: leader.node.clone(),
        standby: None,
        mode: facts.mode.name().into(),
        primary_last: facts.available.0,
    }
}

/// A node that does not lead and sees nobody leading: campaign if eligible, else wait.
fn leaderless(me: &Identity, view: &View, facts: &Facts) -> Plan {
    if let Some(durable) = facts.journal_failed {
        // Promoted, it would hold the key and refuse every write; the record's primary, or a
        // restart once the disk is fixed, serves instead.
        return Plan::Wait(format!(
            "nobody leads, and {}'s journal failed after sequence {durable}: it takes no \
             write, so it does not take over; restart it once its disk is fixed",
            me.node
        ));
    }
    if let Some(sync) = &view.sync {
        if !sync.eligible(&me.node) {
            let standby = sync.standby.as_deref().unwrap_or("no standby");
            return Plan::Wait(format!(
                "nobody leads, and the in-sync record (primary {}, {standby}, {}) does not let \
                 {} take over: it may lack acknowledged writes",
                sync.primary, sync.mode, me.node
            ));
        }
        // The record was true when written; a directory created or truncated since may no
        // longer hold what the node acknowledged. In async mode losses are accepted, but not
        // the whole history: a directory emptied (or made anew) while the primary it followed
        // holds records waits for a primary to fetch them from.
        if facts.catching_up
            && sync.ack_mode() == AckMode::Async
            && facts.available == Sequence(0)
            && sync.primary_last > 0
        {
            return Plan::Wait(format!(
                "nobody leads; the in-sync record says async, but {} holds no record while its \
                 primary {} had {}: it takes over only after catching up with a primary",
                me.node, sync.primary, sync.primary_last
            ));
        }
        // The record's position trails the primary's by up to a renewal, so this bounds
        // what the record knew, not the loss itself.
        let behind = sync.primary_last.saturating_sub(facts.available.0);
        let over = me.max_failover_loss.filter(|&max| behind > max);
        let bounded = sync.ack_mode() == AckMode::Async && sync.primary != me.node;
        if let (Some(max), true) = (over, bounded) {
            return Plan::Wait(format!(
                "nobody leads; the in-sync record says async, and its primary {} had journaled \
                 at least {behind} records beyond {}'s {}, more than the {max} this node may \
                 lose (--max-failover-loss): it takes over once {} leads again, or restarted \
                 with a larger bound",
                sync.primary, me.node, facts.available, sync.primary
            ));
        }
        if facts.catching_up && sync.ack_mode() == AckMode::Sync {
            return Plan::Wait(format!(
                "nobody leads; the in-sync record names {}, but its data directory was created \
                 or truncated since and may lack acknowledged writes: it takes over only after \
                 catching up with a primary (to accept the loss, stop the node, delete the \
                 catch-up file in its data directory and start it again)",
                me.node
            ));
        }
    }
    let highest = view.epoch().max(facts.epoch_floor);
    let Some(epoch) = highest.checked_add(1) else {
        return Plan::Wait(format!(
            "nobody leads, and {} cannot take a higher epoch than {highest}: its epoch file or \
             the leader record holds the largest there is",
            me.node
        ));
    };
    let leader = LeaderValue {
        version: RECORDS_VERSION,
        node: me.node.clone(),
        epoch,
        replication: me.replication.clone(),
        http: me.http.clone(),
    };
    // Until this node acknowledges something, what was acknowledged is held by the nodes the
    // record names now: it keeps naming them, with the new epoch, until this node takes
    // office. Without a record anyone may lead, and this node is named.
    let sync = match &view.sync {
        Some(sync) => SyncRecord { epoch, ..sync.clone() },
        None => fresh_record(&leader, facts),
    };
    assert!(sync.eligible(&me.node), "a campaign keeps its own node eligible");
    Plan::Campaign { leader, sync_revision: view.sync_revision, sync }
}

/// A candidate at start: follow whoever leads, campaign if nobody does and it may, or wait.
/// A key still held under this node's own name (its lease from before a restart) is waited
/// out: the old lease expires within its TTL.
#[must_use]
pub fn start(me: &Identity, view: &View, facts: &Facts) -> Plan {
    match &view.leader {
        Some((leader, _)) if leader.node == me.node => Plan::Wait(format!(
            "the leader key still holds this node's previous leadership (epoch {}); waiting \
             for its lease to expire",
            leader.epoch
        )),
        Some((leader, _)) => Plan::Follow(leader.clone()),
        None => leaderless(me, view, facts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordination::records::{Member, Switchover};
    use crate::coordination::store::{Coordinator, LeaseId, MemoryCoordinator};

    const TTL_S: u64 = 1;

    fn timing() -> Timing {
        Timing::for_ttl(TTL_S)
    }

    fn me(node: &str) -> Identity {
        Identity {
            node: node.into(),
            replication: format!("{node}:7100"),
            http: None,
            max_failover_loss: None,
        }
    }

    fn facts(
        primary: bool,
        policy: PolicyState,
        gate: Gate,
        (acked, available): (u64, u64),
    ) -> Facts {
        Facts {
            primary,
            policy,
            mode: AckMode::Sync,
            gate,
            acked: Sequence(acked),
            standby_last_ack: None,
            available: Sequence(available),
            must_restart: None,
            epoch_floor: 1,
            catching_up: false,
            standby_catching_up: false,
            journal_failed: None,
        }
    }

    fn candidate(available: u64) -> Facts {
        facts(false, PolicyState::Alone, Gate::Local, (available, available))
    }

    /// `a` takes the key on an empty witness at time 0; `b` follows it, registered.
    fn pair(witness: &mut MemoryCoordinator) -> (Pilot, Pilot, LeaseId, LeaseId) {
        let lease_a = witness.grant(TTL_S).unwrap();
        let lease_b = witness.grant(TTL_S).unwrap();
        let Plan::Campaign { leader, sync_revision, sync } =
            start(&me("a"), &witness.read().unwrap(), &candidate(0))
        else {
            panic!("an empty witness lets the first candidate campaign")
        };
        assert!(witness.campaign(&leader, lease_a, sync_revision, &sync).unwrap());
        let Plan::Follow(followed) = start(&me("b"), &witness.read().unwrap(), &candidate(0))
        else {
            panic!("a leads")
        };
        let following = Some((leader.node.clone(), leader.epoch));
        let member = Member { version: RECORDS_VERSION, node: "b".into(), following };
        witness.register(&member, lease_b).unwrap();
        let mut a = Pilot::primary(me("a"), timing(), (leader, sync), 0);
        let alone = facts(true, PolicyState::Alone, Gate::Held, (0, 0));
        let plan = a.on_view(0, &alone, &witness.read().unwrap());
        assert_eq!(carry_record(witness, &mut a, plan), After::TakeOffice);
        assert!(!a.taking_office());
        let b = Pilot::standby(me("b"), timing(), followed);
        (a, b, lease_a, lease_b)
    }

    fn carry_record(witness: &mut MemoryCoordinator, pilot: &mut Pilot, plan: Plan) -> After {
        let Plan::Record { sync, after } = plan else { panic!("a record write: {plan:?}") };
        assert!(witness.record_sync(pilot.leader(), &sync).unwrap());
        pilot.recorded_sync(sync, after);
        after
    }

    #[test]
    fn the_record_names_the_standby_only_once_its_ack_passed_a_later_mark() {
        // Goal: in sync at journal 100, the pilot takes a mark first; an acknowledgement below
        // it names nobody; one at or above it writes the standby into the record.
        let mut witness = MemoryCoordinator::new("c");
        let (mut a, _, _, _) = pair(&mut witness);
        let in_sync =
            |acked, available| facts(true, PolicyState::InSync, Gate::Standby, (acked, available));
        let view = witness.read().unwrap();
        assert_eq!(a.on_view(10, &in_sync(90, 100), &view), Plan::Nothing, "the mark is taken");
        assert_eq!(a.on_view(20, &in_sync(99, 120), &view), Plan::Nothing, "99 is below 100");
        let plan = a.on_view(30, &in_sync(100, 130), &view);
        carry_record(&mut witness, &mut a, plan);
        let record = witness.read().unwrap().sync.unwrap();
        assert_eq!(record.standby.as_deref(), Some("b"));
        assert!(record.eligible("b"));
    }

    #[test]
    fn the_record_names_a_standby_whose_directory_is_catching_up_only_once_it_caught_up() {
        // Goal: a standby in sync whose acknowledgements say its directory is catching up is
        // not named, however far its acknowledgements go: named, it could not take over, and
        // this primary, restarted after a power loss, would wait for it. Once it says it
        // caught up, the usual mark follows and then the record names it.
        let mut witness = MemoryCoordinator::new("c");
        let (mut a, _, _, _) = pair(&mut witness);
        let in_sync = |acked, available, standby_catching_up| Facts {
            standby_catching_up,
            ..facts(true, PolicyState::InSync, Gate::Standby, (acked, available))
        };
        let view = witness.read().unwrap();
        for at in [10, 20, 30] {
            let plan = a.on_view(at, &in_sync(100, 100, true), &view);
            assert_eq!(plan, Plan::Nothing, "named at {at} while catching up");
        }
        assert_eq!(a.on_view(40, &in_sync(100, 100, false), &view), Plan::Nothing, "the mark");
        let plan = a.on_view(50, &in_sync(100, 100, false), &view);
        carry_record(&mut witness, &mut a, plan);
        assert_eq!(witness.read().unwrap().sync.unwrap().standby.as_deref(), Some("b"));
    }

    #[test]
    fn a_standby_that_must_restart_rejoins_while_its_leader_still_leads() {
        // Goal: a standby whose journal diverged, or whose missing records were retired,
        // cannot follow by retrying: the pilot restarts it as a candidate, for that reason,
        // even though the leader it follows still holds the key.
        let mut witness = MemoryCoordinator::new("c");
        let (_, mut b, _, _) = pair(&mut witness);
        let view = witness.read().unwrap();
        assert_eq!(b.on_view(10, &candidate(0), &view), Plan::Nothing, "following the leader");
        let why = "the records this standby lacks were retired";
        let retired = Facts { must_restart: Some(why), ..candidate(0) };
        assert_eq!(b.on_view(20, &retired, &view), Plan::Rejoin(why.into()));
    }

    /// [`pair`], with `a` in sync at 50 and `b` written into the record as its in-sync
    /// standby; returns the pilots, `b`'s lease and `a`'s facts.
    fn recorded_pair(witness: &mut MemoryCoordinator) -> (Pilot, Pilot, LeaseId, Facts) {
        let (mut a, b, _, lease_b) = pair(witness);
        let in_sync = facts(true, PolicyState::InSync, Gate::Standby, (50, 50));
        a.on_view(0, &in_sync, &witness.read().unwrap());
        let plan = a.on_view(1, &in_sync, &witness.read().unwrap());
        carry_record(witness, &mut a, plan);
        (a, b, lease_b, in_sync)
    }

    #[test]
    fn a_standby_takes_the_key_only_after_the_lease_expired_and_above_every_epoch() {
        // Goal: while the primary's lease lives the standby does nothing; once it expired, the
        // recorded standby campaigns in a higher epoch, and the old primary, seeing the new
        // leader, rejoins.
        let mut witness = MemoryCoordinator::new("c");
        let (mut a, mut b, lease_b, in_sync) = recorded_pair(&mut witness);
        let follower = candidate(50);
        witness.now_ms = 900;
        witness.keep_alive(lease_b).unwrap();
        assert_eq!(b.on_view(900, &follower, &witness.read().unwrap()), Plan::Nothing);
        witness.now_ms = 1_000;
        witness.keep_alive(lease_b).unwrap();
        let Plan::Campaign { leader, sync_revision, sync } =
            b.on_view(1_000, &follower, &witness.read().unwrap())
        else {
            panic!("the recorded standby campaigns once the lease expired")
        };
        assert!(leader.epoch > a.leader().epoch);
        assert!(witness.campaign(&leader, lease_b, sync_revision, &sync).unwrap());
        b.became_primary((leader, sync), 1_000);
        assert_eq!(b.state(), "leader");
        let plan = a.on_view(1_100, &in_sync, &witness.read().unwrap());
        assert!(matches!(plan, Plan::Rejoin(_)), "{plan:?}");
    }

    #[test]
    fn a_node_whose_epoch_floor_is_the_largest_waits_instead_of_overflowing() {
        // Goal: an epoch file holding the largest epoch (damaged, or written so) keeps the
        // node from campaigning, with a reason, rather than overflowing the next epoch.
        let mut witness = MemoryCoordinator::new("c");
        let facts = Facts { epoch_floor: u64::MAX, ..candidate(0) };
        let plan = start(&me("a"), &witness.read().unwrap(), &facts);
        let Plan::Wait(why) = plan else { panic!("{plan:?}") };
        assert!(why.contains("cannot take a higher epoch"), "{why}");
    }

    #[test]
    fn a_new_leader_leaves_the_old_nodes_eligible_until_it_takes_office() {
        // Goal: the campaign raises the record's epoch and keeps naming a and b, so if b dies
        // before it acknowledged anything (its promotion failed on its disk, it lost power),
        // a, which holds everything acknowledged, may lead again. b takes office first thing,
        // with a record naming it alone; from then on a may not, and b's mode waits for it.
        let mut witness = MemoryCoordinator::new("c");
        let (a, mut b, lease_b, _) = recorded_pair(&mut witness);
        witness.now_ms = 900;
        witness.keep_alive(lease_b).unwrap();
        witness.now_ms = 1_000;
        witness.keep_alive(lease_b).unwrap();
        let follower = candidate(50);
        let Plan::Campaign { leader, sync_revision, sync } =
            b.on_view(1_000, &follower, &witness.read().unwrap())
        else {
            panic!("the recorded standby campaigns once the lease expired")
        };
        assert!(sync.epoch == leader.epoch && leader.epoch > a.leader().epoch);
        assert_eq!((sync.primary.as_str(), sync.standby.as_deref()), ("a", Some("b")));
        assert!(witness.campaign(&leader, lease_b, sync_revision, &sync).unwrap());
        b.became_primary((leader.clone(), sync), 1_000);
        assert!(b.taking_office());
        let alone = facts(true, PolicyState::Alone, Gate::Held, (50, 50));
        let waits = b.mode_request(AckMode::Async, &alone);
        assert!(matches!(&waits, Plan::Wait(why) if why.contains("taking office")), "{waits:?}");
        let office = b.office_record(&alone).expect("a leader out of office has a record to write");
        let plan = b.on_view(5_010, &alone, &witness.read().unwrap());
        assert_eq!(plan, Plan::Record { sync: office, after: After::TakeOffice });

        // b dies here: its key goes with its lease, and a, a candidate again, may lead.
        let mut before = witness.read().unwrap();
        before.leader = None;
        let plan = start(&me("a"), &before, &candidate(50));
        let Plan::Campaign { leader: next, sync, .. } = plan else { panic!("{plan:?}") };
        assert!(next.epoch > leader.epoch, "above the epoch b took");
        assert!(sync.eligible("a") && sync.eligible("b"));

        // b takes office instead: a may no longer lead, and b's plans are a primary's.
        let plan = b.on_view(5_020, &alone, &witness.read().unwrap());
        assert_eq!(carry_record(&mut witness, &mut b, plan), After::TakeOffice);
        assert!(!b.taking_office());
        let recorded = witness.read().unwrap().sync.unwrap();
        assert_eq!((recorded.primary.as_str(), recorded.standby), ("b", None));
        let mut after = witness.read().unwrap();
        after.leader = None;
        let plan = start(&me("a"), &after, &candidate(50));
        assert!(matches!(&plan, Plan::Wait(why) if why.contains("does not let a")), "{plan:?}");
        let alone = Facts { gate: Gate::Local, ..alone };
        assert_eq!(b.on_view(5_030, &alone, &witness.read().unwrap()), Plan::Nothing);
    }

    #[test]
    fn a_recorded_standby_whose_journal_was_truncated_waits_until_it_caught_up() {
        // Goal: the record named b when b held every acknowledged write; after its journal
        // was truncated (or its directory created anew) b does not take over on that record,
        // at start or while running, and says why; caught up, it does.
        let mut witness = MemoryCoordinator::new("c");
        let (_, mut b, lease_b, _) = recorded_pair(&mut witness);
        witness.now_ms = 5_000;
        witness.keep_alive(lease_b).unwrap();
        let view = witness.read().unwrap();
        let truncated = Facts { catching_up: true, ..candidate(7) };
        for plan in [start(&me("b"), &view, &truncated), b.on_view(5_000, &truncated, &view)] {
            assert!(matches!(&plan, Plan::Wait(why) if why.contains("catching up")), "{plan:?}");
        }
        let caught_up = candidate(50);
        assert!(matches!(b.on_view(5_000, &caught_up, &view), Plan::Campaign { .. }));
    }

    #[test]
    fn a_recorded_standby_whose_journal_failed_does_not_take_the_key() {
        // Goal: the record names b, under sync or async, and the leader's lease expired. b's
        // journal failed after 40 (its disk filled): promoted, it would hold the key and
        // refuse every write, and the recorded primary, back, could not take it. It waits
        // and says why; with its journal working it campaigns.
        for mode in [AckMode::Sync, AckMode::Async] {
            let mut witness = MemoryCoordinator::new("c");
            let (mut a, mut b, lease_b, _) = recorded_pair(&mut witness);
            if mode == AckMode::Async {
                let alone = facts(true, PolicyState::Alone, Gate::Local, (0, 50));
                let plan = a.mode_request(mode, &Facts { mode, ..alone });
                carry_record(&mut witness, &mut a, plan);
            }
            witness.now_ms = 5_000;
            witness.keep_alive(lease_b).unwrap();
            let view = witness.read().unwrap();
            assert_eq!(view.sync.as_ref().map(SyncRecord::ack_mode), Some(mode));
            let failed = Facts { journal_failed: Some(Sequence(40)), ..candidate(50) };
            let plan = b.on_view(5_000, &failed, &view);
            let said = "b's journal failed after sequence 40: it takes no write";
            assert!(matches!(&plan, Plan::Wait(why) if why.contains(said)), "{mode:?}: {plan:?}");
            let plan = b.on_view(5_000, &candidate(50), &view);
            assert!(matches!(plan, Plan::Campaign { .. }), "{mode:?}: {plan:?}");
        }
    }

    #[test]
    fn under_an_async_record_a_truncated_standby_may_take_over() {
        // Goal: async accepts losing what the standby lacks, so a truncated standby is not
        // held back by the catch-up marker there; an emptied one, which lacks everything the
        // record says its primary held, is (simulator seed 1613 under `--async`).
        let mut witness = MemoryCoordinator::new("c");
        let (mut a, _, _, lease_b) = pair(&mut witness);
        let facts_async =
            Facts { mode: AckMode::Async, ..facts(true, PolicyState::Alone, Gate::Local, (0, 9)) };
        let plan = a.mode_request(AckMode::Async, &facts_async);
        carry_record(&mut witness, &mut a, plan);
        witness.now_ms = 5_000;
        witness.keep_alive(lease_b).unwrap();
        let truncated = Facts { catching_up: true, ..candidate(3) };
        let plan = start(&me("b"), &witness.read().unwrap(), &truncated);
        assert!(matches!(plan, Plan::Campaign { .. }), "{plan:?}");
        // Not an emptied directory, though: it would lose the whole history.
        let emptied = Facts { catching_up: true, ..candidate(0) };
        let plan = start(&me("b"), &witness.read().unwrap(), &emptied);
        assert!(matches!(&plan, Plan::Wait(why) if why.contains("holds no record")), "{plan:?}");
    }

    #[test]
    fn under_an_async_record_a_node_takes_over_only_within_its_loss_bound() {
        // Goal: `--max-failover-loss`: a standby the record says lags its primary by more than
        // its bound waits, at start and while running, and says why; one within it campaigns;
        // the recorded primary, which lost nothing, is never held back; a sync record is
        // untouched by the bound.
        let mut witness = MemoryCoordinator::new("c");
        let (mut a, mut b, _, lease_b) = pair(&mut witness);
        let facts_async =
            Facts { mode: AckMode::Async, ..facts(true, PolicyState::Alone, Gate::Local, (0, 9)) };
        let plan = a.mode_request(AckMode::Async, &facts_async);
        carry_record(&mut witness, &mut a, plan);
        assert_eq!(witness.read().unwrap().sync.unwrap().primary_last, 9);
        witness.now_ms = 5_000;
        witness.keep_alive(lease_b).unwrap();
        let view = witness.read().unwrap();
        let bound = |node: &str, max: u64| Identity { max_failover_loss: Some(max), ..me(node) };
        // b holds 6 of the 9: 3 behind.
        let plan = start(&bound("b", 2), &view, &candidate(6));
        assert!(matches!(&plan, Plan::Wait(why) if why.contains("at least 3 records")), "{plan:?}");
        b.me = bound("b", 2);
        let plan = b.on_view(5_000, &candidate(6), &view);
        assert!(
            matches!(&plan, Plan::Wait(why) if why.contains("--max-failover-loss")),
            "{plan:?}"
        );
        for within in
            [start(&bound("b", 3), &view, &candidate(6)), start(&me("b"), &view, &candidate(6))]
        {
            assert!(matches!(within, Plan::Campaign { .. }), "{within:?}");
        }
        let plan = start(&bound("a", 0), &view, &candidate(0));
        assert!(matches!(plan, Plan::Campaign { .. }), "the recorded primary: {plan:?}");

        // In sync the record decides alone: the bound never holds back a node it names.
        let mut witness = MemoryCoordinator::new("c");
        let (_, _, lease_b, _) = recorded_pair(&mut witness);
        witness.now_ms = 5_000;
        witness.keep_alive(lease_b).unwrap();
        let view = witness.read().unwrap();
        assert_eq!(view.sync.as_ref().unwrap().ack_mode(), AckMode::Sync);
        let plan = start(&bound("b", 0), &view, &candidate(0));
        assert!(matches!(plan, Plan::Campaign { .. }), "{plan:?}");
    }

    #[test]
    fn an_unrecorded_standby_waits_when_the_primary_is_gone() {
        // Goal: a primary recorded alone dies; its standby (which may lack acknowledged
        // writes) never campaigns, and says why.
        let mut witness = MemoryCoordinator::new("c");
        let (_, mut b, _, lease_b) = pair(&mut witness);
        witness.now_ms = 5_000;
        witness.keep_alive(lease_b).unwrap();
        let plan = b.on_view(5_000, &candidate(10), &witness.read().unwrap());
        assert!(matches!(&plan, Plan::Wait(why) if why.contains("does not let b")), "{plan:?}");
    }

    #[test]
    fn alone_and_async_are_recorded_before_they_are_used() {
        // Goal: a lost standby's hold lifts only through a record write followed by
        // ContinueAlone; async only through a record write followed by SetMode.
        let mut witness = MemoryCoordinator::new("c");
        let (mut a, _, _, _) = pair(&mut witness);
        let in_sync = facts(true, PolicyState::InSync, Gate::Standby, (5, 5));
        a.on_view(0, &in_sync, &witness.read().unwrap());
        let plan = a.on_view(1, &in_sync, &witness.read().unwrap());
        carry_record(&mut witness, &mut a, plan);
        let lost = facts(true, PolicyState::StandbyLost { since_ms: 2 }, Gate::Held, (5, 9));
        let plan = a.on_view(2_000, &lost, &witness.read().unwrap());
        assert_eq!(carry_record(&mut witness, &mut a, plan), After::ContinueAlone);
        assert_eq!(witness.read().unwrap().sync.unwrap().standby, None, "recorded first");
        let alone = facts(true, PolicyState::Alone, Gate::Local, (5, 9));
        let plan = a.mode_request(AckMode::Async, &alone);
        assert_eq!(carry_record(&mut witness, &mut a, plan), After::SetMode(AckMode::Async));
        assert_eq!(witness.read().unwrap().sync.unwrap().ack_mode(), AckMode::Async);
        assert_eq!(a.mode_request(AckMode::Sync, &alone), Plan::Nothing, "sync needs no record");
    }

    #[test]
    fn the_lease_deadline_counts_from_the_renewal_sent_and_never_moves_back() {
        // Goal: deadline = sent + TTL − margin; a late answer to an older renewal cannot
        // shorten it; an expired lease makes the primary rejoin.
        let mut witness = MemoryCoordinator::new("c");
        let (mut a, _, _, _) = pair(&mut witness);
        let margin = timing().margin_ms;
        assert_eq!(a.renewed(400, TTL_S), Plan::Nothing);
        assert_eq!(a.deadline_ms(), Some(400 + 1_000 - margin));
        a.renewed(100, TTL_S);
        assert_eq!(a.deadline_ms(), Some(400 + 1_000 - margin), "never backwards");
        a.renewed(450, 60);
        assert_eq!(a.deadline_ms(), Some(450 + 1_000 - margin), "never past the TTL asked for");
        assert!(matches!(a.renewed(500, 0), Plan::Rejoin(_)));
        assert_eq!(a.deadline_ms(), None);
    }

    #[test]
    fn a_switchover_holds_then_resigns_only_once_the_standby_has_everything() {
        // Goal: the recorded standby's request holds writes; the key is given up only when its
        // acknowledgement reached the journal's end and it was heard from after the writes
        // were held; then the primary rejoins under the new leader. A request from anyone
        // else is ignored.
        let mut witness = MemoryCoordinator::new("c");
        let (mut a, _, _, lease_b) = pair(&mut witness);
        let in_sync = |acked, at| Facts {
            standby_last_ack: Some((Sequence(acked), at)),
            ..facts(true, PolicyState::InSync, Gate::Standby, (acked, 40))
        };
        a.on_view(0, &in_sync(40, 0), &witness.read().unwrap());
        let plan = a.on_view(1, &in_sync(40, 1), &witness.read().unwrap());
        carry_record(&mut witness, &mut a, plan);
        let stranger =
            Switchover { version: RECORDS_VERSION, to: "c".into(), epoch: a.leader().epoch };
        witness.request_switchover(&stranger, lease_b).unwrap();
        assert_eq!(a.on_view(2, &in_sync(40, 2), &witness.read().unwrap()), Plan::Nothing);
        let request = Switchover { to: "b".into(), ..stranger };
        witness.request_switchover(&request, lease_b).unwrap();
        let held = a.on_view(3, &in_sync(39, 3), &witness.read().unwrap());
        assert_eq!(held, Plan::Hold("b asks to take over".into()));
        assert_eq!(a.on_view(4, &in_sync(39, 4), &witness.read().unwrap()), Plan::Nothing);
        let view = witness.read().unwrap();
        assert_eq!(a.on_view(5, &in_sync(40, 3), &view), Plan::Nothing, "last heard at the hold");
        assert_eq!(a.on_view(6, &in_sync(40, 6), &witness.read().unwrap()), Plan::Resign);
        assert!(witness.resign(a.leader()).unwrap());
        a.resigned();
        assert_eq!(a.on_view(7, &in_sync(40, 7), &witness.read().unwrap()), Plan::Nothing);
        // The standby lost before it took the key: this node restarts to take it back at once.
        let lost = Facts {
            policy: PolicyState::StandbyLost { since_ms: 7 },
            gate: Gate::Held,
            ..in_sync(40, 7)
        };
        let plan = a.on_view(8, &lost, &witness.read().unwrap());
        assert!(matches!(&plan, Plan::Rejoin(why) if why.contains("standby was lost")), "{plan:?}");
    }

    #[test]
    fn a_switchover_gives_up_the_key_only_once_the_standbys_directory_has_caught_up() {
        // Goal: a standby that holds the whole journal but came back on a new stream with its
        // directory catching up could not take the key (its marker keeps it from standing on
        // the in-sync record): the primary keeps the key and its writes held, and resigns
        // once an acknowledgement says the standby's directory caught up.
        let mut witness = MemoryCoordinator::new("c");
        let (mut a, _, _, lease_b) = pair(&mut witness);
        let in_sync = |at, catching_up| Facts {
            standby_last_ack: Some((Sequence(40), at)),
            standby_catching_up: catching_up,
            ..facts(true, PolicyState::InSync, Gate::Standby, (40, 40))
        };
        a.on_view(0, &in_sync(0, false), &witness.read().unwrap());
        let plan = a.on_view(1, &in_sync(1, false), &witness.read().unwrap());
        carry_record(&mut witness, &mut a, plan);
        let request =
            Switchover { version: RECORDS_VERSION, to: "b".into(), epoch: a.leader().epoch };
        witness.request_switchover(&request, lease_b).unwrap();
        let held = a.on_view(2, &in_sync(2, false), &witness.read().unwrap());
        assert_eq!(held, Plan::Hold("b asks to take over".into()));
        let view = witness.read().unwrap();
        assert_eq!(a.on_view(3, &in_sync(3, true), &view), Plan::Nothing, "catching up");
        assert_eq!(a.on_view(4, &in_sync(4, true), &view), Plan::Nothing, "still catching up");
        assert_eq!(a.on_view(5, &in_sync(5, false), &view), Plan::Resign);
    }

    #[test]
    fn a_switchover_whose_standby_is_lost_or_gone_is_called_off_and_writes_go_on() {
        // Goal: before the key is given up, a standby lost (silent or stalled for the
        // replication timeout), whose request lapsed, or that does not confirm it holds
        // everything within the handover's wait, calls the switchover off: the node stays the
        // primary, and then goes on as it would have (alone, once recorded so). A request
        // called off is not taken up again, even with the standby back in sync; asked anew,
        // it is.
        let mut witness = MemoryCoordinator::new("c");
        let (a, in_sync, lease_b) = asked_pair(&mut witness);
        let view = witness.read().unwrap();
        let lost =
            Facts { policy: PolicyState::StandbyLost { since_ms: 3 }, gate: Gate::Held, ..in_sync };

        let mut silent = a.clone();
        let plan = silent.on_view(2_500, &lost, &view);
        let Plan::CallOff(why) = plan else { panic!("called off: {plan:?}") };
        assert!(why.starts_with("b was lost: its stream ended, or it acknowledged"), "{why}");
        assert_eq!(silent.state(), "leader");
        let plan = silent.on_view(2_600, &lost, &view);
        let Plan::Record { sync, after } = plan.clone() else {
            panic!("the request stands, but a lost standby is not waited for again: {plan:?}")
        };
        assert_eq!((sync.standby.as_deref(), after), (None, After::ContinueAlone));
        carry_record(&mut witness, &mut silent, plan);
        // In sync again and named once more, while the request called off still stands.
        let named = SyncRecord { standby: Some("b".into()), ..sync };
        carry_record(
            &mut witness,
            &mut silent,
            Plan::Record { sync: named, after: After::Nothing },
        );
        let back = |at| Facts { standby_last_ack: Some((Sequence(50), at)), ..in_sync };
        let view = witness.read().unwrap();
        assert!(view.switchover.is_some(), "the request stands");
        assert_eq!(silent.on_view(2_700, &back(2_700), &view), Plan::Nothing, "not taken up");
        let request = view.switchover.clone().unwrap();
        witness.request_switchover(&request, lease_b).unwrap();
        let view = witness.read().unwrap();
        assert!(matches!(silent.on_view(2_800, &back(2_800), &view), Plan::Hold(_)), "anew");
        assert_eq!(silent.on_view(2_900, &back(2_850), &view), Plan::Resign);

        let mut forsaken = a.clone();
        let view = View { switchover: None, switchover_revision: 0, ..witness.read().unwrap() };
        let plan = forsaken.on_view(1_000, &in_sync, &view);
        assert_eq!(plan, Plan::CallOff("b's request lapsed".into()));
        assert_eq!(forsaken.on_view(1_100, &in_sync, &view), Plan::Nothing, "in office");

        let mut behind = a;
        let view = witness.read().unwrap();
        let lagging = |at| Facts {
            acked: Sequence(49),
            standby_last_ack: Some((Sequence(49), at)),
            ..in_sync
        };
        assert_eq!(behind.on_view(1_999, &lagging(1_999), &view), Plan::Nothing);
        let plan = behind.on_view(2_004, &lagging(2_004), &view);
        let why = "b did not confirm it holds everything within 2 lease TTLs";
        assert_eq!(plan, Plan::CallOff(why.into()));
        let plan = behind.on_view(2_100, &lagging(2_100), &view);
        assert!(!matches!(plan, Plan::Hold(_)), "held again for the request called off: {plan:?}");
    }

    /// `a` leads with `b` recorded in sync at 50 records, and holds writes at time 3 because
    /// `b` asks to take over; the facts `a` was in sync with (`b`'s last acknowledgement at 2),
    /// and `b`'s lease.
    fn asked_pair(witness: &mut MemoryCoordinator) -> (Pilot, Facts, LeaseId) {
        let (mut a, _, lease_b, in_sync) = recorded_pair(witness);
        let in_sync = Facts { standby_last_ack: Some((Sequence(50), 2)), ..in_sync };
        let epoch = a.leader().epoch;
        let request = Switchover { version: RECORDS_VERSION, to: "b".into(), epoch };
        witness.request_switchover(&request, lease_b).unwrap();
        assert!(matches!(a.on_view(3, &in_sync, &witness.read().unwrap()), Plan::Hold(_)));
        assert_eq!(a.state(), "handing_over");
        (a, in_sync, lease_b)
    }

    #[test]
    fn a_primary_whose_journal_failed_hands_over_only_to_a_recorded_standby_following_it() {
        // Goal: a primary whose journal failed acknowledges nothing more, so it gives the key
        // to the standby the record names: at once under a `sync` record (that standby holds
        // every acknowledged write), and under `async` once the standby holds what the journal
        // made durable. With no standby named, the one named not following it, or one gone
        // silent, nobody else may take over and it keeps the key.
        let mut witness = MemoryCoordinator::new("c");
        let (mut a, _, _, in_sync) = recorded_pair(&mut witness);
        let view = witness.read().unwrap();
        assert_eq!(view.sync.as_ref().unwrap().standby.as_deref(), Some("b"));
        // Durable through 35 of 50; the standby acknowledged `acked`.
        let failed =
            |acked| Facts { journal_failed: Some(Sequence(35)), acked: Sequence(acked), ..in_sync };
        // Acknowledged at 4, after the hold at 2 (or 3).
        let failed =
            |acked| Facts { standby_last_ack: Some((Sequence(acked), 4)), ..failed(acked) };

        let gone = View { members: Vec::new(), ..view.clone() };
        let mut lone = a.clone();
        assert_eq!(lone.on_view(2, &failed(30), &gone), Plan::Nothing);
        let unnamed = SyncRecord { standby: None, ..view.sync.clone().unwrap() };
        let unnamed = View { sync: Some(unnamed), ..view.clone() };
        assert_eq!(lone.on_view(3, &failed(30), &unnamed), Plan::Nothing);
        let silent = Facts {
            policy: PolicyState::StandbyLost { since_ms: 1 },
            gate: Gate::Held,
            ..failed(30)
        };
        assert_eq!(lone.on_view(4, &silent, &view), Plan::Nothing);
        assert_eq!(lone.state(), "leader", "nobody else may take over: the key is kept");

        let mut in_async = a.clone();
        let recorded_async = SyncRecord { mode: "async".into(), ..view.sync.clone().unwrap() };
        let view_async = View { sync: Some(recorded_async), ..view.clone() };
        let failed_async = |acked| Facts { mode: AckMode::Async, ..failed(acked) };
        assert!(matches!(in_async.on_view(2, &failed_async(30), &view_async), Plan::Hold(_)));
        assert_eq!(in_async.on_view(3, &failed_async(34), &view_async), Plan::Nothing);
        assert_eq!(in_async.on_view(4, &failed_async(35), &view_async), Plan::Resign);

        let held = a.on_view(2, &failed(30), &view);
        assert_eq!(held, Plan::Hold("this node's journal failed: it hands over to b".into()));
        assert_eq!(a.state(), "handing_over");
        let unheard = Facts { standby_last_ack: Some((Sequence(30), 2)), ..failed(30) };
        assert_eq!(a.on_view(3, &unheard, &view), Plan::Nothing, "b not heard since the hold");
        assert_eq!(a.on_view(4, &failed(30), &view), Plan::Resign, "b holds every answer");
    }

    #[test]
    fn a_deleted_record_is_written_again_by_the_primary() {
        // Goal: without a record anyone could take over; the primary restores one naming no
        // standby before anything else.
        let mut witness = MemoryCoordinator::new("c");
        let (mut a, _, _, _) = pair(&mut witness);
        let mut view = witness.read().unwrap();
        view.sync = None;
        let alone = facts(true, PolicyState::Alone, Gate::Local, (3, 3));
        let Plan::Record { sync, after } = a.on_view(1, &alone, &view) else { panic!() };
        assert_eq!((sync.ack_mode(), after), (AckMode::Sync, After::Nothing));
        assert_eq!(sync.standby, None);
    }

    #[test]
    fn conditional_writes_fail_once_the_key_changed_hands() {
        // Goal: the witness's guards: a second campaign fails while the key is held; a stale
        // leader value can neither write the record nor resign.
        let mut witness = MemoryCoordinator::new("c");
        let (a, _, _, lease_b) = pair(&mut witness);
        let view = witness.read().unwrap();
        let Plan::Campaign { leader, sync, .. } =
            leaderless(&me("b"), &View::default(), &candidate(0))
        else {
            panic!()
        };
        assert!(!witness.campaign(&leader, lease_b, view.sync_revision, &sync).unwrap());
        let mut stale = a.leader().clone();
        stale.epoch += 7;
        assert!(!witness.record_sync(&stale, &sync).unwrap());
        assert!(!witness.resign(&stale).unwrap());
        assert!(witness.resign(a.leader()).unwrap());
    }
}
