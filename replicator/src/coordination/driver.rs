//! The shell around the [`Pilot`]: a candidate's start-up ([`Startup::decide`]) and the
//! control-plane thread (`rf-coordinator`) of a running node. It renews the lease, reads the
//! witness, hands the pilot the node's facts, and carries out the plan — campaign and
//! promote, write the in-sync record and then act on it, hold and resign for a switchover,
//! or rejoin (the caller restarts the process as a candidate). It owns no decision.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ringfence_core::pipeline::Clock;

use ringfence_core::pipeline::Promoter;
use ringfence_core::{Epoch, Sequence};

use crate::control::{Control, log, warn};
use crate::coordination::CoordinationConfig;
use crate::coordination::pilot::{self, After, Facts, Identity, Pilot, Plan};
use crate::coordination::records::{LeaderValue, Member, RECORDS_VERSION, Switchover, SyncRecord};
use crate::coordination::store::{Coordinator, CoordinatorError, LeaseId, View};
use crate::policy::{AckMode, Gate, PolicyState};

/// How often the running driver looks at the witness, at most.
const TICK_MAX: Duration = Duration::from_millis(100);

/// What `/v1/node` shows about coordination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoordinationFigures {
    /// This node's name.
    pub node: String,
    /// `leader`, `taking_office` (holds the key, writes held until the witness records it as
    /// primary), `standby` or `handing_over`.
    pub state: String,
    /// The leader this node knows, and its epoch.
    pub leader: Option<(String, u64)>,
    /// A leader's time left before it stops acknowledging alone (ms).
    pub lease_remaining_ms: Option<u64>,
    /// The in-sync record: its standby and mode.
    pub in_sync_standby: Option<String>,
    /// The mode recorded.
    pub recorded_mode: Option<String>,
    /// `reachable` or the last error.
    pub witness: String,
    /// Why this node waits instead of taking over.
    pub waiting: Option<String>,
    /// After a promotion over an async record: the loss window reported.
    pub failover_loss_records: Option<u64>,
    /// Under an async record, the most records this node may lose to take over.
    pub max_failover_loss: Option<u64>,
}

/// What a candidate decided at start.
pub enum Decided {
    /// It took the key: start as the primary of this epoch.
    Primary {
        /// Its leader value.
        leader: LeaderValue,
        /// The record written with it.
        sync: SyncRecord,
    },
    /// Someone else leads: start as its standby.
    Standby {
        /// The leader.
        leader: LeaderValue,
    },
}

/// A candidate's connection to the witness, from start-up until its driver runs.
pub struct Startup {
    config: CoordinationConfig,
    coordinator: Box<dyn Coordinator>,
    lease: LeaseId,
    clock: Arc<dyn Clock>,
    /// When the last renewal that succeeded was sent (ms on `clock`).
    renewed_ms: u64,
}

impl Startup {
    /// Grants this node's lease, retrying while the witness cannot be reached (until `give_up`
    /// of real time has passed); `clock` is the time the lease's deadline is kept on.
    pub fn connect(
        config: CoordinationConfig,
        mut coordinator: Box<dyn Coordinator>,
        give_up: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Startup, String> {
        let began = Instant::now();
        let mut failures = 0u64;
        loop {
            match Startup::try_connect(config.clone(), coordinator, Arc::clone(&clock)) {
                Ok(startup) => return Ok(startup),
                Err((back, error)) if began.elapsed() < give_up => {
                    coordinator = back;
                    failures += 1;
                    if failures <= 3 || failures % 50 == 0 {
                        warn(format_args!("coordination: waiting for the witness: {error}"));
                    }
                    thread::sleep(Duration::from_millis(config.timing.renew_ms.min(200)));
                }
                Err((_, error)) => return Err(format!("the witness did not answer: {error}")),
            }
        }
    }

    /// One attempt at [`Startup::connect`]: the coordinator comes back with the error.
    pub fn try_connect(
        config: CoordinationConfig,
        mut coordinator: Box<dyn Coordinator>,
        clock: Arc<dyn Clock>,
    ) -> Result<Startup, (Box<dyn Coordinator>, CoordinatorError)> {
        let sent = ms(&*clock);
        match coordinator.grant(config.timing.ttl_s) {
            Ok(lease) => Ok(Startup { config, coordinator, lease, clock, renewed_ms: sent }),
            Err(error) => Err((coordinator, error)),
        }
    }

    /// Waits until this candidate follows a leader or has taken the key itself. `facts` are the
    /// node's journal position and epochs (from its data directory).
    pub fn decide(&mut self, me: &Identity, facts: &Facts) -> Result<Decided, String> {
        let mut said = String::new();
        loop {
            if let Some(decided) = self.decide_round(me, facts, &mut said)? {
                return Ok(decided);
            }
            thread::sleep(Duration::from_millis(self.config.timing.renew_ms.min(100)));
        }
    }

    /// One round of [`Startup::decide`]: renew, read the witness, follow or campaign.
    /// `None` while the candidate must wait (why is logged once, kept in `said`).
    pub fn decide_round(
        &mut self,
        me: &Identity,
        facts: &Facts,
        said: &mut String,
    ) -> Result<Option<Decided>, String> {
        if let Err(error) = self.renew() {
            // Waited out as an unreachable witness is: the next round grants a lease again.
            wait(said, error);
            return Ok(None);
        }
        let plan = match self.coordinator.read() {
            Ok(view) => {
                if let Some((leader, sync)) = taken_unanswered(&view, me, self.lease) {
                    log(format_args!(
                        "coordination: the leader key is this candidate's, bound to its lease: \
                         its campaign took it and the answer was lost; primary in epoch {}",
                        leader.epoch
                    ));
                    return Ok(Some(Decided::Primary { leader, sync }));
                }
                pilot::start(me, &view, facts)
            }
            Err(error) => Plan::Wait(format!("the witness is unreachable: {error}")),
        };
        match plan {
            Plan::Follow(leader) => {
                log(format_args!(
                    "coordination: {} leads (epoch {}): starting as its standby",
                    leader.node, leader.epoch
                ));
                return Ok(Some(Decided::Standby { leader }));
            }
            Plan::Campaign { leader, sync_revision, sync } => {
                match self.coordinator.campaign(&leader, self.lease, sync_revision, &sync) {
                    Ok(true) => {
                        log(format_args!(
                            "coordination: took the leader key: primary in epoch {}",
                            leader.epoch
                        ));
                        return Ok(Some(Decided::Primary { leader, sync }));
                    }
                    Ok(false) => {}
                    Err(error) => log(format_args!("coordination: campaign failed: {error}")),
                }
            }
            Plan::Wait(reason) => wait(said, reason),
            _ => {}
        }
        Ok(None)
    }

    /// Keeps the lease alive on a thread of its own while the node starts (recovery can take
    /// longer than the lease lives); [`Held::resume`] hands it back to the driver.
    pub fn hold(mut self) -> std::io::Result<Held> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let pause = Duration::from_millis(self.config.timing.renew_ms.min(100));
        let thread = thread::Builder::new().name("rf-coord-start".into()).spawn(move || {
            while !stopping.load(Ordering::Acquire) {
                if let Err(error) = self.renew() {
                    log(format_args!("coordination: renewing the lease at start: {error}"));
                }
                thread::sleep(pause);
            }
            self
        })?;
        Ok(Held { stop, thread })
    }

    /// Renews the lease; a lease that expired while waiting is granted again. A failed grant
    /// leaves the expired lease in place, so the next renewal grants again.
    fn renew(&mut self) -> Result<(), String> {
        let sent = ms(&*self.clock);
        match self.coordinator.keep_alive(self.lease) {
            Ok(0) => {
                let granted = self.coordinator.grant(self.config.timing.ttl_s);
                self.lease = granted
                    .map_err(|e| format!("the lease expired and no new one was granted: {e}"))?;
                self.renewed_ms = sent;
            }
            Ok(_) => self.renewed_ms = sent,
            Err(_) => {}
        }
        Ok(())
    }

