//! The node: the LMAX pipeline around the business-logic processor.
//!
//! Kept apart from the pure engine: this module owns threads, the ring buffer and clocks.

pub mod stage;

pub use stage::{
    Journal, MemoryJournal, NoReplicator, NoSnapshots, Replicator, SnapshotHook, StageError,
    Watermark,
};
