//! Capacities and settings of the business-logic processor, fixed when it starts.
//!
//! The defaults are sized for one design load, a flash sale of a million buyers on one shard:
//!
//! - every buyer reserves in the burst (a retry reuses its request key), and about as many
//!   commands again reach the engine within the request-key window: a second reservation, a
//!   cancel, a coupon claim, the payment service paying an order. Two keyed commands per buyer
//!   in the window: `request_keys_max` = 2^21.
//! - every buyer holds about one live order (reserved, paid or shipped) and one holding under a
//!   per-user SKU limit: `orders_max` = `holdings_max` = 2^20. Finished orders fill whatever is
//!   left of the order table and are forgotten oldest first.
//! - a person, or a storefront acting for one, sends a few commands a minute and keeps a
//!   handful of orders open. The per-user quotas leave ample room for that (256 request keys in
//!   the window, 64 live orders) and cap what one user can take from the shared tables at
//!   about one part in 8,000 of the key table and one in 16,000 of the order table.
//!
//! What the tables cost is [`crate::Engine::memory`]; `ringfence defaults` prints it with the
//! settings.

/// Capacities are allocated at start; a command that needs a slot in a full table is rejected
/// with `capacity_exhausted` rather than growing the heap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Node/shard id written into snowflake ids, below 1024.
    pub shard: u16,
    /// SKUs that can exist.
    pub skus_max: u32,
    /// Orders kept: every live order (reserved, paid, shipped) plus the most recently finished
    /// ones, which are forgotten oldest first when a new order needs their slot.
    pub orders_max: u32,
    /// Claimed coupons that can exist.
    pub coupons_max: u32,
    /// Coupon batches that can exist.
    pub batches_max: u32,
    /// (user, SKU) pairs holding units under a per-user limit. A holding lasts while the buyer
    /// has an order of that SKU that was not cancelled, expired or refunded (a completed order
    /// still counts toward the SKU's per-user limit), so size it for the pairs a whole sale makes.
    pub holdings_max: u32,
    /// Request keys remembered at once; a new key when all are within the window is rejected
    /// with `capacity_exhausted`, so size it above peak commands/s times the window.
    pub request_keys_max: u32,
    /// How long a request key is remembered, in logical milliseconds.
    pub request_key_window_ms: u64,
    /// Request keys one user may have remembered at once (their commands within the window);
    /// beyond it that user's new commands are rejected with `capacity_exhausted` (not
    /// remembered: a retry succeeds once their older keys age out), so no user, or service
    /// acting as one, can fill the key table for everyone. Zero: no per-user limit.
    pub request_keys_per_user_max: u16,
    /// Live orders (reserved, paid or shipped) one user may have at once; beyond it that user's
    /// reservations are rejected with `capacity_exhausted` (not remembered: the same request
    /// succeeds once one of their orders is cancelled, expires, is refunded or completed), so
    /// no user can fill the order table, or the holdings table with unpaid orders, for
    /// everyone. Zero: no quota.
    pub orders_per_user_max: u16,
    /// Largest quantity one reservation may ask for.
    pub order_qty_max: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            shard: 0,
            skus_max: 16_384,
            orders_max: 1 << 20,
            coupons_max: 1 << 18,
            batches_max: 1_024,
            holdings_max: 1 << 20,
            request_keys_max: 1 << 21,
            request_key_window_ms: 10 * 60 * 1_000,
            request_keys_per_user_max: 256,
            orders_per_user_max: 64,
            order_qty_max: 1_000,
        }
    }
}

/// A configuration the engine cannot start with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// Snowflake ids have 10 bits for the shard.
    #[error("shard id {0} is out of range: snowflake ids have 10 bits for it, so use 0..=1023")]
    ShardOutOfRange(u16),
    /// Every table needs room for at least one entry.
    #[error("capacity `{0}` must be at least 1")]
    ZeroCapacity(&'static str),
    /// Tables are indexed by `u32` slots and their hash maps are sized at twice the capacity.
    #[error("capacity `{name}` = {value} is above the supported maximum {max}")]
    CapacityTooLarge {
        /// The setting.
        name: &'static str,
        /// Its value.
        value: u32,
        /// The largest supported value.
        max: u32,
    },
}

/// Largest supported table capacity: slots are `u32`, and maps are sized at twice capacity.
pub const CAPACITY_MAX: u32 = 1 << 30;

