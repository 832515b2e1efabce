//! `cargo run -p ringfence-journal --example write-fixtures -- <dir>`: writes the golden
//! fixture of this format version into `<dir>` (see `journal/tests/fixtures/generate.rs`).

#[path = "../tests/fixtures/generate.rs"]
mod generate;

use std::path::PathBuf;

use ringfence_core::{Engine, Epoch};
use ringfence_journal::recovery::recover;
use ringfence_journal::snapshot;
use ringfence_journal::writer::{Durability, WriterOptions};

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).expect("usage: write-fixtures <dir>"));
    let data = out.join("data");
    assert!(!data.exists(), "{} exists: fixtures are written once", data.display());
    let options = WriterOptions {
        segment_len: generate::SEGMENT_LEN,
        durability: Durability::Batch,
        engine_config: generate::config(),
    };
    let mut recovered = recover(&data, options).expect("a fresh data directory");
    let (commands, outcomes) = generate::commands();
    let mut engine = Engine::new(generate::config());
    let mut at_snapshot = None;
    for chunk in commands.chunks(16) {
        for command in chunk {
            recovered.writer.append_command(Epoch(1), command).expect("append");
            engine.apply(command);
            if command.sequence == generate::SNAPSHOT_THROUGH {
                at_snapshot = Some(Engine::from_image(generate::config(), &engine.to_image()));
            }
        }
        recovered.writer.end_batch().expect("flush");
    }
    let at_snapshot = at_snapshot.expect("the snapshot point is reached").expect("restores");
    let storage = recovered.writer.data_dir().storage().clone();
    snapshot::write_now(&storage, &at_snapshot, generate::SNAPSHOT_THROUGH).expect("snapshot");
    let expected = generate::expected(&commands, &outcomes, &engine, &at_snapshot);
    drop(storage);
    drop(recovered);
    std::fs::remove_file(data.join("ringfence.lock")).expect("the lock file is not a fixture");
    std::fs::write(out.join("expected.txt"), expected).expect("write expected.txt");
    println!("fixtures written to {}", out.display());
}
