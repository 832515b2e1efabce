//! `ringfence sim`: the deterministic simulator. A primary, a standby, the witness and the
//! clients run on one thread against simulated time, network and disks, all drawn from one
//! seed, with crashes, power losses, pauses, partitions, witness outages and switchovers
//! injected; checkers run after every step and at the end. The nodes are the production ones:
//! the stepped node core, the journal writer and recovery over the fault-injecting storage,
//! the replication sessions and policy, `Control`, and the coordination pilot and driver.
//!
//! A failing seed prints itself, the command that replays it, and the last events of its
//! trace; the same seed always gives the same trace hash.

mod check;
mod clients;
mod fetch;
mod machine;
mod net;
mod trace;
mod world;

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

pub use world::{MAX_CLOCK_DRIFT_PPM, Report, RunLength, World};

/// `--faults-s` unless given.
const FAULTS_S: u64 = 20;
/// `--settle-s` unless given.
const SETTLE_S: u64 = 10;

/// Arguments of `ringfence sim`.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Run this one seed and print its report (and, if it fails, the last events).
    #[arg(long, conflicts_with = "seeds")]
    pub seed: Option<u64>,
    /// Run a swarm of this many seeds, from --first on, in parallel across the cores.
    #[arg(long)]
    pub seeds: Option<u64>,
    /// The first seed of a swarm.
    #[arg(long, default_value_t = 1)]
    pub first: u64,
    /// Simulated seconds with faults injected.
    #[arg(long, default_value_t = FAULTS_S)]
    pub faults_s: u64,
    /// Simulated seconds after the faults stop in which the pair must converge and serve
    /// (at least 2: the clients fall quiet for the last second).
    #[arg(long, default_value_t = SETTLE_S, value_parser = clap::value_parser!(u64).range(2..))]
    pub settle_s: u64,
    /// How many of the last events a failing seed prints.
    #[arg(long, default_value_t = 64)]
    pub events: usize,
    /// Threads for a swarm (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print totals: seeds, simulated time, faults by kind, writes acknowledged, failovers,
    /// checker results.
    #[arg(long)]
    pub summary: bool,
    /// Print the results as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Leave out crashes at chosen sync points, to replay a seed found before they were
    /// simulated on the path it took then.
    #[arg(long)]
    pub no_sync_point_crashes: bool,
    /// Leave out snapshots, retention and snapshot transfers, to replay a seed found before
    /// they were simulated on the path it took then.
    #[arg(long)]
    pub no_snapshots: bool,
    /// Leave out clean stops, to replay a seed found before they were simulated on the path
    /// it took then.
    #[arg(long)]
    pub no_clean_stops: bool,
    /// Leave out the operator's `journal heal` from the peer's journal, to replay a seed found
    /// before it was in the runbook on the path it took then.
    #[arg(long)]
    pub no_heals: bool,
    /// Both nodes journal with durability `none` (answers leave before the journal is
    /// synced; the standby's copy is what survives a power loss). A run then has at most one
    /// power loss: the pair survives one machine's, not two.
    #[arg(long)]
    pub unsynced: bool,
    /// Leave out frames that a node sent before it crashed arriving after, to replay a seed
    /// found before they were simulated on the path it took then.
    #[arg(long)]
    pub no_frames_after_crash: bool,
    /// The operator switches the primary between `sync` and `async` every 0.3–4 s
    /// (`ringfence replication --mode`). A failover then may lose writes acknowledged under
    /// `async` (from the switch until the standby is in sync again): the checkers allow
    /// those losses, count them, and no others.
    #[arg(long = "async")]
    pub async_switches: bool,
    /// Both nodes start with `--max-failover-loss N` (with the witness; meaningful with
    /// --async): the checkers also check that no node took the key over an `async` record
    /// more than N records behind it, and the operator restarts a node without the bound when
    /// it waits on it with nobody leading after the faults
    #[arg(long, value_name = "N")]
    pub max_failover_loss: Option<u64>,
    /// Leave out cuts between one machine and the witness alone, to replay a seed found
    /// before they were simulated on the path it took then.
    #[arg(long)]
    pub no_witness_cuts: bool,
    /// Leave out the witness's answers lost on their way to one machine (what it asked took
    /// effect), to replay a seed found before they were simulated on the path it took then.
    #[arg(long)]
    pub no_lost_answers: bool,
    /// Leave out the machines' wall clocks set minutes apart (on a third of the seeds), to
    /// replay a seed found before they were simulated on the path it took then.
    #[arg(long)]
    pub no_wall_clock_skew: bool,
    /// Leave out a standby's follower taking its turn before its node has stepped what the
    /// follower handed it, to replay a seed found before such turns were simulated on the
    /// path it took then.
    #[arg(long)]
    pub no_early_follower_turns: bool,
    /// How far each machine's clock may run from the witness's, in parts per million: each
    /// draws its rate at start, up to this slow or fast. The lease's margin (a quarter of its
    /// TTL) covers clocks up to 250000 slow; past that a primary may acknowledge after its
    /// lease ran out, which the checkers should catch. 0 replays a seed found before clocks
    /// drifted on the path it took then.
    #[arg(
        long,
        value_name = "PPM",
        default_value_t = MAX_CLOCK_DRIFT_PPM,
        value_parser = clap::value_parser!(u32).range(0..=900_000)
    )]
    pub max_clock_drift_ppm: u32,
}

/// Runs `ringfence sim`.
pub fn run(args: &SimArgs) -> ExitCode {
    let length = RunLength {
        faults_ms: args.faults_s * 1_000,
        settle_ms: args.settle_s * 1_000,
        events_kept: args.events,
        sync_point_crashes: !args.no_sync_point_crashes,
        snapshots: !args.no_snapshots,
        clean_stops: !args.no_clean_stops,
        heals: !args.no_heals,
        unsynced: args.unsynced,
        frames_after_crash: !args.no_frames_after_crash,
        async_switches: args.async_switches,
        max_failover_loss: args.max_failover_loss,
        witness_cuts: !args.no_witness_cuts,
        max_clock_drift_ppm: args.max_clock_drift_ppm,
        lost_answers: !args.no_lost_answers,
        wall_clock_skew: !args.no_wall_clock_skew,
        early_follower_turns: !args.no_early_follower_turns,
    };
    let seeds: Vec<u64> = match (args.seed, args.seeds) {
        (Some(seed), _) => vec![seed],
        (None, Some(count)) => (args.first..args.first.saturating_add(count)).collect(),
        (None, None) => (args.first..args.first + 1).collect(),
    };
    let threads =
        args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let reports = swarm(&seeds, length, threads, seeds.len() > 1);
    let failed: Vec<&Report> = reports.iter().filter(|r| r.failure.is_some()).collect();
    if args.json {
        print_json(&reports, args.summary);
    } else {
        print_text(&reports, args, args.summary || seeds.len() == 1);
    }
    if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Runs every seed, `threads` at a time; a progress bar on a terminal when `progress`.
pub fn swarm(seeds: &[u64], length: RunLength, threads: usize, progress: bool) -> Vec<Report> {
    let bar = if progress && std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(seeds.len() as u64);
        let style = ProgressStyle::with_template("{bar:40} {pos}/{len} seeds  {msg}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar
    } else {
        ProgressBar::hidden()
    };
    let next = AtomicU64::new(0);
    let failures = AtomicU64::new(0);
    let reports = Mutex::new(Vec::with_capacity(seeds.len()));
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, seeds.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let at = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(&seed) = seeds.get(at) else { break };
                    let report = run_seed(seed, length);
                    if report.failure.is_some() {
                        let failed = failures.fetch_add(1, Ordering::Relaxed) + 1;
                        bar.set_message(format!("{failed} failed (seed {seed})"));
                    }
                    reports.lock().expect("never poisoned").push(report);
                    bar.inc(1);
                }
            });
        }
    });
    bar.finish_and_clear();
    let mut reports = reports.into_inner().expect("never poisoned");
    reports.sort_by_key(|r| r.seed);
    reports
}

/// Runs one seed; a panic is a failure of that seed, with its message.
pub fn run_seed(seed: u64, length: RunLength) -> Report {
    run_world(seed, || World::new(seed, length))
}

