//! `ringfence-perf`: benchmarks that print throughput and latency percentiles.
//!
//! Every subcommand prints an aligned table, or one JSON object per row with `--json`, and
//! finishes quickly with `--quick`. Figures are printed, never asserted: compare variants
//! measured in the same run, as ratios.

mod ack;
mod blp;
mod failover;
mod floor;
mod journal;
mod load;
mod naive;
mod net;
mod pages;
mod pipeline;
mod redis;
mod replay;
mod replication;
mod report;
mod ring;

#[global_allocator]
static ALLOCATOR: pages::WarmPages = pages::WarmPages;

use clap::{Args, Parser, Subcommand};

/// Benchmarks for ringfence. Each prints throughput and HdrHistogram percentiles.
#[derive(Parser, Debug)]
#[command(name = "ringfence-perf", version, about)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

/// Options every benchmark takes.
#[derive(Args, Debug, Clone, Copy)]
struct Common {
    /// Print one JSON object per result row instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Smaller workloads: most benchmarks finish in under 20 seconds, `http` in about a minute.
    #[arg(long, global = true)]
    quick: bool,
}

/// How large a benchmark's workload is: its quick or full plan, times a factor that is 1
/// except under `report --scale` (smoke runs, and the report's own test in a debug build).
#[derive(Clone, Copy, Debug)]
pub struct Size {
    /// The quick plan rather than the full one.
    pub quick: bool,
    /// Multiplies every count and duration of the plan.
    pub factor: f64,
}

impl Size {
    /// The plan a benchmark subcommand runs: unscaled.
    #[must_use]
    pub(crate) fn of(common: Common) -> Size {
        Size { quick: common.quick, factor: 1.0 }
    }

    /// The quick or the full count, scaled, and at least `floor` (the least the benchmark
    /// can measure anything with). Unscaled, it is the count itself.
    #[must_use]
    pub fn count(self, quick: u64, full: u64, floor: u64) -> u64 {
        let plan = if self.quick { quick } else { full };
        assert!(floor <= plan, "a floor above the plan would change the unscaled run");
        ((plan as f64 * self.factor).round() as u64).max(floor)
    }

    /// The quick or the full duration in seconds, scaled.
    #[must_use]
    pub fn seconds(self, quick: f64, full: f64) -> f64 {
        (if self.quick { quick } else { full }) * self.factor
    }
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// The business-logic processor alone, one thread: hot-SKU flash sale and mixed workload,
    /// against a naive baseline implementing the same rules the obvious way.
    Blp(Common),
    /// The binary protocol over loopback TCP against an in-process server: open-loop rates
    /// and a maximum-throughput row, latency from intended send time, plus a PING baseline.
    Tcp(Common),
    /// The HTTP/JSON API over loopback, keep-alive and pipelined, same workload as `tcp`.
    Http(Common),
    /// The same hot-SKU reservation as one Redis Lua script against a redis-server started
    /// on loopback (skipped when not installed), and ringfence over TCP in the same run.
    Redis(Common),
    /// Journal append: records/s and MB/s per durability policy (none, interval, batch) and
    /// batch size (1, 16, 256), against an in-memory journal and the encoder alone.
    Journal(Common),
    /// Replay: commands/s rebuilding state from a multi-million-command journal against the
    /// BLP alone on the same commands, with the ratio; plus the snapshot pause on that state.
    Replay(Common),
    /// The raw ring hop with empty handlers (1 producer → 1 consumer, and the pipeline's
    /// 1 → 3 → 1 shape), busy-spinning and yielding: the limit row for the pipeline.
    Ring(Common),
    /// The node in-process, open loop at fixed offered rates (100k/s, 1M/s, max), both
    /// topologies, latency from each command's intended send time, against the BLP alone.
    Pipeline(PipelineArgs),
    /// An answer held for the standby's acknowledgement: latency from the acknowledgement
    /// (read on another thread) to the answer, with the watermark's wake-up and without it.
    Ack(Common),
    /// A hot standby's cost: a primary and a standby in-process (standby over loopback TCP),
    /// reservations open loop in-process and through the binary protocol, per mode (primary
    /// alone, async, sync, sync with durability none) in the same run; then failover time
    /// from killing the primary to the promoted standby's first answer. `--quick`: under a
    /// minute.
    Replication(Common),
    /// Automatic failover with etcd: SIGKILL of the leader under load, then SIGSTOP of it past
    /// its lease, 20 times each (5 with `--quick`): time from the fault to the first write the
    /// new primary acknowledged, and acknowledged writes lost (re-sent with their request ids
    /// at the end). Real processes: etcd and the `ringfence` binary next to this one.
    Failover(FailoverArgs),
    /// Every benchmark but `failover` and `load` in one run (`ring`, `blp`, `pipeline`, `ack`,
    /// `journal`, `replay`, `tcp`, `http`, `redis` when `redis-server` is on the PATH, and
    /// `replication`), written to a directory: `report.md` (the machine and the build, then a
    /// table per scenario with ratios to its baselines and peers), `rows.jsonl`, one `.hgrm`
    /// percentile distribution per histogram (microseconds) and SVG charts (latency by
    /// percentile, throughput by offered rate). A progress line on stderr shows which
    /// benchmark runs; logs are at `warn` unless RINGFENCE_LOG says otherwise. Exits nonzero
    /// if a benchmark failed (the report still says what the others measured).
    Report(ReportArgs),
    /// Reservations against a node you run (your machines, your network, a pair in sync
    /// mode): one unit of `--sku` per request, each for a new user, over the binary protocol
    /// or (`--http`) the HTTP API, at each `--rate` or `max`, after a warm-up that is not
    /// counted. Latency from intended send time at fixed rates, throughput at `max`. The SKU
    /// must be open with stock for the whole run (checked first). Exit 0 when every run
    /// completed, 1 when one failed, 2 when the load could not start.
    Load(load::LoadArgs),
}

