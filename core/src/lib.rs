//! ringfence's core: the deterministic business-logic processor (BLP).
//!
//! [`Engine`] owns all sale state and applies [`Sequenced`] commands one at a time, producing an
//! [`Outcome`] for each. It does no I/O, starts no threads, reads no clock and uses only
//! fixed-seed hashing, so the same commands give the same outcomes and the same state hash on
//! every node and at every replay. Everything around it (ring pipeline, journal, replication,
//! network) exists to feed it commands in order and to carry its outcomes back.

pub mod address;
#[cfg(any(test, feature = "arbitrary"))]
pub mod arb;
pub mod codec;
pub mod command;
pub mod config;
pub mod engine;
pub mod hash;
pub mod memory;
#[cfg(feature = "mutations")]
pub mod mutation;
pub mod outcome;
pub mod pipeline;
pub mod prng;
pub mod record;
pub mod snowflake;
pub mod types;

pub use codec::{DecodeError, ENCODING_VERSION};
pub use command::{Action, Command, CreateCouponBatch, CreateSku, Query, Reserve, Sequenced};
pub use config::{ConfigError, EngineConfig};
pub use engine::{
    Engine, EngineImage, EngineMemory, EngineStatus, Event, IMAGE_FORMAT_VERSION, ImageDecodeError,
    Lookahead, RestoreError,
};
pub use outcome::{
    BatchView, CouponState, CouponView, OrderState, OrderView, Outcome, Rejection, SkuView,
};
pub use types::{
    BatchId, CouponId, Epoch, OrderId, PaymentRef, RequestKey, Sequence, SkuId, Timestamp, UserId,
};