/// Runs the world `make` builds; a panic (an assertion in the product, or in the simulator)
/// is a failure of the seed, with its message.
fn run_world(seed: u64, make: impl FnOnce() -> World + std::panic::UnwindSafe) -> Report {
    match std::panic::catch_unwind(|| make().run()) {
        Ok(report) => report,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".to_owned());
            Report::panicked(seed, &message)
        }
    }
}

/// The command that runs `seed` again as `args` ran it: the same faults, modes and lengths.
fn replay_command(args: &SimArgs, seed: u64) -> String {
    let mut command = format!("ringfence sim --seed {seed}");
    if args.faults_s != FAULTS_S {
        command.push_str(&format!(" --faults-s {}", args.faults_s));
    }
    if args.settle_s != SETTLE_S {
        command.push_str(&format!(" --settle-s {}", args.settle_s));
    }
    let flags = [
        (args.no_sync_point_crashes, "--no-sync-point-crashes"),
        (args.no_snapshots, "--no-snapshots"),
        (args.no_clean_stops, "--no-clean-stops"),
        (args.no_heals, "--no-heals"),
        (args.no_frames_after_crash, "--no-frames-after-crash"),
        (args.no_witness_cuts, "--no-witness-cuts"),
        (args.no_lost_answers, "--no-lost-answers"),
        (args.no_wall_clock_skew, "--no-wall-clock-skew"),
        (args.no_early_follower_turns, "--no-early-follower-turns"),
        (args.unsynced, "--unsynced"),
        (args.async_switches, "--async"),
    ];
    for (_, flag) in flags.iter().filter(|(on, _)| *on) {
        command.push(' ');
        command.push_str(flag);
    }
    if let Some(bound) = args.max_failover_loss {
        command.push_str(&format!(" --max-failover-loss {bound}"));
    }
    if args.max_clock_drift_ppm != MAX_CLOCK_DRIFT_PPM {
        command.push_str(&format!(" --max-clock-drift-ppm {}", args.max_clock_drift_ppm));
    }
    command
}

fn print_text(reports: &[Report], args: &SimArgs, summary: bool) {
    for report in reports.iter().filter(|r| r.failure.is_some()) {
        println!("seed {} FAILED: {}", report.seed, report.failure.as_deref().unwrap_or(""));
        println!("  replay it: {}", replay_command(args, report.seed));
        if !report.last_events.is_empty() {
            println!("  last events:");
            for event in &report.last_events {
                println!("    {event}");
            }
        }
    }
    if !summary {
        // A swarm without `--summary` still says what it did.
        let failed = reports.iter().filter(|r| r.failure.is_some()).count();
        println!("{} seeds run, {failed} failed (--summary for the totals)", reports.len());
        return;
    }
    let totals = Totals::of(reports);
    println!("seeds run            {}", totals.seeds);
    println!("seeds failed         {}", totals.failed);
    println!("simulated time       {:.1} s", totals.simulated_ms as f64 / 1_000.0);
    println!("writes acknowledged  {}", totals.writes_acknowledged);
    let f = totals.faults;
    if f.async_switches + f.sync_switches > 0 {
        println!(
            "  under async        {} ({} lost to a failover); {} switches to async ({} \
             recorded though their answer was lost, {} of them made by the primary once it read \
             the record), {} back to sync",
            totals.writes_at_risk,
            totals.writes_lost,
            f.async_switches,
            f.async_switches_unanswered,
            f.async_switches_made_late,
            f.sync_switches
        );
    }
    println!("answers              {}", totals.answers);
    let outcomes: Vec<String> =
        totals.outcomes.iter().map(|(name, count)| format!("{count} {name}")).collect();
    println!("  by outcome         {}", outcomes.join(", "));
    let refusals: Vec<String> =
        totals.refusals.iter().map(|(name, count)| format!("{count} {name}")).collect();
    println!("refused or unanswered {}", refusals.join(", "));
    println!(
        "failovers            {}; {} promotions failed after the leader key was taken; {} \
         standbys restarted themselves to rejoin without the witness; {} standbys started on \
         their journal after a snapshot fetch failed",
        totals.failovers, totals.promotions_failed, totals.rejoin_restarts, totals.fetches_failed
    );
    println!(
        "standbys             {} stream turns ended with records handed to the node and not \
         yet answered (journaled and applied)",
        totals.turns_with_records_unanswered
    );
    let snap = totals.snapshots;
    println!(
        "snapshots            {} written, {} failed, {} segments retired, {} fetched from a \
         primary and installed ({} records they replaced were never the primary's)",
        snap.written, snap.failed, snap.segments_retired, snap.installed, snap.unagreed
    );
    let struck: Vec<String> =
        totals.struck_at.iter().map(|(what, count)| format!("{count} {what}")).collect();
    let struck = if struck.is_empty() { "none".to_owned() } else { struck.join(", ") };
    println!("struck at a sync of  {struck}");
    let f = totals.faults;
    println!(
        "faults               {} kills, {} power losses (of these crashes, {} struck after \
         delivery, {} at a chosen sync point), {} pauses, {} partitions, {} witness outages, {} machines cut off \
         from the witness alone ({} of a primary its standby replaced meanwhile), {} spells of \
         the witness's answers lost ({} campaigns that took the key unanswered), {} clocks \
         at least 1% slow and {} at least 1% fast, {} wall clocks set minutes apart, {} \
         switchovers asked ({} called off), \
         {} disk failures ({} EIO, the rest ENOSPC; {} primaries handed over, {} standbys stood down), {} bursts, {} clean stops, {} bits flipped \
         at rest ({} journals repaired, {} of them rebuilt after a snapshot, {} healed from the \
         peer's copy), {} promotions by hand ({} of a standby ahead of its primary), {} \
         standbys started anew after a split, {} diverged epochs dropped at once, {} armed \
         crashes taken back when the faults \
         ended, {} nodes restarted without their --max-failover-loss",
        f.kills,
        f.power_losses,
        f.mid_step_crashes,
        f.sync_point_crashes,
        f.pauses,
        f.partitions,
        f.witness_outages,
        f.witness_cuts,
        f.cut_primaries_replaced,
        f.lost_answers,
        f.campaigns_won_unanswered,
        f.slow_clocks,
        f.fast_clocks,
        f.skewed_clocks,
        f.switchovers,
        f.switchovers_called_off,
        f.disk_failures,
        f.io_errors,
        f.failed_handovers,
        f.standbys_stood_down,
        f.bursts,
        f.clean_stops,
        f.bit_flips,
        f.repairs,
        f.rebuilds,
        f.heals,
        f.manual_promotions,
        f.promotions_ahead,
        f.standbys_emptied,
        f.epochs_dropped,
        f.crashes_taken_back,
        f.bounds_lifted
    );
    let n = totals.network;
    println!(
        "network              {} frames: {} held by partitions, {} lost (connection broken), \
         {} duplicated, {} reordered, {} corrupted, {} arrived after their sender crashed or \
         stopped; {} connections",
        n.frames,
        n.held,
        n.dropped,
        n.duplicated,
        n.reordered,
        n.corrupted,
        n.outlived_sender,
        n.connections
    );
    if let [report] = reports {
        println!("trace hash           {} ({} events)", report.trace_hash, report.events);
    }
    let checks = if totals.failed == 0 { "every checker passed" } else { "FAILED" };
    println!(
        "checkers             {checks}; {} records held durably, one per sequence and epoch; \
         {} records named by snapshots' epoch histories as their journals hold them; {} backups \
         recovered as their directory does ({} refused where it refuses or finishes a repair)",
        totals.durable_records,
        totals.history_records,
        totals.backups.taken,
        totals.backups.refused
    );
}

fn print_json(reports: &[Report], summary: bool) {
    let value = if summary {
        serde_json::json!({ "totals": Totals::of(reports), "seeds": reports })
    } else {
        serde_json::json!({ "seeds": reports })
    };
    println!("{value}");
}