    /// Time left on the lease as of now, minus the margin.
    fn remaining_ms(&self) -> u64 {
        let timing = self.config.timing;
        timing.deadline(self.renewed_ms, timing.ttl_s).saturating_sub(ms(&*self.clock))
    }
}

/// The leader value and in-sync record a campaign of this process wrote, when `view` shows
/// the key held under `me`'s name and bound to `lease`, this process's own: etcd committed the
/// campaign and its answer was lost (the call timed out, or its connection broke). Only a
/// campaign writes the leader key, and a lease is one process's, so the key is this process's
/// to lead with. Not a key of this node's previous run: that one is bound to another lease.
fn taken_unanswered(
    view: &View,
    me: &Identity,
    lease: LeaseId,
) -> Option<(LeaderValue, SyncRecord)> {
    let (leader, held) = view.leader.as_ref()?;
    if *held != lease || leader.node != me.node {
        return None;
    }
    // The campaign wrote the record with the key, and only the key's holder writes it since.
    Some((leader.clone(), view.sync.clone()?))
}

/// A [`Startup`] whose lease a thread keeps alive while the node starts.
pub struct Held {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Startup>,
}

impl Held {
    /// Stops the thread and returns the startup, its lease renewed.
    pub fn resume(self) -> Result<Startup, String> {
        self.stop.store(true, Ordering::Release);
        self.thread.join().map_err(|_| "the lease thread panicked".to_owned())
    }
}

/// A candidate waits this round for `reason`, logged once while it stays the same.
fn wait(said: &mut String, reason: String) {
    if reason != *said {
        warn(format_args!("coordination: {reason}"));
        *said = reason;
    }
}

fn ms(clock: &dyn Clock) -> u64 {
    clock.now_ns() / 1_000_000
}

/// What the operator asks of the driver, with where the answer goes.
enum Request {
    SetMode(AckMode, Reply),
    Switchover(Reply),
    WithdrawSwitchover(Reply),
    Stop,
}

/// Where the answer to an operator's request goes. The driver takes the sender right before it
/// acts; the asker takes it back when it gives up waiting. Whoever takes it first decides, so
/// an asker told that nothing changed is told the truth: the driver finds the sender gone and
/// leaves the request undone.
type Reply = Arc<Mutex<Option<Sender<Result<(), String>>>>>;

/// Restarts the process as a candidate, with the reason; does not return.
pub type Rejoin = Box<dyn Fn(&str) + Send>;

/// The handle the node's admin calls and `/v1/node` use.
pub struct Coordination {
    requests: Mutex<Sender<Request>>,
    figures: Arc<Mutex<CoordinationFigures>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    timeout: Duration,
}

impl Coordination {
    /// The figures for `/v1/node`.
    pub fn figures(&self) -> CoordinationFigures {
        self.figures.lock().expect("never poisoned").clone()
    }

    /// Queues `request` for the driver and waits for its answer. A request the driver has not
    /// begun when the wait ends is withdrawn, so it is never carried out; one it has begun is
    /// waited for once more, as long as its calls to the witness may take.
    fn ask(&self, request: impl FnOnce(Reply) -> Request) -> Result<(), String> {
        let (sender, answer) = mpsc::channel();
        let reply: Reply = Arc::new(Mutex::new(Some(sender)));
        let sent = self.requests.lock().expect("never poisoned").send(request(Arc::clone(&reply)));
        sent.map_err(|_| "the coordination thread has stopped".to_owned())?;
        if let Ok(answered) = answer.recv_timeout(self.timeout) {
            return answered;
        }
        if reply.lock().expect("never poisoned").take().is_some() {
            return Err("the witness did not answer in time; nothing changed".into());
        }
        answer.recv_timeout(self.timeout).unwrap_or_else(|_| {
            Err("the witness did not answer in time; the change may be made all the same: see \
                 /v1/node before asking again"
                .into())
        })
    }

    /// Switches the acknowledgement mode: `async` is written to the witness first.
    pub fn set_mode(&self, mode: AckMode) -> Result<(), String> {
        self.ask(|reply| Request::SetMode(mode, reply))
    }

    /// A standby asks the primary, through the witness, to hand over the leader key.
    pub fn request_switchover(&self) -> Result<(), String> {
        self.ask(Request::Switchover)
    }

    /// Withdraws the switchover this standby asked for, if it did: its request goes from the
    /// witness at once, rather than when its lease runs out.
    pub fn withdraw_switchover(&self) -> Result<(), String> {
        self.ask(Request::WithdrawSwitchover)
    }

    /// Stops the driver; a primary gives up the leader key so its standby takes over at once.
    pub fn stop(&self) {
        let _ = self.requests.lock().expect("never poisoned").send(Request::Stop);
        if let Some(thread) = self.thread.lock().expect("never poisoned").take() {
            let _ = thread.join();
        }
    }
}

/// The running driver: renews the lease, reads the witness and carries out the pilot's plan
/// at each [`Driver::step`]. The `rf-coordinator` thread steps it in a running node; the
/// simulator steps it on its own thread.
pub struct Driver {
    config: CoordinationConfig,
    coordinator: Box<dyn Coordinator>,
    lease: LeaseId,
    pilot: Pilot,
    control: Arc<Control>,
    promoter: Promoter,
    rejoin: Rejoin,
    figures: Arc<Mutex<CoordinationFigures>>,
    next_renew_ms: u64,
    /// When the last successful renewal was sent (ms on the control's clock).
    renewed_ms: u64,
    said: String,
    /// Lease renewals have failed since the last that succeeded, and the failure last logged:
    /// said once while it repeats (whatever else is noted between), and the next renewal to
    /// succeed says so.
    renewal_failing: Option<String>,
    /// An in-sync record written whose answer was lost, and what to do once it is known to
    /// be recorded: the next read that shows it recorded carries that out.
    unanswered: Option<(SyncRecord, After)>,
    /// The lease of the last switchover request this standby wrote, until withdrawn.
    switchover_lease: Option<LeaseId>,
}

/// Starts the driver of a node that decided at start-up, on a thread of its own.
pub fn start(
    startup: Startup,
    (me, decided): (Identity, Decided),
    control: Arc<Control>,
    promoter: Promoter,
    rejoin: Rejoin,
) -> std::io::Result<Coordination> {
    let driver = Driver::new(startup, (me, decided), control, promoter, rejoin);
    let timeout = driver.config.request_timeout() * 4;
    let figures = Arc::clone(&driver.figures);
    let (requests, inbox) = mpsc::channel();
    let thread =
        thread::Builder::new().name("rf-coordinator".into()).spawn(move || driver.run(&inbox))?;
    Ok(Coordination {
        requests: Mutex::new(requests),
        figures,
        thread: Mutex::new(Some(thread)),
        timeout,
    })
}

