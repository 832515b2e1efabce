//! The witness as ringfence uses it: the [`Coordinator`] trait (leases, one linearizable
//! read of the cluster's keys, and the conditional writes that take, keep and give up the
//! leader key), and [`MemoryCoordinator`], an in-memory witness on a time the caller passes
//! in — what the unit tests and a simulator use in place of etcd.
//!
//! Every write that matters is conditional, as an etcd transaction is: the leader key is
//! taken only if nobody holds it and the in-sync record is the one the candidate read; the
//! in-sync record is written only while the writer's leader value still holds the key.

use std::collections::BTreeMap;

use crate::coordination::records::{
    self, LeaderValue, Member, RecordError, Switchover, SyncRecord, encode,
};

/// A lease's id in the witness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

/// Why the witness could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CoordinatorError {
    /// It could not be reached, or did not answer in time: what was asked may have taken
    /// effect all the same.
    #[error("the witness is unreachable: {0}")]
    Unreachable(String),
    /// No member accepted a connection: nothing was sent, so nothing took effect.
    #[error("the witness is unreachable (nothing was sent): {0}")]
    Unsent(String),
    /// It answered something this build does not understand.
    #[error("the witness answered something unexpected: {0}")]
    Protocol(String),
    /// A value in it is not ringfence's.
    #[error("{0}")]
    Record(#[from] RecordError),
}

/// The cluster's keys, read together at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// Who holds the leader key, and the lease it is bound to.
    pub leader: Option<(LeaderValue, LeaseId)>,
    /// The in-sync record, and its modification revision (0 when there is none): a write
    /// conditional on it fails if anyone changed it since.
    pub sync: Option<SyncRecord>,
    /// [`View::sync`]'s modification revision.
    pub sync_revision: i64,
    /// A standby's request for a planned switchover.
    pub switchover: Option<Switchover>,
    /// [`View::switchover`]'s modification revision (0 when there is none): each request
    /// asked is another, also of the same value.
    pub switchover_revision: i64,
    /// The nodes that registered, by name.
    pub members: Vec<Member>,
}

impl View {
    /// The recorded epoch: every new leader's is above it.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        let leader = self.leader.as_ref().map_or(0, |(leader, _)| leader.epoch);
        leader.max(self.sync.as_ref().map_or(0, |sync| sync.epoch))
    }
}

/// The witness's operations. Blocking; each call answers or fails within the driver's
/// request timeout.
pub trait Coordinator: Send {
    /// Grants a lease of `ttl_s` seconds.
    fn grant(&mut self, ttl_s: u64) -> Result<LeaseId, CoordinatorError>;
    /// Renews `lease`; returns the seconds it now has left (0: it has expired and is gone).
    fn keep_alive(&mut self, lease: LeaseId) -> Result<u64, CoordinatorError>;
    /// Reads every key of the cluster, linearizably.
    fn read(&mut self) -> Result<View, CoordinatorError>;
    /// Takes the leader key with `lease` if nobody holds it and the in-sync record's
    /// revision is still `sync_revision`, writing `sync` in the same step. Whether it did.
    fn campaign(
        &mut self,
        leader: &LeaderValue,
        lease: LeaseId,
        sync_revision: i64,
        sync: &SyncRecord,
    ) -> Result<bool, CoordinatorError>;
    /// Writes the in-sync record if `leader` still holds the leader key. Whether it did.
    fn record_sync(
        &mut self,
        leader: &LeaderValue,
        sync: &SyncRecord,
    ) -> Result<bool, CoordinatorError>;
    /// Deletes the leader key if `leader` still holds it. Whether it did.
    fn resign(&mut self, leader: &LeaderValue) -> Result<bool, CoordinatorError>;
    /// Writes this node's registration under its lease.
    fn register(&mut self, member: &Member, lease: LeaseId) -> Result<(), CoordinatorError>;
    /// Writes a switchover request under `lease` (one of its own: the request lapses with it).
    fn request_switchover(
        &mut self,
        request: &Switchover,
        lease: LeaseId,
    ) -> Result<(), CoordinatorError>;
    /// Revokes `lease`: every key bound to it goes at once.
    fn revoke(&mut self, lease: LeaseId) -> Result<(), CoordinatorError>;
}

/// The keys of one cluster.
#[derive(Clone, Debug)]
pub struct Keys {
    /// `/ringfence/<cluster>/`.
    pub prefix: String,
}

impl Keys {
    /// The keys of `cluster`.
    #[must_use]
    pub fn new(cluster: &str) -> Keys {
        Keys { prefix: format!("/ringfence/{cluster}/") }
    }
    /// The leader key.
    #[must_use]
    pub fn leader(&self) -> String {
        format!("{}leader", self.prefix)
    }
    /// The in-sync record.
    #[must_use]
    pub fn sync(&self) -> String {
        format!("{}sync", self.prefix)
    }
    /// The switchover request.
    #[must_use]
    pub fn switchover(&self) -> String {
        format!("{}switchover", self.prefix)
    }
    /// `node`'s registration.
    #[must_use]
    pub fn member(&self, node: &str) -> String {
        format!("{}members/{node}", self.prefix)
    }

    /// Builds a [`View`] from the cluster's keys (key, value, lease, modification revision).
    pub fn view<'a>(
        &self,
        kvs: impl IntoIterator<Item = (&'a str, &'a [u8], i64, i64)>,
    ) -> Result<View, CoordinatorError> {
        let mut view = View::default();
        let members = format!("{}members/", self.prefix);
        for (key, value, lease, revision) in kvs {
            if key == self.leader() {
                view.leader = Some((records::decode(key, value)?, LeaseId(lease)));
            } else if key == self.sync() {
                view.sync = Some(records::decode(key, value)?);
                view.sync_revision = revision;
            } else if key == self.switchover() {
                view.switchover = Some(records::decode(key, value)?);
                view.switchover_revision = revision;
            } else if key.starts_with(&members) {
                view.members.push(records::decode(key, value)?);
            }
        }
        Ok(view)
    }
}

