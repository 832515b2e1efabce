//! Node metrics: stage sequences and lag, batch sizes, busy rejections, BLP service time and
//! publish-to-egress latency, read as one [`Metrics`] snapshot.
//!
//! Stage threads record into histograms they own and merge them into shared copies at most every
//! [`PUBLISH_PERIOD`] and when they exit, so the hot path takes no lock; a snapshot is at most
//! that much behind for histograms (sequences and counters are live).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::types::Sequence;

/// How often a stage merges its histograms into the shared ones.
pub const PUBLISH_PERIOD: Duration = Duration::from_millis(50);

/// Per-batch callers read the clock for a possible merge once in this many batches.
const CLOCK_READ_EVERY: u32 = 64;

/// A histogram of nanoseconds: 1 ns to 60 s at 3 significant figures.
#[must_use]
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static histogram bounds are valid")
}

/// A histogram of batch sizes: 1 to 2^24 slots at 2 significant figures.
#[must_use]
pub fn batch_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 1 << 24, 2).expect("static histogram bounds are valid")
}

/// One stage's progress.
#[derive(Clone, Debug)]
pub struct StageMetrics {
    /// `journaler`, `replicator`, `blp`, `processor` or `egress`.
    pub name: &'static str,
    /// The last journal sequence the stage finished.
    pub sequence: Sequence,
    /// Ring positions it is behind the producers.
    pub lag: u64,
    /// Slots read per batch.
    pub batch_sizes: Histogram<u64>,
}

/// A point-in-time view of a node.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// `parallel` or `compact`.
    pub topology: &'static str,
    /// `busy_spin` or `spin_then_park`.
    pub wait: &'static str,
    /// Ring positions published by producers (submissions, reads and ticks).
    pub published: u64,
    /// Highest sequence the journal reported durable.
    pub durable: Sequence,
    /// The first sequence the journal could not make durable, once it failed: writes are
    /// refused from then on.
    pub journal_fence: Option<Sequence>,
    /// Highest sequence the replicator reports safe (`u64::MAX` without a standby).
    pub replication_safe: Sequence,
    /// Journaler, replicator, BLP (or the one processor) and egress, in pipeline order.
    pub stages: Vec<StageMetrics>,
    /// Commands refused because the ring was full.
    pub busy_rejections: u64,
    /// Ticks published because a payment deadline came due.
    pub ticks_published: u64,
    /// Due ticks skipped because the ring was full (published at the next check).
    pub ticks_skipped: u64,
    /// Times the timer thread woke: once a period while a payment deadline is due or near, a
    /// few times a second otherwise.
    pub timer_wakeups: u64,
    /// Slots in the ring.
    pub ring_size: u64,
    /// Milliseconds between the node's command stamps and its clock (positive: ahead of it):
    /// nonzero where the node continues a time line its clock disagrees with, its journal's
    /// at start or its primary's once promoted (`TimeLine`).
    pub time_shift_ms: i64,
    /// On a standby, how far its clock stands ahead of its primary's as the records show it:
    /// the least, over the records that arrived in the last 10–20 s, of the clock's reading on
    /// arrival less the record's stamp (a record's trip only adds to it, so a record held on
    /// its way reads no lead while another arrived promptly); `None` before the first record,
    /// and on a primary.
    pub primary_clock_offset_ms: Option<i64>,
    /// Slots published and not yet released by egress.
    pub ring_fill: u64,
    /// Time the BLP spent applying one command (sampled), in nanoseconds.
    pub blp_service_ns: Histogram<u64>,
    /// From a command's publication to egress handing its answer to the session, in ns
    /// (sampled: one answer in [`super::PUBLISH_TO_EGRESS_SAMPLE_EVERY`]).
    pub publish_to_egress_ns: Histogram<u64>,
}

impl Metrics {
    /// The stage called `name`, if the topology has it.
    #[must_use]
    pub fn stage(&self, name: &str) -> Option<&StageMetrics> {
        self.stages.iter().find(|stage| stage.name == name)
    }
}

/// Histograms shared between a stage and snapshot readers.
pub(crate) struct SharedHistograms {
    pub(crate) batches: Mutex<Histogram<u64>>,
    pub(crate) latency: Mutex<Histogram<u64>>,
}

impl SharedHistograms {
    pub(crate) fn new() -> SharedHistograms {
        SharedHistograms {
            batches: Mutex::new(batch_histogram()),
            latency: Mutex::new(latency_histogram()),
        }
    }

    pub(crate) fn batches(&self) -> Histogram<u64> {
        self.batches.lock().map_or_else(|_| batch_histogram(), |h| h.clone())
    }

    pub(crate) fn latency(&self) -> Histogram<u64> {
        self.latency.lock().map_or_else(|_| latency_histogram(), |h| h.clone())
    }
}

/// A stage's own histograms, merged into a [`SharedHistograms`] now and then.
pub(crate) struct Recorder {
    batches: Histogram<u64>,
    latency: Histogram<u64>,
    last_publish: Instant,
    /// Whether something was recorded since the last merge.
    dirty: bool,
    /// Calls to `maybe_publish` since the clock was last read.
    calls: u32,
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        Recorder {
            batches: batch_histogram(),
            latency: latency_histogram(),
            last_publish: Instant::now(),
            dirty: false,
            calls: 0,
        }
    }

    pub(crate) fn batch(&mut self, size: u64) {
        self.batches.saturating_record(size.max(1));
        self.dirty = true;
    }

    pub(crate) fn latency_ns(&mut self, ns: u64) {
        self.latency.saturating_record(ns.max(1));
        self.dirty = true;
    }

    /// Merges into `shared` if something is unmerged and the period passed: for idle loops,
    /// so the last batch before a quiet spell is not left out of snapshots.
    pub(crate) fn publish_idle(&mut self, shared: &SharedHistograms) {
        if self.dirty {
            self.maybe_publish(shared);
        }
    }

    /// Merges into `shared` if the publish period passed, reading the clock only on one call
    /// in [`CLOCK_READ_EVERY`]: for per-batch paths, where a clock read per call would show.
    pub(crate) fn maybe_publish(&mut self, shared: &SharedHistograms) {
        self.calls += 1;
        if self.calls >= CLOCK_READ_EVERY {
            self.calls = 0;
            self.publish(shared, Instant::now(), false);
        }
    }

    /// Merges into `shared` if the publish period passed (`force` merges now).
    pub(crate) fn publish(&mut self, shared: &SharedHistograms, now: Instant, force: bool) {
        if !force && now.duration_since(self.last_publish) < PUBLISH_PERIOD {
            return;
        }
        self.last_publish = now;
        self.dirty = false;
        if let Ok(mut batches) = shared.batches.lock() {
            let _ = batches.add(&self.batches);
        }
        if let Ok(mut latency) = shared.latency.lock() {
            let _ = latency.add(&self.latency);
        }
        self.batches.reset();
        self.latency.reset();
    }
}