impl Driver {
    /// The driver of a node that decided at start-up, not yet stepped; it registers the node
    /// and, for a primary, sets the lease deadline before it returns.
    pub fn new(
        startup: Startup,
        (me, decided): (Identity, Decided),
        control: Arc<Control>,
        promoter: Promoter,
        rejoin: Rejoin,
    ) -> Driver {
        let remaining_ms = startup.remaining_ms();
        let Startup { config, coordinator, lease, .. } = startup;
        let now = control.now_ms();
        // The lease's remaining time carries over to the control's clock.
        let renewed_ms = (now + remaining_ms + config.timing.margin_ms)
            .saturating_sub(config.timing.ttl_s * 1_000);
        let (pilot, loss) = match decided {
            Decided::Primary { leader, sync } => {
                let loss = async_loss(&sync, control.facts().available);
                (Pilot::primary(me, config.timing, (leader, sync), renewed_ms), loss)
            }
            Decided::Standby { leader } => (Pilot::standby(me, config.timing, leader), None),
        };
        if let Some(deadline) = pilot.deadline_ms() {
            control.set_lease_deadline(deadline);
        }
        // A leader acknowledges nothing until the record names it (the driver's first round
        // writes it): held before any write reaches the node.
        control.set_taking_office(pilot.taking_office());
        control.witness_recorded(false);
        let figures = CoordinationFigures { failover_loss_records: loss, ..Default::default() };
        let figures = Arc::new(Mutex::new(figures));
        let mut driver = Driver {
            config,
            coordinator,
            lease,
            pilot,
            control,
            promoter,
            rejoin,
            figures,
            next_renew_ms: now,
            renewed_ms,
            said: String::new(),
            renewal_failing: None,
            unanswered: None,
            switchover_lease: None,
        };
        driver.register();
        driver
    }
}

/// A node that took the key with `sync` holding `available`: under an `async` record, how
/// many records the old primary had journaled beyond it at least (acknowledged ones among them
/// are lost), logged; `None` under a sync record, which let only a node holding everything
/// acknowledged take the key.
fn async_loss(sync: &SyncRecord, available: Sequence) -> Option<u64> {
    if sync.ack_mode() != AckMode::Async {
        return None;
    }
    let loss = sync.primary_last.saturating_sub(available.0);
    log(format_args!(
        "coordination: promoted over an async record: the old primary had journaled at least \
         {loss} records beyond this node's {available} (acknowledged ones among them are lost)"
    ));
    Some(loss)
}

/// How long a switchover request stands, in seconds: the asker waits that long for it.
pub const SWITCHOVER_REQUEST_TTL_S: u64 = 10;

/// Rounds a stopping leader runs to name its in-sync standby: one to take the mark, one to
/// record, one to spare.
const ROUNDS_TO_NAME_STANDBY: usize = 3;

impl Driver {
    /// The figures for `/v1/node` as its last round left them ([`Coordination::figures`] of
    /// a driver stepped in place, as the simulator steps it).
    #[must_use]
    pub fn status(&self) -> CoordinationFigures {
        self.figures.lock().expect("never poisoned").clone()
    }

    fn run(mut self, inbox: &Receiver<Request>) {
        let tick = Duration::from_millis(self.config.timing.renew_ms).min(TICK_MAX);
        loop {
            self.step();
            let serving = match inbox.recv_timeout(tick) {
                Ok(request) => self.serve(request),
                Err(RecvTimeoutError::Timeout) => true,
                Err(RecvTimeoutError::Disconnected) => false,
            };
            if !serving {
                break;
            }
        }
        self.stop();
    }

    /// Serves one operator's request; `false` for [`Request::Stop`].
    fn serve(&mut self, request: Request) -> bool {
        match request {
            Request::SetMode(mode, reply) => self.answer(&reply, |d| d.set_mode(mode)),
            Request::Switchover(reply) => self.answer(&reply, Driver::switchover),
            Request::WithdrawSwitchover(reply) => {
                self.answer(&reply, Driver::withdraw_switchover);
            }
            Request::Stop => return false,
        }
        true
    }

    /// Carries out an operator's request with `act` and answers it, unless its asker gave up
    /// waiting first and was told that nothing changed: then it is left undone. A round that
    /// waited long on the witness leaves requests queued behind it.
    fn answer(&mut self, reply: &Reply, act: impl FnOnce(&mut Driver) -> Result<(), String>) {
        let Some(sender) = reply.lock().expect("never poisoned").take() else {
            return log(format_args!(
                "coordination: an admin request left undone: it was answered that nothing \
                 changed when the witness did not answer in time"
            ));
        };
        let _ = sender.send(act(self));
    }

    /// The pilot: its state, the leader it knows, its deadline.
    #[must_use]
    pub fn pilot(&self) -> &Pilot {
        &self.pilot
    }

    /// One round: renew when due, read the witness, carry out the pilot's plan.
    pub fn step(&mut self) {
        let now = self.control.now_ms();
        if now >= self.next_renew_ms {
            self.next_renew_ms = now + self.config.timing.renew_ms;
            self.renew(now);
        }
        match self.coordinator.read() {
            Ok(view) => {
                self.recorded_unanswered(&view);
                let led_before = self.pilot.leader().clone();
                let facts = self.control.facts();
                self.keep_registered(&view, &facts);
                let me = self.pilot.identity();
                let taken = taken_unanswered(&view, me, self.lease);
                match taken {
                    // A standby whose journal must be dropped first, or failed, rejoins (the
                    // pilot says so) rather than lead; the key it holds expires with its lease.
                    Some(taken)
                        if self.pilot.state() == "standby"
                            && facts.must_restart.is_none()
                            && facts.journal_failed.is_none() =>
                    {
                        log(format_args!(
                            "coordination: the leader key is this node's, bound to its lease: \
                             its campaign took it and the answer was lost"
                        ));
                        self.took_key(taken, &view, &facts);
                    }
                    _ => {
                        let plan = self.pilot.on_view(self.control.now_ms(), &facts, &view);
                        self.carry_out(plan, &view, &facts);
                    }
                }
                // A key this round's campaign took is not in the view read before it.
                let took_key = self.pilot.leader() != &led_before
                    && self.pilot.leader().node == self.config.node;
                self.figures(&view, None, took_key);
            }
            Err(error) => self.figures(&View::default(), Some(&error), false),
        }
    }

    fn renew(&mut self, sent_ms: u64) {
        match self.coordinator.keep_alive(self.lease) {
            Ok(ttl_s) => {
                if ttl_s > 0 {
                    self.renewed_ms = sent_ms;
                }
                if ttl_s > 0 && self.renewal_failing.take().is_some() {
                    // The end of what was warned of, said where the warning was.
                    warn(format_args!("coordination: the witness renews the lease again"));
                }
                let plan = self.pilot.renewed(sent_ms, ttl_s);
                if let Some(deadline) = self.pilot.deadline_ms() {
                    self.control.set_lease_deadline(deadline);
                }
                if ttl_s == 0 && plan == Plan::Nothing {
                    // A standby's lease lapsed (the witness was away): a new one, registered again.
                    if let Ok(lease) = self.coordinator.grant(self.config.timing.ttl_s) {
                        self.lease = lease;
                        self.renewed_ms = sent_ms;
                        self.register();
                    }
                }
                let (view, facts) = (View::default(), self.control.facts());
                self.carry_out(plan, &view, &facts);
            }
            Err(error) => {
                let what = format!("lease renewal failed: {error}");
                if self.renewal_failing.as_ref() != Some(&what) {
                    warn(format_args!("coordination: {what}"));
                    self.renewal_failing = Some(what);
                }
            }
        }
    }

    fn carry_out(&mut self, plan: Plan, view: &View, facts: &Facts) {
        match plan {
            Plan::Nothing | Plan::Follow(_) => {}
            Plan::Wait(reason) => {
                self.note(&reason);
                self.figures.lock().expect("never poisoned").waiting = Some(reason);
            }
            Plan::Campaign { leader, sync_revision, sync } => {
                self.campaign((leader, sync), sync_revision, view, facts);
            }
            Plan::Record { sync, after } => self.record(sync, after),
            Plan::Hold(reason) => {
                log(format_args!(
                    "coordination: {reason}: holding writes; the leader key is given up once the \
                     standby holds everything this node acknowledged"
                ));
                self.control.set_handover(true);
            }
            Plan::CallOff(why) => {
                warn(format_args!(
                    "coordination: switchover called off: {why}; this node stays the primary \
                     and ends the switchover's hold on writes"
                ));
                self.control.set_handover(false);
            }
            Plan::Resign => match self.coordinator.resign(self.pilot.leader()) {
                Ok(true) => {
                    log(format_args!("coordination: gave up the leader key to the standby"));
                    self.pilot.resigned();
                }
                Ok(false) => {}
                Err(error) => self.note(&format!("resigning failed: {error}")),
            },
            Plan::Rejoin(reason) => {
                warn(format_args!("coordination: {reason}: restarting as a candidate"));
                (self.rejoin)(&reason);
            }
        }
    }