/// Options of the report.
#[derive(Args, Debug, Clone)]
struct ReportArgs {
    /// The quick plans: the whole report in under 3 minutes (the full one in under 20).
    #[arg(long)]
    quick: bool,
    /// Where to write the report.
    #[arg(long, value_name = "DIR", default_value = "target/perf-report")]
    out: std::path::PathBuf,
    /// Multiplies every workload's counts and durations. Below 1 for smoke runs, as the
    /// report's own test does (`--quick --scale 0.01` in a debug build); the figures of a
    /// scaled run are not the plan's, and the report says so.
    #[arg(long, value_name = "FACTOR", default_value_t = 1.0, allow_negative_numbers = true,
          value_parser = parse_scale)]
    scale: f64,
}

/// `--scale`: a finite number above 0, refused as a usage error otherwise.
fn parse_scale(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(factor) if factor.is_finite() && factor > 0.0 => Ok(factor),
        _ => Err("--scale must be a positive number (1 is the plan itself)".to_owned()),
    }
}

/// Options of the pipeline benchmark.
#[derive(Args, Debug, Clone)]
struct PipelineArgs {
    #[command(flatten)]
    common: Common,
    /// Run only this layout, named as its rows are (e.g. "compact spin polled pin");
    /// repeatable. The BLP alone always runs: the rows' ratios are to it. Filtered runs skip
    /// the idle measurement.
    #[arg(long = "layout", value_name = "NAME")]
    layouts: Vec<String>,
    /// Run only this offered rate: `max`, or commands per second of a layout's fixed rates
    /// (100000, 1000000); repeatable.
    #[arg(long = "rate", value_name = "RATE", value_parser = pipeline::parse_rate)]
    rates: Vec<Option<u64>>,
}

/// Options of the failover benchmark.
#[derive(Args, Debug, Clone)]
struct FailoverArgs {
    #[command(flatten)]
    common: Common,
    /// How many kills, and as many pauses [default: 20; 5 with --quick].
    #[arg(long)]
    failovers: Option<u64>,
    /// The `ringfence` binary [default: next to this one].
    #[arg(long, value_name = "PATH")]
    ringfence: Option<std::path::PathBuf>,
    /// The nodes' leader lease TTL in seconds (`serve --lease-ttl-s`): the failover takes
    /// about this long.
    #[arg(long, value_name = "S", default_value_t = failover::LEASE_TTL_S,
          value_parser = clap::value_parser!(u64).range(1..=60))]
    lease_ttl_s: u64,
}

fn main() {
    let cli = Cli::parse();
    // The report's progress line would drown in the nodes' `info` lines.
    let quiet = matches!(cli.bench, Bench::Report(_));
    ringfence_ingress::logging::init_with_default(if quiet { "warn" } else { "info" });
    match cli.bench {
        Bench::Blp(common) => blp::run(common),
        Bench::Tcp(common) => net::run_tcp(common),
        Bench::Http(common) => net::run_http(common),
        Bench::Redis(common) => redis::run(common),
        Bench::Journal(common) => journal::run(common),
        Bench::Replay(common) => replay::run(common),
        Bench::Ring(common) => ring::run(common),
        Bench::Pipeline(args) => pipeline::run(args.common, &args.layouts, &args.rates),
        Bench::Ack(common) => ack::run(common),
        Bench::Replication(common) => replication::run(common),
        Bench::Failover(args) => {
            let FailoverArgs { common, failovers, ringfence, lease_ttl_s } = args;
            failover::run(common, failover::Options { failovers, ringfence, lease_ttl_s });
        }
        Bench::Report(args) => write_report(args),
        Bench::Load(args) => std::process::exit(load::run(&args)),
    }
}

/// Runs `report`; on a failure, says what failed and exits nonzero.
fn write_report(args: ReportArgs) {
    let options = report::run::Options { quick: args.quick, out: args.out, scale: args.scale };
    match report::run::run(&options) {
        Ok(summary) if summary.failed.is_empty() => {}
        Ok(summary) => {
            eprintln!(
                "ringfence-perf report: {} benchmark(s) failed (see {}): {}",
                summary.failed.len(),
                summary.markdown.display(),
                summary.failed.join("; ")
            );
            std::process::exit(1);
        }
        Err(error) => {
            eprintln!("ringfence-perf report: {error}");
            std::process::exit(1);
        }
    }
}
