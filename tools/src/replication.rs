//! `ringfence serve`'s replication settings (`[replication]` and the flags) and a standby's
//! rejoin at start: before its node starts, a standby asks the primary where their journals
//! agree and drops any tail the primary never received (a deposed primary's unacknowledged
//! commands), logging what it dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ringfence_core::pipeline::Node;
use ringfence_core::{Epoch, Sequence};
use ringfence_ingress::{ReplicationControl, ReplicationStatus};
use ringfence_journal::storage::FileStorage;
use ringfence_journal::{recovery, snapshot};
use ringfence_replicator::auth::{ClusterId, ClusterSecret};
use ringfence_replicator::config::ReplicationConfig;
use ringfence_replicator::control::{Control, Role};
use ringfence_replicator::message::RefuseCode;
use ringfence_replicator::policy::AckMode;
use ringfence_replicator::standby::{JoinError, Joined, JournalEnd, fetch_snapshot, join};
use serde::{Deserialize, Serialize};

use crate::serve::log;

/// The replication flags of `ringfence serve`.
#[derive(clap::Args, Debug, Default)]
pub struct ReplicationArgs {
    /// `primary` (default) or `standby` (follows `--primary`; serves reads, refuses writes
    /// until promoted).
    #[arg(long, value_name = "ROLE")]
    pub role: Option<String>,
    /// A standby's primary: the primary's `--replication-listen` address.
    #[arg(long, value_name = "ADDR")]
    pub primary: Option<String>,
    /// A standby's primary's HTTP address, named in `not_primary` answers so clients know
    /// where to send writes.
    #[arg(long, value_name = "ADDR")]
    pub primary_http: Option<String>,
    /// Where standbys connect to this node [default with a cluster secret: 127.0.0.1:7100].
    #[arg(long, value_name = "ADDR")]
    pub replication_listen: Option<SocketAddr>,
    /// File holding the cluster's shared secret, at least 16 bytes (or set
    /// RINGFENCE_CLUSTER_SECRET). Replication is off without a secret.
    #[arg(long, value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// The cluster's name; a standby of another cluster is refused [default: ringfence].
    #[arg(long, value_name = "NAME")]
    pub cluster_id: Option<String>,
    /// When answers wait for the standby: `sync` (default: once a standby has caught up, an
    /// answer leaves only when the standby holds it durably) or `async` (the local journal
    /// only; the last unreplicated commands can be lost on failover).
    #[arg(long, value_name = "MODE")]
    pub replication: Option<String>,
    /// In sync mode, how long a standby may be silent before writes are refused
    /// (`replication_unavailable`; reads are still served) [default: 2000].
    #[arg(long, value_name = "MS")]
    pub replication_timeout_ms: Option<u64>,
}

/// `[replication]` in the config file: the same settings as the flags.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationSection {
    role: Option<String>,
    primary: Option<String>,
    primary_http: Option<String>,
    listen: Option<SocketAddr>,
    cluster_secret_file: Option<PathBuf>,
    cluster_id: Option<String>,
    mode: Option<String>,
    timeout_ms: Option<u64>,
    heartbeat_ms: Option<u64>,
}

/// Replication as configured: off, or its settings and this node's role.
pub struct Replication {
    /// The settings.
    pub config: ReplicationConfig,
    /// Primary or standby.
    pub role: Role,
    /// The primary's HTTP address, for a standby's `not_primary` answers.
    pub primary_http: Option<String>,
}

