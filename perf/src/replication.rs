//! `replication`: what a hot standby costs a reservation, and how long a failover takes.
//!
//! A primary and a standby run in this process, each with its own journal in a temporary
//! directory and its own `Control`, the standby following the primary over loopback TCP —
//! wired as `ringfence serve` wires them: the node's replicator is `control.link().stage()`, the
//! standby's node takes records (`Intake::Replica`) through the session its follower drives.
//! Every row of a table runs in the same process and run, one fresh pair per mode:
//!
//! - `local_only` / `local_only_written`: the primary alone with `NoReplicator` — the
//!   baselines, journal durability `batch` (msync per batch) and `none` (written to the map).
//! - `async`: a standby follows, answers wait for the local journal only (durability `batch`).
//! - `sync`: answers wait for the standby's acknowledgement too; `batch` on both nodes.
//! - `sync_written`: `sync` with durability `none` on both nodes: an answer leaves once the
//!   command is written in both machines' memory (LMAX's trade: two memories for one fsync).
//!
//! The replicated modes measure only once the primary reports `in_sync`, and between loads
//! until the standby has acknowledged everything. The in-process table submits through a
//! `Session` on the primary; the TCP table through the ingress server's binary protocol, with
//! `net::drive_up_to`. Both generators are open loop at fixed rates, latency from each command's
//! intended send time (no coordinated omission), plus a `max` row with a fixed window in flight
//! measured from the actual submit.
//!
//! Failover: a pair in `sync` mode under light load; the primary is "killed" (its load stops
//! and its replication is stopped, so the standby gets nothing more) and the standby is
//! promoted at once and answers one reservation. Time runs from the kill.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringfence_core::pipeline::{
    Clock, EgressDriver, Intake, NoReplicator, NoSnapshots, Node, NodeConfig, NodeParts,
    PUBLISH_PERIOD, Pins, Refused, Session, SystemClock, Topology, WaitStrategy, WakeHook,
};
use ringfence_core::{
    Action, Command, CreateSku, EngineConfig, Epoch, Outcome, RequestKey, Sequence, SkuId,
};
use ringfence_ingress::backend::EngineWatch;
use ringfence_ingress::{HashWatch, NodeBackend, ServerConfig};
use ringfence_journal::datadir::DataDir;
use ringfence_journal::epoch::Epochs;
use ringfence_journal::recovery::recover;
use ringfence_journal::spare::DISK_CHECK_EVERY;
use ringfence_journal::storage::FileStorage;
use ringfence_journal::writer::{Durability, WriterOptions};
use ringfence_replicator::auth::{ClusterId, ClusterSecret};
use ringfence_replicator::config::ReplicationConfig;
use ringfence_replicator::control::{Control, Figures, Role};
use ringfence_replicator::policy::AckMode;

use crate::journal::BenchDir;
use crate::net::{self, BinaryReserve, HOT_SKU, HOT_STOCK, Load, reserve_command};
use crate::pipeline::{CpuWatch, machine_load};
use crate::report::{
    Ratios, Report, Row, SETTLED, format_ns, latency_histogram, record_unanswered,
};
use crate::{Common, Size};

/// The pair's shared secret (32 bytes; never sent, the handshake proves it).
const SECRET: &[u8; 32] = b"ringfence-perf-bench-secret-32b!";
/// Orders each engine can hold: every reservation of a mode's run stays live (no capacity
/// refusals, no expiry mid-run), and the two engines stay a few hundred megabytes.
const ORDERS_MAX: u32 = 1 << 19;
/// How long a generator waits for the last answers of a row.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// How long a pair may take to reach `in_sync`, or to settle between loads.
const SYNC_LIMIT: Duration = Duration::from_secs(30);
/// Journal segment size (`ringfence serve`'s default).
const SEGMENT_BYTES: u64 = 64 << 20;

/// What is measured: one node, or a pair with an acknowledgement mode, at a durability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mode {
    name: &'static str,
    durability: Durability,
    /// The acknowledgement mode, or `None` for a primary alone.
    ack: Option<AckMode>,
}

const fn mode(name: &'static str, durability: Durability, ack: Option<AckMode>) -> Mode {
    Mode { name, durability, ack }
}

const LOCAL_ONLY: Mode = mode("local_only", Durability::Batch, None);
const SYNC: Mode = mode("sync", Durability::Batch, Some(AckMode::Sync));
const SYNC_WRITTEN: Mode = mode("sync_written", Durability::None, Some(AckMode::Sync));

/// The table's rows, baselines first.
const MODES: [Mode; 5] = [
    LOCAL_ONLY,
    mode("local_only_written", Durability::None, None),
    mode("async", Durability::Batch, Some(AckMode::Async)),
    SYNC,
    SYNC_WRITTEN,
];

impl Mode {
    /// What an answer waits for, in words.
    fn answer_waits_for(self) -> &'static str {
        match (self.ack, self.durability) {
            (Some(AckMode::Sync), Durability::None) => "write on both",
            (Some(AckMode::Sync), _) => "msync on both",
            (_, Durability::None) => "local write",
            (_, _) => "local msync",
        }
    }
}

