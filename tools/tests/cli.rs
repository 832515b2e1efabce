//! The journal tools end to end: verify, dump, stats, truncate and replay on real directories.

mod common;

use std::time::Duration;

use common::follower::Follower;
use common::{TempDir, record_ends, ringfence, ringfence_within, text};
use ringfence_core::pipeline::SnapshotHook;
use ringfence_core::{Engine, EngineConfig, Epoch, Sequence, Timestamp};
use ringfence_journal::epoch::Epochs;
use ringfence_journal::recovery::recover;
use ringfence_journal::snapshot::{SnapshotPolicy, Snapshotter};
use ringfence_journal::workload::Workload;
use ringfence_journal::writer::{Durability, WriterOptions};

fn config() -> EngineConfig {
    EngineConfig { orders_max: 8_192, request_keys_max: 65_536, ..EngineConfig::small() }
}

/// Writes `count` workload commands (with a snapshot every 1,500) and returns the engine's
/// state digest after each sequence in `marks`.
fn write_journal(dir: &std::path::Path, count: usize, marks: &[usize]) -> Vec<u64> {
    write_journal_with(dir, count, Some(1_500), marks)
}

fn write_journal_with(
    dir: &std::path::Path,
    count: usize,
    every: Option<u64>,
    marks: &[usize],
) -> Vec<u64> {
    let options = WriterOptions {
        segment_len: 64 * 1024,
        durability: Durability::None,
        engine_config: config(),
    };
    let mut recovered = recover(dir, options).unwrap();
    let policy = SnapshotPolicy { every_commands: every, keep: 100, ..SnapshotPolicy::default() };
    let data_dir = recovered.writer.data_dir().clone();
    let mut snapshots = Snapshotter::start(data_dir, policy, config()).unwrap();
    let mut engine = Engine::new(config());
    let mut workload = Workload::new(11, Sequence(1), Timestamp(1_700_000_000_000));
    let mut digests = Vec::with_capacity(marks.len());
    for n in 1..=count {
        let command = workload.next_command();
        recovered.writer.append_command(Epoch(1), &command).unwrap();
        let outcome = engine.apply(&command);
        workload.observe(&outcome);
        snapshots.after_apply(&engine, &command);
        if marks.contains(&n) {
            digests.push(engine.state_digest());
        }
        recovered.writer.end_batch().unwrap();
        while snapshots.stats().pauses > snapshots.stats().written + snapshots.stats().failed {
            std::thread::yield_now();
        }
    }
    snapshots.finish();
    digests
}

/// The oldest segment still in the directory (older ones were retired after snapshots).
fn first_segment(dir: &std::path::Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    segments.remove(0)
}

#[test]
fn version_names_the_formats_and_protocols_a_pair_must_share() {
    // Goal: `--version` tells an operator, before an upgrade, whether the new release reads
    // the journal and snapshots and speaks the replication protocol of the running one.
    let out = ringfence(&["--version"]);
    assert!(out.status.success());
    let version = text(&out.stdout);
    let expected = format!(
        "ringfence {} (formats: journal {}, snapshot {}, engine image {}; protocols: \
         replication {}, client {})",
        env!("CARGO_PKG_VERSION"),
        ringfence_journal::format::FORMAT_VERSION,
        ringfence_journal::snapshot::SNAPSHOT_FORMAT_VERSION,
        ringfence_core::IMAGE_FORMAT_VERSION,
        ringfence_replicator::message::PROTOCOL_VERSION,
        ringfence_ingress::wire::VERSION
    );
    assert_eq!(version.trim_end(), expected);
}

