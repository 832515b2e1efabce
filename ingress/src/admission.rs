//! Admission control helpers: a per-connection token bucket, the per-source-address budgets
//! ahead of the ring (connections, commands in flight, request rate), a per-address limit on
//! failed authentication, and a rate-limited logger.
//!
//! Both per-address tables are bounded and allocated at start, and when full forget the
//! address used least recently (for the budgets: released longest ago, never one with a
//! connection open), kept in order by one intrusive list, `Recency`. Time is passed in, so
//! every decision is a pure function of the calls made.

use std::collections::HashMap;
use std::net::IpAddr;
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
    slots: Vec<AuthSlot>,
    /// Every slot, from least to most recently seen.
    recency: Recency,
    index: HashMap<IpAddr, u32>,
    evictions: u64,
}

#[derive(Clone, Copy, Debug)]
struct AuthSlot {
    address: IpAddr,
    forgiven_at: Instant,
}

/// No slot: the end of the recency list.
const NIL: u32 = u32::MAX;
/// Largest budget settings; beyond them the arithmetic on instants could overflow.
const AUTH_BURST_MAX: u32 = 10_000;
const AUTH_REFILL_MAX: Duration = Duration::from_secs(3_600);
/// Largest table: slot numbers stay below `NIL` with room to spare.
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
            recency: Recency::with_capacity(addresses_max),
            index: HashMap::with_capacity(addresses_max),
            evictions: 0,
        }
    }

    /// Whether `address` may try to authenticate at `now`. On refusal, returns how long until
    /// it may try again. Records nothing but that the address was seen.
    pub fn check(&mut self, address: IpAddr, now: Instant) -> Result<(), Duration> {
        let Some(&slot) = self.index.get(&address_key(address)) else { return Ok(()) };
        self.recency.touch(slot);
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
                self.recency.touch(slot);
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
        let fresh = AuthSlot { address: key, forgiven_at: now };
        let slot = if self.slots.len() < self.addresses_max {
            self.slots.push(fresh);
            self.recency.add_slot()
        } else {
            let slot = self.recency.oldest().expect("a full table has an oldest slot");
            self.recency.unlink(slot);
            self.index.remove(&self.slots[slot as usize].address);
            self.slots[slot as usize] = fresh;
            self.evictions += 1;
            slot
        };
        self.recency.push_newest(slot);
        self.index.insert(key, slot);
        debug_assert_eq!(self.index.len(), self.slots.len());
        slot
    }
}

/// Which budget of a source address was spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressLimit {
    /// Its connections together had `address_in_flight_max` commands in flight: reading pauses.
    InFlight,
    /// It sent faster than `address_rate_per_sec`: the request is refused (`rate_limited`).
    Rate,
}

impl AddressLimit {
    /// Every limit, in the order of [`AddressLimit::index`].
    pub const ALL: [AddressLimit; 2] = [AddressLimit::InFlight, AddressLimit::Rate];

    /// The limit's position in per-limit arrays.
    #[must_use]
    pub fn index(self) -> usize {
        self as usize
    }

    /// The limit's name in metrics labels.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            AddressLimit::InFlight => "in_flight",
            AddressLimit::Rate => "rate",
        }
    }
}

/// What each source address may use, all its connections on both listeners together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressLimits {
    /// Connections open at once.
    pub connections_max: u32,
    /// Commands submitted and not yet answered.
    pub in_flight_max: u32,
    /// Requests per second (token bucket); 0 means unlimited.
    pub rate_per_sec: u32,
    /// Requests at once after a quiet spell.
    pub rate_burst: u32,
}

/// An address's place in an [`AddressTable`], held by its connections and by the commands
/// they have in flight. The generation tells a command in flight whether its address is still
/// the one in the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressSlot {
    slot: u32,
    generation: u32,
}

/// The budgets of every source address ahead of the ring: connections open, commands in
/// flight and (optionally) request rate. IPv6 addresses count per /64 ([`address_key`]).
///
/// A per-connection budget is multiplied by the connections a client opens; this one is not,
/// so one address with many connections cannot take the whole global in-flight budget and
/// leave every other caller `busy`. Commands in flight count against their address until they
/// are answered, even after the connection that sent them closed, so reconnecting buys
/// nothing; and a bucket is kept after an address's last connection closes, so reconnecting
/// does not refill it either.
///
/// The table holds at most `slots_max` addresses, allocated at start. An address with a
/// connection open is pinned; the others stay, from least to most recently released, until
/// their slot is needed for a new address, when the one released longest ago is forgotten (its
/// commands still in flight stop counting, its bucket starts full again): what an attacker
/// with more addresses than the table holds has anyway. With more slots than connections can
/// be open, a new address always finds one (asserted).
#[derive(Debug)]
pub struct AddressTable {
    limits: AddressLimits,
    slots_max: usize,
    entries: Vec<AddressEntry>,
    /// Entries with no connection open, from least to most recently released.
    released: Recency,
    index: HashMap<IpAddr, u32>,
    evictions: u64,
}

