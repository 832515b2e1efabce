//! `ringfence-perf report`: every benchmark in one run, written out as files people can read.
//!
//! The steps are the benchmark subcommands' own functions, run one after the other in this
//! process with a [`Report`] that keeps their rows, notes and comparisons instead of printing
//! them. Each step runs on a thread of its own: a benchmark may pin its thread to a core (and
//! threads spawned from it inherit that), which must not outlive the step, and a panic ends
//! that step alone — the report says so and the command exits nonzero at the end. Between
//! steps the large-allocation cache is emptied and the page mode reset, so one step's memory
//! neither carries over nor piles up.
//!
//! Left out: `failover`, which kills real `ringfence` processes coordinated by a real etcd. It
//! measures availability (seconds to the first write after a SIGKILL, writes lost), not a
//! latency distribution under a workload, needs the `ringfence` binary built beside this one,
//! and takes minutes; `replication` covers the data path's failover in-process. Run it alone.
//!
//! Written to the output directory: `report.md`, `rows.jsonl` (every row as `--json` prints
//! it, with its section), `hgrm/*.hgrm` (one percentile distribution per row, in microseconds)
//! and `charts/*.svg`. `.hgrm` and `.svg` files left in `hgrm/` and `charts/` by an earlier
//! report are removed first, so the directory never mixes two runs.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::chart::{self, ChartError, LatencySeries, RateSeries};
use super::hgrm::{self, NS_PER_US, TICKS_PER_HALF_DISTANCE};
use super::machine::Machine;
use super::markdown;
use super::{Comparison, Ratios, Report, Row, format_rate};
use crate::pages::{self, PageMode};
use crate::pipeline::{CpuWatch, machine_load};
use crate::{Size, ack, blp, journal, net, pipeline, redis, replay, replication, ring};

/// What to run and where to write it.
#[derive(Clone, Debug)]
pub struct Options {
    /// The quick plans.
    pub quick: bool,
    /// The output directory.
    pub out: PathBuf,
    /// Multiplies every workload's counts and durations.
    pub scale: f64,
}

/// Why no report was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// `--scale` is not a positive number.
    #[error("--scale must be a positive number (1 is the plan itself), not {0}")]
    Scale(f64),
    /// The output directory (or a subdirectory) could not be created.
    #[error("cannot create the report directory {path}: {source}; choose another with --out")]
    CreateDir { path: PathBuf, source: io::Error },
    /// An earlier report's files could not be listed or removed.
    #[error("cannot remove the earlier report's files in {path}: {source}")]
    Clear { path: PathBuf, source: io::Error },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    /// A chart could not be drawn.
    #[error("cannot draw the chart {path}: {source}")]
    Chart { path: PathBuf, source: ChartError },
}

/// How a step ended when it did not simply measure its rows.
#[derive(Clone, Debug)]
pub enum StepEnd {
    /// It had nothing to measure against (the Redis peer without `redis-server`).
    Skipped(String),
    /// It failed: its server did not start, or it panicked.
    Failed(String),
}

/// A benchmark in the report.
struct Step {
    /// Its subcommand.
    name: &'static str,
    /// The section its rows go to.
    section: &'static str,
    /// What it measures, for the progress line.
    what: &'static str,
    bench: fn(&mut Report, Size) -> Result<(), StepEnd>,
}

/// A part of the report: the rows of one or more steps, measured into one [`Report`] so that
/// comparisons across those steps (ringfence over TCP against Redis) find both rows.
pub struct SectionSpec {
    /// Its name in `rows.jsonl` and the wait-strategy table.
    pub key: &'static str,
    /// The heading.
    pub title: &'static str,
    /// Wait strategy and pinning of its threads, from the benchmarks' set-up.
    pub wait_and_pinning: &'static str,
}

/// A section once its steps ran.
pub struct Section {
    /// What the section is.
    pub spec: &'static SectionSpec,
    /// How each of its steps went.
    pub steps: Vec<StepRecord>,
    /// Its rows, in the order they were measured.
    pub rows: Vec<Row>,
    /// The notes its benchmarks printed.
    pub notes: Vec<String>,
    /// The row pairs its benchmarks compared.
    pub comparisons: Vec<Comparison>,
}

