//! Result rows shared by every benchmark: an aligned table for people, JSON lines for machines,
//! or kept silently for the `report` subcommand, which writes them out as files.
//!
//! Every row carries throughput and HdrHistogram percentiles in nanoseconds. With `--json` each
//! row is one JSON object per line with the fields `scenario`, `variant`, `ops`, `seconds`,
//! `ops_per_sec`, `p50_ns`, `p90_ns`, `p99_ns`, `p999_ns`, `p9999_ns`, `max_ns` plus any
//! context fields the benchmark adds (wait strategy, pinning, offered rate, ...).
//!
//! Besides rows, a [`Report`] keeps the notes a benchmark printed and the pairs of rows it
//! compared, so that the written report carries the same context and ratios as the tables.

pub mod chart;
pub mod hgrm;
pub mod machine;
pub mod markdown;
pub mod run;

use std::cell::RefCell;

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

/// A latency histogram in nanoseconds: 1 ns to 60 s at 3 significant figures (HdrHistogram
/// rounds the top up to 2^36 ns, 68.7 s). Record with `saturating_record`: a latency above
/// the top counts as the top, never dropped from the tail.
#[must_use]
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static histogram bounds are valid")
}

/// In a generator's table of send times (intended, or actual for a window), by request: the
/// request was answered, or refused at intake, and waits for nothing more.
pub const SETTLED: u64 = u64::MAX;

/// Records in `histogram`, for each request whose send time in `sent_at` is not [`SETTLED`]
/// when the generator gave up waiting at `gave_up` (same clock), the time it had waited then:
/// a lower bound of its latency. Leaving such requests out would drop a stalled tail from the
/// percentiles (coordinated omission); with them, the row's max says at least how long. Returns
/// how many it recorded.
pub fn record_unanswered(histogram: &mut Histogram<u64>, sent_at: &[u64], gave_up: u64) -> u64 {
    let before = histogram.len();
    let waiting = sent_at.iter().filter(|&&sent| sent != SETTLED);
    let mut recorded = 0;
    for &sent in waiting {
        histogram.saturating_record(gave_up.saturating_sub(sent).max(1));
        recorded += 1;
    }
    assert_eq!(histogram.len(), before + recorded, "every unanswered request recorded");
    recorded
}

/// One measured variant of one scenario.
pub struct Row {
    /// What was measured (e.g. `hot_sku`).
    pub scenario: String,
    /// How (e.g. `ringfence` or `naive_baseline`).
    pub variant: String,
    /// Operations completed.
    pub ops: u64,
    /// Wall time for all of them.
    pub seconds: f64,
    /// Per-operation latency or service time, in nanoseconds.
    pub histogram: Histogram<u64>,
    /// Context printed with the row: wait strategy, pinning, offered rate, ...
    pub context: Map<String, Value>,
}

impl Row {
    /// A row without context.
    #[must_use]
    pub fn new(
        scenario: &str,
        variant: &str,
        ops: u64,
        seconds: f64,
        histogram: Histogram<u64>,
    ) -> Row {
        Row {
            scenario: scenario.to_owned(),
            variant: variant.to_owned(),
            ops,
            seconds,
            histogram,
            context: Map::new(),
        }
    }

    /// Adds one context field.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Row {
        self.context.insert(key.to_owned(), value.into());
        self
    }

    /// Operations per second.
    #[must_use]
    pub fn ops_per_sec(&self) -> f64 {
        if self.seconds > 0.0 { self.ops as f64 / self.seconds } else { 0.0 }
    }

    /// The row as one JSON object: the documented fields plus its context.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let h = &self.histogram;
        let mut object = json!({
            "scenario": self.scenario,
            "variant": self.variant,
            "ops": self.ops,
            "seconds": self.seconds,
            "ops_per_sec": self.ops_per_sec(),
            "p50_ns": h.value_at_quantile(0.50),
            "p90_ns": h.value_at_quantile(0.90),
            "p99_ns": h.value_at_quantile(0.99),
            "p999_ns": h.value_at_quantile(0.999),
            "p9999_ns": h.value_at_quantile(0.9999),
            "max_ns": h.max(),
        });
        let fields = object.as_object_mut().expect("built as an object");
        for (key, value) in &self.context {
            fields.insert(key.clone(), value.clone());
        }
        object
    }
}

/// Where a report's rows and notes go as they are measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    /// An aligned table on stdout.
    Table,
    /// One JSON object per row on stdout.
    Json,
    /// Nowhere: kept for the `report` subcommand, which writes them out at the end.
    Kept,
}

