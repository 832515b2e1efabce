//! The simulated clients: buyers who reserve (now and then with a coupon), pay, cancel and
//! claim coupons, and an admin who creates the SKUs and the coupon batch and restocks. Each
//! has one request in flight; a request keeps its key across retries and client failovers,
//! so the node's idempotency is what makes a retry safe. Every answer a client receives goes
//! into the ledger the checkers hold the final state against.

use std::collections::BTreeMap;

use ringfence_core::prng::Prng;
use ringfence_core::{
    Action, BatchId, Command, CouponId, CreateCouponBatch, CreateSku, Epoch, OrderId, Outcome,
    PaymentRef, Rejection, RequestKey, Reserve, Sequence, SkuId, Timestamp, UserId,
};

/// The hot SKU: little stock, a per-user limit, a short payment timeout.
pub const HOT: SkuId = SkuId(1);
/// A SKU with plenty of stock and no limit.
pub const PLENTY: SkuId = SkuId(2);
/// Units one buyer may hold of the hot SKU.
pub const HOT_LIMIT: u32 = 3;
const PRICE_CENTS: u64 = 500;
/// A request unanswered for this long is sent again, to the other node.
const TIMEOUT_MS: u64 = 800;

/// The coupon batch buyers claim from: fewer coupons than buyers want.
pub const COUPONS: BatchId = BatchId(1);

/// The SKUs and the coupon batch the admin creates first; coupons are valid for an hour
/// from `start`.
pub fn setup(start: Timestamp) -> Vec<Command> {
    let sku = |sku, stock, per_user_limit, payment_timeout_ms| CreateSku {
        sku,
        stock,
        price_cents: PRICE_CENTS,
        per_user_limit,
        payment_timeout_ms,
        sale_start: None,
        sale_end: None,
    };
    vec![
        Command::Client {
            key: RequestKey::from_u128(1),
            action: Action::CreateSku(sku(HOT, 12, HOT_LIMIT, 1_500)),
        },
        Command::Client {
            key: RequestKey::from_u128(2),
            action: Action::CreateSku(sku(PLENTY, 100_000, 0, 4_000)),
        },
        Command::Client {
            key: RequestKey::from_u128(3),
            action: Action::CreateCouponBatch(CreateCouponBatch {
                batch: COUPONS,
                quantity: 30,
                per_user_limit: 2,
                discount_cents: 100,
                min_amount_cents: 0,
                valid_from: start,
                valid_until: start.plus_ms(3_600_000),
            }),
        },
    ]
}

/// An answer a client received.
#[derive(Clone, Debug)]
pub struct Answer {
    pub client: usize,
    pub command: Command,
    pub outcome: Outcome,
    /// The node that answered, and the epoch it acknowledged the write in.
    pub node: usize,
    pub epoch: Epoch,
    /// The write's journal sequence (for a read, the last command it saw).
    pub sequence: Sequence,
    /// A failover may lose it: acknowledged while the operator's `async` held in that node's
    /// epoch (from the switch until the standby was in sync again), or before a switch to
    /// `async`, past what the standby then held (`Ledger::put_at_risk`).
    pub at_risk: bool,
    pub at_ms: u64,
}

/// A request in flight.
#[derive(Clone, Debug)]
struct Pending {
    /// The request's number: with the client's index, the token its answer comes back with.
    number: u64,
    command: Command,
    sent_ms: u64,
    /// Submitted to a node's session (not just waiting to be).
    submitted: bool,
    /// When it may be sent (again) if it is not submitted.
    retry_ms: u64,
}

/// An order a buyer holds and may pay or cancel.
#[derive(Clone, Copy, Debug)]
struct Held {
    order: OrderId,
    user: UserId,
    amount_cents: u64,
}

/// Buyers each client acts for: more buyers than stock, so the hot SKU sells out.
const USERS_PER_CLIENT: u64 = 4;

/// One client.
pub struct Client {
    pub index: usize,
    /// The first of the buyers it acts for.
    user: UserId,
    admin: bool,
    /// The node it sends to; it moves to the other on `not_primary` or silence.
    pub target: usize,
    pending: Option<Pending>,
    next_ms: u64,
    next_key: u64,
    script: Vec<Command>,
    held: Vec<Held>,
    /// When the sale started: the admin's setup commands name it.
    start: Timestamp,
    /// Coupons its buyers claimed and have not used.
    coupons: Vec<(UserId, CouponId)>,
    prng: Prng,
    pub answered: u64,
    /// The last requests made, by number: an answer from a node the client gave up on may
    /// still arrive, and it is an answer all the same.
    recent: std::collections::VecDeque<(u64, Command)>,
}