/// Loads, durations and repetitions of a run.
struct Plan {
    rates: Vec<u64>,
    /// Seconds per load.
    seconds: f64,
    /// Commands in flight for the `max` rows.
    window: u32,
    /// The most commands a `max` row submits (it also stops after `seconds`).
    max_commands: u64,
    /// Connections of the TCP generator.
    connections: usize,
    /// Failover repetitions, each with a fresh pair.
    failovers: usize,
    /// Light load on the primary before each kill.
    failover_load: Duration,
}

impl Plan {
    fn new(size: Size) -> Plan {
        let seconds = size.seconds(0.5, 3.0);
        let max_commands = size.count(100_000, 250_000, 100);
        // At least one failover, after at least a few light-load answers.
        let failovers = size.count(5, 20, 1) as usize;
        let failover_load = Duration::from_millis(size.count(200, 500, 20));
        let (window, connections) = (1_024, 16);
        Plan {
            rates: vec![2_000, 10_000, 50_000],
            seconds,
            window,
            max_commands,
            connections,
            failovers,
            failover_load,
        }
    }

    /// The loads of a table, rates first; `None` is the `max` row.
    fn loads(&self) -> Vec<Option<u64>> {
        self.rates.iter().copied().map(Some).chain([None]).collect()
    }

    /// The most commands one mode's pair receives over all loads (plus a margin for setup).
    fn commands_per_mode(&self) -> u64 {
        let rated: f64 = self.rates.iter().map(|&rate| rate as f64 * self.seconds).sum();
        rated as u64 + self.max_commands + WARM_UP_COMMANDS + 1_000
    }
}

/// Reservations each pair takes at the `max` rows' window before its loads (at most; it also
/// stops after a load's duration), not counted: the first load is not the pair's first pass
/// through the path.
const WARM_UP_COMMANDS: u64 = 10_000;

fn load_name(load: Option<u64>) -> String {
    match load {
        Some(rate) => format!("{}k/s", rate / 1_000),
        None => "max".to_owned(),
    }
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        shard: 1,
        skus_max: 64,
        orders_max: ORDERS_MAX,
        coupons_max: 1_024,
        batches_max: 16,
        holdings_max: 1_024,
        request_keys_max: ORDERS_MAX,
        request_key_window_ms: 60_000,
        // Workloads with few users and many commands: no per-user quotas.
        request_keys_per_user_max: 0,
        orders_per_user_max: 0,
        order_qty_max: 10,
    }
}

/// Compact topology (one processor thread: journal, replicator stage and BLP per batch),
/// egress polled by whoever holds a session (as `ringfence serve` runs a compact primary; a
/// standby's runs on a thread), spin-then-park waits, nothing pinned.
fn node_config(intake: Intake, recovered_epoch: Epoch) -> NodeConfig {
    NodeConfig {
        ring_size: 1 << 14,
        engine: engine_config(),
        epoch: recovered_epoch,
        intake,
        tick_period_ms: 10,
        topology: Some(Topology::Compact),
        wait: WaitStrategy::DEFAULT,
        egress: EgressDriver::Polled,
        pins: Pins::none(),
        sessions_max: 8,
        session_pending_max: 1 << 14,
        ..NodeConfig::default()
    }
}

/// Numbers the temporary directories of this process apart.
static DIRS: AtomicU64 = AtomicU64::new(0);

/// One node of a pair: the node, its replication (none for a baseline), its directory.
struct Member {
    node: Option<Node>,
    control: Option<Arc<Control>>,
    watch: Arc<EngineWatch>,
    /// The journal's data directory handle (epoch file), shared with the writer.
    data_dir: DataDir<FileStorage>,
    // Last: the directory goes once the node is shut down.
    _dir: BenchDir,
}