/// How one step went.
pub struct StepRecord {
    /// The subcommand.
    pub name: &'static str,
    /// Wall time.
    pub seconds: f64,
    /// Rows it measured.
    pub rows: usize,
    /// `None` when it ran through.
    pub end: Option<StepEnd>,
}

/// The files written for one section, relative to the output directory.
pub struct SectionFiles {
    /// The `.hgrm` file of each row, in row order.
    pub hgrm: Vec<String>,
    /// The latency charts of each scenario, as (title, file): one, or one per offered load
    /// when its rows were measured at several (none when no row of it holds a sample).
    pub latency: Vec<(String, Vec<(String, String)>)>,
    /// The throughput-by-offered-rate chart of each scenario family that has offered rates.
    pub throughput: Vec<(String, String)>,
}

/// What the report says about the run itself.
pub struct Meta {
    /// The command line.
    pub command: String,
    /// When it started (RFC 3339, UTC).
    pub started_at: String,
    /// Wall time of all the steps.
    pub seconds: f64,
    /// The machine.
    pub machine: Machine,
    /// The load average when it started.
    pub load_at_start: String,
    /// What share of the CPU other processes used during the run.
    pub others_cpu: Option<String>,
    /// The plan: quick or full, and the scale.
    pub size: Size,
}

/// What `run` did.
pub struct Summary {
    /// `report.md`.
    pub markdown: PathBuf,
    /// Rows measured.
    pub rows: usize,
    /// Charts written.
    pub charts: usize,
    /// Steps that failed, with why.
    pub failed: Vec<String>,
}

const SECTIONS: [SectionSpec; 8] = [
    SectionSpec {
        key: "ring",
        title: "The raw ring hop (`ring`): the limit row for the pipeline",
        wait_and_pinning: "busy-spin or yield, per row; nothing pinned",
    },
    SectionSpec {
        key: "blp",
        title: "The business-logic processor alone (`blp`), against the naive baseline",
        wait_and_pinning: "no ring and no waiting (one thread); that thread pinned to the last \
                           core",
    },
    SectionSpec {
        key: "pipeline",
        title: "The node in-process (`pipeline`), open loop at offered rates",
        wait_and_pinning: "busy-spin or spin-then-park, per row; `pin` rows pin the processor \
                           to the last core and the generator to the first, other rows pin \
                           nothing",
    },
    SectionSpec {
        key: "ack",
        title: "An answer held for the standby's acknowledgement (`ack`)",
        wait_and_pinning: "spin-then-park (park at most 1 ms); nothing pinned",
    },
    SectionSpec {
        key: "journal",
        title: "Journal append per durability policy (`journal`)",
        wait_and_pinning: "one thread, no ring; not pinned",
    },
    SectionSpec {
        key: "replay",
        title: "Replay against the BLP alone, and the snapshot stall (`replay`)",
        wait_and_pinning: "no ring; `journal_replay` scans on a second thread; not pinned",
    },
    SectionSpec {
        key: "loopback",
        title: "Over loopback: binary protocol, HTTP and the Redis + Lua peer (`tcp`, `http`, \
                `redis`)",
        wait_and_pinning: "server: compact rows spin-then-park with the BLP pinned to the \
                           last core (egress polled by the event loop); `_inline` and \
                           `_snapshots` rows run the BLP on the event loop, which waits in \
                           epoll; load generator and redis-server not pinned; \
                           `machine_wakeup` rows: two threads and a futex, no server, not \
                           pinned",
    },
    SectionSpec {
        key: "replication",
        title: "A hot standby's cost, and failover in-process (`replication`)",
        wait_and_pinning: "spin-then-park; nothing pinned",
    },
];