/// Requests remembered for late answers.
const RECENT_MAX: usize = 64;

/// The token a request's answer carries.
pub fn token(client: usize, number: u64) -> u64 {
    ((client as u64) << 32) | number
}

/// The client and request number a token names.
pub fn from_token(token: u64) -> (usize, u64) {
    ((token >> 32) as usize, token & 0xffff_ffff)
}

impl Client {
    /// Client `index`: 0 is the admin, the rest are buyers.
    pub fn new(index: usize, start: Timestamp, prng: Prng) -> Client {
        let admin = index == 0;
        let mut script = if admin { setup(start) } else { Vec::new() };
        script.reverse();
        Client {
            index,
            user: UserId(100 + index as u64 * USERS_PER_CLIENT),
            admin,
            target: 0,
            pending: None,
            next_ms: if admin { 0 } else { 1_500 },
            next_key: 1,
            script,
            start,
            held: Vec::new(),
            coupons: Vec::new(),
            prng,
            answered: 0,
            recent: std::collections::VecDeque::new(),
        }
    }

    /// The request to submit now, if one is due: a new one, or the one in flight again after
    /// a timeout (to the other node).
    pub fn due(&mut self, now_ms: u64) -> Option<(Command, u64)> {
        if let Some(pending) = self.pending.as_mut() {
            let token = token(self.index, pending.number);
            if pending.submitted {
                if now_ms.saturating_sub(pending.sent_ms) < TIMEOUT_MS {
                    return None;
                }
                // No answer in time: the node may be gone; the same request goes to the other.
                self.target ^= 1;
                pending.submitted = false;
            } else if now_ms < pending.retry_ms {
                return None;
            }
            return Some((pending.command, token));
        }
        if now_ms < self.next_ms {
            return None;
        }
        let command = self.next_command()?;
        let number = self.next_key;
        self.next_key += 1;
        if self.recent.len() == RECENT_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back((number, command));
        self.pending =
            Some(Pending { number, command, sent_ms: now_ms, submitted: false, retry_ms: 0 });
        Some((command, token(self.index, number)))
    }

    /// The node took the request.
    pub fn submitted(&mut self, now_ms: u64) {
        let pending = self.pending.as_mut().expect("a request was due");
        pending.submitted = true;
        pending.sent_ms = now_ms;
    }

    /// The node refused the request before taking it: `other` moves to the other node.
    pub fn refused(&mut self, now_ms: u64, other: bool) {
        if other {
            self.target ^= 1;
        }
        if let Some(pending) = self.pending.as_mut() {
            pending.submitted = false;
            pending.retry_ms = now_ms + 20;
        }
    }

    /// The answer to request `number` arrived. Returns its command for the ledger if it is
    /// an outcome (a `None` result means: no outcome, send the same request again). A late
    /// answer to an earlier request changes nothing here but still goes to the ledger.
    pub fn answered(
        &mut self,
        now_ms: u64,
        number: u64,
        result: Option<Outcome>,
    ) -> Option<Command> {
        let current = self.pending.as_ref().is_some_and(|p| p.number == number);
        if !current {
            result.as_ref()?;
            return self.recent.iter().find(|(n, _)| *n == number).map(|(_, c)| *c);
        }
        let pending = self.pending.as_ref().expect("checked");
        let Some(outcome) = result else {
            self.refused(now_ms, false);
            return None;
        };
        let command = pending.command;
        self.pending = None;
        self.answered += 1;
        let think_ms = if self.admin { 1_500 } else { self.prng.range_inclusive(5, 40) };
        self.next_ms = now_ms + think_ms;
        match (&outcome, &command) {
            (
                Outcome::Reserved { order, amount_cents, .. },
                Command::Client { action: Action::Reserve(reserve), .. },
            ) => {
                let held = Held { order: *order, user: reserve.user, amount_cents: *amount_cents };
                self.held.push(held);
            }
            (
                Outcome::CouponClaimed { coupon, .. },
                Command::Client { action: Action::ClaimCoupon { user, .. }, .. },
            ) => self.coupons.push((*user, *coupon)),
            (
                Outcome::Rejected(Rejection::UnknownSku),
                Command::Client { action: Action::Restock { .. }, .. },
            ) if self.admin && self.script.is_empty() => {
                // A failover under `async` lost the SKUs: the admin creates them again, with
                // the same request keys (their first answers were lost with them).
                self.script = setup(self.start);
                self.script.reverse();
            }
            _ => {}
        }
        Some(command)
    }

    fn key(&mut self) -> RequestKey {
        // Unique per client and request: the admin's setup keys are 1 and 2.
        let key = ((self.index as u128 + 1) << 64) | u128::from(self.next_key);
        self.next_key += 1;
        RequestKey::from_u128(key)
    }

