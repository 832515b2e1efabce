//! `ring`: the raw ring hop — the `disruptor` ring with empty handlers, the limit row for any
//! pipeline built on it on this machine.
//!
//! A producer publishes events stamped with their *intended* send time at a fixed offered rate
//! (open loop: a late producer publishes at once with the old stamp, so stalls show up as
//! latency instead of being skipped); the last consumer records `now - intended`. The `max` rows
//! publish as fast as the ring allows and measure from the publish call. Shapes:
//!
//! - `1p1c`: one producer, one consumer (2 threads);
//! - `1p3c+1`: one producer, three consumers side by side and one behind them — the parallel
//!   pipeline's shape (5 threads), which oversubscribes a 2-core machine.
//!
//! Wait strategies: `busy_spin` (never leave the core) and `yield` (`thread::yield_now` while
//! idle). Nothing is pinned: the scheduler places the threads.

use std::hint::black_box;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use disruptor::wait_strategies::WaitStrategy;
use disruptor::{BusySpin, Producer, build_single_producer};
use hdrhistogram::Histogram;

use crate::report::{Report, Row, latency_histogram};
use crate::{Common, Size};

/// Slots in the benchmark ring (the node's default).
const RING_SIZE: usize = 1 << 14;
/// Stamp of the last event: tells the recording consumer to hand its histogram over.
const END: u64 = u64::MAX;

/// Nanoseconds since the first call, on a clock every thread shares.
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    u64::try_from(BASE.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The event: the intended send time, in `now_ns` nanoseconds.
struct Stamp {
    intended_ns: u64,
}

/// Gives the core away while idle.
#[derive(Clone, Copy)]
struct Yield;

impl WaitStrategy for Yield {
    fn wait_for(&self, _sequence: i64) {
        std::thread::yield_now();
    }
}

/// The ring's shape.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    OneToOne,
    PipelineShape,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::OneToOne => "1p1c",
            Shape::PipelineShape => "1p3c+1",
        }
    }

    fn threads(self) -> u64 {
        match self {
            Shape::OneToOne => 2,
            Shape::PipelineShape => 5,
        }
    }
}

/// One measurement: shape, wait strategy, offered rate (`None` = as fast as possible).
#[derive(Clone, Copy)]
struct Case {
    shape: Shape,
    busy_spin: bool,
    rate: Option<u64>,
}

/// Runs the ring benchmark and prints its rows.
pub fn run(common: Common) {
    bench(&mut Report::new(common.json), Size::of(common));
}

/// Measures every case into `report`.
pub fn bench(report: &mut Report, size: Size) {
    // At least four events for the pipeline shape's quarter-length run.
    let events = size.count(300_000, 2_000_000, 4);
    report.note(&crate::pipeline::machine_load());
    let watch = crate::pipeline::CpuWatch::start();
    report.note(&format!(
        "ring hop: disruptor {RING_SIZE}-slot ring, empty handlers, nothing pinned, {} cores; \
         latency from intended send time (open loop)",
        std::thread::available_parallelism().map_or(1, usize::from)
    ));
    let million = Some(1_000_000);
    let cases = [
        Case { shape: Shape::OneToOne, busy_spin: true, rate: million },
        Case { shape: Shape::OneToOne, busy_spin: false, rate: million },
        Case { shape: Shape::OneToOne, busy_spin: true, rate: None },
        Case { shape: Shape::OneToOne, busy_spin: false, rate: None },
        Case { shape: Shape::PipelineShape, busy_spin: true, rate: million },
        Case { shape: Shape::PipelineShape, busy_spin: false, rate: million },
    ];
    for case in cases {
        // Oversubscribed busy-spinning collapses to scheduler time slices: keep that run short.
        let count = if case.shape == Shape::PipelineShape { events / 4 } else { events };
        report.push(measure(case, count));
    }
    if let Some(watch) = watch {
        report.note(&watch.note());
    }
}

fn measure(case: Case, events: u64) -> Row {
    let recorded = Arc::new(Mutex::new(latency_histogram()));
    let seconds = if case.busy_spin {
        drive(case, events, BusySpin, &recorded)
    } else {
        drive(case, events, Yield, &recorded)
    };
    let histogram = recorded.lock().expect("recorder finished").clone();
    let rate = case.rate.map_or_else(|| "max".to_owned(), |rate| format!("{}k/s", rate / 1_000));
    let wait = if case.busy_spin { "busy_spin" } else { "yield" };
    let variant = format!("{} {wait}", case.shape.name());
    Row::new(&format!("ring_hop@{rate}"), &variant, events, seconds, histogram)
        .with("shape", case.shape.name())
        .with("wait", wait)
        .with("offered_rate", case.rate.map_or_else(|| "max".into(), serde_json::Value::from))
        .with("threads", case.shape.threads())
        .with("pinning", "none")
}

/// A consumer that records each event's latency and hands its histogram over at the end.
fn recorder(into: &Arc<Mutex<Histogram<u64>>>) -> impl FnMut(&Stamp, i64, bool) + Send + 'static {
    let into = Arc::clone(into);
    let mut histogram = latency_histogram();
    move |stamp: &Stamp, _sequence: i64, _end_of_batch: bool| {
        if stamp.intended_ns == END {
            into.lock().expect("one recorder").add(&histogram).expect("same bounds");
            return;
        }
        histogram.saturating_record(now_ns().saturating_sub(stamp.intended_ns).max(1));
    }
}

/// Builds the ring, publishes `events` at the case's rate, drops the producer (which joins the
/// consumers) and returns the elapsed seconds.
fn drive<W: WaitStrategy + 'static>(
    case: Case,
    events: u64,
    wait: W,
    recorded: &Arc<Mutex<Histogram<u64>>>,
) -> f64 {
    let factory = || Stamp { intended_ns: 0 };
    let empty = |stamp: &Stamp, _sequence: i64, _end_of_batch: bool| {
        black_box(stamp.intended_ns);
    };
    let start = Instant::now();
    match case.shape {
        Shape::OneToOne => {
            let mut producer = build_single_producer(RING_SIZE, factory, wait)
                .handle_events_with(recorder(recorded))
                .build();
            publish_all(&mut producer, events, case.rate);
        }
        Shape::PipelineShape => {
            let mut producer = build_single_producer(RING_SIZE, factory, wait)
                .handle_events_with(empty)
                .handle_events_with(empty)
                .handle_events_with(empty)
                .and_then()
                .handle_events_with(recorder(recorded))
                .build();
            publish_all(&mut producer, events, case.rate);
        }
    }
    start.elapsed().as_secs_f64()
}

/// Publishes `events` stamps at `rate` per second (or back to back), then the end marker.
fn publish_all<P: Producer<Stamp>>(producer: &mut P, events: u64, rate: Option<u64>) {
    let begin = now_ns() + 1_000_000;
    for i in 0..events {
        let intended_ns = match rate {
            Some(rate) => {
                let intended = begin + i * 1_000_000_000 / rate;
                while now_ns() < intended {
                    std::hint::spin_loop();
                }
                intended
            }
            None => now_ns(),
        };
        producer.publish(|stamp| stamp.intended_ns = intended_ns);
    }
    producer.publish(|stamp| stamp.intended_ns = END);
}
