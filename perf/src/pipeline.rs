//! `pipeline`: the node in-process — ring, journaler, replicator, BLP, egress — under open-loop
//! load at fixed offered rates, in both topologies, with the BLP alone on the same commands
//! measured in the same run.
//!
//! One generator thread owns a session. For a fixed rate it submits command `i` at its
//! *intended* time `start + i / rate` (late if it fell behind, never skipping), and records
//! `answer seen - intended` for every answer, so stalls count against latency (no coordinated
//! omission). A command refused `Busy` is dropped and counted. The `max` rows submit back to
//! back, retrying `Busy`, and measure from the first attempt. With a polled egress the generator
//! also runs egress (as an ingress event loop would). The journal is a null journal (durable on
//! flush, records dropped) and there is no standby, so the figures are the pipeline's own.
//!
//! The workload is a flash sale: reservations of one unit by distinct buyers across 16 SKUs of
//! 5k units each, every request with its own key; early commands reserve, later ones sell out.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringfence_core::pipeline::{
    Clock, EgressDriver, Framed, Journal, Metrics, NoReplicator, Node, NodeConfig, Pins, Refused,
    Session, StageError, Topology, WaitStrategy,
};
use ringfence_core::snowflake::EPOCH_UNIX_MS;
use ringfence_core::{
    Action, Command, CreateSku, Engine, EngineConfig, Outcome, RequestKey, Reserve, Sequence,
    Sequenced, SkuId, Timestamp, UserId,
};

use crate::report::{Ratios, Report, Row, SETTLED, latency_histogram, record_unanswered};
use crate::{Common, Size};

const SKUS: u64 = 16;
const UNITS_PER_SKU: u32 = 5_000;
/// How long the generator waits for the last answers before giving up on a row.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// A journal that is durable as soon as flushed and keeps nothing.
struct NullJournal {
    last: Sequence,
}

impl Journal for NullJournal {
    const NEEDS_BYTES: bool = false;

    fn append(&mut self, record: &Framed<'_>) -> Result<(), StageError> {
        self.last = record.sequenced.sequence;
        Ok(())
    }

    fn flush(&mut self, _clock: &dyn Clock) -> Result<Sequence, StageError> {
        Ok(self.last)
    }
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        shard: 1,
        skus_max: 64,
        orders_max: 1 << 17,
        coupons_max: 1_024,
        batches_max: 16,
        holdings_max: 1_024,
        request_keys_max: 1 << 18,
        request_key_window_ms: 50,
        // Workloads with few users and many commands: no per-user quotas.
        request_keys_per_user_max: 0,
        orders_per_user_max: 0,
        order_qty_max: 10,
    }
}

fn setup_commands() -> Vec<Command> {
    (1..=SKUS).map(|sku| create_sku(sku, UNITS_PER_SKU)).collect()
}

/// Creates SKU `sku` with `stock` units, open, with no per-user limit; its request key is the
/// SKU's own, counted down from the top.
fn create_sku(sku: u64, stock: u32) -> Command {
    let spec = CreateSku {
        sku: SkuId(sku),
        stock,
        price_cents: 999,
        per_user_limit: 0,
        payment_timeout_ms: 600_000,
        sale_start: None,
        sale_end: None,
    };
    let key = RequestKey::from_u128(u128::from(u64::MAX - sku));
    Command::Client { key, action: Action::CreateSku(spec) }
}

/// The `i`th reservation of the sale.
fn command(i: u64) -> Command {
    let reserve =
        Reserve { user: UserId(1 + i % 1_000_000), sku: SkuId(1 + i % SKUS), qty: 1, coupon: None };
    Command::Client {
        key: RequestKey::from_u128(u128::from(i) + 1),
        action: Action::Reserve(reserve),
    }
}

/// A node layout to measure.
struct Layout {
    topology: Topology,
    wait: WaitStrategy,
    pinned: bool,
    egress: EgressDriver,
    /// Threads that compete for cores, in words.
    threads: &'static str,
    /// Offered rates to run (`None` = max).
    rates: &'static [Option<u64>],
}

