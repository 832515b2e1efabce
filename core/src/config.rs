//! Capacities and settings of the business-logic processor, fixed when it starts.

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
    /// (user, SKU) pairs holding units under a per-user limit.
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
            request_keys_max: 1 << 20,
            request_key_window_ms: 10 * 60 * 1_000,
            // Off by default: keeping the per-user counts costs the hot path a lookup in one
            // more table (about a fifth of BLP-alone throughput in one measurement), and
            // callers are authenticated services. A buyer reserves, retries and cancels a
            // handful of times in a window, so a few hundred is a generous setting.
            request_keys_per_user_max: 0,
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
    pub fn small() -> Self {
        EngineConfig {
            shard: 1,
            skus_max: 64,
            orders_max: 1_024,
            coupons_max: 256,
            batches_max: 16,
            holdings_max: 1_024,
            request_keys_max: 4_096,
            request_key_window_ms: 60_000,
            request_keys_per_user_max: 0,
            order_qty_max: 100,
        }
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
