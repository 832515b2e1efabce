//! State shared by the node, its sessions and its stage threads: intake and failure flags,
//! per-stage watermarks, wake-ups, counters and metrics.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_utils::CachePadded;

use super::config::{NodeConfig, Topology, WaitStrategy};
use super::egress::{Control, EgressRun};
use super::metrics::SharedHistograms;
use super::session::StageFailure;
use super::stage::Watermark;
use super::wait::Parker;
use crate::types::{Sequence, Timestamp};

/// The producers' clock: wall-clock milliseconds for command timestamps, anchored once at node
/// start to a monotonic clock, so one clock read gives both the timestamp and the nanoseconds
/// used for latency, and a wall-clock step never reaches the BLP mid-run.
pub(crate) struct Clock {
    start: Instant,
    wall_ms_at_start: u64,
}

impl Clock {
    fn new() -> Clock {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        Clock { start: Instant::now(), wall_ms_at_start: u64::try_from(wall).unwrap_or(u64::MAX) }
    }

    /// Nanoseconds since node start.
    pub(crate) fn ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The timestamp for `ns` nanoseconds since node start.
    pub(crate) fn timestamp(&self, ns: u64) -> Timestamp {
        Timestamp(self.wall_ms_at_start + ns / 1_000_000)
    }
}

/// Metrics cells, one set per stage in pipeline order.
pub(crate) struct StageCells {
    pub(crate) name: &'static str,
    pub(crate) histograms: SharedHistograms,
}

pub(crate) struct Shared {
    pub(crate) topology: Topology,
    pub(crate) wait: WaitStrategy,
    pub(crate) ring_size: u64,
    pub(crate) session_pending_max: u32,
    pub(crate) sessions_max: u32,
    /// Engine sequence of ring position 0.
    pub(crate) base: u64,
    pub(crate) clock: Clock,

    closed: AtomicBool,
    failed: AtomicBool,
    failure: OnceLock<StageFailure>,

    /// Highest engine sequence published.
    pub(crate) published: CachePadded<AtomicU64>,
    /// Journaler: last appended, and what the journal reported durable.
    pub(crate) appended: Watermark,
    pub(crate) durable: Watermark,
    /// Replicator: last sent, and what the replicator reports safe.
    pub(crate) sent: Watermark,
    pub(crate) safe: Arc<Watermark>,
    /// BLP: last applied (its outcome is in its slot).
    pub(crate) applied: Watermark,
    /// Egress: last delivered.
    pub(crate) released: Watermark,
    /// Engine sequence of the stop marker once published; zero before.
    pub(crate) stop_at: AtomicU64,

    pub(crate) busy_rejections: AtomicU64,
    pub(crate) ticks_skipped: AtomicU64,

    /// Threads reading the producer barrier, woken after each publication.
    pub(crate) stage_parkers: Vec<Parker>,
    /// Egress's thread, or the hook of whoever polls egress.
    pub(crate) egress_parker: Parker,

    pub(crate) stages: Vec<StageCells>,
    pub(crate) blp_service: SharedHistograms,

    pub(crate) sessions_open: AtomicU32,
    pub(crate) next_session: AtomicU64,
    pub(crate) control: mpsc::Sender<Control>,
    /// Messages sent on `control`, counted after each send, so egress looks at the channel
    /// only when there is something in it.
    pub(crate) control_sent: AtomicU64,
    /// Egress itself when it is polled rather than run by a thread.
    pub(crate) polled_egress: OnceLock<Mutex<Box<dyn EgressRun>>>,
}

