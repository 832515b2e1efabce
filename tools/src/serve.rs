//! `ringfence serve`: recover a primary node from its data directory and serve the binary
//! protocol and the HTTP API until SIGINT or SIGTERM.
//!
//! Settings come from built-in defaults that work on a fresh machine, then a TOML file
//! (`--config`), then flags. The journal, snapshots, manifest and epoch file live in the data
//! directory, which `serve` locks for its whole life (a second writer is refused, naming this
//! process's pid; a start refused removes the lock file it made in a directory that had none);
//! recovery loads the newest valid snapshot and replays the journal after it
//! before the listeners open.

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use ringfence_core::pipeline::{
    Clock, EgressDriver, Intake, NoReplicator, Node, NodeConfig, NodeParts, SystemClock, Topology,
};
use ringfence_core::{Engine, EngineConfig, Epoch, Sequence};
use ringfence_ingress::roles::Role as AccessRole;
use ringfence_ingress::{HashWatch, MetricsWriter, NodeBackend, ReplicationControl, ServerConfig};
use ringfence_journal::datadir::{ADMIN_TOKEN_FILE, DataDir};
use ringfence_journal::recovery::{Recovered, recover_from};
use ringfence_journal::snapshot::{self, SnapshotPolicy, Snapshotter, WriterPriority};
use ringfence_journal::spare::DISK_CHECK_EVERY;
use ringfence_journal::storage::FileStorage;
use ringfence_journal::writer::{Durability, WriterOptions};
use ringfence_replicator::control::{
    Control, Role, before_candidacy, start_primary_run, take_office,
};
use ringfence_replicator::coordination::CoordinationConfig;
use ringfence_replicator::coordination::driver::{self, Decided};
use ringfence_replicator::index::DirIndex;
use ringfence_replicator::position;
use ringfence_replicator::standby::{self, JournalEnd};
use serde::{Deserialize, Serialize};

use crate::replication::{
    self, ControlHandle, Coordinated, CoordinationSection, JournalCheck, Replication,
    ReplicationArgs, ReplicationSection,
};

/// Arguments of `ringfence serve`.
#[derive(clap::Args, Debug)]
#[command(after_help = SERVE_TRUST_HELP)]
pub struct ServeArgs {
    /// TOML configuration file (sections: top level `data_dir`, `admin_token`,
    /// `admin_token_file`; `[auth]`, `[server]`, `[node]`, `[engine]`, `[replication]`,
    /// `[coordination]`);
    /// flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for the journal, snapshots, manifest, epoch file and the generated admin
    /// token; locked while the node runs. Without a journal yet it must be empty or hold only
    /// ringfence's files, the files the configuration names (config, tokens, cluster secret)
    /// and lost+found [default: ./ringfence-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the binary protocol listener [default: 127.0.0.1:7001]; beyond loopback only
    /// with a configured admin token, and role tokens or --open-client-commands (protected
    /// mode).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address of the HTTP listener [default: 127.0.0.1:7080]; beyond loopback only with a
    /// configured admin token, and role tokens or --open-client-commands (protected mode).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// File holding the admin bearer token, at least 32 characters of letters, digits and
    /// `-._~+/` (overrides RINGFENCE_ADMIN_TOKEN and the config).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Where client commands are open (no role token): a DNS name, besides IP addresses and
    /// `localhost`, that HTTP requests without a token may carry in `Host`, e.g. the name a
    /// proxy uses (`*`: any); repeatable, added to `[server] allowed_hosts`. Other names are
    /// refused (403 host_not_allowed), against DNS rebinding.
    #[arg(long = "http-allowed-host", value_name = "NAME")]
    pub http_allowed_hosts: Vec<String>,
    /// With only the admin token (no role tokens), listen beyond loopback anyway, leaving
    /// buyer commands and reads open to anyone who reaches the listeners.
    #[arg(long)]
    pub open_client_commands: bool,
    /// When journal records are synced: `none`, `batch` or `interval:<ms>` [default: batch].
    #[arg(long, value_name = "POLICY")]
    pub durability: Option<String>,
    /// Where the business-logic processor runs: `compact` (a processor thread beside the
    /// network event loop), `parallel` (a thread per stage), `inline` (on the event loop's own
    /// thread: no hand-off between threads, about half the CPU per request at moderate load,
    /// but one core's throughput; a standby runs compact instead) or `auto` [default: auto:
    /// inline on two cores or fewer, compact below six, else parallel].
    #[arg(long, value_name = "LAYOUT")]
    pub topology: Option<String>,
    /// Replication to a hot standby.
    #[command(flatten)]
    pub replication: ReplicationArgs,
}

/// Tokens, roles and protected mode, after the flags in `serve --help`.
const SERVE_TRUST_HELP: &str = "\
Tokens and roles:
  Callers are services, authenticated by role: Authorization: Bearer <token> on HTTP, an
  AUTH frame on the binary port.
    read      reads (SKUs, orders, coupons, batches), /v1/node, /metrics
    orders    reserve, cancel, complete, claim coupon, and reads
    payments  pay, refund, and reads
    admin     everything: catalogue, ship, operator cancel, snapshot, promote, replication
  /health, /ready and PING need no token.
  Role tokens come from RINGFENCE_ORDERS_TOKEN, RINGFENCE_PAYMENTS_TOKEN, RINGFENCE_READ_TOKEN
  or the config file ([auth] orders_token_file, payments_token_file, read_token_file). With
  any of them, every call needs a token whose role allows it (401 unauthorized without one,
  403 forbidden naming the role needed). With none, buyer commands (reserve, cancel, complete,
  claim, pay) and reads are open and refund and admin calls need the admin token; such a
  request must then name the node by IP address, localhost or an --http-allowed-host name
  (403 host_not_allowed otherwise: DNS rebinding).
  The admin token comes from --admin-token-file, RINGFENCE_ADMIN_TOKEN or the config file
  (admin_token, admin_token_file). Every token must be at least 32 characters of ASCII
  letters, digits and -._~+/ (= padding at the end allowed, not counted), and no two roles
  may share one: a length check, not an entropy measurement, so make tokens from random
  bytes: head -c 32 /dev/urandom | base64 > admin.token

Protected mode:
  --listen and --http must be loopback addresses (127.0.0.1, ::1), or serve refuses to start,
  unless the operator chose the admin token and either configured a role token or passed
  --open-client-commands ([auth] open_client_commands = true). Without a chosen admin token,
  serve uses <data-dir>/admin.token, generating it on first start. Wrong tokens from one
  address (either port) are refused unchecked after a burst, HTTP 429 auth_rate_limited
  ([server] auth_failures_burst, auth_failure_refill_ms, auth_addresses_max).";

/// The TOML configuration file. `ringfence config example` writes every key of it, with its
/// default, from these types (`tools/src/config_cmd.rs`).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct FileConfig {
    data_dir: Option<PathBuf>,
    admin_token: Option<String>,
    admin_token_file: Option<PathBuf>,
    auth: AuthSection,
    server: ServerConfig,
    node: NodeSection,
    engine: EngineSection,
    replication: ReplicationSection,
    coordination: CoordinationSection,
}

/// `[auth]`: the tokens of the roles other than admin, and the acknowledgement that lets a
/// node with only the admin token listen beyond loopback.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct AuthSection {
    orders_token_file: Option<PathBuf>,
    payments_token_file: Option<PathBuf>,
    read_token_file: Option<PathBuf>,
    /// With no role token: buyer commands and reads are open; allow it beyond loopback.
    open_client_commands: bool,
}

impl AuthSection {
    fn token_file(&self, role: AccessRole) -> Option<&Path> {
        match role {
            AccessRole::Orders => self.orders_token_file.as_deref(),
            AccessRole::Payments => self.payments_token_file.as_deref(),
            AccessRole::Read => self.read_token_file.as_deref(),
            AccessRole::Admin => None,
        }
    }
}