impl Member {
    /// Recovers a fresh journal and starts a node on it for `mode`: a primary (`following` is
    /// `None`) or a standby of the primary at that replication address.
    fn start(mode: Mode, following: Option<SocketAddr>) -> Member {
        let role_tag = if following.is_some() { "standby" } else { "primary" };
        let dir =
            BenchDir::new(&format!("repl-{}-{role_tag}", DIRS.fetch_add(1, Ordering::Relaxed)));
        let options = WriterOptions {
            segment_len: SEGMENT_BYTES,
            durability: mode.durability,
            engine_config: engine_config(),
        };
        let mut recovered = recover(&dir.0, options).expect("a fresh journal recovers");
        // As `ringfence serve` runs its journal.
        recovered
            .writer
            .prepare_segments_ahead(DISK_CHECK_EVERY)
            .expect("the spare segment's helper starts");
        let intake = if following.is_some() { Intake::Replica } else { Intake::Sequencer };
        let mut config = node_config(intake, recovered.epochs.current);
        if following.is_some() {
            // As `ringfence serve` runs a standby: egress on its own thread, delivering the
            // answers its follower waits for.
            config.egress = EgressDriver::Thread;
        }
        let (hook, watch) = HashWatch::new(NoSnapshots, &recovered.engine);
        let (engine, next, writer) = (recovered.engine, recovered.next_sequence, recovered.writer);
        let data_dir = writer.data_dir().clone();
        let Some(ack) = mode.ack else {
            let node =
                Node::start_with(config, engine, next, writer, NoReplicator::default(), hook)
                    .expect("the baseline node starts");
            return Member { node: Some(node), control: None, watch, data_dir, _dir: dir };
        };
        let role = match following {
            Some(primary) => Role::Standby { primary: primary.to_string() },
            None => Role::Primary,
        };
        let secret = ClusterSecret::from_bytes(SECRET).expect("a 32-byte secret");
        let cluster = ClusterId::new("bench").expect("a valid cluster id");
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut replication =
            ReplicationConfig::new(listen, cluster, secret, engine_config(), dir.0.clone());
        replication.mode = ack;
        // As `ringfence serve` sets it: a journal that answers before it syncs makes a primary
        // answering without its standby sync first.
        replication.answers_after_sync = mode.durability == Durability::Batch;
        let end = (Sequence(next.0 - 1), recovered.last_epoch);
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let epochs = Box::new(data_dir.clone());
        let control = Control::new(replication, role, end, epochs, Arc::clone(&clock));
        let replicator = control.link().stage();
        let parts =
            NodeParts { engine, next_sequence: next, journal: writer, replicator, hook, clock };
        let node = Node::start_parts(config, parts).expect("the replicated node starts");
        control.start(&node).expect("replication starts");
        Member { node: Some(node), control: Some(control), watch, data_dir, _dir: dir }
    }

    fn node(&self) -> &Node {
        self.node.as_ref().expect("the node runs until the member is shut down")
    }

    fn control(&self) -> &Arc<Control> {
        self.control.as_ref().expect("a replicated member has a control")
    }

    /// Shuts the node down (if still here; a failed drain is reported), then its replication,
    /// in the order `ringfence serve` does.
    fn shutdown(mut self) {
        if let Some(node) = self.node.take() {
            if let Err(error) = node.shutdown() {
                eprintln!("ringfence-perf replication: a node did not shut down cleanly: {error}");
            }
        }
        if let Some(control) = &self.control {
            control.stop();
        }
    }
}

/// A primary, and a standby following it when the mode replicates.
struct Pair {
    primary: Member,
    standby: Option<Member>,
}

impl Pair {
    /// Starts the pair, creates the sale's SKU on the primary and, when replicated, waits
    /// until the primary reports the standby `in_sync`.
    fn start(mode: Mode) -> Pair {
        let primary = Member::start(mode, None);
        create_sku(primary.node());
        let standby = mode.ack.map(|_| {
            let addr = primary.control().listen_addr().expect("the primary listens");
            Member::start(mode, Some(addr))
        });
        let pair = Pair { primary, standby };
        pair.settle();
        pair
    }

    /// Waits until the standby (if any) is in sync and has acknowledged all the primary holds.
    fn settle(&self) {
        if self.standby.is_none() {
            return;
        }
        let control = self.primary.control();
        wait_for(control, "in sync with nothing outstanding", |figures| {
            figures.state == "in_sync" && figures.lag_records == 0
        });
    }

    /// The primary shuts down first (in `sync` its last answers need the standby), then the
    /// standby.
    fn shutdown(self) {
        self.primary.shutdown();
        if let Some(standby) = self.standby {
            standby.shutdown();
        }
    }
}

