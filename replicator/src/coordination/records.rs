//! The values ringfence keeps in the witness (etcd), one JSON object per key, each with a
//! format version. They are read from a store anyone with access can write, so decoding
//! checks everything and refuses with a typed error naming the key; nothing here panics on
//! bad bytes.
//!
//! ```text
//! /ringfence/<cluster>/leader        LeaderValue, bound to the leader's lease
//! /ringfence/<cluster>/sync          SyncRecord, no lease: it outlives every node
//! /ringfence/<cluster>/switchover    Switchover, bound to a lease of its own, never renewed
//! /ringfence/<cluster>/members/<n>   Member, bound to node n's lease
//! ```

use serde::{Deserialize, Serialize};

use crate::policy::AckMode;

/// The version of every value below; a value of another version is refused.
pub const RECORDS_VERSION: u32 = 1;

/// Longest node name: short enough for a key and a log line.
pub const NODE_NAME_LEN_MAX: usize = 64;

/// Why a value in the witness could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Not the JSON this build writes.
    #[error(
        "the witness key {key} holds a value that is not ringfence's: {reason}; delete it \
             (etcdctl del {key}) only if no ringfence node is running for this cluster"
    )]
    Malformed {
        /// The key.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// Written by another format version.
    #[error(
        "the witness key {key} holds format version {version}; this build reads version \
             {RECORDS_VERSION}: run the same ringfence version on both nodes"
    )]
    Version {
        /// The key.
        key: String,
        /// The version found.
        version: u32,
    },
}

/// Whether `name` is a usable node name: 1 ..= 64 of `[A-Za-z0-9._-]`.
#[must_use]
pub fn valid_node_name(name: &str) -> bool {
    (1..=NODE_NAME_LEN_MAX).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Who holds the leader key: the primary of one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderValue {
    /// [`RECORDS_VERSION`].
    pub version: u32,
    /// The primary's node name.
    pub node: String,
    /// The epoch it sequences in; unique to this leadership, so the value is too.
    pub epoch: u64,
    /// Where standbys connect (its replication listener).
    pub replication: String,
    /// Its HTTP address, named in `not_primary` answers.
    pub http: Option<String>,
}

/// Which standby may take over: the record Patroni calls `/sync`. Written only by the
/// holder of the leader key (and in the same transaction that takes the key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRecord {
    /// [`RECORDS_VERSION`].
    pub version: u32,
    /// The highest epoch any leader took; the next leader's is above it.
    pub epoch: u64,
    /// A primary that holds every acknowledged write: the one in office that wrote it, or,
    /// while the leader that took the key with this record has not taken office, the one the
    /// record named before (the campaign raises only the epoch).
    pub primary: String,
    /// The standby that holds every acknowledged write too, if any (`None`: the primary is
    /// alone, and only it may take the key).
    pub standby: Option<String>,
    /// `sync`, or `async`: any standby may take over, losing what it had not received.
    pub mode: String,
    /// In async mode, the primary's last journaled sequence when it last wrote this record
    /// (the loss window a promoted standby reports starts below it).
    pub primary_last: u64,
}

impl SyncRecord {
    /// The acknowledgement mode recorded.
    #[must_use]
    pub fn ack_mode(&self) -> AckMode {
        AckMode::parse(&self.mode).unwrap_or(AckMode::Sync)
    }

    /// Whether `node` may take the leader key when nobody holds it: the primary recorded (it
    /// holds everything it acknowledged), the standby recorded as in sync, or anyone in async
    /// mode (at the cost of what it had not received).
    #[must_use]
    pub fn eligible(&self, node: &str) -> bool {
        self.primary == node
            || self.standby.as_deref() == Some(node)
            || self.ack_mode() == AckMode::Async
    }
}

/// A standby asks the primary to hand over the leader key (a planned switchover).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Switchover {
    /// [`RECORDS_VERSION`].
    pub version: u32,
    /// The standby that asks.
    pub to: String,
    /// The epoch of the primary it follows: a request outlives no leadership.
    pub epoch: u64,
}

/// A node taking part, and whom it follows (how the primary learns its standby's name).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// [`RECORDS_VERSION`].
    pub version: u32,
    /// Its node name.
    pub node: String,
    /// The primary it follows, and in which epoch; `None` while it follows nobody.
    pub following: Option<(String, u64)>,
}

/// Encodes a value for the witness.
#[must_use]
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("these values always serialize")
}