/// Two measured rows of one run compared as a ratio, `numerator / denominator`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    /// The compared row: (scenario, variant).
    pub numerator: (String, String),
    /// The row it is compared with (a baseline or a peer): (scenario, variant).
    pub denominator: (String, String),
    /// Which of their figures divide meaningfully.
    pub ratios: Ratios,
}

/// Which figures of two compared rows divide meaningfully.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ratios {
    /// Throughput and latency: both rows measure the same thing the same way.
    All,
    /// Throughput only: their histograms hold different things (a service time against a
    /// latency from submission).
    ThroughputOnly,
    /// Latency only: their operation counts mean different things (snapshots against
    /// hand-offs).
    LatencyOnly,
}

/// Collects rows and prints each as soon as it is measured.
pub struct Report {
    output: Output,
    rows: Vec<Row>,
    header_printed: bool,
    // Notes and comparisons are added through `&self` (benchmarks note while they hold a row
    // borrowed from the report), so they sit in cells; one thread uses a report at a time.
    notes: RefCell<Vec<String>>,
    comparisons: RefCell<Vec<Comparison>>,
}

impl Report {
    /// A report printing a table, or JSON lines when `json` is set.
    #[must_use]
    pub fn new(json: bool) -> Report {
        Report::with_output(if json { Output::Json } else { Output::Table })
    }

    /// A report that prints nothing and keeps rows, notes and comparisons.
    #[must_use]
    pub fn kept() -> Report {
        Report::with_output(Output::Kept)
    }

    fn with_output(output: Output) -> Report {
        Report {
            output,
            rows: Vec::new(),
            header_printed: false,
            notes: RefCell::new(Vec::new()),
            comparisons: RefCell::new(Vec::new()),
        }
    }

    /// Whether rows are printed as JSON lines.
    #[must_use]
    pub fn is_json(&self) -> bool {
        self.output == Output::Json
    }

    /// Prints a line of context (only in table mode; JSON output stays one object per line),
    /// and keeps it.
    pub fn note(&self, text: &str) {
        if self.output == Output::Table {
            println!("{text}");
        }
        self.notes.borrow_mut().push(text.to_owned());
    }

    /// Prints and keeps a row.
    pub fn push(&mut self, row: Row) {
        if self.output == Output::Json {
            println!("{}", row.to_json());
        } else if self.output == Output::Table {
            if !self.header_printed {
                println!(
                    "{:<22} {:<26} {:>11} {:>13} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
                    "scenario",
                    "variant",
                    "ops",
                    "ops/s",
                    "p50",
                    "p90",
                    "p99",
                    "p99.9",
                    "p99.99",
                    "max"
                );
                self.header_printed = true;
            }
            let h = &row.histogram;
            println!(
                "{:<22} {:<26} {:>11} {:>13.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
                row.scenario,
                row.variant,
                row.ops,
                row.ops_per_sec(),
                format_ns(h.value_at_quantile(0.50)),
                format_ns(h.value_at_quantile(0.90)),
                format_ns(h.value_at_quantile(0.99)),
                format_ns(h.value_at_quantile(0.999)),
                format_ns(h.value_at_quantile(0.9999)),
                format_ns(h.max()),
            );
        }
        self.rows.push(row);
    }

    /// The kept row for `scenario`/`variant`, if measured.
    #[must_use]
    pub fn row(&self, scenario: &str, variant: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.scenario == scenario && r.variant == variant)
    }

    /// The rows kept so far, in the order they were measured.
    #[must_use]
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Everything the report kept: rows, notes and comparisons.
    #[must_use]
    pub fn into_parts(self) -> (Vec<Row>, Vec<String>, Vec<Comparison>) {
        (self.rows, self.notes.into_inner(), self.comparisons.into_inner())
    }

    /// Keeps, without printing, that the row `numerator` is to be read against the row
    /// `denominator` (its baseline or peer) by `ratios`, each row given as (scenario,
    /// variant). Nothing is kept unless both rows were measured.
    pub fn relate(&self, numerator: (&str, &str), denominator: (&str, &str), ratios: Ratios) {
        if self.row(numerator.0, numerator.1).is_none()
            || self.row(denominator.0, denominator.1).is_none()
        {
            return;
        }
        let owned = |(scenario, variant): (&str, &str)| (scenario.to_owned(), variant.to_owned());
        let comparison =
            Comparison { numerator: owned(numerator), denominator: owned(denominator), ratios };
        let mut comparisons = self.comparisons.borrow_mut();
        if !comparisons.contains(&comparison) {
            comparisons.push(comparison);
        }
    }

    /// Prints the throughput ratio of two measured variants of a scenario (table mode only),
    /// and keeps the pair.
    pub fn ratio(&self, scenario: &str, numerator: &str, denominator: &str) {
        let (Some(a), Some(b)) = (self.row(scenario, numerator), self.row(scenario, denominator))
        else {
            return;
        };
        self.relate((scenario, numerator), (scenario, denominator), Ratios::All);
        if b.ops_per_sec() > 0.0 {
            self.note(&format!(
                "  {scenario}: {numerator} / {denominator} throughput = {:.2}x",
                a.ops_per_sec() / b.ops_per_sec()
            ));
        }
    }
}

