//! The snapshot writer's scheduling priority. A test binary of its own: it finds the writer's
//! thread by name in `/proc/self/task`, where another test's writer would also be listed.

mod common;

use std::time::{Duration, Instant};

use common::{config, generate, options};
use ringfence_core::pipeline::SnapshotHook;
use ringfence_core::{Engine, Epoch, Sequence, Timestamp};
use ringfence_journal::fault::FaultStorage;
use ringfence_journal::recovery::recover_from;
use ringfence_journal::snapshot::{SnapshotPolicy, Snapshotter, WriterPriority};
use ringfence_journal::workload::Workload;
use ringfence_journal::writer::Durability;

/// `SCHED_IDLE` and `SCHED_OTHER`, as `/proc/<pid>/task/<tid>/stat` reports a policy.
const SCHED_IDLE: u32 = 5;
const SCHED_OTHER: u32 = 0;

/// The scheduling policy of each live thread of this process named `ringfence-snaps` (the
/// writer's name, cut to the 15 bytes Linux keeps).
fn writer_policies() -> Vec<u32> {
    let mut policies = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else { continue };
        if comm.trim_end() != "ringfence-snaps" {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(task.join("stat")) else { continue };
        // Fields after the command name, which is in parentheses and may hold spaces: the
        // policy is field 41 of the line, the 39th after the closing parenthesis.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let policy = after_name.split(' ').nth(38).unwrap().parse().unwrap();
        policies.push(policy);
    }
    policies
}

/// Runs a writer at `priority` through two periodic snapshots and returns the scheduling
/// policy its thread had.
fn snapshots_at(priority: WriterPriority) -> u32 {
    let disk = FaultStorage::new();
    let mut recovered = recover_from(disk, options(Durability::Batch)).unwrap();
    let policy = SnapshotPolicy { every_commands: Some(150), keep: 2, writer: priority };
    let mut snapshots =
        Snapshotter::start(recovered.writer.data_dir().clone(), policy, config()).unwrap();
    let stats = snapshots.stats_handle();
    let mut workload = Workload::new(21, Sequence(1), Timestamp(1));
    let commands = generate(&mut workload, &mut Engine::new(config()), 300);
    let mut engine = Engine::new(config());
    // The thread sets its own policy as it starts: wait until it has.
    let deadline = Instant::now() + Duration::from_secs(30);
    let wanted = if priority == WriterPriority::Idle { SCHED_IDLE } else { SCHED_OTHER };
    while writer_policies() != [wanted] {
        assert!(Instant::now() < deadline, "writer threads' policies: {:?}", writer_policies());
        std::thread::sleep(Duration::from_millis(5));
    }
    let policies = writer_policies();
    for command in &commands {
        recovered.writer.append_command(Epoch(1), command).unwrap();
        recovered.writer.end_batch().unwrap();
        engine.apply(command);
        snapshots.after_apply(&engine, command);
        // One snapshot at a time: the second is due only once the first is written.
        if command.sequence == Sequence(150) {
            while stats.get().written < 1 {
                assert!(Instant::now() < deadline, "no snapshot written: {:?}", stats.get());
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    while stats.get().written < 2 {
        assert!(Instant::now() < deadline, "the second snapshot: {:?}", stats.get());
        std::thread::sleep(Duration::from_millis(5));
    }
    let done = stats.get();
    assert_eq!((done.written, done.failed), (2, 0), "{done:?}");
    // A stopping node raises an idle writer to normal before it joins it: nothing is served
    // any more, and the join must not wait at the pace of an idle thread.
    // (A writer that had not yet published its id when the stop began raises itself.)
    snapshots.stopping();
    while writer_policies() != [SCHED_OTHER] {
        let policies = writer_policies();
        assert!(Instant::now() < deadline, "the writer is joined at idle priority: {policies:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(snapshots);
    // A joined thread's `/proc` entry can outlast the join for a moment: the kernel wakes the
    // joiner when the thread lets go of its stack, a little before it reaps the task.
    while !writer_policies().is_empty() {
        assert!(Instant::now() < deadline, "the writer thread outlived its hook");
        std::thread::sleep(Duration::from_millis(1));
    }
    policies[0]
}

#[test]
fn an_idle_priority_writer_runs_under_sched_idle_and_still_writes_every_snapshot() {
    // Goal: `WriterPriority::Idle` puts the writer's thread, and only it, under `SCHED_IDLE`;
    // on a machine with time to spare it writes every snapshot due; a stopping node raises
    // it to normal; `Normal` leaves the thread as other threads are.
    assert_eq!(snapshots_at(WriterPriority::Idle), SCHED_IDLE);
    // SAFETY: pid 0 is the calling thread.
    assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER, "the test's thread");
    assert_eq!(snapshots_at(WriterPriority::Normal), SCHED_OTHER);
}

#[test]
fn a_priority_is_read_from_its_name_and_an_unknown_one_is_refused() {
    // Goal: the configuration's words map to the priorities, and anything else gets an error
    // that names the choices.
    assert_eq!("idle".parse::<WriterPriority>(), Ok(WriterPriority::Idle));
    assert_eq!("normal".parse::<WriterPriority>(), Ok(WriterPriority::Normal));
    assert_eq!(WriterPriority::Idle.to_string(), "idle");
    let error = "low".parse::<WriterPriority>().unwrap_err();
    assert!(error.contains("`low`") && error.contains("idle or normal"), "{error}");
}