/// Polls the primary's figures until `ready`, for at most `SYNC_LIMIT`.
fn wait_for(control: &Control, what: &str, ready: impl Fn(&Figures) -> bool) {
    let deadline = Instant::now() + SYNC_LIMIT;
    loop {
        let figures = control.figures();
        if ready(&figures) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the pair never got {what}: state {}, {} records behind",
            figures.state,
            figures.lag_records
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The sale: one SKU with stock no run exhausts and no per-user limit, so every reservation
/// of a distinct user succeeds (all answers are `Reserved`; anything else is counted).
fn create_sku(node: &Node) {
    let mut session = node.session().expect("a session for the setup");
    let create = Command::Client {
        key: RequestKey::from_u128(u128::MAX),
        action: Action::CreateSku(CreateSku {
            sku: SkuId(HOT_SKU),
            stock: HOT_STOCK,
            price_cents: 100,
            per_user_limit: 0,
            payment_timeout_ms: 3_600_000,
            sale_start: None,
            sale_end: None,
        }),
    };
    let outcome = session.call(create, DRAIN_LIMIT).expect("the SKU is created");
    assert!(matches!(outcome, Outcome::SkuCreated(_)), "SKU not created: {outcome:?}");
}

/// Wakes this thread's timed sleeps on time (the default timer slack is 50 µs), so an
/// open-loop generator sends when it means to. Only the calling thread changes: the node's
/// threads keep the default.
fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and changes only the calling
    // thread's timer slack; no memory is passed.
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

/// What one in-process load saw.
struct Run {
    histogram: Histogram<u64>,
    answered: u64,
    /// Answers that were not `Reserved` (none expected).
    refused: u64,
    /// Commands refused `Busy` at intake (open loop: dropped and counted).
    busy: u64,
    /// Commands never answered within the drain limit.
    lost: u64,
    seconds: f64,
}

/// Submission state of one generator run.
struct Offer {
    load: Option<u64>,
    count: u64,
    first_index: u64,
    /// Nanoseconds on the run's clock: when the first command is due (rate) or the run began.
    begin: u64,
    /// The `max` row stops submitting at this time.
    stop_submitting: u64,
    next: u64,
    in_flight: u64,
    window: u64,
    /// Intended (rate) or actual (window) submit time of each command, by token.
    sent_at: Vec<u64>,
}

impl Offer {
    /// When command `next` is due, for a fixed rate.
    fn due(&self, rate: u64) -> u64 {
        self.begin + self.next * 1_000_000_000 / rate
    }

    /// Submits everything due now; returns the number refused `Busy` at intake.
    fn submit_due(&mut self, session: &mut Session, now: u64) -> u64 {
        let mut busy = 0;
        while self.next < self.count {
            let at = match self.load {
                Some(rate) => self.due(rate),
                // For the duration, and one window however late the generator starts.
                None if self.in_flight < self.window
                    && (now < self.stop_submitting || self.next < self.window) =>
                {
                    now
                }
                None => break,
            };
            if at > now {
                break;
            }
            self.sent_at[self.next as usize] = at;
            let command = reserve_command(0, self.first_index + self.next);
            match session.try_submit(command, self.next) {
                Ok(_) => {
                    self.next += 1;
                    self.in_flight += 1;
                }
                Err(Refused::Busy | Refused::SessionFull) if self.load.is_some() => {
                    self.sent_at[self.next as usize] = SETTLED;
                    busy += 1;
                    self.next += 1;
                }
                Err(Refused::Busy | Refused::SessionFull) => break,
                Err(other) => panic!("the primary refused a reservation: {other}"),
            }
        }
        busy
    }
}

/// Offers `count` reservations at `load` through a session on `node` and records, for each
/// answer, the time it was seen minus its intended (or, for `max`, actual) submit time. The
/// calling thread must be the one the node's egress waker unparks.
fn generate(node: &Node, plan: &Plan, load: Option<u64>, count: u64, first_index: u64) -> Run {
    let mut session = node.session().expect("a generator session");
    let clock = Instant::now();
    let now = || clock.elapsed().as_nanos() as u64;
    let begin = now() + if load.is_some() { 1_000_000 } else { 0 };
    let mut offer = Offer {
        load,
        count,
        first_index,
        begin,
        stop_submitting: begin + (plan.seconds * 1e9) as u64,
        next: 0,
        in_flight: 0,
        window: u64::from(plan.window),
        sent_at: vec![0; count as usize],
    };
    let mut histogram = latency_histogram();
    let (mut answered, mut refused, mut busy, mut last_answer) = (0u64, 0u64, 0u64, begin);
    let give_up = DRAIN_LIMIT + Duration::from_secs_f64(plan.seconds);
    loop {
        busy += offer.submit_due(&mut session, now());
        while let Some(completion) = session.poll() {
            last_answer = now();
            let sent = std::mem::replace(&mut offer.sent_at[completion.token as usize], SETTLED);
            assert_ne!(sent, SETTLED, "a second answer for command {}", completion.token);
            histogram.saturating_record(last_answer.saturating_sub(sent).max(1));
            offer.in_flight -= 1;
            answered += 1;
            if !matches!(completion.result, Ok(Outcome::Reserved { .. })) {
                refused += 1;
            }
        }
        let submitted_all = offer.next == count
            || (load.is_none() && now() >= offer.stop_submitting && offer.next >= offer.window);
        if (submitted_all && offer.in_flight == 0) || clock.elapsed() > give_up {
            break;
        }
        // Parked until the next command is due, or until egress has answers (its waker
        // unparks this thread); the 1 ms bound is a second line of defence.
        let pause = match load {
            Some(rate) if offer.next < count => offer.due(rate).saturating_sub(now()),
            _ => 1_000_000,
        };
        if pause > 0 {
            std::thread::park_timeout(Duration::from_nanos(pause.min(1_000_000)));
        }
    }
    // Given up on: each in the distribution at the time it waited.
    let submitted = &offer.sent_at[..offer.next as usize];
    let lost = record_unanswered(&mut histogram, submitted, now());
    assert_eq!(lost, offer.in_flight, "what is in flight is what went unanswered");
    let seconds = last_answer.saturating_sub(begin) as f64 / 1e9;
    Run { histogram, answered, refused, busy, lost, seconds }
}

/// One mode in-process: a fresh pair, every load in turn through a session on the primary.
/// How long a new pair is left before its idle cost is measured.
const IDLE_AFTER_START: Duration = Duration::from_secs(1);

/// How long a pair's idle cost is measured.
fn idle_seconds(plan: &Plan) -> f64 {
    plan.seconds.clamp(1.0, 2.0)
}

/// Also returns the share of a core the process used with the pair idle (in sync, where a
/// standby follows) before the loads.
fn inprocess_mode(plan: &Plan, mode: Mode) -> (Vec<(Option<u64>, Row)>, f64) {
    let pair = Pair::start(mode);
    // After what starting leaves running (the spare segment, the snapshot writer's shadow).
    std::thread::sleep(IDLE_AFTER_START);
    let idle = crate::net::idle_share_over(idle_seconds(plan));
    let mut rows = Vec::new();
    let mut first_index = 0;
    std::thread::scope(|scope| {
        let generator = std::thread::Builder::new()
            .name("generator".into())
            .spawn_scoped(scope, || {
                tighten_timer_slack();
                let me = std::thread::current();
                let wake: WakeHook = Arc::new(move || me.unpark());
                assert!(pair.primary.node().set_egress_waker(wake), "egress is polled");
                let node = pair.primary.node();
                generate(node, plan, None, WARM_UP_COMMANDS, first_index);
                first_index += WARM_UP_COMMANDS;
                pair.settle();
                let mut before = Batches::read(&pair);
                for load in plan.loads() {
                    let count = match load {
                        Some(rate) => (rate as f64 * plan.seconds) as u64,
                        None => plan.max_commands,
                    };
                    let run = generate(pair.primary.node(), plan, load, count, first_index);
                    first_index += count;
                    pair.settle();
                    let after = Batches::read(&pair);
                    let row = after.since(&before).context(inprocess_row(mode, load, run));
                    rows.push((load, row));
                    before = after;
                }
            })
            .expect("the generator thread starts");
        generator.join().expect("the generator thread");
    });
    pair.shutdown();
    (rows, idle)
}

/// The processor batches each node of a pair ran: every batch ends with one journal flush (an
/// msync under durability `batch`), and the standby's follower waits for that flush before it
/// acknowledges the stream message it submitted.
struct Batches {
    primary: Histogram<u64>,
    standby: Option<Histogram<u64>>,
}

impl Batches {
    /// The batch-size histograms so far (read after a metrics publish period, so they hold
    /// everything the pair did before this call).
    fn read(pair: &Pair) -> Batches {
        std::thread::sleep(PUBLISH_PERIOD + Duration::from_millis(10));
        let batches = |node: &Node| {
            let metrics = node.metrics();
            let stage = metrics.stage("processor").expect("a compact node has a processor");
            stage.batch_sizes.clone()
        };
        let standby = pair.standby.as_ref().map(|standby| batches(standby.node()));
        Batches { primary: batches(pair.primary.node()), standby }
    }

    /// What was added since `before`.
    fn since(&self, before: &Batches) -> Batches {
        let less = |now: &Histogram<u64>, then: &Histogram<u64>| {
            let mut added = now.clone();
            added.subtract(then).expect("batch histograms only grow");
            added
        };
        let standby = self.standby.as_ref().zip(before.standby.as_ref());
        Batches {
            primary: less(&self.primary, &before.primary),
            standby: standby.map(|(now, then)| less(now, then)),
        }
    }

    /// Adds the batch counts and mean sizes to `row`.
    fn context(&self, row: Row) -> Row {
        let mean = |h: &Histogram<u64>| (h.mean() * 10.0).round() / 10.0;
        let row = row
            .with("primary_batches", self.primary.len())
            .with("primary_batch_mean", mean(&self.primary));
        match &self.standby {
            Some(standby) => {
                row.with("standby_batches", standby.len()).with("standby_batch_mean", mean(standby))
            }
            None => row,
        }
    }
}

/// A line under a replicated row: how many batches (journal flushes) each node ran for it.
fn batches_note(row: &Row) -> Option<String> {
    let field = |key: &str| row.context.get(key).map(ToString::to_string);
    Some(format!(
        "    {}: primary {} batches (mean {} commands), standby {} batches (mean {})",
        row.variant,
        field("primary_batches")?,
        field("primary_batch_mean")?,
        field("standby_batches")?,
        field("standby_batch_mean")?
    ))
}

/// A line under a row whose commands were not all answered `Reserved`: how many were refused
/// at intake (`busy`: a full ring or session queue, dropped in open loop), answered otherwise
/// (`refused`, `failed`) or never answered (`lost`).
fn shortfall_note(row: &Row) -> Option<String> {
    let counts: Vec<String> = ["busy", "refused", "failed", "lost"]
        .into_iter()
        .filter_map(|key| {
            let count = row.context.get(key)?.as_u64()?;
            (count > 0).then(|| format!("{count} {key}"))
        })
        .collect();
    (!counts.is_empty()).then(|| format!("    {}: {}", row.variant, counts.join(", ")))
}

fn inprocess_row(mode: Mode, load: Option<u64>, run: Run) -> Row {
    let scenario = format!("inproc@{}", load_name(load));
    let row = Row::new(&scenario, mode.name, run.answered, run.seconds, run.histogram);
    mode_context(row, mode)
        .with("offered_per_sec", load.map_or_else(|| "max".into(), serde_json::Value::from))
        .with("latency_from", if load.is_some() { "intended_send" } else { "submit" })
        .with("busy", run.busy)
        .with("refused", run.refused)
        .with("lost", run.lost)
}

fn mode_context(row: Row, mode: Mode) -> Row {
    row.with("mode", mode.name)
        .with("durability", mode.durability.to_string())
        .with("ack", mode.ack.map_or("none", AckMode::name))
        .with("answer_waits_for", mode.answer_waits_for())
        .with("standby_egress", if mode.ack.is_some() { "thread" } else { "no standby" })
        .with("topology", "compact")
        .with("wait", WaitStrategy::DEFAULT.name())
        .with("pinning", "none")
}

/// One mode over loopback TCP: a fresh pair, the primary behind the ingress server, every load
/// in turn from the `net` generator (one mio thread, pipelined binary connections).
fn tcp_mode(plan: &Plan, mode: Mode) -> Vec<(Option<u64>, Row)> {
    let mut pair = Pair::start(mode);
    let node = pair.primary.node.take().expect("the primary's node");
    let watch = Arc::clone(&pair.primary.watch);
    let epoch = node.epoch();
    let config = ServerConfig {
        admin_token: Some("bench".into()),
        in_flight_max: 1 << 14,
        connection_in_flight_max: 1 << 14,
        outbound_max: 64 << 20,
        ..ServerConfig::loopback()
    };
    let handle = ringfence_ingress::start(config, move |waker| {
        NodeBackend::new(node, waker, watch, epoch, "bench".into(), None)
    })
    .expect("the ingress server starts");
    let addr = handle.binary_addr().expect("a binary listener");
    let mut rows = Vec::new();
    let mut next_index = 0;
    let warm_up = (Load::Window(tcp_window(plan)), plan.seconds, WARM_UP_COMMANDS);
    let loads = match tcp_run(plan, addr, warm_up, next_index) {
        Ok(warm) => {
            next_index += warm.answered + warm.lost + 1;
            plan.loads()
        }
        Err(error) => {
            eprintln!("ringfence-perf replication: tcp {} warm-up failed: {error}", mode.name);
            Vec::new()
        }
    };
    pair.settle();
    for load in loads {
        let measured = match tcp_load(plan, addr, load, next_index) {
            Ok(measured) => measured,
            Err(error) => {
                eprintln!("ringfence-perf replication: tcp {} failed: {error}", mode.name);
                break;
            }
        };
        next_index += measured.answered + measured.lost + 1;
        pair.settle();
        rows.push((load, tcp_row(plan, mode, load, measured)));
    }
    if let Err(error) = handle.shutdown() {
        eprintln!("ringfence-perf replication: the ingress server stopped badly: {error}");
    }
    pair.shutdown();
    rows
}

/// The `max` row's window per connection.
fn tcp_window(plan: &Plan) -> usize {
    (plan.window as usize / plan.connections).max(1)
}

/// One load from the `net` generator, on a thread of its own (with a tight timer slack).
fn tcp_load(
    plan: &Plan,
    addr: SocketAddr,
    load: Option<u64>,
    first_index: u64,
) -> std::io::Result<net::Measured> {
    let kind = load.map_or_else(|| Load::Window(tcp_window(plan)), Load::Rate);
    tcp_run(plan, addr, (kind, plan.seconds, plan.max_commands), first_index)
}

/// A run of the `net` generator (`load` for at most `seconds`, at most `count` requests), on a
/// thread of its own (with a tight timer slack).
fn tcp_run(
    plan: &Plan,
    addr: SocketAddr,
    (load, seconds, count): (Load, f64, u64),
    first_index: u64,
) -> std::io::Result<net::Measured> {
    let run = (load, Duration::from_secs_f64(seconds), count);
    std::thread::scope(|scope| {
        let generator = std::thread::Builder::new()
            .name("generator".into())
            .spawn_scoped(scope, || {
                tighten_timer_slack();
                let mut protocol = BinaryReserve::hot(1);
                net::drive_up_to(addr, &mut protocol, plan.connections, run, first_index)
            })
            .expect("the generator thread starts");
        generator.join().expect("the generator thread")
    })
}

fn tcp_row(plan: &Plan, mode: Mode, load: Option<u64>, measured: net::Measured) -> Row {
    let scenario = format!("tcp@{}", load_name(load));
    let row =
        Row::new(&scenario, mode.name, measured.answered, measured.seconds, measured.histogram);
    let window = match load {
        Some(_) => serde_json::Value::Null,
        None => (tcp_window(plan) as u64).into(),
    };
    mode_context(row, mode)
        .with("offered_per_sec", load.map_or_else(|| "max".into(), serde_json::Value::from))
        .with("latency_from", if load.is_some() { "intended_send" } else { "send" })
        .with("connections", plan.connections as u64)
        .with("window_per_connection", window)
        .with("failed", measured.failed)
        .with("lost", measured.lost)
}

/// Pushes rows grouped by load, modes in table order, so each mode sits next to its baseline.
fn push_by_load(report: &mut Report, plan: &Plan, mut rows: Vec<(Option<u64>, Row)>) {
    for load in plan.loads() {
        let (these, rest): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(l, _)| *l == load);
        rows = rest;
        for (_, row) in these {
            let notes: Vec<String> =
                [batches_note(&row), shortfall_note(&row)].into_iter().flatten().collect();
            let (scenario, variant) = (row.scenario.clone(), row.variant.clone());
            report.push(row);
            for note in notes {
                report.note(&note);
            }
            if let Some(baseline) = baseline_of(&variant) {
                report.relate((&scenario, &variant), (&scenario, baseline), Ratios::All);
            }
        }
    }
}

/// The baseline a replicated mode's row compares with: the primary alone at the same
/// durability.
fn baseline_of(variant: &str) -> Option<&'static str> {
    let mode = MODES.iter().find(|mode| mode.name == variant)?;
    mode.ack?;
    let written = mode.durability == Durability::None;
    Some(if written { "local_only_written" } else { "local_only" })
}

