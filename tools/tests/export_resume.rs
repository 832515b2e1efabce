//! Downstream export (`replay --export --after-seq`) from journals whose records before the
//! loader's N are gone: refused, naming the earliest N the directory serves.

mod common;

use std::path::Path;

use common::{TempDir, ringfence, text};

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
