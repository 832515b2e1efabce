//! Remembered request keys: the entry the engine keeps for each one, and the whole entry an
//! image holds.
//!
//! The engine remembers the outcome of every keyed command for the request-key window (up to
//! `request_keys_max` of them, 2^21 at the defaults) and writes one entry per command. An
//! [`Outcome`] is as large as its largest variant, a SKU's view: 104 bytes, and the entry 144.
//! The engine keeps it in 40 ([`Stored`]), the entry in 80:
//!
//! - the outcomes a sale is made of (a reservation, a payment, a claimed coupon, a refusal)
//!   as they are;
//! - an operator's answer that carries a SKU's or a batch's view as the figures the view took
//!   from what changes (stock, available and reserved units, whether the sale is open; the
//!   coupons a batch had left). Everything else in the view is read back from the SKU or
//!   batch itself: neither is ever removed, and nothing else in it changes once it is made.
//!
//! So the same outcome comes back for a retried command, bit for bit. Images hold the whole
//! outcome ([`RememberedKey`]), so snapshots and state digests do not depend on this; a
//! restore refuses an image whose remembered answers do not come back the same way.

use crate::outcome::{BatchView, Outcome, Rejection, SkuView};
use crate::types::{BatchId, CouponId, OrderId, RequestKey, SkuId, Timestamp, UserId};

/// A remembered request key as the engine keeps it. Its outcome reads back through
/// `Engine::remembered_outcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct KeyEntry {
    /// The user the command names (`Action::user`), or `UserId(0)` for one that names none:
    /// one buyer's request ids never collide with another's.
    pub(super) user: UserId,
    pub(super) key: RequestKey,
    pub(super) expires_at: Timestamp,
    /// The action's fingerprint ([`crate::hash::fingerprint`]).
    pub(super) fingerprint: u64,
    pub(super) outcome: Stored,
}

// Written for every keyed command: one and a quarter cache lines, where the whole outcome made
// two and a quarter.
const _: () = assert!(size_of::<Stored>() == 40);
const _: () = assert!(size_of::<KeyEntry>() == 80);

/// A remembered request key with its whole outcome, as an image holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RememberedKey {
    pub(super) user: UserId,
    pub(super) key: RequestKey,
    pub(super) expires_at: Timestamp,
    pub(super) fingerprint: u64,
    pub(super) outcome: Outcome,
}

/// An outcome as a request key remembers it. See the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stored {
    Reserved {
        order: OrderId,
        expires_at: Timestamp,
        amount_cents: u64,
    },
    Paid {
        order: OrderId,
    },
    Cancelled {
        order: OrderId,
    },
    Shipped {
        order: OrderId,
    },
    Completed {
        order: OrderId,
    },
    Refunded {
        order: OrderId,
    },
    CouponClaimed {
        coupon: CouponId,
        batch: BatchId,
        valid_until: Timestamp,
    },
    Rejected(Rejection),
    /// `SkuCreated`, `Restocked` or `SaleChanged`: the view's changing figures. Sold units
    /// are what stock leaves after the available and reserved ones.
    Sku {
        change: SkuChange,
        open: bool,
        sku: SkuId,
        stock: u64,
        available: u64,
        reserved: u64,
    },
    /// `BatchCreated`: the coupons the batch had left.
    BatchCreated {
        batch: BatchId,
        remaining: u32,
    },
}

/// Which operator outcome a [`Stored::Sku`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SkuChange {
    Created,
    Restocked,
    SaleChanged,
}

impl Stored {
    /// How a request key keeps `outcome`; `None` for an outcome no keyed command answers with
    /// (a tick's, a snapshot's, a read's).
    pub(super) fn of(outcome: &Outcome) -> Option<Stored> {
        let sku = |change, view: &SkuView| Stored::Sku {
            change,
            open: view.open,
            sku: view.sku,
            stock: view.stock,
            available: view.available,
            reserved: view.reserved,
        };
        Some(match *outcome {
            Outcome::Reserved { order, expires_at, amount_cents } => {
                Stored::Reserved { order, expires_at, amount_cents }
            }
            Outcome::Paid { order } => Stored::Paid { order },
            Outcome::Cancelled { order } => Stored::Cancelled { order },
            Outcome::Shipped { order } => Stored::Shipped { order },
            Outcome::Completed { order } => Stored::Completed { order },
            Outcome::Refunded { order } => Stored::Refunded { order },
            Outcome::CouponClaimed { coupon, batch, valid_until } => {
                Stored::CouponClaimed { coupon, batch, valid_until }
            }
            Outcome::Rejected(rejection) => Stored::Rejected(rejection),
            Outcome::SkuCreated(ref view) => sku(SkuChange::Created, view),
            Outcome::Restocked(ref view) => sku(SkuChange::Restocked, view),
            Outcome::SaleChanged(ref view) => sku(SkuChange::SaleChanged, view),
            Outcome::BatchCreated(view) => {
                Stored::BatchCreated { batch: view.batch, remaining: view.remaining }
            }
            Outcome::Ticked { .. }
            | Outcome::SnapshotRequested { .. }
            | Outcome::Sku(_)
            | Outcome::Order(_)
            | Outcome::Coupon(_)
            | Outcome::Batch(_) => return None,
        })
    }

    /// The whole outcome, reading what `of` left out through `sku_view` and `batch_view`
    /// (the SKU's or batch's view now, or `None` if there is no such SKU or batch); `None` if
    /// one is missing or the figures kept cannot be a view (more units available and reserved
    /// than in stock).
    pub(super) fn outcome(
        self,
        sku_view: impl FnOnce(SkuId) -> Option<SkuView>,
        batch_view: impl FnOnce(BatchId) -> Option<BatchView>,
    ) -> Option<Outcome> {
        Some(match self {
            Stored::Reserved { order, expires_at, amount_cents } => {
                Outcome::Reserved { order, expires_at, amount_cents }
            }
            Stored::Paid { order } => Outcome::Paid { order },
            Stored::Cancelled { order } => Outcome::Cancelled { order },
            Stored::Shipped { order } => Outcome::Shipped { order },
            Stored::Completed { order } => Outcome::Completed { order },
            Stored::Refunded { order } => Outcome::Refunded { order },
            Stored::CouponClaimed { coupon, batch, valid_until } => {
                Outcome::CouponClaimed { coupon, batch, valid_until }
            }
            Stored::Rejected(rejection) => Outcome::Rejected(rejection),
            Stored::Sku { change, open, sku, stock, available, reserved } => {
                let sold = stock.checked_sub(available.checked_add(reserved)?)?;
                let now = sku_view(sku)?;
                debug_assert_eq!(now.sku, sku, "the view of another SKU");
                let view = SkuView { stock, available, reserved, sold, open, ..now };
                match change {
                    SkuChange::Created => Outcome::SkuCreated(view),
                    SkuChange::Restocked => Outcome::Restocked(view),
                    SkuChange::SaleChanged => Outcome::SaleChanged(view),
                }
            }
            Stored::BatchCreated { batch, remaining } => {
                let now = batch_view(batch)?;
                debug_assert_eq!(now.batch, batch, "the view of another batch");
                Outcome::BatchCreated(BatchView { remaining, ..now })
            }
        })
    }
}
