//! Replication settings shared by both roles.

use std::net::SocketAddr;
use std::path::PathBuf;

use ringfence_core::EngineConfig;

use crate::auth::{ClusterId, ClusterSecret};
use crate::policy::AckMode;

/// How a node replicates.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// Where standbys connect (every node listens: a standby refuses until promoted).
    pub listen: SocketAddr,
    /// The cluster both nodes belong to; a standby of another cluster is refused.
    pub cluster: ClusterId,
    /// The shared secret both nodes prove they hold (never sent).
    pub secret: ClusterSecret,
    /// The engine settings both nodes must share: a primary refuses a standby of others.
    pub engine: EngineConfig,
    /// The data directory whose journal a primary streams.
    pub data_dir: PathBuf,
    /// When answers wait for the standby.
    pub mode: AckMode,
    /// How long a standby in sync may be silent before writes are held (sync mode).
    pub timeout_ms: u64,
    /// How often a primary with nothing to send tells the standby it is alive.
    pub heartbeat_ms: u64,
    /// How far behind the journal a standby's acknowledgement may be and still count as
    /// caught up (records).
    pub catch_up_slack: u64,
    /// How long a handshake may take, as a whole (not each read), before the connection is
    /// dropped: counted from the accept on the primary, from the connection on the standby.
    pub handshake_timeout_ms: u64,
    /// Handshakes served at once; more connections are closed at once.
    pub handshakes_max: usize,
    /// Whether the node's journal is synced before an answer leaves (`batch` durability).
    /// Without it a primary that lost power may have acknowledged records only its standby
    /// still holds, and, restarted after that standby was in sync, it refuses to tell the
    /// standby to drop them.
    pub answers_after_sync: bool,
}

impl ReplicationConfig {
    /// Settings with the defaults for everything but the address, the cluster, its secret,
    /// the engine's settings and the data directory.
    #[must_use]
    pub fn new(
        listen: SocketAddr,
        cluster: ClusterId,
        secret: ClusterSecret,
        engine: EngineConfig,
        data_dir: PathBuf,
    ) -> ReplicationConfig {
        ReplicationConfig {
            listen,
            cluster,
            secret,
            engine,
            data_dir,
            mode: AckMode::Sync,
            timeout_ms: 2_000,
            heartbeat_ms: 100,
            catch_up_slack: 1_024,
            handshake_timeout_ms: 2_000,
            handshakes_max: 4,
            answers_after_sync: true,
        }
    }
}
