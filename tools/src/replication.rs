//! `ringfence serve`'s replication settings (`[replication]` and the flags) and a standby's
//! rejoin at start: before its node starts, a standby asks the primary where their journals
//! agree and drops any tail the primary never received (a deposed primary's unacknowledged
//! commands), logging what it dropped. With `--etcd` (`[coordination]`) the role comes from
//! the witness instead of the flags (`coordinate`), and a node that must change role restarts
//! itself as a candidate (`restart_as_candidate`).

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ringfence_core::pipeline::Node;
use ringfence_core::{EngineConfig, Epoch, Sequence};
use ringfence_ingress::{AdminCall, CoordinationStatus, ReplicationControl, ReplicationStatus};
use ringfence_journal::error::JournalError;
use ringfence_journal::history::EpochHistory;
use ringfence_journal::storage::{FileStorage, Storage};
use ringfence_journal::{recovery, snapshot};
use std::time::{Duration, Instant};

use ringfence_replicator::auth::{ClusterId, ClusterSecret};
use ringfence_replicator::config::ReplicationConfig;
use ringfence_replicator::control::{Control, Role};
use ringfence_replicator::coordination::CoordinationConfig;
use ringfence_replicator::coordination::driver::{
    Coordination, Decided, Held, SWITCHOVER_REQUEST_TTL_S, Startup, candidate_facts,
};
use ringfence_replicator::coordination::etcd::EtcdCoordinator;
use ringfence_replicator::coordination::pilot::{Identity, Timing};
use ringfence_replicator::coordination::records::valid_node_name;
use ringfence_replicator::message::RefuseCode;
use ringfence_replicator::policy::AckMode;
use ringfence_replicator::standby::{
    FetchedSnapshot, JoinError, Joined, JournalEnd, fetch_snapshot, join, version_refused,
};
use serde::{Deserialize, Serialize};

use crate::serve::log;

/// The replication flags of `ringfence serve`.
#[derive(clap::Args, Debug, Default)]
pub struct ReplicationArgs {
    /// `primary` (default) or `standby` (follows `--primary`; serves reads, refuses writes
    /// until promoted).
    #[arg(long, value_name = "ROLE")]
    pub role: Option<String>,
    /// A standby's primary: the primary's `--replication-listen` address, as IP:PORT or
    /// HOST:PORT (a host name is looked up again at each connection attempt, and each of its
    /// addresses tried in turn).
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
    /// Automatic failover: etcd client URLs (comma-separated) of the witness that decides who
    /// leads. The role then comes from etcd, not from --role/--primary.
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// This node's name in etcd, stable across restarts (needed with --etcd).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// With --etcd: the leader lease's time to live in seconds [default: 2].
    #[arg(long, value_name = "S")]
    pub lease_ttl_s: Option<u64>,
    /// With --etcd: when the primary is gone and the in-sync record says async, take over
    /// only if the primary had journaled at most this many records beyond this node, as the
    /// record last said (it trails by up to one lease renewal); otherwise wait for that
    /// primary to return [default: no bound].
    #[arg(long, value_name = "RECORDS")]
    pub max_failover_loss: Option<u64>,
}

/// `[coordination]` in the config file: the same settings as the `--etcd` flags, and the
/// lease's renewal period and margin.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinationSection {
    etcd: Vec<String>,
    node_name: Option<String>,
    lease_ttl_s: Option<u64>,
    renew_ms: Option<u64>,
    margin_ms: Option<u64>,
    max_failover_loss: Option<u64>,
}

/// Reads the coordination settings: flags over the file. `None` without etcd endpoints.
pub fn coordination_settings(
    args: &ReplicationArgs,
    file: &CoordinationSection,
) -> Result<Option<CoordinationConfig>, String> {
    let endpoints = if args.etcd.is_empty() { file.etcd.clone() } else { args.etcd.clone() };
    if endpoints.is_empty() {
        if args.max_failover_loss.or(file.max_failover_loss).is_some() {
            return Err("--max-failover-loss bounds an automatic failover: it needs --etcd \
                        (a promotion by hand says what it may lose with --force)"
                .into());
        }
        return Ok(None);
    }
    if args.role.is_some() || args.primary.is_some() {
        return Err("with --etcd the role comes from etcd: drop --role and --primary".into());
    }
    let node = args.node_name.clone().or(file.node_name.clone()).ok_or(
        "--etcd needs --node-name NAME (or [coordination] node_name): this node's name in etcd",
    )?;
    if !valid_node_name(&node) {
        return Err(format!("--node-name `{node}`: use 1 to 64 of A-Z a-z 0-9 . _ -"));
    }
    for endpoint in &endpoints {
        if !endpoint.starts_with("http://") {
            return Err(format!("--etcd `{endpoint}`: use http://HOST:PORT (etcd's client URL)"));
        }
    }
    let mut timing = Timing::for_ttl(args.lease_ttl_s.or(file.lease_ttl_s).unwrap_or(2));
    timing.renew_ms = file.renew_ms.unwrap_or(timing.renew_ms);
    timing.margin_ms = file.margin_ms.unwrap_or(timing.margin_ms);
    timing.validate().map_err(|e| format!("[coordination] {e}"))?;
    let max_failover_loss = args.max_failover_loss.or(file.max_failover_loss);
    Ok(Some(CoordinationConfig { endpoints, node, timing, max_failover_loss }))
}

/// What coordination decided before the node starts.
pub struct Coordinated {
    /// The witness connection, its lease kept alive until the driver runs.
    pub startup: Held,
    /// This node as the witness shows it.
    pub me: Identity,
    /// Primary (with the epoch it took) or standby.
    pub decided: Decided,
}

