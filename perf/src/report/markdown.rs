//! `report.md`: the machine, then one section per benchmark with a table per scenario (offered
//! rate, throughput, percentiles, duration and sample counts), the ratios its benchmark
//! compares (baselines and peers, all from the same run), its charts and `.hgrm` files.

use std::fmt::Write as _;

use super::run::{Meta, Offered, Section, SectionFiles, StepEnd, offered, scenarios};
use super::{Comparison, Ratios, Row, format_ns, format_rate};

/// The whole `report.md`.
#[must_use]
pub fn render(meta: &Meta, sections: &[Section], files: &[SectionFiles]) -> String {
    assert_eq!(sections.len(), files.len(), "one set of files per section");
    let mut text = String::new();
    header(&mut text, meta);
    machine(&mut text, meta, sections);
    contents(&mut text, sections);
    for (section, files) in sections.iter().zip(files) {
        section_text(&mut text, section, files);
    }
    text
}

// Writing into a `String` cannot fail: every `fmt::Result` below is `Ok` and dropped.

fn header(text: &mut String, meta: &Meta) {
    let plan = if meta.size.quick { "quick plan" } else { "full plan" };
    let _ = writeln!(text, "# ringfence performance report\n");
    let _ = writeln!(
        text,
        "`ringfence-perf {}` · started {} · {:.0} s · {plan}, scale {}\n",
        meta.command, meta.started_at, meta.seconds, meta.size.factor
    );
    let _ = writeln!(
        text,
        "Every figure below comes from this one run on this one machine. Latency is measured \
         open loop from each request's intended send time where a row has an offered rate \
         (no coordinated omission; the `machine_wakeup` floor rows time each wake-up from the \
         send that woke it); warm-ups are not counted (`blp`, `pipeline`, `tcp`, `http`, \
         `redis` and `replication` but its failover rows run one, `replay` keeps the better of \
         two runs; the `ring`, `journal` and `ack` rows start cold); requests unanswered when \
         a run gave up count at \
         the time they waited; compare rows of this run as ratios. \
         Percentiles are HdrHistogram's (3 significant digits); a dash where a row has fewer \
         samples than the percentile needs to differ from the maximum (1 / (1 - p): 1,000 for \
         p99.9). Each row's full distribution is in its `.hgrm` file, in microseconds.\n"
    );
    if cfg!(debug_assertions) {
        let _ = writeln!(text, "**Debug build: these figures are not benchmarks.**\n");
    }
    if meta.size.factor != 1.0 {
        let _ = writeln!(
            text,
            "**Workloads scaled by {}: a smoke run, not the plan's figures.**\n",
            meta.size.factor
        );
    }
}

fn machine(text: &mut String, meta: &Meta, sections: &[Section]) {
    let machine = &meta.machine;
    let listed = machine.cpus_listed.map_or_else(String::new, |n| format!(" ({n} listed)"));
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    let _ = writeln!(text, "## Machine\n\n| | |\n|---|---|");
    let _ = writeln!(text, "| CPU | {} |", machine.cpu_model);
    let _ = writeln!(
        text,
        "| cores | {} available to the benchmarks{listed} |",
        machine.cores_available
    );
    let _ = writeln!(text, "| kernel | {} |", machine.kernel);
    let _ = writeln!(text, "| memory | {} |", machine.memory);
    let _ = writeln!(text, "| at start | {} |", meta.load_at_start);
    if let Some(others) = &meta.others_cpu {
        let _ = writeln!(text, "| during the run | {others} |");
    }
    let _ = writeln!(
        text,
        "| build | {build}, ringfence-perf {}, {}; {} |\n",
        env!("CARGO_PKG_VERSION"),
        env!("RINGFENCE_PERF_SOURCE"),
        env!("RINGFENCE_PERF_RUSTC")
    );
    let _ = writeln!(text, "### Wait strategy and pinning\n\n| section | threads |\n|---|---|");
    for section in sections {
        let key = section.spec.key;
        let _ = writeln!(text, "| `{key}` | {} |", section.spec.wait_and_pinning);
    }
    text.push('\n');
}

fn contents(text: &mut String, sections: &[Section]) {
    let _ = writeln!(text, "## Sections\n");
    for section in sections {
        let steps: Vec<String> = section.steps.iter().map(step_summary).collect();
        let _ = writeln!(text, "- {}: {}", section.spec.title, steps.join("; "));
    }
    text.push('\n');
}

/// `name`: duration and rows, or why it was skipped or failed.
fn step_summary(step: &super::run::StepRecord) -> String {
    let ran = format!("`{}` {:.1} s, {} rows", step.name, step.seconds, step.rows);
    match &step.end {
        None => ran,
        Some(StepEnd::Skipped(why)) => format!("`{}` skipped: {why}", step.name),
        Some(StepEnd::Failed(why)) => format!("{ran}, **FAILED**: {why}"),
    }
}

