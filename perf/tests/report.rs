//! `ringfence-perf report` as a user runs it: the quick report, scaled down so that a debug
//! build finishes in well under a minute, writes every table, chart and `.hgrm` file, and each
//! parses. Structure only: no figure is ever asserted.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{TempDir, perf, perf_default_log};

/// Shrinks the quick plan for a debug build; `report --quick` runs the same code unscaled.
const SCALE: &str = "0.01";

/// Every scenario the report's benchmarks measure (the Redis peer's rows join
/// `loopback_ping` and `hot_sku_reserve` when `redis-server` is installed).
const SCENARIOS: [&str; 26] = [
    "ring_hop@1000k/s",
    "ring_hop@max",
    "hot_sku",
    "mixed",
    "blp_alone",
    "pipeline@100k/s",
    "pipeline@1M/s",
    "pipeline@max",
    "ack_to_answer",
    "append_batch_1",
    "append_batch_16",
    "append_batch_256",
    "segment_start",
    "replay",
    "snapshot",
    "loopback_ping",
    "hot_sku_reserve",
    "inproc@2k/s",
    "inproc@10k/s",
    "inproc@50k/s",
    "inproc@max",
    "tcp@2k/s",
    "tcp@10k/s",
    "tcp@50k/s",
    "tcp@max",
    "failover",
];

/// Rows each step alone measures, as (scenario, start of the variant's name): a step that
/// silently measured nothing, or dropped one of its servers, fails here even where the
/// scenario's table is filled by another step (`tcp`, `http` and `redis` share theirs).
const STEP_ROWS: [(&str, &str); 16] = [
    ("hot_sku", "naive_baseline"),
    ("hot_sku", "naive_presized"),
    ("hot_sku", "ringfence_lookahead"),
    ("mixed", "naive_baseline"),
    ("mixed", "naive_presized"),
    ("loopback_ping", "binary_ping_baseline max"),
    ("hot_sku_reserve", "ringfence_tcp max"),
    ("hot_sku_reserve", "ringfence_tcp_inline max"),
    ("hot_sku_reserve", "machine_wakeup @"),
    ("hot_sku_reserve", "ringfence_http max"),
    ("hot_sku_reserve", "ringfence_http_inline max"),
    ("hot_sku_reserve", "ringfence_http_inline_batch max"),
    ("hot_sku_reserve", "ringfence_http_snapshots max"),
    ("hot_sku_reserve", "ringfence_http_snapshots_normal max"),
    ("inproc@max", "sync"),
    ("tcp@max", "sync"),
];

/// Scenario families with offered rates: each gets a throughput chart.
const RATE_FAMILIES: [&str; 6] =
    ["ring_hop", "pipeline", "loopback_ping", "hot_sku_reserve", "inproc", "tcp"];

#[test]
fn the_quick_report_writes_every_table_chart_and_histogram() {
    // Goal: one run gives report.md with the machine and a table per scenario, a latency chart
    // per scenario and a throughput chart per family with offered rates, and one parsable
    // .hgrm file per row, all linked from report.md.
    let out = TempDir::new("quick");
    let dir = out.0.to_str().expect("a UTF-8 temp dir");
    let output = perf_default_log(&["report", "--quick", "--scale", SCALE, "--out", dir]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "report failed:\n{stderr}");
    assert!(stderr.contains("[ 1/10] ring") && stderr.contains("[10/10] replication"), "{stderr}");
    let markdown = std::fs::read_to_string(out.0.join("report.md")).expect("report.md");
    for field in ["## Machine", "| CPU | ", "| cores | ", "| kernel | ", "### Wait strategy"] {
        assert!(markdown.contains(field), "report.md lacks {field:?}");
    }
    // The build names its source and its compiler, so a published report can be traced.
    let build = markdown.lines().find(|line| line.starts_with("| build | ")).expect("no build");
    assert!(build.contains("commit ") || build.contains("no git checkout"), "{build}");
    assert!(build.contains("rustc "), "{build}");
    // The nodes' `info` lines are left out of the report's progress.
    assert!(!stderr.contains(" INFO "), "{stderr}");
    let mut linked = BTreeSet::new();
    for scenario in SCENARIOS {
        linked.extend(check_scenario(&markdown, &out.0, scenario));
    }
    for (scenario, variant) in STEP_ROWS {
        let variants = table_variants(&markdown, scenario);
        assert!(
            variants.iter().any(|name| name.starts_with(variant)),
            "{scenario}: no `{variant}` row among {variants:?}"
        );
    }
    for family in RATE_FAMILIES {
        let title = format!("![{family}: throughput by offered rate](");
        let chart = link_after(&markdown, &title).unwrap_or_else(|| panic!("no chart: {family}"));
        check_svg(&out.0.join(&chart), &format!("{family}: throughput by offered rate"));
        linked.insert(chart);
    }
    assert!(markdown.contains("÷ `naive_baseline`"), "the BLP's ratio to its baseline");
    assert!(markdown.contains("÷ `naive_presized`"), "the BLP's ratio to the presized baseline");
    assert!(markdown.contains("÷ `local_only`"), "the standby's ratio to the primary alone");
    let redis_ran = markdown.contains("`redis_lua max`");
    assert!(redis_ran || markdown.contains("`redis` skipped: "), "redis neither ran nor skipped");
    if redis_ran {
        let pings = table_variants(&markdown, "loopback_ping");
        assert!(pings.iter().any(|name| name == "redis_ping_baseline max"), "{pings:?}");
        // The peer is charged its own CPU time (this process's would read about zero).
        assert!(markdown.contains("server CPU per reservation, ringfence"), "no CPU comparison");
        assert!(!markdown.contains("redis_lua max: server CPU 0.00 us"), "Redis charged nothing");
        // Against the compact topology, and `serve`'s own on two cores (`inline`).
        for ours in ["ringfence_tcp max", "ringfence_tcp_inline max"] {
            let ratio = format!("| `{ours}` ÷ `redis_lua max` |");
            assert!(markdown.contains(&ratio), "no ratio {ours} to Redis");
        }
    }
    check_every_file_is_linked(&out.0, &linked);
    check_rows(&out.0, linked.iter().filter(|f| f.ends_with(".hgrm")).count());
}

