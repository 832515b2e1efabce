//! Identities, quantities and time as newtypes, so a `SkuId` can never be passed as a `UserId`.
//!
//! These derive `Hash` so that tools, benchmarks and tests can key their own maps by id (the
//! load generator keeps coupons per `UserId`). No state hash and no engine table uses it: state
//! hashes are XXH3 over canonical bytes ([`crate::hash`]) and the engine's tables place keys
//! with their own fixed function (`engine/table.rs`).

macro_rules! id_newtype {
    ($(#[$meta:meta])* $name:ident($inner:ty)) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(transparent)]
        pub struct $name(pub $inner);

        impl $name {
            /// The raw value.
            #[must_use]
            pub const fn get(self) -> $inner {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

id_newtype!(
    /// Position of a command in the input ring and the journal; strictly increasing.
    Sequence(u64)
);
id_newtype!(
    /// Milliseconds since the Unix epoch, stamped on a command when it was sequenced.
    Timestamp(u64)
);
id_newtype!(
    /// A stock-keeping unit chosen by the operator. Zero is not a valid SKU id.
    SkuId(u64)
);
id_newtype!(
    /// A buyer, as identified by the platform in front of ringfence. Zero is not a valid user.
    UserId(u64)
);
id_newtype!(
    /// An order id in the snowflake layout (see [`crate::snowflake`]).
    OrderId(u64)
);
id_newtype!(
    /// A claimed coupon's id in the snowflake layout (see [`crate::snowflake`]).
    CouponId(u64)
);
id_newtype!(
    /// A coupon batch chosen by the operator. Zero is not a valid batch id.
    BatchId(u64)
);
id_newtype!(
    /// Replication epoch: bumped on every promotion; carried by every journal record.
    Epoch(u64)
);

impl Timestamp {
    /// `self + ms`, saturating at the end of time rather than wrapping.
    #[must_use]
    pub const fn plus_ms(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }
}

impl Sequence {
    /// The sequence after this one.
    #[must_use]
    pub const fn next(self) -> Sequence {
        Sequence(self.0 + 1)
    }
}

macro_rules! bytes16_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(transparent)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// The value made from a 128-bit number (little-endian); convenient for tests and
            /// load generators.
            #[must_use]
            pub fn from_u128(value: u128) -> $name {
                $name(value.to_le_bytes())
            }
        }
    };
}

bytes16_newtype!(
    /// A client's idempotency key: 16 bytes (UUID-sized). Front ends hash longer request ids
    /// into one of these with a stable hash.
    RequestKey
);
bytes16_newtype!(
    /// A payment provider's reference for a payment, 16 bytes. Front ends hash longer
    /// references.
    PaymentRef
);
