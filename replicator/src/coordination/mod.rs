//! Automatic failover with a witness (etcd): who leads is decided there, never by the two
//! nodes alone. ringfence's replication stays the data path; the hot path never touches the
//! witness.
//!
//! - [`records`]: the values kept in the witness (leader key, in-sync record, switchover
//!   request, members), versioned JSON, checked decoding.
//! - [`store`]: the [`store::Coordinator`] trait — leases, one read, conditional writes — and
//!   an in-memory witness for tests and the simulator.
//! - [`etcd`]: the trait over etcd's v3 HTTP/JSON gateway.
//! - [`pilot`]: the decisions, pure: fed the witness's keys, the node's replication facts and
//!   the time, answering with one plan.
//! - [`driver`]: the control-plane thread (`rf-coordinator`) that renews the lease, reads the
//!   witness, asks the pilot and carries out its plan; and the candidate's start-up.
//!
//! The guarantees, each kept by one rule (`ARCHITECTURE.md` lists them as invariants):
//! 1. Never two primaries acknowledging in one epoch: a node sequences only in an epoch it
//!    took with the leader key, in a transaction that fails if anyone holds it, and above
//!    every epoch recorded; a promoted standby refuses lower epochs (the replication fence).
//! 2. A primary acknowledging on its own journal stops a margin before its lease can expire,
//!    on the monotonic clock, counted from when the renewal was sent.
//! 3. Only the in-sync standby recorded in the witness may take the key in sync mode.
//! 4. "No standby" and `async` are recorded before the primary acts on them.

pub mod driver;
pub mod etcd;
pub mod pilot;
pub mod records;
pub mod store;

use std::time::Duration;

use crate::coordination::pilot::Timing;

/// How a node reaches the witness and times its lease.
#[derive(Clone, Debug)]
pub struct CoordinationConfig {
    /// etcd client URLs (`http://host:port`), tried in turn.
    pub endpoints: Vec<String>,
    /// This node's name, stable across restarts.
    pub node: String,
    /// Lease TTL, renewal period, margin.
    pub timing: Timing,
    /// Under an `async` record, the most records this node may lose to take over
    /// ([`pilot::Identity::max_failover_loss`]); `None`: any number.
    pub max_failover_loss: Option<u64>,
}

impl CoordinationConfig {
    /// How long one call to the witness may take: a renewal period, so a hung call cannot
    /// push the next renewal past the margin.
    #[must_use]
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.timing.renew_ms.max(50))
    }
}
