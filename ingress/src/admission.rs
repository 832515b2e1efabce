//! Admission control helpers: a per-connection token bucket, a per-address limit on failed
//! authentication, and a rate-limited logger.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

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

/// Failed authentications per source address, in a table of at most `addresses_max` addresses
/// allocated at start, so that guessing the admin token is slow from any one address.
///
/// Each address's budget is one instant, `forgiven_at`: when the failures recorded so far are
/// forgiven (the generic cell rate algorithm, the token bucket kept as a single field). A
/// failure moves it `refill` later, counting from `now` if it is already past; the address is
/// limited while `forgiven_at` lies more than `(burst - 1) * refill` ahead of `now`. So:
/// `burst` failures at once, then one per `refill`. Integer time arithmetic, time passed in,
/// as in [`TokenBucket::try_take`].
///
/// When the table is full the address seen least recently is forgotten, which only gives it a
/// fresh budget — what an attacker with more addresses than the table holds gets anyway. The
/// alternatives are worse: refusing new addresses would let one attacker lock everyone out,
/// and not tracking them would leave them unlimited. An address that keeps trying stays at the
/// recent end of the table and is never the one forgotten.
#[derive(Debug)]
pub struct AuthLimiter {
    burst: u32,
    refill: Duration,
    addresses_max: usize,
    /// Slots, each on a doubly linked list from least to most recently seen.
    slots: Vec<AuthSlot>,
    index: HashMap<IpAddr, u32>,
    oldest: u32,
    newest: u32,
    evictions: u64,
}

#[derive(Clone, Copy, Debug)]
struct AuthSlot {
    address: IpAddr,
    forgiven_at: Instant,
    older: u32,
    newer: u32,
}

/// No slot: the end of the recency list.
const NIL: u32 = u32::MAX;
/// Largest budget settings; beyond them the arithmetic on instants could overflow.
const AUTH_BURST_MAX: u32 = 10_000;
const AUTH_REFILL_MAX: Duration = Duration::from_secs(3_600);
/// Largest table: slot numbers stay below [`NIL`] with room to spare.
pub const AUTH_ADDRESSES_MAX: usize = 1 << 20;

impl AuthLimiter {
    /// A limiter allowing `burst` failures per address at once, then one per `refill`, for at
    /// most `addresses_max` addresses at a time. Settings are clamped to `1..=10_000` failures,
    /// `1 ms..=1 h` and `1..=AUTH_ADDRESSES_MAX` addresses.
    #[must_use]
    pub fn new(burst: u32, refill: Duration, addresses_max: usize) -> AuthLimiter {
        let addresses_max = addresses_max.clamp(1, AUTH_ADDRESSES_MAX);
        AuthLimiter {
            burst: burst.clamp(1, AUTH_BURST_MAX),
            refill: refill.clamp(Duration::from_millis(1), AUTH_REFILL_MAX),
            addresses_max,
            slots: Vec::with_capacity(addresses_max),
            index: HashMap::with_capacity(addresses_max),
            oldest: NIL,
            newest: NIL,
            evictions: 0,
        }
    }

    /// Whether `address` may try to authenticate at `now`. On refusal, returns how long until
    /// it may try again. Records nothing but that the address was seen.
    pub fn check(&mut self, address: IpAddr, now: Instant) -> Result<(), Duration> {
        let Some(&slot) = self.index.get(&address_key(address)) else { return Ok(()) };
        self.touch(slot);
        let ahead = self.slots[slot as usize].forgiven_at.saturating_duration_since(now);
        let allowance = self.refill * (self.burst - 1);
        if ahead > allowance {
            let wait = ahead - allowance;
            assert!(wait <= self.refill);
            return Err(wait);
        }
        Ok(())
    }

    /// Records a failed authentication by `address` at `now`.
    pub fn record_failure(&mut self, address: IpAddr, now: Instant) {
        let key = address_key(address);
        let slot = match self.index.get(&key) {
            Some(&slot) => {
                self.touch(slot);
                slot
            }
            None => self.insert(key, now),
        };
        let entry = &mut self.slots[slot as usize];
        let debt_max = now + self.refill * self.burst;
        entry.forgiven_at = (entry.forgiven_at.max(now) + self.refill).min(debt_max);
        assert!(self.slots.len() <= self.addresses_max);
    }

