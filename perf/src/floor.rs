//! The machine's own wake-up floor: how long a thread blocked on a futex waits, after another
//! thread wakes it, before it runs. No ringfence code is involved.
//!
//! Every answer over loopback needs at least one such wake-up (the server's event loop, or the
//! generator waiting for the answer), so this row bounds what the network rows' tails can show
//! on the same machine in the same run: a `p99.9` of a few milliseconds here means the host
//! (hypervisor scheduling of an idle virtual CPU, kernel threads preempting ours) costs that
//! much, whatever the server does.
//!
//! A pacing thread sends the instant it wakes the receiver, at a fixed rate (sleeping between
//! sends, as the open-loop generator does); the receiver blocks on the channel and records the
//! time from that instant to when it runs. The pacing thread's own lateness is not counted.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::report::{Row, latency_histogram};

/// Measures `rate` wake-ups a second for `seconds`, as the row `variant @{rate/1000}k/s` in
/// `scenario`, with `offered_per_sec` set so that it is drawn beside the network rows at the
/// same offered rate.
pub fn wakeup_row(scenario: &str, variant: &str, rate: u64, seconds: f64) -> Row {
    assert!(rate > 0 && seconds > 0.0, "a rate and a duration");
    let count = (rate as f64 * seconds) as u64;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    // A bound well above what a running receiver leaves queued: the sender never blocks on it.
    let (sender, receiver) = mpsc::sync_channel::<Instant>(4_096);
    let measure = std::thread::spawn(move || {
        let mut histogram = latency_histogram();
        let mut received = 0_u64;
        while let Ok(woken_at) = receiver.recv() {
            histogram.saturating_record(woken_at.elapsed().as_nanos() as u64);
            received += 1;
        }
        (histogram, received)
    });
    let start = Instant::now();
    for index in 0..count {
        let due = start + period.mul_f64(index as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if sender.send(Instant::now()).is_err() {
            break;
        }
    }
    drop(sender);
    let elapsed = start.elapsed().as_secs_f64();
    let (histogram, received) = measure.join().expect("the receiving thread does not panic");
    assert_eq!(received, count, "every wake-up sent is received");
    Row::new(scenario, &format!("{variant} @{}k/s", rate / 1_000), received, elapsed, histogram)
        .with("offered_per_sec", rate)
        .with("threads", 2)
        .with("timing", "from the send that wakes a blocked thread to that thread running")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wakeup_is_measured_at_about_the_offered_rate() {
        // Goal: the row counts each wake-up once and paces them at the offered rate (a sender
        // that never slept would finish far sooner than the duration).
        let row = wakeup_row("probe", "thread_wakeup", 2_000, 0.1);
        assert_eq!(row.ops, 200);
        assert_eq!(row.histogram.len(), 200);
        assert!(row.seconds >= 0.09, "paced over the duration, took {:.3} s", row.seconds);
        assert_eq!(row.variant, "thread_wakeup @2k/s");
    }
}