impl Layout {
    fn name(&self) -> String {
        let egress = match self.egress {
            EgressDriver::Thread => "thread",
            EgressDriver::Polled => "polled",
        };
        let wait = match self.wait {
            WaitStrategy::BusySpin => "spin",
            WaitStrategy::SpinThenPark { .. } => "park",
        };
        format!("{} {wait} {egress}{}", self.topology.name(), if self.pinned { " pin" } else { "" })
    }

    fn config(&self) -> NodeConfig {
        NodeConfig {
            engine: engine_config(),
            topology: Some(self.topology),
            wait: self.wait,
            egress: self.egress,
            pins: if self.pinned { Pins::blp_on_last_core() } else { Pins::none() },
            sessions_max: 4,
            ..NodeConfig::default()
        }
    }
}

const ALL_RATES: &[Option<u64>] = &[Some(100_000), Some(1_000_000), None];

fn layouts() -> Vec<Layout> {
    let park = WaitStrategy::DEFAULT;
    vec![
        Layout {
            topology: Topology::Compact,
            wait: WaitStrategy::BusySpin,
            pinned: true,
            egress: EgressDriver::Polled,
            threads: "generator+egress, processor (+timer)",
            rates: ALL_RATES,
        },
        Layout {
            topology: Topology::Compact,
            wait: park,
            pinned: false,
            egress: EgressDriver::Polled,
            threads: "generator+egress, processor (+timer)",
            rates: ALL_RATES,
        },
        Layout {
            topology: Topology::Compact,
            wait: park,
            pinned: false,
            egress: EgressDriver::Thread,
            threads: "generator, processor, egress (+timer)",
            rates: ALL_RATES,
        },
        Layout {
            topology: Topology::Parallel,
            wait: park,
            pinned: false,
            egress: EgressDriver::Thread,
            threads: "generator, journaler, replicator, blp, egress (+timer)",
            rates: ALL_RATES,
        },
        Layout {
            topology: Topology::Parallel,
            wait: WaitStrategy::BusySpin,
            pinned: false,
            egress: EgressDriver::Thread,
            threads: "generator, journaler, replicator, blp, egress (+timer)",
            rates: &[Some(100_000)],
        },
    ]
}

/// Runs the pipeline benchmark and prints its rows: every layout at every rate, or only the
/// layouts named in `only_layouts` and the rates in `only_rates` when either is given.
pub fn run(common: Common, only_layouts: &[String], only_rates: &[Option<u64>]) {
    let known: Vec<String> = layouts().iter().map(Layout::name).collect();
    if let Some(unknown) = only_layouts.iter().find(|name| !known.contains(name)) {
        eprintln!(
            "error: no pipeline layout is named `{unknown}`; the layouts: {}",
            known.join(", ")
        );
        std::process::exit(2);
    }
    let filter = Filter { layouts: only_layouts, rates: only_rates };
    let rows = layouts()
        .iter()
        .map(|layout| layout.rates.iter().filter(|&&rate| filter.keeps(layout, rate)).count())
        .sum::<usize>();
    if rows == 0 {
        eprintln!(
            "error: no layout named runs at the rates named; a layout's rates: 100000, 1000000, max"
        );
        std::process::exit(2);
    }
    bench_filtered(&mut Report::new(common.json), Size::of(common), &filter);
}

/// Reads an offered rate as `--rate` gives it: `max`, or commands per second.
pub fn parse_rate(text: &str) -> Result<Option<u64>, String> {
    if text == "max" {
        return Ok(None);
    }
    match text.parse::<u64>() {
        Ok(rate) if rate > 0 => Ok(Some(rate)),
        _ => Err(format!("`{text}` is neither `max` nor a positive number of commands per second")),
    }
}

/// Which rows a run measures; empty lists select everything.
struct Filter<'a> {
    layouts: &'a [String],
    rates: &'a [Option<u64>],
}