    /// Addresses in the table now.
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.slots.len()
    }

    /// Addresses forgotten to make room for others.
    #[must_use]
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// A slot for `key`, which is not in the table: a new one while there is room, else the
    /// least recently seen address's.
    fn insert(&mut self, key: IpAddr, now: Instant) -> u32 {
        let fresh = AuthSlot { address: key, forgiven_at: now, older: NIL, newer: NIL };
        let slot = if self.slots.len() < self.addresses_max {
            self.slots.push(fresh);
            (self.slots.len() - 1) as u32
        } else {
            let slot = self.oldest;
            assert_ne!(slot, NIL, "a full table has an oldest slot");
            self.unlink(slot);
            self.index.remove(&self.slots[slot as usize].address);
            self.slots[slot as usize] = fresh;
            self.evictions += 1;
            slot
        };
        self.push_newest(slot);
        self.index.insert(key, slot);
        debug_assert_eq!(self.index.len(), self.slots.len());
        slot
    }

    fn touch(&mut self, slot: u32) {
        if self.newest != slot {
            self.unlink(slot);
            self.push_newest(slot);
        }
    }

    fn unlink(&mut self, slot: u32) {
        let AuthSlot { older, newer, .. } = self.slots[slot as usize];
        match older {
            NIL => self.oldest = newer,
            older => self.slots[older as usize].newer = newer,
        }
        match newer {
            NIL => self.newest = older,
            newer => self.slots[newer as usize].older = older,
        }
    }

    fn push_newest(&mut self, slot: u32) {
        let newest = self.newest;
        let entry = &mut self.slots[slot as usize];
        entry.older = newest;
        entry.newer = NIL;
        match newest {
            NIL => self.oldest = slot,
            newest => self.slots[newest as usize].newer = slot,
        }
        self.newest = slot;
    }
}

