//! Allocation test: after warm-up, the engine's command path never touches the heap.
//!
//! This file is its own test binary with a counting global allocator. Counting is switched on
//! per thread, so the test harness's own threads cannot disturb it, and the file holds a single
//! test. The workload driver keeps its bookkeeping in fixed arrays so that it does not allocate
//! either.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use ringfence_core::prng::Prng;
use ringfence_core::{
    Action, BatchId, Command, CouponId, CreateCouponBatch, CreateSku, Engine, EngineConfig,
    OrderId, Outcome, PaymentRef, Query, Rejection, RequestKey, Reserve, Sequence, Sequenced,
    SkuId, Timestamp, UserId,
};

/// Wraps the system allocator and counts calls made by threads that switched counting on.
struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static REALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static DEALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // A `const` thread-local without a destructor: reading it never allocates.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

fn count(counter: &AtomicU64) {
    if counting() {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the `GlobalAlloc`
// contract; the counting beside it touches only atomics and a const thread-local.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(&ALLOCATIONS);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(&ALLOCATIONS);
        // SAFETY: the caller's contract for `alloc_zeroed` is passed on as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(&REALLOCATIONS);
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(&DEALLOCATIONS);
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Heap calls made by this thread while `f` ran: (allocations, reallocations, deallocations).
fn heap_calls_during(f: impl FnOnce()) -> (u64, u64, u64) {
    let before = (
        ALLOCATIONS.load(Ordering::Relaxed),
        REALLOCATIONS.load(Ordering::Relaxed),
        DEALLOCATIONS.load(Ordering::Relaxed),
    );
    COUNTING.with(|flag| flag.set(true));
    f();
    COUNTING.with(|flag| flag.set(false));
    (
        ALLOCATIONS.load(Ordering::Relaxed) - before.0,
        REALLOCATIONS.load(Ordering::Relaxed) - before.1,
        DEALLOCATIONS.load(Ordering::Relaxed) - before.2,
    )
}

const START_MS: u64 = 1_735_689_600_000 + 86_400_000;
const RING: usize = 256;
const USERS: u64 = 5_000;
/// The workload's seed: a failure replays from it.
const SEED: u64 = 0x00A1_10C5;
/// A SKU whose payment timeout (an hour) is longer than the logical time a run covers.
const LONG_SKU: SkuId = SkuId(4);
const LONG_TIMEOUT_MS: u64 = 3_600_000;

fn config() -> EngineConfig {
    EngineConfig {
        shard: 2,
        skus_max: 8,
        orders_max: 2_048,
        coupons_max: 1 << 15,
        batches_max: 4,
        holdings_max: 1 << 14,
        request_keys_max: 8_192,
        request_key_window_ms: 2_000,
        // The per-user key and live-order counts are kept too: they must not allocate either.
        request_keys_per_user_max: 64,
        orders_per_user_max: 3,
        order_qty_max: 4,
    }
}

/// A fixed-size LIFO of recent items; pushing onto a full one drops and returns the oldest.
struct Ring<T: Copy> {
    items: [T; RING],
    start: usize,
    len: usize,
}

impl<T: Copy> Ring<T> {
    fn new(fill: T) -> Ring<T> {
        Ring { items: [fill; RING], start: 0, len: 0 }
    }

    fn push(&mut self, item: T) -> Option<T> {
        let mut dropped = None;
        if self.len == RING {
            dropped = Some(self.items[self.start]);
            self.start = (self.start + 1) % RING;
            self.len -= 1;
        }
        self.items[(self.start + self.len) % RING] = item;
        self.len += 1;
        dropped
    }

    fn pop(&mut self) -> Option<T> {
        (self.len > 0).then(|| {
            self.len -= 1;
            self.items[(self.start + self.len) % RING]
        })
    }

    fn get(&self, index: u64) -> Option<T> {
        (self.len > 0).then(|| self.items[(self.start + index as usize % self.len) % RING])
    }
}

/// Counts of what the measured commands did.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    commands: u64,
    reserved: u64,
    reserved_with_coupon: u64,
    /// Reservations of the SKU whose payment deadline lies beyond the whole run.
    reserved_long: u64,
    paid: u64,
    cancelled: u64,
    expired: u64,
    shipped: u64,
    completed: u64,
    refunded: u64,
    claimed: u64,
    /// Reservations that took the slot of a forgotten finished order.
    evicted: u64,
    replayed: u64,
    rejected: u64,
    capacity_exhausted: u64,
}

#[derive(Clone, Copy)]
struct Placed {
    order: OrderId,
    user: UserId,
    amount_cents: u64,
}

/// A deterministic mixed flash-sale workload whose driver never allocates.
struct Load {
    engine: Engine,
    /// Allocation-free: ChaCha's state and output block live inline.
    prng: Prng,
    sequence: u64,
    clock: u64,
    next_key: u128,
    reserved: Ring<Placed>,
    paid: Ring<Placed>,
    shipped: Ring<Placed>,
    coupons: Ring<(CouponId, UserId)>,
    sent: Ring<(RequestKey, Action)>,
    tally: Tally,
}

impl Load {
    fn new() -> Load {
        let nothing = Placed { order: OrderId(0), user: UserId(0), amount_cents: 0 };
        let mut load = Load {
            engine: Engine::new(config()),
            prng: Prng::new(SEED),
            sequence: 0,
            clock: START_MS,
            next_key: 1,
            reserved: Ring::new(nothing),
            paid: Ring::new(nothing),
            shipped: Ring::new(nothing),
            coupons: Ring::new((CouponId(0), UserId(0))),
            sent: Ring::new((RequestKey::default(), Action::Refund { order: OrderId(0) })),
            tally: Tally::default(),
        };
        load.setup();
        load
    }

    /// SKUs with short and very long payment timeouts (the latter let stale deadlines pile up
    /// until the deadline queue sweeps them), one scarce limited SKU, and two coupon batches.
    fn setup(&mut self) {
        let sku = |id: u64, stock: u32, per_user_limit: u32, payment_timeout_ms: u64| {
            Action::CreateSku(CreateSku {
                sku: SkuId(id),
                stock,
                price_cents: 1_000 + id,
                per_user_limit,
                payment_timeout_ms,
                sale_start: None,
                sale_end: None,
            })
        };
        let batch = |id: u64, per_user_limit: u32| {
            Action::CreateCouponBatch(CreateCouponBatch {
                batch: BatchId(id),
                quantity: 1_000_000,
                per_user_limit,
                discount_cents: 100,
                min_amount_cents: 500,
                valid_from: Timestamp(START_MS),
                valid_until: Timestamp(START_MS + 24 * 3_600_000),
            })
        };
        let actions = [
            sku(1, u32::MAX, 0, 150),
            sku(2, u32::MAX, 6, 2_000),
            sku(3, 40, 2, 300),
            sku(LONG_SKU.0, u32::MAX, 0, LONG_TIMEOUT_MS),
            batch(1, 0),
            batch(2, 3),
        ];
        for action in actions {
            let outcome = self.client(action);
            assert!(!outcome.is_rejected(), "setup refused: {outcome:?}");
        }
    }

    fn submit(&mut self, command: Command) -> Outcome {
        let timestamp = match self.prng.below(100) {
            0..=1 => self.clock - 5,
            2..=29 => {
                self.clock += 1;
                self.clock
            }
            _ => self.clock,
        };
        self.sequence += 1;
        let sequenced = Sequenced {
            sequence: Sequence(self.sequence),
            timestamp: Timestamp(timestamp),
            command,
        };
        let mut expired = 0;
        let outcome = self.engine.apply_observed(&sequenced, &mut |_| expired += 1);
        self.tally.expired += expired;
        self.tally.commands += 1;
        if let Some(rejection) = outcome.rejection() {
            self.tally.rejected += 1;
            self.tally.capacity_exhausted += u64::from(rejection == Rejection::CapacityExhausted);
        }
        outcome
    }

    fn client(&mut self, action: Action) -> Outcome {
        let key = RequestKey::from_u128(self.next_key);
        self.next_key += 1;
        let _ = self.sent.push((key, action));
        self.submit(Command::Client { key, action })
    }

    fn step(&mut self) {
        match self.prng.below(100) {
            0..=27 => self.reserve(),
            28..=49 => self.pay(),
            50..=53 => self.cancel(),
            54..=67 => self.ship_or_refund(),
            68..=79 => self.complete(),
            80..=87 => self.claim(),
            88..=92 => self.retry(),
            93..=95 => {
                let order =
                    self.paid.get(self.prng.next_u64()).map_or(OrderId(1), |placed| placed.order);
                self.submit(Command::Query(Query::Order(order)));
            }
            96..=98 => {
                self.clock += self.prng.range_inclusive(50, 149);
                self.submit(Command::Tick);
            }
            _ => {
                self.client(Action::Restock { sku: SkuId(3), qty: 10 });
            }
        }
    }

    fn reserve(&mut self) {
        let mut user = UserId(self.prng.range_inclusive(1, USERS));
        let sku = SkuId(self.prng.range_inclusive(1, 4));
        let qty = 1 + self.prng.below(2) as u32;
        let mut coupon = None;
        if self.prng.chance(1, 8) {
            if let Some((id, owner)) = self.coupons.pop() {
                coupon = Some(id);
                user = owner;
            }
        }
        let full = self.engine.status().orders == config().orders_max;
        let outcome = self.client(Action::Reserve(Reserve { user, sku, qty, coupon }));
        if let Outcome::Reserved { order, amount_cents, .. } = outcome {
            self.tally.reserved += 1;
            self.tally.reserved_with_coupon += u64::from(coupon.is_some());
            self.tally.reserved_long += u64::from(sku == LONG_SKU);
            self.tally.evicted += u64::from(full);
            // An order the driver loses track of is cancelled by an operator, so that live
            // orders do not pile up and fill the table.
            if let Some(lost) = self.reserved.push(Placed { order, user, amount_cents }) {
                self.client(Action::AdminCancel { order: lost.order });
            }
        }
    }

    fn pay(&mut self) {
        let Some(placed) = self.reserved.pop() else { return };
        let wrong = self.prng.chance(1, 20);
        let amount_cents = placed.amount_cents + u64::from(wrong);
        let payment_ref = PaymentRef::from_u128(u128::from(placed.order.0));
        let action = Action::Pay { order: placed.order, payment_ref, amount_cents };
        if self.client(action) == (Outcome::Paid { order: placed.order }) {
            self.tally.paid += 1;
            if let Some(lost) = self.paid.push(placed) {
                self.client(Action::Refund { order: lost.order });
            }
        }
    }

    fn cancel(&mut self) {
        let Some(placed) = self.reserved.pop() else { return };
        let action = Action::Cancel { order: placed.order, user: placed.user };
        if self.client(action) == (Outcome::Cancelled { order: placed.order }) {
            self.tally.cancelled += 1;
        }
    }

    fn ship_or_refund(&mut self) {
        let Some(placed) = self.paid.pop() else { return };
        let order = placed.order;
        if self.prng.chance(1, 4) {
            if self.client(Action::Refund { order }) == (Outcome::Refunded { order }) {
                self.tally.refunded += 1;
            }
        } else if self.client(Action::Ship { order }) == (Outcome::Shipped { order }) {
            self.tally.shipped += 1;
            if let Some(lost) = self.shipped.push(placed) {
                self.client(Action::Complete { order: lost.order, user: lost.user });
            }
        }
    }

    fn complete(&mut self) {
        let Some(placed) = self.shipped.pop() else { return };
        let order = placed.order;
        if self.client(Action::Complete { order, user: placed.user })
            == (Outcome::Completed { order })
        {
            self.tally.completed += 1;
        }
    }

    fn claim(&mut self) {
        let user = UserId(self.prng.range_inclusive(1, USERS));
        let batch = BatchId(self.prng.range_inclusive(1, 2));
        if let Outcome::CouponClaimed { coupon, .. } =
            self.client(Action::ClaimCoupon { user, batch })
        {
            self.tally.claimed += 1;
            let _ = self.coupons.push((coupon, user));
        }
    }

    /// A client retry: mostly the same command, sometimes another command under the same key.
    fn retry(&mut self) {
        let Some((key, action)) = self.sent.get(self.prng.next_u64()) else { return };
        let action = if self.prng.chance(1, 4) {
            self.sent.get(self.prng.next_u64()).map_or(action, |(_, other)| other)
        } else {
            action
        };
        self.tally.replayed += 1;
        self.submit(Command::Client { key, action });
    }
}

#[test]
fn steady_state_commands_never_touch_the_heap() {
    // Goal: once tables are warm, reserve, pay, cancel, expiry by tick, ship, complete, refund,
    // coupon claims, idempotent retries, refusals and forgetting finished orders allocate,
    // reallocate and free nothing.
    let probe = heap_calls_during(|| drop(std::hint::black_box(Box::new(7u64))));
    assert_eq!(probe, (1, 0, 1), "the counting allocator must see this thread's heap calls");
    let mut load = Load::new();
    for _ in 0..100_000 {
        load.step();
    }
    load.tally = Tally::default();
    let (allocations, reallocations, deallocations) = heap_calls_during(|| {
        for _ in 0..200_000 {
            load.step();
        }
    });
    let tally = load.tally;
    let elapsed_ms = load.engine.now().0 - START_MS;
    println!("measured: {tally:?} over {elapsed_ms} ms of logical time");
    println!("engine: {:?}", load.engine.status());
    assert_eq!(allocations, 0, "allocations during {tally:?}");
    assert_eq!(reallocations, 0, "reallocations during {tally:?}");
    assert_eq!(deallocations, 0, "deallocations during {tally:?}");
    // The measured window really exercised every path.
    let exercised = [
        ("reserved", tally.reserved),
        ("reserved with a coupon", tally.reserved_with_coupon),
        ("paid", tally.paid),
        ("cancelled", tally.cancelled),
        ("expired", tally.expired),
        ("shipped", tally.shipped),
        ("completed", tally.completed),
        ("refunded", tally.refunded),
        ("claimed", tally.claimed),
        ("forgotten finished orders", tally.evicted),
        ("retried", tally.replayed),
        ("rejected", tally.rejected),
    ];
    for (what, count) in exercised {
        assert!(count >= 1_000, "only {count} {what} in the measured window: {tally:?}");
    }
    // None of the long SKU's deadlines came due, so its entries filled the deadline queue
    // (twice `orders_max`) and forced at least one sweep of stale entries while measured.
    assert!(elapsed_ms < LONG_TIMEOUT_MS);
    assert!(tally.reserved_long > 2 * u64::from(config().orders_max), "{tally:?}");
}
