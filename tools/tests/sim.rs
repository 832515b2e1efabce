//! `ringfence sim` as a user runs it: one seed's report, the same trace for the same seed,
//! JSON for machines, a swarm's totals, and a run too short to converge refused up front.

mod common;

use common::{ringfence, text};

fn sim_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["sim", "--faults-s", "3", "--settle-s", "5", "--json"];
    all.extend_from_slice(args);
    let output = ringfence(&all);
    assert!(output.status.success(), "{}{}", text(&output.stdout), text(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("sim --json prints one JSON document")
}

#[test]
fn a_seed_runs_the_same_twice_and_reports_as_json() {
    // Goal: through the binary, a seed's run passes every checker, reports what it did, and
    // gives the same trace hash each time; another seed gives another.
    let first = sim_json(&["--seed", "3"]);
    let again = sim_json(&["--seed", "3"]);
    let report = &first["seeds"][0];
    assert_eq!(report["seed"], 3);
    assert!(report["failure"].is_null(), "{report}");
    assert!(report["writes_acknowledged"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["simulated_ms"].as_u64(), Some(8_000), "{report}");
    assert_eq!(report["trace_hash"], again["seeds"][0]["trace_hash"]);
    assert_ne!(report["trace_hash"], sim_json(&["--seed", "4"])["seeds"][0]["trace_hash"]);
}

#[test]
fn a_swarm_prints_its_totals_and_a_text_summary() {
    // Goal: `--seeds N --summary` runs N seeds from `--first` and totals them; the text
    // summary names the checkers' verdict.
    let swarm = sim_json(&["--seeds", "3", "--first", "10", "--summary"]);
    let seeds: Vec<u64> =
        swarm["seeds"].as_array().unwrap().iter().map(|s| s["seed"].as_u64().unwrap()).collect();
    assert_eq!(seeds, [10, 11, 12]);
    assert_eq!(swarm["totals"]["seeds"], 3);
    assert_eq!(swarm["totals"]["failed"], 0);
    let output = ringfence(&["sim", "--seed", "5", "--faults-s", "3", "--settle-s", "5"]);
    assert!(output.status.success());
    let summary = text(&output.stdout);
    assert!(
        summary.contains("every checker passed") && summary.contains("trace hash"),
        "{summary}"
    );
    // Without `--summary` a swarm still says what it ran.
    let output = ringfence(&["sim", "--seeds", "2", "--first", "10", "--faults-s", "3"]);
    assert!(output.status.success());
    let line = text(&output.stdout);
    assert_eq!(line, "2 seeds run, 0 failed (--summary for the totals)\n");
}

#[test]
fn a_settling_time_too_short_to_converge_is_refused() {
    // Goal: the pair needs time after the faults to converge and serve; a run that gives it
    // less is refused before it starts, naming the flag, not reported as a failing seed.
    let output = ringfence(&["sim", "--seed", "1", "--settle-s", "1"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("--settle-s"), "{}", text(&output.stderr));
}