impl EngineConfig {
    /// A small configuration for tests and examples.
    #[must_use]
    pub const fn small() -> Self {
        EngineConfig {
            shard: 1,
            skus_max: 64,
            orders_max: 1_024,
            coupons_max: 256,
            batches_max: 16,
            holdings_max: 1_024,
            request_keys_max: 4_096,
            request_key_window_ms: 60_000,
            // No quotas: scenario tests that need them say so.
            request_keys_per_user_max: 0,
            orders_per_user_max: 0,
            order_qty_max: 100,
        }
    }

    /// Every setting by its name in the `[engine]` table, in the order `ringfence defaults`
    /// prints them.
    #[must_use]
    pub fn settings(&self) -> [(&'static str, u64); 11] {
        [
            ("shard", u64::from(self.shard)),
            ("skus_max", u64::from(self.skus_max)),
            ("orders_max", u64::from(self.orders_max)),
            ("coupons_max", u64::from(self.coupons_max)),
            ("batches_max", u64::from(self.batches_max)),
            ("holdings_max", u64::from(self.holdings_max)),
            ("request_keys_max", u64::from(self.request_keys_max)),
            ("request_key_window_ms", self.request_key_window_ms),
            ("request_keys_per_user_max", u64::from(self.request_keys_per_user_max)),
            ("orders_per_user_max", u64::from(self.orders_per_user_max)),
            ("order_qty_max", u64::from(self.order_qty_max)),
        ]
    }

    /// The settings that differ from `other`'s, as `name = ours (theirs: value)`, comma
    /// separated; empty when the two are the same. The settings decide outcomes (order ids
    /// carry the shard, and every table's size decides a `capacity_exhausted` or which
    /// finished order is forgotten), so two engines agree on a journal only with all of them
    /// equal.
    #[must_use]
    pub fn differences(&self, other: &EngineConfig, theirs: &str) -> String {
        let pairs = self.settings().into_iter().zip(other.settings());
        let differ = pairs.filter(|((_, ours), (_, other))| ours != other);
        let named =
            differ.map(|((name, ours), (_, other))| format!("{name} = {ours} ({theirs}: {other})"));
        named.collect::<Vec<_>>().join(", ")
    }

    /// Checks every setting; the engine asserts this passed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.shard >= 1024 {
            return Err(ConfigError::ShardOutOfRange(self.shard));
        }
        let capacities = [
            ("skus_max", self.skus_max),
            ("orders_max", self.orders_max),
            ("coupons_max", self.coupons_max),
            ("batches_max", self.batches_max),
            ("holdings_max", self.holdings_max),
            ("request_keys_max", self.request_keys_max),
            ("order_qty_max", self.order_qty_max),
        ];
        for (name, value) in capacities {
            if value == 0 {
                return Err(ConfigError::ZeroCapacity(name));
            }
            if value > CAPACITY_MAX {
                return Err(ConfigError::CapacityTooLarge { name, value, max: CAPACITY_MAX });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_that_differs_is_named_and_only_those() {
        // Goal: a refusal over engine settings (a journal written with others, a standby of
        // others) names each that differs: a setting the engine has but `settings` leaves out
        // would make two configurations unequal with nothing to say why.
        let base = EngineConfig::default();
        let changes: [fn(&mut EngineConfig); 11] = [
            |c| c.shard += 1,
            |c| c.skus_max += 1,
            |c| c.orders_max += 1,
            |c| c.coupons_max += 1,
            |c| c.batches_max += 1,
            |c| c.holdings_max += 1,
            |c| c.request_keys_max += 1,
            |c| c.request_key_window_ms += 1,
            |c| c.request_keys_per_user_max += 1,
            |c| c.orders_per_user_max += 1,
            |c| c.order_qty_max += 1,
        ];
        assert_eq!(base.differences(&base, "theirs"), "");
        for (change, (name, value)) in changes.iter().zip(base.settings()) {
            let mut other = base.clone();
            change(&mut other);
            assert_ne!(other, base);
            let expected = format!("{name} = {value} (theirs: {})", value + 1);
            assert_eq!(base.differences(&other, "theirs"), expected);
        }
        let mut both = base.clone();
        changes[0](&mut both);
        changes[10](&mut both);
        let expected = "shard = 0 (theirs: 1), order_qty_max = 1000 (theirs: 1001)";
        assert_eq!(base.differences(&both, "theirs"), expected);
    }
}
