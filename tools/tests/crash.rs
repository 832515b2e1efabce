//! Kills a child process appending to the journal with SIGKILL at random moments, many times.

mod common;

use std::io::{BufRead, BufReader};
use std::ops::ControlFlow;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;
use ringfence_core::prng::Prng;
use ringfence_core::{EngineConfig, Sequence};
use ringfence_journal::recovery::recover;
use ringfence_journal::scan::{self, ReadOnlyDir};
use ringfence_journal::writer::{Durability, WriterOptions};

/// The command the child writes at each sequence (mirrors `journal load-test`).
fn expected(sequence: Sequence) -> ringfence_core::Sequenced {
    let n = sequence.0;
    let command = if n % 97 == 0 {
        ringfence_core::Command::Tick
    } else {
        ringfence_core::Command::Client {
            key: ringfence_core::RequestKey::from_u128(u128::from(n)),
            action: ringfence_core::Action::Reserve(ringfence_core::Reserve {
                user: ringfence_core::UserId(1 + n % 1_000),
                sku: ringfence_core::SkuId(1 + n % 4),
                qty: 1 + (n % 3) as u32,
                coupon: (n % 5 == 0).then_some(ringfence_core::CouponId(n)),
            }),
        }
    };
    ringfence_core::Sequenced { sequence, timestamp: ringfence_core::Timestamp(1_000 + n), command }
}

/// Checks the journal read-only: no corruption, every record is the one the child meant to
/// write. Returns the last intact sequence.
fn check_journal(dir: &std::path::Path) -> u64 {
    let mut source = ReadOnlyDir::open(dir).unwrap();
    let layout = scan::scan(&mut source).unwrap();
    if let Some(problem) = &layout.problem {
        assert!(problem.torn_tail, "a SIGKILL left corruption, not a torn tail: {problem:?}");
    }
    let mut last = 0;
    scan::read(&mut source, &layout, Sequence(1), &mut |record| {
        assert_eq!(record.sequenced(), expected(record.sequence), "record differs");
        last = record.sequence.0;
        ControlFlow::Continue(())
    })
    .unwrap();
    last
}

#[test]
fn sigkill_under_load_never_loses_a_durable_record_or_accepts_a_torn_one() {
    // Goal: a child appending under load is SIGKILLed at random moments, many times; every
    // recovery succeeds, every sequence the child reported durable is present, and every
    // record read back is exactly what the child meant to write.
    let dir = TempDir::new("sigkill");
    let dir_arg = dir.path().to_str().unwrap().to_owned();
    let mut prng = Prng::new(0x5161_4b11);
    let mut durable_ever = 0u64;
    let started = Instant::now();
    let mut kills = 0;
    // Aim for 30 kills in about 4 s, but never stop before 5 kills and a reported durable
    // record: a loaded machine slows the child, not the property being checked.
    let enough = |kills: usize, durable: u64| kills >= 5 && durable > 0;
    while !enough(kills, durable_ever) || (kills < 30 && started.elapsed() < Duration::from_secs(4))
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the load-test child never got going"
        );
        let policy = ["batch", "batch", "none"][kills % 3];
        let batch = *prng.pick(&["1", "16", "64"]);
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringfence"))
            .args(["journal", "load-test", &dir_arg, "--durability", policy, "--batch", batch])
            .args(["--segment-size", "131072"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the load-test child");
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut durable = 0u64;
            let mut recovered = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("durable ") {
                    durable = durable.max(n.parse().expect("a sequence"));
                } else if line.starts_with("recovered ") {
                    recovered = true;
                }
            }
            (durable, recovered)
        });
        std::thread::sleep(Duration::from_millis(prng.range_inclusive(20, 139)));
        child.kill().expect("SIGKILL the child");
        let status = child.wait().unwrap();
        let (durable, recovered) = reader.join().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!stderr.contains("error"), "child failed: {stderr}");
        assert!(status.code().is_none() || recovered, "child exited on its own: {stderr}");
        durable_ever = durable_ever.max(durable);
        let last = check_journal(dir.path());
        assert!(last >= durable_ever, "durable {durable_ever} reported but journal ends at {last}");
        if kills % 4 == 3 {
            // Recover in this process too (the child recovers at every start).
            let options = WriterOptions {
                segment_len: 131_072,
                durability: Durability::Batch,
                engine_config: EngineConfig::small(),
            };
            let recovered = recover(dir.path(), options).expect("recovery succeeds");
            assert!(recovered.next_sequence.0 > durable_ever);
        }
        kills += 1;
    }
    assert!(kills >= 5, "too few kills in the time budget");
    assert!(durable_ever > 0, "the child never reported a durable record");
}