impl Filter<'_> {
    const ALL: Filter<'static> = Filter { layouts: &[], rates: &[] };

    fn is_all(&self) -> bool {
        self.layouts.is_empty() && self.rates.is_empty()
    }

    fn keeps(&self, layout: &Layout, rate: Option<u64>) -> bool {
        (self.layouts.is_empty() || self.layouts.contains(&layout.name()))
            && (self.rates.is_empty() || self.rates.contains(&rate))
    }
}

/// Measures the BLP alone and every layout at every rate into `report`.
pub fn bench(report: &mut Report, size: Size) {
    bench_filtered(report, size, &Filter::ALL);
}

/// Measures the BLP alone and the layouts and rates `filter` keeps into `report`, then, for an
/// unfiltered run, what each parking layout costs idle.
fn bench_filtered(report: &mut Report, size: Size, filter: &Filter<'_>) {
    let seconds = size.seconds(0.4, 2.0);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    report.note(&machine_load());
    let watch = CpuWatch::start();
    report.note(&format!(
        "pipeline in-process on {cores} cores: null journal, no standby, timer period 1 ms (no deadline falls due), \
         ring 16384; latency = answer seen by the generator - intended send time; each row's \
         node first takes {WARM_UP_COMMANDS} reservations of a SKU of their own, not counted"
    ));
    // At least one command per row, however small the scale.
    let max_commands = ((seconds * 1_000_000.0) as u64).max(1);
    let blp = blp_alone(max_commands);
    let blp_rate = blp.ops_per_sec();
    report.push(blp);
    for layout in layouts() {
        for &rate in layout.rates.iter().filter(|&&rate| filter.keeps(&layout, rate)) {
            let commands =
                rate.map_or(max_commands, |rate| ((seconds * rate as f64) as u64).max(1));
            let (row, Shortfall { busy, lost }) = measure(&layout, rate, commands);
            let ratio = row.ops_per_sec() / blp_rate;
            let variant = row.variant.clone();
            report.push(row);
            if rate.is_none() {
                // Throughput only: the BLP alone's histogram is a service time.
                let blp = ("blp_alone", "engine.apply");
                report.relate((&scenario_name(rate), &variant), blp, Ratios::ThroughputOnly);
            }
            if busy > 0 {
                report.note(&format!("  ({busy} of {commands} offered commands refused busy)"));
            }
            if lost > 0 {
                report.note(&format!(
                    "  ({lost} of {commands} offered commands unanswered after {} s: in the \
                     latencies at the time they waited)",
                    DRAIN_LIMIT.as_secs()
                ));
            }
            if rate.is_none() && blp_rate > 0.0 {
                report.note(&format!("  pipeline / BLP alone throughput = {ratio:.2}"));
            }
        }
    }
    // What a node costs with nothing to do: the layouts that park (a busy-spinning stage
    // takes its core by design).
    let idle_seconds = size.seconds(1.0, 3.0);
    let idle_layouts = if filter.is_all() { layouts() } else { Vec::new() };
    for layout in idle_layouts.iter().filter(|layout| layout.wait != WaitStrategy::BusySpin) {
        let share = idle_share(layout, idle_seconds);
        report.note(&format!(
            "  idle, {}: {:.2}% of a core over {idle_seconds:.1} s (process CPU time, nothing \
             offered; goal < 1%)",
            layout.name(),
            share * 100.0
        ));
    }
    if let Some(watch) = watch {
        report.note(&watch.note());
    }
    report.note(
        "egress: `polled` = run by the generator thread (an ingress loop), `thread` = its own; \
         `pin` = processor pinned to the last core and generator to the first; `spin` = busy-spin, `park` = spin-then-park",
    );
}