/// Reads the replication settings: flags over the file. `None` when replication is off (no
/// cluster secret and no standby role).
pub fn settings(
    args: &ReplicationArgs,
    file: &ReplicationSection,
    data_dir: &Path,
) -> Result<Option<Replication>, String> {
    let role_name = args.role.clone().or(file.role.clone()).unwrap_or_else(|| "primary".into());
    let primary = args.primary.clone().or(file.primary.clone());
    let role = match (role_name.as_str(), primary) {
        ("primary", None) => Role::Primary,
        ("primary", Some(_)) => return Err("--primary is for a standby: add --role standby".into()),
        ("standby", Some(primary)) => Role::Standby { primary },
        ("standby", None) => {
            return Err(
                "a standby needs --primary ADDR (the primary's --replication-listen)".into()
            );
        }
        (other, _) => return Err(format!("--role `{other}`: use primary or standby")),
    };
    let Some(secret) = secret(args, file)? else {
        if role != Role::Primary {
            return Err("a standby needs the cluster secret: --cluster-secret-file FILE or \
                        RINGFENCE_CLUSTER_SECRET"
                .into());
        }
        return Ok(None);
    };
    let cluster_text = args.cluster_id.clone().or(file.cluster_id.clone());
    let cluster = ClusterId::new(cluster_text.as_deref().unwrap_or("ringfence"))
        .map_err(|e| format!("--cluster-id: {e}"))?;
    let listen = args
        .replication_listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7100)));
    let mut config = ReplicationConfig::new(listen, cluster, secret, data_dir.to_path_buf());
    let mode_text = args.replication.clone().or(file.mode.clone()).unwrap_or_else(|| "sync".into());
    config.mode = AckMode::parse(&mode_text)
        .ok_or_else(|| format!("--replication `{mode_text}`: use sync or async"))?;
    if let Some(timeout) = args.replication_timeout_ms.or(file.timeout_ms) {
        if timeout == 0 {
            return Err("--replication-timeout-ms must be above 0".into());
        }
        config.timeout_ms = timeout;
    }
    if let Some(heartbeat) = file.heartbeat_ms {
        config.heartbeat_ms = heartbeat.max(1);
    }
    let primary_http = args.primary_http.clone().or(file.primary_http.clone());
    Ok(Some(Replication { config, role, primary_http }))
}

fn secret(
    args: &ReplicationArgs,
    file: &ReplicationSection,
) -> Result<Option<ClusterSecret>, String> {
    if let Some(path) = args.cluster_secret_file.as_ref().or(file.cluster_secret_file.as_ref()) {
        let secret = ClusterSecret::from_file(path).map_err(|e| e.to_string())?;
        log(format_args!("cluster secret from {}", path.display()));
        return Ok(Some(secret));
    }
    let secret = ClusterSecret::from_env().map_err(|e| e.to_string())?;
    if secret.is_some() {
        log(format_args!("cluster secret from RINGFENCE_CLUSTER_SECRET"));
    }
    Ok(secret)
}

/// What the primary says about a standby's journal at start.
pub enum JournalCheck {
    /// The journals agree (or the primary cannot be reached now: the follower retries).
    Agrees,
    /// The standby holds records after this sequence that the primary does not.
    Diverged(Sequence),
    /// The records the standby lacks were retired from the primary's journal.
    NeedsSnapshot,
}

/// Asks the primary where this standby's journal (ending at `end`) stops agreeing with its
/// own. A divergence found later, while following, asks for a restart.
pub fn check_journal(
    config: &ReplicationConfig,
    primary: &str,
    end: JournalEnd,
    promised: Epoch,
) -> Result<JournalCheck, String> {
    match join(config, primary, end, promised) {
        Ok(Joined::Stream { from, .. }) => {
            log(format_args!("the primary {primary} continues this journal at {from}"));
            Ok(JournalCheck::Agrees)
        }
        Ok(Joined::Diverged { keep_through }) => Ok(JournalCheck::Diverged(keep_through)),
        Err(JoinError::Refused { code: RefuseCode::NeedsSnapshot, text, .. }) => {
            log(format_args!("the primary {primary}: {text}"));
            Ok(JournalCheck::NeedsSnapshot)
        }
        Err(JoinError::Refused { code: RefuseCode::Auth | RefuseCode::Cluster, text, .. }) => {
            Err(format!("the primary {primary} refused this standby: {text}"))
        }
        Err(error) => {
            log(format_args!(
                "cannot check this journal against the primary {primary} ({error}); starting \
                 as a standby and retrying"
            ));
            Ok(JournalCheck::Agrees)
        }
    }
}

/// The largest snapshot a standby accepts from its primary.
const SNAPSHOT_LEN_MAX: u64 = 64 << 30;

/// Replaces this standby's journal with the primary's newest snapshot: fetches it, drops every
/// record and snapshot here (the snapshot supersedes them; the journal must not be open),
/// and installs it, so recovery starts from it. Returns where the journal now ends: the
/// snapshot's last record, and its epoch as the primary reported it.
pub fn take_snapshot(
    config: &ReplicationConfig,
    primary: &str,
    storage: &FileStorage,
    end: JournalEnd,
) -> Result<JournalEnd, String> {
    let fetched = fetch_snapshot(config, primary, SNAPSHOT_LEN_MAX)
        .map_err(|e| format!("fetching a snapshot from the primary {primary}: {e}"))?;
    log(format_args!(
        "fetched the primary's snapshot through {} ({} bytes); dropping this journal's {} \
         records, which it supersedes",
        fetched.through,
        fetched.bytes.len(),
        end.last_sequence
    ));
    recovery::truncate(storage, Sequence(1))
        .map_err(|e| format!("dropping the journal the snapshot supersedes: {e}"))?;
    snapshot::install(storage, fetched.through, &fetched.bytes)
        .map_err(|e| format!("installing the primary's snapshot: {e}"))?;
    Ok(JournalEnd { last_sequence: fetched.through, last_epoch: fetched.through_epoch })
}