#[derive(Clone, Debug)]
struct AddressEntry {
    key: IpAddr,
    generation: u32,
    connections: u32,
    in_flight: u32,
    bucket: TokenBucket,
    /// When each limit was last reported in the log, by [`AddressLimit::index`].
    reported_at: [Option<Instant>; 2],
}

/// How often a limited address is reported in the log, per limit: enough for an operator to
/// find the address, and a flood from many addresses still meets the log's own rate limit.
pub const ADDRESS_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// Largest address table: slot numbers stay below `NIL` with room to spare.
pub const ADDRESS_SLOTS_MAX: usize = 1 << 22;

impl AddressTable {
    /// A table for at most `slots_max` addresses (clamped to `2..=ADDRESS_SLOTS_MAX`); it must
    /// be more than the connections that can be open at once.
    #[must_use]
    pub fn new(limits: AddressLimits, slots_max: usize) -> AddressTable {
        let slots_max = slots_max.clamp(2, ADDRESS_SLOTS_MAX);
        AddressTable {
            limits,
            slots_max,
            entries: Vec::with_capacity(slots_max),
            released: Recency::with_capacity(slots_max),
            index: HashMap::with_capacity(slots_max),
            evictions: 0,
        }
    }

    /// The budgets every address has.
    #[must_use]
    pub fn limits(&self) -> AddressLimits {
        self.limits
    }

    /// Whether `address` may open one more connection.
    #[must_use]
    pub fn may_open(&self, address: IpAddr) -> bool {
        let open = match self.index.get(&address_key(address)) {
            Some(&slot) => self.entries[slot as usize].connections,
            None => 0,
        };
        open < self.limits.connections_max
    }

    /// Counts a connection `address` opened at `now` (one [`AddressTable::may_open`] allowed)
    /// and returns the address's slot, which the connection holds until it closes.
    pub fn open(&mut self, address: IpAddr, now: Instant) -> AddressSlot {
        let key = address_key(address);
        let slot = match self.index.get(&key) {
            Some(&slot) => slot,
            None => self.insert(key, now),
        };
        let entry = &mut self.entries[slot as usize];
        if entry.connections == 0 {
            self.released.unlink(slot);
        }
        assert!(entry.connections < self.limits.connections_max, "checked by may_open");
        entry.connections += 1;
        AddressSlot { slot, generation: entry.generation }
    }

    /// Counts a connection of `slot` closed.
    pub fn close(&mut self, slot: AddressSlot) {
        let entry = self.pinned_mut(slot);
        assert!(entry.connections > 0);
        entry.connections -= 1;
        if entry.connections == 0 {
            self.released.push_newest(slot.slot);
        }
    }

    /// Whether `slot`'s address may have one more command in flight.
    #[must_use]
    pub fn has_room(&self, slot: AddressSlot) -> bool {
        self.pinned(slot).in_flight < self.limits.in_flight_max
    }

    /// How many more commands `slot`'s address may have in flight: what a request of several
    /// commands (a catalogue page) may submit without passing the budget.
    #[must_use]
    pub fn room(&self, slot: AddressSlot) -> u32 {
        let in_flight = self.pinned(slot).in_flight;
        assert!(in_flight <= self.limits.in_flight_max, "checked by has_room");
        self.limits.in_flight_max - in_flight
    }

    /// Takes one request from `slot`'s rate budget at `now`; on refusal, returns how long until
    /// the next request would be allowed.
    pub fn try_take(&mut self, slot: AddressSlot, now: Instant) -> Result<(), Duration> {
        self.pinned_mut(slot).bucket.try_take(now)
    }

    /// Counts a command of `slot` submitted; only when [`AddressTable::has_room`] said so.
    pub fn submitted(&mut self, slot: AddressSlot) {
        let in_flight_max = self.limits.in_flight_max;
        let entry = self.pinned_mut(slot);
        assert!(entry.in_flight < in_flight_max, "checked by has_room");
        entry.in_flight += 1;
    }