/// The same commands through one engine on this thread: throughput from the median of three
/// untimed passes (fresh engine each), service time from a pass reading the clock around each
/// `apply`.
fn blp_alone(commands: u64) -> Row {
    let stream = sequenced_stream(commands);
    let mut passes: Vec<f64> = (0..3)
        .map(|_| {
            let mut engine = Engine::new(engine_config());
            let start = Instant::now();
            for sequenced in &stream {
                std::hint::black_box(engine.apply(sequenced));
            }
            start.elapsed().as_secs_f64()
        })
        .collect();
    passes.sort_by(f64::total_cmp);
    let mut engine = Engine::new(engine_config());
    let mut histogram = latency_histogram();
    for sequenced in &stream {
        let start = Instant::now();
        std::hint::black_box(engine.apply(sequenced));
        histogram.saturating_record(start.elapsed().as_nanos() as u64);
    }
    Row::new("blp_alone", "engine.apply", stream.len() as u64, passes[1], histogram)
        .with("threads", 1)
        .with("histogram", "service time incl. one clock read; ops/s: median untimed pass")
}

/// Setup and reservations stamped at 1000 commands per logical millisecond.
fn sequenced_stream(commands: u64) -> Vec<Sequenced> {
    let t0 = EPOCH_UNIX_MS + 86_400_000;
    let setup = setup_commands();
    let all = setup.into_iter().chain((0..commands).map(command));
    all.enumerate()
        .map(|(index, command)| {
            let index = index as u64;
            Sequenced {
                sequence: Sequence(index + 1),
                timestamp: Timestamp(t0 + index / 1_000),
                command,
            }
        })
        .collect()
}

/// What one generator run saw.
struct Run {
    histogram: Histogram<u64>,
    completed: u64,
    busy: u64,
    /// Unanswered at the drain limit: in the histogram at the time they waited.
    lost: u64,
    seconds: f64,
}

/// A node of `layout` with the sale's SKUs created and warmed up ([`warm_up`]), and the
/// session that did it.
fn start_set_up(layout: &Layout) -> (Node, Session) {
    let node =
        Node::start(layout.config(), NullJournal { last: Sequence(0) }, NoReplicator::default())
            .expect("benchmark configuration is valid");
    let mut session = node.session().expect("a fresh node has room for a session");
    for command in setup_commands() {
        session.call(command, DRAIN_LIMIT).expect("setup command answered");
    }
    warm_up(&mut session);
    (node, session)
}

/// Reservations a node takes before its row, not counted.
const WARM_UP_COMMANDS: u64 = 10_000;
/// The SKU they reserve, with stock for each: the row's SKUs and stock stay as they were.
const WARM_UP_SKU: u64 = SKUS + 1;

/// Runs [`WARM_UP_COMMANDS`] reservations through `session`, back to back, and waits for
/// their answers: the stages', the session's and the engine's first passes through the
/// reservation path are not the row's.
fn warm_up(session: &mut Session) {
    let create = create_sku(WARM_UP_SKU, WARM_UP_COMMANDS as u32);
    session.call(create, DRAIN_LIMIT).expect("the warm-up SKU is created");
    let deadline = Instant::now() + DRAIN_LIMIT;
    let (mut submitted, mut reserved) = (0, 0);
    while reserved < WARM_UP_COMMANDS {
        assert!(Instant::now() < deadline, "{reserved} of the warm-up answered");
        while submitted < WARM_UP_COMMANDS {
            let reserve = Reserve {
                user: UserId(1 + submitted),
                sku: SkuId(WARM_UP_SKU),
                qty: 1,
                coupon: None,
            };
            // Keys above the rows' (theirs count from 1) and below the setup's.
            let key = RequestKey::from_u128(u128::from(u64::MAX / 2 + submitted));
            let command = Command::Client { key, action: Action::Reserve(reserve) };
            match session.try_submit(command, submitted) {
                Ok(_) => submitted += 1,
                Err(Refused::Busy | Refused::SessionFull) => break,
                Err(other) => panic!("the warm-up refused: {other}"),
            }
        }
        while let Some(completion) = session.poll() {
            let outcome = completion.result.expect("a warm-up reservation answered");
            assert!(matches!(outcome, Outcome::Reserved { .. }), "{outcome:?}");
            reserved += 1;
        }
        std::hint::spin_loop();
    }
}

/// Offered commands a row did not answer: refused `Busy` at a fixed rate (not timed), or
/// unanswered at the drain limit (timed at what they waited).
struct Shortfall {
    busy: u64,
    lost: u64,
}