/// A node started with `--etcd`: connects to the witness, and follows whoever leads or takes
/// the leader key if nobody does and the in-sync record allows it. Sets `replication`'s role
/// (and the primary's HTTP address) from the decision. `replication` passed
/// [`check_coordinated`].
pub fn coordinate(
    config: CoordinationConfig,
    replication: &mut Replication,
    http: Option<SocketAddr>,
    (last, epoch_floor, catching_up): (Sequence, u64, bool),
) -> Result<Coordinated, String> {
    let listen = replication.config.listen;
    assert_ne!(listen.port(), 0, "a coordinated node's replication address checked first");
    let me = Identity {
        node: config.node.clone(),
        replication: listen.to_string(),
        http: http.filter(|a| a.port() != 0).map(|a| a.to_string()),
        max_failover_loss: config.max_failover_loss,
    };
    log(format_args!(
        "coordination: node {} through etcd {} (lease {} s, renewed every {} ms, {} ms margin)",
        me.node,
        config.endpoints.join(","),
        config.timing.ttl_s,
        config.timing.renew_ms,
        config.timing.margin_ms
    ));
    let witness = EtcdCoordinator::new(
        config.endpoints.clone(),
        &replication_cluster(replication),
        config.request_timeout(),
    );
    let clock = Arc::new(ringfence_core::pipeline::SystemClock::new());
    let give_up = Duration::from_secs(u64::MAX / 4);
    let mut startup = Startup::connect(config, Box::new(witness), give_up, clock)?;
    let facts = candidate_facts(last, epoch_floor, replication.config.mode, catching_up);
    let decided = startup.decide(&me, &facts)?;
    match &decided {
        Decided::Primary { .. } => replication.role = Role::Primary,
        Decided::Standby { leader } => {
            replication.role = Role::Standby { primary: leader.replication.clone() };
            replication.primary_http.clone_from(&leader.http);
        }
    }
    let startup = startup.hold().map_err(|e| format!("starting the lease thread: {e}"))?;
    Ok(Coordinated { startup, me, decided })
}

/// What coordination needs of replication, checked by `serve` and `config check` alike: etcd
/// decides between the nodes of a replicated pair, and the leader key names a fixed
/// replication address for the standby to connect to. Hands back the replication it checked.
pub fn check_coordinated<R: std::ops::Deref<Target = Replication>>(
    replication: Option<R>,
) -> Result<R, String> {
    let Some(replication) = replication else {
        return Err("--etcd needs replication: give the cluster secret (--cluster-secret-file \
                    FILE or RINGFENCE_CLUSTER_SECRET)"
            .into());
    };
    if replication.config.listen.port() == 0 {
        return Err("with --etcd, --replication-listen needs a fixed port: the leader key \
                    tells the standby where to connect"
            .into());
    }
    Ok(replication)
}

fn replication_cluster(replication: &Replication) -> String {
    replication.config.cluster.to_string()
}

/// Restarts this process with its own arguments: a node that must rejoin (a new leader, a
/// lost lease, a diverged journal) starts again as a candidate, which follows the leader and
/// drops any tail it never had acknowledged. The directory lock and the sockets close on exec.
pub fn restart_as_candidate(reason: &str) {
    restart(None, &|| log(format_args!("restarting as a candidate ({reason})")));
}

/// How many runs in a row of a standby without coordination restarted themselves to rejoin
/// their primary, passed to the next run in its environment.
const REJOIN_RESTARTS_ENV: &str = "RINGFENCE_REJOIN_RESTARTS";
/// The longest a run of such a series waits before it restarts again.
const REJOIN_HOLD_MAX: Duration = Duration::from_secs(60);
/// A run that lasted this long before it restarted starts a new series: it was not a loop.
const REJOIN_SERIES_RESET: Duration = Duration::from_secs(300);

/// This run's place in a series of restarts to rejoin: a standby whose restart cannot help
/// (its primary's snapshot cannot be fetched, say) restarts again, each time after twice as
/// long (1 s, 2 s, ... up to a minute), not in a loop that hammers its primary and a core.
pub struct RejoinSeries {
    restarts: u32,
    started: Instant,
}

impl RejoinSeries {
    /// This run's place, from the environment its previous run gave it (none: the first).
    #[must_use]
    pub fn of_this_run() -> RejoinSeries {
        let restarts = std::env::var(REJOIN_RESTARTS_ENV).ok().and_then(|n| n.parse().ok());
        RejoinSeries { restarts: restarts.unwrap_or(0), started: Instant::now() }
    }

    /// How long this run waits, from its start, before it restarts to rejoin.
    #[must_use]
    pub fn hold(&self) -> Duration {
        RejoinSeries::hold_after(self.restarts)
    }

    /// How long a run waits, from its start, before it restarts to rejoin, after `restarts`
    /// such restarts in a row.
    #[must_use]
    pub fn hold_after(restarts: u32) -> Duration {
        match restarts {
            0 => Duration::ZERO,
            n => Duration::from_secs(1 << (n - 1).min(6)).min(REJOIN_HOLD_MAX),
        }
    }

    /// The restarts in a row after one that ends a run which lasted `ran`, after `restarts`.
    #[must_use]
    pub fn next_after(restarts: u32, ran: Duration) -> u32 {
        if ran < REJOIN_SERIES_RESET { restarts + 1 } else { 1 }
    }

