//! A node's replication as one object: its role (primary or standby), the acknowledgement
//! policy and its clock, the shared link to the node's stages, the epochs, the figures shown
//! in `/v1/node` and `/metrics`, and promotion. The socket threads (`primary`, `standby`) call
//! into it; the policy loop (`rf-repl-control`) ticks it.

use std::collections::VecDeque;
use std::fmt;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use ringfence_core::pipeline::{Clock, Node, Promoter};
use ringfence_core::{Epoch, Sequence};
use ringfence_journal::datadir::DataDir;
use ringfence_journal::epoch::Epochs;
use ringfence_journal::storage::Storage;

use crate::config::ReplicationConfig;
use crate::coordination::pilot::Facts;
use crate::link::Link;
use crate::message::{Ack, Answering};
use crate::policy::{AckMode, AckPolicy, Gate, PolicyState};
use crate::standby::Parked;

/// How far a promotion by hand raises the epoch past the highest one this node knows: past
/// every epoch its primary may have taken in runs this node never heard of
/// ([`Control::promote`]).
pub const PROMOTION_EPOCH_STEP: u64 = 1_000;

/// How long a standby taking office waits for its journal to sync what it holds.
const SYNC_BEFORE_OFFICE: Duration = Duration::from_secs(10);
/// How far a promoted standby's clock may stand from the time line it takes over before the
/// promotion's log line says so.
const CLOCK_WARNING_MS: u64 = 1_000;

/// How often the policy loop looks at the time: a hundredth of the replication timeout (20 ms
/// at the default 2 s), within these bounds. A standby's silence is noticed at most that long
/// past the timeout; an idle node's cost is mostly these wake-ups.
const POLICY_TICK_MIN: Duration = Duration::from_millis(10);
const POLICY_TICK_MAX: Duration = Duration::from_millis(50);

/// Writes one line to the log, the way `ringfence serve` logs.
pub(crate) fn log(args: fmt::Arguments<'_>) {
    tracing::info!(target: "ringfence", "{args}");
}

/// Logs what an operator filtering on warnings (`RINGFENCE_LOG=warn`) must still see: writes
/// held, a lease not renewed, a node restarting or waiting to lead.
pub(crate) fn warn(args: fmt::Arguments<'_>) {
    tracing::warn!(target: "ringfence", "{args}");
}

/// Where a node's epochs are kept: its data directory's epoch file.
pub trait EpochStore: Send + Sync + 'static {
    /// The epochs in force.
    fn epochs(&self) -> Epochs;
    /// Stores new epochs durably before returning.
    fn store(&self, epochs: Epochs) -> Result<(), String>;
    /// Whether the directory may lack records it once acknowledged (created or truncated
    /// since): then it does not take over on the strength of an in-sync record.
    fn catching_up(&self) -> bool;
    /// The node caught up with a primary, or became one: durably no longer catching up.
    fn caught_up(&self) -> Result<(), String>;
    /// The directory may lack records it acknowledged: durably catching up.
    fn mark_catching_up(&self) -> Result<(), String>;
    /// Whether a standby was in sync with this node as primary.
    fn standby_in_sync(&self) -> bool;
    /// Records durably whether a standby is in sync with this primary.
    fn set_standby_in_sync(&self, on: bool) -> Result<(), String>;
    /// Whether this node, as a standby, acknowledges records before its journal syncs them.
    fn acknowledges_written(&self) -> bool;
    /// Records durably whether this node, as a standby, acknowledges records before its
    /// journal syncs them.
    fn set_acknowledges_written(&self, on: bool) -> Result<(), String>;
}

impl<S: Storage + Sync> EpochStore for DataDir<S> {
    fn epochs(&self) -> Epochs {
        DataDir::epochs(self)
    }
    fn store(&self, epochs: Epochs) -> Result<(), String> {
        self.store_epochs(epochs).map_err(|e| e.to_string())
    }
    fn catching_up(&self) -> bool {
        DataDir::catching_up(self)
    }
    fn caught_up(&self) -> Result<(), String> {
        DataDir::caught_up(self).map_err(|e| e.to_string())
    }
    fn mark_catching_up(&self) -> Result<(), String> {
        DataDir::mark_catching_up(self).map_err(|e| e.to_string())
    }
    fn standby_in_sync(&self) -> bool {
        DataDir::standby_in_sync(self)
    }
    fn set_standby_in_sync(&self, on: bool) -> Result<(), String> {
        DataDir::set_standby_in_sync(self, on).map_err(|e| e.to_string())
    }
    fn acknowledges_written(&self) -> bool {
        DataDir::acknowledges_written(self)
    }
    fn set_acknowledges_written(&self, on: bool) -> Result<(), String> {
        DataDir::set_acknowledges_written(self, on).map_err(|e| e.to_string())
    }
}

/// The follower's state once its journal diverged from the primary's: it stops, and the node
/// must restart (dropping the tail the primary never had) to rejoin.
pub const DIVERGED: &str = "diverged: restart to rejoin";
/// The follower's state once the primary refused it because the records it lacks were
/// retired: it stops, and the node must restart (fetching the primary's snapshot) to rejoin.
pub const NEEDS_SNAPSHOT: &str = "needs a snapshot: restart to rejoin";
/// The standby's state once a promotion failed where it cannot follow again: its follower
/// is gone, or the new epoch was stored (a node promising it would depose its primary).
pub const PROMOTION_FAILED: &str = "promotion failed part way: restart this node";

/// Why a follower in `state` must restart, where the start of a standby takes it on.
fn rejoins_at_start(state: &str) -> Option<&'static str> {
    if state == DIVERGED {
        Some("this journal diverged from the primary's")
    } else if state == NEEDS_SNAPSHOT {
        Some(
            "the records this standby lacks were retired from the primary's journal: it fetches \
             the primary's snapshot at start",
        )
    } else {
        None
    }
}

/// A node takes office as primary in `epoch` (a promotion, or the leader key taken at start):
/// its journal becomes the reference copy (no longer catching up), no standby is in sync with
/// it yet, and the epoch is stored as current and promised before it journals in it.
///
/// Storing the epoch is the commit point, so it goes last. A failure before it leaves the node
/// a standby of its old epoch that can rejoin its primary and be promoted again; the markers
/// already cleared say what every caller checked before taking office (the node caught up, or
/// the operator forced the promotion). Stored first, a failure after it left a node that
/// promised an epoch it never led: as a standby it deposed its primary by that promise, and,
/// restarted, it was no longer known to have caught up, so neither node could lead without a
/// forced promotion.
pub fn take_office(store: &dyn EpochStore, epoch: Epoch) -> Result<(), String> {
    store.caught_up()?;
    store.set_standby_in_sync(false)?;
    store.set_acknowledges_written(false)?;
    store.store(Epochs { current: epoch, promised: epoch })
}

/// A primary started without a witness takes a new epoch for this run: one above every epoch
/// it stored or promised, stored as current and promised before the node journals anything.
/// Returns that epoch.
///
/// The standby may hold records this primary sent in an earlier run and then lost (written
/// to the map and streamed before they were synced, when its machine lost power). Same
/// sequence and epoch must mean the same record, so this run never writes in the epoch those
/// records carry: the join finds they differ and the standby drops them. They were never
/// acknowledged under `batch` durability, which syncs before any answer leaves. The markers
/// stay as they are: a primary a standby was in sync with still holds writes until it is
/// again.
///
/// A promise above the current epoch means a newer primary exists: the node keeps its current
/// epoch, so that it never claims that primary's, and is deposed when it meets it.
pub fn start_primary_run(store: &dyn EpochStore) -> Result<Epoch, String> {
    let epochs = store.epochs();
    if epochs.promised > epochs.current {
        return Ok(epochs.current);
    }
    let epoch = Epoch(epochs.current.0 + 1);
    store.store(Epochs { current: epoch, promised: epoch })?;
    assert_eq!(store.epochs().current, epoch, "the run's epoch is stored before it is used");
    Ok(epoch)
}

/// Before a node stands as a candidate for the leader key, and before a standby starts: with
/// a journal that answers before it syncs (`answers_after_sync` false), on a machine that
/// restarted since it last ran (`rebooted`: the page cache is gone), a node may have lost
/// records it acknowledged. A former primary whose standby was in sync may have answered for
/// records only that standby holds now; a standby acknowledged records once written, not
/// synced. Its directory is marked catching up, so it takes over (on the strength of an
/// in-sync record, or promoted by hand without force) only after it has caught up with a
/// primary. A kill loses nothing written, so a node that was only killed stands as before.
/// Returns why it marked, if it did.
pub fn before_candidacy(
    store: &dyn EpochStore,
    answers_after_sync: bool,
    rebooted: bool,
) -> Result<Option<&'static str>, String> {
    if answers_after_sync || !rebooted || store.catching_up() {
        return Ok(None);
    }
    let why = if store.standby_in_sync() {
        "a standby was in sync with this node as primary"
    } else if store.acknowledges_written() {
        "this node, as a standby, acknowledged records once written, before its journal synced them"
    } else {
        return Ok(None);
    };
    store.mark_catching_up()?;
    assert!(store.catching_up(), "marked catching up");
    Ok(Some(why))
}

/// The role a node plays now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sequences client commands; streams to a standby.
    Primary,
    /// Follows the primary at this address.
    Standby {
        /// The primary's replication address.
        primary: String,
    },
}

/// What `/v1/node` shows about replication.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    /// `primary` or `standby`.
    pub role: &'static str,
    /// `sync` or `async`.
    pub mode: &'static str,
    /// The policy's state (primary) or the follower's (standby).
    pub state: String,
    /// The peer's address.
    pub peer: Option<String>,
    /// Primary: the standby's durable acknowledgement; standby: what it acknowledged.
    pub acked_sequence: u64,
    /// Records the standby is behind the primary's journal.
    pub lag_records: u64,
    /// Primary: how long the oldest record sent and not yet acknowledged has waited (0 when
    /// the standby acknowledged everything sent); `None` on a standby and without one.
    pub lag_ms: Option<u64>,
    /// Primary: the acknowledgement round trip of the last heartbeat.
    pub ack_rtt_ms: Option<u64>,
    /// Connections to the peer made since start.
    pub reconnects: u64,
    /// Handshakes refused since start.
    pub refused: u64,
}

struct State {
    role: Role,
    policy: AckPolicy,
    /// Identifies the current stream, so a replaced stream's late events are ignored.
    stream: u64,
    peer: Option<String>,
    acked: Sequence,
    /// Primary: when frames were sent (last sequence, ms), oldest first, until acknowledged.
    sent: VecDeque<(Sequence, u64)>,
    ack_rtt_ms: Option<u64>,
    /// Standby: records the primary reported beyond what this node holds.
    behind: u64,
    follower_state: String,
    /// Primary: the connected standby's data directory is catching up, as its last
    /// acknowledgement said (and until its first one on a stream says otherwise).
    standby_catching_up: bool,
    /// Primary: the last acknowledgement on the current stream, what it said the standby
    /// holds durably and when it came (`Facts::standby_last_ack`).
    last_ack: Option<(Sequence, u64)>,
}

/// Sent frames remembered for the lag figure; beyond this the oldest are merged away.
const SENT_REMEMBERED_MAX: usize = 4_096;

/// A node's replication; shared by its threads.
pub struct Control {
    config: ReplicationConfig,
    link: Arc<Link>,
    epochs: Box<dyn EpochStore>,
    /// The node's clock: the policy's time and the lease deadline egress checks share it.
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    stopping: AtomicBool,
    reconnects: AtomicU64,
    refused: AtomicU64,
    /// The standby's follower thread, while following; it hands its follower back once
    /// stopped ([`crate::standby::follow`]).
    follower: Mutex<Option<JoinHandle<Option<Parked>>>>,
    /// The follower's connection, shut down to interrupt a blocked read when it must stop.
    follower_socket: Mutex<Option<TcpStream>>,
    follower_stop: Arc<AtomicBool>,
    /// Wakes the follower from its waits when it must stop.
    follower_waker: Mutex<Option<Arc<mio::Waker>>>,
    /// This control, for the threads it starts after [`Control::start`] (a follower started
    /// again after a failed promotion).
    me: std::sync::OnceLock<Weak<Control>>,
    /// Where the listener is bound, once started.
    listening: Mutex<Option<SocketAddr>>,
    /// Wakes the listener, which waits for connections without a timeout, when it must stop.
    listener_waker: Mutex<Option<mio::Waker>>,
    /// With coordination: when the primary's lease may expire, minus the margin (ms on this
    /// clock); `u64::MAX` without coordination. Past it, acknowledging on the local journal
    /// alone stops (failsafe: answers that wait for the standby continue).
    lease_deadline_ms: AtomicU64,
    /// A planned switchover holds writes until the standby has acknowledged everything.
    handover: AtomicBool,
    /// With a witness: a new leader holds writes until the witness's record names it as
    /// primary ([`Control::set_taking_office`]).
    taking_office: AtomicBool,
    /// Standby: it has held everything its primary reported since it last joined (the
    /// stream's lag reached 0). Cleared when a stream starts.
    in_sync: AtomicBool,
    /// Primary: restarted after a standby was in sync, with a journal that answers before it
    /// syncs, and no standby in sync since: records that standby holds past this journal may
    /// have been acknowledged, and a join is refused rather than told to drop them.
    standby_tail_acknowledged: AtomicBool,
    /// The node's journal, synced before the in-sync marker goes ([`Control::use_journal`]).
    journal: std::sync::OnceLock<Promoter>,
    /// With a witness: whether its in-sync record names this primary's standby
    /// ([`Control::witness_recorded`]). `None` without a witness.
    witness_names_standby: Mutex<Option<bool>>,
    /// Without coordination: restarts this standby once its follower stopped where only a
    /// start can take it on ([`Control::rejoin_with`]).
    rejoin: std::sync::OnceLock<Rejoin>,
    /// The rejoin was asked for (once).
    rejoining: AtomicBool,
    /// No rejoin before this time (ms on the node's clock): restarts in a row back off.
    rejoin_not_before_ms: AtomicU64,
    /// The node is stopping ([`Control::hold_rejoin`]): it restarts for nothing.
    rejoin_held: AtomicBool,
    /// Held by a promotion, and by the control loop while it restarts the node to rejoin:
    /// one or the other, never both.
    office: Mutex<()>,
}

/// Restarts the node, with the reason; a node that rejoins its primary at start.
pub type Rejoin = Box<dyn Fn(&str) + Send + Sync>;

impl Control {
    /// Replication for a node in `role` whose journal ends at `last`, a record of `last_epoch`,
    /// on `clock`: the node's own clock, since egress checks the lease deadline set here
    /// against it.
    pub fn new(
        config: ReplicationConfig,
        role: Role,
        (last, last_epoch): (Sequence, Epoch),
        epochs: Box<dyn EpochStore>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Control> {
        // A primary whose standby was in sync holds writes until it is again: the standby may
        // have been promoted while this node was down.
        let restarted = role == Role::Primary && epochs.standby_in_sync();
        let answers_after_sync = config.answers_after_sync;
        let policy = if restarted {
            AckPolicy::restarted_in_sync(config.mode, config.timeout_ms, config.catch_up_slack)
        } else {
            AckPolicy::new(config.mode, config.timeout_ms, config.catch_up_slack)
        };
        let state = State {
            role,
            policy,
            stream: 0,
            peer: None,
            acked: Sequence(0),
            sent: VecDeque::new(),
            ack_rtt_ms: None,
            behind: 0,
            follower_state: "connecting".into(),
            standby_catching_up: true,
            last_ack: None,
        };
        let control = Arc::new(Control {
            config,
            link: Link::new(last, last_epoch),
            epochs,
            clock,
            state: Mutex::new(state),
            stopping: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            follower: Mutex::new(None),
            follower_socket: Mutex::new(None),
            follower_stop: Arc::new(AtomicBool::new(false)),
            follower_waker: Mutex::new(None),
            me: std::sync::OnceLock::new(),
            listening: Mutex::new(None),
            listener_waker: Mutex::new(None),
            lease_deadline_ms: AtomicU64::new(u64::MAX),
            handover: AtomicBool::new(false),
            taking_office: AtomicBool::new(false),
            in_sync: AtomicBool::new(false),
            standby_tail_acknowledged: AtomicBool::new(restarted && !answers_after_sync),
            journal: std::sync::OnceLock::new(),
            witness_names_standby: Mutex::new(None),
            rejoin: std::sync::OnceLock::new(),
            rejoining: AtomicBool::new(false),
            rejoin_not_before_ms: AtomicU64::new(0),
            rejoin_held: AtomicBool::new(false),
            office: Mutex::new(()),
        });
        // The gate is in force before the node takes its first write, not at the policy
        // loop's first round: a restarted primary holds from the start.
        let now = control.now_ms();
        control.apply_gate(&control.state(), now);
        control
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("replication state is never poisoned")
    }

    /// The settings.
    pub fn config(&self) -> &ReplicationConfig {
        &self.config
    }

    /// The link to the node's stages (its replicator stage comes from `link().stage()`).
    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// Milliseconds on the node's clock.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ns() / 1_000_000
    }