/// One key in the in-memory witness.
#[derive(Clone, Debug)]
struct Entry {
    value: Vec<u8>,
    lease: Option<LeaseId>,
    revision: i64,
}

/// An in-memory witness with etcd's semantics for what ringfence uses: leases that expire
/// at a deadline on the caller's clock (keys bound to them go with them), a revision
/// counter, and conditional writes. `now_ms` is set by the caller before each call.
#[derive(Debug)]
pub struct MemoryCoordinator {
    keys: Keys,
    entries: BTreeMap<String, Entry>,
    /// Each lease's TTL (s) and the time it expires at.
    leases: BTreeMap<LeaseId, (u64, u64)>,
    revision: i64,
    next_lease: i64,
    /// The caller's time.
    pub now_ms: u64,
    /// While set, every call fails as unreachable.
    pub unreachable: bool,
}

impl MemoryCoordinator {
    /// An empty witness for `cluster`.
    #[must_use]
    pub fn new(cluster: &str) -> MemoryCoordinator {
        MemoryCoordinator {
            keys: Keys::new(cluster),
            entries: BTreeMap::new(),
            leases: BTreeMap::new(),
            revision: 1,
            next_lease: 1,
            now_ms: 0,
            unreachable: false,
        }
    }

    fn expire(&mut self) -> Result<(), CoordinatorError> {
        if self.unreachable {
            return Err(CoordinatorError::Unreachable("simulated partition".into()));
        }
        let now = self.now_ms;
        let expired: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|&(_, &(_, until))| until <= now)
            .map(|(&id, _)| id)
            .collect();
        for lease in expired {
            self.leases.remove(&lease);
            self.entries.retain(|_, entry| entry.lease != Some(lease));
        }
        Ok(())
    }

    fn put(&mut self, key: String, value: Vec<u8>, lease: Option<LeaseId>) {
        self.revision += 1;
        self.entries.insert(key, Entry { value, lease, revision: self.revision });
    }

    fn holds(&self, leader: &LeaderValue) -> bool {
        self.entries.get(&self.keys.leader()).is_some_and(|entry| entry.value == encode(leader))
    }
}

impl Coordinator for MemoryCoordinator {
    fn grant(&mut self, ttl_s: u64) -> Result<LeaseId, CoordinatorError> {
        self.expire()?;
        let id = LeaseId(self.next_lease);
        self.next_lease += 1;
        self.leases.insert(id, (ttl_s, self.now_ms + ttl_s * 1_000));
        Ok(id)
    }

    fn revoke(&mut self, lease: LeaseId) -> Result<(), CoordinatorError> {
        self.expire()?;
        self.leases.remove(&lease);
        self.entries.retain(|_, entry| entry.lease != Some(lease));
        Ok(())
    }

    fn keep_alive(&mut self, lease: LeaseId) -> Result<u64, CoordinatorError> {
        self.expire()?;
        let now = self.now_ms;
        let Some((ttl_s, until)) = self.leases.get_mut(&lease) else { return Ok(0) };
        *until = now + *ttl_s * 1_000;
        Ok(*ttl_s)
    }

    fn read(&mut self) -> Result<View, CoordinatorError> {
        self.expire()?;
        let kvs = self.entries.iter().map(|(key, entry)| {
            let lease = entry.lease.map_or(0, |lease| lease.0);
            (key.as_str(), entry.value.as_slice(), lease, entry.revision)
        });
        self.keys.view(kvs)
    }

    fn campaign(
        &mut self,
        leader: &LeaderValue,
        lease: LeaseId,
        sync_revision: i64,
        sync: &SyncRecord,
    ) -> Result<bool, CoordinatorError> {
        self.expire()?;
        let current = self.entries.get(&self.keys.sync()).map_or(0, |entry| entry.revision);
        if self.entries.contains_key(&self.keys.leader()) || current != sync_revision {
            return Ok(false);
        }
        if !self.leases.contains_key(&lease) {
            return Err(CoordinatorError::Protocol(format!("lease {} not found", lease.0)));
        }
        self.put(self.keys.leader(), encode(leader), Some(lease));
        self.put(self.keys.sync(), encode(sync), None);
        Ok(true)
    }

    fn record_sync(
        &mut self,
        leader: &LeaderValue,
        sync: &SyncRecord,
    ) -> Result<bool, CoordinatorError> {
        self.expire()?;
        if !self.holds(leader) {
            return Ok(false);
        }
        self.put(self.keys.sync(), encode(sync), None);
        Ok(true)
    }

    fn resign(&mut self, leader: &LeaderValue) -> Result<bool, CoordinatorError> {
        self.expire()?;
        if !self.holds(leader) {
            return Ok(false);
        }
        self.revision += 1;
        self.entries.remove(&self.keys.leader());
        Ok(true)
    }

    fn register(&mut self, member: &Member, lease: LeaseId) -> Result<(), CoordinatorError> {
        self.expire()?;
        self.put(self.keys.member(&member.node), encode(member), Some(lease));
        Ok(())
    }

    fn request_switchover(
        &mut self,
        request: &Switchover,
        lease: LeaseId,
    ) -> Result<(), CoordinatorError> {
        self.expire()?;
        self.put(self.keys.switchover(), encode(request), Some(lease));
        Ok(())
    }
}