const STEPS: [Step; 10] = [
    Step {
        name: "ring", section: "ring", what: "raw ring hop, 1→1 and 1→3→1", bench: ring_step
    },
    Step { name: "blp", section: "blp", what: "BLP alone vs naive baseline", bench: blp_step },
    Step {
        name: "pipeline",
        section: "pipeline",
        what: "node in-process, open loop, both topologies",
        bench: pipeline_step,
    },
    Step { name: "ack", section: "ack", what: "answer after a standby's ack", bench: ack_step },
    Step {
        name: "journal",
        section: "journal",
        what: "journal append per policy and batch",
        bench: journal_step,
    },
    Step {
        name: "replay",
        section: "replay",
        what: "replay vs BLP alone, snapshot stall",
        bench: replay_step,
    },
    Step { name: "tcp", section: "loopback", what: "binary protocol on loopback", bench: tcp_step },
    Step { name: "http", section: "loopback", what: "HTTP API on loopback", bench: http_step },
    Step {
        name: "redis",
        section: "loopback",
        what: "Redis + Lua peer (when redis-server is installed)",
        bench: redis_step,
    },
    Step {
        name: "replication",
        section: "replication",
        what: "primary + standby per ack mode, failover",
        bench: replication_step,
    },
];

fn ring_step(report: &mut Report, size: Size) -> Result<(), StepEnd> {
    ring::bench(report, size);
    Ok(())
}

fn blp_step(report: &mut Report, size: Size) -> Result<(), StepEnd> {
    blp::bench(report, size);
    Ok(())
}

fn pipeline_step(report: &mut Report, size: Size) -> Result<(), StepEnd> {
    pipeline::bench(report, size);
    Ok(())
}

fn ack_step(report: &mut Report, size: Size) -> Result<(), StepEnd> {
    ack::bench(report, size);
    Ok(())
}

fn journal_step(report: &mut Report, size: Size) -> Result<(), StepEnd> {
    journal::bench(report, size);
    Ok(())
}

fn replay_step(report: &mut Report, size: Size) -> Result<(), StepEnd> {
    replay::bench(report, size);
    Ok(())
}

fn tcp_step(report: &mut Report, size: Size) -> Result<(), StepEnd> {
    net::bench_tcp(report, &mut net::Plan::new(size))
        .map_err(|error| StepEnd::Failed(format!("cannot start the server: {error}")))
}

/// The HTTP rows, each compared with the binary protocol's row at the same load.
fn http_step(report: &mut Report, size: Size) -> Result<(), StepEnd> {
    net::bench_http(report, &mut net::Plan::new(size))
        .map_err(|error| StepEnd::Failed(format!("cannot start the server: {error}")))?;
    let http: Vec<(String, String)> = report
        .rows()
        .iter()
        .filter_map(|row| {
            let load = row.variant.strip_prefix("ringfence_http")?;
            Some((row.scenario.clone(), load.to_owned()))
        })
        .collect();
    for (scenario, load) in http {
        let (ours, theirs) = (format!("ringfence_http{load}"), format!("ringfence_tcp{load}"));
        report.relate((&scenario, &ours), (&scenario, &theirs), Ratios::All);
    }
    Ok(())
}

fn redis_step(report: &mut Report, size: Size) -> Result<(), StepEnd> {
    redis::bench_peer(report, &mut net::Plan::new(size))
        .map_err(|skipped| StepEnd::Skipped(format!("the Redis + Lua peer is skipped: {skipped}")))
}

fn replication_step(report: &mut Report, size: Size) -> Result<(), StepEnd> {
    replication::bench(report, size);
    Ok(())
}

/// Runs every step and writes the report.
pub fn run(options: &Options) -> Result<Summary, ReportError> {
    if !(options.scale.is_finite() && options.scale > 0.0) {
        return Err(ReportError::Scale(options.scale));
    }
    // The directory first: a report that cannot be written fails before minutes of work.
    prepare(&options.out)?;
    let size = Size { quick: options.quick, factor: options.scale };
    let started_at = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map_or_else(|_| jiff::Timestamp::now().to_string(), |at| at.to_string());
    let (load_at_start, watch, started) = (machine_load(), CpuWatch::start(), Instant::now());
    eprintln!(
        "ringfence-perf report ({}, scale {}): {} steps, writing to {}",
        if size.quick { "quick" } else { "full" },
        size.factor,
        STEPS.len(),
        options.out.display()
    );
    let sections = run_sections(size);
    let meta = Meta {
        command: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        started_at,
        seconds: started.elapsed().as_secs_f64(),
        machine: Machine::read(),
        load_at_start,
        others_cpu: watch.map(|watch| watch.note()),
        size,
    };
    let summary = write(&options.out, &meta, &sections)?;
    eprintln!(
        "report: {} rows, {} charts in {:.0} s; {}",
        summary.rows,
        summary.charts,
        meta.seconds,
        summary.markdown.display()
    );
    Ok(summary)
}