fn section_text(text: &mut String, section: &Section, files: &SectionFiles) {
    let _ = writeln!(text, "## {}\n", section.spec.title);
    let steps: Vec<String> = section.steps.iter().map(step_summary).collect();
    let _ = writeln!(text, "Steps: {}.\n", steps.join("; "));
    let _ = writeln!(text, "Wait strategy and pinning: {}.\n", section.spec.wait_and_pinning);
    if !section.notes.is_empty() {
        let _ = writeln!(text, "What the benchmark printed:\n");
        for note in &section.notes {
            let _ = writeln!(text, "- {}", note.trim());
        }
        text.push('\n');
    }
    for (scenario, charts) in &files.latency {
        scenario_text(text, section, files, scenario, charts);
    }
    debug_assert_eq!(scenarios(&section.rows).len(), files.latency.len());
    for (family, chart) in &files.throughput {
        let _ = writeln!(text, "### Throughput by offered rate: `{family}`\n");
        let _ = writeln!(text, "![{family}: throughput by offered rate]({chart})\n");
    }
}

fn scenario_text(
    text: &mut String,
    section: &Section,
    files: &SectionFiles,
    scenario: &str,
    charts: &[(String, String)],
) {
    let rows: Vec<(usize, &Row)> =
        section.rows.iter().enumerate().filter(|(_, row)| row.scenario == scenario).collect();
    let _ = writeln!(text, "### `{scenario}`\n");
    let _ = writeln!(
        text,
        "| variant | offered | ops | seconds | throughput | p50 | p90 | p99 | p99.9 | p99.99 \
         | max | samples |\n|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for (_, row) in &rows {
        let _ = writeln!(text, "{}", table_row(row));
    }
    text.push('\n');
    let before = text.len();
    fell_behind(text, &rows);
    if text.len() > before {
        text.push('\n');
    }
    ratios(text, section, scenario);
    for (title, chart) in charts {
        let _ = writeln!(text, "![{title}]({chart})\n");
    }
    if charts.is_empty() {
        let _ = writeln!(text, "(No latency chart: no row of this scenario holds a sample.)\n");
    }
    let links: Vec<String> = rows
        .iter()
        .map(|(index, row)| format!("[`{}`]({})", row.variant, files.hgrm[*index]))
        .collect();
    let _ = writeln!(text, "Histograms (`.hgrm`, µs): {}\n", links.join(", "));
    context(text, &rows);
}

fn table_row(row: &Row) -> String {
    let h = &row.histogram;
    let offered = match offered(row) {
        Offered::Rate(rate) => format_rate(rate),
        Offered::Max => "max".to_owned(),
        Offered::None => "—".to_owned(),
    };
    let percentiles: Vec<String> = [0.5, 0.9, 0.99, 0.999, 0.9999]
        .map(|q| {
            if supports(h.len(), q) { format_ns(h.value_at_quantile(q)) } else { "—".to_owned() }
        })
        .to_vec();
    format!(
        "| `{}` | {offered} | {} | {:.3} | {} | {} | {} | {} |",
        row.variant,
        row.ops,
        row.seconds,
        format_rate(row.ops_per_sec()),
        percentiles.join(" | "),
        format_ns(h.max()),
        h.len()
    )
}

/// Whether `samples` are enough for the quantile `q` to be told from the maximum: at least
/// 1 / (1 - q) of them (100 for p99).
fn supports(samples: u64, q: f64) -> bool {
    assert!((0.0..1.0).contains(&q), "quantile {q}");
    // Rounded: 1 / (1 - 0.9999) is a hair above 10,000 in binary floating point.
    samples >= (1.0 / (1.0 - q)).round() as u64
}

/// Rows at a fixed offered rate that achieved less than 95% of it: they fell behind, and
/// their latencies include the queue that built up. Said under the table, as a note.
fn fell_behind(text: &mut String, rows: &[(usize, &Row)]) {
    for (_, row) in rows {
        let Offered::Rate(rate) = offered(row) else { continue };
        let achieved = row.ops_per_sec();
        if rate > 0.0 && achieved < 0.95 * rate {
            let _ = writeln!(
                text,
                "- `{}` achieved {} of the {} offered ({:.0}%): it fell behind, and its latencies \
                 include the queue that built up.",
                row.variant,
                format_rate(achieved),
                format_rate(rate),
                100.0 * achieved / rate
            );
        }
    }
}