/// One row, and the offered commands it did not answer.
fn measure(layout: &Layout, rate: Option<u64>, commands: u64) -> (Row, Shortfall) {
    let (node, mut session) = start_set_up(layout);
    // The generator runs on a thread of its own, pinned to the first core when the processor
    // is pinned to the last, so the two never share a core.
    let run = std::thread::scope(|scope| {
        let generator = std::thread::Builder::new()
            .name("generator".to_owned())
            .spawn_scoped(scope, || {
                if layout.pinned {
                    pin_to_first_core();
                }
                generate(&mut session, rate, commands)
            })
            .expect("the generator thread starts");
        generator.join().expect("generator thread")
    });
    let metrics = node.metrics();
    drop(session);
    node.shutdown().expect("the node drains");
    let wait = layout.wait.name();
    let scenario = scenario_name(rate);
    let row = Row::new(&scenario, &layout.name(), run.completed, run.seconds, run.histogram)
        .with("topology", layout.topology.name())
        .with("wait", wait)
        .with(
            "pinning",
            if layout.pinned { "processor on last core, generator on first" } else { "none" },
        )
        .with("egress", format!("{:?}", layout.egress).to_lowercase())
        .with("threads", layout.threads)
        .with("offered_rate", rate.map_or_else(|| "max".into(), serde_json::Value::from))
        .with("busy", run.busy)
        .with("lost", run.lost)
        .with("batch_p50", batch_p50(&metrics))
        .with("blp_service_p50_ns", metrics.blp_service_ns.value_at_quantile(0.5));
    (row, Shortfall { busy: run.busy, lost: run.lost })
}

/// The share of a core the process uses while a node of `layout`, set up and holding a
/// session, is offered nothing for `seconds`: its stages and timer waiting.
fn idle_share(layout: &Layout, seconds: f64) -> f64 {
    let (node, session) = start_set_up(layout);
    // Past the spin and yield phases of the stages that just worked.
    std::thread::sleep(Duration::from_millis(50));
    let share = crate::net::idle_share_over(seconds);
    drop(session);
    node.shutdown().expect("the node drains");
    share
}

/// The scenario of a row at `rate` (`None`: max).
fn scenario_name(rate: Option<u64>) -> String {
    let offered = match rate {
        None => "max".to_owned(),
        Some(rate) if rate >= 1_000_000 => format!("{}M/s", rate / 1_000_000),
        Some(rate) => format!("{}k/s", rate / 1_000),
    };
    format!("pipeline@{offered}")
}

fn pin_to_first_core() {
    let first = core_affinity::get_core_ids().and_then(|ids| ids.first().copied());
    if !first.is_some_and(core_affinity::set_for_current) {
        eprintln!("ringfence-perf: warning: could not pin the generator; it runs unpinned");
    }
}

/// Median batch size of the stage that applies commands.
fn batch_p50(metrics: &Metrics) -> u64 {
    let stage = metrics.stage("processor").or_else(|| metrics.stage("blp"));
    stage.map_or(0, |stage| stage.batch_sizes.value_at_quantile(0.5))
}