/// Runs the steps section by section, each section's steps into one report.
fn run_sections(size: Size) -> Vec<Section> {
    let mut number = 0;
    let mut sections = Vec::new();
    for spec in &SECTIONS {
        let mut report = Report::kept();
        let mut steps = Vec::new();
        for step in STEPS.iter().filter(|step| step.section == spec.key) {
            number += 1;
            steps.push(run_step(step, &mut report, size, number));
        }
        let (rows, notes, comparisons) = report.into_parts();
        sections.push(Section { spec, steps, rows, notes, comparisons });
    }
    sections
}

/// Runs one step on a thread of its own, with a progress line before and after.
fn run_step(step: &Step, report: &mut Report, size: Size, number: usize) -> StepRecord {
    let progress = format!("[{number:>2}/{}] {}", STEPS.len(), step.name);
    eprintln!("{progress}: {}", step.what);
    let rows_before = report.rows().len();
    let started = Instant::now();
    let result = std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name(format!("report-{}", step.name))
            .spawn_scoped(scope, || (step.bench)(report, size));
        match thread {
            Ok(thread) => thread.join().unwrap_or_else(|panic| {
                Err(StepEnd::Failed(format!("panicked: {}", panic_message(panic.as_ref()))))
            }),
            Err(error) => Err(StepEnd::Failed(format!("cannot start its thread: {error}"))),
        }
    });
    pages::set_page_mode(PageMode::SystemDefault);
    pages::release_cached();
    let seconds = started.elapsed().as_secs_f64();
    let rows = report.rows().len() - rows_before;
    match &result {
        Ok(()) => eprintln!("{progress}: {rows} rows in {seconds:.1} s"),
        Err(StepEnd::Skipped(why)) => eprintln!("{progress}: {why}"),
        Err(StepEnd::Failed(why)) => eprintln!("{progress}: FAILED after {seconds:.1} s: {why}"),
    }
    StepRecord { name: step.name, seconds, rows, end: result.err() }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload.downcast_ref::<&str>().map(|s| (*s).to_owned());
    let text = text.or_else(|| payload.downcast_ref::<String>().cloned());
    text.unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Creates the output directory and its two subdirectories, and removes the `.hgrm` and
/// `.svg` files an earlier report left there.
fn prepare(out: &Path) -> Result<(), ReportError> {
    for (dir, extension) in [("hgrm", "hgrm"), ("charts", "svg")] {
        let path = out.join(dir);
        std::fs::create_dir_all(&path)
            .map_err(|source| ReportError::CreateDir { path: path.clone(), source })?;
        let clear = |source| ReportError::Clear { path: path.clone(), source };
        for entry in std::fs::read_dir(&path).map_err(clear)? {
            let file = entry.map_err(clear)?.path();
            if file.extension().is_some_and(|e| e == extension) {
                std::fs::remove_file(&file).map_err(clear)?;
            }
        }
    }
    Ok(())
}