    /// Counts a command of `slot` answered. Its connection may have closed since; if its
    /// address was forgotten meanwhile, there is nothing left to count.
    pub fn answered(&mut self, slot: AddressSlot) {
        let entry = &mut self.entries[slot.slot as usize];
        if entry.generation == slot.generation {
            assert!(entry.in_flight > 0, "an answer for a command never counted");
            entry.in_flight -= 1;
        }
    }

    /// Whether `limit` of `slot`'s address should be reported in the log at `now`: the first
    /// time, then at most once per [`ADDRESS_REPORT_INTERVAL`].
    pub fn report_due(&mut self, slot: AddressSlot, limit: AddressLimit, now: Instant) -> bool {
        let reported_at = &mut self.pinned_mut(slot).reported_at[limit.index()];
        let due = reported_at
            .is_none_or(|at| now.saturating_duration_since(at) >= ADDRESS_REPORT_INTERVAL);
        if due {
            *reported_at = Some(now);
        }
        due
    }

    /// The address (IPv6: its /64 prefix) of `slot`.
    #[must_use]
    pub fn key(&self, slot: AddressSlot) -> IpAddr {
        self.pinned(slot).key
    }

    /// Commands of `slot`'s address in flight now.
    #[must_use]
    pub fn in_flight(&self, slot: AddressSlot) -> u32 {
        self.pinned(slot).in_flight
    }

    /// Addresses in the table now, pinned or not.
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.index.len()
    }

    /// Addresses forgotten to make room for others.
    #[must_use]
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// A slot for `key`, which is not in the table, left on the released list: a new one while
    /// there is room, else the one released longest ago.
    fn insert(&mut self, key: IpAddr, now: Instant) -> u32 {
        let limits = self.limits;
        let fresh = |generation| AddressEntry {
            key,
            generation,
            connections: 0,
            in_flight: 0,
            bucket: TokenBucket::new(limits.rate_per_sec, limits.rate_burst, now),
            reported_at: [None; 2],
        };
        let slot = if self.entries.len() < self.slots_max {
            self.entries.push(fresh(0));
            self.released.add_slot()
        } else {
            let slot = self.released.oldest().expect("more slots than connections can be open");
            self.released.unlink(slot);
            let old = &self.entries[slot as usize];
            assert_eq!(old.connections, 0, "only released addresses are forgotten");
            self.index.remove(&old.key);
            self.entries[slot as usize] = fresh(old.generation.wrapping_add(1));
            self.evictions += 1;
            slot
        };
        self.released.push_newest(slot);
        self.index.insert(key, slot);
        debug_assert_eq!(self.index.len(), self.entries.len());
        slot
    }

    /// The entry of a slot a connection holds: it is pinned, so it is still that address's.
    fn pinned(&self, slot: AddressSlot) -> &AddressEntry {
        let entry = &self.entries[slot.slot as usize];
        assert_eq!(entry.generation, slot.generation, "a connection's address is never forgotten");
        assert!(entry.connections > 0);
        entry
    }

    fn pinned_mut(&mut self, slot: AddressSlot) -> &mut AddressEntry {
        let entry = &mut self.entries[slot.slot as usize];
        assert_eq!(entry.generation, slot.generation, "a connection's address is never forgotten");
        assert!(entry.connections > 0);
        entry
    }
}

/// A doubly linked list over a table's slot numbers, from least to most recently used: the
/// order in which a bounded table forgets. The links live in an array beside the table's
/// slots, allocated with them, so moving a slot to the recent end is O(1) and allocates nothing.
#[derive(Debug)]
struct Recency {
    links: Vec<Link>,
    oldest: u32,
    newest: u32,
}

#[derive(Clone, Copy, Debug)]
struct Link {
    older: u32,
    newer: u32,
    listed: bool,
}

impl Recency {
    fn with_capacity(slots_max: usize) -> Recency {
        assert!(slots_max < NIL as usize);
        Recency { links: Vec::with_capacity(slots_max), oldest: NIL, newest: NIL }
    }

    /// Adds a slot, not listed, and returns its number.
    fn add_slot(&mut self) -> u32 {
        assert!(self.links.len() < self.links.capacity(), "allocated at start, never grown");
        self.links.push(Link { older: NIL, newer: NIL, listed: false });
        (self.links.len() - 1) as u32
    }

    /// The least recently used listed slot.
    fn oldest(&self) -> Option<u32> {
        (self.oldest != NIL).then_some(self.oldest)
    }

    /// Moves a listed slot to the recent end.
    fn touch(&mut self, slot: u32) {
        if self.newest != slot {
            self.unlink(slot);
            self.push_newest(slot);
        }
    }