    /// Restarts this process with its own arguments: a standby without coordination that
    /// must rejoin its primary (its journal diverged, or the records it lacks were retired)
    /// starts again, drops its tail (kept in `rollback/`) or fetches the primary's snapshot,
    /// and follows.
    pub fn restart(&self, reason: &str) {
        let restarts = RejoinSeries::next_after(self.restarts, self.started.elapsed());
        let next = RejoinSeries { restarts, ..*self };
        restart(Some(next.restarts), &|| {
            log(format_args!(
                "restarting to rejoin the primary ({reason}); restart {} in a row, the next \
                 run restarts again no sooner than {} s after its start",
                next.restarts,
                next.hold().as_secs()
            ));
        });
    }
}

/// Replaces this process with a new run of its own binary and arguments, telling it its place
/// in a series of restarts to rejoin, if any, once `say` has said why; exits 75 for a
/// supervisor if that fails. Returns only when a stop was asked (SIGINT or SIGTERM): the node
/// stops instead (said once, however often a restart is asked while it stops), and a stop
/// asked from here on is carried into the new run ([`crate::signals`]).
fn restart(rejoin_restarts: Option<u32>, say: &dyn Fn()) {
    use std::os::unix::process::CommandExt as _;
    static REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    // Held through the `exec`: a stop signal sent meanwhile is the new run's to take.
    let Ok(_held) = crate::signals::before_exec() else {
        if !REFUSED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            log(format_args!("not restarting: the node is stopping"));
        }
        return;
    };
    say();
    let error = match std::env::current_exe() {
        Ok(exe) => {
            let mut command = std::process::Command::new(exe);
            command.args(std::env::args_os().skip(1));
            match rejoin_restarts {
                Some(n) => command.env(REJOIN_RESTARTS_ENV, n.to_string()),
                None => command.env_remove(REJOIN_RESTARTS_ENV),
            };
            command.exec()
        }
        Err(error) => error,
    };
    log(format_args!("could not restart ({error}); exiting so a supervisor restarts this node"));
    std::process::exit(75);
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
    engine: &EngineConfig,
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
    let mut config =
        ReplicationConfig::new(listen, cluster, secret, engine.clone(), data_dir.to_path_buf());
    let mode_text = args.replication.clone().or(file.mode.clone()).unwrap_or_else(|| "sync".into());
    config.mode = AckMode::parse(&mode_text)
        .ok_or_else(|| format!("--replication `{mode_text}`: use sync or async"))?;
    if let Some(timeout) = args.replication_timeout_ms.or(file.timeout_ms) {
        if timeout == 0 {
            return Err("--replication-timeout-ms must be above 0".into());
        }
        config.timeout_ms = timeout;
    }
    config.heartbeat_ms = heartbeat_ms(file.heartbeat_ms, config.heartbeat_ms, config.timeout_ms)?;
    let primary_http = args.primary_http.clone().or(file.primary_http.clone());
    Ok(Some(Replication { config, role, primary_http }))
}

/// How many heartbeat periods the replication timeout must hold at least. An idle standby
/// acknowledges only when a heartbeat reaches it, and a primary that hears nothing from it for
/// `timeout_ms` drops the stream (in sync mode refusing writes until it is back): at a period
/// near the timeout, one heartbeat late by a scheduling hiccup drops an idle pair, and at or
/// above it the pair flaps every timeout. Four leaves three late or lost rounds of margin, as
/// a standby allows its primary (silence for three heartbeats means it is gone); a standby
/// catching up a backlog acknowledges at least every `heartbeat_ms` too.
const HEARTBEATS_PER_TIMEOUT_MIN: u64 = 4;

/// The heartbeat period: `[replication] heartbeat_ms` (`file`) if given, else `default` or a
/// quarter of `timeout_ms` if that is less. Refused unless at most a quarter of the timeout.
fn heartbeat_ms(file: Option<u64>, default: u64, timeout_ms: u64) -> Result<u64, String> {
    assert!(timeout_ms > 0, "the timeout was checked first");
    let most = timeout_ms / HEARTBEATS_PER_TIMEOUT_MIN;
    if most == 0 {
        return Err(format!(
            "--replication-timeout-ms (timeout_ms) = {timeout_ms} must be at least \
             {HEARTBEATS_PER_TIMEOUT_MIN}: it must hold four heartbeats (heartbeat_ms) of 1 ms \
             or more"
        ));
    }
    let heartbeat = file.unwrap_or(default.min(most));
    if heartbeat == 0 {
        return Err("[replication] heartbeat_ms must be above 0".into());
    }
    if heartbeat > most {
        return Err(format!(
            "[replication] heartbeat_ms = {heartbeat} must be at most a quarter of timeout_ms \
             ({timeout_ms}, --replication-timeout-ms): an idle standby acknowledges only when \
             a heartbeat reaches it, and the primary drops a standby it has not heard from for \
             timeout_ms. Lower heartbeat_ms to {most} or less, or raise timeout_ms to {} or more",
            heartbeat.saturating_mul(HEARTBEATS_PER_TIMEOUT_MIN)
        ));
    }
    assert!(heartbeat * HEARTBEATS_PER_TIMEOUT_MIN <= timeout_ms, "a quarter at most");
    Ok(heartbeat)
}

/// The cluster secret's file, if one is named (the flag before the config file's).
pub(crate) fn secret_file<'a>(
    args: &'a ReplicationArgs,
    file: &'a ReplicationSection,
) -> Option<&'a Path> {
    args.cluster_secret_file.as_deref().or(file.cluster_secret_file.as_deref())
}