/// Cores up to which `auto` runs a primary's processor on the event loop (`inline`). On two
/// cores, `compact`'s processor thread beside the event loop leaves one core for everything
/// else (clients on the same machine, the snapshot writer): measured with `perf http --quick`,
/// at 80% of each layout's maximum `compact` queued requests for a p99.9 of 32–141 ms where
/// `inline` held 7–39 ms, and `inline` used 0.4× the CPU per answer at 20–50k/s; `compact`'s
/// maximum with pipelining clients was 1.03–1.7× `inline`'s, and under `wrk` (one request per
/// connection at a time) `inline` reached more (89k/s against 83k/s at durability `batch`).
const INLINE_CORES_MAX: usize = 2;

/// The cores this process may run on.
fn machine_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// `[node]`: pipeline, journal, snapshots and timer.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct NodeSection {
    /// `auto` (inline on two cores or fewer, compact below six, else parallel), `inline`,
    /// `compact` or `parallel`.
    topology: String,
    ring_size: usize,
    /// Commands the network front may have in flight at once.
    in_flight_max: u32,
    pin_blp: bool,
    durability: String,
    segment_bytes: u64,
    snapshot_every_commands: Option<u64>,
    snapshots_kept: usize,
    /// `idle` (the writer runs on CPU time nothing else wants) or `normal`.
    snapshot_writer: String,
    /// Where segments no longer needed by the kept snapshots go; unset: they are deleted.
    /// Best on the same file system as the data directory (a retirement is then a rename).
    archive_dir: Option<PathBuf>,
    /// How often the timer checks for a payment deadline come due (a tick is journaled only
    /// then): the most a deadline fires late without client traffic.
    tick_ms: u64,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            topology: "auto".into(),
            ring_size: 1 << 14,
            in_flight_max: 1 << 14,
            pin_blp: true,
            durability: "batch".into(),
            segment_bytes: 64 << 20,
            snapshot_every_commands: Some(1_000_000),
            snapshots_kept: 3,
            snapshot_writer: "idle".into(),
            archive_dir: None,
            tick_ms: 10,
        }
    }
}

impl NodeSection {
    fn to_config(
        &self,
        engine: EngineConfig,
        epoch: Epoch,
        intake: Intake,
    ) -> Result<NodeConfig, String> {
        self.to_config_on(machine_cores(), engine, epoch, intake)
    }

    /// [`NodeSection::to_config`] on a machine with `cores` cores.
    fn to_config_on(
        &self,
        cores: usize,
        engine: EngineConfig,
        epoch: Epoch,
        intake: Intake,
    ) -> Result<NodeConfig, String> {
        // Checked here under its own name: the node knows it as the sessions' pending bound.
        if self.in_flight_max == 0 {
            return Err("[node] in_flight_max = 0: at least 1 (commands the network front may \
                        have in flight at once)"
                .into());
        }
        let topology = match self.topology.as_str() {
            "auto" if cores <= INLINE_CORES_MAX => Some(Topology::Stepped),
            // The core count decides between compact and parallel when the node starts.
            "auto" => None,
            "inline" => Some(Topology::Stepped),
            "compact" => Some(Topology::Compact),
            "parallel" => Some(Topology::Parallel),
            other => {
                return Err(format!(
                    "[node] topology `{other}`: use auto, inline, compact or parallel"
                ));
            }
        };
        // A standby's records come from its follower thread, which the event loop does not
        // hear: its processor keeps a thread of its own.
        let topology = match (topology, intake) {
            (Some(Topology::Stepped), Intake::Replica) => Some(Topology::Compact),
            (topology, _) => topology,
        };
        let mut config = NodeConfig {
            ring_size: self.ring_size,
            engine,
            epoch,
            tick_period_ms: self.tick_ms.max(1),
            topology,
            session_pending_max: self.in_flight_max,
            intake,
            ..NodeConfig::default()
        };
        if !self.pin_blp {
            config.pins = ringfence_core::pipeline::Pins::none();
        }
        // Compact: the event loop runs egress itself (no extra thread on a small machine). A
        // standby's answers go mostly to its follower, which waits on them: they get a thread
        // that delivers them as soon as the journal made the records durable.
        config.egress = match (config.resolved_topology(), intake) {
            (Topology::Compact | Topology::Stepped, Intake::Sequencer) => EgressDriver::Polled,
            _ => EgressDriver::Thread,
        };
        config.validate().map_err(|e| format!("[node] {e}"))?;
        Ok(config)
    }
}

impl FileConfig {
    /// The `[engine]` settings the file gives.
    pub(crate) fn engine_config(&self) -> EngineConfig {
        self.engine.to_config()
    }
}

/// `[engine]`: capacities and limits, allocated at start; changed only at a clean stop, by
/// `ringfence journal reconfigure`, and the same on both nodes of a pair (recovery and the replication handshake refuse others).
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct EngineSection {
    shard: u16,
    skus_max: u32,
    orders_max: u32,
    coupons_max: u32,
    batches_max: u32,
    holdings_max: u32,
    request_keys_max: u32,
    request_key_window_ms: u64,
    request_keys_per_user_max: u16,
    orders_per_user_max: u16,
    order_qty_max: u32,
}

impl Default for EngineSection {
    fn default() -> Self {
        let d = EngineConfig::default();
        EngineSection {
            shard: d.shard,
            skus_max: d.skus_max,
            orders_max: d.orders_max,
            coupons_max: d.coupons_max,
            batches_max: d.batches_max,
            holdings_max: d.holdings_max,
            request_keys_max: d.request_keys_max,
            request_key_window_ms: d.request_key_window_ms,
            request_keys_per_user_max: d.request_keys_per_user_max,
            orders_per_user_max: d.orders_per_user_max,
            order_qty_max: d.order_qty_max,
        }
    }
}

impl EngineSection {
    fn to_config(&self) -> EngineConfig {
        EngineConfig {
            shard: self.shard,
            skus_max: self.skus_max,
            orders_max: self.orders_max,
            coupons_max: self.coupons_max,
            batches_max: self.batches_max,
            holdings_max: self.holdings_max,
            request_keys_max: self.request_keys_max,
            request_key_window_ms: self.request_key_window_ms,
            request_keys_per_user_max: self.request_keys_per_user_max,
            orders_per_user_max: self.orders_per_user_max,
            order_qty_max: self.order_qty_max,
        }
    }
}