    fn campaign(
        &mut self,
        (leader, sync): (LeaderValue, SyncRecord),
        sync_revision: i64,
        view: &View,
        facts: &Facts,
    ) {
        if self.lease_lapsed() {
            return;
        }
        match self.coordinator.campaign(&leader, self.lease, sync_revision, &sync) {
            Ok(true) => self.took_key((leader, sync), view, facts),
            Ok(false) => {}
            // It may have taken the key all the same: the next round's view says.
            Err(error) => self.note(&format!("campaign failed: {error}")),
        }
    }

    /// This standby holds the key as `leader`, with `sync` recorded (`view` and `facts` are
    /// the ones the campaign was planned on): promotes the node into the key's epoch, held
    /// until the record names it.
    fn took_key(&mut self, (leader, sync): (LeaderValue, SyncRecord), view: &View, facts: &Facts) {
        if self.lease_lapsed() {
            // The key goes with the lease; a later round campaigns again.
            return;
        }
        let epoch = Epoch(leader.epoch);
        // Nothing is acknowledged in the new epoch before the record names this node.
        self.control.set_taking_office(true);
        if let Err(error) = self.control.promote_to(&self.promoter, epoch) {
            // The key is ours but the node cannot sequence: let the lease go and start over.
            let _ = self.coordinator.resign(&leader);
            (self.rejoin)(&format!("promotion into epoch {epoch} failed: {error}"));
            return;
        }
        let loss = view.sync.as_ref().and_then(|sync| async_loss(sync, facts.available));
        let mut figures = self.figures.lock().expect("never poisoned");
        figures.failover_loss_records = loss;
        // It waited for nobody: the view read before the campaign would leave the reason up
        // until the next round.
        figures.waiting = None;
        drop(figures);
        log(format_args!("coordination: took the leader key: primary in epoch {epoch}"));
        assert!(self.control.is_primary(), "a promoted node sequences");
        assert_eq!(self.control.epoch(), epoch, "it sequences in the epoch it took");
        self.pilot.became_primary((leader, sync), self.renewed_ms);
        if let Some(deadline) = self.pilot.deadline_ms() {
            self.control.set_lease_deadline(deadline);
        }
        self.control.witness_recorded(false);
        self.role_figures();
        self.register();
        // Takes office at once; if the write fails, each round tries again, writes held.
        let office = self.pilot.office_record(&self.control.facts());
        if let Some(sync) = office {
            self.record(sync, After::TakeOffice);
        }
    }

    fn lease_lapsed(&self) -> bool {
        let timing = self.config.timing;
        self.control.now_ms() >= timing.deadline(self.renewed_ms, timing.ttl_s)
    }

    fn record(&mut self, sync: SyncRecord, after: After) {
        if matches!(after, After::ContinueAlone | After::SetMode(AckMode::Async))
            && let Err(error) = self.control.sync_before_alone()
        {
            return self.note(&format!("syncing the journal before going on alone: {error}"));
        }
        match self.coordinator.record_sync(self.pilot.leader(), &sync) {
            Ok(true) => {}
            // The key is not ours any more: the next read rejoins.
            Ok(false) => return,
            Err(error) => {
                // It may have been recorded all the same: the next read says.
                self.unanswered = Some((sync, after));
                return self.note(&format!("writing the in-sync record failed: {error}"));
            }
        }
        self.recorded(sync, after);
    }

    /// A record written whose answer was lost: if `view` shows it recorded, under this node's
    /// key, it is carried out as if answered. Otherwise the pilot plans afresh from `view`.
    /// Waiting for the pilot's next write instead would leave the witness saying what the
    /// node does not do for as long as answers are lost: a record naming this primary alone
    /// while it still kept its standby in sync, say, which after a power loss let neither
    /// node lead (simulator seed 600531 under `--unsynced`).
    fn recorded_unanswered(&mut self, view: &View) {
        let Some((sync, after)) = self.unanswered.take() else { return };
        let ours = matches!(&view.leader, Some((leader, lease))
            if leader == self.pilot.leader() && *lease == self.lease);
        if ours && self.pilot.state() == "leader" && view.sync.as_ref() == Some(&sync) {
            log(format_args!("coordination: the in-sync record written unanswered is recorded"));
            self.recorded(sync, after);
        }
    }

    /// The witness holds `sync`, written by this leader: acts on it (`after`).
    fn recorded(&mut self, sync: SyncRecord, after: After) {
        if after == After::TakeOffice {
            log(format_args!(
                "coordination: the witness records this node as primary in epoch {} ({} mode, \
                 no standby yet): writes are acknowledged from now on",
                sync.epoch, sync.mode
            ));
        } else if self.pilot.recorded().map(|r| (&r.standby, &r.mode))
            != Some((&sync.standby, &sync.mode))
        {
            log(format_args!(
                "coordination: recorded {} mode, in-sync standby: {}",
                sync.mode,
                sync.standby.as_deref().unwrap_or("none (this primary alone)")
            ));
        }
        {
            let mut figures = self.figures.lock().expect("never poisoned");
            figures.in_sync_standby.clone_from(&sync.standby);
            figures.recorded_mode = Some(sync.mode.clone());
        }
        self.control.witness_recorded(sync.standby.is_some());
        self.pilot.recorded_sync(sync, after);
        match after {
            After::Nothing => {}
            After::TakeOffice => self.control.set_taking_office(false),
            After::ContinueAlone => self.control.continue_alone(),
            After::SetMode(mode) => self.control.set_mode(mode),
        }
    }

    /// [`Coordination::set_mode`], on the driver's own thread.
    pub fn set_mode(&mut self, mode: AckMode) -> Result<(), String> {
        let facts = self.control.facts();
        if !facts.primary {
            return Err("the mode is set on the primary".into());
        }
        match self.pilot.mode_request(mode, &facts) {
            Plan::Nothing => {
                self.control.set_mode(mode);
                Ok(())
            }
            Plan::Record { sync, after } => {
                if mode == AckMode::Async {
                    self.control.sync_before_alone()?;
                }
                match self.coordinator.record_sync(self.pilot.leader(), &sync) {
                    Ok(true) => {}
                    Ok(false) => return Err("this node no longer holds the leader key".into()),
                    // Nothing sent, and no earlier switch unanswered that may yet be recorded.
                    Err(error @ CoordinatorError::Unsent(_)) if self.unanswered.is_none() => {
                        return Err(format!(
                            "{error}; nothing was recorded, and the mode stays {}",
                            facts.mode.name()
                        ));
                    }
                    Err(error) => {
                        // The write may have taken effect all the same: then the witness lets
                        // a standby take over as under `async`, and this node switches as
                        // asked once it reads the record (`recorded_unanswered`).
                        self.unanswered = Some((sync, after));
                        return Err(format!(
                            "{error}; the switch may have been recorded all the same, and this \
                             node then makes it once it reads the record: see /v1/node before \
                             asking again"
                        ));
                    }
                }
                // Written and answered: acted on as recorded, not written a second time.
                self.recorded(sync, after);
                Ok(())
            }
            Plan::Wait(why) => Err(why),
            _ => Err("this node is not the leader".into()),
        }
    }