fn secret(
    args: &ReplicationArgs,
    file: &ReplicationSection,
) -> Result<Option<ClusterSecret>, String> {
    if let Some(path) = secret_file(args, file) {
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
    Diverged(Sequence, Epoch),
    /// The records the standby lacks were retired from the primary's journal; the primary
    /// that said so leads in this epoch.
    NeedsSnapshot(Epoch),
}

/// Asks the primary where this standby's journal (ending at `end`) stops agreeing with its
/// own. A divergence found later, while following, asks for a restart. A refusal no retry
/// mends (the secret, the cluster, the engine settings, the protocol version) is an error:
/// the node does not start.
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
        Ok(Joined::Diverged { keep_through, epoch }) => {
            Ok(JournalCheck::Diverged(keep_through, epoch))
        }
        Ok(Joined::Behind(behind)) => {
            // Nothing is dropped: the follower compares the journals once the node is up.
            log(format_args!(
                "the journal of the primary {primary} ends at {}, before this one, and it may have \
                 answered for records it lost: keeping them",
                behind.last_sequence
            ));
            Ok(JournalCheck::Agrees)
        }
        Err(JoinError::Refused { code: RefuseCode::NeedsSnapshot, epoch, text }) => {
            log(format_args!("the primary {primary}: {text}"));
            Ok(JournalCheck::NeedsSnapshot(epoch))
        }
        Err(JoinError::Refused {
            code: RefuseCode::Auth | RefuseCode::Cluster | RefuseCode::Engine,
            text,
            ..
        }) => Err(format!("{text} (the primary at {primary})")),
        // Retrying cannot help: the node does not start, and says what to do.
        Err(JoinError::Refused { code: RefuseCode::Version, text, .. }) => {
            Err(version_refused(primary, &text))
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

/// Fetches the primary's newest snapshot, for a standby whose missing records were retired
/// and that `promised` an epoch (a primary below it refuses, superseded), and checks it
/// ([`CheckedSnapshot::check`]): one refused is a failed fetch. The caller
/// promises the snapshot's epoch before it installs it ([`install_snapshot`]). The snapshot is
/// gathered whole, so it is refused past the largest an engine under `engine`, the standby's
/// settings, can take (`snapshot::file_len_max`): what the node's memory check counts, and all
/// that a snapshot it can restore may hold.
pub fn fetch_primary_snapshot<S: Storage>(
    storage: &S,
    config: &ReplicationConfig,
    primary: &str,
    engine: &EngineConfig,
    promised: Epoch,
) -> Result<CheckedSnapshot, String> {
    let fetched = fetch_snapshot(config, primary, snapshot::file_len_max(engine), promised)
        .map_err(|e| format!("fetching a snapshot from the primary {primary}: {e}"))?;
    CheckedSnapshot::check(storage, fetched)
}

/// A snapshot fetched from the primary that reads back as `snapshot::install` will read it
/// (its header, the sequence it was announced under, its body's checksum): what
/// [`install_snapshot`] takes, so that the journal it replaces is never dropped for one that
/// is then refused.
pub struct CheckedSnapshot {
    fetched: FetchedSnapshot,
    /// The epochs of the records the snapshot includes, as its file records them.
    history: EpochHistory,
}

impl CheckedSnapshot {
    /// Checks `fetched`, or says why it is refused.
    pub fn check<S: Storage>(storage: &S, fetched: FetchedSnapshot) -> Result<Self, String> {
        match snapshot::check_received(storage, fetched.through, &fetched.bytes) {
            Ok(meta) => Ok(CheckedSnapshot { fetched, history: meta.history }),
            Err(error) => {
                let why = match error {
                    snapshot::SnapshotError::Invalid { reason, .. } => reason,
                    other => other.to_string(),
                };
                Err(format!(
                    "the primary's snapshot through {} was refused ({why}); this journal is \
                     left as it was",
                    fetched.through
                ))
            }
        }
    }

    /// The epochs of the records the snapshot includes, as its file records them.
    #[must_use]
    pub fn history(&self) -> &EpochHistory {
        &self.history
    }
}

impl std::ops::Deref for CheckedSnapshot {
    type Target = FetchedSnapshot;

    fn deref(&self) -> &FetchedSnapshot {
        &self.fetched
    }
}

/// Drops every record and snapshot in `storage` (the journal must not be open) and installs
/// the primary's snapshot in their place; where the journal now ends. The snapshot was checked
/// before anything is dropped ([`CheckedSnapshot`]). Dropping writes the catch-up marker
/// first, so a crash part way leaves a directory that does not take over.
pub fn install_snapshot<S: Storage>(
    storage: &S,
    fetched: &CheckedSnapshot,
    end: JournalEnd,
) -> Result<JournalEnd, String> {
    log(format_args!(
        "fetched the primary's snapshot through {} ({} bytes); dropping this journal, which \
         ends at sequence {}: the snapshot supersedes it",
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

/// Where this journal (ending at `end`) stops holding the primary's records, by the epoch
/// history of the primary's snapshot through `through` that is to replace it: every record
/// the journal holds after the sequence returned was never the primary's, and the snapshot
/// drops it. Records after `through`, which the history does not cover, count among them.
///
/// Records with the same sequence and epoch are the same record, and agreement at one record
/// is agreement before it. So from the journal's last record back: a record of epoch `e` at
/// `s` that the history gives another epoch is not the primary's, nor is any record between
/// it and the primary's last record of epoch `e` or below; and when the primary holds no
/// record of `e` at or below `s` (its record at `s` is of a lower epoch), none of the
/// journal's records of `e` is the primary's. Before the history's first entry (a snapshot
/// written before snapshots carried one, or a history that lost its oldest entries) the
/// primary's epochs are at most that entry's, since a journal's epochs never go down: a
/// record of a higher epoch there is not the primary's either. Any other record there is
/// taken as the primary's: nothing says it is not.
pub fn agreed_through<R: ringfence_journal::scan::ReadSource>(
    source: &mut R,
    history: &EpochHistory,
    through: Sequence,
    end: JournalEnd,
) -> Result<Sequence, String> {
    use ringfence_journal::tail::{epoch_at, last_at_or_below_epoch};
    let read = |e: JournalError| format!("reading this journal's epochs: {e}");
    let mut at = if end.last_sequence <= through {
        (end.last_sequence, end.last_epoch)
    } else {
        match epoch_at(source, through).map_err(read)? {
            Some(epoch) => (through, epoch),
            // Nothing held at or before it to compare: what is held is all after `through`.
            None => return Ok(through),
        }
    };
    // The history's first entry: where what it says starts, and the primary's highest epoch
    // before it.
    let Some(&(first_epoch, known_from)) = history.starts().first() else {
        // A history that says nothing: every record is taken as the primary's.
        return Ok(at.0);
    };
    loop {
        let (sequence, epoch) = at;
        if sequence.0 == 0 {
            return Ok(sequence);
        }
        let not_primary = match history.epoch_at(sequence) {
            Some(primary) => primary != epoch,
            None => epoch > first_epoch,
        };
        if !not_primary {
            return Ok(sequence);
        }
        // The primary's last record of `epoch` or below: where the history says, else (no
        // entry that low) just before the history starts, as far as anything is known.
        let unknown = Sequence(known_from.0 - 1);
        let primary_end = history.last_at_or_below(epoch, through).unwrap_or(unknown);
        let before = if primary_end >= sequence {
            // No record of `epoch` at or below `sequence` is the primary's: back to before the
            // journal's first record of `epoch`.
            let below = Epoch(epoch.0.saturating_sub(1));
            last_at_or_below_epoch(source, below).map_err(read)?.unwrap_or(Sequence(0))
        } else {
            primary_end
        };
        let before = before.min(Sequence(sequence.0 - 1));
        match epoch_at(source, before).map_err(read)? {
            Some(epoch) => at = (before, epoch),
            // Not held (retired, or sequence 0): nothing at or before it to keep.
            None => return Ok(before),
        }
        // Each step goes back at least one record.
        assert!(at.0 < sequence, "the search did not go back");
    }
}

/// Keeps in `rollback/` the records of this journal (ending at `end`) that the primary's
/// snapshot, about to replace it, shows were never the primary's ([`agreed_through`]): after
/// an `async` failover, the writes an old primary acknowledged alone, which the snapshot
/// drops. Those after `kept_after`, if given, were kept already (a diverged tail that could
/// not be cut in place). Called before the journal is dropped; a failure to keep them stops
/// the start.
pub fn keep_unagreed(
    storage: &FileStorage,
    fetched: &CheckedSnapshot,
    end: JournalEnd,
    kept_after: Option<Sequence>,
) -> Result<(), String> {
    let history = &fetched.history;
    let keep_through = agreed_through(&mut storage.clone(), history, fetched.through, end)?;
    let upto = kept_after.map_or(end.last_sequence, |kept| kept.min(end.last_sequence));
    if keep_through >= upto {
        return Ok(());
    }
    log(format_args!(
        "the primary's snapshot shows records {}..={upto} of this journal were never the \
         primary's",
        keep_through.next(),
    ));
    keep_dropped(storage, keep_through, upto)
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

/// Where the snapshot a node recovered from ends, when it recorded the epoch of its last
/// record: the end of a journal that holds no record after that snapshot (a standby restarted
/// after installing its primary's snapshot, a journal rebuilt after one).
#[must_use]
pub fn recovered_snapshot_end(report: &recovery::RecoveryReport) -> Option<JournalEnd> {
    let snapshot = report.snapshot.as_ref()?;
    Some(JournalEnd { last_sequence: snapshot.through, last_epoch: snapshot.through_epoch? })
}

/// Drops the standby's records after `keep_through` (the journal must not be open), logging
/// what it dropped and the snapshots set aside. `Ok(false)` when they cannot be dropped in
/// place: every snapshot recovery could start from holds some of them, and the records before
/// those were retired; the standby then takes the primary's snapshot instead.
pub fn drop_tail(
    storage: &FileStorage,
    end: JournalEnd,
    keep_through: Sequence,
) -> Result<bool, String> {
    assert!(keep_through < end.last_sequence, "a divergence drops at least one record");
    let dropped = end.last_sequence.0 - keep_through.0;
    log(format_args!(
        "dropping {dropped} records ({}..={}, last from epoch {}) that the primary never \
         received; in sync mode none of them was acknowledged",
        keep_through.next(),
        end.last_sequence,
        end.last_epoch
    ));
    keep_dropped(storage, keep_through, end.last_sequence)?;
    let truncation = match recovery::truncate(storage, keep_through.next()) {
        Ok(truncation) => truncation,
        Err(JournalError::NothingToReplayFrom { .. }) => {
            log(format_args!(
                "they cannot be dropped in place (every snapshot here holds some of them, and \
                 the records before those were retired): this standby takes the primary's \
                 snapshot instead"
            ));
            return Ok(false);
        }
        Err(error) => return Err(format!("dropping the diverged tail: {error}")),
    };
    for snapshot in &truncation.snapshots_invalidated {
        log(format_args!("snapshot {snapshot} included dropped records: set aside"));
    }
    Ok(true)
}

/// Copies the records after `keep_through`, up to `upto`, that the journal holds into a new
/// file of `rollback/` ([`crate::rollback`]), and logs where: dropped from the journal, they
/// are not lost to the operator.
fn keep_dropped(
    storage: &FileStorage,
    keep_through: Sequence,
    upto: Sequence,
) -> Result<(), String> {
    use ringfence_journal::{datadir, scan};
    let mut source = storage.clone();
    let read = |e: JournalError| format!("reading the dropped records: {e}");
    let check = datadir::check(&mut source).map_err(read)?;
    let layout = scan::scan_segments(&mut source, &check.segments).map_err(read)?;
    let kept = crate::rollback::keep(storage.dir(), "dropped", |visit| {
        let mut upto_end = |record: &scan::Record| {
            if record.sequence > upto { ControlFlow::Break(()) } else { visit(record) }
        };
        scan::read(&mut source, &layout, keep_through.next(), &mut upto_end).map_err(read)
    })?;
    match kept {
        Some((file, kept)) => log(format_args!(
            "kept {kept} of them in {} (`journal dump --json` lines): in async mode \
             acknowledged writes among them are lost, and their request ids are there to \
             reconcile",
            file.display()
        )),
        None => {
            log(format_args!("none of them is in the journal any more (retired after a snapshot)"))
        }
    }
    Ok(())
}

/// A node's replication as the network front sees it: `/v1/node`, `/metrics`, promotion and
/// the mode switch.
pub struct ControlHandle(pub Arc<Control>, pub Option<Arc<Coordination>>);

/// How long a switchover asked of a standby may take before the admin call answers that it did
/// not happen: as long as the request stands.
const SWITCHOVER_WAIT: Duration = Duration::from_secs(SWITCHOVER_REQUEST_TTL_S);

impl ControlHandle {
    fn coordination_status(&self) -> Option<CoordinationStatus> {
        let figures = self.1.as_ref()?.figures();
        let (leader, leader_epoch) = figures.leader.unzip();
        Some(CoordinationStatus {
            node: figures.node,
            state: figures.state,
            leader,
            leader_epoch: leader_epoch.unwrap_or(0),
            lease_remaining_ms: figures.lease_remaining_ms,
            in_sync_standby: figures.in_sync_standby,
            recorded_mode: figures.recorded_mode,
            witness: figures.witness,
            waiting: figures.waiting,
            failover_loss_records: figures.failover_loss_records,
            max_failover_loss: figures.max_failover_loss,
        })
    }
}

/// A planned switchover through the witness: the standby asks, the primary holds writes until
/// this standby has everything, gives up the key, and this standby takes it. Waits for it
/// (on the admin thread, bounded).
fn switchover(control: &Control, coordination: &Coordination) -> Result<Epoch, String> {
    coordination.request_switchover()?;
    let started = std::time::Instant::now();
    while started.elapsed() < SWITCHOVER_WAIT {
        if control.is_primary() && coordination.figures().state == "leader" {
            return Ok(control.epoch());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Not made in time: the request is withdrawn, so that it is not made later by surprise
    // (etcd may keep a lease past its TTL, across a change of its own leader).
    let withdrawn = coordination.withdraw_switchover();
    let figures = coordination.figures();
    if figures.state == "taking_office" || figures.leader.is_none() {
        // Nobody holds the key (the primary gave it up, or its lease ran out): this node
        // takes it, or is about to.
        return Err("the switchover is under way: nobody holds the leader key now (the primary \
                    gave it up, or its lease ran out) and this node is taking it; see /v1/node"
            .into());
    }
    let request = match withdrawn {
        Ok(()) => "its request was withdrawn".to_owned(),
        Err(error) => format!(
            "withdrawing its request failed ({error}): it lapses by itself in about {} s",
            SWITCHOVER_WAIT.as_secs()
        ),
    };
    Err(format!(
        "the switchover asked of the primary through etcd did not complete within {} s, and \
         {request}. The primary hands over only in sync mode, to a standby in sync that \
         acknowledges everything once writes are held, and calls the switchover off when that \
         standby is lost; see /v1/node, and ask again",
        SWITCHOVER_WAIT.as_secs()
    ))
}

impl ReplicationControl for ControlHandle {
    fn status(&self) -> ReplicationStatus {
        let coordination = self.coordination_status();
        let figures = self.0.figures();
        ReplicationStatus {
            role: figures.role.into(),
            mode: figures.mode.into(),
            cluster: self.0.config().cluster.to_string(),
            promised_epoch: self.0.epochs().promised.0,
            state: figures.state,
            peer: figures.peer,
            applied_sequence: self.0.link().available(),
            acked_sequence: figures.acked_sequence,
            lag_records: figures.lag_records,
            lag_ms: figures.lag_ms,
            reconnects: figures.reconnects,
            coordination,
        }
    }

    fn promote(&self, node: &Node, force: bool) -> AdminCall<Epoch> {
        match &self.1 {
            Some(_) if force => AdminCall::Done(Err("with --etcd a promotion is a switchover \
                                                     through the witness, which never loses \
                                                     acknowledged writes: force does not apply"
                .into())),
            Some(coordination) => {
                let (control, coordination) = (Arc::clone(&self.0), Arc::clone(coordination));
                AdminCall::Later(Box::new(move || switchover(&control, &coordination)))
            }
            None => AdminCall::Done(self.0.promote(node, force)),
        }
    }

    fn set_mode(&self, mode: &str) -> AdminCall<()> {
        let Some(mode) = AckMode::parse(mode) else {
            return AdminCall::Done(Err(format!("mode `{mode}`: use sync or async")));
        };
        match &self.1 {
            Some(coordination) => {
                let coordination = Arc::clone(coordination);
                AdminCall::Later(Box::new(move || coordination.set_mode(mode)))
            }
            None => {
                self.0.set_mode(mode);
                AdminCall::Done(Ok(()))
            }
        }
    }

    fn write_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let figures = self.0.figures();
        let in_sync = u8::from(figures.state == "in_sync" || figures.state == "following");
        let seconds = |ms: Option<u64>| ms.unwrap_or(0) as f64 / 1e3;
        let gauges = [
            (
                "ringfence_replication_lag_records",
                "Records the standby is behind",
                figures.lag_records as f64,
            ),
            (
                "ringfence_replication_lag_seconds",
                "How long the oldest record not yet acknowledged by the standby has waited",
                seconds(figures.lag_ms),
            ),
            (
                "ringfence_replication_ack_rtt_seconds",
                "Acknowledgement round trip of the last heartbeat to the standby",
                seconds(figures.ack_rtt_ms),
            ),
            ("ringfence_replication_in_sync", "1 while the pair is in sync", f64::from(in_sync)),
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
        if let Some(coordination) = self.coordination_status() {
            write_coordination_metrics(out, &coordination);
        }
    }
}

/// The witness's view in gauges, for alerts: nobody leading (`waiting`), a record that lets a
/// failover lose writes (`recorded_async`), etcd out of reach.
fn write_coordination_metrics(out: &mut String, status: &CoordinationStatus) {
    use std::fmt::Write as _;
    let gauges = [
        (
            "ringfence_coordination_leader",
            "1 while this node holds the leader key in office",
            u64::from(status.state == "leader"),
        ),
        (
            "ringfence_coordination_epoch",
            "The epoch of the leader this node knows",
            status.leader_epoch,
        ),
        (
            "ringfence_coordination_waiting",
            "1 while nobody leads and this node may not take over (see waiting in /v1/node)",
            u64::from(status.waiting.is_some()),
        ),
        (
            "ringfence_coordination_recorded_async",
            "1 while the in-sync record says async: a failover may lose acknowledged writes",
            u64::from(status.recorded_mode.as_deref() == Some("async")),
        ),
        (
            "ringfence_coordination_witness_reachable",
            "1 while etcd answers",
            u64::from(status.witness == "reachable"),
        ),
        (
            "ringfence_coordination_failover_loss_records",
            "After a promotion over an async record: records the old primary had journaled \
             beyond this node, at least",
            status.failover_loss_records.unwrap_or(0),
        ),
    ];
    for (name, help, value) in gauges {
        ringfence_ingress::metrics::header(out, name, help, "gauge");
        let _ = writeln!(out, "{name} {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory journal of ticks, one record per sequence from 1, in `epochs`.
    fn journal_in_epochs(epochs: &[u64]) -> ringfence_journal::fault::FaultStorage {
        use ringfence_core::{Command, Sequenced, Timestamp};
        use ringfence_journal::epoch::Epochs;
        use ringfence_journal::writer::{Durability, WriterOptions};
        let disk = ringfence_journal::fault::FaultStorage::new();
        let options = WriterOptions {
            segment_len: 64 * 1024,
            durability: Durability::None,
            engine_config: EngineConfig::small(),
        };
        let mut writer = recovery::recover_from(disk.clone(), options).unwrap().writer;
        for (i, &epoch) in epochs.iter().enumerate() {
            let epoch = Epoch(epoch);
            if epoch > writer.data_dir().current_epoch() {
                writer.data_dir().store_epochs(Epochs { current: epoch, promised: epoch }).unwrap();
            }
            let sequence = Sequence(i as u64 + 1);
            let tick = Sequenced { sequence, timestamp: Timestamp(1_000), command: Command::Tick };
            writer.append_command(epoch, &tick).unwrap();
        }
        writer.end_batch().unwrap();
        disk
    }

    #[test]
    fn the_records_a_primary_s_history_never_held_are_found_from_the_end() {
        // Goal: on a journal of records in epochs 1,1,1,2,2,2,5,5, the last record that is
        // also the primary's, by the primary's epoch history through 20, for each way the two
        // can part: a lower epoch of the primary's at the end, a higher one, a history that
        // agrees, none, one through an earlier sequence, and one sharing no record.
        let epochs = [1, 1, 1, 2, 2, 2, 5, 5];
        let disk = journal_in_epochs(&epochs);
        let end = JournalEnd { last_sequence: Sequence(8), last_epoch: Epoch(5) };
        let agreed = |starts: &[(u64, u64)], through: u64| {
            let starts = starts.iter().map(|&(e, s)| (Epoch(e), Sequence(s))).collect();
            let history = EpochHistory::from_starts(starts).unwrap();
            agreed_through(&mut disk.clone(), &history, Sequence(through), end).unwrap().0
        };
        // The primary took over at 4 in epoch 3: this journal's epochs 2 and 5 are its own.
        assert_eq!(agreed(&[(1, 1), (3, 4)], 20), 3);
        // The primary holds epoch 2 through 7, then epoch 6: this journal's epoch 5 is not.
        assert_eq!(agreed(&[(1, 1), (2, 4), (6, 8)], 20), 6);
        assert_eq!(agreed(&[(1, 1), (2, 4), (5, 7)], 20), 8);
        assert_eq!(agreed(&[], 20), 8, "a history that says nothing");
        // Records after the snapshot are not covered: kept.
        assert_eq!(agreed(&[(1, 1), (2, 4)], 5), 5);
        assert_eq!(agreed(&[(7, 1)], 20), 0);
        // A history known from 5 only (its oldest entries dropped, or written over a snapshot
        // that carried none): before it, the primary's epochs are at most its first entry's.
        // Records 5..=8 differ from it; 1..=4 cannot be told apart, and are taken as the
        // primary's.
        assert_eq!(agreed(&[(3, 5)], 20), 4);
        // Known from 10, first epoch 4: this journal's records of epoch 5 before it were not
        // the primary's, whose epochs there are at most 4; those of epoch 2 may be.
        assert_eq!(agreed(&[(4, 10)], 20), 6);
    }

    fn args(etcd: &[&str], node: Option<&str>) -> ReplicationArgs {
        ReplicationArgs {
            etcd: etcd.iter().map(|&e| e.to_owned()).collect(),
            node_name: node.map(Into::into),
            ..ReplicationArgs::default()
        }
    }

    #[test]
    fn coordination_is_off_without_etcd_and_flags_win_over_the_file() {
        // Goal: no endpoints means no coordination; flags override `[coordination]`, whose
        // renewal and margin settings apply.
        let file: CoordinationSection = toml::from_str(
            "etcd = [\"http://10.0.0.9:2379\"]\nnode_name = \"f\"\nlease_ttl_s = 4\nrenew_ms = 900\n\
             max_failover_loss = 500",
        )
        .unwrap();
        assert!(
            coordination_settings(&args(&[], None), &CoordinationSection::default())
                .unwrap()
                .is_none()
        );
        let from_file = coordination_settings(&args(&[], None), &file).unwrap().unwrap();
        assert_eq!((from_file.node.as_str(), from_file.timing.ttl_s), ("f", 4));
        assert_eq!(from_file.timing.renew_ms, 900);
        assert_eq!(from_file.max_failover_loss, Some(500));
        let mut flags = args(&["http://127.0.0.1:2379"], Some("a"));
        flags.max_failover_loss = Some(7);
        let config = coordination_settings(&flags, &file).unwrap().unwrap();
        assert_eq!(config.endpoints, vec!["http://127.0.0.1:2379".to_owned()]);
        assert_eq!((config.node.as_str(), config.max_failover_loss), ("a", Some(7)));
        let default = coordination_settings(
            &args(&["http://127.0.0.1:2379"], Some("a")),
            &CoordinationSection::default(),
        );
        assert_eq!(default.unwrap().unwrap().max_failover_loss, None, "no bound unless asked");
    }

    #[test]
    fn a_heartbeat_period_above_a_quarter_of_the_replication_timeout_is_refused() {
        // Goal: an idle standby acknowledges only when a heartbeat reaches it, and a primary
        // drops a standby silent for `timeout_ms`: a heartbeat period near or above it makes
        // an idle pair flap every timeout. The settings `serve` and `config check` share
        // refuse one above a quarter of the timeout, naming both settings and the fix; left
        // unset, the period shrinks to fit a short timeout.
        let dir = std::env::temp_dir().join(format!("rf-heartbeat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("cluster.secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef").unwrap();
        let flags = |timeout_ms: Option<u64>| ReplicationArgs {
            cluster_secret_file: Some(secret.clone()),
            replication_timeout_ms: timeout_ms,
            ..ReplicationArgs::default()
        };
        let engine = EngineConfig::small();
        let read = |file: &str, timeout_ms| {
            let file: ReplicationSection = toml::from_str(file).unwrap();
            let settings = settings(&flags(timeout_ms), &file, &engine, &dir);
            settings.map(|replication| replication.expect("replication on").config.heartbeat_ms)
        };
        let refused = read("heartbeat_ms = 1500", Some(1_000)).unwrap_err();
        for named in ["heartbeat_ms = 1500", "timeout_ms", "(1000", "to 250 or less", "6000"] {
            assert!(refused.contains(named), "{named}: {refused}");
        }
        assert!(read("heartbeat_ms = 251\ntimeout_ms = 1000", None).is_err(), "above a quarter");
        assert_eq!(read("heartbeat_ms = 250\ntimeout_ms = 1000", None), Ok(250));
        assert_eq!(read("", None), Ok(100), "the default, a fiftieth of the default timeout");
        assert_eq!(read("", Some(200)), Ok(50), "the default shrinks to fit the timeout");
        assert!(read("heartbeat_ms = 0", None).unwrap_err().contains("above 0"));
        assert!(read("", Some(3)).unwrap_err().contains("at least 4"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_coordination_settings_are_refused_with_the_fix() {
        // Goal: a role flag, a missing or odd node name, a non-http URL, a lease that cannot
        // fit two renewals and the margin, and a margin below a tenth of the lease (it covers
        // clock drift) are refused, each saying what to change.
        let none = CoordinationSection::default();
        let url = ["http://127.0.0.1:2379"];
        let mut role = args(&url, Some("a"));
        role.role = Some("standby".into());
        let mut bound_alone = args(&[], None);
        bound_alone.max_failover_loss = Some(10);
        let cases = [
            (role, "drop --role"),
            (bound_alone, "needs --etcd"),
            (args(&url, None), "--node-name"),
            (args(&url, Some("a b")), "A-Z a-z 0-9"),
            (args(&["127.0.0.1:2379"], Some("a")), "http://HOST:PORT"),
        ];
        for (flags, expected) in cases {
            let error = coordination_settings(&flags, &none).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
        let tight: CoordinationSection = toml::from_str(
            "etcd = [\"http://e:1\"]\nnode_name = \"a\"\nlease_ttl_s = 1\nrenew_ms = 500",
        )
        .unwrap();
        let error = coordination_settings(&args(&[], None), &tight).unwrap_err();
        assert!(error.contains("does not fit a 1 s TTL"), "{error}");
        // A margin that covers no clock drift: a slow clock acknowledges past the lease.
        let section = |margin_ms: u64| -> CoordinationSection {
            let text =
                format!("etcd = [\"http://e:1\"]\nnode_name = \"a\"\nmargin_ms = {margin_ms}");
            toml::from_str(&text).unwrap()
        };
        for margin_ms in [0, 199] {
            let error = coordination_settings(&args(&[], None), &section(margin_ms)).unwrap_err();
            assert!(error.contains("raise margin_ms to 200 or more"), "{margin_ms}: {error}");
        }
        assert!(coordination_settings(&args(&[], None), &section(200)).is_ok(), "a tenth fits");
    }
}