/// Whose budget an address spends: an IPv4 address (IPv4-mapped IPv6 ones included) its own;
/// an IPv6 address its /64 prefix's, the block one host is normally given, or a single host
/// could try from 2^64 addresses.
#[must_use]
pub fn address_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !(u128::from(u64::MAX)))),
        v4 => v4,
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

    /// Logs `message` at `INFO`, always: for the rare events an operator caused and must
    /// find in the log (admin calls), which no client can flood.
    pub fn notice(&mut self, message: std::fmt::Arguments<'_>) {
        tracing::info!(target: "ringfence", "{message}");
    }

    /// Logs `message` at `WARN` unless the budget for this second is spent; the first warning
    /// of a new second says how many were suppressed in the one before.
    pub fn warn(&mut self, now: Instant, message: std::fmt::Arguments<'_>) {
        let new_window = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start).as_secs() >= 1);
        if new_window {
            if self.suppressed > 0 {
                let suppressed = self.suppressed;
                let message = format!("{suppressed} similar messages suppressed");
                tracing::warn!(target: "ringfence", suppressed, "{message}");
            }
            self.window_start = Some(now);
            self.printed = 0;
            self.suppressed = 0;
        }
        if self.printed < self.per_second {
            self.printed += 1;
            tracing::warn!(target: "ringfence", "{message}");
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

    fn v4(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    /// Walks the recency list from the oldest slot, checking its links: the addresses in order.
    fn recency(limiter: &AuthLimiter) -> Vec<IpAddr> {
        let (mut order, mut slot, mut previous) = (Vec::new(), limiter.oldest, NIL);
        while slot != NIL {
            let entry = limiter.slots[slot as usize];
            assert_eq!(entry.older, previous);
            assert_eq!(limiter.index[&entry.address], slot);
            order.push(entry.address);
            (previous, slot) = (slot, entry.newer);
        }
        assert_eq!(previous, limiter.newest);
        assert_eq!(order.len(), limiter.tracked());
        order
    }

    #[test]
    fn an_address_gets_its_burst_of_failures_then_one_per_refill() {
        // Goal: `burst` failures pass at once, the next attempt waits exactly `refill`, each
        // refill lets one more failure through, and a long pause restores only the burst.
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut limiter = AuthLimiter::new(3, second, 16);
        for _ in 0..3 {
            assert_eq!(limiter.check(v4(1), start), Ok(()));
            limiter.record_failure(v4(1), start);
        }
        assert_eq!(limiter.check(v4(1), start), Err(second));
        let almost = start + Duration::from_millis(999);
        assert_eq!(limiter.check(v4(1), almost), Err(Duration::from_millis(1)));
        assert_eq!(limiter.check(v4(1), start + second), Ok(()));
        limiter.record_failure(v4(1), start + second);
        assert_eq!(limiter.check(v4(1), start + second), Err(second));
        let later = start + Duration::from_secs(3_600);
        for _ in 0..3 {
            assert_eq!(limiter.check(v4(1), later), Ok(()));
            limiter.record_failure(v4(1), later);
        }
        assert_eq!(limiter.check(v4(1), later), Err(second));
    }

    #[test]
    fn a_limited_address_leaves_others_their_budget() {
        // Goal: budgets are per address: one address spent leaves another untouched, and an
        // address never seen is never refused.
        let now = Instant::now();
        let mut limiter = AuthLimiter::new(1, Duration::from_secs(60), 16);
        limiter.record_failure(v4(1), now);
        assert!(limiter.check(v4(1), now).is_err());
        assert_eq!(limiter.check(v4(2), now), Ok(()));
        limiter.record_failure(v4(2), now);
        assert!(limiter.check(v4(2), now).is_err());
        assert_eq!(limiter.check(v4(3), now), Ok(()));
        assert_eq!(limiter.tracked(), 2, "checking an unknown address does not track it");
    }

    #[test]
    fn a_full_table_forgets_the_address_seen_least_recently() {
        // Goal: the table never holds more than `addresses_max`; a new address takes the slot
        // of the one seen least recently, and an address that keeps trying is never the one
        // forgotten.
        let now = Instant::now();
        let mut limiter = AuthLimiter::new(1, Duration::from_secs(60), 2);
        limiter.record_failure(v4(1), now);
        limiter.record_failure(v4(2), now);
        assert_eq!(recency(&limiter), [v4(1), v4(2)]);
        // Address 1 tries again (refused): it is now the most recent, so 3 evicts 2.
        assert!(limiter.check(v4(1), now).is_err());
        limiter.record_failure(v4(3), now);
        assert_eq!(recency(&limiter), [v4(1), v4(3)]);
        assert_eq!(limiter.evictions(), 1);
        assert!(limiter.check(v4(1), now).is_err(), "the busy address is still limited");
        assert_eq!(limiter.check(v4(2), now), Ok(()), "the forgotten address starts afresh");
        assert_eq!(limiter.tracked(), 2);
    }

    #[test]
    fn many_addresses_never_grow_the_table() {
        // Goal: a stream of distinct addresses keeps the table at its bound, with consistent
        // links, and every address beyond the bound is one eviction.
        let now = Instant::now();
        let mut limiter = AuthLimiter::new(2, Duration::from_secs(1), 64);
        for n in 0..10_000u32 {
            let address = IpAddr::from(n.to_be_bytes());
            limiter.record_failure(address, now + Duration::from_millis(u64::from(n)));
            assert!(limiter.tracked() <= 64);
        }
        assert_eq!(recency(&limiter).len(), 64);
        assert_eq!(limiter.evictions(), 10_000 - 64);
        assert_eq!(limiter.slots.capacity(), 64, "allocated at start, never grown");
    }

    #[test]
    fn ipv6_hosts_share_a_budget_per_64_prefix() {
        // Goal: addresses in one /64 spend one budget; the next /64 has its own; an
        // IPv4-mapped IPv6 address is its IPv4 address.
        let now = Instant::now();
        let mut limiter = AuthLimiter::new(1, Duration::from_secs(60), 16);
        let a: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let b: IpAddr = "2001:db8:0:1:ffff:ffff:ffff:ffff".parse().unwrap();
        let c: IpAddr = "2001:db8:0:2::1".parse().unwrap();
        limiter.record_failure(a, now);
        assert!(limiter.check(b, now).is_err());
        assert_eq!(limiter.check(c, now), Ok(()));
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        limiter.record_failure(mapped, now);
        assert!(limiter.check(v4(9), now).is_err());
        assert_eq!(address_key(v4(9)), v4(9));
    }

    /// Log output captured from a `tracing` subscriber installed for one thread.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn warnings_keep_their_rate_limit_in_the_log() {
        // Goal: a flood of bad-input warnings logs `per_second` lines a second at WARN, then
        // one line saying how many were suppressed; operator notices are never limited.
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber =
            tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        let start = Instant::now();
        tracing::subscriber::with_default(subscriber, || {
            let mut log = LogLimiter::new(3);
            for n in 0..100 {
                log.warn(start, format_args!("bad frame {n}"));
            }
            log.notice(format_args!("admin: promoted"));
            log.warn(start + Duration::from_secs(1), format_args!("bad frame again"));
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let warned = lines.iter().filter(|l| l.contains(" WARN ") && l.contains("bad frame"));
        assert_eq!(warned.count(), 4, "{text}");
        assert!(lines.iter().any(|l| l.contains(" WARN ") && l.contains("97 similar")), "{text}");
        assert!(lines.iter().any(|l| l.contains(" INFO ") && l.contains("promoted")), "{text}");
    }
}
