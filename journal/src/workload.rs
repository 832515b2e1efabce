//! A deterministic flash-sale command mix, for journal tests, crash tests and benchmarks.
//!
//! From one seed it produces every journaled command kind in realistic proportions: a few SKUs
//! and a coupon batch created up front, then mostly reservations, with payments,
//! cancellations, shipping, completion, refunds, coupon claims, restocks, sale open/close and
//! ticks. Reads (queries, snapshot requests) are never journaled, so it produces none.
//! Payments and follow-ups refer to orders the engine really created, learned from the
//! outcomes fed back with [`Workload::observe`]. Every choice is drawn from one
//! [`Prng`], so a seed names the whole stream.

use ringfence_core::prng::Prng;
use ringfence_core::{
    Action, BatchId, Command, CouponId, CreateCouponBatch, CreateSku, OrderId, Outcome, PaymentRef,
    RequestKey, Reserve, Sequence, Sequenced, SkuId, Timestamp, UserId,
};

/// Generates commands; see the module documentation.
pub struct Workload {
    prng: Prng,
    next_sequence: Sequence,
    now: Timestamp,
    keys: u128,
    skus: u64,
    /// Recent orders and their amounts (a bounded ring).
    orders: Vec<(OrderId, u64)>,
    order_cursor: usize,
    coupons: Vec<CouponId>,
    setup: u32,
}

const ORDERS_REMEMBERED: usize = 4_096;
const SKUS: u64 = 8;

impl Workload {
    /// A workload from `seed`, whose first command has `first` and is stamped at `start`.
    #[must_use]
    pub fn new(seed: u64, first: Sequence, start: Timestamp) -> Workload {
        assert!(first.0 >= 1, "sequences start at 1");
        Workload {
            prng: Prng::new(seed),
            next_sequence: first,
            now: start,
            keys: u128::from(seed) << 64,
            skus: SKUS,
            orders: Vec::with_capacity(ORDERS_REMEMBERED),
            order_cursor: 0,
            coupons: Vec::new(),
            setup: 0,
        }
    }

    /// The sequence the next command will carry.
    #[must_use]
    pub fn next_sequence(&self) -> Sequence {
        self.next_sequence
    }

    /// The next command.
    pub fn next_command(&mut self) -> Sequenced {
        let before = self.now;
        self.now = self.now.plus_ms(self.prng.below(3));
        // Stamped as a sequencer would: time never goes back.
        assert!(self.now >= before, "the workload's clock went back");
        let command = if self.setup <= SKUS as u32 { self.setup_command() } else { self.mixed() };
        // What a journal holds: reads are never journaled.
        assert!(command.is_mutating(), "the workload produced a read");
        let sequenced = Sequenced { sequence: self.next_sequence, timestamp: self.now, command };
        self.next_sequence = self.next_sequence.next();
        // Contiguous, as the journal requires.
        assert_eq!(self.next_sequence.0, sequenced.sequence.0 + 1, "a gap in the sequences");
        sequenced
    }

    /// Learns order and coupon ids from an outcome.
    pub fn observe(&mut self, outcome: &Outcome) {
        match *outcome {
            Outcome::Reserved { order, amount_cents, .. } => {
                if self.orders.len() < ORDERS_REMEMBERED {
                    self.orders.push((order, amount_cents));
                } else {
                    self.orders[self.order_cursor] = (order, amount_cents);
                    self.order_cursor = (self.order_cursor + 1) % ORDERS_REMEMBERED;
                }
            }
            Outcome::CouponClaimed { coupon, .. } if self.coupons.len() < 1_024 => {
                self.coupons.push(coupon);
            }
            _ => {}
        }
        // Bounded memory, however long the run.
        assert!(self.orders.len() <= ORDERS_REMEMBERED, "more orders remembered than the ring");
        assert!(self.order_cursor < ORDERS_REMEMBERED, "the ring cursor left the ring");
        assert!(self.coupons.len() <= 1_024, "more coupons remembered than the bound");
    }

    fn setup_command(&mut self) -> Command {
        // SKUs first, then one coupon batch, then never again.
        assert!(self.setup <= SKUS as u32, "setup after the mix began");
        self.setup += 1;
        let action = if self.setup <= SKUS as u32 {
            Action::CreateSku(CreateSku {
                sku: SkuId(u64::from(self.setup)),
                stock: 1_000_000,
                price_cents: 1_000 + 100 * u64::from(self.setup),
                per_user_limit: if self.setup % 2 == 0 { 5 } else { 0 },
                payment_timeout_ms: 2_000,
                sale_start: None,
                sale_end: None,
            })
        } else {
            Action::CreateCouponBatch(CreateCouponBatch {
                batch: BatchId(1),
                quantity: 100_000,
                per_user_limit: 3,
                discount_cents: 100,
                min_amount_cents: 500,
                valid_from: Timestamp(0),
                valid_until: Timestamp(u64::MAX / 2),
            })
        };
        self.client(action)
    }

    fn mixed(&mut self) -> Command {
        let roll = self.prng.below(1_000);
        let user = UserId(self.prng.range_inclusive(1, 50_000));
        let sku = SkuId(self.prng.range_inclusive(1, self.skus));
        // Commands name the SKUs the setup created.
        assert!(sku.0 <= self.skus, "a command for a SKU never created");
        let action = match roll {
            0..=549 => {
                let coupon = (roll < 20).then(|| self.pick_coupon()).flatten();
                Action::Reserve(Reserve { user, sku, qty: 1 + self.prng.below(2) as u32, coupon })
            }
            550..=749 => match self.pick_order() {
                Some((order, amount_cents)) => {
                    let payment_ref = PaymentRef::from_u128(u128::from(order.0));
                    Action::Pay { order, payment_ref, amount_cents }
                }
                None => Action::Restock { sku, qty: 10 },
            },
            750..=789 => self.on_order(|order| Action::Cancel { order, user }),
            790..=809 => self.on_order(|order| Action::AdminCancel { order }),
            810..=849 => self.on_order(|order| Action::Ship { order }),
            850..=869 => self.on_order(|order| Action::Complete { order, user }),
            870..=879 => self.on_order(|order| Action::Refund { order }),
            880..=899 => Action::ClaimCoupon { user, batch: BatchId(1) },
            900..=904 => Action::Restock { sku, qty: 100 },
            905..=907 => Action::CloseSale { sku },
            908..=915 => Action::OpenSale { sku },
            _ => return Command::Tick,
        };
        self.client(action)
    }

    fn on_order(&mut self, action: impl FnOnce(OrderId) -> Action) -> Action {
        let order = self.pick_order().map_or(OrderId(1), |(order, _)| order);
        action(order)
    }

    fn pick_order(&mut self) -> Option<(OrderId, u64)> {
        if self.orders.is_empty() {
            return None;
        }
        Some(*self.prng.pick(&self.orders))
    }

    fn pick_coupon(&mut self) -> Option<CouponId> {
        if self.coupons.is_empty() {
            return None;
        }
        Some(*self.prng.pick(&self.coupons))
    }

    fn client(&mut self, action: Action) -> Command {
        self.keys += 1;
        Command::Client { key: RequestKey::from_u128(self.keys), action }
    }
}
