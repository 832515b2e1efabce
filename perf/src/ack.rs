//! `ack`: how soon an answer held back for the standby's acknowledgement leaves once the
//! acknowledgement arrives.
//!
//! In `sync` replication an answer waits for the standby; the acknowledgement is read on
//! another thread, which advances the replicator's safe watermark. Egress learns of it through
//! the watermark's wake hook. The baseline row is the same node with that hook taken (the
//! replicator sets a no-op hook first, so the node's cannot be set): egress then notices only
//! when its park times out (`park_us_max`, 1 ms by default) or other work wakes it.
//!
//! One client submits one reservation at a time. The replicator hands each sequence to an
//! *ack thread* that waits `ACK_DELAY` (long enough for egress to have parked), reads the
//! clock, and advances the watermark; the client reads the clock when the answer arrives. The
//! histogram is `answer - ack`. Compact topology, spin-then-park waits, egress on its own
//! thread, nothing pinned.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringfence_core::pipeline::{
    EgressDriver, Framed, MemoryJournal, Node, NodeConfig, Pins, Replicator, StageError, Topology,
    WaitStrategy, Watermark,
};
use ringfence_core::{Command, Query, Sequence, SkuId};

use crate::report::{Ratios, Report, Row, latency_histogram};
use crate::{Common, Size};

/// How long the ack thread waits before acknowledging: well past the egress's yield window,
/// so egress is parked when the acknowledgement comes.
const ACK_DELAY: Duration = Duration::from_millis(2);

/// A replicator whose standby acknowledges on another thread after `ACK_DELAY`.
struct DelayedAcks {
    safe: Arc<Watermark>,
    sent: Sender<Sequence>,
}

impl Replicator for DelayedAcks {
    fn send(&mut self, record: &Framed<'_>) -> Result<(), StageError> {
        let _ = self.sent.send(record.sequenced.sequence);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StageError> {
        Ok(())
    }

    fn safe(&self) -> Arc<Watermark> {
        Arc::clone(&self.safe)
    }
}

/// The ack thread: acknowledges each sequence after the delay and records when.
fn acknowledge(sent: Receiver<Sequence>, safe: Arc<Watermark>, acked_at: Arc<Mutex<Instant>>) {
    for sequence in sent {
        std::thread::sleep(ACK_DELAY);
        *acked_at.lock().expect("ack time lock") = Instant::now();
        safe.advance(sequence);
    }
}

fn measure(commands: u64, woken: bool) -> Row {
    let safe = Watermark::new(Sequence(0));
    if !woken {
        // Taken first, so the node's hook cannot be set: the baseline without the wake-up.
        assert!(safe.set_wake_hook(Arc::new(|| {})));
    }
    let (sent, acks) = channel();
    let acked_at = Arc::new(Mutex::new(Instant::now()));
    let acker = {
        let (safe, acked_at) = (Arc::clone(&safe), Arc::clone(&acked_at));
        std::thread::spawn(move || acknowledge(acks, safe, acked_at))
    };
    let config = NodeConfig {
        topology: Some(Topology::Compact),
        wait: WaitStrategy::DEFAULT,
        egress: EgressDriver::Thread,
        pins: Pins::none(),
        tick_period_ms: 0,
        ..NodeConfig::default()
    };
    let replicator = DelayedAcks { safe, sent };
    let node = Node::start(config, MemoryJournal::new(), replicator).expect("node starts");
    let mut session = node.session().expect("session");
    let mut histogram = latency_histogram();
    let started = Instant::now();
    for _ in 0..commands {
        // A tick is journaled and replicated, so its answer waits for the acknowledgement.
        session.try_submit(Command::Tick, 0).expect("accepted");
        session.wait(Duration::from_secs(10)).expect("answered").result.expect("no failure");
        let answered = Instant::now();
        let acked = *acked_at.lock().expect("ack time lock");
        histogram.saturating_record(answered.saturating_duration_since(acked).as_nanos() as u64);
    }
    let seconds = started.elapsed().as_secs_f64();
    // A read answered at the end keeps the last tick's answer honest (nothing left queued).
    let _ = session.call(Command::Query(Query::Sku(SkuId(1))), Duration::from_secs(10));
    drop(session);
    node.shutdown().expect("clean shutdown");
    acker.join().expect("ack thread");
    let variant = if woken { "watermark wakes egress" } else { "baseline: no wake hook" };
    Row::new("ack_to_answer", variant, commands, seconds, histogram)
        .with("wait", "spin_then_park")
        .with("park_us_max", 1_000)
        .with("pinning", "none")
        .with("ack_delay_ms", ACK_DELAY.as_millis() as u64)
}

/// Runs the benchmark and prints its rows.
pub fn run(common: Common) {
    bench(&mut Report::new(common.json), Size::of(common));
}

/// Measures the baseline and the woken egress into `report`.
pub fn bench(report: &mut Report, size: Size) {
    let commands = size.count(300, 2_000, 10);
    report.note(
        "answer held for the standby's ack: latency from the ack (watermark advanced on \
         another thread) to the answer at the client; compact topology, egress thread",
    );
    let baseline = measure(commands, false);
    let woken = measure(commands, true);
    let ratio = |q: f64| {
        woken.histogram.value_at_quantile(q) as f64
            / baseline.histogram.value_at_quantile(q).max(1) as f64
    };
    let (p50, p99) = (ratio(0.5), ratio(0.99));
    let (scenario, numerator, denominator) =
        (baseline.scenario.clone(), woken.variant.clone(), baseline.variant.clone());
    report.push(baseline);
    report.push(woken);
    // Latency only: the loop's pace is set by the acknowledgement delay, not the answer.
    report.relate((&scenario, &numerator), (&scenario, &denominator), Ratios::LatencyOnly);
    report.note(&format!(
        "  ack_to_answer: woken / baseline latency = {p50:.3}x at p50, {p99:.3}x at p99"
    ));
}