    /// [`Coordination::request_switchover`], on the driver's own thread. The request is bound
    /// to a lease of its own, never renewed: it lapses [`SWITCHOVER_REQUEST_TTL_S`] after it
    /// was asked, so a switchover that could not be made then (this standby behind, or lost
    /// before it was handed the key) does not surprise anyone later.
    pub fn switchover(&mut self) -> Result<(), String> {
        let facts = self.control.facts();
        if facts.primary {
            return Err("this node is already the primary".into());
        }
        let leader = self.pilot.leader().clone();
        let request = Switchover {
            version: RECORDS_VERSION,
            to: self.config.node.clone(),
            epoch: leader.epoch,
        };
        let lease = self
            .coordinator
            .grant(SWITCHOVER_REQUEST_TTL_S)
            .map_err(|error| format!("{error}; nothing was asked"))?;
        self.switchover_lease = Some(lease);
        self.coordinator.request_switchover(&request, lease).map_err(|error| match error {
            // A write whose answer was lost may have taken effect all the same.
            CoordinatorError::Unreachable(_) => format!(
                "{error}; the request may have reached it all the same: see /v1/node before \
                 asking again"
            ),
            _ => error.to_string(),
        })?;
        log(format_args!("coordination: asked {} to hand over the leader key", leader.node));
        Ok(())
    }

    /// [`Coordination::withdraw_switchover`], on the driver's own thread: revokes the lease
    /// the request was written under.
    pub fn withdraw_switchover(&mut self) -> Result<(), String> {
        let Some(lease) = self.switchover_lease else { return Ok(()) };
        self.coordinator.revoke(lease).map_err(|error| error.to_string())?;
        self.switchover_lease = None;
        log(format_args!("coordination: withdrew the switchover request"));
        Ok(())
    }

    /// This node as the witness should list it: whom it follows, if it does. A standby whose
    /// journal failed follows nobody, whatever its pilot knows: it takes no record, so a
    /// primary must not name it in sync, and it must not stand in the way of one that can.
    fn member(&self, facts: &Facts) -> Member {
        let following = match self.pilot.state() {
            "standby" if facts.journal_failed.is_none() => {
                Some((self.pilot.leader().node.clone(), self.pilot.leader().epoch))
            }
            _ => None,
        };
        Member { version: RECORDS_VERSION, node: self.config.node.clone(), following }
    }

    /// Registers this node and whom it follows, under its lease.
    fn register(&mut self) {
        let member = self.member(&self.control.facts());
        self.register_as(&member);
    }

    fn register_as(&mut self, member: &Member) {
        if let Err(error) = self.coordinator.register(member, self.lease) {
            self.note(&format!("registering failed: {error}"));
        }
    }

    /// Registers this node again when the witness does not list it as it is: a registration
    /// that failed is retried, and a standby whose journal failed stops following.
    fn keep_registered(&mut self, view: &View, facts: &Facts) {
        let member = self.member(facts);
        if view.members.contains(&member) {
            return;
        }
        let listed = view.members.iter().find(|m| m.node == member.node);
        if facts.journal_failed.is_some() && listed.is_some_and(|m| m.following.is_some()) {
            log(format_args!(
                "coordination: this node's journal failed: it registers as following nobody, \
                 so no primary names it in sync; restart it once its disk is fixed"
            ));
        }
        self.register_as(&member);
    }

    /// [`Coordination::stop`]'s last act: a leader gives up the key. The node has stopped by
    /// then (every answer given, the replication stream still up), so a standby in sync is
    /// first named in the in-sync record, which trails the gate by a round or two: a clean
    /// stop then hands over at once, where a record naming nobody would leave the standby
    /// waiting for a primary that is not coming back.
    pub fn stop(&mut self) {
        if self.pilot.state() != "leader" {
            return;
        }
        // A leader still taking office leaves the record naming the nodes it named before.
        if !self.pilot.taking_office() {
            self.name_standby_before_leaving();
        }
        if self.coordinator.resign(self.pilot.leader()) == Ok(true) {
            log(format_args!("coordination: gave up the leader key on the way out"));
        }
    }

    /// Reads the witness and asks the pilot, at most [`ROUNDS_TO_NAME_STANDBY`] times, while the
    /// gate waits for a standby the record does not name yet. Nothing is written any more, so
    /// the pilot's mark (taken a round after the gate closed) is passed at once and the next
    /// round records the standby.
    fn name_standby_before_leaving(&mut self) {
        for _ in 0..ROUNDS_TO_NAME_STANDBY {
            let facts = self.control.facts();
            let in_sync = facts.policy == PolicyState::InSync && facts.gate == Gate::Standby;
            let named = self.pilot.recorded().is_some_and(|record| record.standby.is_some());
            if !in_sync || named || facts.mode == AckMode::Async || self.pilot.state() != "leader" {
                return;
            }
            // Only a record is carried out: a stopping node does not campaign or rejoin.
            let Ok(view) = self.coordinator.read() else { return };
            match self.pilot.on_view(self.control.now_ms(), &facts, &view) {
                Plan::Record { sync, after } => self.record(sync, after),
                Plan::Nothing => {}
                _ => return,
            }
        }
    }

    /// Logs `what`, a failure or why this node waits, as a warning, unless it was the last
    /// thing so logged (a failure repeating each round is said once).
    fn note(&mut self, what: &str) {
        if what != self.said {
            warn(format_args!("coordination: {what}"));
            self.said = what.to_owned();
        }
    }

    /// The figures that follow from the pilot alone: role, leader, lease, record.
    fn role_figures(&self) {
        let mut figures = self.figures.lock().expect("never poisoned");
        figures.node.clone_from(&self.config.node);
        figures.max_failover_loss = self.config.max_failover_loss;
        let taking_office = self.pilot.taking_office();
        figures.state = if taking_office { "taking_office" } else { self.pilot.state() }.into();
        let leader = self.pilot.leader();
        figures.leader = Some((leader.node.clone(), leader.epoch));
        let now = self.control.now_ms();
        figures.lease_remaining_ms = self.pilot.deadline_ms().map(|d| d.saturating_sub(now));
        if let Some(record) = self.pilot.recorded() {
            // Taking office, the record still names the nodes eligible before: no standby
            // of this leader yet.
            let standby = if taking_office { None } else { record.standby.clone() };
            figures.in_sync_standby = standby;
            figures.recorded_mode = Some(record.mode.clone());
        }
    }

    /// The figures after a round that read `view` (or failed with `error`); `took_key`: the
    /// round's campaign took the leader key after the view was read.
    fn figures(&self, view: &View, error: Option<&CoordinatorError>, took_key: bool) {
        self.role_figures();
        let mut figures = self.figures.lock().expect("never poisoned");
        match error {
            Some(error) => figures.witness = error.to_string(),
            // The pilot's leader, this node, as `role_figures` set it.
            None if took_key => figures.witness = "reachable".into(),
            None => {
                figures.witness = "reachable".into();
                // Who holds the key is what the witness shows, not the pilot's last leader:
                // nobody, once the key of a leader that died expired.
                figures.leader =
                    view.leader.as_ref().map(|(held, _)| (held.node.clone(), held.epoch));
                if view.leader.is_some() {
                    figures.waiting = None;
                }
            }
        }
    }
}

/// The facts of a node that has not started yet: its journal's end, its epochs, and whether
/// its directory is catching up (`DataDir::catching_up`).
#[must_use]
pub fn candidate_facts(
    available: Sequence,
    epoch_floor: u64,
    mode: AckMode,
    catching_up: bool,
) -> Facts {
    Facts {
        primary: false,
        policy: PolicyState::Alone,
        mode,
        gate: Gate::Local,
        acked: available,
        standby_last_ack: None,
        available,
        must_restart: None,
        epoch_floor,
        catching_up,
        standby_catching_up: false,
        journal_failed: None,
    }
}