/// Where a recovered journal ends, for the join: its last record (the recovered writer's
/// position and epoch), or, when it holds none after starting from the primary's snapshot,
/// the snapshot's last record as the primary described it.
#[must_use]
pub fn effective_end(
    next_sequence: Sequence,
    last_epoch: Epoch,
    from_snapshot: Option<JournalEnd>,
) -> JournalEnd {
    let last = Sequence(next_sequence.0 - 1);
    match from_snapshot {
        Some(snapshot) if last_epoch == Epoch(0) && snapshot.last_sequence == last => snapshot,
        _ => JournalEnd { last_sequence: last, last_epoch },
    }
}

/// Drops the standby's records after `keep_through` (the journal must not be open), logging
/// what it dropped and the snapshots set aside.
pub fn drop_tail(
    storage: &FileStorage,
    end: JournalEnd,
    keep_through: Sequence,
) -> Result<(), String> {
    assert!(keep_through < end.last_sequence, "a divergence drops at least one record");
    let dropped = end.last_sequence.0 - keep_through.0;
    log(format_args!(
        "dropping {dropped} records ({}..={}, last from epoch {}) that the primary never \
         received; in sync mode none of them was acknowledged",
        keep_through.next(),
        end.last_sequence,
        end.last_epoch
    ));
    let truncation = recovery::truncate(storage, keep_through.next())
        .map_err(|e| format!("dropping the diverged tail: {e}"))?;
    for snapshot in &truncation.snapshots_invalidated {
        log(format_args!("snapshot {snapshot} included dropped records: set aside"));
    }
    Ok(())
}

/// A node's replication as the network front sees it: `/v1/node`, `/metrics`, promotion and
/// the mode switch.
pub struct ControlHandle(pub Arc<Control>);

impl ReplicationControl for ControlHandle {
    fn status(&self) -> ReplicationStatus {
        let figures = self.0.figures();
        ReplicationStatus {
            role: figures.role.into(),
            mode: figures.mode.into(),
            state: figures.state,
            peer: figures.peer,
            applied_sequence: self.0.link().available(),
            acked_sequence: figures.acked_sequence,
            lag_records: figures.lag_records,
            lag_ms: figures.lag_ms,
            reconnects: figures.reconnects,
        }
    }

    fn promote(&self, node: &Node) -> Result<Epoch, String> {
        self.0.promote(node)
    }

    fn set_mode(&self, mode: &str) -> Result<(), String> {
        let mode =
            AckMode::parse(mode).ok_or_else(|| format!("mode `{mode}`: use sync or async"))?;
        self.0.set_mode(mode);
        Ok(())
    }

    fn write_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let figures = self.0.figures();
        let in_sync = u64::from(figures.state == "in_sync" || figures.state == "following");
        let gauges = [
            (
                "ringfence_replication_lag_records",
                "Records the standby is behind",
                figures.lag_records,
            ),
            (
                "ringfence_replication_lag_ms",
                "How long the oldest record not yet acknowledged by the standby has waited (ms)",
                figures.lag_ms.unwrap_or(0),
            ),
            (
                "ringfence_replication_ack_rtt_ms",
                "Acknowledgement round trip of the last heartbeat to the standby (ms)",
                figures.ack_rtt_ms.unwrap_or(0),
            ),
            ("ringfence_replication_in_sync", "1 while the pair is in sync", in_sync),
        ];
        for (name, help, value) in gauges {
            ringfence_ingress::metrics::header(out, name, help, "gauge");
            let _ = writeln!(out, "{name} {value}");
        }
        let counters = [
            (
                "ringfence_replication_connections_total",
                "Standby connections made",
                figures.reconnects,
            ),
            (
                "ringfence_replication_refused_total",
                "Replication handshakes refused",
                figures.refused,
            ),
        ];
        for (name, help, value) in counters {
            ringfence_ingress::metrics::header(out, name, help, "counter");
            let _ = writeln!(out, "{name} {value}");
        }
    }
}
