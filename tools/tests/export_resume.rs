//! Downstream export (`replay --export --after-seq/--after-epoch/--follow`) where the journal
//! changed or is damaged under a loader: it is refused or stopped, saying why, and never hands
//! over a line no journal keeps nor goes back to the start.

mod common;

use std::path::Path;
use std::time::Duration;

use common::follower::Follower;
use common::{Serve, TempDir, ringfence, text};

/// A config whose timer is slow enough that the journal holds only the commands sent.
fn quiet_config(dir: &Path) -> String {
    let path = dir.join("quiet.toml");
    std::fs::write(&path, "[node]\ntick_ms = 600000\nsnapshot_every_commands = 1000000\n").unwrap();
    path.display().to_string()
}

fn add_sku(node: &Serve) {
    let sku =
        r#"{"sku":1,"stock":500,"price_cents":700,"per_user_limit":1,"payment_timeout_ms":600000}"#;
    assert_eq!(node.call("POST", "/v1/skus", sku, true).0, 201);
}

fn order(node: &Serve, tag: &str, user: u64) {
    let body = format!(r#"{{"request_id":"{tag}-{user}","user":{user},"sku":1,"qty":1}}"#);
    let (status, answer) = node.call("POST", "/v1/orders", &body, false);
    assert_eq!(status, 201, "{answer}");
}

/// A node alone on `data` that sold one SKU to ten users, running.
fn node_with_ten_orders(data: &Path, config: &str) -> Serve {
    let node = Serve::start_with(data, &["--config", config]);
    add_sku(&node);
    for user in 1..=10 {
        order(&node, "first", user);
    }
    node
}

/// Cuts the stopped node's journal on `data` at `cut` with `journal truncate`, then runs the
/// node again and sells to 21 other users: records from `cut` on are written anew.
fn cut_and_run_again(data: &Path, config: &str, cut: u64) -> Serve {
    let cut = cut.to_string();
    let out = ringfence(&["journal", "truncate", data.to_str().unwrap(), "--at-seq", &cut]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let node = Serve::start_with(data, &["--config", config]);
    for user in 100..=120 {
        order(&node, "second", user);
    }
    node
}

/// `replay DIR --export FILE flags --json`: exit code, lines, summary, stderr.
fn export(
    dir: &Path,
    flags: &[&str],
) -> (Option<i32>, Vec<serde_json::Value>, Option<serde_json::Value>, String) {
    let out_file = dir.parent().unwrap().join("export.jsonl");
    let _ = std::fs::remove_file(&out_file);
    let mut args =
        vec!["replay", dir.to_str().unwrap(), "--export", out_file.to_str().unwrap(), "--json"];
    args.extend_from_slice(flags);
    let out = ringfence(&args);
    let lines = std::fs::read_to_string(&out_file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary = serde_json::from_slice(&out.stdout).ok();
    (out.status.code(), lines, summary, text(&out.stderr))
}

#[test]
fn after_epoch_refuses_a_record_replaced_by_truncate_and_a_new_run() {
    // Goal: a loader whose line N (epoch E) is not this journal's record N is refused. A
    // node alone, cut with `journal truncate` and run again, writes another record N: in an
    // epoch of the new run's own, so that E no longer names it.
    let dir = TempDir::new("truncate");
    let data = dir.path().join("data");
    let config = quiet_config(dir.path());
    let mut node = node_with_ten_orders(&data, &config);
    assert!(node.signal("-TERM").success());
    // The loader loads everything: through N, of epoch E.
    let (code, loaded, summary, stderr) = export(&data, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let summary = summary.unwrap();
    let n = summary["through_sequence"].as_u64().unwrap();
    let e = summary["through_epoch"].as_u64().unwrap();
    // The operator cuts the last five records (a mistaken command, say) and the node runs on.
    let mut node = cut_and_run_again(&data, &config, n - 4);
    assert!(node.signal("-TERM").success());
    let (code, now, _, stderr) = export(&data, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let theirs = &loaded[(n - 1) as usize];
    let ours = &now[(n - 1) as usize];
    assert_eq!(theirs["sequence"], ours["sequence"]);
    eprintln!("loader's record {n}: {theirs}\njournal's record {n}: {ours}");
    assert_ne!(theirs["command"], ours["command"], "the journal's record {n} was replaced");
    // The loader asks for what follows its line N, naming N's epoch.
    let (n_text, e_text) = (n.to_string(), e.to_string());
    let (code, lines, summary, stderr) =
        export(&data, &["--after-seq", &n_text, "--after-epoch", &e_text]);
    assert_eq!(
        code,
        Some(1),
        "an export after record {n} of epoch {e} was accepted though this journal's record {n} \
         is another ({ours} against the loader's {theirs}); it exported {} lines; summary {:?}; \
         stderr {stderr}",
        lines.len(),
        summary
    );
    assert!(stderr.contains(&format!("record {n}")), "the refusal names the record: {stderr}");
}

#[test]
fn a_follower_stops_on_a_journal_truncated_and_rewritten_by_a_new_run() {
    // Goal: `--follow` stops with exit 1 when the journal is rewritten under it, and never
    // hands over a wrong line: here a node alone stopped, cut with `journal truncate` and
    // started again, which rewrites records the follower exported (in its run's own epoch).
    let dir = TempDir::new("follow-truncate");
    let data = dir.path().join("data");
    let config = quiet_config(dir.path());
    let mut node = node_with_ten_orders(&data, &config);
    let follower = Follower::start_with(&data, &[]);
    let first = follower.lines_until(Duration::from_secs(30), |l| l.len() >= 11);
    assert_eq!(first.len(), 11, "the first pass");
    let n = first.last().unwrap()["sequence"].as_u64().unwrap();
    assert!(node.signal("-TERM").success());
    let mut node = cut_and_run_again(&data, &config, n - 4);
    // Longer than the follower's 5 s check.
    let more = follower.lines_until(Duration::from_secs(12), |_| false);
    // It stops on its own (a follower that reads on never exits, and this fails waiting).
    let (status, stderr) = follower.exited();
    assert!(node.signal("-TERM").success());
    let whole = export(&data, &[]).1;
    let mut followed = first.clone();
    followed.extend(more.iter().cloned());
    let differ: Vec<u64> = followed
        .iter()
        .filter(|line| {
            let at = line["sequence"].as_u64().unwrap() as usize;
            whole.get(at - 1).is_some_and(|w| w["command"] != line["command"])
        })
        .map(|line| line["sequence"].as_u64().unwrap())
        .collect();
    eprintln!(
        "follower: {} lines before the cut, {} after (sequences {:?}); exit {status}; lines \
         that are not the journal's record: {differ:?}; stderr: {stderr}",
        first.len(),
        more.len(),
        more.iter().map(|l| l["sequence"].as_u64().unwrap()).collect::<Vec<_>>()
    );
    assert!(
        status.code() == Some(1) && more.is_empty(),
        "the follower did not stop on the rewrite: exit {status}, {} lines handed over after \
         the cut; lines {differ:?} are no longer this journal's records",
        more.len()
    );
    assert!(stderr.contains("the journal was rewritten under the export"), "{stderr}");
}

mod damaged {
    use super::*;
    use ringfence_core::{Engine, EngineConfig, Epoch, Sequence, Timestamp};
    use ringfence_journal::recovery::recover;
    use ringfence_journal::workload::Workload;
    use ringfence_journal::writer::{Durability, WriterOptions};

    fn config() -> EngineConfig {
        EngineConfig { orders_max: 8_192, request_keys_max: 65_536, ..EngineConfig::small() }
    }

    fn options() -> WriterOptions {
        WriterOptions {
            segment_len: 1 << 20,
            durability: Durability::None,
            engine_config: config(),
        }
    }

    /// The byte offset of record `sequence` in segment `path`.
    fn record_offset(path: &Path, sequence: u64) -> usize {
        use ringfence_journal::format::{SEGMENT_HEADER_LEN, check_record};
        let bytes = std::fs::read(path).unwrap();
        let mut offset = SEGMENT_HEADER_LEN;
        loop {
            let (header, len) = check_record(&bytes[offset..]).expect("an intact record");
            if header.sequence.0 == sequence {
                return offset;
            }
            offset += len;
        }
    }

    #[test]
    fn a_follower_meeting_damage_in_the_last_segment_stops_with_the_corruption() {
        // Goal: a record damaged at rest in the last segment, with intact records the writer
        // appended after it, is corruption, not the record being written: the follower stops
        // with exit 1 and the journal's error within its 5 s check, not wait there silently.
        let dir = TempDir::new("follow-damage");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let mut engine = Engine::new(config());
        let mut workload = Workload::new(23, Sequence(1), Timestamp(1_700_000_000_000));
        let mut recovered = recover(&data, options()).unwrap();
        let mut append =
            |count: usize, recovered: &mut ringfence_journal::recovery::Recovered<_>| {
                for _ in 0..count {
                    let command = workload.next_command();
                    recovered.writer.append_command(Epoch(1), &command).unwrap();
                    recovered.writer.end_batch().unwrap();
                    workload.observe(&engine.apply(&command));
                }
            };
        append(300, &mut recovered);
        let follower = Follower::start_with(&data, &[]);
        let first = follower.lines_until(Duration::from_secs(30), |l| l.len() >= 300);
        assert_eq!(first.len(), 300);
        append(100, &mut recovered);
        // Damage at rest in record 350, then the writer goes on in the same segment.
        let segment = data.join(ringfence_journal::format::segment_name(Sequence(1)));
        let at = record_offset(&segment, 350) + 40;
        {
            use std::io::{Read as _, Seek as _, Write as _};
            let mut file =
                std::fs::OpenOptions::new().read(true).write(true).open(&segment).unwrap();
            file.seek(std::io::SeekFrom::Start(at as u64)).unwrap();
            let mut byte = [0u8; 1];
            file.read_exact(&mut byte).unwrap();
            byte[0] ^= 0x10;
            file.seek(std::io::SeekFrom::Start(at as u64)).unwrap();
            file.write_all(&byte).unwrap();
        }
        append(100, &mut recovered);
        // Ten seconds, two of the follower's 5 s checks.
        let more = follower.lines_until(Duration::from_secs(10), |_| false);
        // It stops on its own (one that waits silently never exits, and this fails waiting).
        let (status, stderr) = follower.exited();
        let verify = ringfence(&["journal", "verify", data.to_str().unwrap()]);
        drop(recovered);
        let last = more.last().map(|l| l["sequence"].as_u64().unwrap());
        eprintln!(
            "follower: after 300, {} more lines (last {last:?}); exit {status}; stderr: \
             {stderr}\njournal verify: exit {:?}: {}",
            more.len(),
            verify.status.code(),
            text(&verify.stderr)
        );
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("journal corrupt") && stderr.contains("(sequence 350)"),
            "the journal's own error: {stderr}"
        );
        let sequences: Vec<u64> = more.iter().map(|l| l["sequence"].as_u64().unwrap()).collect();
        assert_eq!(sequences, (301..350).collect::<Vec<_>>(), "up to the damage, once each");
        assert_eq!(verify.status.code(), Some(1), "`journal verify` calls it corruption too");
    }
}

mod rebuilt {
    use super::*;
    use ringfence_core::pipeline::SnapshotHook;
    use ringfence_core::{Engine, EngineConfig, Epoch, Sequence, Timestamp};
    use ringfence_journal::recovery::recover;
    use ringfence_journal::snapshot::{SnapshotPolicy, Snapshotter};
    use ringfence_journal::workload::Workload;
    use ringfence_journal::writer::{Durability, WriterOptions};

    fn config() -> EngineConfig {
        EngineConfig { orders_max: 8_192, request_keys_max: 65_536, ..EngineConfig::small() }
    }

    /// 1,000 records in epoch 1 in one segment, a snapshot through 1,000.
    fn write(dir: &Path) {
        let options = WriterOptions {
            segment_len: 1 << 20,
            durability: Durability::None,
            engine_config: config(),
        };
        let mut recovered = recover(dir, options).unwrap();
        let policy =
            SnapshotPolicy { every_commands: Some(1_000), keep: 5, ..SnapshotPolicy::default() };
        let data_dir = recovered.writer.data_dir().clone();
        let mut snapshots = Snapshotter::start(data_dir, policy, config()).unwrap();
        let mut engine = Engine::new(config());
        let mut workload = Workload::new(29, Sequence(1), Timestamp(1_700_000_000_000));
        for _ in 0..1_000 {
            let command = workload.next_command();
            recovered.writer.append_command(Epoch(1), &command).unwrap();
            let outcome = engine.apply(&command);
            workload.observe(&outcome);
            recovered.writer.end_batch().unwrap();
            recovered.writer.sync_now().unwrap();
            snapshots.after_apply(&engine, &command);
            while snapshots.stats().pauses > snapshots.stats().written + snapshots.stats().failed {
                std::thread::yield_now();
            }
        }
        snapshots.finish();
    }

    #[test]
    fn an_export_after_records_a_rebuild_set_aside_is_refused() {
        // Goal: `--after-seq N` refuses, naming the earliest N it can serve, where the records
        // after N are gone, also when the journal holds no record at all yet: here one
        // rebuilt after its snapshot through 1,000 (`journal rebuild`, the repair for damage
        // a snapshot covers), whose only segment starts at 1,001. From 1,000 on it serves.
        let dir = TempDir::new("rebuilt");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        write(&data);
        // Damage at rest in record 800, which the snapshot through 1,000 covers.
        let segment = data.join(ringfence_journal::format::segment_name(Sequence(1)));
        let mut bytes = std::fs::read(&segment).unwrap();
        let mut offset = ringfence_journal::format::SEGMENT_HEADER_LEN;
        loop {
            let (header, len) = ringfence_journal::format::check_record(&bytes[offset..]).unwrap();
            if header.sequence.0 == 800 {
                break;
            }
            offset += len;
        }
        bytes[offset + 40] ^= 0x10;
        std::fs::write(&segment, &bytes).unwrap();
        let out = ringfence(&["journal", "rebuild", data.to_str().unwrap()]);
        eprintln!(
            "rebuild: exit {:?}\n{}\n{}",
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0));
        let (code, lines, _, stderr) = export(&data, &["--after-seq", "500"]);
        assert_eq!(code, Some(1), "records 501..=1000 are gone, yet the export was accepted");
        assert!(lines.is_empty());
        assert!(
            stderr.contains("rebuilds the state only from sequence 1000 on")
                && stderr.contains("pass --after-seq 1000"),
            "{stderr}"
        );
        let (code, lines, summary, stderr) = export(&data, &["--after-seq", "1000"]);
        assert_eq!(code, Some(0), "{stderr}");
        assert!(lines.is_empty(), "no record after 1000 yet: {lines:?}");
        let summary = summary.expect("a JSON summary");
        assert_eq!(summary["through_sequence"], 1000, "the loader's next N: {summary}");
    }
}