/// Checks `scenario`'s table, chart and histograms; returns the files it links.
fn check_scenario(markdown: &str, dir: &Path, scenario: &str) -> Vec<String> {
    let heading = format!("\n### `{scenario}`\n");
    let start = markdown.find(&heading).unwrap_or_else(|| panic!("no table for {scenario}"));
    let section = &markdown[start + heading.len()..];
    let section = &section[..section.find("\n### ").unwrap_or(section.len())];
    let mut lines = section.lines().skip_while(|line| line.is_empty());
    let header = lines.next().expect("a table header");
    assert!(
        header.starts_with("| variant | offered | ops | seconds | throughput | p50 "),
        "{header}"
    );
    assert!(lines.next().is_some_and(|line| line.starts_with("|---|")));
    let rows: Vec<&str> = lines.take_while(|line| line.starts_with('|')).collect();
    assert!(!rows.is_empty(), "{scenario}: an empty table");
    for row in &rows {
        assert_eq!(row.matches('|').count(), 13, "{scenario}: {row}");
    }
    // One chart, or one per offered load when the scenario's rows were measured at several.
    let charts: Vec<(String, String)> = section
        .split("![")
        .skip(1)
        .filter_map(|rest| {
            let (title, rest) = rest.split_once("](")?;
            Some((title.to_owned(), rest.split(')').next()?.to_owned()))
        })
        .filter(|(title, _)| title.starts_with(scenario))
        .collect();
    assert!(!charts.is_empty(), "{scenario}: no chart");
    let mut legends = String::new();
    for (title, chart) in &charts {
        assert!(title.ends_with(": latency by percentile"), "{title}");
        check_svg(&dir.join(chart), title);
        let svg = std::fs::read_to_string(dir.join(chart)).expect("the chart just read");
        // HdrHistogram's axes: percentiles on the log "nines" axis, latency on a log axis.
        for label in ["percentile (log scale of 1/(1-p))", "latency (log scale)", "90%", "99%"] {
            assert!(svg.contains(label), "{chart}: no {label:?}");
        }
        legends.push_str(&svg);
    }
    // Every row with samples is a curve named in its scenario's charts (peers overlaid).
    for row in &rows {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let variant = cells[0].trim_matches('`');
        if cells[11] != "0" {
            assert!(
                legends.contains(&format!("{variant} (max ")),
                "{scenario}: no curve {variant}"
            );
        }
    }
    let histograms: Vec<String> = section
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .filter(|link| link.ends_with(".hgrm"))
        .map(str::to_owned)
        .collect();
    assert_eq!(histograms.len(), rows.len(), "{scenario}: one .hgrm per row");
    for (file, row) in histograms.iter().zip(&rows) {
        // The table's sample count is the histogram's: the file holds that row's distribution.
        let samples = row.trim_end_matches('|').rsplit('|').next().unwrap().trim();
        let total = check_hgrm(&dir.join(file), section);
        assert_eq!(samples.parse::<u64>().ok(), Some(total), "{scenario}: {file} against {row}");
    }
    histograms.into_iter().chain(charts.into_iter().map(|(_, chart)| chart)).collect()
}

/// The variants of `scenario`'s table in report.md (none when it has no table).
fn table_variants(markdown: &str, scenario: &str) -> Vec<String> {
    let heading = format!("\n### `{scenario}`\n");
    let Some(start) = markdown.find(&heading) else {
        return Vec::new();
    };
    let section = &markdown[start + heading.len()..];
    let section = &section[..section.find("\n### ").unwrap_or(section.len())];
    section
        .lines()
        .filter(|line| line.starts_with("| `") && !line.contains(" ÷ "))
        .filter_map(|line| line.split('`').nth(1).map(str::to_owned))
        .collect()
}