    fn unlink(&mut self, slot: u32) {
        let Link { older, newer, listed } = self.links[slot as usize];
        assert!(listed, "slot {slot} is not listed");
        match older {
            NIL => self.oldest = newer,
            older => self.links[older as usize].newer = newer,
        }
        match newer {
            NIL => self.newest = older,
            newer => self.links[newer as usize].older = older,
        }
        self.links[slot as usize] = Link { older: NIL, newer: NIL, listed: false };
    }

    fn push_newest(&mut self, slot: u32) {
        let newest = self.newest;
        let link = &mut self.links[slot as usize];
        assert!(!link.listed, "slot {slot} is listed already");
        *link = Link { older: newest, newer: NIL, listed: true };
        match newest {
            NIL => self.oldest = slot,
            newest => self.links[newest as usize].newer = slot,
        }
        self.newest = slot;
    }

    /// The listed slots from the oldest, checking every link on the way.
    #[cfg(test)]
    fn order(&self) -> Vec<u32> {
        let (mut order, mut slot, mut previous) = (Vec::new(), self.oldest, NIL);
        while slot != NIL {
            let link = self.links[slot as usize];
            assert!(link.listed);
            assert_eq!(link.older, previous);
            order.push(slot);
            (previous, slot) = (slot, link.newer);
        }
        assert_eq!(previous, self.newest);
        let listed = self.links.iter().filter(|link| link.listed).count();
        assert_eq!(order.len(), listed);
        order
    }
}