/// Operations per second as a short figure: `12/s`, `2.5k/s`, `755k/s`, `2.94M/s`.
#[must_use]
pub fn format_rate(per_sec: f64) -> String {
    match per_sec {
        rate if rate < 1e3 => format!("{rate:.0}/s"),
        rate if rate < 1e4 => format!("{}k/s", trimmed(rate / 1e3, 1)),
        rate if rate < 1e6 => format!("{:.0}k/s", rate / 1e3),
        rate if rate < 1e7 => format!("{}M/s", trimmed(rate / 1e6, 2)),
        rate => format!("{}M/s", trimmed(rate / 1e6, 1)),
    }
}

/// `value` with at most `decimals` decimals, trailing zeros dropped.
fn trimmed(value: f64, decimals: usize) -> String {
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// Nanoseconds as a short human figure: `830ns`, `12.4us`, `3.1ms`, `1.20s`.
#[must_use]
pub fn format_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}us", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_still_unanswered_are_recorded_at_the_time_they_waited_however_long() {
        // Goal: a request the generator gave up on counts in the row's distribution at the
        // time it had waited (not dropped: coordinated omission); one that waited past the
        // histogram's top counts at the top; settled ones are not counted again.
        let mut histogram = latency_histogram();
        histogram.saturating_record(500);
        let sent_at = [SETTLED, 1_000, SETTLED, 4_000, 0];
        assert_eq!(record_unanswered(&mut histogram, &sent_at, 10_000), 3);
        assert_eq!(histogram.len(), 4);
        assert!(histogram.equivalent(histogram.max(), 10_000), "{}", histogram.max());
        assert!(histogram.equivalent(histogram.value_at_quantile(0.5), 6_000));
        let mut stalled = latency_histogram();
        let hundred_seconds = 100_000_000_000;
        assert_eq!(record_unanswered(&mut stalled, &[0, SETTLED], hundred_seconds), 1);
        assert_eq!(stalled.len(), 1, "a wait past the top is kept");
        assert!(stalled.max() >= 60_000_000_000, "{}", stalled.max());
        assert_eq!(record_unanswered(&mut stalled, &[SETTLED; 3], hundred_seconds), 0);
    }

    #[test]
    fn json_row_has_every_documented_field() {
        // Goal: downstream scripts can rely on the documented field names.
        let mut histogram = latency_histogram();
        histogram.record(100).unwrap();
        histogram.record(300).unwrap();
        let row = Row::new("hot_sku", "ringfence", 2, 0.5, histogram).with("wait", "blocking");
        let value = row.to_json();
        for field in [
            "scenario",
            "variant",
            "ops",
            "seconds",
            "ops_per_sec",
            "p50_ns",
            "p90_ns",
            "p99_ns",
            "p999_ns",
            "p9999_ns",
            "max_ns",
            "wait",
        ] {
            assert!(value.get(field).is_some(), "missing {field}");
        }
        assert_eq!(value["ops_per_sec"], 4.0);
        assert!(value["max_ns"].as_u64().unwrap() >= 300);
    }

    #[test]
    fn nanoseconds_print_in_readable_units() {
        // Goal: the table uses the unit that keeps figures short.
        assert_eq!(format_ns(830), "830ns");
        assert_eq!(format_ns(12_400), "12.4us");
        assert_eq!(format_ns(3_100_000), "3.1ms");
    }

    #[test]
    fn rates_print_in_readable_units() {
        // Goal: throughput figures and chart axes stay short and keep three digits.
        let rates = [12.0, 2_500.0, 10_000.0, 755_189.0, 1e6, 2_935_307.0, 46_212_841.0];
        let printed: Vec<String> = rates.into_iter().map(format_rate).collect();
        assert_eq!(printed, ["12/s", "2.5k/s", "10k/s", "755k/s", "1M/s", "2.94M/s", "46.2M/s"]);
    }
}