#[cfg(test)]
mod tests {
    use ringfence_core::Timestamp;
    use ringfence_core::pipeline::ManualClock;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::coordination::pilot::Timing;
    use crate::coordination::store::MemoryCoordinator;

    /// The witness, shared, as one node reaches it: `lose_campaign_answer` makes its next
    /// campaign take effect and its answer never arrive (etcd committed the transaction and
    /// the call timed out, or the connection broke before the answer).
    struct LosingAnswers {
        witness: Arc<Mutex<MemoryCoordinator>>,
        lose_campaign_answer: bool,
        /// Registrations refused (the witness unreachable) before one goes through.
        refuse_registrations: usize,
        /// While set, lease grants fail as unreachable (etcd without a leader for a moment).
        refuse_grants: Arc<AtomicBool>,
        /// In-sync record writes that go through; later ones fail as unreachable, unwritten.
        sync_writes_left: Arc<AtomicUsize>,
        /// In-sync record writes are refused at the connection (nothing sent).
        refuse_sync_writes: Arc<AtomicBool>,
        /// Lease renewals time out.
        refuse_renewals: Arc<AtomicBool>,
    }

    /// The shared `witness`, every call answered.
    fn reach(witness: &Arc<Mutex<MemoryCoordinator>>) -> LosingAnswers {
        LosingAnswers {
            witness: Arc::clone(witness),
            lose_campaign_answer: false,
            refuse_registrations: 0,
            refuse_grants: Arc::new(AtomicBool::new(false)),
            sync_writes_left: Arc::new(AtomicUsize::new(usize::MAX)),
            refuse_sync_writes: Arc::new(AtomicBool::new(false)),
            refuse_renewals: Arc::new(AtomicBool::new(false)),
        }
    }

    impl Coordinator for LosingAnswers {
        fn grant(&mut self, ttl_s: u64) -> Result<LeaseId, CoordinatorError> {
            if self.refuse_grants.load(Ordering::Acquire) {
                return Err(CoordinatorError::Unreachable("a grant timed out".into()));
            }
            self.witness.lock().unwrap().grant(ttl_s)
        }
        fn keep_alive(&mut self, lease: LeaseId) -> Result<u64, CoordinatorError> {
            if self.refuse_renewals.load(Ordering::Acquire) {
                return Err(CoordinatorError::Unreachable("the renewal timed out".into()));
            }
            self.witness.lock().unwrap().keep_alive(lease)
        }
        fn read(&mut self) -> Result<View, CoordinatorError> {
            self.witness.lock().unwrap().read()
        }
        fn campaign(
            &mut self,
            leader: &LeaderValue,
            lease: LeaseId,
            sync_revision: i64,
            sync: &SyncRecord,
        ) -> Result<bool, CoordinatorError> {
            let won = self.witness.lock().unwrap().campaign(leader, lease, sync_revision, sync);
            if std::mem::take(&mut self.lose_campaign_answer) {
                return Err(CoordinatorError::Unreachable("the answer was lost".into()));
            }
            won
        }
        fn record_sync(
            &mut self,
            leader: &LeaderValue,
            sync: &SyncRecord,
        ) -> Result<bool, CoordinatorError> {
            if self.refuse_sync_writes.load(Ordering::Acquire) {
                return Err(CoordinatorError::Unsent("connection refused".into()));
            }
            let left = self.sync_writes_left.load(Ordering::Acquire);
            if left == 0 {
                return Err(CoordinatorError::Unreachable("the write timed out".into()));
            }
            self.sync_writes_left.store(left - 1, Ordering::Release);
            self.witness.lock().unwrap().record_sync(leader, sync)
        }
        fn resign(&mut self, leader: &LeaderValue) -> Result<bool, CoordinatorError> {
            self.witness.lock().unwrap().resign(leader)
        }
        fn register(&mut self, member: &Member, lease: LeaseId) -> Result<(), CoordinatorError> {
            if self.refuse_registrations > 0 {
                self.refuse_registrations -= 1;
                return Err(CoordinatorError::Unreachable("connection refused".into()));
            }
            self.witness.lock().unwrap().register(member, lease)
        }
        fn request_switchover(
            &mut self,
            request: &Switchover,
            lease: LeaseId,
        ) -> Result<(), CoordinatorError> {
            self.witness.lock().unwrap().request_switchover(request, lease)
        }
        fn revoke(&mut self, lease: LeaseId) -> Result<(), CoordinatorError> {
            self.witness.lock().unwrap().revoke(lease)
        }
    }

    /// `node`'s start-up on `coordinator`, with a 2 s lease.
    fn startup(node: &str, coordinator: LosingAnswers, clock: Arc<dyn Clock>) -> Startup {
        let config = CoordinationConfig {
            endpoints: Vec::new(),
            node: node.into(),
            timing: Timing::for_ttl(2),
            max_failover_loss: None,
        };
        Startup::try_connect(config, Box::new(coordinator), clock).map_err(|(_, e)| e).unwrap()
    }

    fn identity(node: &str) -> Identity {
        Identity {
            node: node.into(),
            replication: "127.0.0.1:7100".into(),
            http: None,
            max_failover_loss: None,
        }
    }

    #[test]
    fn a_candidate_whose_campaign_took_the_key_unanswered_starts_as_the_primary() {
        // Goal: etcd may commit a campaign whose answer never reaches the node. The key then
        // holds this node's value, bound to the lease it keeps renewing: a candidate that
        // took that for a leadership left over from before a restart would wait for the lease
        // to expire while renewing it, and nobody would ever lead. It starts as the primary
        // of the epoch its campaign took instead, with the record the campaign wrote.
        let witness = Arc::new(Mutex::new(MemoryCoordinator::new("c")));
        let coordinator = LosingAnswers { lose_campaign_answer: true, ..reach(&witness) };
        let mut startup = startup("a", coordinator, Arc::new(ManualClock::new(Timestamp(0))));
        let me = identity("a");
        let facts = candidate_facts(Sequence(0), 0, AckMode::Sync, false);
        let mut said = String::new();
        let lost = startup.decide_round(&me, &facts, &mut said).unwrap();
        assert!(lost.is_none(), "the campaign's answer was lost");
        let (held, lease) = witness.lock().unwrap().read().unwrap().leader.expect("the key");
        assert_eq!((held.node.as_str(), lease), ("a", startup.lease), "the campaign took it");
        let decided = (0..5).find_map(|_| startup.decide_round(&me, &facts, &mut said).unwrap());
        let Some(Decided::Primary { leader, sync }) = decided else {
            panic!("the candidate never started as the primary of the key it holds: {said}")
        };
        assert_eq!(leader, held);
        assert_eq!(Some(sync), witness.lock().unwrap().read().unwrap().sync);
    }

    /// A witness where `p` holds the key (its lease the witness's first) and the record names
    /// `b` in sync; `p`'s leader value.
    fn led_by_p_with_b_in_sync() -> (Arc<Mutex<MemoryCoordinator>>, LeaderValue) {
        let witness = Arc::new(Mutex::new(MemoryCoordinator::new("c")));
        let leader = {
            let mut witness = witness.lock().unwrap();
            let lease = witness.grant(2).unwrap();
            let (leader, sync) = recorded("p", Some("b"), 0);
            assert!(witness.campaign(&leader, lease, 0, &sync).unwrap());
            leader
        };
        (witness, leader)
    }