/// The totals of a swarm.
#[derive(Debug, Default, serde::Serialize)]
struct Totals {
    seeds: u64,
    failed: u64,
    simulated_ms: u64,
    writes_acknowledged: u64,
    writes_at_risk: u64,
    writes_lost: u64,
    answers: u64,
    outcomes: std::collections::BTreeMap<String, u64>,
    refusals: std::collections::BTreeMap<String, u64>,
    struck_at: std::collections::BTreeMap<String, u64>,
    failovers: u64,
    promotions_failed: u64,
    rejoin_restarts: u64,
    fetches_failed: u64,
    turns_with_records_unanswered: u64,
    snapshots: machine::SnapshotCounts,
    durable_records: u64,
    history_records: u64,
    backups: check::BackupCounts,
    faults: world::FaultCounts,
    network: net::NetCounts,
}

impl Totals {
    fn of(reports: &[Report]) -> Totals {
        let mut totals = Totals::default();
        for report in reports {
            totals.seeds += 1;
            totals.failed += u64::from(report.failure.is_some());
            totals.simulated_ms += report.simulated_ms;
            totals.writes_acknowledged += report.writes_acknowledged;
            totals.writes_at_risk += report.writes_at_risk;
            totals.writes_lost += report.writes_lost;
            totals.durable_records += report.durable_records;
            totals.history_records += report.history_records;
            totals.backups.taken += report.backups.taken;
            totals.backups.refused += report.backups.refused;
            totals.answers += report.answers;
            for (name, count) in &report.outcomes {
                *totals.outcomes.entry(name.clone()).or_default() += count;
            }
            for (name, count) in &report.refusals {
                *totals.refusals.entry(name.clone()).or_default() += count;
            }
            for (what, count) in &report.struck_at {
                *totals.struck_at.entry(what.clone()).or_default() += count;
            }
            totals.failovers += report.failovers;
            totals.promotions_failed += report.promotions_failed;
            totals.rejoin_restarts += report.rejoin_restarts;
            totals.fetches_failed += report.fetches_failed;
            totals.turns_with_records_unanswered += report.turns_with_records_unanswered;
            let (t, r) = (&mut totals.snapshots, &report.snapshots);
            t.written += r.written;
            t.failed += r.failed;
            t.segments_retired += r.segments_retired;
            t.installed += r.installed;
            t.unagreed += r.unagreed;
            let (f, r) = (&mut totals.faults, &report.faults);
            f.kills += r.kills;
            f.power_losses += r.power_losses;
            f.pauses += r.pauses;
            f.partitions += r.partitions;
            f.witness_outages += r.witness_outages;
            f.witness_cuts += r.witness_cuts;
            f.cut_primaries_replaced += r.cut_primaries_replaced;
            f.lost_answers += r.lost_answers;
            f.campaigns_won_unanswered += r.campaigns_won_unanswered;
            f.slow_clocks += r.slow_clocks;
            f.fast_clocks += r.fast_clocks;
            f.skewed_clocks += r.skewed_clocks;
            f.switchovers += r.switchovers;
            f.disk_failures += r.disk_failures;
            f.mid_step_crashes += r.mid_step_crashes;
            f.bursts += r.bursts;
            f.bit_flips += r.bit_flips;
            f.repairs += r.repairs;
            f.rebuilds += r.rebuilds;
            f.heals += r.heals;
            f.epochs_dropped += r.epochs_dropped;
            f.failed_handovers += r.failed_handovers;
            f.switchovers_called_off += r.switchovers_called_off;
            f.standbys_stood_down += r.standbys_stood_down;
            f.manual_promotions += r.manual_promotions;
            f.promotions_ahead += r.promotions_ahead;
            f.io_errors += r.io_errors;
            f.sync_point_crashes += r.sync_point_crashes;
            f.clean_stops += r.clean_stops;
            f.async_switches += r.async_switches;
            f.async_switches_unanswered += r.async_switches_unanswered;
            f.async_switches_made_late += r.async_switches_made_late;
            f.standbys_emptied += r.standbys_emptied;
            f.crashes_taken_back += r.crashes_taken_back;
            f.bounds_lifted += r.bounds_lifted;
            f.sync_switches += r.sync_switches;
            let (n, r) = (&mut totals.network, &report.network);
            n.frames += r.frames;
            n.dropped += r.dropped;
            n.held += r.held;
            n.duplicated += r.duplicated;
            n.reordered += r.reordered;
            n.corrupted += r.corrupted;
            n.connections += r.connections;
            n.outlived_sender += r.outlived_sender;
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::machine::Mutation;
    use super::*;

    /// Seeds every CI run checks.
    const FIXED_SEEDS: std::ops::RangeInclusive<u64> = 1..=24;

    /// Seeds that show a bug in the product when its fix is taken out, kept as regression
    /// tests (at the default run length). These lose acknowledged writes when an operator
    /// truncates a standby's damaged journal while the in-sync record still names it and it
    /// takes over with records missing (fixed by the catch-up marker,
    /// `ringfence_journal::datadir::CATCH_UP_FILE`). A seed's path depends on the simulator
    /// too: when the simulator changes, these are found again by taking the fix out.
    const REGRESSION_SEEDS: [u64; 5] = [149, 646, 720, 970, 1223];

    /// The same for manual failover in pairs without a witness: a restarted primary
    /// acknowledging alone before its in-sync standby was back (and before its policy loop
    /// first ran), a standby promoted without having caught up with the current primary, and
    /// a diverged standby reusing the new primary's epoch (two histories under one epoch,
    /// which the next join took for one: journals that differ).
    const MANUAL_REGRESSION_SEEDS: [u64; 7] = [94, 165, 274, 299, 309, 346, 442];

    /// Seeds found once crashes at chosen sync points were simulated: a promotion by hand
    /// whose node stored its new epoch and then failed on a marker, so that, restarted as a
    /// standby, it deposed its primary by an epoch it never led, and neither node could lead
    /// (1036); and a standby promoted by hand because it held all its primary had reported,
    /// while the primary, which had not yet heard that it caught up, still acknowledged
    /// writes alone (51177).
    const SYNC_POINT_REGRESSION_SEEDS: [u64; 2] = [1036, 51177];

    /// Seeds found once snapshots, retention and snapshot transfers were simulated: a standby
    /// that installed its primary's snapshot joined with the snapshot's epoch above its
    /// promise, which the protocol refuses to encode (3); bit rot below every kept snapshot,
    /// where the runbook's truncation left nothing to replay from (6); and a diverged standby
    /// whose only snapshots held the tail it had to drop (523); a power loss part way through
    /// the truncation that starts installing a snapshot, which left a manifest listing a
    /// segment already removed, so the standby never started again (71769).
    const SNAPSHOT_REGRESSION_SEEDS: [u64; 4] = [3, 6, 523, 71769];

    /// The faults of the simulator the older regression seeds were found with: they take the
    /// paths they took then.
    pub(super) fn before_sync_point_crashes() -> RunLength {
        RunLength { sync_point_crashes: false, ..before_snapshots() }
    }

    /// The same for the seeds found before snapshots were simulated.
    fn before_snapshots() -> RunLength {
        RunLength { snapshots: false, ..before_clean_stops() }
    }

    /// The same for the seeds found before clean stops were simulated.
    fn before_clean_stops() -> RunLength {
        RunLength { clean_stops: false, ..before_heals() }
    }

    /// The same for the seeds found before the operator's runbook healed from the peer.
    fn before_heals() -> RunLength {
        RunLength { heals: false, ..before_frames_after_crash() }
    }

    /// The same for the seeds found before frames outlived a crashed sender.
    pub(super) fn before_frames_after_crash() -> RunLength {
        RunLength { frames_after_crash: false, ..before_witness_cuts() }
    }

    /// The same for the seeds found before one machine was cut off from the witness alone.
    pub(super) fn before_witness_cuts() -> RunLength {
        RunLength { witness_cuts: false, ..before_clock_drift() }
    }

    /// The same for the seeds found before the machines' clocks drifted.
    pub(super) fn before_clock_drift() -> RunLength {
        RunLength { max_clock_drift_ppm: 0, ..before_lost_answers() }
    }

    /// The same for the seeds found before the witness's answers were lost.
    pub(super) fn before_lost_answers() -> RunLength {
        RunLength { lost_answers: false, ..before_wall_clock_skew() }
    }

    /// The same for the seeds found before the machines' wall clocks were set apart.
    pub(super) fn before_wall_clock_skew() -> RunLength {
        RunLength { wall_clock_skew: false, ..before_early_follower_turns() }
    }

    /// The same for the seeds found before a standby's follower took turns ahead of its node.
    pub(super) fn before_early_follower_turns() -> RunLength {
        RunLength { early_follower_turns: false, ..RunLength::default() }
    }

    /// `ringfence sim`'s arguments, parsed as its command line gives them.
    #[derive(clap::Parser)]
    struct SimCommand {
        #[command(flatten)]
        args: SimArgs,
    }

    #[test]
    fn a_failing_seed_is_replayed_with_the_flags_it_ran_with() {
        // Goal: the command printed to replay a failing seed runs it as the swarm did: its
        // faults, modes and lengths, not the swarm's seeds, threads or output.
        use clap::Parser as _;
        let parse = |argv: &[&str]| SimCommand::parse_from([&["sim"], argv].concat()).args;
        assert_eq!(replay_command(&parse(&["--seeds", "100"]), 42), "ringfence sim --seed 42");
        let swarm = parse(&[
            "--seeds",
            "100",
            "--first",
            "7",
            "--threads",
            "2",
            "--summary",
            "--unsynced",
            "--async",
            "--max-failover-loss",
            "25",
            "--faults-s",
            "12",
            "--no-witness-cuts",
            "--no-early-follower-turns",
            "--max-clock-drift-ppm",
            "0",
        ]);
        assert_eq!(
            replay_command(&swarm, 42),
            "ringfence sim --seed 42 --faults-s 12 --no-witness-cuts \
             --no-early-follower-turns --unsynced --async --max-failover-loss 25 \
             --max-clock-drift-ppm 0"
        );
    }

    fn short() -> RunLength {
        RunLength { faults_ms: 12_000, settle_ms: 8_000, ..RunLength::default() }
    }

    #[test]
    fn the_same_seed_gives_the_same_trace() {
        // Goal: a run is a function of its seed: two runs of one seed record the same events
        // (the trace hash covers every one, in order) and the same results; another seed does
        // not.
        let first = run_seed(7, short());
        let again = run_seed(7, short());
        assert_eq!(first.trace_hash, again.trace_hash);
        assert_eq!((first.events, first.answers), (again.events, again.answers));
        assert_eq!(first.writes_acknowledged, again.writes_acknowledged);
        assert!(first.events > 10 && first.writes_acknowledged > 100, "{first:?}");
        assert_ne!(run_seed(8, short()).trace_hash, first.trace_hash);
    }

    #[test]
    fn a_fixed_set_of_seeds_passes_every_checker() {
        // Goal: the product survives the fixed seeds' crashes, power losses, pauses,
        // partitions, witness outages and switchovers with every checker passing, and the
        // seeds did inject those faults, fail over, take snapshots, retire segments, start a
        // standby from its primary's snapshot, crash nodes at chosen sync points and end
        // standbys' turns with records their node had not yet answered.
        let seeds: Vec<u64> = FIXED_SEEDS.collect();
        let reports = swarm(&seeds, short(), 2, false);
        for report in &reports {
            assert!(
                report.failure.is_none(),
                "seed {}: {:?}\n{}",
                report.seed,
                report.failure,
                report.last_events.join("\n")
            );
        }
        let kills: u64 = reports.iter().map(|r| r.faults.kills + r.faults.power_losses).sum();
        let failovers: u64 = reports.iter().map(|r| r.failovers).sum();
        let partitions: u64 = reports.iter().map(|r| r.faults.partitions).sum();
        assert!(
            kills >= 10 && partitions >= 10,
            "too calm: {kills} crashes, {partitions} partitions"
        );
        assert!(failovers > seeds.len() as u64, "only {failovers} failovers");
        let sum = |count: fn(&Report) -> u64| reports.iter().map(count).sum::<u64>();
        let written = sum(|r| r.snapshots.written);
        let retired = sum(|r| r.snapshots.segments_retired);
        let installed = sum(|r| r.snapshots.installed);
        let struck = sum(|r| r.faults.sync_point_crashes);
        let stops = sum(|r| r.faults.clean_stops);
        assert!(stops >= 3, "only {stops} clean stops");
        assert!(written >= 24 && retired >= 10, "{written} snapshots, {retired} segments retired");
        assert!(installed >= 1, "no standby started from its primary's snapshot");
        assert!(struck >= 10, "only {struck} crashes at a chosen sync point");
        let unanswered = sum(|r| r.turns_with_records_unanswered);
        assert!(unanswered >= 1_000, "only {unanswered} standby turns with records unanswered");
        let outlived = sum(|r| r.network.outlived_sender);
        assert!(outlived >= 1, "no frame arrived after its sender crashed or stopped");
        let cuts = sum(|r| r.faults.witness_cuts);
        assert!(cuts >= 3, "only {cuts} machines cut off from the witness alone");
        let losses = sum(|r| r.faults.lost_answers);
        assert!(losses >= 3, "only {losses} spells of the witness's answers lost");
        let (slow, fast) = (sum(|r| r.faults.slow_clocks), sum(|r| r.faults.fast_clocks));
        assert!(slow >= 1 && fast >= 1, "{slow} clocks 1% slow or more, {fast} 1% fast");
        let skewed = sum(|r| r.faults.skewed_clocks);
        assert!(skewed >= 3, "only {skewed} wall clocks set minutes apart");
    }

    #[test]
    fn a_primary_cut_off_from_the_witness_alone_is_replaced_and_loses_nothing() {
        // Goal: seeds where the primary alone lost the witness for longer than its lease,
        // while it still reached its standby and its clients: the standby took the key and
        // office in a later epoch during the cut, while the cut primary ran on (journaling
        // writes it could no longer get acknowledged), and every checker passes (no epoch
        // with two writers, nothing acknowledged lost). The deposed primary rejoins once it
        // reaches the witness, dropping what the new primary never received.
        let did = |r: &Report| r.faults.cut_primaries_replaced >= 1;
        let length = RunLength {
            max_clock_drift_ppm: 0,
            lost_answers: false,
            wall_clock_skew: false,
            early_follower_turns: false,
            ..short()
        };
        regressions_pass(&[45, 74], length, "no cut primary replaced", did);
    }

    #[test]
    fn a_candidate_whose_campaign_took_the_key_unanswered_leads() {
        // Goal: the witness committed a candidate's campaign and the answer was lost (etcd
        // slow to sync it, the call timed out). The key then held the candidate's name, bound
        // to the lease it kept renewing, and the candidate took it for a leadership left over
        // from before a restart: it waited for that lease to expire while renewing it, and
        // nobody led again (no primary when these seeds settled). It now knows the key for
        // its own and leads with it. Seed 1140 was one; since a primary whose journal failed
        // hands over, it takes another path, and seed 246, which fails the same way without
        // `driver::taken_unanswered`, stands in for it.
        let did = |r: &Report| r.faults.campaigns_won_unanswered >= 1;
        regressions_pass(&[246, 2103], before_wall_clock_skew(), "no campaign unanswered", did);
    }

    #[test]
    fn a_record_written_unanswered_is_acted_on_once_a_read_shows_it() {
        // Goal: a primary whose standby died wrote "no standby" to the witness and the answer
        // was lost, so it went on holding writes as if its standby were still in sync, and
        // kept its marker saying so, while the witness named it alone. It lost power then
        // (`--unsynced`): it restarted marked catching up (its standby might hold writes it
        // lost), and the witness let nobody else lead, so nobody led again. It now acts on a
        // record its next read shows written, as if the write had answered.
        let did = |r: &Report| r.faults.lost_answers >= 1 && r.faults.power_losses >= 1;
        let unsynced = RunLength { unsynced: true, ..before_wall_clock_skew() };
        regressions_pass(&[600_531], unsynced, "no record written unanswered", did);
    }

    #[test]
    fn a_primary_whose_clock_runs_slower_than_its_lease_margin_allows_is_caught() {
        // Goal: the checkers bite on the lease's one assumption, a clock that keeps the
        // witness's time within the margin (a quarter of the TTL). On these seeds, under
        // `--async`, a primary whose clock runs slow past the margin is cut off from the
        // witness, its lease runs out while its own clock says it has time left, its standby
        // takes over, and it goes on acknowledging writes alone: the simulator catches the
        // first. With clocks within the default 10%, the same seeds pass. (Seeds 300272 and
        // 300051 showed it too until a promoted standby stamped on its primary's time line,
        // and a primary whose journal failed handed over, which moved them onto other paths;
        // 301326 and 300901 show it now.)
        let seeds = [300_901, 301_326];
        let slow = RunLength { max_clock_drift_ppm: 600_000, ..with_async(before_lost_answers()) };
        for report in swarm(&seeds, slow, 2, false) {
            let failure = report.failure.unwrap_or_default();
            let caught = failure.contains("alone") && failure.contains("lease deadline");
            assert!(caught, "seed {}: {failure:?}", report.seed);
        }
        let did = |r: &Report| r.failovers >= 2 && r.faults.witness_cuts >= 1;
        regressions_pass(&seeds, with_async(before_lost_answers()), "no failover after a cut", did);
    }

    #[test]
    fn a_drifting_clock_reads_its_share_of_the_witness_time() {
        // Goal: a clock drifting by N ppm reads N millionths more (or less) than the
        // witness's time, and drifts are drawn within the bound, of both signs, or not at all.
        assert_eq!(world::drifted_ns(1_000, 0), 1_000_000_000);
        assert_eq!(world::drifted_ns(1_000, -250_000), 750_000_000);
        assert_eq!(world::drifted_ns(2_000, 100), 2_000_200_000);
        let mut prng = ringfence_core::prng::Prng::new(5);
        let drifts: Vec<i64> = (0..200).map(|_| world::draw_drift(&mut prng, 100_000)).collect();
        assert!(drifts.iter().all(|d| d.abs() <= 100_000));
        assert!(drifts.contains(&-100_000) && drifts.contains(&100_000) && drifts.contains(&0));
        assert_eq!(world::draw_drift(&mut prng, 0), 0);
    }

    #[test]
    fn the_seeds_that_found_bugs_pass() {
        // Goal: every seed that once found a bug passes every checker with its fix, and
        // still goes through the repair that found it.
        regressions_pass(
            &REGRESSION_SEEDS,
            before_sync_point_crashes(),
            "repaired no journal",
            |r: &Report| r.faults.repairs >= 1,
        );
    }

    #[test]
    fn the_manual_failover_seeds_that_found_bugs_pass() {
        // Goal: every seed of a pair without a witness that once lost acknowledged writes or
        // reused an epoch passes with the fixes, and still promotes by hand.
        regressions_pass(
            &MANUAL_REGRESSION_SEEDS,
            before_sync_point_crashes(),
            "no promotion",
            |r: &Report| r.faults.manual_promotions >= 1,
        );
    }

    #[test]
    fn the_sync_point_crash_seeds_that_found_bugs_pass() {
        // Goal: every seed found with crashes at sync points that once left the pair unable
        // to lead or lost acknowledged writes passes with its fix, and still crashes a node at
        // a sync point.
        regressions_pass(
            &SYNC_POINT_REGRESSION_SEEDS,
            before_snapshots(),
            "no crash at a sync point",
            |r: &Report| r.faults.sync_point_crashes >= 1,
        );
    }

    /// Seeds on which the operator's first repair, the rebuild after a snapshot that covers
    /// the damage, succeeds: bit rot at rest on a node that had crashed (132) or, on seeds
    /// that also stop nodes cleanly, on one that may have stopped either way (123, 168).
    const REBUILD_SEEDS: [u64; 3] = [129, 132, 168];

    #[test]
    fn the_rebuild_seeds_repair_without_dropping_a_record() {
        // Goal: a journal damaged at rest where a snapshot covers the damage is rebuilt after
        // it, and the pair goes on with every checker passing (nothing acknowledged lost).
        regressions_pass(
            &REBUILD_SEEDS,
            before_frames_after_crash(),
            "no journal rebuilt",
            |r: &Report| r.faults.rebuilds >= 1,
        );
    }

    #[test]
    fn a_rebuild_never_drops_a_last_record_rotted_at_rest() {
        // Goal: seed 7100242: a standby in sync lost power holding its primary's last
        // acknowledged write as its own last record; bit rot then struck that record and one
        // a snapshot covers. The rebuild after the snapshot copied the records after it and
        // took the rotted last one for a crash's torn write, dropping it; the node took over
        // without a payment its primary had acknowledged. The rebuild now refuses (the last
        // record is damage at rest), and the runbook's next repairs keep the write.
        let did = |r: &Report| r.faults.bit_flips >= 2;
        regressions_pass(&[7_100_242], before_early_follower_turns(), "no bit rot", did);
    }

    #[test]
    fn a_pair_journaling_without_sync_survives_one_power_loss() {
        // Goal: with durability `none` on both nodes, seeds that strike one machine with a
        // power loss pass every checker: what it acknowledged is taken from the other
        // machine's copy (a sender reads the published bytes, a lost page cache is told from a
        // kill by the machine's boot). In seeds 12 and 23 the machine that loses power had
        // answered alone first (its peer down): they lost acknowledged writes until answers
        // given alone waited for a local sync. In seed 77 the primary went on alone and lost
        // power before it synced what the pair had acknowledged, until it synced first. In
        // seed 32 a standby streamed on after a record the primary had retired, its own
        // differing, until the primary's first record's epoch had to match. In seeds 18 and
        // 29 the primary lost power after its standby caught up and before the witness named
        // it: the pair was left without a primary until a standby counted only once named.
        // In seed 608 the simulator itself armed a second power loss, on the standby as its
        // primary lost power, until that loss was counted before the standby was armed.
        let unsynced = RunLength { unsynced: true, ..before_frames_after_crash() };
        let seeds = [1, 3, 6, 12, 18, 23, 29, 32, 77, 608];
        regressions_pass(&seeds, unsynced, "no power loss", |r: &Report| {
            r.faults.power_losses == 1
        });
    }

    #[test]
    fn a_standby_ahead_of_a_primary_that_lost_power_is_promoted_by_hand() {
        // Goal: under durability `none`, the primary loses power and comes back without
        // records its standby holds, and the standby has restarted since it last caught up.
        // Told where the primary's journal ends, the standby finds it holds all of it, and
        // the operator's promotion (no force) succeeds and loses nothing. Before primaries
        // said so, every promotion by hand on this seed was refused.
        let unsynced = RunLength { unsynced: true, ..before_frames_after_crash() };
        regressions_pass(&[309], unsynced, "no promotion of a standby ahead", |r: &Report| {
            r.faults.promotions_ahead == 1 && r.faults.power_losses == 1
        });
    }

    #[test]
    fn a_standby_rebuilt_after_a_snapshot_vouches_for_its_primary_and_is_followed_on() {
        // Goal: under durability `none`, the primary loses power and comes back with its
        // journal ending at 72; the standby's journal, damaged at rest, is rebuilt after its
        // snapshot through 250, so it holds no record at or after 72 to compare. The epoch
        // the snapshot recorded for its record 250 (that of the primary's 72) shows it holds
        // the primary's whole journal: the operator promotes it without force, and the old
        // primary, which installs its snapshot, streams on after it rather than fetching the
        // same snapshot again and again. Before snapshots recorded the epoch, the pair was
        // left without a primary taking writes; and before a primary sent the recorded epoch,
        // the old primary fetched the snapshot 120 times.
        let unsynced = RunLength { unsynced: true, ..before_frames_after_crash() };
        regressions_pass(&[738], unsynced, "not as found", |r: &Report| {
            let fetched = r.snapshots.installed;
            r.faults.rebuilds == 1 && r.faults.promotions_ahead == 1 && (1..=2).contains(&fetched)
        });
    }

    #[test]
    fn a_standby_holding_the_only_copy_heals_its_damage_from_the_primary_and_loses_nothing() {
        // Goal: under durability `none`, the primary loses power and comes back behind its
        // standby, which holds acknowledged records it lost; then a bit flips at rest in the
        // standby's copy of a record the primary still holds, and no snapshot covers it. The
        // runbook's truncation at the damage dropped the records only the standby held (both
        // seeds lost acknowledged writes; `--no-heals` replays that). The operator now heals
        // the record from the primary's journal, the standby is promoted, nothing is lost.
        let unsynced = RunLength { unsynced: true, ..before_frames_after_crash() };
        regressions_pass(&[1537, 1539], unsynced, "no journal healed", |r: &Report| {
            r.faults.heals >= 1 && r.faults.power_losses == 1 && r.faults.promotions_ahead >= 1
        });
    }

    #[test]
    fn bit_rot_under_none_strikes_only_a_record_the_peer_holds_durably() {
        // Goal: under durability `none`, bit rot at rest strikes a stopped machine's record
        // only where the leading peer holds it durably, or a snapshot covers it. Seed 130927
        // found it: its rot struck a record the peer had only written; the peer then lost
        // power, the record was lost on both machines (two failures, beyond what the pair
        // survives), and the pair rightly held writes to the end, which the checker reported
        // as a primary refusing writes after settling. Seed 130928 takes that kind of path: a
        // power loss and a bit flip, every checker passing.
        let unsynced = RunLength { unsynced: true, ..before_frames_after_crash() };
        regressions_pass(&[130928], unsynced, "no power loss or no rot", |r: &Report| {
            r.faults.power_losses == 1 && r.faults.bit_flips >= 1
        });
    }

    #[test]
    fn no_crash_armed_during_the_faults_strikes_after_them() {
        // Goal: once the faults end, a crash armed at a sync point or at the next snapshot's
        // is taken back. This seed armed a kill at a's next snapshot at 18.8 s; it struck at
        // 30.3 s, while the pair settled, and a was still down when the run ended ("not both
        // running after settling"). It now passes with its power loss and a crash still armed
        // when the faults ended, taken back.
        let unsynced = RunLength { unsynced: true, ..before_frames_after_crash() };
        regressions_pass(&[162550], unsynced, "no crash taken back", |r: &Report| {
            r.faults.power_losses == 1 && r.faults.crashes_taken_back >= 1
        });
    }

    #[test]
    fn a_leader_that_never_took_office_leaves_the_old_primary_eligible() {
        // Goal: under durability `none`, the standby takes the leader key, its promotion fails
        // on its disk, and later it loses power: it may lack what it acknowledged as a
        // standby. Its campaign left the witness's record naming the old primary, which holds
        // everything the pair acknowledged, so the old primary leads again and the pair ends
        // serving with nothing lost. Before a campaign kept the record's names until the new
        // leader took office, both seeds ended with no primary.
        let unsynced = RunLength { unsynced: true, ..before_frames_after_crash() };
        regressions_pass(&[327, 30555], unsynced, "no failed promotion", |r: &Report| {
            r.promotions_failed >= 1 && r.faults.power_losses == 1
        });
    }

    #[test]
    fn the_snapshot_seeds_that_found_bugs_pass() {
        // Goal: every seed that found a bug in snapshot transfer or repair passes with its
        // fix, and still takes a snapshot from its primary.
        regressions_pass(
            &SNAPSHOT_REGRESSION_SEEDS,
            before_clean_stops(),
            "no snapshot taken",
            |r: &Report| r.snapshots.installed >= 1,
        );
    }

    /// Each of `seeds` passes every checker and still takes the path (`did`) on which it found
    /// its bug, or the test fails saying it did not (`what`).
    fn regressions_pass(seeds: &[u64], length: RunLength, what: &str, did: fn(&Report) -> bool) {
        for report in swarm(seeds, length, 2, false) {
            assert!(report.failure.is_none(), "seed {}: {:?}", report.seed, report.failure);
            assert!(did(&report), "seed {}: {what}", report.seed);
        }
    }

    /// The operator switching the primary between `sync` and `async` (`--async`).
    fn with_async(length: RunLength) -> RunLength {
        RunLength { async_switches: true, ..length }
    }

    #[test]
    fn under_async_only_writes_a_failover_may_lose_are_lost() {
        // Goal: with the operator switching the primary between `sync` and `async`, every
        // checker passes: a write is lost only if it was acknowledged under `async` (or past
        // what the standby held when the switch came) and a later epoch's record replaced
        // it; everything else holds, and no epoch has two writers. The seeds do lose writes
        // that way, so the allowance is exercised, not idle.
        let reports = swarm(&(1..17).collect::<Vec<u64>>(), with_async(short()), 2, false);
        for report in &reports {
            assert!(report.failure.is_none(), "seed {}: {:?}", report.seed, report.failure);
        }
        let sum = |count: fn(&Report) -> u64| reports.iter().map(count).sum::<u64>();
        assert!(sum(|r| r.faults.async_switches) >= 16 && sum(|r| r.faults.sync_switches) >= 8);
        let (at_risk, lost) = (sum(|r| r.writes_at_risk), sum(|r| r.writes_lost));
        assert!(lost > 0 && lost < at_risk && at_risk < sum(|r| r.writes_acknowledged));
    }

    /// `--async` with both nodes started with `--max-failover-loss 0`.
    fn with_bound(length: RunLength) -> RunLength {
        RunLength { max_failover_loss: Some(0), ..with_async(length) }
    }

    #[test]
    fn under_a_failover_loss_bound_no_node_takes_the_key_further_behind() {
        // Goal: with both nodes started with `--max-failover-loss 0` under `--async`, every
        // checker passes, the bound's among them: no node took the key over an `async` record
        // naming another primary that said it lagged at all. Failovers still happen.
        let reports = swarm(&(1..9).collect::<Vec<u64>>(), with_bound(short()), 2, false);
        for report in &reports {
            assert!(report.failure.is_none(), "seed {}: {:?}", report.seed, report.failure);
        }
        assert!(reports.iter().map(|r| r.failovers).sum::<u64>() >= 8);
        assert!(reports.iter().map(|r| r.faults.async_switches).sum::<u64>() >= 8);
    }

    #[test]
    fn a_node_that_ignores_its_failover_loss_bound_is_caught() {
        // Goal: the bound's checker bites: nodes that run without the bound they were started
        // with take the key over `async` records far behind, and a seed shows it within a few.
        let found = (1..30).find_map(|seed| {
            let world =
                || World::mutated(seed, with_bound(short()), Mutation::IgnoresFailoverBound);
            run_world(seed, world).failure
        });
        let failure = found.expect("no seed caught a node ignoring its bound");
        assert!(failure.contains("under --max-failover-loss 0"), "{failure}");
    }

    /// Seeds `--async` found, without a witness: a standby promoted by hand took the epoch
    /// after its primary's, which that primary, restarted meanwhile under `async` (204, 369,
    /// 602) or switched to `async` while it held writes for its standby after a restart (542),
    /// was already acknowledging in: two writers in one epoch, or two records under one
    /// sequence and epoch.
    const ASYNC_REGRESSION_SEEDS: [u64; 4] = [204, 369, 542, 602];

    #[test]
    fn a_promotion_by_hand_never_shares_an_epoch_with_a_restarted_primary_under_async() {
        // Goal: the seeds where a promotion by hand reused the epoch of a restarted primary
        // under `async` pass, each with a promotion by hand.
        let did = |r: &Report| r.faults.manual_promotions >= 1;
        let length = with_async(before_witness_cuts());
        regressions_pass(&ASYNC_REGRESSION_SEEDS, length, "no promotion by hand", did);
    }

    #[test]
    fn a_primary_under_async_leaves_no_in_sync_marker_to_wait_on_after_a_power_loss() {
        // Goal: seed 311 under `--unsynced --async`: a primary whose standby caught up under
        // `async` wrote the in-sync marker; back in `sync` and recorded alone, it lost power
        // and restarted marked catching up, while the witness's record let nobody else lead:
        // no primary at the end. Under `async` no marker is written now, and the seed passes.
        let length = RunLength { unsynced: true, ..with_async(before_witness_cuts()) };
        regressions_pass(&[311], length, "no power loss", |r| r.faults.power_losses == 1);
    }

    #[test]
    fn under_an_async_record_an_emptied_directory_waits_for_a_primary() {
        // Goal: seed 1613 under `--async`: bit rot nothing could repair left a node whose
        // operator emptied its data directory; the witness's record said `async`, the
        // primary was down, and the emptied node took the key, so the old primary dropped its
        // whole journal on rejoining. It now waits for a primary to fetch from, and the seed
        // passes.
        let did = |r: &Report| r.faults.repairs >= 1;
        regressions_pass(&[1613], with_async(before_witness_cuts()), "no journal repaired", did);
    }

    #[test]
    fn a_switch_to_async_puts_at_risk_the_writes_its_primary_holds_only_in_a_snapshot() {
        // Goal: seed 3412 under `--unsynced --async`, a flaw of the checker's allowance, not of
        // the product: b acknowledged record 3188 in sync and lost it to a power loss; a, which
        // held it, led, retired the segment after a snapshot and switched to `async`, so b,
        // back and behind, took over and lost it, as `async` allows. The allowance read only
        // a's journal, so it missed that a held the write; it now asks a's recovered state too.
        let length = RunLength { unsynced: true, ..with_async(before_witness_cuts()) };
        let did = |r: &Report| r.writes_lost > 0 && r.faults.power_losses == 1;
        regressions_pass(&[3412], length, "no write lost to a failover", did);
    }

    #[test]
    fn a_journal_started_from_a_primary_snapshot_rebuilds_after_bit_rot() {
        // Goal: seed 6197 under `--unsynced --async`: a standby took its primary's snapshot,
        // dropping a journal whose retention had retired past that snapshot; the manifest kept
        // the old retirement mark, so when bit rot struck the new journal, the operator's
        // rebuild set the damaged segment aside without listing its copy, and the node never
        // started again. The truncation now lowers the mark, and the rebuild rewrites a
        // manifest that does not start at the snapshot (`journal/tests/rebuild.rs`). Since a
        // promoted standby stamps on its primary's time line, seed 6197 takes another path;
        // seed 6030 takes the same steps: a snapshot installed from the primary, then a
        // journal rebuilt after bit rot.
        let length = RunLength { unsynced: true, ..with_async(before_witness_cuts()) };
        let did = |r: &Report| r.faults.rebuilds >= 1 && r.snapshots.installed >= 1;
        regressions_pass(&[6030], length, "no journal rebuilt after a snapshot install", did);
    }

    #[test]
    fn a_standby_that_led_an_epoch_its_primary_never_held_rejoins() {
        // Goal: seed 800303 under `--unsynced --async`: a standby that had led epoch 3 alone
        // wrote 600 records its new primary, whose records there are of epoch 2, never held.
        // The primary could not see where that epoch began and named one record a round, and
        // the standby restarted 441 times, dropping one each, and had not rejoined when the
        // run ended. The second such answer now tells it to drop the whole epoch.
        let length = RunLength { unsynced: true, ..with_async(before_early_follower_turns()) };
        let did = |r: &Report| r.faults.epochs_dropped >= 1;
        regressions_pass(&[800_303], length, "no diverged epoch dropped at once", did);
    }

    #[test]
    fn a_switch_to_async_recorded_though_its_answer_was_lost_counts_as_made() {
        // Goal: the operator's switch to `async` writes the record before the primary uses
        // it, and the witness may take the write and lose the answer. Seed 3100362: b,
        // acknowledging alone in sync, was told its switch failed and lost power; the record
        // said async all the same, so a, behind, took over and lost writes b acknowledged
        // before the switch, as async allows. The checkers took the switch for not made and
        // failed the seed. Seed 3100030: the primary lives on, reads the record, and makes
        // the switch it was asked for (`Driver::set_mode` keeps the record as unanswered),
        // so what the witness says and what the node does agree.
        let length = with_async(before_early_follower_turns());
        let did = |r: &Report| r.faults.async_switches_unanswered >= 1 && r.writes_lost > 0;
        regressions_pass(&[3_100_362], length, "no unanswered switch, or no write lost", did);
        let did = |r: &Report| r.faults.async_switches_made_late >= 1;
        regressions_pass(&[3_100_030], length, "no unanswered switch made once read", did);
    }

    #[test]
    fn a_switchover_whose_standby_is_lost_is_called_off_and_every_checker_passes() {
        // Goal: seed 12076: the standby asks for a switchover and is lost before it is handed
        // the key. The primary, which hears nothing from it after holding the writes, calls
        // the switchover off and writes on alone; every checker passes.
        let did = |r: &Report| r.faults.switchovers_called_off >= 1;
        regressions_pass(&[12_076], before_early_follower_turns(), "no switchover called off", did);
    }

    #[test]
    fn a_primary_whose_journal_failed_hands_the_key_to_its_standby() {
        // Goal: seed 221: the primary's journal fails while its standby is in sync. It gives
        // up the leader key within a round or two instead of refusing writes until the
        // operator replaces the disk; the standby takes over, and every checker passes.
        let did = |r: &Report| r.faults.failed_handovers >= 1 && r.failovers >= 1;
        regressions_pass(&[221], before_early_follower_turns(), "no primary handed over", did);
    }

    #[test]
    fn a_standby_whose_journal_failed_stands_down_and_every_checker_passes() {
        // Goal: seeds 59 and 110: a standby's disk fails under the witness. It follows
        // nobody and does not stand for the key (`Driver::member`, `pilot::leaderless`), the
        // primary goes on alone, and every checker passes.
        let did = |r: &Report| r.faults.standbys_stood_down >= 1;
        regressions_pass(&[59, 110], before_early_follower_turns(), "no standby stood down", did);
    }

    #[test]
    fn a_standby_split_from_its_primary_is_started_anew_by_the_runbook() {
        // Goal: seed 5241 under `--unsynced --async`, without a witness: a primary lost power
        // with records its paused standby held, restarted, and the operator's `async` let it
        // acknowledge others alone. Back, the standby held records the primary lacked and
        // lacked the primary's: refused, as it should be, but the simulated operator had no
        // step for it, and the pair never converged. The refusal now names the two choices,
        // the standby shows it in `/v1/node`, and the operator keeps the serving primary's
        // history and starts the standby anew; only writes `async` put at risk are lost.
        let length = RunLength { unsynced: true, ..with_async(before_witness_cuts()) };
        let did = |r: &Report| r.faults.standbys_emptied >= 1 && r.writes_lost > 0;
        regressions_pass(&[5241], length, "no standby started anew", did);
    }

    #[test]
    fn under_an_async_record_a_standby_cut_after_the_switch_puts_the_writes_past_its_cut_at_risk() {
        // Goal: seed 10073 under `--async`, a flaw of the checker's allowance: a write the
        // standby held durably when its primary switched to `async` was lost when bit rot
        // made the operator truncate the standby below it, and the witness's `async` record
        // then let the truncated standby take over, as `docs/failover.md` says it may. The
        // allowance counted only what the standby held at the switch; a cut under an `async`
        // record now puts the writes past it at risk too.
        let did = |r: &Report| r.faults.repairs >= 1 && r.writes_lost > 0;
        regressions_pass(&[10073], with_async(before_witness_cuts()), "no write lost", did);
    }

    #[test]
    fn a_standby_is_recorded_in_sync_only_once_its_directory_has_caught_up() {
        // Goal: seed 10075 under `--unsynced`: at the pair's birth the standby, its directory
        // new and so marked catching up, acknowledged everything and the witness recorded it
        // in sync; it was paused before it learnt it had caught up, and the primary then lost
        // power under `none` and marked itself catching up. Each waited for the other, and
        // nothing was ever acknowledged. The standby's acknowledgements now say whether its
        // directory is catching up, the primary names it only once it is not, and the seed
        // serves.
        let length = RunLength { unsynced: true, ..before_witness_cuts() };
        let did = |r: &Report| r.faults.power_losses == 1 && r.writes_acknowledged > 0;
        regressions_pass(&[10075], length, "no power loss, or nothing acknowledged", did);
    }

    /// The first seed among `seeds` whose run of `mutation` fails, with its failure.
    fn caught(mutation: Mutation, seeds: std::ops::Range<u64>) -> Option<(u64, String)> {
        seeds.into_iter().find_map(|seed| {
            let report = run_world(seed, || World::mutated(seed, short(), mutation));
            report.failure.map(|failure| (seed, failure))
        })
    }

    /// The first seed of `seeds` that fails with the mutation `switch` turns on for this
    /// thread, and its failure, which must mention `names`; the mutation is off again after,
    /// and that seed passes without it.
    #[cfg(feature = "mutations")]
    fn caught_switched(switch: fn(bool), seeds: std::ops::Range<u64>, names: &str) -> u64 {
        switch(true);
        let found = seeds.into_iter().find_map(|seed| {
            let failure = run_seed(seed, short()).failure?;
            Some((seed, failure))
        });
        switch(false);
        let (seed, failure) = found.unwrap_or_else(|| panic!("no seed caught it ({names})"));
        eprintln!("caught by seed {seed}: {failure}");
        assert!(failure.contains(names), "seed {seed}: {failure}");
        let unmutated = run_seed(seed, short());
        assert!(unmutated.failure.is_none(), "seed {seed} fails unmutated: {unmutated:?}");
        seed
    }

    #[test]
    fn a_primary_that_counts_sent_records_as_acknowledged_is_caught() {
        // Goal: the checkers bite: a primary that releases answers once records are sent
        // (not once the standby wrote them) loses acknowledged writes when it dies, and the
        // simulator finds a seed that shows it within a few.
        let found = caught(Mutation::AckUnsent, 1..40);
        let (seed, failure) = found.expect("no seed caught the broken acknowledgement");
        assert!(
            failure.contains("final state") || failure.contains("answered"),
            "seed {seed}: {failure}"
        );
    }

    #[test]
    fn a_node_taking_office_in_its_old_epoch_is_caught_by_the_durable_record_checker() {
        // Goal: the durable-record checker bites. A node that takes office under the witness
        // but journals in the epoch it held before writes its records under the sequences and
        // the epoch of its predecessor's last unreplicated ones, and the checker finds two
        // machines holding different durable records under one name within a few dozen seeds.
        // The ledger catches most seeds first (two nodes acknowledged writes in one epoch); the
        // search is for one the durable records show.
        let found = (1..80).find_map(|seed| {
            let world = || World::mutated(seed, short(), Mutation::OfficeKeepsEpoch);
            let failure = run_world(seed, world).failure?;
            failure.contains("a sequence and an epoch name two records").then_some(seed)
        });
        let seed = found.expect("no seed's durable records showed the reused epoch");
        eprintln!("caught by seed {seed}");
        // The product as built passes that seed: the two records are the mutation's.
        let unmutated = run_seed(seed, short());
        assert!(unmutated.failure.is_none(), "seed {seed} fails unmutated: {unmutated:?}");
    }

    #[cfg(feature = "mutations")]
    #[test]
    fn a_standby_promoted_on_its_own_clock_is_caught() {
        // Goal: the time-line checker bites. A standby that stamps by its own clock once
        // promoted, where the seed set its wall clock minutes off its primary's, is caught
        // within a few dozen seeds: it took office that far off its primary's time line. Two
        // hours off (past the request-key window), the same node answered a retried request
        // with a second order; the checker sees it at the promotion, whatever the lead.
        let switch = ringfence_core::mutation::set_promotion_keeps_clock;
        caught_switched(switch, 1..60, "from the time line of epoch");
    }

    #[cfg(feature = "mutations")]
    #[test]
    fn a_standby_acknowledging_records_it_only_submitted_is_caught() {
        // Goal: the simulator runs the production follower's acknowledgements, and its checker
        // of them bites. A standby that acknowledges every record handed to its node, before
        // its journal holds it, lets its primary answer writes the pair may lose; the checker
        // sees an acknowledgement past what the standby's journal held durably.
        let switch = ringfence_replicator::mutation::set_standby_acks_submitted;
        caught_switched(switch, 1..150, "acknowledged record");
    }

    #[cfg(feature = "mutations")]
    #[test]
    fn a_snapshot_whose_epoch_history_is_one_record_off_is_caught() {
        // Goal: the epoch-history checker bites. Snapshots whose history starts each epoch
        // after the first one record late (so a standby replaced by one would misjudge the
        // record where two histories part) are caught at the end of the first seed whose
        // journals hold records of two epochs under a snapshot.
        let switch = ringfence_journal::mutation::set_history_off_by_one;
        caught_switched(switch, 1..20, "epoch history names epoch");
    }

    #[cfg(feature = "mutations")]
    #[test]
    fn snapshots_that_lose_their_epoch_history_are_caught() {
        // Goal: the epoch-history checker bites on a history lost, not only on one that is
        // wrong: snapshots written with no history (a standby replaced by one would keep
        // nothing of what was never its primary's) are caught on the first seed that writes
        // a snapshot over a journal that holds every record from the first.
        let switch = ringfence_journal::mutation::set_history_lost;
        caught_switched(switch, 1..20, "epoch history names no epoch");
    }

    #[cfg(feature = "mutations")]
    #[test]
    fn an_engine_that_skips_the_stock_check_is_caught() {
        // Goal: the checkers bite: an engine that reserves past its stock is caught on the
        // first seed — by the engine's own balance assertion or by the stock balance the
        // simulator checks after every command, whichever sees it first.
        ringfence_core::mutation::set_skip_stock_check(true);
        let found = caught(Mutation::SkipStockCheck, 1..3);
        ringfence_core::mutation::set_skip_stock_check(false);
        let (_, failure) = found.expect("no seed caught the oversold stock");
        assert!(failure.contains("balance") || failure.contains("lost units"), "{failure}");
    }
}

#[cfg(all(test, feature = "mutations"))]
mod recovery_mutation {
    use super::machine::Mutation;
    use super::tests::before_sync_point_crashes;
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn a_recovery_that_drops_damage_silently_is_caught() {
        // Goal: the checkers bite: a recovery that cuts a journal at a damaged record without
        // refusing (so nobody repairs it knowingly, and no catch-up marker is left) lets a
        // node that lost acknowledged records take over; the simulator finds a seed.
        // Two threads take the seeds in turn (the switch is per thread) until one fails. Seed
        // 149, the one that caught it first, goes first; should a change to the simulator move
        // the loss elsewhere, the search goes on through the first 400.
        const FIRST_CATCH: u64 = 149;
        let seeds: Vec<u64> =
            std::iter::once(FIRST_CATCH).chain((1..400).filter(|&s| s != FIRST_CATCH)).collect();
        let next = AtomicUsize::new(0);
        let found = Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    ringfence_journal::mutation::set_ignores_damage(true);
                    while let Some(&seed) = seeds.get(next.fetch_add(1, Ordering::Relaxed)) {
                        if found.lock().unwrap().is_some() {
                            break;
                        }
                        let mutation = Mutation::RecoveryIgnoresDamage;
                        let world = || World::mutated(seed, before_sync_point_crashes(), mutation);
                        // The loss of acknowledged writes, which is what makes the silent cut
                        // dangerous. Searched in the simulator as it was when seed 149 first
                        // caught it: with snapshots and crashes at sync points, the first 400
                        // seeds show it only as a directory nothing recovers, which is caught
                        // too but proves less.
                        let failure = run_world(seed, world).failure;
                        if let Some(failure) = failure.filter(|f| lost_writes(f)) {
                            found.lock().unwrap().get_or_insert((seed, failure));
                        }
                    }
                });
            }
        });
        let found = found.into_inner().unwrap();
        let (seed, failure) = found.expect("no seed caught the silent cut losing writes");
        eprintln!("caught by seed {seed}: {failure}");
        // The product as built passes that seed: the loss is the mutation's.
        let unmutated = run_seed(seed, before_sync_point_crashes());
        assert!(unmutated.failure.is_none(), "seed {seed} fails unmutated: {unmutated:?}");
    }

    /// A failure that says an acknowledged write is not in the final state.
    fn lost_writes(failure: &str) -> bool {
        failure.contains("final state") || failure.contains("answered")
    }
}