/// Writes every file and returns what was written.
fn write(out: &Path, meta: &Meta, sections: &[Section]) -> Result<Summary, ReportError> {
    let mut names = Names::default();
    let mut files = Vec::new();
    let mut jsonl = String::new();
    for section in sections {
        files.push(write_section(out, section, &mut names)?);
        for row in &section.rows {
            let mut json = row.to_json();
            json["section"] = section.spec.key.into();
            let _ = writeln!(jsonl, "{json}");
        }
    }
    write_file(&out.join("rows.jsonl"), &jsonl)?;
    let markdown = out.join("report.md");
    write_file(&markdown, &markdown::render(meta, sections, &files))?;
    let charts = files
        .iter()
        .map(|f| {
            f.latency.iter().map(|(_, charts)| charts.len()).sum::<usize>() + f.throughput.len()
        })
        .sum();
    let failed = sections
        .iter()
        .flat_map(|section| &section.steps)
        .filter_map(|step| match &step.end {
            Some(StepEnd::Failed(why)) => Some(format!("{}: {why}", step.name)),
            _ => None,
        })
        .collect();
    let rows = sections.iter().map(|section| section.rows.len()).sum();
    Ok(Summary { markdown, rows, charts, failed })
}

/// One section's `.hgrm` files and charts.
fn write_section(
    out: &Path,
    section: &Section,
    names: &mut Names,
) -> Result<SectionFiles, ReportError> {
    let mut hgrm = Vec::new();
    for row in &section.rows {
        let name = names.unique(&format!("hgrm/{}--{}", slug(&row.scenario), slug(&row.variant)));
        let name = format!("{name}.hgrm");
        let text =
            hgrm::percentile_distribution(&row.histogram, TICKS_PER_HALF_DISTANCE, NS_PER_US);
        write_file(&out.join(&name), &text)?;
        hgrm.push(name);
    }
    let mut latency = Vec::new();
    for scenario in scenarios(&section.rows) {
        let rows: Vec<&Row> = section.rows.iter().filter(|row| row.scenario == scenario).collect();
        let mut charts = Vec::new();
        for (load, rows) in by_load(&rows) {
            let series: Vec<LatencySeries<'_>> = rows
                .iter()
                .map(|row| LatencySeries { label: row.variant.clone(), histogram: &row.histogram })
                .collect();
            let (title, stem) = match &load {
                None => (scenario.clone(), slug(&scenario)),
                Some(load) => {
                    (format!("{scenario} at {load}"), slug(&format!("{scenario} {load}")))
                }
            };
            let title = format!("{title}: latency by percentile");
            let name = format!("{}.svg", names.unique(&format!("charts/latency-{stem}")));
            if write_chart(out, &name, chart::latency_by_percentile(&title, &series))? {
                charts.push((title, name));
            }
        }
        latency.push((scenario, charts));
    }
    let mut throughput = Vec::new();
    for (family, series) in rate_families(&section.rows) {
        let name = names.unique(&format!("charts/throughput-{}", slug(&family)));
        let name = format!("{name}.svg");
        let title = format!("{family}: throughput by offered rate");
        if write_chart(out, &name, chart::throughput_by_offered_rate(&title, &series))? {
            throughput.push((family, name));
        }
    }
    Ok(SectionFiles { hgrm, latency, throughput })
}

/// Writes a drawn chart; `false` when there was nothing to draw.
fn write_chart(
    out: &Path,
    name: &str,
    svg: Result<Option<String>, ChartError>,
) -> Result<bool, ReportError> {
    let path = out.join(name);
    match svg {
        Ok(Some(svg)) => write_file(&path, &svg).map(|()| true),
        Ok(None) => Ok(false),
        Err(source) => Err(ReportError::Chart { path, source }),
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), ReportError> {
    std::fs::write(path, text)
        .map_err(|source| ReportError::Write { path: path.to_owned(), source })
}

/// The scenarios of `rows`, in the order they first appear.
#[must_use]
pub fn scenarios(rows: &[Row]) -> Vec<String> {
    let mut seen = Vec::<String>::new();
    for row in rows {
        if !seen.contains(&row.scenario) {
            seen.push(row.scenario.clone());
        }
    }
    seen
}

/// How a row offered its load.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Offered {
    /// Open loop at this many requests per second.
    Rate(f64),
    /// Closed loop, as fast as it goes.
    Max,
    /// Not a load test (a pass over prebuilt commands, a journal append, ...).
    None,
}