/// What one failover took, in nanoseconds from the kill.
struct Failover {
    promoted: u64,
    answered: u64,
    /// The baseline: storing a raised epoch alone, in the promoted node's directory just after.
    epoch_store: u64,
}

impl Failover {
    /// The rows: the baseline, the promotion, the first write after it, and the two together.
    const PHASES: [&'static str; 4] =
        ["baseline_epoch_store", "kill_to_promoted", "promoted_to_answer", "kill_to_answer"];

    fn phases(&self) -> [u64; 4] {
        [self.epoch_store, self.promoted, self.answered - self.promoted, self.answered]
    }
}

/// The durable part of a promotion alone: the epoch file replaced atomically (temporary file,
/// fsync, rename, directory fsync) with an epoch one above the node's promise.
fn time_epoch_store(member: &Member) -> u64 {
    let raised = Epoch(member.data_dir.epochs().promised.0 + 1);
    let started = Instant::now();
    let epochs = Epochs { current: raised, promised: raised };
    member.data_dir.store_epochs(epochs).expect("the epoch file is stored");
    started.elapsed().as_nanos() as u64
}

/// Light load on the primary until `stop`: one reservation per millisecond, answers read and
/// dropped. Returns how many were answered.
fn light_load(mut session: Session, stop: &AtomicBool, first_index: u64) -> u64 {
    let (mut index, mut answered) = (first_index, 0);
    while !stop.load(Ordering::Acquire) {
        if session.try_submit(reserve_command(0, index), index).is_ok() {
            index += 1;
        }
        while session.poll().is_some() {
            answered += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    answered
}

/// One failover: a fresh `sync` pair under light load; the kill; the promotion; one write.
fn failover_once(plan: &Plan) -> Failover {
    let pair = Pair::start(SYNC);
    let standby = pair.standby.as_ref().expect("a sync pair has a standby");
    let mut promoted_session = standby.node().session().expect("a session on the standby");
    let stop = AtomicBool::new(false);
    let stop = &stop;
    let load_session = pair.primary.node().session().expect("a load session");
    let result = std::thread::scope(|scope| {
        let load = scope.spawn(move || light_load(load_session, stop, 1));
        std::thread::sleep(plan.failover_load);
        // The kill: the primary's clients stop and its replication stops, so the standby gets
        // nothing more and no acknowledgement reaches the primary. No handoff is made.
        let killed = Instant::now();
        stop.store(true, Ordering::Release);
        pair.primary.control().stop();
        standby.control().promote(standby.node(), false).expect("the standby is promoted");
        let promoted = killed.elapsed();
        let write = reserve_command(0, u64::MAX >> 1);
        let outcome = promoted_session.call(write, DRAIN_LIMIT).expect("the promoted node answers");
        let answered = killed.elapsed();
        assert!(matches!(outcome, Outcome::Reserved { .. }), "not reserved: {outcome:?}");
        let _ = load.join().expect("the load thread");
        let (promoted, answered) = (promoted.as_nanos() as u64, answered.as_nanos() as u64);
        Failover { promoted, answered, epoch_store: time_epoch_store(standby) }
    });
    drop(promoted_session);
    // Off the clock: the dead primary's answers still wait for a standby that is gone; release
    // them so its node drains at once.
    pair.primary.control().set_mode(AckMode::Async);
    pair.shutdown();
    result
}

fn failover(report: &mut Report, plan: &Plan) {
    let runs: Vec<Failover> = (0..plan.failovers).map(|_| failover_once(plan)).collect();
    for (phase, variant) in Failover::PHASES.iter().enumerate() {
        let mut histogram = latency_histogram();
        let mut sum_ns = 0u64;
        for run in &runs {
            let ns = run.phases()[phase];
            histogram.saturating_record(ns.max(1));
            sum_ns += ns;
        }
        let seconds = sum_ns as f64 / 1e9;
        let row = Row::new("failover", variant, runs.len() as u64, seconds, histogram)
            .with("repetitions", runs.len() as u64)
            .with("mode", "sync")
            .with("durability", Durability::Batch.to_string())
            .with("ops_per_sec_means", "1 / mean time");
        report.push(row);
    }
    let each: Vec<String> = runs
        .iter()
        .map(|f| {
            let (promote, write) = (format_ns(f.promoted), format_ns(f.answered - f.promoted));
            format!("{promote}+{write} ({})", format_ns(f.epoch_store))
        })
        .collect();
    report.note(&format!(
        "  per repetition, promote + first write (epoch store alone): {}",
        each.join(", ")
    ));
}

/// The file system the temporary directory is on, from `/proc/mounts` (longest mount point
/// that contains it).
fn temp_file_system() -> String {
    let temp = std::env::temp_dir();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let best = mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (device, point, kind) = (fields.first()?, fields.get(1)?, fields.get(2)?);
            temp.starts_with(point).then(|| (point.len(), format!("{kind} ({device})")))
        })
        .max_by_key(|(len, _)| *len);
    best.map_or_else(|| "unknown".to_owned(), |(_, what)| what)
}

fn header(report: &Report, plan: &Plan) {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    report.note(&machine_load());
    report.note(&format!(
        "replication: primary + standby in one process on {cores} cores, standby following over \
         loopback TCP; journals in {} on {}, {} MiB segments",
        std::env::temp_dir().display(),
        temp_file_system(),
        SEGMENT_BYTES >> 20
    ));
    report.note(
        "nodes: compact topology (one processor thread: journal + replicator stage + BLP per \
         batch), spin_then_park waits (spin, yield <= 100us, park <= 1ms), egress polled on the \
         primary (by the generator or the ingress loop) and on its own thread on the standby \
         (as `ringfence serve` runs them), nothing pinned; generator thread timer slack 1ns, \
         every other thread the default",
    );
    report.note(
        "durability: local_only, async, sync = batch (msync per batch); local_only_written, \
         sync_written = none (written to the map, no msync); sync waits for the standby's \
         acknowledgement, measured only once the primary reports in_sync",
    );
    report.note(&format!(
        "workload: one SKU, stock 2e9, no per-user limit, a new user and key per reservation: \
         every answer is Reserved (others are counted as `refused`/`failed`); engines hold {} \
         orders; {} s per load; max rows keep {} in flight, latency from the actual submit; \
         each pair first takes up to {WARM_UP_COMMANDS} reservations at that window (for at \
         most a load's duration), not counted",
        ORDERS_MAX, plan.seconds, plan.window
    ));
}

/// Runs the replication benchmark and prints its tables.
pub fn run(common: Common) {
    bench(&mut Report::new(common.json), Size::of(common));
}

/// Measures both tables and the failover into `report`.
pub fn bench(report: &mut Report, size: Size) {
    let plan = Plan::new(size);
    assert!(plan.commands_per_mode() < u64::from(ORDERS_MAX), "a mode's run outgrows its engine");
    header(report, &plan);
    let watch = CpuWatch::start();
    report.note("-- in-process: reservations through a Session on the primary, open loop");
    let mut idle = Vec::new();
    let rows = MODES
        .iter()
        .flat_map(|&mode| {
            let (rows, share) = inprocess_mode(&plan, mode);
            idle.push(format!("{} {:.2}%", mode.name, share * 100.0));
            rows
        })
        .collect();
    push_by_load(report, &plan, rows);
    report.note(&format!(
        "-- idle, before the loads ({:.1} s after the pair settled, over {:.1} s): {} of a core \
         (process CPU time: the primary, and its standby where one follows; goal < 1% per \
         node)",
        IDLE_AFTER_START.as_secs_f64(),
        idle_seconds(&plan),
        idle.join(", ")
    ));
    report.note(&format!(
        "-- loopback TCP: binary protocol through the ingress server (primary's node behind \
         NodeBackend), {} connections, one mio generator thread",
        plan.connections
    ));
    let rows = MODES.iter().flat_map(|&mode| tcp_mode(&plan, mode)).collect();
    push_by_load(report, &plan, rows);
    report.note(&format!(
        "-- failover: sync pair, durability batch, 1k/s light load for {} ms, then the kill \
         (load and primary's replication stopped), promote at once, one reservation on the \
         promoted node; {} repetitions, each with fresh nodes; ops/s = 1 / mean; baseline: \
         storing a raised epoch alone (promotion's durable step) in the promoted node's \
         directory right after",
        plan.failover_load.as_millis(),
        plan.failovers
    ));
    failover(report, &plan);
    if let Some(watch) = watch {
        report.note(&watch.note());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_run_fits_the_engine_capacities() {
        // Goal: no reservation of a mode's loads is refused for capacity, in either plan, so
        // every row measures the full reservation path.
        for quick in [true, false] {
            let plan = Plan::new(Size { quick, factor: 1.0 });
            assert!(plan.commands_per_mode() < u64::from(ORDERS_MAX), "quick={quick}");
        }
    }

    #[test]
    fn baselines_have_no_standby_and_sync_rows_wait_for_one() {
        // Goal: the table's rows are the modes the header says.
        let baselines: Vec<&str> =
            MODES.iter().filter(|mode| mode.ack.is_none()).map(|mode| mode.name).collect();
        assert_eq!(baselines, ["local_only", "local_only_written"]);
        for mode in &MODES {
            let written = mode.name.contains("written");
            assert_eq!(mode.durability == Durability::None, written, "{}", mode.name);
            let sync = mode.name.starts_with("sync");
            assert_eq!(mode.ack == Some(AckMode::Sync), sync, "{}", mode.name);
        }
    }
}