pub use ringfence_core::address::address_key;

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
    use ringfence_core::prng::Prng;
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

    /// The addresses from the one seen least recently, checking the table's links.
    fn recency(limiter: &AuthLimiter) -> Vec<IpAddr> {
        let order = limiter.recency.order();
        assert_eq!(order.len(), limiter.tracked());
        let addresses: Vec<IpAddr> =
            order.iter().map(|&slot| limiter.slots[slot as usize].address).collect();
        for (address, slot) in addresses.iter().zip(&order) {
            assert_eq!(limiter.index[address], *slot);
        }
        addresses
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

    fn limits(in_flight_max: u32, rate_per_sec: u32) -> AddressLimits {
        AddressLimits { connections_max: 4, in_flight_max, rate_per_sec, rate_burst: 2 }
    }

    #[test]
    fn an_address_at_its_in_flight_budget_leaves_others_theirs() {
        // Goal: commands in flight count per address, all its connections together: at the
        // budget the address has no room whichever connection asks, another address still
        // has room, and an answer makes room again; `room` counts what `has_room` allows.
        let now = Instant::now();
        let mut table = AddressTable::new(limits(2, 0), 16);
        let (a1, a2) = (table.open(v4(1), now), table.open(v4(1), now));
        let b = table.open(v4(2), now);
        assert_eq!(a1, a2, "two connections of one address share its slot");
        table.submitted(a1);
        assert!(table.has_room(a2));
        assert_eq!((table.room(a1), table.room(b)), (1, 2));
        table.submitted(a2);
        assert!(!table.has_room(a1) && !table.has_room(a2));
        assert_eq!(table.room(a2), 0, "no room is what has_room refuses");
        assert!(table.has_room(b), "another address keeps its budget");
        assert_eq!(table.in_flight(a1), 2);
        table.answered(a1);
        assert!(table.has_room(a2));
        assert_eq!(table.in_flight(b), 0);
    }

    #[test]
    fn commands_in_flight_count_after_their_connection_closed() {
        // Goal: closing a connection does not give its address back the budget its commands
        // in flight hold, so reconnecting buys nothing; their answers do.
        let now = Instant::now();
        let mut table = AddressTable::new(limits(2, 0), 16);
        let first = table.open(v4(1), now);
        table.submitted(first);
        table.submitted(first);
        table.close(first);
        let again = table.open(v4(1), now);
        assert!(!table.has_room(again), "the closed connection's commands still count");
        table.answered(first);
        table.answered(first);
        assert!(table.has_room(again));
        assert_eq!(table.in_flight(again), 0);
    }

    #[test]
    fn connections_per_address_are_limited_and_ipv6_counts_per_64() {
        // Goal: an address may open `connections_max` connections, one more once one closed;
        // two hosts of one IPv6 /64 share the count, and the next /64 has its own.
        let now = Instant::now();
        let mut table = AddressTable::new(limits(8, 0), 16);
        let open: Vec<AddressSlot> = (0..4).map(|_| table.open(v4(1), now)).collect();
        assert!(!table.may_open(v4(1)));
        assert!(table.may_open(v4(2)));
        table.close(open[0]);
        assert!(table.may_open(v4(1)));
        let a: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let b: IpAddr = "2001:db8:0:1::2".parse().unwrap();
        let c: IpAddr = "2001:db8:0:2::1".parse().unwrap();
        for _ in 0..2 {
            table.open(a, now);
            table.open(b, now);
        }
        assert!(!table.may_open(b));
        assert!(table.may_open(c));
        let slot = table.open(c, now);
        assert_eq!(table.key(slot), "2001:db8:0:2::".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn reconnecting_does_not_refill_an_address_rate_budget() {
        // Goal: the rate budget belongs to the address, not the connection: spent on one
        // connection it is spent on the next, even after every connection closed; time refills
        // it; a rate of zero never refuses.
        let now = Instant::now();
        let mut table = AddressTable::new(limits(8, 10), 16);
        let first = table.open(v4(1), now);
        assert_eq!(table.try_take(first, now), Ok(()));
        assert_eq!(table.try_take(first, now), Ok(()));
        assert_eq!(table.try_take(first, now), Err(Duration::from_millis(100)));
        table.close(first);
        let again = table.open(v4(1), now);
        assert!(table.try_take(again, now).is_err(), "a new connection gets no new burst");
        assert_eq!(table.try_take(again, now + Duration::from_millis(100)), Ok(()));
        let mut open = AddressTable::new(limits(8, 0), 16);
        let slot = open.open(v4(1), now);
        assert!((0..10_000).all(|_| open.try_take(slot, now).is_ok()));
    }

    #[test]
    fn a_full_address_table_forgets_the_address_released_longest_ago() {
        // Goal: a new address takes the slot of the address released longest ago, never one
        // with a connection open; an answer for a command of the forgotten address changes
        // nothing; the table never grows past its bound.
        let now = Instant::now();
        let mut table = AddressTable::new(limits(2, 0), 3);
        let a = table.open(v4(1), now);
        let b = table.open(v4(2), now);
        table.submitted(b);
        table.close(b);
        let c = table.open(v4(3), now);
        table.close(c);
        // v4(2) was released before v4(3): it is forgotten, with its command in flight.
        let d = table.open(v4(4), now);
        assert_eq!(table.evictions(), 1);
        assert_eq!(table.tracked(), 3);
        table.answered(b);
        assert_eq!(table.in_flight(d), 0, "the forgotten address's answer is not d's");
        table.submitted(d);
        table.submitted(d);
        table.answered(b);
        assert_eq!(table.in_flight(d), 2);
        let e = table.open(v4(5), now);
        assert_eq!(table.evictions(), 2, "v4(3) went next; v4(1) and v4(4) are connected");
        assert!(table.has_room(a) && table.has_room(e));
        assert_eq!(table.entries.capacity(), 3, "allocated at start, never grown");
    }

    #[test]
    fn a_limited_address_is_reported_once_per_interval_per_limit() {
        // Goal: the first time an address meets a limit it is reported, then not again until
        // the interval passed; each limit, and each address, on its own schedule.
        let now = Instant::now();
        let mut table = AddressTable::new(limits(2, 0), 16);
        let (a, b) = (table.open(v4(1), now), table.open(v4(2), now));
        assert!(table.report_due(a, AddressLimit::InFlight, now));
        assert!(!table.report_due(a, AddressLimit::InFlight, now + Duration::from_secs(9)));
        assert!(table.report_due(a, AddressLimit::Rate, now));
        assert!(table.report_due(b, AddressLimit::InFlight, now));
        let later = now + ADDRESS_REPORT_INTERVAL;
        assert!(table.report_due(a, AddressLimit::InFlight, later));
    }

    #[test]
    fn recency_matches_a_list_model_under_random_operations() {
        // Goal: touching, unlinking and listing slots in a seeded random order keeps the
        // linked list equal to a plain vector from least to most recent, with every link
        // consistent.
        let mut recency = Recency::with_capacity(16);
        let mut model: Vec<u32> = Vec::new();
        for _ in 0..16 {
            recency.add_slot();
        }
        let mut prng = Prng::new(7);
        for _ in 0..5_000 {
            let slot = prng.below(16) as u32;
            match (model.contains(&slot), prng.chance(1, 2)) {
                (false, _) => {
                    recency.push_newest(slot);
                    model.push(slot);
                }
                (true, true) => {
                    recency.unlink(slot);
                    model.retain(|&listed| listed != slot);
                }
                (true, false) => {
                    recency.touch(slot);
                    model.retain(|&listed| listed != slot);
                    model.push(slot);
                }
            }
            assert_eq!(recency.order(), model);
            assert_eq!(recency.oldest(), model.first().copied());
        }
    }
}