    /// When this primary's answers leave, for the heartbeats to its standby.
    pub fn answering(&self) -> Answering {
        self.state().policy.answering()
    }

    /// The current epoch.
    pub fn epoch(&self) -> Epoch {
        self.epochs.epochs().current
    }

    /// The epochs in force.
    pub fn epochs(&self) -> Epochs {
        self.epochs.epochs()
    }

    /// Stores epochs durably.
    pub fn store_epochs(&self, epochs: Epochs) -> Result<(), String> {
        self.epochs.store(epochs)
    }

    /// What the primary's protocol machine knows when it answers a standby's message:
    /// this cluster, the secret, the epoch, whether this node leads, and its journal.
    pub fn primary_view<'a>(
        &'a self,
        journal: &'a mut dyn crate::position::JournalIndex,
    ) -> crate::session::PrimaryView<'a> {
        crate::session::PrimaryView {
            cluster: &self.config.cluster,
            secret: &self.config.secret,
            engine: &self.config.engine,
            epoch: self.epoch(),
            is_primary: self.is_primary(),
            journal,
            journal_last: Sequence(self.link.available()),
            standby_tail_acknowledged: self.standby_tail_acknowledged.load(Ordering::Acquire),
        }
    }

    /// Where this node's epochs are kept.
    pub fn epoch_store(&self) -> &dyn EpochStore {
        &*self.epochs
    }

    /// The epoch of the journal's last record (0 when empty).
    pub fn last_record_epoch(&self) -> Epoch {
        self.link.last_epoch()
    }

    /// Whether this node is the primary (and not deposed).
    pub fn is_primary(&self) -> bool {
        self.state().role == Role::Primary && !self.link.is_deposed()
    }

    /// The role now.
    pub fn role(&self) -> Role {
        self.state().role.clone()
    }

    /// Whether the threads should stop.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub(crate) fn follower_stop(&self) -> &Arc<AtomicBool> {
        &self.follower_stop
    }

    /// Records the follower's current connection (so stopping can interrupt it).
    pub(crate) fn set_follower_socket(&self, socket: Option<TcpStream>) {
        *self.follower_socket.lock().expect("never poisoned") = socket;
    }

    /// Stops the follower: raises its flag, wakes it, interrupts its connection, joins its
    /// thread. None of its waits outlasts this: not the backoff between attempts, not a
    /// connection to a primary that does not answer. Returns the follower, to follow again,
    /// unless it had stopped on its own (its state says why) or there was none.
    ///
    /// The flag is raised under the follower's lock, which [`Control::resume_follower`]
    /// holds while it lowers it: a stop never finds a follower it cannot stop.
    fn stop_follower(&self) -> Result<Option<Parked>, String> {
        let mut follower = self.follower.lock().expect("never poisoned");
        self.follower_stop.store(true, Ordering::Release);
        if let Some(waker) = self.follower_waker.lock().expect("never poisoned").as_ref() {
            // Failing, the follower sees the flag when its socket is shut down below, or at
            // its next look (`STOP_CHECK`) or timeout.
            let _ = waker.wake();
        }
        if let Some(socket) = self.follower_socket.lock().expect("never poisoned").take() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        match follower.take() {
            Some(handle) => handle.join().map_err(|_| "the follower thread panicked".to_owned()),
            None => Ok(None),
        }
    }

    /// Starts the follower stopped by [`Control::stop_follower`] again, where it stood: the
    /// records it submitted are still its node's to journal and answer. Refused while the
    /// node stops.
    fn resume_follower(&self, parked: Parked) -> Result<(), String> {
        let Role::Standby { primary } = self.role() else {
            return Err("this node is no longer a standby".into());
        };
        let control = self.me.get().and_then(Weak::upgrade).ok_or("replication never started")?;
        let mut follower = self.follower.lock().expect("never poisoned");
        assert!(follower.is_none(), "a follower runs already");
        if self.stopping() {
            return Err("the node is stopping".into());
        }
        self.follower_stop.store(false, Ordering::Release);
        let spawned = thread::Builder::new()
            .name("rf-repl-follow".into())
            .spawn(move || crate::standby::follow(&control, &primary, parked));
        match spawned {
            Ok(handle) => *follower = Some(handle),
            Err(error) => {
                self.follower_stop.store(true, Ordering::Release);
                return Err(format!("starting the follower: {error}"));
            }
        }
        Ok(())
    }

    /// Counts and logs a refused handshake.
    pub fn count_refused(&self, reason: &str) {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        // A flood is logged, not echoed line by line: the first ten, then every thousandth.
        if refused <= 10 || refused % 1_000 == 0 {
            log(format_args!("replication: refused {reason} ({refused} refused so far)"));
        }
    }

    /// A standby started streaming; returns the stream's id.
    pub fn on_connected(&self, peer: &str) -> u64 {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let mut state = self.state();
        state.stream += 1;
        state.peer = Some(peer.to_owned());
        state.standby_catching_up = true;
        state.last_ack = None;
        // What the stream it replaces sent is no record this one waits for.
        state.sent.clear();
        state.policy.on_connected(now);
        self.apply_gate(&state, now);
        state.stream
    }

    /// The standby acknowledged.
    pub fn on_ack(&self, stream: u64, ack: &Ack) {
        let Ack { durable, echo_ms, .. } = *ack;
        let now = self.now_ms();
        let mut state = self.state();
        if state.stream != stream {
            return;
        }
        let marker_due_before = self.in_sync_marker_due(&state);
        state.standby_catching_up = ack.catching_up;
        state.last_ack = Some((durable, now));
        self.link.acknowledged(durable);
        state.acked = durable.max(state.acked);
        while state.sent.front().is_some_and(|&(through, _)| through <= durable) {
            state.sent.pop_front();
        }
        if echo_ms > 0 {
            state.ack_rtt_ms = Some(now.saturating_sub(echo_ms));
        }
        let journaled = Sequence(self.link.available());
        let was = state.policy.state();
        let awaited_since = state.sent.front().map(|&(_, at)| at);
        state.policy.on_ack(durable, journaled, now, awaited_since);
        if state.policy.state() == PolicyState::InSync && was != PolicyState::InSync {
            // The standby holds nothing this journal lacks: it streamed from this journal.
            self.standby_tail_acknowledged.store(false, Ordering::Release);
        }
        if self.in_sync_marker_due(&state) && !marker_due_before {
            self.note_in_sync(true);
        }
        self.apply_gate(&state, now);
        // With a witness, a standby whose directory is catching up cannot take over, and the
        // gate above no longer lets answers rest on its copy. A marker left from when it
        // counted (it came back truncated, or after its machine restarted, while the record
        // still names it) goes once this journal is synced: kept, this primary, restarted
        // after a power loss, would wait for a standby that waits too. Checked only while the
        // standby says so, which is rare: the check reads the disk.
        let stale_marker = ack.catching_up && self.witness_names_standby().is_some();
        drop(state);
        if stale_marker && self.epochs.standby_in_sync() {
            log(format_args!(
                "replication: the standby's data directory is catching up, so its copy does \
                 not count until it has caught up: syncing the journal, then removing the \
                 in-sync marker"
            ));
            self.forget_standby_in_sync();
        }
    }

    /// With a witness: whether its in-sync record names this primary's standby, as this
    /// node's coordination last read or wrote it. `None` without a witness.
    fn witness_names_standby(&self) -> Option<bool> {
        *self.witness_names_standby.lock().expect("never poisoned")
    }

    /// Whether the in-sync marker is due: the policy is in sync in `sync` mode, and the
    /// standby may take over on the strength of it. Without a witness at once: the standby
    /// is promoted by hand, and one that caught up may be before this primary hears that its
    /// directory did (a directory still catching up needs force). With a witness only once its
    /// record names the standby (`witness_recorded`) and the standby's directory has caught
    /// up: until then a power loss here must leave a node that may lead alone. Under `async`
    /// never: answers do not wait for the standby, and the witness's record names nobody this
    /// node must wait for after a restart.
    fn in_sync_marker_due(&self, state: &State) -> bool {
        if state.policy.state() != PolicyState::InSync || state.policy.mode() != AckMode::Sync {
            return false;
        }
        match self.witness_names_standby() {
            None => true,
            Some(named) => named && !state.standby_catching_up,
        }
    }

    /// Whether the standby's copy counts as holding what the pair acknowledges, as far as its
    /// directory and the witness go (the policy says whether answers wait for it at all). It
    /// does not while the standby's directory is catching up: that directory's marker keeps
    /// the standby from taking over (without force), so a copy only it held could be reached
    /// by nobody. Nor while a witness leads this pair and its in-sync record does not name the
    /// standby: after this primary's death the witness would not let the standby take over.
    /// Answers that wait for such a standby wait for this node's journal too.
    fn standby_copy_counts(&self, state: &State) -> bool {
        !state.standby_catching_up && self.witness_names_standby() != Some(false)
    }

    /// The witness's in-sync record, as this node's coordination last read or wrote it:
    /// whether it names a standby of this primary. Once it does, a standby in sync counts as
    /// holding what the pair acknowledges (the in-sync marker is written, and answers under
    /// `none` stop waiting for this journal's sync); until then they keep waiting for it.
    pub fn witness_recorded(&self, standby_named: bool) {
        let now = self.now_ms();
        let state = self.state();
        *self.witness_names_standby.lock().expect("never poisoned") = Some(standby_named);
        if standby_named && state.role == Role::Primary && self.in_sync_marker_due(&state) {
            self.note_in_sync(true);
        }
        self.apply_gate(&state, now);
    }

    /// The node whose journal this control syncs before it forgets that a standby was in
    /// sync (`Control::start` takes it from the node it starts with; a simulated node is given
    /// it).
    pub fn use_journal(&self, journal: Promoter) {
        let _ = self.journal.set(journal);
    }

    /// This primary no longer counts on a standby (it goes on alone, or the operator chose
    /// `async`): the in-sync marker goes. On a journal that answers before it syncs, what the
    /// pair acknowledged rested on the standby's copy and this node's page cache; it is synced
    /// first, so a power loss after the marker is gone loses nothing acknowledged. If it
    /// cannot be synced, the marker stays (the node, restarted after a power loss, then
    /// catches up before it takes over).
    fn forget_standby_in_sync(&self) {
        if let Err(error) = self.sync_before_alone() {
            log(format_args!(
                "replication: syncing the journal before going on without the standby: {error}; \
                 the in-sync marker stays"
            ));
            return;
        }
        self.note_in_sync(false);
    }

    /// Before this primary stops counting on its standby: on a journal that answers before it
    /// syncs, syncs every record it journaled, so what the pair acknowledged no longer rests
    /// on the standby's copy. Coordination calls it before it records "alone" or `async` in
    /// the witness too, so that a power loss after the record cannot take records the
    /// witness's record says this node holds.
    pub fn sync_before_alone(&self) -> Result<(), String> {
        if self.config.answers_after_sync {
            return Ok(());
        }
        let journal = self.journal.get().ok_or("the journal is not attached")?;
        journal.sync_journal(SYNC_BEFORE_OFFICE).map(|_| ()).map_err(|e| e.to_string())
    }

    /// Records durably whether a standby is in sync with this primary (see
    /// `journal::datadir::IN_SYNC_FILE`). A failure is logged and replication goes on: the
    /// disk that refuses this small file is failing the journal too.
    fn note_in_sync(&self, on: bool) {
        if let Err(error) = self.epochs.set_standby_in_sync(on) {
            log(format_args!("replication: recording whether a standby is in sync: {error}"));
        }
    }

    /// The standby's stream ended, `why` as the log says it (with the state it leaves this
    /// primary in, when it was the current stream).
    pub fn on_disconnected(&self, stream: u64, why: &str) {
        let now = self.now_ms();
        let mut state = self.state();
        if state.stream != stream {
            // A stream another one replaced: its end changes nothing.
            log(format_args!("replication: {why}"));
            return;
        }
        state.policy.on_disconnected(now);
        state.last_ack = None;
        state.sent.clear();
        state.ack_rtt_ms = None;
        self.apply_gate(&state, now);
        log(format_args!("replication: {why}; now {}", state.policy.state().name()));
    }

    /// A newer primary exists: refuse writes for good.
    pub fn depose(&self, newer: Epoch, by: &str) {
        if !self.link.is_deposed() {
            log(format_args!(
                "replication: {by} has promised epoch {newer}, above ours ({}): a newer primary \
                 exists; this node refuses writes from now on (restart it as a standby of the \
                 new primary)",
                self.epoch()
            ));
        }
        self.link.depose();
    }

    fn apply_gate(&self, state: &State, now_ms: u64) {
        if state.role != Role::Primary {
            self.link.set_answers_alone(false);
            self.link.set_gate(Gate::Local);
            self.link.set_lease_deadline(u64::MAX);
            return;
        }
        if self.link.is_deposed() {
            // Held for good (`Link::depose`): no policy's gate makes another answer safe.
            return;
        }
        let (gate, why) = self.gate_now(state, now_ms);
        if gate != self.link.gate() {
            // A hold and its end are warnings, so that a log filtered to them shows both.
            let held = gate == Gate::Held || self.link.gate() == Gate::Held;
            let say = if held { warn } else { log };
            let now = match gate {
                Gate::Local if !self.config.answers_after_sync => {
                    "answers now wait for the local journal only, synced"
                }
                Gate::Local => "answers now wait for the local journal only",
                Gate::Standby => "answers now wait for the standby's acknowledgement",
                Gate::Held => why,
            };
            say(format_args!(
                "replication: {} ({} mode): {now}",
                state.policy.state().name(),
                state.policy.mode().name(),
            ));
        }
        // A journal that answers before it syncs relies on the standby's copy: answering alone,
        // or waiting for a standby whose copy does not count yet, it syncs first. Set before
        // the gate, which may make answers safe at once.
        let alone =
            gate == Gate::Local || (gate == Gate::Standby && !self.standby_copy_counts(state));
        self.link.set_answers_alone(alone && !self.config.answers_after_sync);
        self.link.set_gate(gate);
        // Egress enforces the deadline itself at each release, so a primary that was paused
        // past it acknowledges nothing on resuming, before this thread runs again. Only while
        // answers wait for nothing but the local journal: one waiting for the in-sync standby
        // stays safe past it (the standby stops acknowledging once promoted).
        let deadline_ms = self.lease_deadline_ms.load(Ordering::Acquire);
        let deadline_ns = if gate == Gate::Local && deadline_ms != u64::MAX {
            deadline_ms.saturating_mul(1_000_000)
        } else {
            u64::MAX
        };
        self.link.set_lease_deadline(deadline_ns);
    }

    /// The policy's gate, closed further by coordination: a planned switchover holds writes,
    /// and past the lease deadline a primary acknowledging on its own journal stops (one whose
    /// answers wait for the in-sync standby continues: that standby stops acknowledging once
    /// it is promoted, so nothing acknowledged can be lost).
    fn gate_now(&self, state: &State, now_ms: u64) -> (Gate, &'static str) {
        let gate = state.policy.gate(now_ms);
        if self.taking_office.load(Ordering::Acquire) {
            return (Gate::Held, "writes are held until the witness records this primary");
        }
        if self.handover.load(Ordering::Acquire) {
            return (Gate::Held, "writes are held while the standby takes over");
        }
        if gate == Gate::Local && now_ms >= self.lease_deadline_ms.load(Ordering::Acquire) {
            return (Gate::Held, "writes are held: the lease could not be renewed in time");
        }
        (gate, "writes are refused until the standby is back")
    }

    /// Coordination renewed the lease: the primary may acknowledge alone until `deadline_ms`.
    pub fn set_lease_deadline(&self, deadline_ms: u64) {
        self.lease_deadline_ms.store(deadline_ms, Ordering::Release);
        let now = self.now_ms();
        let state = self.state();
        self.apply_gate(&state, now);
    }

    /// The lease deadline in force (`u64::MAX` without coordination).
    pub fn lease_deadline_ms(&self) -> u64 {
        self.lease_deadline_ms.load(Ordering::Acquire)
    }

    /// Coordination took the leader key for this node and has not yet recorded it as primary
    /// in the witness (`true`), or has (`false`). Until it has, the record still names the
    /// nodes that held every acknowledged write before, one of which may lead next if this
    /// node dies, so this node acknowledges nothing: its writes are held.
    pub fn set_taking_office(&self, taking: bool) {
        self.taking_office.store(taking, Ordering::Release);
        let now = self.now_ms();
        let state = self.state();
        self.apply_gate(&state, now);
    }

    /// Holds writes for a planned switchover (or releases them).
    pub fn set_handover(&self, held: bool) {
        self.handover.store(held, Ordering::Release);
        let now = self.now_ms();
        let state = self.state();
        self.apply_gate(&state, now);
    }

    /// Coordination recorded that this primary is alone: a lost standby no longer holds writes.
    pub fn continue_alone(&self) {
        let now = self.now_ms();
        let mut state = self.state();
        let alone = state.policy.go_alone();
        self.apply_gate(&state, now);
        // The journal syncs once the state's lock is released: acknowledgements and the policy
        // loop go on meanwhile.
        drop(state);
        if alone {
            self.forget_standby_in_sync();
            log(format_args!(
                "replication: recorded in the witness that this primary is alone: it \
                 acknowledges on its own journal until a standby catches up"
            ));
        }
    }

    /// How far a sender streams a journal that ends at `available`: all of it, but once the
    /// journal failed only what comes before its fence. Nothing from the fence on was
    /// acknowledged, and a write that failed may have left it unreadable; the stream goes on
    /// with heartbeats, so a standby in sync stays in sync and can take over
    /// (`Pilot::failed_view`).
    #[must_use]
    pub fn stream_end(&self, available: u64) -> u64 {
        self.before_fence().map_or(available, |last| available.min(last.0))
    }

    /// Once the journal failed, the record before its fence: the last it flushed, and the
    /// last this node may have acknowledged.
    fn before_fence(&self) -> Option<Sequence> {
        let fence = self.journal.get().and_then(Promoter::journal_fence)?;
        Some(Sequence(fence.0.saturating_sub(1)))
    }

    /// What coordination needs to know now: role, policy, gate, positions.
    pub fn facts(&self) -> Facts {
        let state = self.state();
        let epochs = self.epochs();
        let primary = state.role == Role::Primary;
        let held = if primary { state.acked } else { Sequence(self.link.available()) };
        Facts {
            primary,
            policy: state.policy.state(),
            mode: state.policy.mode(),
            gate: self.link.gate(),
            acked: held,
            standby_last_ack: if primary { state.last_ack } else { None },
            available: Sequence(self.link.available()),
            must_restart: if primary {
                None
            } else if let Some(why) = rejoins_at_start(&state.follower_state) {
                Some(why)
            } else if state.follower_state == PROMOTION_FAILED {
                Some("a promotion failed part way and left this standby no longer following")
            } else {
                None
            },
            epoch_floor: epochs.current.0.max(epochs.promised.0),
            catching_up: self.epochs.catching_up(),
            standby_catching_up: primary && state.standby_catching_up,
            journal_failed: self.before_fence(),
        }
    }

    /// The operator switches the acknowledgement mode.
    pub fn set_mode(&self, mode: AckMode) {
        let now = self.now_ms();
        let mut state = self.state();
        log(format_args!(
            "replication: the operator switched from {} to {} mode",
            state.policy.mode().name(),
            mode.name()
        ));
        state.policy.set_mode(mode);
        self.apply_gate(&state, now);
        drop(state);
        if mode == AckMode::Async {
            // The operator lets this primary acknowledge alone: after a restart too.
            self.forget_standby_in_sync();
        }
    }

    /// The primary sent records up to `through` on stream `stream` (for the lag figure).
    pub fn on_sent(&self, stream: u64, through: Sequence) {
        let now = self.now_ms();
        let mut state = self.state();
        if state.stream != stream {
            return;
        }
        if state.sent.len() == SENT_REMEMBERED_MAX {
            // The oldest entry stays: the lag is measured from it.
            state.sent.remove(1);
        }
        state.sent.push_back((through, now));
    }

    /// The standby holds everything its primary reported journaled: a directory that was
    /// catching up (created or truncated) holds every acknowledged write again.
    pub fn caught_up(&self) {
        self.in_sync.store(true, Ordering::Release);
        if !self.epochs.catching_up() {
            return;
        }
        match self.epochs.caught_up() {
            Ok(()) => log(format_args!(
                "replication: caught up with the primary; this node may take over again"
            )),
            Err(error) => log(format_args!("replication: removing the catch-up marker: {error}")),
        }
    }

    /// A primary behind this standby (it lost records the standby holds, and may have
    /// answered for them) answered its join: `holds` whether this standby holds the primary's
    /// whole journal. If so, it holds every record the primary acknowledged and may be
    /// promoted by hand, as if it had caught up; if not, it may not. The catch-up marker of a
    /// directory created or truncated stays: the primary cannot vouch for records only this
    /// directory was to hold.
    pub fn holds_primary_journal(&self, holds: bool) {
        assert!(matches!(self.role(), Role::Standby { .. }), "a primary answered a primary");
        self.in_sync.store(holds, Ordering::Release);
    }

    /// The standby follower's progress, for the figures: its state, what it holds, and how
    /// many records the primary reported beyond that.
    pub fn set_follower(&self, what: &str, held: Sequence, behind: u64) {
        let mut state = self.state();
        state.follower_state = what.to_owned();
        state.acked = held;
        state.behind = behind;
    }

    /// The figures for `/v1/node`.
    pub fn figures(&self) -> Figures {
        let state = self.state();
        let available = self.link.available();
        let (role, status, peer) = match &state.role {
            Role::Primary => {
                let name =
                    if self.link.is_deposed() { "deposed" } else { state.policy.state().name() };
                ("primary", name.to_owned(), state.peer.clone())
            }
            Role::Standby { primary } => {
                ("standby", state.follower_state.clone(), Some(primary.clone()))
            }
        };
        let primary = role == "primary";
        // A primary measures its lag against the standby it streams or last streamed to; with
        // none since it became primary there is no standby to be behind (and `acked` is 0).
        let lag_records = match (primary, &state.peer) {
            (true, Some(_)) => available.saturating_sub(state.acked.0),
            (true, None) => 0,
            (false, _) => state.behind,
        };
        let oldest = state.sent.front().map(|&(_, at)| self.now_ms().saturating_sub(at));
        let lag_ms = (primary && state.peer.is_some()).then(|| oldest.unwrap_or(0));
        Figures {
            role,
            mode: state.policy.mode().name(),
            state: status,
            peer,
            acked_sequence: state.acked.0,
            lag_records,
            lag_ms,
            ack_rtt_ms: state.ack_rtt_ms,
            reconnects: self.reconnects.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// Starts the listener and the policy loop (both roles), and for a standby the follower
    /// feeding `node` (through a session of its own, opened here).
    pub fn start(self: &Arc<Control>, node: &Node) -> std::io::Result<()> {
        self.start_resolving_with(node, crate::standby::resolve)
    }

    /// [`Control::start`], the follower looking up the primary's address with `resolver`.
    pub(crate) fn start_resolving_with(
        self: &Arc<Control>,
        node: &Node,
        resolver: crate::standby::Resolver,
    ) -> std::io::Result<()> {
        self.use_journal(node.promoter());
        let _ = self.me.set(Arc::downgrade(self));
        let listener = TcpListener::bind(self.config.listen)?;
        let bound = listener.local_addr()?;
        *self.listening.lock().expect("never poisoned") = Some(bound);
        log(format_args!("replication listening on {bound}"));
        let control = Arc::clone(self);
        thread::Builder::new().name("rf-repl-listen".into()).spawn(move || {
            if let Err(error) = crate::primary::listen(Arc::clone(&control), listener) {
                log(format_args!("replication: the listener stopped: {error}"));
            }
        })?;
        let control = Arc::clone(self);
        let period = Duration::from_millis(self.config.timeout_ms / 100)
            .clamp(POLICY_TICK_MIN, POLICY_TICK_MAX);
        thread::Builder::new().name("rf-repl-control".into()).spawn(move || {
            while !control.stopping() {
                thread::sleep(period);
                control.tick();
            }
        })?;
        if let Role::Standby { primary } = self.role() {
            let follower = crate::standby::Follower::open(node, resolver)?;
            *self.follower_waker.lock().expect("never poisoned") = Some(follower.waker());
            let control = Arc::clone(self);
            let parked = Parked::new(self, follower);
            let handle = thread::Builder::new()
                .name("rf-repl-follow".into())
                .spawn(move || crate::standby::follow(&control, &primary, parked))?;
            *self.follower.lock().expect("never poisoned") = Some(handle);
        }
        Ok(())
    }

    /// Promotes this standby: stops following, raises the epoch durably above every epoch it
    /// has seen or promised, switches the node to sequencing, and starts as a primary that is
    /// alone until a standby catches up. Returns the new epoch.
    ///
    /// Without `force`, only a standby that holds everything its primary acknowledged is
    /// promoted: one that caught up with its primary since it last joined, with a directory
    /// that was not created or truncated since. `force` accepts losing what it lacks.
    ///
    /// The epoch jumps by [`PROMOTION_EPOCH_STEP`], forced or not: the primary this node
    /// lost track of may have restarted meanwhile, and each run of a primary without a
    /// witness takes the next epoch. In `sync` such a run holds writes until its standby is
    /// back, but the operator's `async` lets it acknowledge alone; two histories under one
    /// epoch would look alike to the next join. Above every epoch that primary took, this
    /// node's history wins when the old primary rejoins it: its records after the fork are
    /// dropped, which only `async` (or `force`) acknowledged.
    pub fn promote(&self, node: &Node, force: bool) -> Result<Epoch, String> {
        if !force {
            self.check_promotable()?;
        }
        let epochs = self.epochs();
        let highest = epochs.current.0.max(epochs.promised.0);
        let Some(epoch) = highest.checked_add(PROMOTION_EPOCH_STEP) else {
            return Err(format!(
                "this node promised epoch {highest}, within {PROMOTION_EPOCH_STEP} of the \
                 largest there is: it cannot take a higher one"
            ));
        };
        self.promote_to(&node.promoter(), Epoch(epoch))
    }

    /// Why this standby may lack acknowledged writes, if it may.
    fn check_promotable(&self) -> Result<(), String> {
        if self.epochs.catching_up() {
            return Err("this node's data directory was created or truncated, or its machine \
                        restarted while its journal acknowledged before syncing, since it last \
                        caught up with a primary, so it may lack acknowledged writes: let it \
                        catch up as a standby, or promote with force to accept the loss"
                .into());
        }
        if !self.in_sync.load(Ordering::Acquire) {
            return Err("this standby has not caught up with its primary since it last joined \
                        it, so it may lack acknowledged writes (and the epoch its primary took): \
                        let it catch up, or promote with force to accept the loss"
                .into());
        }
        Ok(())
    }

    /// A stream from the primary starts: until it has caught up, this standby may lack what
    /// the primary acknowledged alone (a primary that restarted is alone until its standby
    /// catches up).
    pub fn stream_started(&self) {
        self.in_sync.store(false, Ordering::Release);
    }

    /// The primary said it answers on its journal alone, in the middle of a stream (switched
    /// from `async` back to `sync` while this standby was behind): what this standby held
    /// before no longer makes it a copy of everything acknowledged, until it catches up.
    pub fn primary_answers_alone(&self) {
        assert!(matches!(self.role(), Role::Standby { .. }), "a primary heard a primary");
        self.in_sync.store(false, Ordering::Release);
    }

    /// Promotes this standby into `epoch`, which must be above every epoch it has seen or
    /// promised (coordination chose it above every epoch the witness recorded, too).
    ///
    /// Everything the standby journaled is synced first, whatever the durability policy
    /// ([`Promoter::sync_journal`]), so a power loss after it took office loses none of what
    /// it acknowledged.
    ///
    /// A failure after the follower stopped leaves a standby of the old epoch that follows
    /// again, as if it had lost its connection (`Control::after_failed_promotion`); one
    /// that cannot says so in its state, and that it must be restarted.
    pub fn promote_to(&self, node: &Promoter, epoch: Epoch) -> Result<Epoch, String> {
        // Never while the control loop restarts this node to rejoin its primary: the new
        // process would be a standby that promised an epoch it never led.
        let _office = self.office.lock().expect("never poisoned");
        if self.rejoining.load(Ordering::Acquire) {
            return Err("this standby is restarting to rejoin its primary".into());
        }
        if !matches!(self.role(), Role::Standby { .. }) {
            return Err("this node is already the primary".into());
        }
        let epochs = self.epochs();
        if epoch.0 <= epochs.current.0.max(epochs.promised.0) {
            return Err(format!("epoch {epoch} is not above this node's epochs {epochs:?}"));
        }
        let parked = self.stop_follower().inspect_err(|error| {
            self.stopped_for_good(&format!("stopping the follower to promote it: {error}"));
        })?;
        // Taken once the follower stopped: until then it may raise the promise itself.
        let before = (self.epochs(), self.epochs.catching_up());
        let floor = before.0.current.max(before.0.promised);
        if epoch <= floor {
            // Its primary told the follower of a newer epoch as it stopped: taking office in
            // `epoch` would break that promise, and maybe share an epoch with that primary.
            let error = format!("the follower promised epoch {floor} meanwhile, not below {epoch}");
            let after = self.after_failed_promotion(parked, before, &error);
            return Err(format!("{error}; {after}"));
        }
        if let Err(error) = self.enter_office(node, epoch) {
            let after = self.after_failed_promotion(parked, before, &error);
            return Err(format!("{error}; {after}"));
        }
        self.become_primary(node, epoch);
        Ok(epoch)
    }

    /// The steps of a promotion that may fail, with the follower stopped: the journal synced,
    /// the epoch stored (the commit point, [`take_office`]), the node sequencing.
    fn enter_office(&self, node: &Promoter, epoch: Epoch) -> Result<(), String> {
        // Under `none` this standby acknowledged records written, not synced: they are made
        // durable before the epoch that makes this node their keeper.
        node.sync_journal(SYNC_BEFORE_OFFICE).map_err(|e| e.to_string())?;
        take_office(&*self.epochs, epoch)?;
        node.promote(epoch).map_err(|e| e.to_string())
    }

    /// A promotion failed after the follower stopped (`parked`: the follower, unless it had
    /// stopped on its own), from `before` (the epochs, and whether the directory was catching
    /// up). Returns what became of the standby, for the operator.
    ///
    /// Before the epoch is stored the node promised nothing new and its intake still takes
    /// records (`Node::promote` comes last), so it follows again from where it stood. A
    /// forced promotion's cleared catch-up marker is put back first: the directory may still
    /// lack acknowledged writes. Once the epoch is stored (only `Node::promote` failed: the
    /// node failed or is stopping), joining with that promise would depose the primary over
    /// an epoch this node never led, so it stays stopped, and says so.
    fn after_failed_promotion(
        &self,
        parked: Option<Parked>,
        (epochs, catching_up): (Epochs, bool),
        error: &str,
    ) -> String {
        if self.epochs() != epochs {
            let stored = self.epochs();
            return self.stopped_for_good(&format!(
                "the promotion failed after storing epochs {stored:?} ({error})"
            ));
        }
        if catching_up && !self.epochs.catching_up() {
            if let Err(marking) = self.epochs.mark_catching_up() {
                log(format_args!("replication: marking the directory catching up: {marking}"));
            }
        }
        let Some(parked) = parked else {
            return "the follower had stopped before: see this standby's state".into();
        };
        match self.resume_follower(parked) {
            Ok(()) => {
                log(format_args!(
                    "replication: the promotion failed ({error}); following the primary again"
                ));
                "this standby follows its primary again".into()
            }
            Err(why) => self.stopped_for_good(&format!("following again after it failed: {why}")),
        }
    }

    /// The follower cannot run again in this process (`why`): the state says so, the metric
    /// no longer counts the standby in sync, and coordination restarts the node. Returns what
    /// became of the standby.
    fn stopped_for_good(&self, why: &str) -> String {
        log(format_args!(
            "replication: {why}; this standby no longer follows its primary: restart it"
        ));
        self.state().follower_state = PROMOTION_FAILED.to_owned();
        assert!(self.facts().must_restart.is_some(), "a stopped standby asks for a restart");
        "this standby no longer follows its primary: restart it".into()
    }

    /// The promotion succeeded: this node is a primary, alone until a standby catches up.
    fn become_primary(&self, node: &Promoter, epoch: Epoch) {
        assert_eq!(self.epochs().current, epoch, "the epoch was stored first");
        let now = self.now_ms();
        let mut state = self.state();
        state.role = Role::Primary;
        state.policy =
            AckPolicy::new(state.policy.mode(), self.config.timeout_ms, self.config.catch_up_slack);
        state.peer = None;
        state.acked = Sequence(0);
        self.apply_gate(&state, now);
        log(format_args!(
            "replication: promoted to primary in epoch {epoch} at sequence {}; alone until a \
             standby catches up",
            self.link.available()
        ));
        let shift_ms = node.time_shift_ms();
        if shift_ms.unsigned_abs() >= CLOCK_WARNING_MS {
            log(format_args!(
                "replication: this machine's clock is {} ms {} the time line taken over from the \
                 old primary; commands are stamped on that time line, so payment deadlines and \
                 request-key windows keep their length. Check both machines' clocks (NTP)",
                shift_ms.unsigned_abs(),
                if shift_ms < 0 { "ahead of" } else { "behind" }
            ));
        }
    }

    /// Lets the policy see the time pass (a standby silent past the timeout is lost) and
    /// applies its gate: the policy loop's round, called every few milliseconds.
    pub fn tick(&self) {
        let now = self.now_ms();
        let rejoin = {
            let mut state = self.state();
            // The oldest record sent to the standby that it has not acknowledged.
            let awaited_since = state.sent.front().map(|&(_, at)| at);
            state.policy.on_tick(now, awaited_since);
            self.apply_gate(&state, now);
            self.rejoin_reason(&state, now)
        };
        if rejoin.is_some() {
            self.try_rejoin(now);
        }
    }

    /// Why this standby restarts to rejoin its primary now, if it does: only without
    /// coordination, as a standby whose follower stopped where a start takes it on, past its
    /// back-off, not stopping, not already restarting.
    fn rejoin_reason(&self, state: &State, now_ms: u64) -> Option<&'static str> {
        let why =
            rejoins_at_start(&state.follower_state).filter(|_| state.role != Role::Primary)?;
        let due = now_ms >= self.rejoin_not_before_ms.load(Ordering::Acquire);
        let held =
            self.rejoin_held.load(Ordering::Acquire) || self.rejoining.load(Ordering::Acquire);
        (self.rejoin.get().is_some() && due && !held).then_some(why)
    }

    /// Restarts the node to rejoin, unless a promotion holds the office (the next round tries
    /// again, and finds a primary, or a standby that follows again) or the reason went.
    fn try_rejoin(&self, now_ms: u64) {
        let Ok(_office) = self.office.try_lock() else { return };
        // Checked again with the office held: a promotion may have ended meanwhile.
        let Some(why) = self.rejoin_reason(&self.state(), now_ms) else { return };
        if self.rejoining.swap(true, Ordering::AcqRel) {
            return;
        }
        let restart = self.rejoin.get().expect("a reason only with a rejoin");
        // Called with the office held: no promotion starts while the node restarts.
        restart(why);
    }

    /// Without coordination (whose pilot restarts the node itself): `restart` is called, once,
    /// when the standby's follower stops where the start of a standby takes it on: its journal
    /// diverged from the primary's (a start drops the tail, kept in `rollback/`), or the records
    /// it lacks were retired (a start fetches the primary's snapshot), and not within `hold`
    /// of now (restarts in a row back off). A failed promotion is left to the operator: its new
    /// epoch may be promised past the primary's. A promotion and the restart exclude each
    /// other: a promotion asked while the node restarts is refused.
    pub fn rejoin_with(&self, restart: Rejoin, hold: Duration) {
        assert!(matches!(self.role(), Role::Standby { .. }), "a primary rejoins nothing");
        assert!(self.rejoin.set(restart).is_ok(), "a second rejoin for one standby");
        let hold_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX);
        self.rejoin_not_before_ms.store(self.now_ms().saturating_add(hold_ms), Ordering::Release);
    }

    /// The node is stopping: it no longer restarts itself to rejoin (the stop wins).
    pub fn hold_rejoin(&self) {
        self.rejoin_held.store(true, Ordering::Release);
    }

    /// Where standbys connect (the bound address, also when configured with port 0), once
    /// started.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        *self.listening.lock().expect("never poisoned")
    }

    /// Installs the waker [`Control::stop`] uses to interrupt the listener's wait. The listener
    /// checks [`Control::stopping`] after this, so a stop before it is not missed.
    pub(crate) fn set_listener_waker(&self, waker: mio::Waker) {
        *self.listener_waker.lock().expect("never poisoned") = Some(waker);
    }

    /// Stops every replication thread (the node is shutting down).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        if let Some(waker) = self.listener_waker.lock().expect("never poisoned").as_ref() {
            // Failing, the listener sees the flag at its next wake-up (at most a second).
            let _ = waker.wake();
        }
        self.link.notify();
        let _ = self.stop_follower();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use ringfence_journal::writer::Durability;

    use super::*;
    use crate::auth::{ClusterId, ClusterSecret};

    /// Epochs and the catch-up marker in memory; storing epochs fails as the test says
    /// ([`StoreFault`]).
    pub(crate) struct Memory(Mutex<Epochs>, AtomicBool, Arc<Mutex<StoreFault>>);

    /// How storing epochs in a [`Memory`] fails.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum StoreFault {
        /// It does not.
        None,
        /// Refused, nothing stored.
        Refused,
        /// Stored, then reported as failed (a disk that failed after the write).
        StoredThenFailed,
    }

    impl EpochStore for Memory {
        fn epochs(&self) -> Epochs {
            *self.0.lock().unwrap()
        }
        fn store(&self, epochs: Epochs) -> Result<(), String> {
            let fault = *self.2.lock().unwrap();
            if fault != StoreFault::Refused {
                *self.0.lock().unwrap() = epochs;
            }
            match fault {
                StoreFault::None => Ok(()),
                _ => Err(format!("storing epochs {epochs:?}: {fault:?}")),
            }
        }
        fn catching_up(&self) -> bool {
            self.1.load(Ordering::Acquire)
        }
        fn caught_up(&self) -> Result<(), String> {
            self.1.store(false, Ordering::Release);
            Ok(())
        }
        fn mark_catching_up(&self) -> Result<(), String> {
            self.1.store(true, Ordering::Release);
            Ok(())
        }
        fn standby_in_sync(&self) -> bool {
            false
        }
        fn set_standby_in_sync(&self, _on: bool) -> Result<(), String> {
            Ok(())
        }
        fn acknowledges_written(&self) -> bool {
            false
        }
        fn set_acknowledges_written(&self, _on: bool) -> Result<(), String> {
            Ok(())
        }
    }

    pub(crate) fn memory(catching_up: bool) -> Box<Memory> {
        let epochs = Epochs { current: Epoch(1), promised: Epoch(1) };
        let fault = Arc::new(Mutex::new(StoreFault::None));
        Box::new(Memory(Mutex::new(epochs), AtomicBool::new(catching_up), fault))
    }

    pub(crate) fn config() -> ReplicationConfig {
        let secret = ClusterSecret::from_bytes(&[7; 32]).unwrap();
        ReplicationConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            ClusterId::new("c").unwrap(),
            secret,
            ringfence_core::EngineConfig::small(),
            std::env::temp_dir(),
        )
    }

    /// A standby's control and its node, a stepped replica.
    pub(crate) fn standby(catching_up: bool) -> (Arc<Control>, Node) {
        standby_at(catching_up, (Sequence(0), Epoch(0)))
    }

    /// A standby's control, its journal ending at `end`, and its node.
    fn standby_at(catching_up: bool, end: (Sequence, Epoch)) -> (Arc<Control>, Node) {
        use ringfence_core::pipeline::{
            Intake, MemoryJournal, NoReplicator, NodeConfig, SystemClock, Topology,
        };
        let role = Role::Standby { primary: "p".into() };
        let clock = Arc::new(SystemClock::new());
        let control = Control::new(config(), role, end, memory(catching_up), clock);
        let node_config =
            NodeConfig { intake: Intake::Replica, ..NodeConfig::for_tests(Topology::Stepped) };
        let node = Node::start(node_config, MemoryJournal::new(), NoReplicator::default()).unwrap();
        (control, node)
    }

    #[test]
    fn a_standby_is_promoted_by_hand_only_once_it_caught_up_with_its_primary() {
        // Goal: a standby that has not held everything its primary reported since it last
        // joined may lack acknowledged writes (and its primary's epoch): `promote` refuses it
        // and says how to proceed; caught up, it is promoted. So does one whose primary said,
        // mid-stream, that it answers alone again.
        let (control, node) = standby(false);
        let refused = control.promote(&node, false).unwrap_err();
        assert!(refused.contains("has not caught up"), "{refused}");
        control.stream_started();
        control.caught_up();
        control.stream_started();
        assert!(control.promote(&node, false).is_err(), "a new stream starts behind again");
        control.caught_up();
        // Caught up under `async`, then its primary switched back to `sync` while it was
        // behind, answering alone until it catches up: not promotable meanwhile.
        control.primary_answers_alone();
        let refused = control.promote(&node, false).unwrap_err();
        assert!(refused.contains("has not caught up"), "{refused}");
        control.caught_up();
        // Past the epochs its primary may have taken in runs it never heard of.
        assert_eq!(control.promote(&node, false), Ok(Epoch(1 + PROMOTION_EPOCH_STEP)));
        assert!(control.is_primary());
    }

    #[test]
    fn a_follower_that_cannot_go_on_tells_coordination_to_restart_it() {
        // Goal: the follower states that only a restart clears reach the pilot's facts, each
        // with its reason; any other state, and a primary, ask for nothing.
        let (control, _node) = standby(false);
        control.set_follower("streaming", Sequence(0), 0);
        assert_eq!(control.facts().must_restart, None);
        control.set_follower(NEEDS_SNAPSHOT, Sequence(0), 0);
        let why = control.facts().must_restart.expect("a standby behind retention restarts");
        assert!(why.contains("retired"), "{why}");
        control.set_follower(DIVERGED, Sequence(0), 0);
        let why = control.facts().must_restart.expect("a diverged standby restarts");
        assert!(why.contains("diverged"), "{why}");
        assert_eq!(primary().facts().must_restart, None);
    }

    #[test]
    fn without_coordination_a_standby_that_must_rejoin_restarts_itself_once() {
        // Goal: the control loop restarts a standby whose follower stopped diverged or behind
        // retention, once, with the reason; any other state, a failed promotion included,
        // restarts nothing.
        let (control, _node) = standby(false);
        let asked = Arc::new(Mutex::new(Vec::<String>::new()));
        let record = Arc::clone(&asked);
        let restart = Box::new(move |why: &str| record.lock().unwrap().push(why.to_owned()));
        control.rejoin_with(restart, Duration::ZERO);
        for state in ["connecting", "streaming", PROMOTION_FAILED, "journal failed: restart"] {
            control.set_follower(state, Sequence(0), 0);
            control.tick();
        }
        assert!(asked.lock().unwrap().is_empty(), "{:?}", asked.lock().unwrap());
        control.set_follower(NEEDS_SNAPSHOT, Sequence(0), 0);
        control.tick();
        control.set_follower(DIVERGED, Sequence(0), 0);
        control.tick();
        control.tick();
        let asked = asked.lock().unwrap();
        assert_eq!(asked.len(), 1, "{asked:?}");
        assert!(asked[0].contains("retired"), "{asked:?}");
    }

    #[test]
    fn a_standby_restarts_to_rejoin_not_within_its_hold_nor_once_stopping_nor_while_promoted() {
        // Goal: restarts in a row back off (none within the hold from the run's start), a
        // stop wins over a restart that comes during it, and a promotion asked once the
        // restart was asked is refused.
        let counting = |control: &Control, hold: Duration| {
            let asked = Arc::new(AtomicU64::new(0));
            let count = Arc::clone(&asked);
            let restart = Box::new(move |_: &str| {
                count.fetch_add(1, Ordering::Relaxed);
            });
            control.rejoin_with(restart, hold);
            control.set_follower(DIVERGED, Sequence(0), 0);
            asked
        };
        let (held, _node) = standby(false);
        let asked = counting(&held, Duration::from_secs(3_600));
        held.tick();
        assert_eq!(asked.load(Ordering::Relaxed), 0, "restarted within its hold");
        let (stopping, _node) = standby(false);
        let asked = counting(&stopping, Duration::ZERO);
        stopping.hold_rejoin();
        stopping.tick();
        assert_eq!(asked.load(Ordering::Relaxed), 0, "restarted while stopping");
        let (restarting, node) = standby(false);
        let asked = counting(&restarting, Duration::ZERO);
        restarting.tick();
        assert_eq!(asked.load(Ordering::Relaxed), 1);
        let refused = restarting.promote(&node, true).unwrap_err();
        assert!(refused.contains("restarting to rejoin"), "{refused}");
        assert!(!restarting.is_primary());
    }

    /// A [`Memory`] whose promise rises to `raise` on the `at`-th read of its epochs, as a
    /// follower's store would when its primary tells it of a newer epoch.
    struct RaisedOnRead(Memory, AtomicU64, u64, Epoch);

    impl EpochStore for RaisedOnRead {
        fn epochs(&self) -> Epochs {
            if self.1.fetch_add(1, Ordering::Relaxed) + 1 == self.2 {
                self.0.0.lock().unwrap().promised = self.3;
            }
            self.0.epochs()
        }
        fn store(&self, epochs: Epochs) -> Result<(), String> {
            self.0.store(epochs)
        }
        fn catching_up(&self) -> bool {
            self.0.catching_up()
        }
        fn caught_up(&self) -> Result<(), String> {
            self.0.caught_up()
        }
        fn mark_catching_up(&self) -> Result<(), String> {
            self.0.mark_catching_up()
        }
        fn standby_in_sync(&self) -> bool {
            self.0.standby_in_sync()
        }
        fn set_standby_in_sync(&self, on: bool) -> Result<(), String> {
            self.0.set_standby_in_sync(on)
        }
        fn acknowledges_written(&self) -> bool {
            self.0.acknowledges_written()
        }
        fn set_acknowledges_written(&self, on: bool) -> Result<(), String> {
            self.0.set_acknowledges_written(on)
        }
    }

    #[test]
    fn a_promise_raised_as_the_follower_stops_refuses_the_promotion_that_would_break_it() {
        // Goal: `promote` chooses its epoch from the promise before it stops the follower,
        // which may raise the promise meanwhile (its primary leads a newer epoch): the node
        // must not take office in an epoch at or below what it promised, nor lower the
        // promise. The third read of the epochs is the one after the follower stopped.
        use ringfence_core::pipeline::{
            Intake, MemoryJournal, NoReplicator, NodeConfig, SystemClock, Topology,
        };
        let raised = Epoch(1 + PROMOTION_EPOCH_STEP);
        let memory = Memory(
            Mutex::new(Epochs { current: Epoch(1), promised: Epoch(1) }),
            AtomicBool::new(false),
            Arc::new(Mutex::new(StoreFault::None)),
        );
        let store = RaisedOnRead(memory, AtomicU64::new(0), 3, raised);
        let role = Role::Standby { primary: "p".into() };
        let clock = Arc::new(SystemClock::new());
        let end = (Sequence(0), Epoch(0));
        let control = Control::new(config(), role, end, Box::new(store), clock);
        let node_config =
            NodeConfig { intake: Intake::Replica, ..NodeConfig::for_tests(Topology::Stepped) };
        let node = Node::start(node_config, MemoryJournal::new(), NoReplicator::default()).unwrap();
        let refused = control.promote(&node, true).unwrap_err();
        assert!(refused.contains("promised epoch"), "{refused}");
        assert!(!control.is_primary());
        assert_eq!(control.epochs().promised, raised, "the promise stands");
    }

    #[test]
    fn a_truncated_standby_is_refused_and_a_forced_promotion_jumps_the_epoch() {
        // Goal: a directory that may lack acknowledged writes is refused even in sync; force
        // promotes it anyway, far enough above its epochs that it cannot reuse one a lost
        // primary took.
        let (control, node) = standby(true);
        control.stream_started();
        control.in_sync.store(true, Ordering::Release);
        let refused = control.promote(&node, false).unwrap_err();
        assert!(refused.contains("truncated"), "{refused}");
        assert_eq!(control.promote(&node, true), Ok(Epoch(1 + PROMOTION_EPOCH_STEP)));
        assert!(!control.epochs.catching_up(), "the new primary's journal is the reference");
    }

    #[test]
    fn a_standby_that_promised_the_largest_epoch_is_refused_its_promotion_not_overflowed() {
        // Goal: an epoch file that holds an epoch within a promotion's step of the largest
        // (damaged, or written so) makes a promotion fail with a reason, not overflow.
        let (control, node) = standby(false);
        control.stream_started();
        control.caught_up();
        crate::standby::promise_epoch(control.epoch_store(), Epoch(u64::MAX - 10)).unwrap();
        let refused = control.promote(&node, true).unwrap_err();
        assert!(refused.contains("cannot take a higher one"), "{refused}");
        assert_eq!(control.epochs().promised, Epoch(u64::MAX - 10), "nothing stored");
    }

    #[test]
    fn a_standby_holding_the_whole_journal_of_a_primary_behind_it_may_be_promoted_by_hand() {
        // Goal: a primary that lost records its standby holds (and may have answered for them)
        // tells the standby where its journal ends. A standby that restarted since it last
        // caught up, holding that last record, holds every record the primary acknowledged:
        // `promote` takes it without force, above the primary's epoch. One whose record there
        // differs, or whose directory is catching up, is still refused.
        use ringfence_core::{Command, Sequenced, Timestamp};
        let disk = ringfence_journal::fault::FaultStorage::new();
        let options = ringfence_journal::writer::WriterOptions {
            segment_len: ringfence_journal::format::SEGMENT_LEN_MIN,
            durability: Durability::Batch,
            engine_config: ringfence_core::EngineConfig::small(),
        };
        let mut writer = ringfence_journal::recovery::recover_from(disk.clone(), options)
            .expect("a new directory")
            .writer;
        // Records 1..=13: the standby's journal; 1..=10 in epoch 1, the rest in epoch 2.
        for sequence in 1..=13 {
            let epoch = Epoch(if sequence <= 10 { 1 } else { 2 });
            if sequence == 11 {
                let dir = writer.data_dir().clone();
                EpochStore::store(&dir, Epochs { current: epoch, promised: epoch }).unwrap();
            }
            let tick = Sequenced {
                sequence: Sequence(sequence),
                timestamp: Timestamp(1_000 + sequence),
                command: Command::Tick,
            };
            writer.append_command(epoch, &tick).unwrap();
        }
        writer.sync_now().unwrap();
        let behind = |last_sequence: u64, last_epoch: u64| crate::message::Behind {
            epoch: Epoch(3),
            last_sequence: Sequence(last_sequence),
            last_epoch: Epoch(last_epoch),
        };
        let end = (Sequence(13), Epoch(2));
        let cases = [
            // (primary's last record, its epoch, catching up, promotable by hand)
            (10, 1, false, true),
            (12, 2, false, true),
            (0, 0, false, true),
            (10, 2, false, false),
            (12, 1, false, false),
            (10, 1, true, false),
        ];
        for (last, last_epoch, catching_up, promotable) in cases {
            let (control, node) = standby_at(catching_up, end);
            let said = crate::standby::on_behind(
                &control,
                Ok(disk.clone()),
                behind(last, last_epoch),
                "p",
            );
            let case = format!("last {last} in epoch {last_epoch}, catching up {catching_up}");
            assert_eq!(said.contains("promote the standby"), promotable, "{case}: {said}");
            assert_eq!(control.epochs().promised, Epoch(3), "{case}: the primary's epoch");
            if promotable {
                let promoted = Ok(Epoch(3 + PROMOTION_EPOCH_STEP));
                assert_eq!(control.promote(&node, false), promoted, "{case}");
            } else {
                assert!(control.promote(&node, false).is_err(), "{case}: promoted");
                assert!(said.contains("promote --force"), "{case}: {said}");
            }
        }
        // A later answer that says otherwise takes it back.
        let (control, node) = standby_at(false, end);
        let said = crate::standby::on_behind(&control, Ok(disk.clone()), behind(10, 1), "p");
        assert!(said.contains("promote the standby"), "{said}");
        control.holds_primary_journal(false);
        assert!(control.promote(&node, false).is_err(), "promoted on an answer taken back");
        // A journal rebuilt after a snapshot no longer holds record `last`: the first record
        // it holds after it is compared instead.
        use crate::position::EpochList;
        use crate::standby::record_to_compare;
        let mut rebuilt = EpochList { first: 101, epochs: vec![2; 49] };
        assert_eq!(record_to_compare(&mut rebuilt, Sequence(19)), (Sequence(101), Some(Epoch(2))));
        let mut whole = EpochList::flat(149, 2);
        assert_eq!(record_to_compare(&mut whole, Sequence(19)), (Sequence(19), Some(Epoch(2))));
        // A journal rebuilt after a snapshot, nothing taken since: the snapshot's last record
        // is compared, if it is at or after `last` and the snapshot recorded its epoch.
        let mut rebuilt = SnapshotOnly(Some((Sequence(250), Epoch(2))));
        assert_eq!(record_to_compare(&mut rebuilt, Sequence(72)), (Sequence(250), Some(Epoch(2))));
        let mut before = SnapshotOnly(Some((Sequence(50), Epoch(2))));
        assert_eq!(record_to_compare(&mut before, Sequence(72)), (Sequence(72), None));
        let mut unrecorded = SnapshotOnly(None);
        assert_eq!(record_to_compare(&mut unrecorded, Sequence(72)), (Sequence(72), None));
    }

    /// A journal that holds no record, over a snapshot through a sequence with a known epoch.
    struct SnapshotOnly(Option<(Sequence, Epoch)>);

    impl crate::position::JournalIndex for SnapshotOnly {
        fn first(&mut self) -> Option<Sequence> {
            None
        }
        fn last(&mut self) -> Option<Sequence> {
            None
        }
        fn epoch_at(&mut self, _: Sequence) -> Option<Epoch> {
            None
        }
        fn last_at_or_below_epoch(&mut self, _: Epoch) -> Option<Sequence> {
            None
        }
        fn snapshot_point(&mut self) -> Option<(Sequence, Epoch)> {
            self.0
        }
    }

    #[test]
    fn a_primary_forgets_its_in_sync_standby_only_after_syncing_its_journal() {
        // Goal: switching to `async` (as going on alone does) on a journal that answers before
        // it syncs removes the in-sync marker only once the journal has synced what the pair
        // acknowledged. With no journal to sync the marker stays, so a power loss after
        // cannot let this node lead without the records only its standby held.
        use ringfence_core::pipeline::{MemoryJournal, NoReplicator, NodeConfig, Topology};
        let (_, dir) = fault_dir(Durability::None);
        take_office(&dir, Epoch(2)).unwrap();
        dir.set_standby_in_sync(true).unwrap();
        let settings = ReplicationConfig { answers_after_sync: false, ..config() };
        let clock = Arc::new(ringfence_core::pipeline::SystemClock::new());
        let store = Box::new(dir.clone());
        let control = Control::new(settings, Role::Primary, (Sequence(0), Epoch(2)), store, clock);
        assert!(control.sync_before_alone().is_err(), "synced a journal it was never given");
        control.set_mode(AckMode::Async);
        assert!(dir.standby_in_sync(), "the standby forgotten with nothing synced");
        let config = NodeConfig::for_tests(Topology::Stepped);
        let node = Node::start(config, MemoryJournal::new(), NoReplicator::default()).unwrap();
        control.use_journal(node.promoter());
        assert_eq!(control.sync_before_alone(), Ok(()));
        control.set_mode(AckMode::Sync);
        control.set_mode(AckMode::Async);
        assert!(!dir.standby_in_sync(), "the marker stayed after the journal synced");
    }

    /// A journal that answers before it syncs: a flush makes nothing synced; a synced flush
    /// syncs everything appended, and says how far in `synced`.
    struct AnswersFirst {
        appended: Sequence,
        synced: Arc<AtomicU64>,
    }

    impl ringfence_core::pipeline::Journal for AnswersFirst {
        const NEEDS_BYTES: bool = false;
        fn append(
            &mut self,
            record: &ringfence_core::pipeline::Framed<'_>,
        ) -> Result<(), ringfence_core::pipeline::StageError> {
            self.appended = record.sequenced.sequence;
            Ok(())
        }
        fn flush(
            &mut self,
            _clock: &dyn Clock,
        ) -> Result<Sequence, ringfence_core::pipeline::StageError> {
            Ok(self.appended)
        }
        fn flush_synced(
            &mut self,
            _clock: &dyn Clock,
        ) -> Result<Sequence, ringfence_core::pipeline::StageError> {
            self.synced.store(self.appended.0, Ordering::Release);
            Ok(self.appended)
        }
    }

    #[test]
    fn before_it_stops_counting_on_its_standby_a_primary_syncs_what_it_journaled() {
        // Goal: on a journal that answers before it syncs, what the pair acknowledged rested on
        // the standby's copy and this node's page cache. Before the witness records this
        // primary alone or `async`, and before its in-sync marker goes, `sync_before_alone`
        // syncs every record it journaled, so a power loss after cannot take them.
        use ringfence_core::pipeline::{NoReplicator, NodeConfig, Topology};
        let settings = ReplicationConfig { answers_after_sync: false, ..config() };
        let clock = Arc::new(ringfence_core::pipeline::SystemClock::new());
        let control =
            Control::new(settings, Role::Primary, (Sequence(0), Epoch(0)), memory(false), clock);
        let synced = Arc::new(AtomicU64::new(0));
        let journal = AnswersFirst { appended: Sequence(0), synced: Arc::clone(&synced) };
        let config = NodeConfig::for_tests(Topology::Stepped);
        let node = Node::start(config, journal, NoReplicator::default()).unwrap();
        control.use_journal(node.promoter());
        assert_eq!(reserve(&node, 1..=3), [true; 3]);
        assert_eq!(synced.load(Ordering::Acquire), 0, "a flush synced");
        assert_eq!(control.sync_before_alone(), Ok(()));
        assert_eq!(synced.load(Ordering::Acquire), 3, "the records journaled are not all synced");
    }

    /// A new data directory over an in-memory fault-injecting disk.
    fn fault_dir(
        durability: ringfence_journal::writer::Durability,
    ) -> (ringfence_journal::fault::FaultStorage, DataDir<ringfence_journal::fault::FaultStorage>)
    {
        let disk = ringfence_journal::fault::FaultStorage::new();
        let options = ringfence_journal::writer::WriterOptions {
            segment_len: ringfence_journal::format::SEGMENT_LEN_MIN,
            durability,
            engine_config: ringfence_core::EngineConfig::small(),
        };
        let recovered = ringfence_journal::recovery::recover_from(disk.clone(), options);
        let dir = recovered.expect("a new directory").writer.data_dir().clone();
        (disk, dir)
    }

    #[test]
    fn a_node_that_cannot_store_its_epoch_stays_in_the_old_one() {
        // Goal: storing the epoch is the commit point of taking office. When the disk fails
        // any step (the new directory's catch-up marker, or the epoch file), the node has
        // promised nothing new, so it cannot depose its primary by an epoch it never led; it
        // takes office once the disk works again.
        use ringfence_journal::fault::Failure;
        for (file, failure) in [("catch-up", Failure::Io), ("epoch", Failure::NoSpace)] {
            let (disk, dir) = fault_dir(Durability::Batch);
            assert!(dir.catching_up(), "a new directory is catching up");
            let before = dir.epochs();
            let next = Epoch(before.current.0 + 1);
            disk.fail_matching_with(file, failure);
            let failed = take_office(&dir, next).unwrap_err();
            assert!(failed.contains(file), "{failed}");
            assert_eq!(dir.epochs(), before, "failing {file}: an epoch stored");
            let restarted = disk.process_crash();
            assert_eq!(restarted.read_file("epoch").ok(), disk.read_file("epoch").ok());
            disk.clear_faults();
            take_office(&dir, next).unwrap();
            assert_eq!(dir.epochs(), Epochs { current: next, promised: next });
            assert!(!dir.catching_up() && !dir.standby_in_sync(), "the markers of a primary");
        }
    }

    #[test]
    fn every_run_of_a_primary_stores_its_own_epoch_before_it_journals() {
        // Goal: each run takes `current + 1` as both epochs, the data directory's markers
        // untouched (a primary whose standby was in sync still holds on the next run), and a
        // node that promised a newer primary's epoch never takes that epoch for itself.
        let (disk, dir) = fault_dir(Durability::Batch);
        take_office(&dir, Epoch(4)).unwrap();
        dir.set_standby_in_sync(true).unwrap();
        for run in 5..=6 {
            assert_eq!(start_primary_run(&dir), Ok(Epoch(run)));
            let stored = Epochs::decode(&disk.process_crash().read_file("epoch").unwrap());
            assert_eq!(stored, Ok(Epochs { current: Epoch(run), promised: Epoch(run) }));
            assert!(dir.standby_in_sync(), "run {run}: the in-sync marker was dropped");
        }
        dir.store_epochs(Epochs { current: Epoch(6), promised: Epoch(9) }).unwrap();
        assert_eq!(start_primary_run(&dir), Ok(Epoch(6)), "took a newer primary's epoch");
        assert_eq!(dir.epochs().promised, Epoch(9));
    }

    #[test]
    fn a_primary_that_answered_before_syncing_stands_for_the_key_only_once_caught_up() {
        // Goal: a former primary whose standby was in sync is marked catching up before its
        // candidacy, durably, only when its journal answers before it syncs and its machine
        // rebooted since it last ran; so the pilot lets the standby, which holds what a power
        // loss may have taken, take over first. A kill keeps it eligible.
        let (disk, dir) = fault_dir(Durability::None);
        take_office(&dir, Epoch(2)).unwrap();
        assert_eq!(before_candidacy(&dir, false, true), Ok(None), "no standby was in sync");
        dir.set_standby_in_sync(true).unwrap();
        let batch = before_candidacy(&dir, true, true);
        assert_eq!(batch, Ok(None), "batch: nothing acknowledged lost");
        assert_eq!(before_candidacy(&dir, false, false), Ok(None), "killed: nothing lost");
        assert!(!dir.catching_up());
        let marked = before_candidacy(&dir, false, true).unwrap();
        assert!(marked.is_some_and(|why| why.contains("in sync")), "{marked:?}");
        assert!(dir.catching_up());
        assert!(disk.process_crash().read_file(ringfence_journal::datadir::CATCH_UP_FILE).is_ok());
        assert_eq!(before_candidacy(&dir, false, true), Ok(None), "marked once");
        // The boot the directory was last used in: a restart in the same boot is no reboot.
        assert!(dir.note_boot("boot-1").unwrap(), "never recorded");
        assert!(!dir.note_boot("boot-1").unwrap(), "the same boot");
        assert_eq!(disk.power_loss(None).read_file("boot").unwrap().as_slice(), b"boot-1");
        assert!(dir.note_boot("boot-2").unwrap(), "another boot");
    }

    #[test]
    fn a_standby_that_acknowledged_written_records_is_unfit_to_take_over_after_a_power_loss() {
        // Goal: a standby whose journal answers before it syncs records durably, before the
        // first record of a stream, that it acknowledges records once written. After its
        // machine restarted it may lack records it acknowledged: its directory is marked
        // catching up, so it is promoted (by hand without force, or by the in-sync record)
        // only once it caught up again. A kill, `batch`, or a node that took office since
        // keep it as it was.
        let (disk, dir) = fault_dir(Durability::None);
        let store: Box<dyn EpochStore> = Box::new(dir.clone());
        take_office(&dir, Epoch(1)).unwrap();
        let mut settings = config();
        settings.answers_after_sync = false;
        let role = Role::Standby { primary: "p".into() };
        let clock = Arc::new(ringfence_core::pipeline::SystemClock::new());
        let control = Control::new(settings, role, (Sequence(0), Epoch(0)), store, clock);
        let applied = crate::standby::Applied::at(crate::standby::JournalEnd {
            last_sequence: Sequence(0),
            last_epoch: Epoch(0),
        });
        assert!(!dir.acknowledges_written());
        crate::standby::promise(&control, &applied, (Epoch(2), Sequence(1))).unwrap();
        let restarted = disk.power_loss(None);
        let marker = ringfence_journal::datadir::ACKS_WRITTEN_FILE;
        assert!(restarted.read_file(marker).is_ok(), "the marker is durable before the stream");
        assert_eq!(before_candidacy(&dir, false, false), Ok(None), "killed: nothing lost");
        assert_eq!(before_candidacy(&dir, true, true), Ok(None), "batch: it acknowledged synced");
        let marked = before_candidacy(&dir, false, true).unwrap();
        assert!(marked.is_some_and(|why| why.contains("as a standby")), "{marked:?}");
        assert!(dir.catching_up());
        let refused = control.check_promotable();
        assert!(refused.is_err_and(|e| e.contains("truncated")), "promotable by hand");
        take_office(&dir, Epoch(3)).unwrap();
        assert!(!dir.acknowledges_written() && !dir.catching_up(), "the markers of a primary");
        assert_eq!(before_candidacy(&dir, false, true), Ok(None), "a primary's reboot");
        // A standby whose journal syncs before it acknowledges never writes the marker.
        let (_, synced) = fault_dir(Durability::Batch);
        let role = Role::Standby { primary: "p".into() };
        let clock = Arc::new(ringfence_core::pipeline::SystemClock::new());
        let store: Box<dyn EpochStore> = Box::new(synced.clone());
        let control = Control::new(config(), role, (Sequence(0), Epoch(0)), store, clock);
        crate::standby::promise(&control, &applied, (Epoch(2), Sequence(1))).unwrap();
        assert!(!synced.acknowledges_written());
    }

    #[test]
    fn a_primary_restarted_after_its_standby_was_in_sync_holds_from_the_start() {
        // Goal: the hold of a restarted primary is in the link's gate as soon as its control
        // exists, before any policy round: not a window of writes acknowledged alone.
        struct InSync;
        impl EpochStore for InSync {
            fn epochs(&self) -> Epochs {
                Epochs { current: Epoch(1), promised: Epoch(1) }
            }
            fn store(&self, _: Epochs) -> Result<(), String> {
                Ok(())
            }
            fn catching_up(&self) -> bool {
                false
            }
            fn caught_up(&self) -> Result<(), String> {
                Ok(())
            }
            fn mark_catching_up(&self) -> Result<(), String> {
                Ok(())
            }
            fn standby_in_sync(&self) -> bool {
                true
            }
            fn set_standby_in_sync(&self, _: bool) -> Result<(), String> {
                Ok(())
            }
            fn acknowledges_written(&self) -> bool {
                false
            }
            fn set_acknowledges_written(&self, _: bool) -> Result<(), String> {
                Ok(())
            }
        }
        let clock = Arc::new(ringfence_core::pipeline::SystemClock::new());
        let end = (Sequence(9), Epoch(1));
        let control = Control::new(config(), Role::Primary, end, Box::new(InSync), clock);
        assert_eq!(control.link().gate(), Gate::Held);
        assert_eq!(primary().link().gate(), Gate::Local, "without the marker: alone");
        // A standby's records past this journal were never acknowledged under `batch`; they
        // may have been when the journal answers before it syncs.
        let mut index = crate::position::EpochList::default();
        assert!(!control.primary_view(&mut index).standby_tail_acknowledged);
        let answering_first = ReplicationConfig { answers_after_sync: false, ..config() };
        let clock = Arc::new(ringfence_core::pipeline::SystemClock::new());
        let unsynced =
            Control::new(answering_first.clone(), Role::Primary, end, Box::new(InSync), clock);
        assert!(unsynced.primary_view(&mut index).standby_tail_acknowledged);
        let clock = Arc::new(ringfence_core::pipeline::SystemClock::new());
        let first_run = Control::new(answering_first, Role::Primary, end, memory(false), clock);
        assert!(!first_run.primary_view(&mut index).standby_tail_acknowledged, "no marker");
    }

    fn primary() -> Arc<Control> {
        Control::new(
            config(),
            Role::Primary,
            (Sequence(0), Epoch(0)),
            memory(false),
            Arc::new(ringfence_core::pipeline::SystemClock::new()),
        )
    }

    #[test]
    fn a_lone_primary_whose_journal_answers_first_makes_its_answers_wait_for_a_sync() {
        // Goal: a primary answering on its own journal, when that journal answers before it
        // syncs, marks the hold "answering alone" before the gate makes anything safe, and
        // notes how far it made answers safe; a standby, a primary that waits for its standby
        // or is held, and any primary whose journal syncs first, do not.
        use ringfence_core::pipeline::Replicator as _;
        let answering_first = ReplicationConfig { answers_after_sync: false, ..config() };
        let start = |config: &ReplicationConfig, role: Role| {
            let clock = Arc::new(ringfence_core::pipeline::SystemClock::new());
            let end = (Sequence(9), Epoch(1));
            let control = Control::new(config.clone(), role, end, memory(false), clock);
            let hold = control.link().stage().hold().expect("the link holds");
            (control, hold)
        };
        let (control, hold) = start(&answering_first, Role::Primary);
        assert_eq!(control.link().gate(), Gate::Local);
        assert!(hold.answers_alone());
        assert_eq!(hold.alone_through(), Sequence(9), "made safe at once, noted first");
        control.set_lease_deadline(0);
        assert_eq!(control.link().gate(), Gate::Held);
        assert!(!hold.answers_alone(), "held: nothing answers alone");
        assert_eq!(hold.alone_through(), Sequence(9), "what was made safe still waits");
        let (_, hold) = start(&config(), Role::Primary);
        assert!(!hold.answers_alone(), "a journal that syncs first");
        assert_eq!(hold.alone_through(), Sequence(0));
        let standby = Role::Standby { primary: "a".into() };
        let (_, hold) = start(&answering_first, standby);
        assert!(!hold.answers_alone(), "a standby answers no write");
        assert_eq!(hold.alone_through(), Sequence(0));
    }

    /// A primary through sequence 9 of epoch 1, on a new directory whose journal answers
    /// before it syncs (durability `none`), without a witness or a standby yet.
    fn unsynced_primary() -> (DataDir<ringfence_journal::fault::FaultStorage>, Arc<Control>) {
        let (_, dir) = fault_dir(Durability::None);
        let answering_first = ReplicationConfig { answers_after_sync: false, ..config() };
        let clock = Arc::new(ringfence_core::pipeline::SystemClock::new());
        let end = (Sequence(9), Epoch(1));
        let control =
            Control::new(answering_first, Role::Primary, end, Box::new(dir.clone()), clock);
        (dir, control)
    }

    #[test]
    fn a_primary_with_no_standby_yet_reports_no_lag() {
        // Goal: a primary that has had no standby (started so, or just promoted) reports no
        // lag, not its whole journal as if a standby held none of it; once a standby streams,
        // the lag is what it has not acknowledged.
        let clock = Arc::new(ringfence_core::pipeline::SystemClock::new());
        let end = (Sequence(9), Epoch(1));
        let control = Control::new(config(), Role::Primary, end, memory(false), clock);
        assert_eq!((control.figures().lag_records, control.figures().peer), (0, None));
        let stream = control.on_connected("b");
        control.on_ack(stream, &ack(4, true));
        assert_eq!(control.figures().lag_records, 5, "records 5..=9 not acknowledged");
        control.on_ack(stream, &ack(9, false));
        assert_eq!(control.figures().lag_records, 0);
    }

    #[test]
    fn a_standby_acknowledging_the_same_record_at_every_heartbeat_is_lost_after_the_timeout() {
        // Goal: the record sent to the standby and left unacknowledged is what the policy's
        // tick weighs: a standby that answers every heartbeat with the same acknowledgement
        // (its journal stopped moving) is lost once that record has waited the replication
        // timeout, and writes are held, as for a silent one.
        let clock =
            Arc::new(ringfence_core::pipeline::ManualClock::new(ringfence_core::Timestamp(1)));
        let settings = config();
        let timeout = settings.timeout_ms;
        let end = (Sequence(9), Epoch(1));
        let control = Control::new(settings, Role::Primary, end, memory(false), clock.clone());
        let stream = control.on_connected("b");
        control.on_ack(stream, &ack(9, false));
        assert_eq!(control.link().gate(), Gate::Standby, "in sync");
        control.on_sent(stream, Sequence(10));
        let step = timeout / 10;
        for _ in 0..9 {
            clock.advance_ms(step);
            control.on_ack(stream, &ack(9, false));
            control.tick();
            assert_eq!(control.figures().state, "in_sync", "within the timeout");
        }
        clock.advance_ms(step);
        control.on_ack(stream, &ack(9, false));
        control.tick();
        assert_eq!(control.figures().state, "standby_lost");
        assert_eq!(control.link().gate(), Gate::Held, "writes held");
        // The same acknowledgement again is no catching up, within the slack as it is.
        clock.advance_ms(step);
        control.on_ack(stream, &ack(9, false));
        assert_eq!(control.figures().state, "standby_lost", "no flapping back to in sync");
        assert_eq!(control.link().gate(), Gate::Held);
        control.on_ack(stream, &ack(10, false));
        assert_eq!(control.link().gate(), Gate::Standby, "back in sync once it acknowledged 10");
    }

    #[test]
    fn a_standby_counts_for_answers_only_once_the_witness_names_it() {
        // Goal: with a witness, under `none`, a standby that caught up does not yet hold what
        // the pair acknowledges: were this primary to lose power, the witness, whose record
        // names no standby, would not let the standby take over. Answers that wait for it keep
        // waiting for this journal's sync too, and the in-sync marker is written only once the
        // record names it; then answers rest on the standby's copy.
        use ringfence_core::pipeline::Replicator as _;
        let (dir, control) = unsynced_primary();
        let hold = control.link().stage().hold().expect("the link holds");
        control.witness_recorded(false);
        let stream = control.on_connected("b");
        control.on_ack(stream, &ack(9, false));
        assert_eq!(control.link().gate(), Gate::Standby, "the standby caught up");
        assert!(hold.answers_alone(), "answers rested on a standby the witness does not name");
        assert!(!dir.standby_in_sync(), "marked in sync before the witness named the standby");
        control.witness_recorded(true);
        assert!(dir.standby_in_sync(), "named, and in sync: the marker");
        assert!(!hold.answers_alone(), "named: answers rest on the standby's copy");
        assert_eq!(control.link().gate(), Gate::Standby);
        // Without a witness the standby counts as soon as it caught up.
        let (dir, control) = unsynced_primary();
        let hold = control.link().stage().hold().expect("the link holds");
        let stream = control.on_connected("b");
        control.on_ack(stream, &ack(9, false));
        assert!(dir.standby_in_sync() && !hold.answers_alone());
    }

    /// The standby's acknowledgement of everything through `through`.
    fn ack(through: u64, catching_up: bool) -> Ack {
        Ack { written: Sequence(through), durable: Sequence(through), echo_ms: 0, catching_up }
    }

    #[test]
    fn a_standby_whose_directory_is_catching_up_counts_only_once_it_says_it_caught_up() {
        // Goal: a standby whose directory is catching up holds what it acknowledged, but its
        // marker keeps it from taking over: its copy must not be the only one of an
        // acknowledged write, so answers wait for this journal's sync too until the standby's
        // acknowledgement says it caught up, with or without a witness. With one, no in-sync
        // marker may make this primary, restarted after a power loss, wait for such a standby
        // (both nodes then waited forever): the marker waits for both the record naming it
        // and that acknowledgement, whichever comes last.
        use ringfence_core::pipeline::Replicator as _;
        for witness in [None, Some(true)] {
            let (dir, control) = unsynced_primary();
            let hold = control.link().stage().hold().expect("the link holds");
            if let Some(named) = witness {
                control.witness_recorded(named);
            }
            let stream = control.on_connected("b");
            control.on_ack(stream, &ack(9, true));
            assert_eq!(control.link().gate(), Gate::Standby, "{witness:?}: answers wait for it");
            assert!(control.facts().standby_catching_up, "{witness:?}: the pilot is told");
            assert!(hold.answers_alone(), "{witness:?}: answers rested on a catching-up copy");
            // Without a witness the marker is written at once: the standby may be promoted by
            // hand as soon as it has caught up, before this primary hears that it did.
            let marked = witness.is_none();
            assert_eq!(dir.standby_in_sync(), marked, "{witness:?}: the in-sync marker");
            if witness.is_some() {
                control.witness_recorded(true);
                assert!(!dir.standby_in_sync(), "a record naming it is not enough");
            }
            control.on_ack(stream, &ack(9, false));
            assert!(!control.facts().standby_catching_up);
            assert!(dir.standby_in_sync(), "{witness:?}: caught up and in sync: the marker");
            assert!(!hold.answers_alone(), "{witness:?}: answers rest on the standby's copy");
            assert_eq!(control.facts().standby_last_ack.map(|(held, _)| held), Some(Sequence(9)));
            // A new stream starts from not knowing: the standby's directory may be new, and
            // no acknowledgement has come on it (the last one came on the stream before).
            let again = control.on_connected("b");
            assert!(control.facts().standby_catching_up, "{witness:?}: a new stream");
            assert_eq!(control.facts().standby_last_ack, None, "{witness:?}: none on it yet");
            control.on_ack(again, &ack(9, false));
            assert!(!control.facts().standby_catching_up);
            assert_eq!(control.facts().standby_last_ack.map(|(held, _)| held), Some(Sequence(9)));
        }
    }

    #[test]
    fn with_a_witness_a_standby_back_with_its_directory_catching_up_takes_the_marker_away() {
        // Goal: the record still names a standby that comes back with its directory catching
        // up (truncated, or its machine restarted). It cannot take over, and this primary's
        // marker, left from when its copy counted, would make this primary wait after a power
        // loss too: the marker goes (the journal synced first), and comes back once the
        // standby has caught up. Without a witness it stays: a promotion by hand is the
        // operator's, and the marker keeps this primary from answering alone after a restart.
        use ringfence_core::pipeline::{MemoryJournal, NoReplicator, NodeConfig, Topology};
        let come_back_catching_up = |control: &Control| {
            let stream = control.on_connected("b");
            control.on_ack(stream, &ack(9, true));
            stream
        };
        for witness in [Some(true), None] {
            let (dir, control) = unsynced_primary();
            if let Some(named) = witness {
                control.witness_recorded(named);
            }
            let stream = control.on_connected("b");
            control.on_ack(stream, &ack(9, false));
            assert!(dir.standby_in_sync(), "{witness:?}: in sync, and its copy counts");
            control.on_disconnected(stream, "standby disconnected");
            come_back_catching_up(&control);
            assert!(dir.standby_in_sync(), "{witness:?}: forgotten with no journal synced");
            let config = NodeConfig::for_tests(Topology::Stepped);
            let node = Node::start(config, MemoryJournal::new(), NoReplicator::default()).unwrap();
            control.use_journal(node.promoter());
            let again = come_back_catching_up(&control);
            let kept = witness.is_none();
            assert_eq!(dir.standby_in_sync(), kept, "{witness:?}: back catching up");
            control.on_ack(again, &ack(9, false));
            assert!(dir.standby_in_sync(), "{witness:?}: caught up again");
        }
    }

    #[test]
    fn under_async_a_standby_that_catches_up_leaves_no_in_sync_marker() {
        // Goal: the in-sync marker makes a restarted primary hold writes for its standby. Under
        // `async` answers never waited for that standby and the witness's record names nobody
        // the primary must wait for, so a standby catching up writes no marker (one written
        // there left a primary that lost power under `none` waiting to catch up from a
        // standby the record did not let lead). Back in `sync`, catching up writes it again.
        let (dir, control) = unsynced_primary();
        control.set_mode(AckMode::Async);
        control.witness_recorded(true);
        let stream = control.on_connected("b");
        control.on_ack(stream, &ack(9, false));
        assert_eq!(control.figures().state, "in_sync");
        control.witness_recorded(true);
        assert!(!dir.standby_in_sync(), "marked in sync under async");
        control.set_mode(AckMode::Sync);
        control.on_ack(stream, &ack(9, false));
        assert_eq!(control.link().gate(), Gate::Standby);
        assert!(dir.standby_in_sync(), "back in sync and caught up: the marker");
    }

    #[test]
    fn past_the_lease_deadline_a_lone_primary_holds_writes_until_renewed() {
        // Goal: a primary acknowledging on its own journal closes the gate once the lease
        // deadline passed, and opens it again when a renewal moves the deadline.
        let control = primary();
        assert_eq!(control.link().gate(), Gate::Local);
        control.set_lease_deadline(0);
        assert_eq!(control.link().gate(), Gate::Held);
        control.set_lease_deadline(u64::MAX);
        assert_eq!(control.link().gate(), Gate::Local);
    }

    #[test]
    fn a_lone_primary_hands_its_lease_deadline_to_the_hold_egress_checks() {
        // Goal: egress checks the lease deadline itself at every release, so that a primary
        // paused past it acknowledges nothing on resuming, before this thread runs again. A
        // primary answering on its own journal therefore hands the deadline to the hold egress
        // reads; once answers wait for the in-sync standby it takes it back: they stay safe
        // past it.
        use ringfence_core::pipeline::Replicator as _;
        let control = primary();
        let hold = control.link().stage().hold().expect("the link holds");
        let deadline_ms = control.now_ms() + 3_600_000;
        control.set_lease_deadline(deadline_ms);
        assert_eq!(control.link().gate(), Gate::Local);
        let at = |ms: u64| move || ms * 1_000_000;
        assert!(!hold.lease_expired(at(deadline_ms - 1)), "expired before the deadline");
        assert!(hold.lease_expired(at(deadline_ms)), "egress releases past the deadline");
        let stream = control.on_connected("standby");
        control.on_ack(stream, &ack(0, false));
        assert_eq!(control.link().gate(), Gate::Standby);
        assert!(!hold.lease_expired(at(deadline_ms)), "answers waiting for the standby held");
    }

    #[test]
    fn past_the_lease_deadline_a_primary_in_sync_keeps_waiting_for_its_standby() {
        // Goal: the failsafe rule: answers that wait for the in-sync standby go on without a
        // lease (the standby stops acknowledging once it is promoted); a switchover holds.
        let control = primary();
        let stream = control.on_connected("standby");
        control.on_ack(stream, &ack(0, false));
        assert_eq!(control.link().gate(), Gate::Standby);
        control.set_lease_deadline(0);
        assert_eq!(control.link().gate(), Gate::Standby);
        control.set_handover(true);
        assert_eq!(control.link().gate(), Gate::Held);
        assert!(control.facts().primary);
    }

    /// A journal whose appends fail from `fails_at` on, as a full disk's do.
    struct FailsAt {
        fails_at: Sequence,
        appended: Sequence,
    }

    impl ringfence_core::pipeline::Journal for FailsAt {
        const NEEDS_BYTES: bool = false;
        fn append(
            &mut self,
            record: &ringfence_core::pipeline::Framed<'_>,
        ) -> Result<(), ringfence_core::pipeline::StageError> {
            let sequence = record.sequenced.sequence;
            if sequence >= self.fails_at {
                let source = std::io::Error::other("no space left");
                let context = "starting a segment".into();
                return Err(ringfence_core::pipeline::StageError::Io { context, source });
            }
            self.appended = sequence;
            Ok(())
        }
        fn flush(
            &mut self,
            _clock: &dyn Clock,
        ) -> Result<Sequence, ringfence_core::pipeline::StageError> {
            Ok(self.appended)
        }
    }

    /// A stepped node on a journal whose appends fail from `fails_at` on.
    pub(crate) fn node_failing_at(fails_at: Sequence) -> Node {
        use ringfence_core::pipeline::{NoReplicator, NodeConfig, Topology};
        let config = NodeConfig::for_tests(Topology::Stepped);
        let journal = FailsAt { fails_at, appended: Sequence(0) };
        Node::start(config, journal, NoReplicator::default()).unwrap()
    }

    /// Submits the reservations `keys` to `node` one at a time, stepping it after each:
    /// whether each was taken.
    pub(crate) fn reserve(node: &Node, keys: std::ops::RangeInclusive<u128>) -> Vec<bool> {
        use ringfence_core::{Action, Command, RequestKey, Reserve, SkuId, UserId};
        let mut session = node.session().unwrap();
        let reserve = Reserve { user: UserId(9), sku: SkuId(3), qty: 1, coupon: None };
        let mut taken = Vec::new();
        for key in keys {
            let key = RequestKey::from_u128(key);
            let command = Command::Client { key, action: Action::Reserve(reserve) };
            taken.push(session.try_submit(command, 0).is_ok());
            node.step();
        }
        taken
    }

    #[test]
    fn once_the_journal_failed_the_stream_and_the_pilot_stop_before_its_fence() {
        // Goal: a node whose journal failed at sequence 3 streams records 1 and 2 and no
        // further, whatever the journal appended, and tells the pilot it may have acknowledged
        // through 2, as a primary and as a standby; before the failure both see the whole
        // journal.
        for control in [primary(), standby(false).0] {
            let node = node_failing_at(Sequence(3));
            control.use_journal(node.promoter());
            assert_eq!(control.stream_end(7), 7);
            assert_eq!(control.facts().journal_failed, None);
            assert_eq!(reserve(&node, 1..=3), [true; 3]);
            assert_eq!(node.promoter().journal_fence(), Some(Sequence(3)));
            assert_eq!(reserve(&node, 4..=4), [false], "writes are refused");
            assert_eq!(control.stream_end(7), 2);
            assert_eq!(control.stream_end(1), 1);
            assert_eq!(control.facts().journal_failed, Some(Sequence(2)));
        }
    }

    #[test]
    fn a_leader_taking_office_holds_writes_whatever_its_policy_allows() {
        // Goal: until the witness records it as primary, a new leader acknowledges nothing,
        // alone or with a standby in sync; once recorded, its policy's gate is back.
        use ringfence_core::pipeline::{HoldReason, Replicator as _};
        let control = primary();
        control.set_taking_office(true);
        assert_eq!(control.link().gate(), Gate::Held);
        let hold = control.link().stage().hold().expect("the link holds");
        assert_eq!(hold.reason(), Some(HoldReason::StandbyLost), "client writes are refused");
        let stream = control.on_connected("standby");
        control.on_ack(stream, &ack(0, false));
        control.tick();
        assert_eq!(control.link().gate(), Gate::Held, "a standby in sync does not open it");
        control.set_taking_office(false);
        assert_eq!(control.link().gate(), Gate::Standby);
        assert_eq!(hold.reason(), None, "released");
    }

    /// A standby of the primary at `primary` (force-promotable: it never caught up), with a
    /// handshake timeout far longer than any test waits, and its node; replication started.
    fn standby_of(primary: SocketAddr) -> (Arc<Control>, Node) {
        standby_named(&primary.to_string(), crate::standby::resolve, 3_600_000)
    }

    /// A standby following `primary` (`host:port`), looking names up with `resolver`, with
    /// the handshake timeout `handshake_timeout_ms`.
    fn standby_named(
        primary: &str,
        resolver: crate::standby::Resolver,
        handshake_timeout_ms: u64,
    ) -> (Arc<Control>, Node) {
        standby_over(memory(false), primary, resolver, handshake_timeout_ms)
    }

    /// [`standby_named`], its epochs and catch-up marker kept in `store`.
    fn standby_over(
        store: Box<Memory>,
        primary: &str,
        resolver: crate::standby::Resolver,
        handshake_timeout_ms: u64,
    ) -> (Arc<Control>, Node) {
        use ringfence_core::pipeline::{
            Intake, MemoryJournal, NoReplicator, NodeConfig, SystemClock, Topology,
        };
        let mut config = config();
        config.handshake_timeout_ms = handshake_timeout_ms;
        let role = Role::Standby { primary: primary.to_owned() };
        let end = (Sequence(0), Epoch(0));
        let control = Control::new(config, role, end, store, Arc::new(SystemClock::new()));
        let node_config =
            NodeConfig { intake: Intake::Replica, ..NodeConfig::for_tests(Topology::Stepped) };
        let node = Node::start(node_config, MemoryJournal::new(), NoReplicator::default()).unwrap();
        control.start_resolving_with(&node, resolver).unwrap();
        (control, node)
    }

    /// The standby's connection to `listener`, with a minute for its reads; panics if none
    /// arrives within a minute.
    fn accept_within_a_minute(listener: &TcpListener) -> TcpStream {
        accept_within(listener, Duration::from_secs(60))
    }

    /// The standby's connection to `listener`, with a minute for its reads; panics if none
    /// arrives `within`.
    fn accept_within(listener: &TcpListener, within: Duration) -> TcpStream {
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + within;
        let accepted = loop {
            match listener.accept() {
                Ok((accepted, _)) => break accepted,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "the standby never connected");
                    thread::sleep(Duration::from_millis(5));
                }
                Err(error) => panic!("accepting the standby: {error}"),
            }
        };
        accepted.set_nonblocking(false).unwrap();
        accepted.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        accepted
    }

    /// Whether a socket of this machine waits for `address` to answer its SYN (Linux).
    fn connecting_to(address: SocketAddr) -> bool {
        let SocketAddr::V4(v4) = address else { panic!("an IPv4 address") };
        let ip = u32::from_le_bytes(v4.ip().octets());
        let remote = format!("{ip:08X}:{:04X}", v4.port());
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        table.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // `st` 02 is SYN_SENT.
            fields.get(2) == Some(&remote.as_str()) && fields.get(3) == Some(&"02")
        })
    }

    /// Promotes `control` with force on another thread and returns its answer, or `None` if
    /// there is none within a minute: the follower's wait was not cut short.
    fn promote_within_a_minute(
        control: &Arc<Control>,
        node: Node,
    ) -> Option<Result<Epoch, String>> {
        let (sender, answer) = std::sync::mpsc::channel();
        let promoting = Arc::clone(control);
        thread::spawn(move || {
            let _ = sender.send(promoting.promote(&node, true));
        });
        answer.recv_timeout(Duration::from_secs(60)).ok()
    }

    #[test]
    fn a_promotion_that_fails_before_its_epoch_is_stored_leaves_the_standby_following() {
        // Goal: a promotion stops the follower first. One that fails before the epoch is
        // stored (here the epoch file cannot be written) promised nothing new: the standby
        // follows its primary again (connects to it again), its forced promotion's cleared
        // catch-up marker put back. One that fails after it was stored stays stopped (its
        // promise would depose the primary) and says it must be restarted, instead of
        // showing the state it had while it followed.
        use std::io::Read as _;
        for (fault, follows_again) in
            [(StoreFault::Refused, true), (StoreFault::StoredThenFailed, false)]
        {
            let primary = TcpListener::bind("127.0.0.1:0").unwrap();
            let store = memory(true);
            let faults = Arc::clone(&store.2);
            let address = primary.local_addr().unwrap().to_string();
            let (control, node) = standby_over(store, &address, crate::standby::resolve, 3_600_000);
            let mut hello = [0u8; 1];
            accept_within_a_minute(&primary).read_exact(&mut hello).unwrap();
            *faults.lock().unwrap() = fault;
            let failed = control.promote(&node, true).unwrap_err();
            assert!(failed.contains(&format!("{fault:?}")), "{fault:?}: {failed}");
            assert!(!control.is_primary(), "{fault:?}: promoted");
            let follower = control.follower.lock().unwrap().is_some();
            assert_eq!(follower, follows_again, "{fault:?}: {failed}");
            if follows_again {
                assert!(control.epoch_store().catching_up(), "the marker was not put back");
                assert_eq!(control.facts().must_restart, None, "{failed}");
                let mut again = accept_within(&primary, Duration::from_secs(10));
                again.read_exact(&mut hello).expect("the standby's hello, again");
                assert_ne!(control.figures().state, PROMOTION_FAILED);
            } else {
                assert_eq!(control.figures().state, PROMOTION_FAILED, "{failed}");
                let why = control.facts().must_restart.expect("a stopped standby restarts");
                assert!(why.contains("promotion failed"), "{why}");
            }
            control.stop();
        }
    }

    #[test]
    fn a_promotion_does_not_wait_for_a_primary_that_accepts_but_never_answers() {
        // Goal: a paused primary's machine still accepts connections for it, and the standby's
        // follower then waits for the handshake's answer, up to the handshake timeout. A
        // promotion stops the follower first: it cuts that wait short instead of waiting it
        // out (an hour here).
        use std::io::Read as _;
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let (control, node) = standby_of(silent.local_addr().unwrap());
        let (mut accepted, _) = silent.accept().unwrap();
        let mut hello = [0u8; 1];
        accepted.read_exact(&mut hello).unwrap();
        let promoted = promote_within_a_minute(&control, node).expect("the promotion waited");
        assert_eq!(promoted, Ok(Epoch(1 + PROMOTION_EPOCH_STEP)));
        accepted.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut rest = Vec::new();
        let closed = accepted.read_to_end(&mut rest);
        assert!(closed.is_ok(), "the follower hung up: {closed:?}");
        control.stop();
    }

    #[test]
    fn a_promotion_does_not_wait_for_a_connection_the_primary_never_completes() {
        // Goal: a primary whose machine is gone drops the standby's connection attempts
        // unanswered, and a connection waits up to the handshake timeout. A promotion cuts
        // that short too. The listener's backlog of zero, already filled, drops every
        // further SYN, as an unreachable machine would.
        let listener =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        listener.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        listener.listen(0).unwrap();
        let address = listener.local_addr().unwrap().as_socket().unwrap();
        let queued = TcpStream::connect(address).unwrap();
        let (control, node) = standby_of(address);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !connecting_to(address) {
            assert!(std::time::Instant::now() < deadline, "the follower never tried to connect");
            thread::sleep(Duration::from_millis(5));
        }
        let promoted = promote_within_a_minute(&control, node).expect("the promotion waited");
        assert_eq!(promoted, Ok(Epoch(1 + PROMOTION_EPOCH_STEP)));
        control.stop();
        drop(queued);
    }

    #[test]
    fn a_promotion_does_not_wait_for_a_lookup_of_the_primary_that_never_answers() {
        // Goal: a primary named by host (a service name, say) is looked up with the system's
        // resolver, which cannot be interrupted and, with the primary's machine or its DNS
        // gone, may wait for seconds. A promotion does not wait for it. The resolver here
        // never answers at all.
        static ASKED: AtomicBool = AtomicBool::new(false);
        fn never_answers(_: &str) -> std::io::Result<Vec<SocketAddr>> {
            ASKED.store(true, Ordering::Release);
            loop {
                thread::park();
            }
        }
        let (control, node) =
            standby_named("primary.ringfence.test:7001", never_answers, 3_600_000);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !ASKED.load(Ordering::Acquire) {
            assert!(std::time::Instant::now() < deadline, "the follower never looked it up");
            thread::sleep(Duration::from_millis(5));
        }
        let promoted = promote_within_a_minute(&control, node).expect("the promotion waited");
        assert_eq!(promoted, Ok(Epoch(1 + PROMOTION_EPOCH_STEP)));
        control.stop();
    }

    #[test]
    fn a_standby_follows_a_primary_named_by_host() {
        // Goal: the lookup on its own thread hands its address to the connection: a standby
        // given `localhost:port` connects to the primary there and starts the handshake.
        use std::io::Read as _;
        let primary = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = primary.local_addr().unwrap().port();
        let (control, node) =
            standby_named(&format!("localhost:{port}"), crate::standby::resolve, 3_600_000);
        let (mut accepted, _) = primary.accept().unwrap();
        accepted.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut hello = [0u8; 1];
        accepted.read_exact(&mut hello).expect("the standby's hello");
        control.stop();
        drop(node);
    }

    #[test]
    fn a_slow_lookup_outlasting_the_handshake_timeout_is_waited_for_not_repeated() {
        // Goal: a lookup still running when an attempt times out is the next attempt's
        // lookup too, so a resolver that takes longer than the handshake timeout is not
        // asked again and again (a thread each time). Here each lookup takes 600 ms, ten
        // times the timeout: no two may run at once, and the answer still gets used.
        use std::io::Read as _;
        use std::sync::atomic::AtomicUsize;
        static PRIMARY: std::sync::OnceLock<SocketAddr> = std::sync::OnceLock::new();
        static RUNNING: AtomicUsize = AtomicUsize::new(0);
        static OVERLAPPED: AtomicBool = AtomicBool::new(false);
        fn slow(_: &str) -> std::io::Result<Vec<SocketAddr>> {
            if RUNNING.fetch_add(1, Ordering::AcqRel) > 0 {
                OVERLAPPED.store(true, Ordering::Release);
            }
            thread::sleep(Duration::from_millis(600));
            RUNNING.fetch_sub(1, Ordering::AcqRel);
            Ok(vec![*PRIMARY.get().expect("set before the standby starts")])
        }
        let primary = TcpListener::bind("127.0.0.1:0").unwrap();
        PRIMARY.set(primary.local_addr().unwrap()).unwrap();
        let (control, node) = standby_named("primary.ringfence.test:7001", slow, 60);
        // Repeated, each lookup would be given up at the timeout, and none would be used.
        let mut accepted = accept_within_a_minute(&primary);
        let mut hello = [0u8; 1];
        accepted.read_exact(&mut hello).expect("the standby's hello");
        control.stop();
        drop(node);
        assert!(!OVERLAPPED.load(Ordering::Acquire), "a second lookup started beside the first");
    }

    #[test]
    fn a_primary_named_by_host_is_tried_at_each_of_its_addresses() {
        // Goal: a name may stand for several addresses (IPv6 and IPv4, say), and the one the
        // resolver prefers may not be where the primary listens. The follower tries them in
        // order: the first here refuses, the second is the primary.
        use std::io::Read as _;
        static ADDRESSES: std::sync::OnceLock<Vec<SocketAddr>> = std::sync::OnceLock::new();
        fn both(_: &str) -> std::io::Result<Vec<SocketAddr>> {
            Ok(ADDRESSES.get().expect("set before the standby starts").clone())
        }
        // Bound and not listening: a connection is refused, and the port stays this test's.
        let bound =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        bound.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        let refusing = bound.local_addr().unwrap().as_socket().unwrap();
        let primary = TcpListener::bind("127.0.0.1:0").unwrap();
        ADDRESSES.set(vec![refusing, primary.local_addr().unwrap()]).unwrap();
        let (control, node) = standby_named("primary.ringfence.test:7001", both, 3_600_000);
        let mut accepted = accept_within_a_minute(&primary);
        let mut hello = [0u8; 1];
        accepted.read_exact(&mut hello).expect("the standby's hello");
        control.stop();
        drop(node);
    }

    /// A primary whose journal directory is a new, empty one, its handshakes bounded by
    /// `handshake_timeout_ms`, and its node; replication started.
    fn primary_listening(handshake_timeout_ms: u64) -> (Arc<Control>, Node, SocketAddr) {
        use ringfence_core::pipeline::{MemoryJournal, NoReplicator, NodeConfig, Topology};
        let unique = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "rf-repl-primary-{}-{}",
            std::process::id(),
            unique.as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let settings = ReplicationConfig { handshake_timeout_ms, data_dir: dir, ..config() };
        let clock = Arc::new(ringfence_core::pipeline::SystemClock::new());
        let end = (Sequence(0), Epoch(0));
        let control = Control::new(settings, Role::Primary, end, memory(false), clock);
        let node_config = NodeConfig::for_tests(Topology::Stepped);
        let node = Node::start(node_config, MemoryJournal::new(), NoReplicator::default()).unwrap();
        control.start(&node).unwrap();
        let address = control.listen_addr().expect("listening once started");
        (control, node, address)
    }

    /// Connects to `address` and announces a frame of `len` bytes, then sends one byte of it
    /// every `gap` until the other side closes the connection. Returns how long after
    /// connecting it was closed, or `None` if it was still open after `give_up`. Each wait
    /// for the close is the gap itself: nothing spins.
    fn drip(address: SocketAddr, len: u32, gap: Duration, give_up: Duration) -> Option<Duration> {
        use std::io::{ErrorKind, Read as _, Write as _};
        let mut peer = TcpStream::connect(address).unwrap();
        let began = std::time::Instant::now();
        peer.set_read_timeout(Some(gap)).unwrap();
        let mut sent = peer.write_all(&len.to_le_bytes());
        while sent.is_ok() && began.elapsed() < give_up {
            match peer.read(&mut [0u8; 1]) {
                Ok(0) => break,
                Ok(_) => panic!("the primary answered a peer that never said hello"),
                Err(error)
                    if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    sent = peer.write_all(&[0]);
                }
                // Closed with bytes unread, the primary's side resets the connection.
                Err(_) => break,
            }
        }
        (began.elapsed() < give_up).then(|| began.elapsed())
    }

    #[test]
    fn slow_drip_peers_in_every_handshake_slot_are_cut_off_and_a_standby_then_joins() {
        // Goal: no peer holds a handshake slot past the handshake's deadline, however it
        // paces its bytes. Peers in every slot each send a byte more often than the timeout
        // (a gap of a third of it); half of them announce the largest frame the protocol
        // allows, half a frame of a `Hello`'s size. All are cut off within a bounded time,
        // after which a real standby's handshake succeeds. (The bound is a liveness bound, 50
        // timeouts, for a loaded machine; without the deadline the peers are never cut off.)
        const TIMEOUT_MS: u64 = 300;
        let (control, _node, address) = primary_listening(TIMEOUT_MS);
        let slots = control.config().handshakes_max;
        let gap = Duration::from_millis(TIMEOUT_MS / 3);
        let give_up = Duration::from_millis(TIMEOUT_MS * 50);
        // The review's trigger, 0x0010000D; and the largest `Hello` (a 64-byte cluster id).
        let lens = [u32::try_from(crate::message::FRAME_LEN_MAX).unwrap(), 1 + 145];
        let drips: Vec<_> = (0..slots)
            .map(|slot| {
                let len = lens[slot % lens.len()];
                thread::spawn(move || (len, drip(address, len, gap, give_up)))
            })
            .collect();
        for dripping in drips {
            let (len, held) = dripping.join().unwrap();
            assert!(held.is_some(), "a peer announcing {len} bytes held its slot past {give_up:?}");
        }
        let standby = ReplicationConfig { handshake_timeout_ms: 60_000, ..config() };
        let end = crate::standby::JournalEnd { last_sequence: Sequence(0), last_epoch: Epoch(0) };
        let joined = crate::standby::join(&standby, &address.to_string(), end, Epoch(0));
        assert!(
            matches!(joined, Ok(crate::standby::Joined::Stream { from: Sequence(1), .. })),
            "{:?}",
            joined.err()
        );
        control.stop();
        let _ = std::fs::remove_dir_all(&control.config().data_dir);
    }

    /// Connects to `target` from the address `source` (port chosen by the system): std cannot
    /// bind a client socket before connecting, so this goes through `socket2`. All of 127/8 is
    /// loopback on Linux, so a test can stand for a second peer address with 127.0.0.2.
    fn connect_from(source: std::net::Ipv4Addr, target: SocketAddr) -> std::io::Result<TcpStream> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(target), Type::STREAM, Some(Protocol::TCP))?;
        socket.bind(&SocketAddr::from((source, 0)).into())?;
        socket.connect(&target.into())?;
        Ok(socket.into())
    }

    /// A peer without the secret at `source`: it holds a connection to `target` open, silent,
    /// and opens another the moment the primary closes it, until `stop`, counting each one it
    /// opens in `opened`. Each wait for the close or for `stop` is 50 ms: nothing spins.
    fn hold_silently(
        source: std::net::Ipv4Addr,
        target: SocketAddr,
        opened: &AtomicU64,
        stop: &AtomicBool,
    ) {
        use std::io::{ErrorKind, Read as _};
        while !stop.load(Ordering::Acquire) {
            let Ok(mut peer) = connect_from(source, target) else {
                // Out of ports for a moment, say: the next attempt comes after a wait.
                thread::sleep(Duration::from_millis(50));
                continue;
            };
            opened.fetch_add(1, Ordering::AcqRel);
            peer.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            while !stop.load(Ordering::Acquire) {
                match peer.read(&mut [0u8; 1]) {
                    Err(error)
                        if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    // Closed (or answered, which a peer that never said hello is not).
                    _ => break,
                }
            }
        }
    }

    #[test]
    fn peers_at_one_address_holding_every_slot_cannot_keep_a_standby_at_another_out() {
        // Goal: peers without the secret at one address (127.0.0.2) hold every handshake slot,
        // silently, and reconnect the moment they are closed, for the whole test, as the
        // audit's did; before, they kept the standby out for as long as they went on. One
        // address holds at most half the slots in unproven handshakes, and its new connections
        // close its own oldest, never another address's: a real standby at 127.0.0.1 joins at
        // its first attempt. (The primary's handshake timeout, a minute, is a liveness bound
        // for a loaded machine; it never cuts the peers' handshakes off here.)
        let source = std::net::Ipv4Addr::new(127, 0, 0, 2);
        let bound = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .and_then(|socket| socket.bind(&SocketAddr::from((source, 0)).into()));
        if let Err(error) = bound {
            println!("skipping: cannot bind a socket to {source}: {error}");
            return;
        }
        let (control, _node, address) = primary_listening(60_000);
        let slots = control.config().handshakes_max;
        let (opened, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        // Twice as many peers as slots: every slot is taken, and the rest keep knocking.
        let peers: Vec<_> = (0..slots * 2)
            .map(|_| {
                let (opened, stop) = (Arc::clone(&opened), Arc::clone(&stop));
                thread::spawn(move || hold_silently(source, address, &opened, &stop))
            })
            .collect();
        // A peer opened a second connection: the primary closed its first, which it does only
        // once the slots are taken (by this address's share of them, or by all of them).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while opened.load(Ordering::Acquire) <= u64::try_from(slots * 2).unwrap() {
            assert!(std::time::Instant::now() < deadline, "the peers never filled the slots");
            thread::sleep(Duration::from_millis(5));
        }
        let standby = ReplicationConfig { handshake_timeout_ms: 60_000, ..config() };
        let end = crate::standby::JournalEnd { last_sequence: Sequence(0), last_epoch: Epoch(0) };
        let joined = crate::standby::join(&standby, &address.to_string(), end, Epoch(0));
        stop.store(true, Ordering::Release);
        for peer in peers {
            peer.join().unwrap();
        }
        assert!(
            matches!(joined, Ok(crate::standby::Joined::Stream { from: Sequence(1), .. })),
            "{:?} ({} connections from {source})",
            joined.err(),
            opened.load(Ordering::Acquire)
        );
        control.stop();
        let _ = std::fs::remove_dir_all(&control.config().data_dir);
    }

    #[test]
    fn a_hello_of_another_version_or_cluster_is_refused_with_its_code_before_the_close() {
        // Goal: a `Hello`'s magic and version keep their places in every version, so the
        // primary can tell a standby of another release why it is turned away: `Version` for
        // another version, `Cluster` for another cluster, `BadMessage` for a hello without the
        // magic, each sent before the connection closes. Otherwise only the primary's log
        // would say why.
        use crate::message::{Hello, Message, RefuseCode};
        use crate::stream::FrameReader;
        use std::io::Write as _;
        let (control, _node, address) = primary_listening(60_000);
        let hello = |cluster: &str| {
            let cluster = ClusterId::new(cluster).unwrap();
            let hello =
                Hello { cluster, standby_nonce: [1; 32], engine: control.config().engine.clone() };
            let mut frame = Vec::new();
            crate::message::encode(&Message::Hello(hello), &mut frame);
            frame
        };
        // The body starts at byte 5: the magic, then the version.
        let mut older = hello("c");
        older[9..11].copy_from_slice(&5u16.to_le_bytes());
        let mut other_magic = hello("c");
        other_magic[5..9].copy_from_slice(b"RFRX");
        let cases = [
            (older, RefuseCode::Version, "version 5"),
            (hello("other"), RefuseCode::Cluster, "`other`"),
            (other_magic, RefuseCode::BadMessage, "magic"),
        ];
        for (frame, code, names) in cases {
            let mut peer = TcpStream::connect(address).unwrap();
            peer.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            peer.write_all(&frame).unwrap();
            let mut reader = FrameReader::new(peer);
            let answer = reader.read_message();
            let Ok(Message::Refuse(refuse)) = answer else {
                panic!("{code:?}: the primary answered {answer:?}")
            };
            assert_eq!(refuse.code, code, "{}", refuse.text);
            assert!(refuse.text.contains(names), "{code:?}: {}", refuse.text);
            let closed = reader.read_message();
            assert!(closed.is_err(), "{code:?}: the connection stayed open: {closed:?}");
        }
        control.stop();
        let _ = std::fs::remove_dir_all(&control.config().data_dir);
    }

    #[test]
    fn a_standby_gives_up_on_a_primary_that_drips_its_challenge_by_the_deadline() {
        // Goal: whatever answers at the primary's address, the standby's handshake ends by its
        // deadline: a `Challenge` sent a byte at a time, each gap a third of the timeout,
        // does not keep it waiting (the whole frame would take 23 timeouts; the bound below,
        // a liveness bound for a loaded machine, 15).
        use std::io::{Read as _, Write as _};
        const TIMEOUT_MS: u64 = 1_000;
        let impostor = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = impostor.local_addr().unwrap();
        let dripping = thread::spawn(move || {
            let (mut accepted, _) = impostor.accept().unwrap();
            accepted.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            accepted.read_exact(&mut [0u8; 4]).expect("the standby's hello");
            let mut challenge = 65u32.to_le_bytes().to_vec();
            challenge.push(crate::message::Kind::Challenge as u8);
            challenge.extend_from_slice(&[0; 64]);
            for byte in challenge {
                if accepted.write_all(&[byte]).is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(TIMEOUT_MS / 3));
            }
        });
        let standby = ReplicationConfig { handshake_timeout_ms: TIMEOUT_MS, ..config() };
        let end = crate::standby::JournalEnd { last_sequence: Sequence(0), last_epoch: Epoch(0) };
        let began = std::time::Instant::now();
        let joined = crate::standby::join(&standby, &address.to_string(), end, Epoch(0));
        let waited = began.elapsed();
        assert!(joined.is_err(), "joined an impostor");
        let bound = Duration::from_millis(TIMEOUT_MS * 15);
        assert!(waited < bound, "waited {waited:?} for a primary dripping its challenge");
        dripping.join().unwrap();
    }

    /// The warnings `act` logs on this thread.
    pub(crate) fn warnings(act: impl FnOnce()) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, act);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn a_standby_refused_for_its_protocol_version_warns_once_naming_both_and_retries() {
        // Goal: a primary of another protocol version refuses every join. Retrying cannot help
        // while the releases differ, so the follower warns, once however often it is refused,
        // naming both versions and the upgrade to make; it retries all the same (anything at
        // the primary's address can send that refusal) and `/v1/node` shows it.
        use crate::message::{Message, PROTOCOL_VERSION, Refuse, RefuseCode};
        use crate::stream::{FrameReader, write_message};
        const REFUSALS: usize = 3;
        let other = PROTOCOL_VERSION + 1;
        let text = format!(
            "the standby speaks replication protocol version {PROTOCOL_VERSION}; this primary \
             speaks {other}: run the same ringfence release on the primary and the standby"
        );
        let (control, node) = standby(false);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let stop = Arc::clone(control.follower_stop());
        let refusing = {
            let text = text.clone();
            thread::spawn(move || {
                for refused in 1..=REFUSALS {
                    let peer = accept_within_a_minute(&listener);
                    let mut reader = FrameReader::new(peer.try_clone().unwrap());
                    let hello = reader.read_message().unwrap();
                    assert!(matches!(hello, Message::Hello(_)), "{hello:?}");
                    // Stopped before the last refusal: the follower ends at its next round.
                    if refused == REFUSALS {
                        stop.store(true, Ordering::Release);
                    }
                    let refuse = Refuse::new(RefuseCode::Version, Epoch(0), &text);
                    write_message(&mut &peer, &Message::Refuse(refuse), &mut Vec::new()).unwrap();
                }
            })
        };
        let follower = crate::standby::Follower::open(&node, crate::standby::resolve).unwrap();
        let parked = crate::standby::Parked::new(&control, follower);
        let said = warnings(|| {
            assert!(crate::standby::follow(&control, &address, parked).is_some(), "it retried");
        });
        refusing.join().unwrap();
        assert_eq!(said.len(), 1, "{said:#?}");
        let ours = format!("this standby (replication protocol version {PROTOCOL_VERSION})");
        assert!(said[0].contains(&ours) && said[0].contains(&text), "{said:#?}");
        assert!(said[0].contains("\"Upgrading a pair\""), "{said:#?}");
        let state = control.figures().state;
        assert!(state.starts_with("refused by the primary, retrying: "), "{state}");
        assert!(state.contains(&text), "{state}");
    }
}