/// The generator: submits `commands` at `rate` (or back to back) and records every answer.
/// A command refused `Busy` at a fixed rate is dropped (counted, not timed); one unanswered
/// at the drain limit counts at the time it waited, and among `lost`.
fn generate(session: &mut Session, rate: Option<u64>, commands: u64) -> Run {
    let clock = Instant::now();
    let now = || clock.elapsed().as_nanos() as u64;
    let mut intended = vec![SETTLED; commands as usize];
    let mut histogram = latency_histogram();
    let (mut completed, mut busy) = (0u64, 0u64);
    let mut poll = |session: &mut Session, intended: &mut [u64], completed: &mut u64| {
        while let Some(completion) = session.poll() {
            let sent = std::mem::replace(&mut intended[completion.token as usize], SETTLED);
            assert_ne!(sent, SETTLED, "a second answer for command {}", completion.token);
            histogram.saturating_record(now().saturating_sub(sent).max(1));
            *completed += 1;
        }
    };
    // A fixed rate starts a millisecond on; back to back starts at the first submit.
    let begin = now() + if rate.is_some() { 1_000_000 } else { 0 };
    let mut i = 0;
    let mut first_attempt = None;
    while i < commands {
        let at = match rate {
            Some(rate) => begin + i * 1_000_000_000 / rate,
            None => *first_attempt.get_or_insert_with(now),
        };
        while now() < at {
            poll(session, &mut intended, &mut completed);
        }
        intended[i as usize] = at;
        match session.try_submit(command(i), i) {
            Ok(_) => {
                i += 1;
                first_attempt = None;
            }
            Err(Refused::Busy) if rate.is_some() => {
                intended[i as usize] = SETTLED;
                busy += 1;
                i += 1;
            }
            Err(Refused::Busy | Refused::SessionFull) => intended[i as usize] = SETTLED,
            Err(other) => panic!("generator refused: {other}"),
        }
        poll(session, &mut intended, &mut completed);
    }
    let deadline = Instant::now() + DRAIN_LIMIT;
    while completed + busy < commands && Instant::now() < deadline {
        poll(session, &mut intended, &mut completed);
        std::hint::spin_loop();
    }
    let end = now();
    let lost = record_unanswered(&mut histogram, &intended, end);
    assert_eq!(completed + busy + lost, commands, "every command answered, refused or lost");
    let seconds = end.saturating_sub(begin) as f64 / 1e9;
    Run { histogram, completed, busy, lost, seconds }
}

/// CPU time the rest of the machine used while a benchmark ran: these benchmarks spin, so
/// anything else running skews them, and the reader should know how much there was.
pub struct CpuWatch {
    total: u64,
    idle: u64,
    own: u64,
}

impl CpuWatch {
    /// Starts watching (`None` where `/proc` is unavailable).
    pub fn start() -> Option<CpuWatch> {
        let (total, idle) = machine_ticks()?;
        Some(CpuWatch { total, idle, own: own_ticks()? })
    }

    /// A line saying what share of the machine other processes used since `start`.
    pub fn note(&self) -> String {
        let others = machine_ticks().zip(own_ticks()).map(|((total, idle), own)| {
            let elapsed = total.saturating_sub(self.total).max(1);
            let busy = elapsed.saturating_sub(idle.saturating_sub(self.idle));
            let others = busy.saturating_sub(own.saturating_sub(self.own));
            100.0 * others as f64 / elapsed as f64
        });
        match others {
            Some(percent) => format!(
                "other processes used {percent:.0}% of the machine's CPU during this run \
                 (figures from spinning threads are unreliable above a few percent)"
            ),
            None => "CPU use of other processes unknown".to_owned(),
        }
    }
}

/// (all ticks, idle ticks) of the whole machine.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> =
        stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((fields.iter().take(8).sum(), idle))
}

/// User plus system ticks of this process.
fn own_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the full line (utime, stime) are 11 and 12 after the name.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// The 1-minute load average, printed with every run: other work on the machine shows up in
/// these figures, so the reader should know how much there was.
pub fn machine_load() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").ok();
    let one_minute = load.as_deref().and_then(|text| text.split_whitespace().next());
    format!("machine load average (1 min) at start: {}", one_minute.unwrap_or("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_max_row_is_timed_from_its_first_submit_and_never_below_zero() {
        // Goal: a back-to-back row's duration runs from its first submit (a fixed rate's
        // starts a millisecond on, when its first command is due) to when the last answer
        // was awaited, read once: a run shorter than that millisecond was timed as negative,
        // which overflowed, and every longer one lost that millisecond from its duration.
        let layout = &layouts()[1];
        let (node, mut session) = start_set_up(layout);
        let run = generate(&mut session, None, 1);
        drop(session);
        node.shutdown().expect("the node drains");
        assert_eq!((run.completed, run.busy, run.lost), (1, 0, 0));
        assert_eq!(run.histogram.len(), 1);
        assert!(run.seconds > 0.0, "1 command completed in {} s", run.seconds);
    }
}