/// The comparisons whose compared row is in `scenario`, as ratios.
fn ratios(text: &mut String, section: &Section, scenario: &str) {
    let pairs: Vec<(&Comparison, &Row, &Row)> = section
        .comparisons
        .iter()
        .filter(|comparison| comparison.numerator.0 == scenario)
        .filter_map(|comparison| {
            let find = |(s, v): &(String, String)| {
                section.rows.iter().find(|row| row.scenario == *s && row.variant == *v)
            };
            Some((comparison, find(&comparison.numerator)?, find(&comparison.denominator)?))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    let _ = writeln!(
        text,
        "| ratio, same run (row ÷ baseline or peer) | throughput | p50 | p99 | p99.9 |\n\
         |---|--:|--:|--:|--:|"
    );
    for (comparison, row, reference) in pairs {
        let denominator = if comparison.denominator.0 == scenario {
            format!("`{}`", reference.variant)
        } else {
            format!("`{}` `{}`", reference.scenario, reference.variant)
        };
        let ratios = comparison.ratios;
        let latency = |q: f64| {
            let ours = row.histogram.value_at_quantile(q) as f64;
            let divides = ratios != Ratios::ThroughputOnly;
            if divides {
                ratio(ours, reference.histogram.value_at_quantile(q) as f64)
            } else {
                "—".to_owned()
            }
        };
        let throughput = if ratios == Ratios::LatencyOnly {
            "—".to_owned()
        } else {
            ratio(row.ops_per_sec(), reference.ops_per_sec())
        };
        let _ = writeln!(
            text,
            "| `{}` ÷ {denominator} | {throughput} | {} | {} | {} |",
            row.variant,
            latency(0.5),
            latency(0.99),
            latency(0.999)
        );
    }
    text.push('\n');
}

/// A ratio with about three significant digits; a dash when the reference is zero.
fn ratio(numerator: f64, denominator: f64) -> String {
    if denominator <= 0.0 {
        return "—".to_owned();
    }
    match numerator / denominator {
        r if r >= 100.0 => format!("{r:.0}×"),
        r if r >= 10.0 => format!("{r:.1}×"),
        r if r >= 0.1 || r == 0.0 => format!("{r:.2}×"),
        r if r >= 0.001 => format!("{r:.4}×"),
        r => format!("{r:.1e}×"),
    }
}

/// Every row's context fields, folded away: what the benchmark recorded beside its figures.
fn context(text: &mut String, rows: &[(usize, &Row)]) {
    if rows.iter().all(|(_, row)| row.context.is_empty()) {
        return;
    }
    let _ = writeln!(text, "<details><summary>Row context</summary>\n");
    for (_, row) in rows {
        let fields: Vec<String> = row
            .context
            .iter()
            .map(|(key, value)| match value {
                serde_json::Value::String(text) => format!("{key}: {text}"),
                other => format!("{key}: {other}"),
            })
            .collect();
        let _ = writeln!(text, "- `{}`: {}", row.variant, fields.join("; "));
    }
    let _ = writeln!(text, "\n</details>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::latency_histogram;

    #[test]
    fn a_table_row_shows_offered_rate_throughput_percentiles_and_samples() {
        // Goal: every column the report promises is filled from the row.
        let mut histogram = latency_histogram();
        for ns in [1_000, 2_000, 3_000, 4_000] {
            histogram.record(ns).unwrap();
        }
        let row = Row::new("hot_sku_reserve", "ringfence_tcp @20k/s", 40_000, 2.0, histogram)
            .with("offered_per_sec", 20_000);
        let line = table_row(&row);
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 12, "{line}");
        assert_eq!(&cells[..5], ["`ringfence_tcp @20k/s`", "20k/s", "40000", "2.000", "20k/s"]);
        assert_eq!(cells[5], "2.0us");
        assert_eq!(cells[11], "4");
    }

    #[test]
    fn percentiles_a_row_has_too_few_samples_for_are_dashes_and_a_row_behind_its_rate_noted() {
        // Goal: with 300 samples p99.9 and p99.99 would read as the maximum: they are dashes,
        // while p99 (100 samples needed) is shown. A row achieving 90% of its offered rate is
        // noted as behind it; one at 98% is not.
        let mut histogram = latency_histogram();
        for ns in 1..=300 {
            histogram.record(ns * 1_000).unwrap();
        }
        let row = Row::new("s", "behind @20k/s", 18_000, 1.0, histogram.clone())
            .with("offered_per_sec", 20_000);
        let line = table_row(&row);
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_ne!(cells[7], "—", "p99 of 300 samples: {line}");
        assert_eq!(&cells[8..10], ["—", "—"], "{line}");
        assert_eq!(cells[10], format_ns(histogram.max()), "{line}");
        let kept =
            Row::new("s", "kept @20k/s", 19_600, 1.0, histogram).with("offered_per_sec", 20_000);
        let mut text = String::new();
        fell_behind(&mut text, &[(0, &row), (1, &kept)]);
        assert!(
            text.contains("`behind @20k/s` achieved 18k/s of the 20k/s offered (90%)"),
            "{text}"
        );
        assert!(!text.contains("kept"), "{text}");
        assert!(supports(10_000, 0.9999) && !supports(9_999, 0.9999));
    }

    #[test]
    fn ratios_divide_throughput_and_latency_by_the_reference() {
        // Goal: a ratio reads row ÷ reference, and a zero reference prints a dash.
        assert_eq!(ratio(3.0, 2.0), "1.50×");
        assert_eq!(ratio(14.17, 1.0), "14.2×");
        assert_eq!(ratio(1.6, 22_600.0), "7.1e-5×");
        assert_eq!(ratio(1.0, 0.0), "—");
    }
}