    fn next_command(&mut self) -> Option<Command> {
        if self.admin {
            if let Some(command) = self.script.pop() {
                return Some(command);
            }
            let action = Action::Restock { sku: HOT, qty: 2 };
            return Some(Command::Client { key: self.key(), action });
        }
        let user = UserId(self.user.0 + self.prng.below(USERS_PER_CLIENT));
        let action = match self.prng.weighted(&[6, 3, 1, 2, 1]) {
            0 => {
                let sku = if self.prng.chance(3, 4) { HOT } else { PLENTY };
                let qty = self.prng.range_inclusive(1, 2) as u32;
                // A claimed coupon is used now and then (whoever of this client's buyers
                // holds it reserves).
                let (user, coupon) = match self.coupons.len() {
                    0 => (user, None),
                    n if self.prng.chance(1, 2) => {
                        let (user, coupon) =
                            self.coupons.swap_remove(self.prng.below(n as u64) as usize);
                        (user, Some(coupon))
                    }
                    _ => (user, None),
                };
                Action::Reserve(Reserve { user, sku, qty, coupon })
            }
            1 | 2 if !self.held.is_empty() => {
                let at = self.prng.below(self.held.len() as u64) as usize;
                let held = self.held.swap_remove(at);
                if self.prng.chance(3, 4) {
                    let payment_ref = PaymentRef::from_u128(u128::from(held.order.0));
                    Action::Pay { order: held.order, payment_ref, amount_cents: held.amount_cents }
                } else {
                    Action::Cancel { order: held.order, user: held.user }
                }
            }
            4 => Action::ClaimCoupon { user, batch: COUPONS },
            _ => return Some(Command::Query(ringfence_core::Query::Sku(HOT))),
        };
        Some(Command::Client { key: self.key(), action })
    }
}

/// Every answer the clients received, and the checks made as each arrives.
#[derive(Default)]
pub struct Ledger {
    pub answers: Vec<Answer>,
    /// The first outcome received for each request key.
    first: BTreeMap<RequestKey, usize>,
    /// The node that acknowledged writes in each epoch.
    writers: BTreeMap<u64, usize>,
}

impl Ledger {
    /// Every order a client was told it reserved.
    pub fn reserved_orders(&self) -> Vec<ringfence_core::OrderId> {
        let reserved = self.answers.iter().filter_map(|answer| match answer.outcome {
            ringfence_core::Outcome::Reserved { order, .. } => Some(order),
            _ => None,
        });
        reserved.collect()
    }

    /// A primary switched to `async`: any standby may take over from it now, and lose what it
    /// does not hold. Every write past what the standby holds for sure (`held`) is at risk
    /// from here on, whatever mode it was acknowledged in: those `node` acknowledged, and
    /// those it holds (`primary_holds`), acknowledged by its peer as primary before.
    pub fn put_at_risk(
        &mut self,
        node: usize,
        held: Sequence,
        primary_holds: &mut dyn FnMut(&Answer) -> bool,
    ) {
        for answer in self.answers.iter_mut().filter(|a| a.sequence > held) {
            answer.at_risk |= answer.node == node || primary_holds(answer);
        }
    }

    /// Records an answer; an error names the broken rule.
    pub fn record(&mut self, answer: Answer) -> Result<(), String> {
        let Command::Client { key, .. } = answer.command else {
            return Ok(());
        };
        if !answer.outcome.is_rejected() {
            let writer = *self.writers.entry(answer.epoch.0).or_insert(answer.node);
            if writer != answer.node {
                return Err(format!(
                    "two nodes acknowledged writes in epoch {}: {writer} and {} ({:?})",
                    answer.epoch, answer.node, answer.command
                ));
            }
        }
        if let Some(&first) = self.first.get(&key) {
            let before = &self.answers[first];
            // A refusal is not remembered (`Engine::apply_keyed`), so a retry may succeed.
            // A write acknowledged under `async` may have been lost to a failover, and the
            // same request then made anew; so may the answer to it reach its client late, from
            // the old primary (at-risk answers are held to the final state at the end).
            let lost_maybe = before.at_risk || answer.at_risk;
            if !before.outcome.is_rejected() && before.outcome != answer.outcome && !lost_maybe {
                return Err(format!(
                    "request {key:?} was answered {:?} and then {:?}",
                    before.outcome, answer.outcome
                ));
            }
        }
        if self.first.get(&key).is_none_or(|&at| self.answers[at].outcome.is_rejected()) {
            self.first.insert(key, self.answers.len());
        }
        self.answers.push(answer);
        Ok(())
    }
}