    /// The driver of `b`, a standby of `leader` on `witness` whose journal works, not running;
    /// its control and its node.
    fn standby_b(
        witness: &Arc<Mutex<MemoryCoordinator>>,
        leader: &LeaderValue,
    ) -> (Driver, Arc<Control>, ringfence_core::pipeline::Node) {
        let (control, node) = crate::control::tests::standby(false);
        control.use_journal(node.promoter());
        let clock = Arc::new(ringfence_core::pipeline::SystemClock::new());
        let startup = startup("b", reach(witness), clock);
        let decided = (identity("b"), Decided::Standby { leader: leader.clone() });
        let rejoin: Rejoin = Box::new(|why| panic!("no rejoin expected: {why}"));
        let driver = Driver::new(startup, decided, Arc::clone(&control), node.promoter(), rejoin);
        (driver, control, node)
    }

    #[test]
    fn a_switchover_request_lapses_on_its_own_while_the_standby_lives_on() {
        // Goal: a switchover asked and not made (the standby behind, or lost before it was
        // handed the key) does not stand for as long as the standby lives, to be made by
        // surprise once it is in sync again: it goes with a lease of its own, never renewed,
        // while the standby's own lease is renewed and it stays listed.
        let (witness, leader) = led_by_p_with_b_in_sync();
        let (mut driver, _control, _node) = standby_b(&witness, &leader);
        assert_eq!(driver.switchover(), Ok(()));
        let view = || witness.lock().unwrap().read().unwrap();
        let asked = view().switchover.expect("the request stands");
        assert_eq!((asked.to.as_str(), asked.epoch), ("b", leader.epoch));
        // Withdrawn (as `promote` does when it was not made in time), it goes at once.
        assert_eq!(driver.withdraw_switchover(), Ok(()));
        assert_eq!(view().switchover, None, "withdrawn");
        assert_eq!(driver.withdraw_switchover(), Ok(()), "nothing left to withdraw");
        assert_eq!(driver.switchover(), Ok(()));
        assert!(view().switchover.is_some(), "asked again");

        let ttl_ms = SWITCHOVER_REQUEST_TTL_S * 1_000;
        for now in (1_000..ttl_ms).step_by(1_000).chain([ttl_ms - 1, ttl_ms]) {
            let mut witness = witness.lock().unwrap();
            witness.now_ms = now;
            // The leader's lease, and the standby's (as its driver renews it).
            let leases: Vec<LeaseId> = [LeaseId(1), driver.lease].into();
            for lease in leases {
                assert!(witness.keep_alive(lease).unwrap() > 0, "{lease:?} lives at {now}");
            }
            let request = witness.read().unwrap().switchover;
            assert_eq!(request.is_some(), now < ttl_ms, "the request at {now} ms: {request:?}");
        }
        assert!(view().members.iter().any(|m| m.node == "b"), "the standby is still listed");
    }

    #[test]
    fn a_standby_that_took_the_key_shows_itself_as_the_leader_in_the_same_round() {
        // Goal: `/v1/node` of a node that took over names it as the leader at once. The
        // round's view of the witness was read before its campaign, when nobody held the key:
        // shown as it was, the new primary said `"leader": null` until its next round.
        let (witness, leader) = led_by_p_with_b_in_sync();
        let (mut driver, control, _node) = standby_b(&witness, &leader);
        driver.step();
        assert_eq!(driver.status().leader, Some(("p".into(), 1)), "p leads");
        // `p` stops renewing its lease; `b` renews its own until `p`'s expired.
        for now in (1_000..=3_000).step_by(1_000) {
            let mut witness = witness.lock().unwrap();
            witness.now_ms = now;
            assert!(witness.keep_alive(driver.lease).unwrap() > 0, "b's lease lives at {now}");
        }
        assert_eq!(witness.lock().unwrap().read().unwrap().leader, None, "p's key expired");

        driver.step();
        let (held, _) = witness.lock().unwrap().read().unwrap().leader.expect("b took the key");
        assert_eq!((held.node.as_str(), held.epoch), ("b", 2));
        assert!(control.is_primary(), "b sequences");
        let status = driver.status();
        assert_eq!(status.leader, Some(("b".into(), 2)), "{status:?}");
        assert_eq!(status.waiting, None, "{status:?}");
    }

    #[test]
    fn a_standby_registers_until_listed_and_follows_nobody_once_its_journal_failed() {
        // Goal: the witness lists a standby as following its leader, or the primary never
        // names it in sync and the pair has no failover. A registration refused at start is
        // made at the next round. Once the standby's journal failed it takes no record: it is
        // listed as following nobody, so no primary names it (or waits on it instead of a
        // standby that can write), and when the leader's lease expires it does not take the
        // key, saying why.
        let (witness, leader) = led_by_p_with_b_in_sync();
        let coordinator = LosingAnswers { refuse_registrations: 1, ..reach(&witness) };
        let (control, _replica) = crate::control::tests::standby(false);
        let node = crate::control::tests::node_failing_at(Sequence(3));
        control.use_journal(node.promoter());
        let startup =
            startup("b", coordinator, Arc::new(ringfence_core::pipeline::SystemClock::new()));
        let decided = Decided::Standby { leader: leader.clone() };
        let rejoin: Rejoin = Box::new(|why| panic!("no rejoin expected: {why}"));
        let mut driver =
            Driver::new(startup, (identity("b"), decided), control, node.promoter(), rejoin);
        let members = || witness.lock().unwrap().read().unwrap().members;
        assert_eq!(members(), [], "the registration at start was refused");

        driver.step();
        let following = |following: Option<(String, u64)>| {
            [Member { version: RECORDS_VERSION, node: "b".into(), following }]
        };
        assert_eq!(members(), following(Some(("p".into(), 1))));
        driver.step();
        assert_eq!(members(), following(Some(("p".into(), 1))), "listed, left as it is");

        assert_eq!(crate::control::tests::reserve(&node, 1..=3), [true; 3]);
        assert_eq!(node.promoter().journal_fence(), Some(Sequence(3)));
        driver.step();
        assert_eq!(members(), following(None));

        witness.lock().unwrap().now_ms = 10_000;
        driver.step();
        let view = witness.lock().unwrap().read().unwrap();
        assert_eq!(view.leader, None, "nobody took the key");
        let waiting = driver.status().waiting.unwrap_or_default();
        assert!(waiting.contains("b's journal failed after sequence 2"), "{waiting}");
    }

    /// The leader key and in-sync record of `primary`, leading in epoch 1 with `standby` in
    /// sync (or none) and its journal at `primary_last`.
    fn recorded(
        primary: &str,
        standby: Option<&str>,
        primary_last: u64,
    ) -> (LeaderValue, SyncRecord) {
        let leader = LeaderValue {
            version: RECORDS_VERSION,
            node: primary.into(),
            epoch: 1,
            replication: "127.0.0.1:7101".into(),
            http: None,
        };
        let sync = SyncRecord {
            version: RECORDS_VERSION,
            epoch: 1,
            primary: primary.into(),
            standby: standby.map(Into::into),
            mode: AckMode::Sync.name().into(),
            primary_last,
        };
        (leader, sync)
    }

