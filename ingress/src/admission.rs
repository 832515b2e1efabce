//! Admission control helpers: a per-connection token bucket and a rate-limited logger.

use std::time::Instant;

/// A token bucket: `rate_per_sec` tokens a second, at most `burst` saved up. A rate of zero
/// means unlimited.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate_per_sec: u32,
    burst: u32,
    /// Tokens in millionths, so refills need no floating point.
    micro_tokens: u64,
    last: Instant,
}

const MICRO: u64 = 1_000_000;

impl TokenBucket {
    /// A full bucket.
    #[must_use]
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> TokenBucket {
        let burst = burst.max(1);
        TokenBucket { rate_per_sec, burst, micro_tokens: u64::from(burst) * MICRO, last: now }
    }

    /// Takes one token if there is one. On refusal, returns how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), std::time::Duration> {
        if self.rate_per_sec == 0 {
            return Ok(());
        }
        let elapsed_us = now.saturating_duration_since(self.last).as_micros() as u64;
        self.last = now;
        let cap = u64::from(self.burst) * MICRO;
        let refill = elapsed_us.saturating_mul(u64::from(self.rate_per_sec));
        self.micro_tokens = self.micro_tokens.saturating_add(refill).min(cap);
        if self.micro_tokens >= MICRO {
            self.micro_tokens -= MICRO;
            return Ok(());
        }
        let missing = MICRO - self.micro_tokens;
        let wait_us = missing.div_ceil(u64::from(self.rate_per_sec));
        Err(std::time::Duration::from_micros(wait_us))
    }
}

/// Lets at most `per_second` lines through each second and counts the rest, so a flood of bad
/// input cannot turn into a flood of log lines.
#[derive(Debug)]
pub struct LogLimiter {
    per_second: u32,
    window_start: Option<Instant>,
    printed: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter letting `per_second` lines through each second.
    #[must_use]
    pub fn new(per_second: u32) -> LogLimiter {
        LogLimiter { per_second, window_start: None, printed: 0, suppressed: 0 }
    }

    /// Prints `message` to stderr, always: for the rare events an operator caused and must
    /// find in the log (admin calls), which no client can flood.
    pub fn notice(&mut self, message: std::fmt::Arguments<'_>) {
        eprintln!("ringfence: {message}");
    }

    /// Prints `message` to stderr unless the budget for this second is spent.
    pub fn warn(&mut self, now: Instant, message: std::fmt::Arguments<'_>) {
        let new_window = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start).as_secs() >= 1);
        if new_window {
            if self.suppressed > 0 {
                eprintln!("ringfence: warn: {} similar messages suppressed", self.suppressed);
            }
            self.window_start = Some(now);
            self.printed = 0;
            self.suppressed = 0;
        }
        if self.printed < self.per_second {
            self.printed += 1;
            eprintln!("ringfence: warn: {message}");
        } else {
            self.suppressed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_the_burst_then_refuses_until_refilled() {
        // Goal: `burst` requests pass at once, the next waits about 1/rate, refill restores it.
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 3, start);
        for _ in 0..3 {
            assert!(bucket.try_take(start).is_ok());
        }
        let wait = bucket.try_take(start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(bucket.try_take(start + Duration::from_millis(100)).is_ok());
        assert!(bucket.try_take(start + Duration::from_millis(100)).is_err());
        // A long pause refills no more than the burst.
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(bucket.try_take(later).is_ok());
        }
        assert!(bucket.try_take(later).is_err());
    }

    #[test]
    fn zero_rate_means_unlimited() {
        // Goal: rate 0 disables the limit.
        let now = Instant::now();
        let mut bucket = TokenBucket::new(0, 1, now);
        for _ in 0..1_000 {
            assert!(bucket.try_take(now).is_ok());
        }
    }
}
