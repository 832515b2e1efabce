//! The archive (`[node] archive_dir`) as disaster recovery reads it: the segments retention
//! retired, together with those the data directory still holds, rebuild the state at any
//! sequence since the start of the sale, by the recipe README.md gives.

mod common;

use std::time::{Duration, Instant};

use common::{Serve, TempDir, ringfence, text};
use ringfence_core::{Action, Command, CreateSku, Outcome, RequestKey, Reserve, SkuId, UserId};
use ringfence_ingress::Client;
use serde_json::Value;

const RESERVATIONS: u64 = 3_000;

/// The segment files in `dir` (none while it does not exist), oldest first.
fn segments(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

/// `replay DIR --until-seq N --json`: its exit status and summary.
fn replay(dir: &std::path::Path, until: u64) -> (bool, Value, String) {
    let until = until.to_string();
    let output = ringfence(&["replay", dir.to_str().unwrap(), "--until-seq", &until, "--json"]);
    let summary = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output.status.success(), summary, text(&output.stderr))
}

#[test]
fn the_archive_and_the_data_directory_rebuild_the_state_at_any_sequence_of_the_sale() {
    // Goal: with small segments, frequent snapshots and one kept, retention moves old segments
    // to the archive and the data directory alone cannot replay the sale's start; a directory
    // of the archive's segments and the data directory's, given a manifest by `journal
    // truncate --at-end`, replays to any sequence: the first, one the archive alone holds, and
    // the node's own last, at the node's own state hash. A copy missing a segment in the
    // middle is refused, not cut.
    let root = TempDir::new("archive");
    let (data, archive) = (root.path().join("data"), root.path().join("archive"));
    let config = root.path().join("ringfence.toml");
    let settings = format!(
        "[node]\ndurability = \"none\"\nsegment_bytes = 65536\nsnapshot_every_commands = 400\n\
         snapshots_kept = 1\narchive_dir = {:?}\n",
        archive.to_str().unwrap()
    );
    std::fs::write(&config, settings).unwrap();
    let node = Serve::start_with(&data, &["--config", config.to_str().unwrap()]);
    // The snapshot writer builds its shadow engine first; a snapshot due before it is ready
    // waits for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !node.get_text("/metrics").1.contains("\nringfence_snapshot_shadow_ready 1\n") {
        assert!(Instant::now() < deadline, "the snapshot writer was not ready within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut client = Client::connect(&[node.binary]).unwrap();
    client.authenticate(&node.token).unwrap();
    let sku = CreateSku {
        sku: SkuId(5),
        stock: 1_000_000,
        price_cents: 100,
        per_user_limit: 0,
        payment_timeout_ms: 3_600_000,
        sale_start: None,
        sale_end: None,
    };
    let create = Command::Client { key: RequestKey::from_u128(1), action: Action::CreateSku(sku) };
    assert!(matches!(client.call(create), Ok(Outcome::SkuCreated(_))));
    let reserve = |n: u64| Command::Client {
        key: RequestKey::from_u128(u128::from(n) + 2),
        action: Action::Reserve(Reserve { user: UserId(n), sku: SkuId(5), qty: 1, coupon: None }),
    };
    // In bursts with pauses between: a snapshot falls due only while commands come, and the
    // writer, at idle priority, writes in the pauses. Retention retires segments after the
    // snapshots that make them unneeded are written and the journal durably reached them
    // (under durability `none`, when a segment is full); on a busy machine the writer takes
    // fewer, later snapshots, so bursts go on until two segments are archived.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut sent = 0;
    while sent < RESERVATIONS || segments(&archive).len() < 2 {
        if Instant::now() > deadline {
            let metrics = node.get_text("/metrics").1;
            let snapshots: Vec<_> = metrics.lines().filter(|l| l.contains("snapshot")).collect();
            panic!("nothing archived: {:?}; {snapshots:#?}", segments(&data));
        }
        let commands: Vec<Command> = (sent + 1..=sent + 100).map(reserve).collect();
        for answer in client.pipeline(&commands).unwrap() {
            assert!(matches!(answer, Ok(Outcome::Reserved { .. })), "{answer:?}");
        }
        sent += 100;
        std::thread::sleep(Duration::from_millis(30));
    }
    let (_, view) = node.call("GET", "/v1/node", "", false);
    let (last, hash) = (view["state"]["sequence"].as_u64().unwrap(), view["state"]["hash"].clone());
    assert_eq!(last, sent + 1, "{view}");
    drop(node);
    let (replayed, _, said) = replay(&data, 2);
    assert!(!replayed, "the data directory alone reached sequence 2");
    assert!(said.contains("restore the missing segments"), "{said}");

    // The recipe: the archive's segments, then the data directory's it does not hold.
    let history = root.path().join("history");
    std::fs::create_dir(&history).unwrap();
    let archived = segments(&archive);
    for (from, names) in [(&archive, archived.clone()), (&data, segments(&data))] {
        for name in names.iter().filter(|name| !history.join(name).exists()) {
            std::fs::copy(from.join(name), history.join(name)).unwrap();
        }
    }
    // A copy that lacks a segment in the middle is refused, naming the gap, and kept whole.
    let gapped = root.path().join("gapped");
    std::fs::create_dir(&gapped).unwrap();
    for name in segments(&history).iter().filter(|name| **name != archived[1]) {
        std::fs::copy(history.join(name), gapped.join(name)).unwrap();
    }
    let refused = ringfence(&["journal", "truncate", gapped.to_str().unwrap(), "--at-end"]);
    let said = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    let gap: u64 = archived[1].trim_end_matches(".seg").parse().unwrap();
    assert!(said.contains(&format!("has a gap at sequence {gap}")), "{said}");
    assert_eq!(segments(&gapped).len(), segments(&history).len() - 1, "nothing removed");

    let truncated = ringfence(&["journal", "truncate", history.to_str().unwrap(), "--at-end"]);
    assert!(truncated.status.success(), "{}", text(&truncated.stderr));
    assert!(
        text(&truncated.stdout).contains(&format!("journal now ends before sequence {}", last + 1))
    );

    // The last record the archive holds, from the name of the data directory's first segment.
    let archive_ends: u64 = segments(&data)[0].trim_end_matches(".seg").parse::<u64>().unwrap() - 1;
    for until in [2, archive_ends, last] {
        let (replayed, summary, said) = replay(&history, until);
        assert!(replayed, "until {until}: {said}");
        assert_eq!(summary["through_sequence"], until, "{summary}");
        assert_eq!(summary["skus"][0]["reserved"], until - 1, "one unit per reservation");
    }
    assert_eq!(replay(&history, last).1["running_hash"], hash, "the node's own state");
}