impl Shared {
    pub(crate) fn new(
        config: &NodeConfig,
        topology: Topology,
        next_sequence: Sequence,
        safe: Arc<Watermark>,
        control: mpsc::Sender<Control>,
    ) -> Shared {
        assert!(next_sequence.0 >= 1, "sequences start at 1");
        let last = next_sequence.0 - 1;
        let watermark = || {
            let watermark = Watermark::default();
            watermark.advance(Sequence(last));
            watermark
        };
        let stage_names: &[&'static str] = match topology {
            Topology::Parallel => &["journaler", "replicator", "blp", "egress"],
            Topology::Compact => &["processor", "egress"],
        };
        let producer_readers = stage_names.len() - 1;
        Shared {
            topology,
            wait: config.wait,
            ring_size: config.ring_size as u64,
            session_pending_max: config.session_pending_max,
            sessions_max: config.sessions_max,
            base: next_sequence.0,
            clock: Clock::new(),
            closed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            failure: OnceLock::new(),
            published: CachePadded::new(AtomicU64::new(last)),
            appended: watermark(),
            durable: watermark(),
            sent: watermark(),
            safe,
            applied: watermark(),
            released: watermark(),
            stop_at: AtomicU64::new(0),
            busy_rejections: AtomicU64::new(0),
            ticks_skipped: AtomicU64::new(0),
            stage_parkers: (0..producer_readers).map(|_| Parker::default()).collect(),
            egress_parker: Parker::default(),
            stages: stage_names
                .iter()
                .map(|&name| StageCells { name, histograms: SharedHistograms::new() })
                .collect(),
            blp_service: SharedHistograms::new(),
            sessions_open: AtomicU32::new(0),
            next_session: AtomicU64::new(1),
            control,
            control_sent: AtomicU64::new(0),
            polled_egress: OnceLock::new(),
        }
    }

    /// Whether intake is closed (shutdown started or a stage failed).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Whether a stage failed; stages then do no more work and egress fails what is left.
    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub(crate) fn failure(&self) -> Option<StageFailure> {
        self.failure.get().cloned()
    }

    /// Stops the node because `stage` failed: intake closes, every stage stops working, egress
    /// answers every unreleased command with the failure. The first failure is the one kept.
    pub(crate) fn fail(&self, stage: &'static str, message: &str) {
        let failure = StageFailure { stage, message: Arc::from(message) };
        if self.failure.set(failure).is_ok() {
            eprintln!("ringfence: stage `{stage}` failed, node stopped: {message}");
        }
        self.closed.store(true, Ordering::Release);
        self.failed.store(true, Ordering::Release);
        self.wake_all();
    }

    /// Wakes every stage reading the producer barrier.
    pub(crate) fn wake_stages(&self) {
        if self.wait == WaitStrategy::BusySpin {
            return;
        }
        for parker in &self.stage_parkers {
            parker.wake();
        }
    }

    /// Wakes egress.
    pub(crate) fn wake_egress(&self) {
        if self.wait == WaitStrategy::BusySpin && self.polled_egress.get().is_none() {
            return;
        }
        self.egress_parker.wake();
    }

    pub(crate) fn wake_all(&self) {
        for parker in &self.stage_parkers {
            parker.wake();
        }
        self.egress_parker.wake();
    }

    /// Sends a message to egress; false if egress is gone.
    pub(crate) fn send_control(&self, message: Control) -> bool {
        let sent = self.control.send(message).is_ok();
        if sent {
            self.control_sent.fetch_add(1, Ordering::Release);
        }
        sent
    }

    /// Records that engine sequence `sequence` was published.
    pub(crate) fn published(&self, sequence: u64) {
        self.published.fetch_max(sequence, Ordering::AcqRel);
    }

    /// The engine sequence of ring position `ring_sequence`.
    pub(crate) fn engine_sequence(&self, ring_sequence: i64) -> u64 {
        let position = u64::try_from(ring_sequence).expect("published ring positions are >= 0");
        self.base + position
    }

    /// The metrics cells of the stage called `name`.
    pub(crate) fn stage_cells(&self, name: &str) -> &StageCells {
        self.stages.iter().find(|cells| cells.name == name).expect("stage exists in topology")
    }
}

/// The text of a panic payload, for the failure report.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}