#[test]
fn verify_reports_ok_torn_tail_and_corruption_with_distinct_exit_codes() {
    // Goal: verify exits 0 on a good journal, 3 on a torn tail, 1 on corruption, and names
    // the file, byte offset and sequence, with the repair command.
    let dir = TempDir::new("verify");
    write_journal(dir.path(), 4_000, &[]);
    let path = dir.path().to_str().unwrap();
    let ok = ringfence(&["journal", "verify", path]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let out = text(&ok.stdout);
    assert!(out.contains("..=4000)"), "{out}");
    assert!(out.contains("epoch      1"), "{out}");
    // Each snapshot names the epoch of the record it was taken through.
    assert!(out.contains("through 3000 (epoch 1)"), "{out}");
    // And the epochs of the records it includes: here one, from the first record.
    assert!(out.contains("; epochs 1 from 1\n"), "{out}");
    // The settings a node must run with on this journal.
    let engine = format!(
        "engine     shard = {}, skus_max = {}, orders_max = {},",
        config().shard,
        config().skus_max,
        config().orders_max
    );
    assert!(out.contains(&engine), "{out}");

    let json = ringfence(&["journal", "verify", path, "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["status"], "ok");
    assert_eq!(value["last_sequence"], 4000);
    assert_eq!(value["engine"]["orders_max"], config().orders_max, "{value}");
    let snapshots = value["snapshots"].as_array().unwrap();
    assert!(!snapshots.is_empty() && snapshots.iter().all(|s| s["through_epoch"] == 1), "{value}");
    let history = serde_json::json!([{"epoch": 1, "first_sequence": 1}]);
    assert!(snapshots.iter().all(|s| s["epoch_history"] == history), "{value}");

    let mut segments: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    let last = segments.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    // What a write cut off by a crash leaves: the last record's final 16-byte unit unwritten.
    let end = bytes.iter().rposition(|&b| b != 0).unwrap();
    let unit = end / 16 * 16;
    bytes[unit..unit + 16].fill(0);
    std::fs::write(last, &bytes).unwrap();
    let torn = ringfence(&["journal", "verify", path]);
    assert_eq!(torn.status.code(), Some(3), "{}", text(&torn.stdout));
    assert!(text(&torn.stdout).contains("torn tail"));

    let first = first_segment(dir.path());
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[128 + 200] ^= 0x01;
    std::fs::write(&first, &bytes).unwrap();
    let corrupt = ringfence(&["journal", "verify", path]);
    assert_eq!(corrupt.status.code(), Some(1));
    let err = text(&corrupt.stderr);
    let name = first.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(&format!("{name} at byte offset")), "{err}");
    assert!(err.contains("ringfence journal truncate"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn dump_prints_a_range_as_text_or_json_lines() {
    // Goal: dump --from/--to prints exactly that range, one line per command.
    let dir = TempDir::new("dump");
    write_journal_with(dir.path(), 500, None, &[]);
    let path = dir.path().to_str().unwrap();
    let out = ringfence(&["journal", "dump", path, "--from", "10", "--to", "19"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<_> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 10);
    assert!(lines[0].trim_start().starts_with("10  2023-11-14T22:13:20"), "{}", lines[0]);
    let json = ringfence(&["journal", "dump", path, "--json", "--to", "3"]);
    let values: Vec<serde_json::Value> =
        text(&json.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(values.len(), 3);
    assert_eq!(values[0]["sequence"], 1);
    assert_eq!(values[0]["command"]["kind"], "create_sku");
    assert!(text(&json.stderr).is_empty(), "a range the journal holds: {}", text(&json.stderr));
    // A range past the journal's end says so, and still exits 0 with what there is.
    let past = ringfence(&["journal", "dump", path, "--from", "499", "--to", "510"]);
    assert_eq!(past.status.code(), Some(0), "{}", text(&past.stderr));
    assert_eq!(text(&past.stdout).lines().count(), 2, "499 and 500");
    let note = text(&past.stderr);
    assert!(
        note.contains("sequences 501..=510 are not in the journal, which ends at 500"),
        "{note}"
    );
    let beyond = ringfence(&["journal", "dump", path, "--from", "900"]);
    assert!(text(&beyond.stderr).contains("sequences 900 on are not in the journal"));
}

#[test]
fn dump_from_zero_or_past_to_is_refused_clearly() {
    // Goal: sequences start at 1: `dump --from 0` is an error that says so, not a panic; and
    // a range that ends before it starts is an error, not an empty dump that exits 0.
    let dir = TempDir::new("dump-from-zero");
    write_journal(dir.path(), 10, &[]);
    let out = ringfence(&["journal", "dump", dir.path().to_str().unwrap(), "--from", "0"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--from must be at least 1"), "{}", text(&out.stderr));
    let path = dir.path().to_str().unwrap();
    let out = ringfence(&["journal", "dump", path, "--from", "8", "--to", "5"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    // Said as it is, with no prefix calling a refused range "invalid journal options".
    let said = text(&out.stderr);
    assert!(said.starts_with("error: --from 8 is after --to 5"), "{said}");
}

#[test]
fn stats_counts_commands_by_kind() {
    // Goal: stats accounts for every record, by kind and by segment.
    let dir = TempDir::new("stats");
    write_journal(dir.path(), 2_000, &[]);
    let out = ringfence(&["journal", "stats", dir.path().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["records"], 2000);
    let total: u64 =
        value["commands_by_kind"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, 2000);
    assert!(value["commands_by_kind"]["reserve"].as_u64().unwrap() > 500);
    let text_out = ringfence(&["journal", "stats", dir.path().to_str().unwrap()]);
    assert!(text(&text_out.stdout).contains("reserve"));
}

#[test]
fn replay_rebuilds_the_live_state_at_a_sequence_and_exports_outcomes() {
    // Goal: replay --until-seq prints the digest the live engine had at that sequence (from
    // a snapshot or from the start) and the same orders by state either way, covering every
    // order kept; --export writes one JSON outcome per command.
    let dir = TempDir::new("replay");
    let marks = [1_600usize, 3_333, 5_000];
    let digests = write_journal(dir.path(), 5_000, &marks);
    let path = dir.path().to_str().unwrap();
    for (&until, digest) in marks.iter().zip(&digests) {
        let until_seq = until.to_string();
        let out = ringfence(&["replay", path, "--until-seq", &until_seq, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(value["state_digest"], format!("{digest:016x}"), "until {until}");
        assert_eq!(value["through_sequence"], until);
        assert!(value["snapshot"].is_string(), "until {until}: {value}");
        let by_state = value["orders_by_state"].as_object().unwrap();
        let counted: u64 = by_state.values().map(|n| n.as_u64().unwrap()).sum();
        assert_eq!(value["orders_kept"].as_u64(), Some(counted), "until {until}: {value}");
        assert_eq!(by_state["reserved"], value["orders_reserved"], "until {until}");
        let from_start = ["replay", path, "--from-start", "--until-seq", &until_seq, "--json"];
        let out = ringfence(&from_start);
        let full: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(full["snapshot"].is_null());
        assert_eq!(value["orders_by_state"], full["orders_by_state"], "until {until}");
    }
    // Past the end: the state at the end, and a note that says so.
    let out = ringfence(&["replay", path, "--until-seq", "9999", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["through_sequence"], 5_000);
    let err = text(&out.stderr);
    assert!(err.contains("the journal ends at sequence 5000, before --until-seq 9999"), "{err}");
    let dir = TempDir::new("export");
    let digests = write_journal_with(dir.path(), 2_500, None, &[2_000]);
    let path = dir.path().to_str().unwrap();
    let export = dir.path().join("outcomes.jsonl");
    let out = ringfence(&[
        "replay",
        path,
        "--from-start",
        "--until-seq",
        "2000",
        "--export",
        export.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(summary.contains(&format!("state digest  {:016x}", digests[0])), "{summary}");
    assert!(summary.contains("available") && summary.contains("reserved"), "{summary}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2_000);
    assert_eq!(lines[0]["outcome"]["kind"], "sku_created");
    assert!(lines.iter().any(|l| l["outcome"]["kind"] == "reserved"));
}

#[test]
fn an_export_marks_a_retry_answered_with_the_first_outcome_as_a_repeat() {
    // Goal: a retry (the same request key, user and command) journaled again is exported with
    // `"repeat": true`, so that a loader applying outcomes skips it; the first command, and a
    // key reused for another command (refused, not answered from the first), carry no mark.
    // Fails where the export cannot tell a retry from the command it repeats.
    use ringfence_core::{
        Action, Command, CreateSku, RequestKey, Reserve, Sequenced, SkuId, UserId,
    };
    let dir = TempDir::new("export-repeat");
    let options = WriterOptions {
        segment_len: 64 * 1024,
        durability: Durability::None,
        engine_config: config(),
    };
    let mut recovered = recover(dir.path(), options).unwrap();
    let create = CreateSku {
        sku: SkuId(7),
        stock: 10,
        price_cents: 100,
        per_user_limit: 0,
        payment_timeout_ms: 60_000,
        sale_start: None,
        sale_end: None,
    };
    let reserve = |qty| Reserve { user: UserId(5), sku: SkuId(7), qty, coupon: None };
    let keyed = |key: u128, action| Command::Client { key: RequestKey::from_u128(key), action };
    let commands = [
        keyed(1, Action::CreateSku(create)),
        keyed(2, Action::Reserve(reserve(1))),
        keyed(2, Action::Reserve(reserve(1))),
        keyed(2, Action::Reserve(reserve(2))),
    ];
    for (n, command) in (1..).zip(commands) {
        let timestamp = Timestamp(1_700_000_000_000 + n);
        let sequenced = Sequenced { sequence: Sequence(n), timestamp, command };
        recovered.writer.append_command(Epoch(1), &sequenced).unwrap();
    }
    recovered.writer.end_batch().unwrap();
    drop(recovered);
    let path = dir.path().to_str().unwrap();
    let out = ringfence(&["replay", path, "--from-start", "--export", "-"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> =
        text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l["outcome"]["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["sku_created", "reserved", "reserved", "rejected"], "{lines:?}");
    assert_eq!(lines[1]["outcome"], lines[2]["outcome"], "the retry repeats the first outcome");
    let repeats: Vec<bool> = lines.iter().map(|l| l["repeat"] == true).collect();
    assert_eq!(repeats, [false, false, true, false], "{lines:?}");
    assert!(lines[1].get("repeat").is_none(), "a line that repeats nothing has no mark");
}

#[test]
fn replay_to_a_sequence_before_a_rebuilt_journal_names_the_earliest_it_replays_to() {
    // Goal: once a rebuild set aside the records before a snapshot (here: the oldest segment
    // deleted, which snapshot 1500 covers), `--until-seq` before that snapshot is refused
    // naming the earliest sequence the directory replays to, and that sequence replays.
    // Fails where the refusal says no snapshot covers the records that snapshot covers.
    let dir = TempDir::new("replay-rebuilt");
    write_journal(dir.path(), 5_000, &[]);
    let path = dir.path().to_str().unwrap();
    let mut segments: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    std::fs::remove_file(&segments[0]).unwrap();
    let rebuilt = ringfence(&["journal", "rebuild", path]);
    assert_eq!(rebuilt.status.code(), Some(0), "{}", text(&rebuilt.stderr));
    let refused = ringfence(&["replay", path, "--until-seq", "1000", "--json"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stdout));
    let err = text(&refused.stderr);
    assert!(err.contains("the earliest sequence it replays to is 1500"), "{err}");
    let replayed = ringfence(&["replay", path, "--until-seq", "1500", "--json"]);
    assert_eq!(replayed.status.code(), Some(0), "{}", text(&replayed.stderr));
    let value: serde_json::Value = serde_json::from_slice(&replayed.stdout).unwrap();
    assert_eq!(value["through_sequence"], 1_500);
}

#[test]
fn replay_until_time_stops_before_later_commands() {
    // Goal: --until-time applies exactly the commands stamped at or before that time.
    let dir = TempDir::new("until-time");
    write_journal_with(dir.path(), 1_000, None, &[]);
    let path = dir.path().to_str().unwrap();
    let dump = ringfence(&["journal", "dump", path, "--json", "--from", "600", "--to", "600"]);
    let record: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    let ms = record["timestamp_ms"].as_u64().unwrap();
    let next = ringfence(&["journal", "dump", path, "--json", "--from", "601", "--to", "601"]);
    let next: serde_json::Value = serde_json::from_slice(&next.stdout).unwrap();
    let line = text(&ringfence(&["journal", "dump", path, "--from", "600", "--to", "600"]).stdout);
    let time = line.split_whitespace().nth(1).unwrap().to_owned();
    assert!(time.ends_with(&format!(".{:03}Z", ms % 1000)), "{time}");
    let out = ringfence(&["replay", path, "--until-time", &time, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let through = value["through_sequence"].as_u64().unwrap();
    assert!(through >= 600, "through {through}");
    if next["timestamp_ms"].as_u64().unwrap() > ms {
        assert_eq!(through, 600);
    }
    let by_seq = ringfence(&["replay", path, "--until-seq", &through.to_string(), "--json"]);
    let by_seq: serde_json::Value = serde_json::from_slice(&by_seq.stdout).unwrap();
    assert_eq!(value["state_digest"], by_seq["state_digest"]);
    let bad = ringfence(&["replay", path, "--until-time", "yesterday"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("RFC 3339"));
}

#[test]
fn truncate_is_the_explicit_repair_for_corruption() {
    // Goal: after corruption, truncate at the reported sequence makes verify pass again, and
    // keeps every intact record it cut off, the ones past the damage included, in
    // `rollback/` as `journal dump --json` lines. A truncation refused keeps nothing.
    let dir = TempDir::new("truncate");
    write_journal(dir.path(), 3_000, &[]);
    let path = dir.path().to_str().unwrap();
    let first = first_segment(dir.path());
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[128 + 1000] ^= 0x80;
    std::fs::write(&first, &bytes).unwrap();
    let verify = ringfence(&["journal", "verify", path, "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    let problem = value["problem"].as_str().unwrap().to_owned();
    let at = problem.split("--at-seq ").nth(1).unwrap().trim_end_matches('`').to_owned();
    // Before the operator chooses a repair, verify says what lies past the damage.
    let past = format!(
        "past the damage at sequence {at}: {} intact records ({}..=3000), which `journal \
         truncate --at-seq {at}` would keep in rollback/ as it drops them; in no intact record: \
         1 sequence ({at})",
        3_000 - at.parse::<u64>().unwrap(),
        at.parse::<u64>().unwrap() + 1
    );
    assert!(value["notes"].as_array().unwrap().contains(&past.clone().into()), "{value}");
    // Past the damage: refused before anything is kept.
    let past = (at.parse::<u64>().unwrap() + 5).to_string();
    let refused = ringfence(&["journal", "truncate", path, "--at-seq", &past]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stdout));
    assert!(text(&refused.stderr).contains("already damaged"), "{}", text(&refused.stderr));
    assert!(!dir.path().join("rollback").exists(), "a refused truncation kept records");

    let out = ringfence(&["journal", "truncate", path, "--at-seq", &at]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let again = ringfence(&["journal", "verify", path]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stdout));
    let at: u64 = at.parse().unwrap();
    let [kept] = &rollback_files(dir.path())[..] else { panic!("one rollback file") };
    let name = kept.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(name.starts_with(&format!("truncated-{}-3000-at-", at + 1)), "{name}");
    let sequences: Vec<u64> = std::fs::read_to_string(kept)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .map(|record| record["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, (at + 1..=3_000).collect::<Vec<_>>(), "the damaged one alone is lost");
    let said = text(&out.stdout);
    assert!(said.contains(&format!("kept      {} records", 3_000 - at)), "{said}");
    let lost = format!("lost      1 sequence ({at}) in no intact record, from the cut");
    assert!(said.contains(&lost), "{said}");
}

/// The names in `dir`, sorted: what a refused repair must leave as it was.
fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// The files in `dir` and their bytes (`None` for a directory), sorted by name.
fn contents(dir: &std::path::Path) -> Vec<(Option<Vec<u8>>, String)> {
    listing(dir).into_iter().map(|name| (std::fs::read(dir.join(&name)).ok(), name)).collect()
}

#[test]
fn a_refused_rebuild_changes_nothing_in_the_directory() {
    // Goal: a rebuild refused (an intact journal; a segment missing that no snapshot covers)
    // makes no lock file where there was none and leaves one that was there byte for byte.
    // Fails where the lock is taken before the refusal: the file appears, or takes the
    // tool's pid.
    let dir = TempDir::new("rebuild-refused");
    write_journal_with(dir.path(), 3_000, None, &[]);
    let path = dir.path().to_str().unwrap();
    let lock = dir.path().join(ringfence_journal::lock::LOCK_FILE);
    std::fs::write(&lock, "1\n").unwrap();
    let before = contents(dir.path());
    let intact = ringfence(&["journal", "rebuild", path]);
    assert_eq!(intact.status.code(), Some(1), "{}", text(&intact.stdout));
    assert!(text(&intact.stderr).contains("nothing to repair"), "{intact:?}");
    assert!(contents(dir.path()) == before, "a refused rebuild rewrote the lock file");

    std::fs::remove_file(&lock).unwrap();
    let segments = files_ending(dir.path(), ".seg");
    assert!(segments.len() >= 3, "{segments:?}");
    std::fs::remove_file(&segments[1]).unwrap();
    let before = contents(dir.path());
    let missing = ringfence(&["journal", "rebuild", path]);
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing.stdout));
    assert!(text(&missing.stderr).contains("no intact snapshot holds the state"), "{missing:?}");
    assert!(contents(dir.path()) == before, "a refused rebuild made a lock file");
}

#[test]
fn a_refused_heal_changes_nothing_in_the_directory() {
    // Goal: a heal refused (an intact journal; a damaged record the copy does not hold; the
    // newest segment cut short after a crash, without --end-at-copy) says why as it always
    // did, makes no lock file where there was none and leaves one that was there byte for
    // byte; the heal that goes ahead still repairs both. Fails where the lock is taken before
    // the refusal: the file appears, or takes the tool's pid.
    let dir = TempDir::new("heal-refused");
    write_journal_with(dir.path(), 3_000, None, &[]);
    let lock = dir.path().join(ringfence_journal::lock::LOCK_FILE);
    std::fs::remove_file(&lock).unwrap();
    let peer = TempDir::new("heal-refused-peer");
    for (bytes, name) in contents(dir.path()) {
        std::fs::write(peer.path().join(name), bytes.expect("a file")).unwrap();
    }
    let empty = TempDir::new("heal-refused-empty");
    let path = dir.path().to_str().unwrap();
    let heal = |from: &TempDir, flags: &[&str]| {
        let args = ["journal", "heal", path, "--from", from.path().to_str().unwrap()];
        ringfence(&[&args[..], flags].concat())
    };
    std::fs::write(&lock, "1\n").unwrap();
    let before = contents(dir.path());
    let intact = heal(&peer, &[]);
    assert_eq!(intact.status.code(), Some(1), "{}", text(&intact.stdout));
    let err = text(&intact.stderr);
    assert!(err.contains("cannot heal: the journal is intact; nothing to repair"), "{err}");
    assert!(contents(dir.path()) == before, "a refused heal rewrote the lock file");

    std::fs::remove_file(&lock).unwrap();
    let first = first_segment(dir.path());
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[128 + 1000] ^= 0x80;
    std::fs::write(&first, &bytes).unwrap();
    let before = contents(dir.path());
    let lacking = heal(&empty, &[]);
    assert_eq!(lacking.status.code(), Some(1), "{}", text(&lacking.stdout));
    let err = text(&lacking.stderr);
    assert!(err.contains("cannot heal: ") && err.contains("holds no intact record"), "{err}");
    assert!(contents(dir.path()) == before, "a refused heal made a lock file");

    let segments = files_ending(dir.path(), ".seg");
    let newest = segments.last().unwrap();
    assert_ne!(newest, &first, "the damage and the cut lie in different segments");
    let ends = record_ends(&std::fs::read(newest).unwrap());
    assert!(ends.len() >= 4, "{ends:?}");
    let file = std::fs::OpenOptions::new().write(true).open(newest).unwrap();
    file.set_len(ends[1] as u64 + 16).unwrap();
    let before = contents(dir.path());
    let cut = heal(&peer, &[]);
    assert_eq!(cut.status.code(), Some(1), "{}", text(&cut.stdout));
    let err = text(&cut.stderr);
    assert!(err.contains("cut short") && err.contains("--end-at-copy`"), "{err}");
    assert!(contents(dir.path()) == before, "a refused heal made a lock file");

    let healed = heal(&peer, &["--end-at-copy"]);
    let out = text(&healed.stdout);
    assert_eq!(healed.status.code(), Some(0), "{out}{}", text(&healed.stderr));
    assert_eq!(out.matches("healed     sequence").count(), 2, "{out}");
    assert!(lock.exists(), "the heal that went ahead took the lock");
    let verify = ringfence(&["journal", "verify", path]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify.stdout));
}

#[test]
fn a_refused_truncation_changes_nothing_in_the_directory() {
    // Goal: a truncation refused (past the journal's end, on a directory with a file it cannot
    // place, past a missing segment) leaves the directory as it found it: no lock file where
    // there was none (a copied directory has none), no `rollback/`, while an empty one there
    // before stays. A truncation that goes ahead and keeps nothing makes no `rollback/`.
    let dir = TempDir::new("truncate-refused");
    write_journal(dir.path(), 3_000, &[]);
    std::fs::remove_file(dir.path().join(ringfence_journal::lock::LOCK_FILE)).unwrap();
    let path = dir.path().to_str().unwrap();
    let before = listing(dir.path());
    let past_the_end = ringfence(&["journal", "truncate", path, "--at-seq", "5000"]);
    assert_eq!(past_the_end.status.code(), Some(1), "{}", text(&past_the_end.stdout));
    assert!(text(&past_the_end.stderr).contains("nothing to drop"), "{past_the_end:?}");
    assert_eq!(listing(dir.path()), before, "past the end");

    let stray = dir.path().join("stray.seg");
    std::fs::write(&stray, "not a segment").unwrap();
    let before = listing(dir.path());
    let refused = ringfence(&["journal", "truncate", path, "--at-seq", "2000"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stdout));
    assert!(text(&refused.stderr).contains("stray.seg"), "{}", text(&refused.stderr));
    assert_eq!(listing(dir.path()), before, "a stray file");
    std::fs::remove_file(&stray).unwrap();

    let segments = files_ending(dir.path(), ".seg");
    assert!(segments.len() >= 3, "{segments:?}");
    let missing = std::fs::read(&segments[1]).unwrap();
    std::fs::remove_file(&segments[1]).unwrap();
    let name = segments[1].file_name().unwrap().to_str().unwrap();
    for rollback_before in [false, true] {
        if rollback_before {
            std::fs::create_dir(dir.path().join("rollback")).unwrap();
        }
        let before = listing(dir.path());
        let refused = ringfence(&["journal", "truncate", path, "--at-seq", "2500"]);
        assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stdout));
        let said = text(&refused.stderr);
        assert!(said.contains(name) && said.contains("is missing"), "{said}");
        assert_eq!(listing(dir.path()), before, "past a missing segment");
    }

    std::fs::remove_dir(dir.path().join("rollback")).unwrap();
    std::fs::write(&segments[1], missing).unwrap();
    let at_end = ringfence(&["journal", "truncate", path, "--at-end"]);
    assert_eq!(at_end.status.code(), Some(0), "{}", text(&at_end.stderr));
    assert!(text(&at_end.stdout).contains("kept      nothing"), "{}", text(&at_end.stdout));
    assert!(!dir.path().join("rollback").exists(), "an empty rollback/ was left");
}

/// The files in `dir`'s `rollback/`.
fn rollback_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir.join("rollback")).unwrap().map(|entry| entry.unwrap().path()).collect()
}

/// The files in `dir` whose names end with `suffix`, sorted.
fn files_ending(dir: &std::path::Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .collect();
    found.sort();
    found
}

#[test]
fn a_truncation_that_fails_part_way_keeps_what_it_dropped_in_rollback() {
    // Goal: a truncation that fails after it removed segments (here a directory stands where
    // the newest snapshot is set aside; a full disk fails the same steps) keeps its rollback
    // file, the only copy of what it dropped, says so, and a second run finishes it.
    let dir = TempDir::new("truncate-fails");
    write_journal(dir.path(), 3_000, &[]);
    let path = dir.path().to_str().unwrap();
    let segments = files_ending(dir.path(), ".seg");
    assert!(segments.len() >= 3, "{segments:?}");
    let newest = files_ending(dir.path(), ".snap").pop().unwrap();
    let in_the_way = format!("{}.stale", newest.display());
    std::fs::create_dir(&in_the_way).unwrap();
    let failed = ringfence(&["journal", "truncate", path, "--at-seq", "1000"]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed.stdout));
    assert!(files_ending(dir.path(), ".seg").len() < segments.len(), "nothing was removed");
    let [kept] = &rollback_files(dir.path())[..] else { panic!("the rollback file is gone") };
    let lines = std::fs::read_to_string(kept).unwrap().lines().count();
    assert_eq!(lines, 2_001, "records 1000..=3000 are kept");
    let said = text(&failed.stderr);
    assert!(said.contains(&kept.display().to_string()), "{said}");
    assert!(said.contains("truncate") && said.contains("again"), "{said}");

    std::fs::remove_dir(&in_the_way).unwrap();
    let again = ringfence(&["journal", "truncate", path, "--at-seq", "1000"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert!(kept.exists(), "the second run dropped the first one's rollback file");
    let verify = ringfence(&["journal", "verify", path]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify.stdout));
}

#[test]
fn truncate_is_refused_while_a_rebuild_is_under_way() {
    // Goal: a truncation could set aside the snapshot a rebuild cut off part way starts after,
    // leaving a marker nothing can finish: it is refused, changing nothing, and says to
    // finish the rebuild first.
    let dir = TempDir::new("truncate-over-rebuild");
    write_journal(dir.path(), 3_000, &[]);
    let path = dir.path().to_str().unwrap();
    std::fs::write(dir.path().join("rebuilding"), "3000\nA rebuild was under way.\n").unwrap();
    let snapshots = files_ending(dir.path(), ".snap");
    let refused = ringfence(&["journal", "truncate", path, "--at-seq", "2500"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stdout));
    let said = text(&refused.stderr);
    assert!(said.contains(&format!("ringfence journal rebuild {path}")), "{said}");
    assert_eq!(files_ending(dir.path(), ".snap"), snapshots, "a snapshot was set aside");
    assert!(!dir.path().join("rollback").exists(), "a refused truncation kept records");
    assert!(!dir.path().join("truncating").exists(), "a refused truncation started");
}

#[test]
fn verify_reports_a_rebuild_under_way_whose_snapshot_is_gone() {
    // Goal: a `rebuilding` marker naming a snapshot no longer there is a directory the node
    // refuses to start on and `journal rebuild` cannot finish: verify says so and exits 1.
    let dir = TempDir::new("rebuild-snapshot-gone");
    write_journal(dir.path(), 3_000, &[]);
    let path = dir.path().to_str().unwrap();
    std::fs::write(dir.path().join("rebuilding"), "3000\nA rebuild was under way.\n").unwrap();
    let under_way = ringfence(&["journal", "verify", path]);
    assert_eq!(under_way.status.code(), Some(0), "{}", text(&under_way.stderr));
    let snapshot = dir.path().join("snapshot-00000000000000003000.snap");
    std::fs::rename(&snapshot, format!("{}.stale", snapshot.display())).unwrap();
    let gone = ringfence(&["journal", "verify", path]);
    assert_eq!(gone.status.code(), Some(1), "{}", text(&gone.stdout));
    let said = text(&gone.stderr);
    assert!(said.contains(&format!("{} is gone", snapshot.display())), "{said}");
}

#[test]
fn verify_advice_and_rebuild_agree_on_a_damaged_segment_header() {
    // Goal: with the header of the newest segment damaged, verify does not offer `journal
    // rebuild` from a snapshot inside it, and a rebuild tried anyway is refused before its
    // marker is written, changing nothing; `truncate` at the segment then repairs it.
    let dir = TempDir::new("rebuild-header");
    write_journal(dir.path(), 3_000, &[]);
    let path = dir.path().to_str().unwrap();
    let newest = files_ending(dir.path(), ".seg").pop().unwrap();
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes[20..24].fill(0xff);
    std::fs::write(&newest, &bytes).unwrap();
    let verify = ringfence(&["journal", "verify", path]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify.stdout));
    let header_note = format!("the damage is to the header of {}", newest.display());
    assert!(text(&verify.stdout).contains(&header_note), "{}", text(&verify.stdout));

    let before = files_ending(dir.path(), "");
    let rebuild = ringfence(&["journal", "rebuild", path]);
    assert_eq!(rebuild.status.code(), Some(1), "{}", text(&rebuild.stdout));
    assert!(text(&rebuild.stderr).contains("header"), "{}", text(&rebuild.stderr));
    assert!(!dir.path().join("rebuilding").exists(), "a refused rebuild left its marker");
    assert_eq!(files_ending(dir.path(), ""), before, "a refused rebuild changed the directory");
    let first = newest.file_stem().unwrap().to_str().unwrap().trim_start_matches('0').to_owned();
    let truncate = ringfence(&["journal", "truncate", path, "--at-seq", &first]);
    assert_eq!(truncate.status.code(), Some(0), "{}", text(&truncate.stderr));
}

#[test]
fn reconfigure_checks_the_new_settings_and_carries_a_stopped_journal_over_for_replay_too() {
    // Goal: `journal reconfigure` checks the new settings as `serve` does before it touches
    // the directory, refuses a journal whose node did not stop cleanly, and carries a stopped
    // one over: `replay` then reads it under the new settings to the state it had, and
    // `verify` prints them.
    let dir = TempDir::new("reconfigure");
    let digests = write_journal(dir.path(), 2_000, &[2_000]);
    let path = dir.path().to_str().unwrap();
    let carry = |file: &std::path::Path| {
        ringfence(&["journal", "reconfigure", path, "--config", file.to_str().unwrap()])
    };
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[engine]\nrequest_key_window_ms = 0\n").unwrap();
    let refused = carry(&bad);
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains("[engine] request_key_window_ms = 0"), "{refused:?}");
    let settings = config().settings().map(|(name, value)| match name {
        "orders_max" => format!("{name} = {}", value * 2),
        _ => format!("{name} = {value}"),
    });
    let next = dir.path().join("next.toml");
    std::fs::write(&next, format!("[engine]\n{}\n", settings.join("\n"))).unwrap();
    let refused = carry(&next);
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains("did not stop cleanly"), "{refused:?}");

    let options = WriterOptions {
        segment_len: 64 * 1024,
        durability: Durability::None,
        engine_config: config(),
    };
    recover(dir.path(), options).unwrap().writer.close().unwrap();
    let carried = carry(&next);
    assert_eq!(carried.status.code(), Some(0), "{}", text(&carried.stderr));
    let said = text(&carried.stdout);
    assert!(said.contains("settings   orders_max = 16384 (before: 8192)\n"), "{said}");
    assert!(said.contains("continues at sequence 2001"), "{said}");
    let out = ringfence(&["replay", path, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["state_digest"], format!("{:016x}", digests[0]), "{value}");
    assert_eq!(value["through_sequence"], 2_000);
    let verified = text(&ringfence(&["journal", "verify", path]).stdout);
    assert!(verified.contains("orders_max = 16384,"), "{verified}");
}

#[test]
fn a_refused_reconfigure_changes_nothing_in_the_directory() {
    // Goal: a carry-over refused (a node running; the node did not stop cleanly; a state that
    // does not carry over to the new settings) says why as it always did, makes no lock file
    // where there was none and leaves one that was there byte for byte. Fails where the lock
    // is taken before the refusal: the file appears, or takes the tool's pid.
    let dir = TempDir::new("reconfigure-refused");
    write_journal_with(dir.path(), 2_000, None, &[]);
    let lock = dir.path().join(ringfence_journal::lock::LOCK_FILE);
    std::fs::remove_file(&lock).unwrap();
    let path = dir.path().to_str().unwrap();
    let configs = TempDir::new("reconfigure-refused-configs");
    let settings = |name: &str, changed: u64| {
        let file = configs.path().join(format!("{name}.toml"));
        let lines = config().settings().map(|(setting, value)| {
            format!("{setting} = {}", if setting == name { changed } else { value })
        });
        std::fs::write(&file, format!("[engine]\n{}\n", lines.join("\n"))).unwrap();
        file
    };
    let (larger, shard) = (settings("orders_max", 16_384), settings("shard", 7));
    let carry = |file: &std::path::Path| {
        ringfence(&["journal", "reconfigure", path, "--config", file.to_str().unwrap()])
    };
    let before = contents(dir.path());
    let unclean = carry(&larger);
    assert_eq!(unclean.status.code(), Some(1), "{}", text(&unclean.stdout));
    assert!(text(&unclean.stderr).contains("did not stop cleanly"), "{unclean:?}");
    assert!(contents(dir.path()) == before, "a refused reconfigure made a lock file");

    let options = WriterOptions {
        segment_len: 64 * 1024,
        durability: Durability::None,
        engine_config: config(),
    };
    recover(dir.path(), options).unwrap().writer.close().unwrap();
    let held = ringfence_journal::lock::DirLock::acquire(dir.path()).unwrap();
    let before = contents(dir.path());
    let running = carry(&larger);
    assert_eq!(running.status.code(), Some(1), "{}", text(&running.stdout));
    let err = text(&running.stderr);
    assert!(err.contains(&format!("in use: ringfence pid {}", std::process::id())), "{err}");
    drop(held);
    let other_shard = carry(&shard);
    assert_eq!(other_shard.status.code(), Some(1), "{}", text(&other_shard.stdout));
    let err = text(&other_shard.stderr);
    assert!(err.contains("does not carry over") && err.contains("shard"), "{err}");
    assert!(contents(dir.path()) == before, "a refused reconfigure rewrote the lock file");
}

#[test]
fn bad_input_gives_errors_not_panics_and_help_explains_each_tool() {
    // Goal: missing or garbage directories give clear errors and non-zero exits; every tool
    // has help text.
    let missing = ringfence(&["journal", "verify", "/nonexistent/ringfence"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("/nonexistent/ringfence: no such directory"));
    let file = TempDir::new("not-a-directory");
    let file = file.path().join("notes.txt");
    std::fs::write(&file, "notes").unwrap();
    let not_dir = ringfence(&["journal", "verify", file.to_str().unwrap()]);
    assert_eq!(not_dir.status.code(), Some(1));
    assert!(text(&not_dir.stderr).contains("notes.txt: not a directory"), "{not_dir:?}");
    let dir = TempDir::new("garbage");
    std::fs::write(dir.path().join("00000000000000000001.seg"), vec![0xEE; 100_000]).unwrap();
    std::fs::write(dir.path().join("00000000000000000900.seg"), vec![0x00; 10]).unwrap();
    for args in [
        vec!["journal", "verify"],
        vec!["journal", "dump"],
        vec!["journal", "stats"],
        vec!["replay"],
    ] {
        let mut args = args.clone();
        args.push(dir.path().to_str().unwrap());
        let out = ringfence(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out.stdout));
        let err = text(&out.stderr);
        assert!(err.contains("magic") && !err.contains("panicked"), "{args:?}: {err}");
    }
    for (args, needle) in [
        (vec!["journal", "verify", "--help"], "torn tail"),
        (vec!["journal", "dump", "--help"], "--from"),
        (vec!["journal", "stats", "--help"], "segment"),
        (vec!["journal", "truncate", "--help"], "--at-seq"),
        (vec!["journal", "reconfigure", "--help"], "stopped cleanly"),
        (vec!["journal", "backup", "--help"], "DEST.partial"),
        (vec!["replay", "--help"], "--until-time"),
        // Both cases: a primary gone, and under etcd a planned switchover (--force refused).
        (vec!["promote", "--help"], "a planned switchover through etcd"),
        (vec!["promote", "--help"], "With etcd it does not apply"),
    ] {
        let out = ringfence(&args);
        assert_eq!(out.status.code(), Some(0));
        assert!(text(&out.stdout).contains(needle), "{args:?}");
    }
}

#[test]
fn stats_reports_what_retention_keeps_and_retired() {
    // Goal: stats names the snapshots kept, the sequence the journal must reach back to (one
    // past the oldest kept snapshot) and how many segments retention has retired.
    let dir = TempDir::new("retention-stats");
    let mut engine = Engine::new(config());
    let mut workload = Workload::new(12, Sequence(1), Timestamp(1_700_000_000_000));
    let stats = append_with_retention(dir.path(), (&mut workload, &mut engine), 5_000);
    let path = dir.path().to_str().unwrap();
    let out = ringfence(&["journal", "stats", path, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let retention = &value["retention"];
    assert_eq!(retention["snapshots_kept"], 2, "{value}");
    assert_eq!(retention["needed_from"], 4_001, "{value}");
    assert_eq!(retention["segments_retired"], stats.segments_retired, "{value}");
    assert!(stats.segments_retired > 0, "{stats:?}");
    let first = retention["journal_first_sequence"].as_u64().unwrap();
    assert!(first > 1 && first <= 4_001, "{value}");
    let text_out = text(&ringfence(&["journal", "stats", path]).stdout);
    assert!(text_out.contains("2 snapshots kept: the journal must reach back to sequence 4001"));
    // An export starts where the retained journal can be replayed from: the oldest kept
    // snapshot (through 4000), not the newest (through 5000, which leaves nothing to export).
    let lines = export_lines(dir.path(), &[]);
    assert_eq!((lines.len(), lines[0]["sequence"].as_u64()), (1_000, Some(4_001)));
    assert!(export_lines(dir.path(), &["--since-snapshot"]).is_empty());
    // The records held before that snapshot are named as not exported, and why.
    let export = dir.path().join("retained.jsonl");
    let out = ringfence(&["replay", path, "--export", export.to_str().unwrap()]);
    let note = format!("records {first}..=4000 are in the journal but not exported");
    assert_eq!(text(&out.stderr).contains(&note), first < 4_001, "{}", text(&out.stderr));
    // A consumer that loaded through a retired sequence is told the outcomes after it are gone
    // from here, and where the journal can pick up instead; it is not handed a silent gap.
    let export = dir.path().join("gap.jsonl");
    let out =
        ringfence(&["replay", path, "--export", export.to_str().unwrap(), "--after-seq", "0"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("holds sequences from {first} on")), "{err}");
    // The earliest start is the oldest kept snapshot, not the journal's first record: the
    // state before that record is gone.
    assert!(err.contains("pass --after-seq 4000 to export from 4001"), "{err}");
    let past_first = (first + 1).to_string();
    let export = export.to_str().unwrap();
    let out = ringfence(&["replay", path, "--export", export, "--after-seq", &past_first]);
    assert!(text(&out.stderr).contains("--after-seq 4000"), "{}", text(&out.stderr));
    let resumed = export_lines(dir.path(), &["--after-seq", "4000"]);
    assert_eq!(resumed, lines, "the same as an export of the retained journal");
}

/// Flips one byte in the body of snapshot `through` in `dir`.
fn damage_snapshot(dir: &std::path::Path, through: u64) {
    let file = dir.join(ringfence_journal::snapshot::snapshot_name(Sequence(through)));
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[1_000] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
}

#[test]
fn verify_says_recovery_refuses_when_no_intact_snapshot_reaches_a_retired_journal() {
    // Goal: with the oldest segments retired, verify says an invalid snapshot is skipped for
    // an older one only when an intact older one reaches the journal's start; with none left
    // it says recovery will refuse, and what brings the directory back, as replay refuses.
    let dir = TempDir::new("verify-no-snapshot");
    let mut engine = Engine::new(config());
    let mut workload = Workload::new(12, Sequence(1), Timestamp(1_700_000_000_000));
    append_with_retention(dir.path(), (&mut workload, &mut engine), 5_000);
    let path = dir.path().to_str().unwrap();
    let verify = |json: bool| {
        let flags: &[&str] = if json { &["--json"] } else { &[] };
        let out = ringfence(&[&["journal", "verify", path][..], flags].concat());
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        out
    };
    damage_snapshot(dir.path(), 5_000);
    let out = text(&verify(false).stdout);
    assert!(out.contains("in favour of the older snapshot through 4000"), "{out}");
    assert!(out.contains("status     a snapshot is invalid (recovery does without it)"), "{out}");
    damage_snapshot(dir.path(), 4_000);
    let out = verify(false);
    let (said, err) = (text(&out.stdout), text(&out.stderr));
    assert!(!said.contains("older snapshot through"), "{said}");
    assert!(said.contains("no older intact snapshot reaches the journal's first record"), "{said}");
    assert!(said.contains("UNRECOVERABLE: no intact snapshot reaches the journal's start"));
    assert!(err.contains("so recovery will refuse"), "{err}");
    assert!(err.contains("Put back an intact snapshot through a sequence from"), "{err}");
    let value: serde_json::Value = serde_json::from_slice(&verify(true).stdout).unwrap();
    assert_eq!(value["status"], "no_snapshot", "{value}");
    assert!(value["problem"].as_str().unwrap().contains("recovery will refuse"), "{value}");
    // As verify said: recovery refuses.
    let replay = ringfence(&["replay", path]);
    assert_eq!(replay.status.code(), Some(1), "{}", text(&replay.stdout));
    assert!(text(&replay.stderr).contains("replay must start at 1"), "{}", text(&replay.stderr));
}

/// Appends the next `count` commands of `workload` in epoch 1, with a snapshot every 1,000
/// commands and two kept: retention retires the segments before the older one.
fn append_with_retention(
    dir: &std::path::Path,
    (workload, engine): (&mut Workload, &mut Engine),
    count: usize,
) -> ringfence_journal::snapshot::SnapshotStats {
    let options = WriterOptions {
        segment_len: 64 * 1024,
        durability: Durability::None,
        engine_config: config(),
    };
    let mut recovered = recover(dir, options).unwrap();
    let policy =
        SnapshotPolicy { every_commands: Some(1_000), keep: 2, ..SnapshotPolicy::default() };
    let data_dir = recovered.writer.data_dir().clone();
    let mut snapshots = Snapshotter::start(data_dir, policy, config()).unwrap();
    for _ in 0..count {
        let command = workload.next_command();
        recovered.writer.append_command(Epoch(1), &command).unwrap();
        recovered.writer.end_batch().unwrap();
        // Retention trusts only snapshots the journal has synced past.
        recovered.writer.sync_now().unwrap();
        workload.observe(&engine.apply(&command));
        snapshots.after_apply(engine, &command);
        while snapshots.stats().pauses > snapshots.stats().written + snapshots.stats().failed {
            std::thread::yield_now();
        }
    }
    snapshots.finish()
}

/// Runs `replay DIR --export FILE` with `flags` and reads the exported lines.
fn export_lines(dir: &std::path::Path, flags: &[&str]) -> Vec<serde_json::Value> {
    let export = dir.join("outcomes.jsonl");
    let mut args = vec!["replay", dir.to_str().unwrap(), "--export", export.to_str().unwrap()];
    args.extend_from_slice(flags);
    let out = ringfence(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines = std::fs::read_to_string(&export).unwrap();
    lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn replay_exports_the_whole_retained_journal_unless_told_otherwise() {
    // Goal: after snapshots, `--export` still writes every outcome from sequence 1, and
    // `--since-snapshot` limits it to what follows the newest snapshot.
    let dir = TempDir::new("export-all");
    write_journal_with(dir.path(), 2_500, Some(1_000), &[]);
    let all = export_lines(dir.path(), &[]);
    assert_eq!(all.len(), 2_500);
    let sequences: Vec<u64> = all.iter().map(|l| l["sequence"].as_u64().unwrap()).collect();
    assert_eq!(sequences, (1..=2_500).collect::<Vec<_>>());
    let since = export_lines(dir.path(), &["--since-snapshot"]);
    assert_eq!((since.len(), since[0]["sequence"].as_u64()), (500, Some(2_001)));
    let reserved = all.iter().find(|l| l["outcome"]["kind"] == "reserved").unwrap();
    let order = reserved["outcome"]["order_id"].as_str().expect("ids are decimal strings");
    assert!(order.parse::<u64>().is_ok(), "{order}");
}

#[test]
fn an_export_after_a_sequence_past_the_journals_end_is_refused_naming_the_end() {
    // Goal: a loader ahead of the journal (here: it loaded everything, then the journal was
    // cut back to a point in time) is refused with or without --after-epoch, told where the
    // journal ends, and never told to drop the epoch check or handed a summary behind its N.
    let dir = TempDir::new("export-past-end");
    write_journal_with(dir.path(), 2_500, Some(1_000), &[]);
    let path = dir.path().to_str().unwrap();
    let cut = ringfence(&["journal", "truncate", path, "--at-seq", "2001"]);
    assert_eq!(cut.status.code(), Some(0), "{}", text(&cut.stderr));
    let export = dir.path().join("past.jsonl");
    let export = export.to_str().unwrap();
    for epoch in [&["--after-epoch", "1"][..], &[]] {
        let args = ["replay", path, "--export", export, "--after-seq", "2500", "--json"];
        let out = ringfence(&[&args[..], epoch].concat());
        assert_eq!(out.status.code(), Some(1), "{epoch:?}: {}", text(&out.stdout));
        assert!(out.stdout.is_empty(), "no summary to take a next N from: {}", text(&out.stdout));
        let err = text(&out.stderr);
        assert!(err.contains("ends at sequence 2000 of epoch 1"), "{epoch:?}: {err}");
        assert!(err.contains("--after-seq at most 2000"), "{epoch:?}: {err}");
        assert!(!err.contains("without --after-epoch"), "{epoch:?}: {err}");
    }
    // At the journal's end exactly, nothing to export and the summary's N is the loader's.
    let out = ringfence(&["replay", path, "--export", export, "--after-seq", "2000", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (summary["through_sequence"].as_u64(), summary["exported"].as_u64()),
        (Some(2000), Some(0))
    );
}

#[test]
fn an_export_after_a_sequence_picks_up_exactly_where_a_consumer_left_off() {
    // Goal: `--after-seq N` exports exactly the lines a whole export has after N, replaying
    // from the newest snapshot at or before N (never a later one, whose outcomes it would
    // skip); after the journal's last record it exports nothing; it refuses an end before its
    // start.
    let dir = TempDir::new("export-after");
    write_journal_with(dir.path(), 2_500, Some(1_000), &[]);
    let all = export_lines(dir.path(), &[]);
    let export = dir.path().join("after.jsonl");
    let path = dir.path().to_str().unwrap();
    for (after, replayed_from) in [(0, 1), (999, 1), (1_000, 1_001), (1_500, 1_001), (2_499, 2_001)]
    {
        let after_text = after.to_string();
        let args =
            ["replay", path, "--export", export.to_str().unwrap(), "--after-seq", &after_text];
        let out = ringfence(&[&args[..], &["--json"]].concat());
        assert_eq!(out.status.code(), Some(0), "{after}: {}", text(&out.stderr));
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["replayed_from"], replayed_from, "{after}: {summary}");
        assert_eq!(summary["through_sequence"], 2_500, "{after}: {summary}");
        assert_eq!(summary["exported"], 2_500 - after, "{after}: {summary}");
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&export)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines, all[after as usize..], "{after}");
        let plain = text(&ringfence(&args).stdout);
        let said = format!("exported      {} outcomes ({}..=2500)", 2_500 - after, after + 1);
        assert!(plain.contains(&said), "{after}: {plain}");
    }
    assert!(export_lines(dir.path(), &["--after-seq", "2500"]).is_empty());
    // `--export -` writes the lines to standard output and the summary to standard error.
    let piped = ringfence(&["replay", path, "--export", "-", "--after-seq", "2400", "--json"]);
    assert_eq!(piped.status.code(), Some(0), "{}", text(&piped.stderr));
    let lines: Vec<serde_json::Value> =
        text(&piped.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines, all[2_400..]);
    let summary: serde_json::Value = serde_json::from_str(&text(&piped.stderr)).unwrap();
    assert_eq!(
        (summary["exported"].as_u64(), summary["through_sequence"].as_u64()),
        (Some(100), Some(2_500))
    );
    assert!(!dir.path().join("-").exists() && !std::path::Path::new("-").exists());
    let args = ["replay", path, "--export", export.to_str().unwrap(), "--after-seq", "2000"];
    let backwards = ringfence(&[&args[..], &["--until-seq", "1999"]].concat());
    assert_eq!(backwards.status.code(), Some(1));
    assert!(text(&backwards.stderr).contains("--until-seq 1999 is before --after-seq 2000"));
    let without_export = ringfence(&["replay", path, "--after-seq", "2000"]);
    assert_eq!(without_export.status.code(), Some(2), "clap refuses it: --export is required");
}

#[test]
fn an_export_after_a_record_of_another_epoch_is_refused() {
    // Goal: with --after-epoch, an export goes on only from a record the consumer's copy and
    // this journal hold in the same epoch; the summary gives the epoch to pass next time.
    let dir = TempDir::new("export-epoch");
    let options = WriterOptions {
        segment_len: 64 * 1024,
        durability: Durability::None,
        engine_config: config(),
    };
    let mut recovered = recover(dir.path(), options).unwrap();
    let mut engine = Engine::new(config());
    let mut workload = Workload::new(13, Sequence(1), Timestamp(1_700_000_000_000));
    for n in 1..=200 {
        let command = workload.next_command();
        // A failover at 121: the records from there on are the new primary's.
        let epoch = if n <= 120 { Epoch(1) } else { Epoch(2) };
        if n == 121 {
            let epochs = Epochs { current: epoch, promised: epoch };
            recovered.writer.data_dir().store_epochs(epochs).unwrap();
        }
        recovered.writer.append_command(epoch, &command).unwrap();
        recovered.writer.end_batch().unwrap();
        workload.observe(&engine.apply(&command));
    }
    drop(recovered);
    let path = dir.path().to_str().unwrap();
    let export = dir.path().join("out.jsonl");
    let run = |after: &str, epoch: &str| {
        let export = export.to_str().unwrap();
        let args =
            ["replay", path, "--export", export, "--after-seq", after, "--after-epoch", epoch];
        ringfence(&[&args[..], &["--json"]].concat())
    };
    for (after, epoch, exported) in
        [("100", "1", 100), ("120", "1", 80), ("150", "2", 50), ("0", "9", 200)]
    {
        let out = run(after, epoch);
        assert_eq!(out.status.code(), Some(0), "{after} {epoch}: {}", text(&out.stderr));
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["exported"], exported, "{summary}");
        assert_eq!(summary["through_epoch"], 2, "{summary}");
        let lines = std::fs::read_to_string(&export).unwrap();
        let last: serde_json::Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
        assert_eq!((last["sequence"].as_u64(), last["epoch"].as_u64()), (Some(200), Some(2)));
    }
    for (after, epoch, said) in [
        ("150", "1", "record 150 here is of epoch 2, but the consumer's copy is of epoch 1"),
        ("120", "2", "record 120 here is of epoch 1, but the consumer's copy is of epoch 2"),
        ("300", "2", "--after-seq 300 is past the end of this journal, which ends at sequence 200"),
    ] {
        let out = run(after, epoch);
        assert_eq!(out.status.code(), Some(1), "{after} {epoch}: {}", text(&out.stdout));
        assert!(text(&out.stderr).contains(said), "{after} {epoch}: {}", text(&out.stderr));
    }
    let alone = ringfence(&["replay", path, "--export", "x", "--after-epoch", "1"]);
    assert_eq!(alone.status.code(), Some(2), "clap refuses it: --after-seq is required");
}

#[test]
fn config_example_passes_check_and_a_typo_is_named() {
    // Goal: the printed example is a file `config check` accepts; an unknown key or a bad
    // value is refused naming it; `defaults` is TOML with every section.
    let dir = TempDir::new("config");
    let example = ringfence(&["config", "example"]);
    assert_eq!(example.status.code(), Some(0));
    let path = dir.path().join("ringfence.toml");
    std::fs::write(&path, &example.stdout).unwrap();
    let checked = ringfence(&["config", "check", path.to_str().unwrap()]);
    assert_eq!(checked.status.code(), Some(0), "{}", text(&checked.stderr));
    let typo = text(&example.stdout).replace("skus_max =", "sku_max =");
    std::fs::write(&path, typo).unwrap();
    let refused = ringfence(&["config", "check", path.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains("sku_max"), "{}", text(&refused.stderr));
    std::fs::write(&path, "[node]\ndurability = \"sometimes\"\n").unwrap();
    let refused = ringfence(&["config", "check", path.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains("durability"), "{}", text(&refused.stderr));
    std::fs::write(&path, "[node]\nsnapshot_writer = \"low\"\n").unwrap();
    let refused = ringfence(&["config", "check", path.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("[node] snapshot writer priority `low`: use idle or normal"),
        "{stderr}"
    );
    let defaults = ringfence(&["defaults"]);
    let table: toml::Table = text(&defaults.stdout).parse().unwrap();
    assert_eq!(table["engine"]["skus_max"].as_integer(), Some(16_384));
    assert_eq!(table["node"]["snapshot_writer"].as_str(), Some("idle"), "serve's default");
    assert!(["auth", "server", "node", "replication"].iter().all(|s| table.contains_key(*s)));
}

#[test]
fn config_check_refuses_what_serve_would_refuse_or_what_would_break_the_node() {
    // Goal: `config check` refuses, naming the setting, each value `serve` itself refuses and
    // each that would quietly break a running node: a request-key window too short for a
    // retry (idempotency off), a zero limit that refuses every client, a snapshot after every
    // command, a segment size the journal refuses, one address for both listeners, a weak or
    // missing token, a listener beyond loopback unguarded (protected mode), replication and
    // coordination settings. `serve` refuses the same file before it touches the data
    // directory.
    let dir = TempDir::new("config-values");
    let path = dir.path().join("ringfence.toml");
    let secret = dir.path().join("cluster.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    let admin = "admin_token = \"0123456789abcdef0123456789abcdef\"\n";
    let replicated = format!("[replication]\ncluster_secret_file = {secret:?}\n");
    let etcd = "[coordination]\netcd = [\"http://127.0.0.1:9\"]\n";
    let owned = [
        (format!("{replicated}mode = \"bogus\"\n"), "--replication `bogus`: use sync or async"),
        (format!("{replicated}timeout_ms = 0\n"), "--replication-timeout-ms must be above 0"),
        (format!("{replicated}{etcd}node_name = \"bad name!\"\n"), "--node-name `bad name!`"),
        (
            format!("{replicated}listen = \"127.0.0.1:0\"\n{etcd}node_name = \"a\"\n"),
            "a fixed port",
        ),
        (format!("{admin}[server]\nhttp = \"0.0.0.0:17080\"\n"), "with only the admin token"),
    ];
    let cases = [
        ("[engine]\nrequest_key_window_ms = 0\n", "[engine] request_key_window_ms = 0"),
        ("[engine]\nrequest_key_window_ms = 999\n", "[engine] request_key_window_ms = 999"),
        ("[server]\nin_flight_max = 0\n", "[server] in_flight_max = 0"),
        ("[server]\nconnections_max = 0\n", "[server] connections_max = 0"),
        ("[server]\nbody_max = 0\n", "[server] body_max = 0"),
        ("[server]\nrate_per_sec = 10\nrate_burst = 0\n", "[server] rate_burst = 0"),
        ("[node]\nsnapshot_every_commands = 0\n", "[node] snapshot_every_commands = 0"),
        ("[node]\nsnapshots_kept = 0\n", "[node] snapshots_kept = 0: at least 1"),
        ("[node]\ntick_ms = 0\n", "[node] tick_ms = 0: at least 1"),
        ("[node]\ndurability = \"interval:0\"\n", "durability `interval:0`: at least 1 ms"),
        ("[node]\ndurability = \"interval:+00\"\n", "durability `interval:+00`: at least 1 ms"),
        ("[node]\nin_flight_max = 0\n", "[node] in_flight_max = 0"),
        ("[node]\nsegment_bytes = 1\n", "[node] segment_bytes"),
        (
            "[server]\nlisten = \"127.0.0.1:7001\"\nhttp = \"127.0.0.1:7001\"\n",
            "listen and http are both 127.0.0.1:7001",
        ),
        ("admin_token = \"short\"\n", "the admin token from the config file is too weak"),
        ("[server]\nhttp = \"0.0.0.0:17080\"\n", "without an admin token the operator chose"),
        (
            "[auth]\norders_token_file = \"/nonexistent/orders.token\"\n",
            "/nonexistent/orders.token",
        ),
        ("[replication]\nrole = \"leader\"\n", "--role `leader`: use primary or standby"),
        ("[replication]\nrole = \"standby\"\n", "a standby needs --primary"),
        (
            "[coordination]\netcd = [\"http://127.0.0.1:9\"]\nnode_name = \"a\"\n",
            "--etcd needs replication",
        ),
    ];
    let cases = cases.iter().map(|(file, named)| ((*file).to_owned(), *named)).chain(owned);
    for (file, named) in cases {
        std::fs::write(&path, &file).unwrap();
        let refused = ringfence(&["config", "check", path.to_str().unwrap()]);
        assert_eq!(refused.status.code(), Some(1), "{file}");
        assert!(text(&refused.stderr).contains(named), "{file}: {}", text(&refused.stderr));
        let data = dir.path().join("data");
        let serve = ringfence_within(
            &["serve", "--config", path.to_str().unwrap(), "--data-dir", data.to_str().unwrap()],
            Duration::from_secs(60),
        );
        assert_eq!(serve.status.code(), Some(1), "{file}");
        assert!(text(&serve.stderr).contains(named), "{file}: {}", text(&serve.stderr));
        assert!(!data.exists(), "{file}: refused before the data directory was made");
    }
    // The shortest window allowed passes.
    std::fs::write(&path, "[engine]\nrequest_key_window_ms = 1000\n").unwrap();
    let checked = ringfence(&["config", "check", path.to_str().unwrap()]);
    assert_eq!(checked.status.code(), Some(0), "{}", text(&checked.stderr));
}

/// Appends the next `count` commands of `workload` to the journal in `dir` in `epoch` (stored
/// first, as a primary taking office does), as a node would: a run of the writer each call.
fn append_in_epoch(
    dir: &std::path::Path,
    (workload, engine): (&mut Workload, &mut Engine),
    count: usize,
    epoch: Epoch,
) {
    let options = WriterOptions {
        segment_len: 64 * 1024,
        durability: Durability::None,
        engine_config: config(),
    };
    let mut recovered = recover(dir, options).unwrap();
    if recovered.writer.data_dir().epochs().current < epoch {
        let epochs = Epochs { current: epoch, promised: epoch };
        recovered.writer.data_dir().store_epochs(epochs).unwrap();
    }
    for _ in 0..count {
        let command = workload.next_command();
        recovered.writer.append_command(epoch, &command).unwrap();
        recovered.writer.end_batch().unwrap();
        workload.observe(&engine.apply(&command));
    }
}

#[test]
fn a_follower_exports_each_record_as_the_journal_grows_until_stopped() {
    // Goal: `replay --export - --follow` writes the lines of what the journal holds, then those
    // of each record appended later (across segments, and into a new epoch after a
    // failover): exactly the lines of a whole export made afterwards. SIGTERM ends it with
    // exit 0 and the summary naming the last record exported.
    let dir = TempDir::new("follow");
    let mut engine = Engine::new(config());
    let mut workload = Workload::new(17, Sequence(1), Timestamp(1_700_000_000_000));
    append_in_epoch(dir.path(), (&mut workload, &mut engine), 300, Epoch(1));
    let follower = Follower::start(dir.path());
    let mut followed = follower.lines(300);
    append_in_epoch(dir.path(), (&mut workload, &mut engine), 200, Epoch(1));
    followed.extend(follower.lines(200));
    append_in_epoch(dir.path(), (&mut workload, &mut engine), 400, Epoch(2));
    followed.extend(follower.lines(400));
    let (status, stderr) = follower.stop();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap();
    assert_eq!(summary["through_sequence"], 900, "{summary}");
    assert_eq!(
        (summary["through_epoch"].as_u64(), summary["exported"].as_u64()),
        (Some(2), Some(900))
    );
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(files > 4, "the records span segments");
    let whole = export_lines(dir.path(), &[]);
    assert_eq!(followed, whole);
    // A loader that has the first 850 picks up after them, and follows on from there.
    let follower = Follower::start_with(dir.path(), &["--after-seq", "850", "--after-epoch", "2"]);
    let mut followed = follower.lines(50);
    append_in_epoch(dir.path(), (&mut workload, &mut engine), 100, Epoch(2));
    followed.extend(follower.lines(100));
    let (status, stderr) = follower.stop();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(followed, export_lines(dir.path(), &["--after-seq", "850"]));
}

#[test]
fn a_follower_stops_when_the_journal_is_rewritten_under_it() {
    // Goal: a journal whose records from 201 on are replaced by another history's, in a new
    // epoch (a failover that dropped this node's unreplicated records), stops the follower
    // with an error naming the record it last exported and how to check the export: whether
    // the follower reads on into the other history (it meets the new epoch) or waits where the
    // record it last read no longer is (it looks again every 5 s), whether the other history
    // is longer or shorter, and whether it took the directory's place file by file (as a
    // standby given its primary's snapshot) or was written in place (as a rejoining node cuts
    // its journal and writes on). The summary still says how far it got.
    let cases = [
        (450, false, Rewrite::Replaced, "is now of epoch 2"),
        (450, true, Rewrite::Replaced, "is now of epoch 2"),
        (290, true, Rewrite::Replaced, "is no longer in it"),
        (450, false, Rewrite::InPlace, "is now of epoch 2"),
        (290, true, Rewrite::InPlace, "is no longer in it"),
    ];
    for (other_len, read_on_first, rewrite, said) in cases {
        let case = format!("{other_len} {read_on_first} {rewrite:?}");
        let dir = TempDir::new("follow-rewritten");
        let other = TempDir::new("follow-rewritten-other");
        let mut engine = Engine::new(config());
        let mut workload = Workload::new(19, Sequence(1), Timestamp(1_700_000_000_000));
        append_in_epoch(dir.path(), (&mut workload, &mut engine), 300, Epoch(1));
        let follower = Follower::start(dir.path());
        let mut followed = follower.lines(300);
        if read_on_first {
            append_in_epoch(dir.path(), (&mut workload, &mut engine), 50, Epoch(1));
            followed.extend(follower.lines(50));
        }
        let last = followed.len();
        assert_eq!(followed[last - 1]["epoch"], 1);
        let mut engine = Engine::new(config());
        let mut workload = Workload::new(19, Sequence(1), Timestamp(1_700_000_000_000));
        append_in_epoch(other.path(), (&mut workload, &mut engine), 200, Epoch(1));
        match rewrite {
            Rewrite::Replaced => {
                append_in_epoch(
                    other.path(),
                    (&mut workload, &mut engine),
                    other_len - 200,
                    Epoch(2),
                );
                for entry in std::fs::read_dir(dir.path()).unwrap() {
                    std::fs::remove_file(entry.unwrap().path()).unwrap();
                }
                for entry in std::fs::read_dir(other.path()).unwrap() {
                    let entry = entry.unwrap();
                    std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
                }
            }
            Rewrite::InPlace => {
                let storage = ringfence_journal::storage::FileStorage::open(dir.path()).unwrap();
                ringfence_journal::recovery::truncate(&storage, Sequence(201)).unwrap();
                append_in_epoch(
                    dir.path(),
                    (&mut workload, &mut engine),
                    other_len - 200,
                    Epoch(2),
                );
            }
        }
        let (status, stderr) = follower.exited();
        assert_eq!(status.code(), Some(1), "{case}: {stderr}");
        let record = format!("record {last} of this journal, exported as of epoch 1, {said}");
        assert!(stderr.contains(&record), "{case}: {stderr}");
        let check = format!("--after-seq {last} --after-epoch 1");
        assert!(stderr.contains(&check), "{case}: {stderr}");
        let summary: serde_json::Value =
            serde_json::from_str(stderr.lines().next().unwrap()).unwrap();
        assert_eq!(summary["through_sequence"], last, "{case}: {summary}");
    }
}

/// How [`a_follower_stops_when_the_journal_is_rewritten_under_it`] rewrites the journal.
#[derive(Clone, Copy, Debug)]
enum Rewrite {
    /// Every file removed and the other history's copied in: new files.
    Replaced,
    /// Cut at 201 and written on: the same files.
    InPlace,
}

#[test]
fn a_follower_that_retention_overtook_says_where_to_pick_up() {
    // Goal: a follower held up (stopped here with SIGSTOP; in life, a slow consumer) while the
    // node snapshots and retires the segments it had not read stops with an error naming the
    // last record it exported and the run that picks up after it, rather than skipping to
    // the records that are left; that run names the earliest sequence this directory can
    // still export after.
    let dir = TempDir::new("follow-retired");
    let mut engine = Engine::new(config());
    let mut workload = Workload::new(12, Sequence(1), Timestamp(1_700_000_000_000));
    append_in_epoch(dir.path(), (&mut workload, &mut engine), 300, Epoch(1));
    let follower = Follower::start(dir.path());
    let mut followed = follower.lines(300);
    let pid = follower.pid().to_string();
    let signal = |which: &str| {
        let sent = std::process::Command::new("kill").args([which, &pid]).status().unwrap();
        assert!(sent.success(), "kill {which}");
    };
    signal("-STOP");
    let stats = append_with_retention(dir.path(), (&mut workload, &mut engine), 5_000);
    assert!(stats.segments_retired > 0, "{stats:?}");
    signal("-CONT");
    let (status, stderr, rest) = follower.exited_with_lines();
    followed.extend(rest);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = followed.last().unwrap()["sequence"].as_u64().unwrap();
    assert!(stderr.contains("were retired after a snapshot before the follower read them"));
    let again = format!("Run again with --after-seq {last} --after-epoch 1");
    assert!(stderr.contains(&again), "{last}: {stderr}");
    let summary: serde_json::Value = serde_json::from_str(stderr.lines().next().unwrap()).unwrap();
    assert_eq!(summary["through_sequence"], last, "{summary}");
    // Every line is the whole export's, none skipped.
    let sequences: Vec<u64> = followed.iter().map(|l| l["sequence"].as_u64().unwrap()).collect();
    assert_eq!(sequences, (1..=last).collect::<Vec<_>>());
    let (path, after) = (dir.path().to_str().unwrap(), last.to_string());
    let export = dir.path().join("again.jsonl");
    let export = export.to_str().unwrap();
    let again = ["replay", path, "--export", export, "--after-seq", &after, "--after-epoch", "1"];
    let out = ringfence(&again);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let refusal = text(&out.stderr);
    assert!(refusal.contains(&format!("an export after sequence {after} needs the state")));
    assert!(refusal.contains(" to export from "), "{refusal}");
}

#[test]
fn output_into_a_closed_pipe_ends_the_command_quietly() {
    // Goal: a command whose reader has gone (`ringfence defaults | head -1`) ends as Unix
    // tools do, by SIGPIPE, with nothing on stderr — not with a panic and a backtrace.
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    for args in [&["defaults"][..], &["config", "example"][..]] {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_ringfence"))
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run ringfence");
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{args:?}: {:?}", out.status);
        assert!(out.stderr.is_empty(), "{args:?}: {}", text(&out.stderr));
    }
}

/// A config file whose data directory is `dir/data` (made), with `extra` before its
/// `[server]` and a small `[engine]`.
fn config_with_data_dir(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let text = format!(
        "data_dir = \"{}\"\n{extra}\n[server]\nlisten = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n\
         [engine]\nskus_max = 64\norders_max = 1000\ncoupons_max = 64\nbatches_max = 8\n\
         holdings_max = 1000\nrequest_keys_max = 2000\n",
        data.display()
    );
    let path = dir.join("ringfence.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn config_check_refuses_the_data_directorys_own_admin_token_as_serve_does() {
    // Goal: `config check` reads serve's own admin token (`<data_dir>/admin.token`) as `serve
    // --config FILE` does: one too weak, or shared with a role's, is refused by both, and
    // `serve` refuses before it locks the directory.
    let deadline = Duration::from_secs(60);
    let weak = TempDir::new("check-weak-own");
    let path = config_with_data_dir(weak.path(), "");
    std::fs::write(weak.path().join("data/admin.token"), "short\n").unwrap();
    let path = path.to_str().unwrap();
    let check = ringfence_within(&["config", "check", path], deadline);
    assert_eq!(check.status.code(), Some(1), "config check: {}", text(&check.stdout));
    assert!(text(&check.stderr).contains("too weak"), "{}", text(&check.stderr));
    let serve = ringfence_within(&["serve", "--config", path], deadline);
    assert!(text(&serve.stderr).contains("too weak"), "{}", text(&serve.stderr));

    let shared = TempDir::new("check-shared-own");
    let token = "abcdefghijklmnopqrstuvwxyz0123456789ABCD";
    let orders = shared.path().join("orders.token");
    std::fs::write(&orders, token).unwrap();
    let extra = format!("[auth]\norders_token_file = \"{}\"\n", orders.display());
    let path = config_with_data_dir(shared.path(), &extra);
    std::fs::write(shared.path().join("data/admin.token"), token).unwrap();
    let path = path.to_str().unwrap();
    let check = ringfence_within(&["config", "check", path], deadline);
    assert_eq!(check.status.code(), Some(1), "config check: {}", text(&check.stdout));
    assert!(text(&check.stderr).contains("same token"), "{}", text(&check.stderr));
    let serve = ringfence_within(&["serve", "--config", path], deadline);
    assert!(text(&serve.stderr).contains("same token"), "{}", text(&serve.stderr));
    assert!(!shared.path().join("data/ringfence.lock").exists(), "serve locked it first");
}