/// The offered rate of a row: the `offered_per_sec` or `offered_rate` context field, a
/// scenario named `...@max`, or a variant named `... max` (the network rows).
#[must_use]
pub fn offered(row: &Row) -> Offered {
    let field = row.context.get("offered_per_sec").or_else(|| row.context.get("offered_rate"));
    if let Some(rate) = field.and_then(serde_json::Value::as_f64) {
        return Offered::Rate(rate);
    }
    let closed = field.is_some_and(|value| value == "max")
        || row.scenario.ends_with("@max")
        || row.variant.ends_with(" max");
    if closed { Offered::Max } else { Offered::None }
}

/// A scenario's rows grouped by offered load, in order of first appearance, when they were
/// measured at more than one (the network rows, whose load is in the variant): curves are
/// compared at one load, where queueing is the same. One group, unnamed, otherwise.
fn by_load<'a>(rows: &[&'a Row]) -> Vec<(Option<String>, Vec<&'a Row>)> {
    let name = |row: &Row| match offered(row) {
        Offered::Rate(rate) => format_rate(rate),
        Offered::Max => "max".to_owned(),
        Offered::None => "no offered rate".to_owned(),
    };
    let mut groups: Vec<(Option<String>, Vec<&'a Row>)> = Vec::new();
    for &row in rows {
        let load = Some(name(row));
        match groups.iter_mut().find(|(name, _)| *name == load) {
            Some((_, group)) => group.push(row),
            None => groups.push((load, vec![row])),
        }
    }
    if groups.len() == 1 {
        groups[0].0 = None;
    }
    groups
}

/// A row's family (its scenario without `@rate`) and series (its variant without ` @rate` or
/// ` max`): the throughput chart draws one line per series of a family.
fn family_and_series(row: &Row) -> (String, String) {
    let family = row.scenario.split('@').next().unwrap_or(&row.scenario);
    let series = row.variant.split(" @").next().unwrap_or(&row.variant);
    let series = series.strip_suffix(" max").unwrap_or(series);
    (family.to_owned(), series.to_owned())
}

/// The throughput series of every family in `rows` that has open-loop rows.
fn rate_families(rows: &[Row]) -> Vec<(String, Vec<RateSeries>)> {
    let mut families: Vec<(String, Vec<RateSeries>)> = Vec::new();
    for row in rows {
        let offered = offered(row);
        if offered == Offered::None {
            continue;
        }
        let (family, label) = family_and_series(row);
        let index = match families.iter().position(|(name, _)| *name == family) {
            Some(index) => index,
            None => {
                families.push((family, Vec::new()));
                families.len() - 1
            }
        };
        let series = &mut families[index].1;
        let line = match series.iter().position(|line| line.label == label) {
            Some(line) => line,
            None => {
                series.push(RateSeries { label, points: Vec::new(), max: None });
                series.len() - 1
            }
        };
        match offered {
            Offered::Rate(rate) => series[line].points.push((rate, row.ops_per_sec())),
            Offered::Max => series[line].max = Some(row.ops_per_sec()),
            Offered::None => {}
        }
    }
    families.retain(|(_, series)| series.iter().any(|line| !line.points.is_empty()));
    families
}

/// A file-name-safe form of a scenario or variant: lowercase letters, digits, `_`, `.`.
#[must_use]
pub fn slug(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '.' { c.to_ascii_lowercase() } else { '_' };
        if !(c == '_' && slug.ends_with('_')) {
            slug.push(c);
        }
    }
    slug.trim_matches('_').to_owned()
}

/// File names handed out so far, so two rows never share a file.
#[derive(Default)]
struct Names(HashSet<String>);