/// Runs the node until a signal stops it.
pub fn run(args: &ServeArgs) -> ExitCode {
    // First, before any other thread starts: every thread then blocks the stop signals, and
    // only the signal thread takes them.
    if let Err(error) = crate::signals::take_stop_signals() {
        eprintln!("ringfence serve: error: starting the signal thread: {error}");
        return ExitCode::FAILURE;
    }
    let mut starting = None;
    let served = serve(args, &mut starting);
    if served.is_err()
        && let Some(storage) = starting.take()
    {
        release_refused(storage);
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ringfence serve: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Lets go of the data directory of a start refused after it was locked (recovery refused
/// the directory, a port in use, ...), removing the lock file if taking the lock made it: a
/// directory given by mistake (empty, or another program's) is not left holding a
/// `ringfence.lock`, while one a node ran in keeps its own.
///
/// Checking first instead would not cover these refusals: recovery reads the directory only
/// under the lock, and the ports are bound only once the node has recovered. Removing is safe
/// against another process taking the lock meanwhile: the file goes while the lock is held,
/// and a process granted the lock on it afterwards sees it is no longer the directory's file
/// and takes the lock again on a new one (`lock::DirLock::acquire`). Nothing is removed while
/// another handle of the directory is left in this process, since it might still write.
fn release_refused(storage: FileStorage) {
    let dir = storage.dir().to_path_buf();
    match storage.release_removing_new_lock() {
        Ok(true) => log(format_args!(
            "removed {}: this start made it, and the directory had none",
            dir.join(ringfence_journal::lock::LOCK_FILE).display()
        )),
        Ok(false) => {}
        Err(error) => log(format_args!("removing the lock file this start made: {error}")),
    }
}

fn load_config(args: &ServeArgs) -> Result<FileConfig, String> {
    let Some(path) = &args.config else { return Ok(FileConfig::default()) };
    read_config(path)
}

/// Reads and parses a config file (unknown keys are errors that name them).
pub(crate) fn read_config(path: &Path) -> Result<FileConfig, String> {
    let text = fs::read_to_string(path)
        .map_err(|e| format!("reading config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
}

/// The checks `serve` makes of a config file's values, as `serve` would make them started with
/// this file and no flags, reading the same environment (`ringfence config check`): durability,
/// engine capacities and the request-key window, the node's settings, the journal's segment
/// size, the network front's limits and addresses, the tokens and protected mode, replication
/// and coordination, and that this machine has the memory the engines need.
pub(crate) fn check_config(file: &FileConfig) -> Result<(), String> {
    let durability = file
        .node
        .durability
        .parse::<Durability>()
        .map_err(|e| format!("[node] durability: {e}"))?;
    file.node.snapshot_writer.parse::<WriterPriority>().map_err(|e| format!("[node] {e}"))?;
    let engine = file.engine.to_config();
    check_values(file, &engine, durability)?;
    file.server.validate().map_err(|e| e.to_string())?;
    let data_dir = data_dir(None, file);
    let listeners = [file.server.listen, file.server.http];
    check_tokens(None, file, &listeners, file.auth.open_client_commands, &data_dir)?;
    let flags = replication::ReplicationArgs::default();
    let replication = replication::settings(&flags, &file.replication, &engine, &data_dir)?;
    if replication::coordination_settings(&flags, &file.coordination)?.is_some() {
        replication::check_coordinated(replication.as_ref())?;
    }
    crate::memory::check_available(&engine, engines(file), crate::memory::LOWER_CAPACITIES)?;
    Ok(())
}

/// The data directory: `--data-dir` (`flag`), then the config file's, then `./ringfence-data`.
fn data_dir(flag: Option<&Path>, file: &FileConfig) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or(file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./ringfence-data"))
}

/// The shortest request-key window `serve` accepts: a client retrying after a timeout must
/// still find its key, or its retry is applied as a new command.
const REQUEST_KEY_WINDOW_MS_MIN: u64 = 1_000;

/// The checks of values `serve` and `config check` share beyond each part's own validation:
/// engine capacities, a request-key window long enough for retries, the node's settings, a
/// snapshot period, and the journal's segment size.
fn check_values(
    file: &FileConfig,
    engine: &EngineConfig,
    durability: Durability,
) -> Result<(), String> {
    engine.validate().map_err(|e| format!("[engine] {e}"))?;
    if engine.request_key_window_ms < REQUEST_KEY_WINDOW_MS_MIN {
        return Err(format!(
            "[engine] request_key_window_ms = {}: at least {REQUEST_KEY_WINDOW_MS_MIN}; a \
             shorter window forgets a request id before a client's retry arrives, and the retry \
             is applied again (a second order)",
            engine.request_key_window_ms
        ));
    }
    // The node's own settings (topology, in-flight bound), as a primary would take them.
    file.node.to_config(engine.clone(), Epoch(1), Intake::Sequencer)?;
    if file.node.snapshot_every_commands == Some(0) {
        return Err("[node] snapshot_every_commands = 0: at least 1 (a snapshot after that many \
                    journaled commands)"
            .to_owned());
    }
    if file.node.snapshots_kept == 0 {
        return Err("[node] snapshots_kept = 0: at least 1 (recovery starts from the newest \
                    snapshot, which is always kept)"
            .to_owned());
    }
    if file.node.tick_ms == 0 {
        return Err("[node] tick_ms = 0: at least 1 (how often, in ms, the timer looks for a \
                    payment deadline come due)"
            .to_owned());
    }
    let options = WriterOptions {
        segment_len: file.node.segment_bytes,
        durability,
        engine_config: engine.clone(),
    };
    options.validate().map_err(|e| format!("[node] segment_bytes: {e}"))
}

/// Engines a node with this configuration builds: its own, and the snapshot writer's shadow of
/// the same size under periodic snapshots.
fn engines(file: &FileConfig) -> u64 {
    if file.node.snapshot_every_commands.is_some() { 2 } else { 1 }
}

/// Runs the node until it stops. Once the directory is locked, `starting` holds a handle of
/// it until the listeners are open: a refusal before then is a start refused
/// ([`release_refused`]), one after it a node that ran.
fn serve(args: &ServeArgs, starting: &mut Option<FileStorage>) -> Result<(), String> {
    log(format_args!("ringfence {}", crate::version_text()));
    let mut file = load_config(args)?;
    if let Some(topology) = &args.topology {
        file.node.topology.clone_from(topology);
    }
    let data_dir = data_dir(args.data_dir.as_deref(), &file);
    // Values first, so a refused configuration leaves no trace in the directory.
    let durability_text = args.durability.clone().unwrap_or(file.node.durability.clone());
    let durability: Durability = durability_text.parse()?;
    let engine_config = file.engine.to_config();
    check_values(&file, &engine_config, durability)?;
    let mut server_config = file.server.clone();
    server_config.listen = args.listen.or(server_config.listen);
    server_config.http = args.http.or(server_config.http);
    server_config.allowed_hosts.extend(args.http_allowed_hosts.iter().cloned());
    server_config.validate().map_err(|e| e.to_string())?;
    let snapshot_writer: WriterPriority =
        file.node.snapshot_writer.parse().map_err(|e| format!("[node] {e}"))?;
    let listeners = [server_config.listen, server_config.http];
    let open = args.open_client_commands || file.auth.open_client_commands;
    let tokens =
        check_tokens(args.admin_token_file.as_deref(), &file, &listeners, open, &data_dir)?;
    let mut replication =
        replication::settings(&args.replication, &file.replication, &engine_config, &data_dir)?;
    let coordination = replication::coordination_settings(&args.replication, &file.coordination)?;
    if coordination.is_some() {
        replication::check_coordinated(replication.as_ref())?;
    }
    crate::memory::check_available(
        &engine_config,
        engines(&file),
        crate::memory::LOWER_CAPACITIES,
    )?;
    // Before anything else touches the directory: one writer at a time, held until we exit.
    let storage = lock_data_dir(&data_dir, file.node.archive_dir.as_deref())?
        .with_named_files(&named_files(args, &file));
    *starting = Some(storage.clone());
    let (admin, new_token) = admin_token(tokens.admin, &data_dir)?;
    let mut role_tokens = Vec::with_capacity(tokens.roles.len());
    for (role, token, source) in tokens.roles {
        log(format_args!("{} token from {source}", role.name()));
        role_tokens.push((role, token));
    }
    // Read again under the lock (it may have changed since the check), or made only now: it
    // too must differ from every role's.
    distinct_tokens(&admin, &role_tokens)?;
    log_roles(&role_tokens, &listeners, open);
    server_config.admin_token = Some(admin);
    server_config.role_tokens = role_tokens;

    log(format_args!("data directory {} (journal durability {durability})", data_dir.display()));
    let options = WriterOptions {
        segment_len: file.node.segment_bytes,
        durability,
        engine_config: engine_config.clone(),
    };
    if let Some(replication) = replication.as_mut() {
        replication.config.answers_after_sync = durability == Durability::Batch;
    }
    let coordinated =
        coordinate(coordination, (&storage, &options), replication.as_mut(), server_config.http)?;
    let witnessed = coordinated.is_some();
    let (recovered, end) = recover_for_role(&storage, &options, replication.as_ref(), witnessed)?;
    if let Some(new_token) = new_token {
        new_token.write()?;
    }
    warn_of_rollback(&data_dir);
    warn_of_foreign(&data_dir, &recovered.report.foreign_entries);
    let policy = SnapshotPolicy {
        every_commands: file.node.snapshot_every_commands,
        keep: file.node.snapshots_kept.max(1),
        writer: snapshot_writer,
    };
    let dir = recovered.writer.data_dir().clone();
    let snapshotter = Snapshotter::start(dir.clone(), policy.clone(), engine_config.clone())
        .map_err(|e| format!("starting the snapshot writer: {e}"))?;
    let when = policy
        .every_commands
        .map_or("snapshots on request".to_owned(), |n| format!("a snapshot every {n} commands"));
    log(format_args!("{when}, {} kept, writer at {} priority", policy.keep, policy.writer));
    let mut epoch: Epoch = recovered.epochs.current;
    if let Some(Coordinated { decided: Decided::Primary { leader, .. }, .. }) = &coordinated {
        // The epoch taken with the leader key is stored before the node journals in it.
        // The record it took the key with says no standby is in sync.
        epoch = Epoch(leader.epoch);
        take_office(&dir, epoch).map_err(|e| format!("taking office in epoch {epoch}: {e}"))?;
    } else if coordinated.is_none() && replication.as_ref().is_none_or(|r| r.role == Role::Primary)
    {
        // Without a witness, every run of a primary, or of a node alone, sequences in an epoch
        // of its own: a record lost in a power cut, or dropped by `journal truncate`, is
        // replaced by one of another epoch, which a downstream loader's `--after-epoch` tells
        // apart from the one it holds.
        epoch = start_primary_run(&dir).map_err(|e| format!("storing this run's epoch: {e}"))?;
        let who = if replication.is_some() { "primary: " } else { "" };
        log(format_args!("{who}this run sequences in epoch {epoch}"));
    }
    let standby = replication.as_ref().is_some_and(|r| r.role != Role::Primary);
    let intake = if standby { Intake::Replica } else { Intake::Sequencer };
    let node_config = file.node.to_config(engine_config, epoch, intake)?;
    server_config.in_flight_max =
        server_config.in_flight_max.min(node_config.session_pending_max as usize);
    let snapshot_stats = snapshotter.stats_handle();
    let (hook, watch) = HashWatch::new(snapshotter, &recovered.engine);
    let primary_http = replication.as_ref().and_then(|r| r.primary_http.clone());
    // One clock for the node and its replication: egress checks the lease deadline that
    // replication sets against it.
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let control = replication.map(|Replication { config, role, .. }| {
        let last = (Sequence(recovered.next_sequence.0 - 1), end.last_epoch);
        Control::new(config, role, last, Box::new(dir.clone()), Arc::clone(&clock))
    });
    let (engine, next_sequence, mut journal) =
        (recovered.engine, recovered.next_sequence, recovered.writer);
    // Starting a segment then waits for its header and listing only, not its creation.
    journal
        .prepare_segments_ahead(DISK_CHECK_EVERY)
        .map_err(|e| format!("preparing the journal's next segment: {e}"))?;
    let started = match &control {
        Some(control) => {
            let replicator = control.link().stage();
            let parts = NodeParts { engine, next_sequence, journal, replicator, hook, clock };
            Node::start_parts(node_config.clone(), parts)
        }
        None => {
            let replicator = NoReplicator::default();
            let parts = NodeParts { engine, next_sequence, journal, replicator, hook, clock };
            Node::start_parts(node_config.clone(), parts)
        }
    };
    let node = started.map_err(|e| format!("starting the node: {e}"))?;
    let shift_ms = node.time_shift_ms();
    if shift_ms >= 1_000 {
        log(format_args!(
            "node: this machine's clock reads {shift_ms} ms before the journal's last command; \
             commands are stamped from that command on, so that time does not stand still \
             until the clock catches up. Check the clock (NTP)"
        ));
    }
    if let Some(control) = &control {
        control.start(&node).map_err(|e| format!("starting replication: {e}"))?;
    }
    // Before the listeners open: a primary's lease deadline is in force before any write.
    let coordination = match (coordinated, &control) {
        (Some(Coordinated { startup, me, decided }), Some(control)) => {
            let rejoin = Box::new(|reason: &str| replication::restart_as_candidate(reason));
            let control = Arc::clone(control);
            let startup = startup.resume()?;
            let started = driver::start(startup, (me, decided), control, node.promoter(), rejoin);
            Some(Arc::new(started.map_err(|e| format!("starting coordination: {e}"))?))
        }
        (None, Some(control)) => {
            if let Role::Standby { .. } = control.role() {
                // No pilot restarts it: a standby that diverged, or fell behind retention,
                // restarts itself and rejoins its primary at start.
                // Restarts in a row back off (`RejoinSeries`).
                let series = replication::RejoinSeries::of_this_run();
                let hold = series.hold();
                control.rejoin_with(Box::new(move |reason: &str| series.restart(reason)), hold);
            }
            None
        }
        _ => None,
    };
    match node.topology() {
        // No stage thread waits, and the event loop wakes for a payment deadline when it is due.
        Topology::Stepped => log(format_args!(
            "node: inline topology (the event loop runs the processor), ring of {} slots, \
             deadlines checked when due",
            node_config.ring_size
        )),
        topology => log(format_args!(
            "node: {} topology, ring of {} slots, {} wait, deadlines checked every {} ms",
            topology.name(),
            node_config.ring_size,
            node_config.wait.name(),
            node_config.tick_period_ms
        )),
    }
    let journal = format!("{} (durability {durability})", data_dir.display());
    let segments = dir.clone();
    let rollback_of = data_dir.clone();
    let snapshot_every = policy.every_commands;
    let on_stop: ringfence_ingress::OnNodeStop =
        Box::new(move |engine: &Engine, through: Sequence| {
            final_snapshot(&dir, &policy, engine, through);
        });
    let metrics: MetricsWriter = Box::new(move |out: &mut String| {
        write_build_info(out);
        write_counters(&snapshot_stats.get().counters(), out);
        if let Some(every) = snapshot_every {
            // Beside `ringfence_snapshot_through`: how far behind the journal the newest
            // snapshot may fall before it is late.
            let help = "Commands between periodic snapshots ([node] snapshot_every_commands)";
            write_counters(&[("ringfence_snapshot_every_commands", help, every)], out);
        }
        write_counters(&segments.segment_starts().counters(), out);
        if let Some(room) = segments.disk_room() {
            write_counters(&room.gauges(), out);
        }
        // Listed at each scrape: the operator deletes the files once handled.
        if let Ok(files) = crate::rollback::pending(&rollback_of) {
            let help = "Files in rollback/ of records dropped from the journal, to reconcile";
            let files = u64::try_from(files.len()).unwrap_or(u64::MAX);
            write_counters(&[("ringfence_rollback_files", help, files)], out);
        }
    });
    let replication_handle = control.as_ref().map(|control| {
        let handle = ControlHandle(Arc::clone(control), coordination.clone());
        Arc::new(handle) as Arc<dyn ReplicationControl>
    });
    // A stop wins over a restart to rejoin that comes during it. Watched before the listeners
    // open: a SIGTERM sent once anything answers stops the node cleanly, the server's stopper
    // handed over once it exists.
    let held = control.clone();
    let stopper = watch_signals(move || held.iter().for_each(|control| control.hold_rejoin()));
    let handle = ringfence_ingress::start(server_config, move |waker| {
        let backend = NodeBackend::new(node, waker, watch, epoch, journal, Some(on_stop))?;
        let backend = match replication_handle {
            Some(control) => backend.with_replication(control, primary_http),
            None => backend,
        };
        Ok(backend.with_metrics(metrics))
    })
    .map_err(|e| format!("starting the listeners: {e}"))?;
    stopper.hand_over(handle.stopper());
    if let Some(addr) = handle.binary_addr() {
        log(format_args!("binary protocol v1 listening on {addr}"));
    }
    if let Some(addr) = handle.http_addr() {
        log(format_args!("HTTP API listening on http://{addr}"));
    }
    // The node serves: from here on this is a directory a node ran in.
    *starting = None;
    let joined = handle.join().map_err(|e| format!("event loop: {e}"));
    if let Some(coordination) = &coordination {
        coordination.stop();
    }
    if let Some(control) = &control {
        control.stop();
    }
    joined?;
    log(format_args!("stopped"));
    // The directory lock goes with the last storage handle, here at the very end.
    drop(storage);
    Ok(())
}

/// With `--etcd` (`config`, its settings): reads where the journal ends, then lets the witness
/// decide this node's role (`replication::coordinate`). `None` without etcd.
fn coordinate(
    config: Option<CoordinationConfig>,
    (storage, options): (&FileStorage, &WriterOptions),
    replication: Option<&mut Replication>,
    http: Option<SocketAddr>,
) -> Result<Option<Coordinated>, String> {
    let Some(config) = config else {
        return Ok(None);
    };
    let replication = replication::check_coordinated(replication)?;
    let recovered = recover_logged(storage, options.clone())?;
    let last = Sequence(recovered.next_sequence.0 - 1);
    let floor = recovered.epochs.current.0.max(recovered.epochs.promised.0);
    let dir = recovered.writer.data_dir();
    note_power_loss(dir, replication.config.answers_after_sync, options.durability)?;
    let catching_up = dir.catching_up();
    drop(recovered);
    replication::coordinate(config, replication, http, (last, floor, catching_up)).map(Some)
}

/// Before a node stands for the leader key, or starts as a standby: on a journal that answers
/// before it syncs, a machine restart since the directory was last used may have taken records
/// the node acknowledged; then the directory is marked catching up
/// (`control::before_candidacy`), and logged.
fn note_power_loss(
    dir: &DataDir<FileStorage>,
    answers_after_sync: bool,
    durability: Durability,
) -> Result<(), String> {
    // Only a journal that answers before it syncs needs the boot; without the kernel's boot
    // id every start counts as one after a reboot.
    let rebooted = !answers_after_sync
        && match machine_boot() {
            Some(boot) => {
                dir.note_boot(&boot).map_err(|e| format!("recording the machine's boot: {e}"))?
            }
            None => true,
        };
    let marked = before_candidacy(dir, answers_after_sync, rebooted)
        .map_err(|e| format!("marking the data directory as catching up: {e}"))?;
    if let Some(why) = marked {
        log(format_args!(
            "{why}, its journal answers before it syncs (durability {durability}) and the \
             machine restarted since it last ran: it may have lost records it acknowledged, so \
             it takes over only after catching up with a primary"
        ));
    }
    Ok(())
}

/// The kernel's id of this boot of the machine, if it can be read.
fn machine_boot() -> Option<String> {
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_owned()).filter(|id| !id.is_empty())
}

/// `ringfence_build_info`: the release and the formats and protocols it speaks as labels, for
/// a dashboard to show and an alert to compare across the nodes of a pair.
fn write_build_info(out: &mut String) {
    use std::fmt::Write as _;
    let name = "ringfence_build_info";
    let help = "Always 1; the labels name the release and what it reads and speaks.";
    ringfence_ingress::metrics::header(out, name, help, "gauge");
    let _ = write!(out, "{name}{{version=\"{}\"", env!("CARGO_PKG_VERSION"));
    for (label, version) in crate::formats_and_protocols() {
        let _ = write!(out, ",{label}=\"{version}\"");
    }
    let _ = writeln!(out, "}} 1");
}

/// Counters and gauges (a name ending in `_total` is a counter) in Prometheus text.
fn write_counters<V: std::fmt::Display>(counters: &[(&str, &str, V)], out: &mut String) {
    use std::fmt::Write as _;
    for (name, help, value) in counters {
        let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
        ringfence_ingress::metrics::header(out, name, help, kind);
        let _ = writeln!(out, "{name} {value}");
    }
}

/// Creates the data directory if needed and takes its exclusive lock (refused, naming the
/// holder's pid, if another process writes it); retired segments go to `archive` if given.
fn lock_data_dir(data_dir: &Path, archive: Option<&Path>) -> Result<FileStorage, String> {
    fs::create_dir_all(data_dir)
        .map_err(|e| format!("creating data directory {}: {e}", data_dir.display()))?;
    let storage = FileStorage::open_exclusive(data_dir).map_err(|e| e.to_string())?;
    Ok(match archive {
        Some(archive) => storage.with_archive(archive),
        None => storage,
    })
}

/// The files the node's configuration names: its config file, token files and cluster
/// secret. One kept in the data directory is the node's own there, not someone else's file.
fn named_files<'a>(args: &'a ServeArgs, file: &'a FileConfig) -> Vec<&'a Path> {
    let roles = [AccessRole::Orders, AccessRole::Payments, AccessRole::Read];
    let admin = args.admin_token_file.as_deref().or(file.admin_token_file.as_deref());
    let secret = replication::secret_file(&args.replication, &file.replication);
    let tokens = roles.into_iter().map(|role| file.auth.token_file(role));
    [args.config.as_deref(), admin, secret].into_iter().chain(tokens).flatten().collect()
}

/// Recovers the node from the data directory and logs what recovery did and found.
/// Recovers the journal; a standby first asks its primary whether their journals agree, and
/// drops a tail the primary never received, or takes the primary's snapshot when the records
/// it lacks were retired, recovering again until they agree. Returns the recovered journal and
/// where it ends (a standby started from a snapshot ends at the snapshot's last record).
fn recover_for_role(
    storage: &FileStorage,
    options: &WriterOptions,
    replication: Option<&Replication>,
    witnessed: bool,
) -> Result<(Recovered<FileStorage>, JournalEnd), String> {
    // Each round cuts the journal or replaces it; two rounds drop a diverged epoch
    // (`position::divergence_cut`), so a few rounds suffice.
    const ROUNDS_MAX: usize = 8;
    let mut from_snapshot = None;
    // The round before: where the journal ended and what the primary said to keep.
    let mut told_before = None;
    let mut boot_noted = false;
    for _ in 0..ROUNDS_MAX {
        let recovered = recover_logged(storage, options.clone())?;
        let (next, last_epoch) = (recovered.next_sequence, recovered.last_epoch);
        let snapshot_end = replication::recovered_snapshot_end(&recovered.report);
        let end = replication::effective_end(next, last_epoch, from_snapshot.or(snapshot_end));
        let Some(Replication { config, role: Role::Standby { primary }, .. }) = replication else {
            return Ok((recovered, end));
        };
        if !boot_noted {
            // A standby under `none` may have lost records it acknowledged (with a witness,
            // `coordinate` noted this boot already, and this changes nothing).
            let dir = recovered.writer.data_dir();
            note_power_loss(dir, config.answers_after_sync, options.durability)?;
            boot_noted = true;
        }
        let promised = recovered.epochs.promised;
        match replication::check_journal(config, primary, end, promised)? {
            JournalCheck::Agrees => return Ok((recovered, end)),
            JournalCheck::Diverged(keep_through, epoch) => {
                // Promised before anything is dropped: promoted later, this node takes an
                // epoch above the primary's.
                standby::promise_epoch(recovered.writer.data_dir(), epoch)?;
                let at = (end.last_sequence, end.last_epoch);
                let cut = match DirIndex::over(storage.clone(), end.last_sequence) {
                    Ok(mut own) => {
                        position::divergence_cut(told_before, at, keep_through, &mut own)
                    }
                    Err(error) => {
                        log(format_args!("reading this journal's epochs: {error}"));
                        keep_through
                    }
                };
                told_before = Some((at, keep_through));
                if cut < keep_through {
                    log(format_args!(
                        "the primary holds no record of epoch {} at or below {}: none of this \
                         journal's records of that epoch is the primary's",
                        end.last_epoch, end.last_sequence
                    ));
                }
                // The journal is closed before it is cut.
                drop(recovered);
                if !replication::drop_tail(storage, end, cut)? {
                    // The primary's epoch, promised above, is at least its snapshot's.
                    let fetched = replication::fetch_primary_snapshot(
                        storage,
                        config,
                        primary,
                        &options.engine_config,
                        promised.max(epoch),
                    )?;
                    // The tail after the cut is kept; the snapshot may show more was never
                    // the primary's (told one record at a time, this is the first round).
                    replication::keep_unagreed(storage, &fetched, end, Some(cut))?;
                    let installed = replication::install_snapshot(storage, &fetched, end)?;
                    from_snapshot = Some(installed);
                }
            }
            JournalCheck::NeedsSnapshot(epoch) => {
                // The primary that answered proved the secret and leads in `epoch`: promised
                // before the fetch, which carries the promise, so that no older primary
                // (deposed since, reached at the same address) can serve it.
                standby::promise_epoch(recovered.writer.data_dir(), epoch)?;
                let fetched = match replication::fetch_primary_snapshot(
                    storage,
                    config,
                    primary,
                    &options.engine_config,
                    promised.max(epoch),
                ) {
                    Ok(fetched) => fetched,
                    // With etcd the pilot restarts a standby refused again without backing
                    // off: the process exits, and its supervisor's limits apply.
                    Err(error) if witnessed => return Err(error),
                    Err(error) => {
                        // The primary answered the join a moment ago, and may be restarting,
                        // or its snapshot was refused (damaged at rest there, say, until a
                        // newer one replaces it). Nothing was dropped: the node starts on this journal as a standby
                        // that retries, and restarts to fetch again once refused again
                        // (`RejoinSeries` backs the restarts off).
                        log(format_args!(
                            "{error}; starting as a standby on this journal and retrying"
                        ));
                        return Ok((recovered, end));
                    }
                };
                // The snapshot holds records of its last epoch: promised before they are
                // taken, as every record is (a join never says it holds an epoch above
                // its promise).
                standby::promise_epoch(recovered.writer.data_dir(), fetched.through_epoch)?;
                // The journal is closed before the snapshot replaces it, and what of it was
                // never the primary's is kept first.
                drop(recovered);
                replication::keep_unagreed(storage, &fetched, end, None)?;
                let installed = replication::install_snapshot(storage, &fetched, end)?;
                from_snapshot = Some(installed);
            }
        }
    }
    Err(format!("the journal still disagrees with the primary after {ROUNDS_MAX} rounds"))
}

/// Warns at every start while `rollback/` holds records dropped from the journal: after an
/// async failover or a truncation, acknowledged writes may be among them, and only the
/// operator can reconcile them.
fn warn_of_rollback(data_dir: &Path) {
    let dir = data_dir.join(crate::rollback::ROLLBACK_DIR);
    match crate::rollback::pending(data_dir) {
        Ok(names) if names.is_empty() => {}
        Ok(names) => tracing::warn!(
            target: "ringfence",
            "{} holds {} of records dropped from this journal ({}): acknowledged writes may be \
             among them; reconcile them with clients by request id, then delete {}",
            dir.display(),
            if names.len() == 1 { "1 file".to_owned() } else { format!("{} files", names.len()) },
            names.join(", "),
            if names.len() == 1 { "it" } else { "them" }
        ),
        Err(error) => tracing::warn!(
            target: "ringfence",
            "could not list {} for records dropped from this journal: {error}",
            dir.display()
        ),
    }
}

/// Warns, once a start, of entries beside the journal that are not the node's: the journal is
/// whole and the node serves, but a data directory shared with other files is one that a
/// cleanup meant for them may damage. (Without a journal, recovery refuses them instead.)
fn warn_of_foreign(data_dir: &Path, foreign: &[String]) {
    if foreign.is_empty() {
        return;
    }
    tracing::warn!(
        target: "ringfence",
        "{} holds, beside its journal, {}: the node serves; keep other files out of the data \
         directory",
        data_dir.display(),
        ringfence_journal::datadir::foreign_named(foreign)
    );
}

fn recover_logged(
    storage: &FileStorage,
    options: WriterOptions,
) -> Result<Recovered<FileStorage>, String> {
    let started = std::time::Instant::now();
    let recovered = recover_from(storage.clone(), options).map_err(|e| format!("recovery: {e}"))?;
    let took = started.elapsed().as_secs_f64();
    log(format_args!("recovered in {took:.2} s: {}", recovered.report));
    if let Some(torn) = &recovered.report.torn_tail {
        // The node had not stopped cleanly (recovery refuses a torn tail after a clean stop),
        // so this is a write a crash cut off, never acknowledged. Recovery refuses one flipped
        // bit as rot, but wider damage at rest to the last record after a crash reads the
        // same. Say so loudly, once.
        tracing::warn!(
            target: "ringfence",
            "cleared {} bytes after the last intact record, in {} at byte offset {} \
             (sequence {}, {}): the node had not stopped cleanly, so this is a record cut off by \
             a crash or power loss, never acknowledged. Damage at rest to more than one bit of \
             the last record after a crash reads the same: if in doubt, compare with the \
             standby's journal",
            torn.bytes_cleared,
            torn.file,
            torn.offset,
            torn.sequence,
            torn.damage
        );
    }
    log(format_args!(
        "epoch {} (promised {}), from the epoch file",
        recovered.epochs.current, recovered.epochs.promised
    ));
    let status = recovered.engine.status();
    log(format_args!(
        "state at sequence {}: {} SKUs, {} orders kept, state hash {:016x}",
        status.last_sequence, status.skus, status.orders, status.running_hash
    ));
    Ok(recovered)
}

/// On clean shutdown, after the last command: one more snapshot so the next start replays
/// nothing, then retention.
fn final_snapshot(
    dir: &DataDir<FileStorage>,
    policy: &SnapshotPolicy,
    engine: &Engine,
    through: Sequence,
) {
    match snapshot::write_now(dir.storage(), engine, through) {
        Ok(meta) => {
            log(format_args!("final snapshot {} through {}", meta.file.display(), meta.through));
            if let Err(error) = snapshot::apply_retention(dir, policy) {
                log(format_args!("snapshot retention failed: {error}"));
            }
        }
        Err(error) => {
            log(format_args!("final snapshot failed (the journal still holds everything): {error}"))
        }
    }
}

/// Stops the node at the first SIGINT or SIGTERM (calling `stopping` first), and exits at
/// the second; before this, a stop signal ends the node as it starts ([`crate::signals`]).
/// The server is stopped once its stopper is handed over, at once if the stop came first.
fn watch_signals(stopping: impl FnOnce() + Send + 'static) -> StopperSlot {
    let slot = StopperSlot(Arc::new(Mutex::new((None, false))));
    let asked = slot.clone();
    crate::signals::on_stop(move |signal| {
        log(format_args!("signal {signal}: stopping (answering requests in flight)"));
        stopping();
        let mut slot = asked.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.1 = true;
        if let Some(stopper) = &slot.0 {
            stopper.stop();
        }
    });
    slot
}

/// Where the server's stopper goes once the server exists, beside whether a stop was asked
/// before it did: one lock, so that a stop is never missed between the two.
#[derive(Clone)]
struct StopperSlot(Arc<Mutex<(Option<ringfence_ingress::Stopper>, bool)>>);

impl StopperSlot {
    fn hand_over(&self, stopper: ringfence_ingress::Stopper) {
        let mut slot = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.1 {
            stopper.stop();
        }
        slot.0 = Some(stopper);
    }
}

/// Shortest admin token `serve` accepts, in characters, not counting `=` padding.
const ADMIN_TOKEN_CHARS_MIN: usize = 32;

/// The token rule every role's token follows, up to the file a new token is written to:
/// messages end it with the token's own file and where to name it.
const TOKEN_RULE_HEAD: &str = "a token must be at least 32 characters of ASCII letters, \
     digits and `-._~+/` (`=` padding at the end allowed, not counted). This is a length \
     check, not an entropy measurement: make the token from random bytes, e.g. \
     `head -c 32 /dev/urandom | base64 > ";

/// The token rule, for messages about the admin token.
fn admin_token_rule() -> String {
    format!("{TOKEN_RULE_HEAD}admin.token`, then pass --admin-token-file admin.token")
}

/// The token rule, for messages about `role`'s token: where to put a good one. The
/// environment variable is read before the file (`from_env`: the weak one came from it).
fn role_token_rule(role: AccessRole, from_env: bool) -> String {
    let (name, env) = (role.name(), role_token_env(role));
    if from_env {
        return format!(
            "{TOKEN_RULE_HEAD}{name}.token`, then set {env} to it, or unset {env} (it is read \
             before [auth] {name}_token_file) and name the file there"
        );
    }
    format!(
        "{TOKEN_RULE_HEAD}{name}.token`, then name the file in [auth] {name}_token_file, or set {env}"
    )
}

/// Whether `token` follows the admin token rule: at least [`ADMIN_TOKEN_CHARS_MIN`] characters
/// of the RFC 6750 bearer-token alphabet (ASCII letters, digits, `-._~+/`), then optional `=`
/// padding. Every usual encoding of random bytes (hex, base64, base64url) fits the alphabet,
/// and the smallest of them, hex, carries 4 bits a character: 32 random characters carry at
/// least 128 bits. The rule measures length, not randomness: `aaaa…` passes.
fn admin_token_ok(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    body.len() >= ADMIN_TOKEN_CHARS_MIN
        && body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// The tokens a node would run with, checked ([`check_tokens`]): the admin token the
/// operator chose, if any, and each role's token, each with where it came from.
pub(crate) struct Tokens {
    admin: Option<(String, String)>,
    roles: Vec<(AccessRole, String, String)>,
}

/// The checks of tokens and listeners that `serve` and `config check` share, reading the
/// environment as `serve` does (`admin_token_file` is `--admin-token-file`'s): the admin token
/// the operator chose and every role's token follow the token rule; without a chosen admin
/// token the listeners are loopback (protected mode, checked first: its refusal says what is
/// missing in its own words); beyond loopback, role tokens or the operator's leave (`open`)
/// guard client commands; no two roles share a token. Logs nothing.
pub(crate) fn check_tokens(
    admin_token_file: Option<&Path>,
    file: &FileConfig,
    listeners: &[Option<SocketAddr>],
    open: bool,
    data_dir: &Path,
) -> Result<Tokens, String> {
    let admin = operator_token(admin_token_file, file)?;
    if let Some((token, source)) = &admin {
        if !admin_token_ok(token) {
            return Err(format!(
                "the admin token from {source} is too weak: {}",
                admin_token_rule()
            ));
        }
    } else {
        protected_mode(listeners, data_dir)?;
    }
    let roles = role_tokens(&file.auth)?;
    let bare: Vec<(AccessRole, String)> =
        roles.iter().map(|(role, token, _)| (*role, token.clone())).collect();
    client_commands_guard(listeners, &bare, open)?;
    // Without the operator's, serve's own token already in the directory is the admin's.
    let own = if admin.is_none() { own_admin_token(data_dir)? } else { None };
    if let Some(token) = admin.as_ref().map(|(token, _)| token).or(own.as_ref()) {
        distinct_tokens(token, &bare)?;
    }
    Ok(Tokens { admin, roles })
}

/// Serve's own admin token, `<data-dir>/admin.token`, if the file is there: it must follow
/// the admin token rule (a file the operator wrote by hand may not).
fn own_admin_token(data_dir: &Path) -> Result<Option<String>, String> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let token = read_token(&path)?;
    if !admin_token_ok(&token) {
        return Err(format!(
            "the admin token in {} is too weak (delete the file and serve generates a new one): \
             {}",
            path.display(),
            admin_token_rule()
        ));
    }
    Ok(Some(token))
}

/// The admin token: the operator's (`chosen`, checked by [`check_tokens`]) if set. Otherwise
/// serve's own, `<data-dir>/admin.token`; with it serve runs in protected mode, which
/// [`check_tokens`] enforced. When that file does not exist, a token is generated and
/// returned with the [`NewToken`] to write once the node's state is recovered. Either way the
/// token follows the admin token rule.
fn admin_token(
    chosen: Option<(String, String)>,
    data_dir: &Path,
) -> Result<(String, Option<NewToken>), String> {
    if let Some((token, source)) = chosen {
        assert!(admin_token_ok(&token), "an operator's admin token checked before use");
        log(format_args!("admin token from {source}"));
        return Ok((token, None));
    }
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let (token, new_token) = if let Some(token) = own_admin_token(data_dir)? {
        log(format_args!("admin token in {}", path.display()));
        (token, None)
    } else {
        let token = generate_token()?;
        assert!(admin_token_ok(&token), "a generated token follows the rule");
        (token.clone(), Some(NewToken { path, token }))
    };
    log(format_args!(
        "protected mode: the admin token is serve's own, so it listens on loopback addresses \
         only (configure a token to listen on others)"
    ));
    Ok((token, new_token))
}

/// Serve's own admin token, generated this run, to be written to `<data-dir>/admin.token`
/// once recovery has accepted the directory (and before the listeners open, so the operator
/// can read it): a start refused on the directory (damage, a segment missing) leaves no token
/// behind in it. A token file that was there before is only ever read.
struct NewToken {
    path: PathBuf,
    token: String,
}

impl NewToken {
    /// Writes the token with mode 0600; refused if a file appeared there meanwhile (serve
    /// holds the directory's lock, so only a hand could have put it there).
    fn write(self) -> Result<(), String> {
        assert!(admin_token_ok(&self.token), "a generated token follows the rule");
        write_private(&self.path, &self.token)?;
        log(format_args!("generated an admin token into {} (mode 0600)", self.path.display()));
        Ok(())
    }
}

/// The admin token the operator configured, if any, and where it came from:
/// `--admin-token-file` (`flag`), then `RINGFENCE_ADMIN_TOKEN`, then the config file
/// (`admin_token`, `[server] admin_token`, `admin_token_file`).
fn operator_token(
    flag: Option<&Path>,
    file: &FileConfig,
) -> Result<Option<(String, String)>, String> {
    if let Some(path) = flag {
        return Ok(Some((read_token(path)?, path.display().to_string())));
    }
    if let Ok(token) = std::env::var("RINGFENCE_ADMIN_TOKEN") {
        if !token.trim().is_empty() {
            return Ok(Some((token.trim().to_owned(), "RINGFENCE_ADMIN_TOKEN".into())));
        }
    }
    let configured = file.admin_token.as_deref().or(file.server.admin_token.as_deref());
    if let Some(token) = configured.filter(|t| !t.trim().is_empty()) {
        return Ok(Some((token.trim().to_owned(), "the config file".into())));
    }
    if let Some(path) = &file.admin_token_file {
        return Ok(Some((read_token(path)?, path.display().to_string())));
    }
    Ok(None)
}

/// The environment variable holding `role`'s token.
fn role_token_env(role: AccessRole) -> String {
    format!("RINGFENCE_{}_TOKEN", role.name().to_ascii_uppercase())
}

/// The tokens of the non-admin roles, with where each came from: each from its environment
/// variable, else its file in `[auth]`; each must follow the token rule.
fn role_tokens(auth: &AuthSection) -> Result<Vec<(AccessRole, String, String)>, String> {
    let mut tokens = Vec::new();
    for role in [AccessRole::Orders, AccessRole::Payments, AccessRole::Read] {
        let env = role_token_env(role);
        let from_env = std::env::var(&env).ok().filter(|t| !t.trim().is_empty());
        let (token, source, env_set) = match (from_env, auth.token_file(role)) {
            (Some(token), _) => (token.trim().to_owned(), env, true),
            (None, Some(path)) => (read_token(path)?, path.display().to_string(), false),
            (None, None) => continue,
        };
        if !admin_token_ok(&token) {
            return Err(format!(
                "the {} token from {source} is too weak: {}",
                role.name(),
                role_token_rule(role, env_set)
            ));
        }
        tokens.push((role, token, source));
    }
    Ok(tokens)
}

/// No two roles share a token: the server could not tell which role a caller has.
fn distinct_tokens(admin: &str, roles: &[(AccessRole, String)]) -> Result<(), String> {
    let all: Vec<(AccessRole, &str)> = std::iter::once((AccessRole::Admin, admin))
        .chain(roles.iter().map(|(role, token)| (*role, token.as_str())))
        .collect();
    for (i, (role, token)) in all.iter().enumerate() {
        if let Some((other, _)) = all[i + 1..].iter().find(|(_, t)| t == token) {
            return Err(format!(
                "the {} and {} roles have the same token: give each role its own \
                 (`head -c 32 /dev/urandom | base64` makes one)",
                role.name(),
                other.name()
            ));
        }
    }
    Ok(())
}

/// Says which calls need a token, and, where client commands are open beyond loopback, to
/// whom.
fn log_roles(roles: &[(AccessRole, String)], listeners: &[Option<SocketAddr>], open: bool) {
    if !roles.is_empty() {
        let names: Vec<&str> = roles.iter().map(|(role, _)| role.name()).collect();
        log(format_args!("roles enforced: every call needs a token (admin, {})", names.join(", ")));
        return;
    }
    log(format_args!("roles: only the admin token, so buyer commands and reads need no token"));
    let exposed = exposed(listeners);
    if open && !exposed.is_empty() {
        log(format_args!(
            "buyer commands and reads are open to anyone who reaches {} (--open-client-commands)",
            exposed.join(", ")
        ));
    }
}

/// A node with only the admin token leaves buyer commands and reads open: beyond loopback
/// that needs the operator's acknowledgement (`open`); with role tokens the
/// acknowledgement contradicts the configuration.
fn client_commands_guard(
    listeners: &[Option<SocketAddr>],
    role_tokens: &[(AccessRole, String)],
    open: bool,
) -> Result<(), String> {
    if open && !role_tokens.is_empty() {
        return Err("--open-client-commands (or [auth] open_client_commands) contradicts the \
                    role tokens configured: with them every call needs a token. Drop one or \
                    the other"
            .into());
    }
    let exposed = exposed(listeners);
    if exposed.is_empty() || !role_tokens.is_empty() || open {
        return Ok(());
    }
    Err(format!(
        "protected mode: refusing to listen on {} (not loopback) with only the admin token: \
         buyer commands and reads would be open to anyone who reaches it. Configure role \
         tokens (RINGFENCE_ORDERS_TOKEN, RINGFENCE_PAYMENTS_TOKEN, RINGFENCE_READ_TOKEN, or \
         [auth] orders_token_file, payments_token_file, read_token_file), pass \
         --open-client-commands to accept it, or listen on loopback addresses only",
        exposed.join(", ")
    ))
}

/// The listeners that are not loopback addresses (the unspecified `0.0.0.0` and `::` listen
/// everywhere, so they count).
fn exposed(listeners: &[Option<SocketAddr>]) -> Vec<String> {
    listeners
        .iter()
        .flatten()
        .filter(|addr| !addr.ip().to_canonical().is_loopback())
        .map(ToString::to_string)
        .collect()
}

/// Protected mode, as Redis has it: with a token serve made itself rather than one the
/// operator chose, the binary and HTTP listeners must be loopback addresses (the unspecified
/// `0.0.0.0` and `::` listen everywhere, so they are refused too).
fn protected_mode(listeners: &[Option<SocketAddr>], data_dir: &Path) -> Result<(), String> {
    let exposed = exposed(listeners);
    if exposed.is_empty() {
        return Ok(());
    }
    let own = data_dir.join(ADMIN_TOKEN_FILE);
    let keep = if own.exists() {
        format!("; --admin-token-file {} keeps serve's own", own.display())
    } else {
        String::new()
    };
    Err(format!(
        "protected mode: refusing to listen on {} (not loopback) without an admin token the \
         operator chose. Configure one (--admin-token-file FILE, RINGFENCE_ADMIN_TOKEN, or \
         admin_token / admin_token_file in the config file; `head -c 32 /dev/urandom | base64 \
         > admin.token` makes one{keep}), or listen on loopback addresses only (127.0.0.1, ::1)",
        exposed.join(", "),
    ))
}

fn read_token(path: &Path) -> Result<String, String> {
    let token = fs::read_to_string(path)
        .map_err(|e| format!("reading token file {}: {e}", path.display()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(token.to_owned())
}

fn generate_token() -> Result<String, String> {
    let mut bytes = [0u8; 24];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| format!("reading /dev/urandom for an admin token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `token` to the new file `path`, mode 0600, whole or not at all: it is written and
/// synced under a temporary name, then linked into place (refused if `path` exists) and the
/// directory synced. A crash part way leaves no token file cut short, which the next start
/// would refuse as too weak.
fn write_private(path: &Path, token: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = path.file_name().and_then(|name| name.to_str()).unwrap_or("token");
    let temp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&temp);
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut file| {
            writeln!(file, "{token}")?;
            file.sync_all()
        })
        .map_err(|e| format!("writing {}: {e}", temp.display()))
        .and_then(|()| {
            fs::hard_link(&temp, path).map_err(|e| format!("creating {}: {e}", path.display()))
        });
    let _ = fs::remove_file(&temp);
    written?;
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| format!("syncing {}: {e}", dir.display()))
}

pub(crate) fn log(message: std::fmt::Arguments<'_>) {
    tracing::info!(target: "ringfence", "{message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_file_is_written_whole_once_with_owner_access_only() {
        // Goal: the generated token lands whole, mode 0600, with no temporary file left; a
        // file already there is refused and left as it was.
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("rf-write-private-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admin.token");
        write_private(&path, "first").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "first\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        let refused = write_private(&path, "second").unwrap_err();
        assert!(refused.contains("creating") && refused.contains("admin.token"), "{refused}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "first\n");
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from("admin.token")], "a temporary file stayed");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn auto_runs_a_primary_inline_on_two_cores_and_a_standby_never() {
        // Goal: `auto` picks the event loop for a primary's processor on one or two cores and
        // leaves larger machines to the node's rule (compact below six, else parallel); a
        // standby, whose records arrive on its follower's thread, runs compact.
        let section = NodeSection::default();
        let layout = |cores: usize, intake: Intake| {
            let config = section
                .to_config_on(cores, EngineConfig::default(), Epoch(1), intake)
                .expect("the defaults are valid");
            (config.topology, config.egress)
        };
        for cores in [1, 2] {
            let primary = layout(cores, Intake::Sequencer);
            assert_eq!(primary, (Some(Topology::Stepped), EgressDriver::Polled), "{cores} cores");
            let standby = layout(cores, Intake::Replica).0;
            assert_eq!(standby, Some(Topology::Compact), "{cores} cores");
        }
        // From three cores the node decides by its own threshold (compact below six).
        for cores in [3, 4, 8] {
            assert_eq!(layout(cores, Intake::Sequencer).0, None, "{cores} cores");
        }
        assert_eq!(NodeConfig::default().parallel_cores_min, 6);
        let inline = NodeSection { topology: "inline".into(), ..NodeSection::default() };
        let config = inline.to_config_on(64, EngineConfig::default(), Epoch(1), Intake::Sequencer);
        assert_eq!(config.unwrap().topology, Some(Topology::Stepped), "asked for, on any machine");
    }

    #[test]
    fn the_admin_token_rule_is_a_length_over_the_bearer_alphabet() {
        // Goal: 32 characters of the bearer alphabet pass (hex, base64 with padding,
        // base64url); shorter ones, padding counted as length, and other characters fail.
        assert!(admin_token_ok(&"0123456789abcdef".repeat(2)));
        assert!(admin_token_ok("q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80="));
        assert!(admin_token_ok("a-b_c.d~e+f/0123456789ABCDEFGHIJ"));
        assert!(!admin_token_ok(&"f".repeat(31)));
        assert!(!admin_token_ok(&format!("{}==", "f".repeat(30))), "padding does not count");
        assert!(!admin_token_ok(&format!("{} ", "f".repeat(32))));
        assert!(!admin_token_ok(&format!("{}!", "f".repeat(32))));
        assert!(!admin_token_ok(&format!("{}=f", "f".repeat(32))), "`=` only at the end");
        assert!(!admin_token_ok(&"é".repeat(32)));
        assert!(!admin_token_ok("secret"));
    }

    #[test]
    fn generated_tokens_follow_the_rule() {
        // Goal: the token serve generates (24 random bytes, 48 hex digits: 192 bits) is never
        // refused by its own rule.
        for _ in 0..64 {
            let token = generate_token().unwrap();
            assert_eq!(token.len(), 48);
            assert!(admin_token_ok(&token), "{token}");
        }
    }

    #[test]
    fn protected_mode_allows_loopback_listeners_only() {
        // Goal: loopback addresses (IPv4, IPv6, IPv4-mapped) and disabled listeners pass; the
        // unspecified addresses and any other address are refused, named in the message.
        let dir = Path::new("/nonexistent");
        let addr = |text: &str| Some(text.parse::<SocketAddr>().unwrap());
        let loopback = [addr("127.0.0.1:7001"), addr("[::1]:7080"), addr("[::ffff:127.0.0.2]:1")];
        assert_eq!(protected_mode(&loopback, dir), Ok(()));
        assert_eq!(protected_mode(&[None, None], dir), Ok(()));
        for exposed in ["0.0.0.0:7080", "[::]:7080", "10.0.0.5:7001", "[2001:db8::1]:1"] {
            let error = protected_mode(&[addr("127.0.0.1:7001"), addr(exposed)], dir).unwrap_err();
            assert!(error.starts_with("protected mode"), "{error}");
            assert!(error.contains(exposed), "{error}");
            assert!(!error.contains("127.0.0.1:7001"), "{error}");
        }
    }
}