    #[test]
    fn a_waiting_candidate_whose_lease_expired_waits_out_a_failed_grant() {
        // Goal: a candidate waits out every witness error at start ("a node waits for etcd").
        // Here `b` waits, since the record names `a` alone; its lease expires (the process was
        // paused, or cut off from etcd past the TTL), and the grant of a new one fails once.
        // `b` goes on waiting, where an error would make `serve` exit, and the next round
        // grants it a new lease.
        let witness = Arc::new(Mutex::new(MemoryCoordinator::new("c")));
        {
            let mut witness = witness.lock().unwrap();
            let lease = witness.grant(1).unwrap();
            let (leader, sync) = recorded("a", None, 10);
            assert!(witness.campaign(&leader, lease, 0, &sync).unwrap());
            witness.now_ms = 5_000;
        }
        let coordinator = reach(&witness);
        let refuse_grants = Arc::clone(&coordinator.refuse_grants);
        let mut startup = startup("b", coordinator, Arc::new(ManualClock::new(Timestamp(0))));
        let (me, facts) = (identity("b"), candidate_facts(Sequence(10), 1, AckMode::Sync, false));
        let mut said = String::new();
        assert!(startup.decide_round(&me, &facts, &mut said).unwrap().is_none());
        assert!(said.contains("does not let b take over"), "{said}");
        let expired = startup.lease;

        witness.lock().unwrap().now_ms = 20_000;
        refuse_grants.store(true, Ordering::Release);
        let round = startup.decide_round(&me, &facts, &mut said);
        assert!(matches!(round, Ok(None)), "b gave up on one failed grant: {:?}", round.err());
        assert!(said.contains("no new one was granted"), "{said}");

        refuse_grants.store(false, Ordering::Release);
        assert!(startup.decide_round(&me, &facts, &mut said).unwrap().is_none());
        assert!(said.contains("does not let b take over"), "{said}");
        assert_ne!(startup.lease, expired, "granted again");
        assert!(witness.lock().unwrap().keep_alive(startup.lease).unwrap() > 0);
    }

    /// The primary `a` on the shared witness `reach` leads to, in office: its driver, not
    /// running, its control and its node.
    fn primary(reach: LosingAnswers) -> (Driver, Arc<Control>, ringfence_core::pipeline::Node) {
        let clock = Arc::new(ringfence_core::pipeline::SystemClock::new());
        let mut startup = startup("a", reach, clock);
        let (me, facts) = (identity("a"), candidate_facts(Sequence(0), 1, AckMode::Sync, false));
        let mut said = String::new();
        let decided = (0..5)
            .find_map(|_| startup.decide_round(&me, &facts, &mut said).unwrap())
            .expect("an empty witness lets a lead");
        let Decided::Primary { leader, .. } = &decided else { panic!("a leads: {said}") };
        let epoch = Epoch(leader.epoch);
        let (control, node) = crate::control::tests::standby(false);
        control.use_journal(node.promoter());
        assert_eq!(control.promote_to(&node.promoter(), epoch), Ok(epoch));
        let rejoin: Rejoin = Box::new(|why| panic!("no rejoin expected: {why}"));
        let decided = (me, decided);
        let mut driver =
            Driver::new(startup, decided, Arc::clone(&control), node.promoter(), rejoin);
        driver.step();
        assert_eq!(driver.status().state, "leader", "it took office");
        (driver, control, node)
    }

    fn recorded_mode(witness: &Arc<Mutex<MemoryCoordinator>>) -> AckMode {
        witness.lock().unwrap().read().unwrap().sync.expect("a record").ack_mode()
    }

    #[test]
    fn a_switch_to_async_is_written_once_and_made_once_the_witness_answered() {
        // Goal: the primary switches to `async` once the witness answered that it records it.
        // The record is written once: a second write, whose answer may be lost, would leave
        // the primary in `sync` while the operator is told the switch was made.
        let witness = Arc::new(Mutex::new(MemoryCoordinator::new("c")));
        let coordinator = reach(&witness);
        let sync_writes_left = Arc::clone(&coordinator.sync_writes_left);
        let (mut driver, control, _node) = primary(coordinator);
        assert_eq!(control.facts().mode, AckMode::Sync);

        sync_writes_left.store(1, Ordering::Release);
        assert_eq!(driver.set_mode(AckMode::Async), Ok(()));
        assert_eq!(recorded_mode(&witness), AckMode::Async);
        assert_eq!(control.facts().mode, AckMode::Async, "told it switched, it runs async");
        assert_eq!(sync_writes_left.load(Ordering::Acquire), 0, "one write");
    }

    #[test]
    fn a_failing_renewal_is_warned_of_once_whatever_else_is_noted_between() {
        // Goal: renewals failing round after round are said once, and so is another failure
        // noted between them (each used to displace the other and both came back every
        // round); the renewal that works again is said.
        let witness = Arc::new(Mutex::new(MemoryCoordinator::new("c")));
        let coordinator = reach(&witness);
        let refuse = Arc::clone(&coordinator.refuse_renewals);
        let (mut driver, control, _node) = primary(coordinator);
        refuse.store(true, Ordering::Release);
        let said = crate::control::tests::warnings(|| {
            for _ in 0..3 {
                driver.renew(control.now_ms());
                driver.note("writing the in-sync record failed: the write timed out");
            }
            refuse.store(false, Ordering::Release);
            driver.renew(control.now_ms());
        });
        let count = |what: &str| said.iter().filter(|line| line.contains(what)).count();
        assert_eq!(count("lease renewal failed: the witness is unreachable"), 1, "{said:#?}");
        assert_eq!(count("writing the in-sync record failed"), 1, "{said:#?}");
        assert_eq!(count("the witness renews the lease again"), 1, "{said:#?}");
    }

    #[test]
    fn a_switch_to_async_never_sent_says_nothing_was_recorded_and_is_never_made() {
        // Goal: with no witness member taking the connection the write was never sent: the
        // operator is told nothing was recorded (not that it may have been), and the primary
        // does not make the switch later when it reads the record.
        let witness = Arc::new(Mutex::new(MemoryCoordinator::new("c")));
        let coordinator = reach(&witness);
        let refuse = Arc::clone(&coordinator.refuse_sync_writes);
        let (mut driver, control, _node) = primary(coordinator);
        refuse.store(true, Ordering::Release);
        let told = driver.set_mode(AckMode::Async).unwrap_err();
        assert!(told.ends_with("nothing was recorded, and the mode stays sync"), "{told}");
        assert!(!told.contains("may have been recorded"), "{told}");
        refuse.store(false, Ordering::Release);
        driver.step();
        assert_eq!(recorded_mode(&witness), AckMode::Sync);
        assert_eq!(control.facts().mode, AckMode::Sync);
    }

    #[test]
    fn a_mode_switch_answered_nothing_changed_is_never_made() {
        // Goal: an admin call whose wait ran out (the driver's round hung on a witness whose
        // members time out) is answered "nothing changed", and that holds: the driver, reaching
        // the queued request later, leaves it undone, so the witness and the primary stay in
        // `sync`. A request the driver begins while its asker waits is made and answered.
        let witness = Arc::new(Mutex::new(MemoryCoordinator::new("c")));
        let (mut driver, control, _node) = primary(reach(&witness));
        let (requests, inbox) = mpsc::channel();
        let figures = Arc::clone(&driver.figures);
        let coordination = |timeout| Coordination {
            requests: Mutex::new(requests.clone()),
            figures: Arc::clone(&figures),
            thread: Mutex::new(None),
            timeout,
        };

        let told = coordination(Duration::from_millis(10)).set_mode(AckMode::Async);
        assert_eq!(told, Err("the witness did not answer in time; nothing changed".into()));
        assert!(driver.serve(inbox.try_recv().expect("queued")), "the driver goes on");
        assert_eq!(recorded_mode(&witness), AckMode::Sync, "told \"nothing changed\"");
        assert_eq!(control.facts().mode, AckMode::Sync, "told \"nothing changed\"");

        let patient = coordination(Duration::from_secs(60));
        let asking = thread::spawn(move || patient.set_mode(AckMode::Async));
        assert!(driver.serve(inbox.recv_timeout(Duration::from_secs(20)).expect("queued")));
        assert_eq!(asking.join().unwrap(), Ok(()));
        assert_eq!(recorded_mode(&witness), AckMode::Async);
        assert_eq!(control.facts().mode, AckMode::Async);
    }
}