/// Decodes the value of `key`, checking its version.
pub fn decode<T: for<'de> Deserialize<'de> + Versioned>(
    key: &str,
    bytes: &[u8],
) -> Result<T, RecordError> {
    let value: T = serde_json::from_slice(bytes)
        .map_err(|e| RecordError::Malformed { key: key.to_owned(), reason: e.to_string() })?;
    if value.version() != RECORDS_VERSION {
        return Err(RecordError::Version { key: key.to_owned(), version: value.version() });
    }
    value.check().map_err(|reason| RecordError::Malformed { key: key.to_owned(), reason })?;
    Ok(value)
}

/// A witness value: its version, and the checks beyond its JSON shape.
pub trait Versioned {
    /// The format version it carries.
    fn version(&self) -> u32;
    /// Field checks; an error says what is wrong.
    fn check(&self) -> Result<(), String>;
}

fn name_ok(what: &str, name: &str) -> Result<(), String> {
    if valid_node_name(name) { Ok(()) } else { Err(format!("{what} `{name}` is not a node name")) }
}

impl Versioned for LeaderValue {
    fn version(&self) -> u32 {
        self.version
    }
    fn check(&self) -> Result<(), String> {
        name_ok("node", &self.node)?;
        if self.epoch == 0 {
            return Err("a leader's epoch is at least 1".into());
        }
        Ok(())
    }
}

impl Versioned for SyncRecord {
    fn version(&self) -> u32 {
        self.version
    }
    fn check(&self) -> Result<(), String> {
        name_ok("primary", &self.primary)?;
        if let Some(standby) = &self.standby {
            name_ok("standby", standby)?;
        }
        if AckMode::parse(&self.mode).is_none() {
            return Err(format!("mode `{}` is neither sync nor async", self.mode));
        }
        Ok(())
    }
}

impl Versioned for Switchover {
    fn version(&self) -> u32 {
        self.version
    }
    fn check(&self) -> Result<(), String> {
        name_ok("to", &self.to)
    }
}

impl Versioned for Member {
    fn version(&self) -> u32 {
        self.version
    }
    fn check(&self) -> Result<(), String> {
        name_ok("node", &self.node)?;
        match &self.following {
            Some((primary, _)) => name_ok("following", primary),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(standby: Option<&str>, mode: &str) -> SyncRecord {
        SyncRecord {
            version: RECORDS_VERSION,
            epoch: 3,
            primary: "a".into(),
            standby: standby.map(Into::into),
            mode: mode.into(),
            primary_last: 0,
        }
    }

    #[test]
    fn only_the_recorded_nodes_are_eligible_in_sync_mode() {
        // Goal: the primary and the in-sync standby may take the key; an unrecorded standby
        // may not, unless the record says async.
        assert!(sync(Some("b"), "sync").eligible("a"));
        assert!(sync(Some("b"), "sync").eligible("b"));
        assert!(!sync(Some("b"), "sync").eligible("c"));
        assert!(!sync(None, "sync").eligible("b"), "an alone primary's standby lags");
        assert!(sync(None, "async").eligible("b"));
    }

    #[test]
    fn values_round_trip_and_bad_ones_are_refused_by_name() {
        // Goal: what this build writes it reads back; garbage, other versions and bad names
        // are typed errors naming the key.
        let record = sync(Some("b"), "sync");
        assert_eq!(decode::<SyncRecord>("/s", &encode(&record)), Ok(record.clone()));
        let error = decode::<SyncRecord>("/s", b"{not json").unwrap_err();
        assert!(matches!(&error, RecordError::Malformed { key, .. } if key == "/s"), "{error}");
        let mut other = record.clone();
        other.version = 2;
        let error = decode::<SyncRecord>("/s", &encode(&other)).unwrap_err();
        assert_eq!(error, RecordError::Version { key: "/s".into(), version: 2 });
        let mut bad = record;
        bad.standby = Some("b c".into());
        assert!(decode::<SyncRecord>("/s", &encode(&bad)).is_err());
        bad.standby = None;
        bad.mode = "semi".into();
        assert!(decode::<SyncRecord>("/s", &encode(&bad)).is_err());
        let leader = LeaderValue {
            version: 1,
            node: "a".into(),
            epoch: 0,
            replication: "x".into(),
            http: None,
        };
        assert!(decode::<LeaderValue>("/l", &encode(&leader)).is_err(), "epoch 0");
    }

    #[test]
    fn node_names_are_short_and_plain() {
        // Goal: names fit keys and logs; empty, long, or odd characters are refused.
        assert!(valid_node_name("node-a.1_x"));
        assert!(!valid_node_name(""));
        assert!(!valid_node_name(&"a".repeat(65)));
        assert!(!valid_node_name("a/b"));
    }
}