impl Names {
    fn unique(&mut self, stem: &str) -> String {
        let mut name = stem.to_owned();
        let mut n = 2;
        while !self.0.insert(name.clone()) {
            name = format!("{stem}-{n}");
            n += 1;
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::latency_histogram;

    fn row(scenario: &str, variant: &str, ops: u64) -> Row {
        Row::new(scenario, variant, ops, 1.0, latency_histogram())
    }

    #[test]
    fn every_section_has_steps_and_every_step_a_section() {
        // Goal: no step writes into a section the report never prints, and no section is
        // empty.
        for step in &STEPS {
            assert!(SECTIONS.iter().any(|s| s.key == step.section), "{}", step.name);
        }
        for section in &SECTIONS {
            assert!(STEPS.iter().any(|s| s.section == section.key), "{}", section.key);
        }
    }

    #[test]
    fn offered_rates_come_from_context_or_names() {
        // Goal: rated rows, closed-loop rows and plain passes are told apart in every
        // benchmark's naming.
        let rated = row("pipeline@1M/s", "compact", 1).with("offered_rate", 1_000_000);
        assert_eq!(offered(&rated), Offered::Rate(1e6));
        let max = row("pipeline@max", "compact", 1).with("offered_rate", "max");
        assert_eq!(offered(&max), Offered::Max);
        assert_eq!(offered(&row("hot_sku_reserve", "ringfence_tcp max", 1)), Offered::Max);
        let net = row("hot_sku_reserve", "ringfence_tcp @20k/s", 1).with("offered_per_sec", 20_000);
        assert_eq!(offered(&net), Offered::Rate(20e3));
        assert_eq!(offered(&row("hot_sku", "ringfence", 1)), Offered::None);
    }

    #[test]
    fn throughput_lines_join_a_variant_across_rates() {
        // Goal: one line per variant, its points at each rate and its maximum, whether the
        // rate is in the scenario (pipeline) or in the variant (network rows).
        let rows = [
            row("inproc@2k/s", "sync", 2_000).with("offered_per_sec", 2_000),
            row("inproc@10k/s", "sync", 10_000).with("offered_per_sec", 10_000),
            row("inproc@max", "sync", 300_000).with("offered_per_sec", "max"),
            row("hot_sku_reserve", "redis_lua @20k/s", 20_000).with("offered_per_sec", 20_000),
            row("hot_sku_reserve", "redis_lua max", 90_000),
            row("hot_sku", "ringfence", 3_000_000),
        ];
        let families = rate_families(&rows);
        let names: Vec<&str> = families.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["inproc", "hot_sku_reserve"]);
        let sync = &families[0].1[0];
        assert_eq!((sync.label.as_str(), sync.points.len(), sync.max), ("sync", 2, Some(3e5)));
        assert_eq!(families[1].1[0].label, "redis_lua");
    }

    #[test]
    fn a_scenario_measured_at_several_loads_gets_a_chart_per_load() {
        // Goal: network rows (load in the variant) are charted per load, peers together; a
        // scenario at one load (or none) is one chart.
        let rows = [
            row("hot_sku_reserve", "ringfence_tcp max", 1),
            row("hot_sku_reserve", "ringfence_tcp @20k/s", 1).with("offered_per_sec", 20_000),
            row("hot_sku_reserve", "redis_lua max", 1),
            row("hot_sku_reserve", "redis_lua @20k/s", 1).with("offered_per_sec", 20_000),
        ];
        let refs: Vec<&Row> = rows.iter().collect();
        let groups = by_load(&refs);
        let loads: Vec<Option<&str>> = groups.iter().map(|(load, _)| load.as_deref()).collect();
        assert_eq!(loads, [Some("max"), Some("20k/s")]);
        assert!(groups.iter().all(|(_, rows)| rows.len() == 2));
        let single = [row("hot_sku", "ringfence", 1), row("hot_sku", "naive_baseline", 1)];
        let refs: Vec<&Row> = single.iter().collect();
        assert_eq!(by_load(&refs).len(), 1);
        assert_eq!(by_load(&refs)[0].0, None);
    }

    #[test]
    fn file_names_are_safe_and_never_shared() {
        // Goal: names with spaces, slashes and colons become distinct plain file names.
        assert_eq!(slug("ring_hop@1000k/s"), "ring_hop_1000k_s");
        assert_eq!(slug("baseline: no wake hook"), "baseline_no_wake_hook");
        let mut names = Names::default();
        assert_eq!(names.unique("hgrm/a"), "hgrm/a");
        assert_eq!(names.unique("hgrm/a"), "hgrm/a-2");
    }
}
