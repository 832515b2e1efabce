//! The journal: ringfence's database of record.
//!
//! Memory-mapped, preallocated segment files of CRC-framed command records in the canonical
//! encoding;
//! durability policies; snapshots of the business-logic processor's state; a data directory
//! that defends itself (an exclusive lock, a manifest listing the segments, an epoch file);
//! and crash recovery that replays the journal from the newest valid snapshot.

pub mod backup;
pub mod datadir;
pub mod epoch;
pub mod error;
pub mod fault;
pub mod format;
pub mod heal;
pub mod history;
pub mod lock;
pub mod manifest;
#[cfg(feature = "mutations")]
pub mod mutation;
pub mod rebuild;
pub mod reconfigure;
pub mod recovery;
pub mod salvage;
pub mod scan;
pub mod snapshot;
pub mod spare;
pub mod storage;
pub mod tail;
pub mod workload;
pub mod writer;