/// The link target of the Markdown image or link that starts with `prefix`.
fn link_after(text: &str, prefix: &str) -> Option<String> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    Some(rest[..rest.find(')')?].to_owned())
}

fn check_svg(path: &Path, title: &str) {
    let svg = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"), "{}", path.display());
    assert!(svg.contains(title), "{}: no title {title:?}", path.display());
    assert!(svg.contains("<polyline"), "{}: no curve", path.display());
    assert_eq!(svg.matches("<svg").count(), 1, "{}", path.display());
}

/// Checks a `.hgrm` file's structure: header, percentile lines (value, percentile rising to 1,
/// total count, and 1/(1-percentile) on all but the last), then Java's three footer lines.
/// `section` is the report's text on the scenario, shown when a histogram is empty: its notes
/// say what the benchmark saw (lost or failed requests). Returns the total count.
fn check_hgrm(path: &Path, section: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = path.display();
    let lines: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"], "{name}");
    assert!(lines[1].is_empty(), "{name}");
    let footer = &lines[lines.len() - 3..];
    for (line, prefix) in footer.iter().zip(["#[Mean    = ", "#[Max     = ", "#[Buckets = "]) {
        assert!(line.starts_with(prefix) && line.ends_with(']'), "{name}: {line}");
    }
    let body = &lines[2..lines.len() - 3];
    assert!(!body.is_empty(), "{name}: no samples; the report's section:\n{section}");
    let (mut previous, mut percentile, mut total) = (0.0f64, 0.0f64, 0u64);
    for (index, line) in body.iter().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let last = index + 1 == body.len();
        assert_eq!(fields.len(), if last { 3 } else { 4 }, "{name}: {line}");
        let value: f64 = fields[0].parse().unwrap_or_else(|_| panic!("{name}: {line}"));
        let now: f64 = fields[1].parse().unwrap_or_else(|_| panic!("{name}: {line}"));
        let count: u64 = fields[2].parse().unwrap_or_else(|_| panic!("{name}: {line}"));
        assert!(value >= previous && now >= percentile && count >= total, "{name}: {line}");
        assert_eq!(fields[1].len(), "0.000000000000".len(), "{name}: {line}");
        (previous, percentile, total) = (value, now, count);
    }
    assert_eq!(percentile, 1.0, "{name}: the last line is 100%");
    let footer_total = footer[1].trim_end_matches(']').rsplit(' ').next().unwrap();
    assert_eq!(footer_total.parse::<u64>().ok(), Some(total), "{name}: footer count");
    total
}

/// Every `.hgrm` and `.svg` written is one report.md links.
fn check_every_file_is_linked(dir: &Path, linked: &BTreeSet<String>) {
    for sub in ["hgrm", "charts"] {
        for entry in std::fs::read_dir(dir.join(sub)).expect("the report's subdirectory") {
            let name = format!("{sub}/{}", entry.unwrap().file_name().to_string_lossy());
            assert!(linked.contains(&name), "{name} is written but not in a checked table");
        }
    }
}

/// rows.jsonl has one JSON row per `.hgrm` file, each with the documented fields.
fn check_rows(dir: &Path, histograms: usize) {
    let text = std::fs::read_to_string(dir.join("rows.jsonl")).expect("rows.jsonl");
    let rows: Vec<serde_json::Value> =
        text.lines().map(|line| serde_json::from_str(line).expect("a JSON row")).collect();
    assert_eq!(rows.len(), histograms);
    for row in &rows {
        for field in ["section", "scenario", "variant", "ops", "ops_per_sec", "p50_ns", "max_ns"] {
            assert!(row.get(field).is_some(), "{field} missing in {row}");
        }
    }
}

#[test]
fn a_directory_that_cannot_be_made_is_refused_before_anything_runs() {
    // Goal: an I/O error gives a clear message and a nonzero exit, not a panic, at once.
    let dir = TempDir::new("blocked");
    std::fs::create_dir_all(&dir.0).unwrap();
    let blocker = dir.0.join("a-file");
    std::fs::write(&blocker, "a file where the directory should go").unwrap();
    let out = blocker.join("report");
    let output = perf(&["report", "--quick", "--out", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("cannot create the report directory"), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("[ 1/10]"), "{stderr}");
}

#[test]
fn a_scale_that_is_not_positive_is_refused() {
    // Goal: `--scale 0` (or a negative, infinite or unparsable factor) is a usage error with
    // a message, as clap's own are, not an empty report.
    let out = TempDir::new("scale");
    for factor in ["0", "-1", "inf", "nan", "x"] {
        let output = perf(&["report", "--scale", factor, "--out", out.0.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "--scale {factor}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--scale must be a positive"), "--scale {factor}: {stderr}");
    }
}
