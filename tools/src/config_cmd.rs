//! `ringfence config example`, `ringfence config check FILE` and `ringfence defaults`: the
//! configuration file written out from the config types themselves, so a key added to them
//! appears here with its default without anyone remembering to add it.
//!
//! The values come from serialising `FileConfig::default()`; the comments from [`KEYS`]. A
//! key without a value of its own there (an optional path, a token, a default worked out at
//! start, which its description gives) is shown commented out with an example value. A test fails when a key of the types has no description here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::serve::{FileConfig, check_config, read_config};

/// `ringfence config …`.
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print a complete, commented configuration file: every key with its default.
    Example,
    /// Check a configuration file: TOML syntax, unknown keys, and the values `serve` checks
    /// before it starts. Exit status 0 when it would be accepted, 1 when not.
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

/// One documented key: its section (`""` for the top level), name, description, and for keys
/// without a default an example value in TOML.
struct Key {
    section: &'static str,
    name: &'static str,
    about: &'static str,
    example: Option<&'static str>,
}

const fn key(section: &'static str, name: &'static str, about: &'static str) -> Key {
    Key { section, name, about, example: None }
}

const fn unset(
    section: &'static str,
    name: &'static str,
    about: &'static str,
    example: &'static str,
) -> Key {
    Key { section, name, about, example: Some(example) }
}

/// The sections in the order the example writes them, each with a line on what it holds.
const SECTIONS: &[(&str, &str)] = &[
    ("", "Top level: where the node keeps its data, and the admin token."),
    ("auth", "Role tokens for the services in front of the node (see README: Tokens)."),
    ("server", "The network front: listeners, connection and request limits."),
    ("node", "The pipeline, journal, snapshots and timer."),
    (
        "engine",
        "Capacities and limits, allocated at start. The journal's records replay only under \
         the settings they were written with: a node refuses a data directory written with \
         others, and a primary a standby of others: change them at a clean stop with `ringfence \
         journal reconfigure`, and keep them the same on both nodes of a pair.",
    ),
    (
        "replication",
        "A hot standby. Flags override these: --role, --primary, --primary-http, \
         --replication-listen (listen), --cluster-secret-file, --cluster-id, --replication \
         (mode), --replication-timeout-ms (timeout_ms).",
    ),
    (
        "coordination",
        "Automatic failover with etcd as the witness (flags --etcd, --node-name, \
         --lease-ttl-s override these); see docs/failover.md.",
    ),
];

/// Every key, described. Keep one line per key; `config example` wraps nothing.
const KEYS: &[Key] = &[
    unset(
        "",
        "data_dir",
        "Data directory (journal, snapshots, admin.token); locked while the node runs. Default \
        ./ringfence-data.",
        "\"./ringfence-data\"",
    ),
    unset(
        "",
        "admin_token",
        "The admin bearer token itself (prefer admin_token_file or RINGFENCE_ADMIN_TOKEN). \
        Without one, serve generates <data_dir>/admin.token and stays on loopback.",
        "\"<at least 32 characters of letters, digits, -._~+/>\"",
    ),
    unset(
        "",
        "admin_token_file",
        "File holding the admin bearer token.",
        "\"/etc/ringfence/admin.token\"",
    ),
    unset(
        "auth",
        "orders_token_file",
        "Token of the `orders` role (reserve, cancel, complete, claim); RINGFENCE_ORDERS_TOKEN \
        wins.",
        "\"/etc/ringfence/orders.token\"",
    ),
    unset(
        "auth",
        "payments_token_file",
        "Token of the `payments` role (pay, refund); RINGFENCE_PAYMENTS_TOKEN wins.",
        "\"/etc/ringfence/payments.token\"",
    ),
    unset(
        "auth",
        "read_token_file",
        "Token of the `read` role (reads, /v1/node, /metrics); RINGFENCE_READ_TOKEN wins.",
        "\"/etc/ringfence/read.token\"",
    ),
    key(
        "auth",
        "open_client_commands",
        "With only the admin token: listen beyond loopback anyway, buyer commands and reads open \
        to all.",
    ),
    key(
        "server",
        "listen",
        "Binary protocol listener (remove the key to keep the default; beyond loopback only with \
        chosen tokens).",
    ),
    key("server", "http", "HTTP listener."),
    key(
        "server",
        "connections_max",
        "Connections open at once on each listener; at the limit the longest-idle one (between \
        requests or holding part of one) gives way, else the new one is refused.",
    ),
    key(
        "server",
        "connections_per_address_max",
        "Connections one source address may have open, both listeners together (IPv6 per /64).",
    ),
    key(
        "server",
        "idle_reclaim_after_ms",
        "How long a connection, idle or holding part of a request, must have been quiet before it \
        gives way to a new one at the limit.",
    ),
    key(
        "server",
        "in_flight_max",
        "Commands submitted and not yet answered, all connections together; beyond it: busy. \
        At most [node] in_flight_max applies.",
    ),
    key(
        "server",
        "connection_in_flight_max",
        "Commands in flight per connection; beyond it the connection's reading pauses.",
    ),
    key(
        "server",
        "address_in_flight_max",
        "Commands in flight per source address, all its connections together (IPv6 per /64); \
        at it, reading pauses for the whole address. At most half of in_flight_max applies.",
    ),
    key(
        "server",
        "outbound_max",
        "Bytes queued for one client; a client that lets more pile up unread is disconnected.",
    ),
    key(
        "server",
        "outbound_total_max",
        "Bytes queued for all clients together; beyond it the biggest holders are cut first.",
    ),
    key(
        "server",
        "rate_per_sec",
        "Requests per second per connection (token bucket), counting those submitted to the \
        node, queries included (not /health, /metrics, /v1/node, PING); 0 means unlimited.",
    ),
    key("server", "rate_burst", "Requests a connection may send at once after being quiet."),
    key(
        "server",
        "address_rate_per_sec",
        "Requests per second per source address (token bucket; beyond it: rate_limited, HTTP \
        429); 0 means unlimited.",
    ),
    key(
        "server",
        "address_rate_burst",
        "Requests a source address may send at once after being quiet.",
    ),
    key("server", "header_max", "Largest HTTP request head, in bytes."),
    key("server", "body_max", "Largest HTTP request body, in bytes."),
    key(
        "server",
        "idle_timeout_ms",
        "A connection with nothing in flight and no traffic for this long is closed.",
    ),
    key(
        "server",
        "idle_timeout_busy_ms",
        "The idle timeout instead while a listener has more than 3/4 of connections_max open.",
    ),
    key(
        "server",
        "request_timeout_ms",
        "A request must arrive whole within this long of its first byte, and a response being \
        written must be taken within it; a pipelining client is timed per request. A binary \
        fatal error waits at most this long for the answers owed before it.",
    ),
    key(
        "server",
        "busy_retry_ms",
        "Retry hint sent with busy refusals on the binary port (and with a command the node \
        could not answer).",
    ),
    key("server", "warnings_per_sec", "Bad-input warnings logged per second at most."),
    key(
        "server",
        "drain_timeout_ms",
        "How long a shutdown waits for commands in flight to be answered.",
    ),
    unset(
        "server",
        "admin_token",
        "Same as the top-level admin_token (the top level is the usual place).",
        "\"<token>\"",
    ),
    key(
        "server",
        "auth_failures_burst",
        "Wrong tokens one address may present at once before it is refused unchecked (HTTP 429).",
    ),
    key(
        "server",
        "auth_failure_refill_ms",
        "One more wrong token is allowed per address every this many milliseconds.",
    ),
    key(
        "server",
        "auth_addresses_max",
        "Addresses whose failures are remembered; the least recently seen is forgotten.",
    ),
    key(
        "server",
        "allowed_hosts",
        "Without role tokens: DNS names, besides IP addresses and localhost, that HTTP requests \
         without a token may carry in Host (\"*\": any); others get 403 host_not_allowed \
         (DNS rebinding).",
    ),
    key(
        "node",
        "topology",
        "auto (inline on two cores or fewer, compact below six, else parallel), compact, \
         parallel, or inline (the event loop runs the processor: less CPU per request, one \
         core's throughput; a standby runs compact).",
    ),
    key("node", "ring_size", "Slots in the input ring (a power of two)."),
    key("node", "in_flight_max", "Commands the network front may have in flight at once."),
    key("node", "pin_blp", "Pin the business-logic thread to a core."),
    key(
        "node",
        "durability",
        "When journal records are synced: none, batch (group commit) or interval:<ms>.",
    ),
    key("node", "segment_bytes", "Size of each preallocated journal segment file."),
    key("node", "snapshot_every_commands", "Take a snapshot after this many journaled commands."),
    key(
        "node",
        "snapshots_kept",
        "Snapshots kept; older journal segments are retired (deleted or archived).",
    ),
    key(
        "node",
        "snapshot_writer",
        "idle: the snapshot writer runs only on CPU time nothing else wants (the sale first; on \
        a machine busy without pause snapshots fall behind and the journal is kept longer), or \
        normal (where busy processes share the node's CPUs with no cgroup CPU controller between \
        them, an idle writer gets a fraction of a percent of a CPU and snapshots fall far \
        behind).",
    ),
    unset(
        "node",
        "archive_dir",
        "Where retired segments go; unset: they are deleted. Best on the same file system.",
        "\"/var/lib/ringfence/archive\"",
    ),
    key(
        "node",
        "tick_ms",
        "How often the timer checks for a payment deadline come due: the most a deadline fires \
        late.",
    ),
    key("engine", "shard", "Node/shard id written into snowflake ids, 0..=1023."),
    key("engine", "skus_max", "SKUs that can exist."),
    key(
        "engine",
        "orders_max",
        "Orders kept: every live order plus the most recently finished ones.",
    ),
    key("engine", "coupons_max", "Claimed coupons that can exist."),
    key("engine", "batches_max", "Coupon batches that can exist."),
    key("engine", "holdings_max", "(user, SKU) pairs holding units under a per-user limit."),
    key(
        "engine",
        "request_keys_max",
        "Request keys remembered at once; size it above peak commands/s times the window.",
    ),
    key(
        "engine",
        "request_key_window_ms",
        "How long a request key is remembered, in logical milliseconds.",
    ),
    key(
        "engine",
        "request_keys_per_user_max",
        "Request keys one user may have remembered at once (commands naming them in the window); \
        beyond it: capacity_exhausted for that user. 0: no quota.",
    ),
    key(
        "engine",
        "orders_per_user_max",
        "Live orders (reserved, paid, shipped) one user may have at once; beyond it their \
        reservations get capacity_exhausted. 0: no quota.",
    ),
    key("engine", "order_qty_max", "Largest quantity one reservation may ask for."),
    unset(
        "replication",
        "role",
        "primary or standby (a standby follows `primary`).",
        "\"primary\"",
    ),
    unset(
        "replication",
        "primary",
        "A standby's primary: the primary's replication listen address, as an IP address and \
         port or a host name and port (looked up again at each connection attempt, each of \
         its addresses tried in turn).",
        "\"10.0.0.1:7100\"",
    ),
    unset(
        "replication",
        "primary_http",
        "The primary's HTTP address, named in a standby's not_primary answers.",
        "\"10.0.0.1:7080\"",
    ),
    unset(
        "replication",
        "listen",
        "Where standbys connect to this node. Default 127.0.0.1:7100.",
        "\"127.0.0.1:7100\"",
    ),
    unset(
        "replication",
        "cluster_secret_file",
        "The cluster's shared secret, at least 16 bytes; replication is off without one.",
        "\"/etc/ringfence/cluster.secret\"",
    ),
    unset(
        "replication",
        "cluster_id",
        "The cluster's name; a standby of another cluster is refused. Default ringfence.",
        "\"ringfence\"",
    ),
    unset(
        "replication",
        "mode",
        "sync (an answer waits for the standby's durable ack) or async. Default sync.",
        "\"sync\"",
    ),
    unset(
        "replication",
        "timeout_ms",
        "In sync mode, how long a standby may be silent before writes are refused. Default 2000.",
        "2000",
    ),
    unset(
        "replication",
        "heartbeat_ms",
        "How often an idle primary tells its standby it is alive: at most a quarter of \
        timeout_ms (serve refuses more). Default 100, or a quarter of timeout_ms if less.",
        "100",
    ),
    key(
        "coordination",
        "etcd",
        "etcd client URLs, tried in turn; empty: no automatic failover (roles from the flags).",
    ),
    unset(
        "coordination",
        "node_name",
        "This node's name in etcd, stable across restarts: 1 to 64 of A-Z a-z 0-9 . _ -.",
        "\"node-a\"",
    ),
    unset(
        "coordination",
        "lease_ttl_s",
        "The leader key's lease, in seconds; a dead primary is replaced after about this long.",
        "2",
    ),
    unset(
        "coordination",
        "renew_ms",
        "How often the lease is renewed and etcd read. Default a quarter of the TTL.",
        "500",
    ),
    unset(
        "coordination",
        "margin_ms",
        "How long before its lease can expire a primary stops acknowledging alone: at least a \
         tenth of the TTL (it covers a clock running slow by that share). Default a quarter.",
        "500",
    ),
    unset(
        "coordination",
        "max_failover_loss",
        "With the primary gone and the in-sync record at async, take over only if the primary \
         had journaled at most this many records beyond this node. Default: no bound.",
        "10000",
    ),
];

/// Runs `ringfence config …`.
pub fn run(command: &ConfigCommand) -> ExitCode {
    match command {
        ConfigCommand::Example => {
            print!("{}", example());
            ExitCode::SUCCESS
        }
        ConfigCommand::Check { file } => match read_config(file).and_then(|c| check_config(&c)) {
            Ok(()) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("ringfence config check: error: {message}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `ringfence defaults`: every setting with a default, as TOML (no comments).
pub fn defaults() -> ExitCode {
    println!("{}", engine_memory_comment(&ringfence_core::EngineConfig::default()));
    print!("{}", toml::to_string(&FileConfig::default()).expect("the config serialises"));
    ExitCode::SUCCESS
}

/// What the engine's tables take at `config`'s capacities, as a TOML comment line.
fn engine_memory_comment(config: &ringfence_core::EngineConfig) -> String {
    let memory = ringfence_core::Engine::memory(config);
    let snapshot = ringfence_journal::snapshot::working_bytes_max(config);
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    format!(
        "# [engine] tables: {:.0} MiB, allocated and written at start ({:.0} MiB of indexes, the \
         rest entries); a node taking snapshots holds a second engine of the same size, and \
         snapshots up to {:.0} MiB more (an image of full tables, and the buffers its file is streamed through)",
        mib(memory.allocated_bytes),
        mib(memory.index_bytes),
        mib(snapshot)
    )
}

/// The defaults as a TOML table, keyed by section (`""` for the top-level keys).
fn default_values() -> toml::Table {
    toml::Table::try_from(FileConfig::default()).expect("the config serialises as a table")
}

fn section_values<'a>(defaults: &'a toml::Table, section: &str) -> Option<&'a toml::Table> {
    if section.is_empty() { Some(defaults) } else { defaults.get(section)?.as_table() }
}

/// The commented example file.
#[must_use]
pub fn example() -> String {
    let defaults = default_values();
    let mut out = String::from(
        "# ringfence configuration: every key with its default (`ringfence config example`).\n\
         # Keys shown commented out are optional, or take a default worked out at start (each\n\
         # says which); `ringfence serve` flags override the file.\n\
         # Check a file with `ringfence config check FILE`.\n",
    );
    for (section, about) in SECTIONS {
        out.push('\n');
        if !section.is_empty() {
            out.push_str(&format!("[{section}]\n"));
        }
        comment(&mut out, about);
        let values = section_values(&defaults, section);
        for key in KEYS.iter().filter(|k| k.section == *section) {
            write_key(&mut out, key, values.and_then(|v| v.get(key.name)));
        }
        // Keys the types have and this file does not describe yet still appear, with values.
        for (name, value) in values.into_iter().flatten() {
            if !value.is_table() && !KEYS.iter().any(|k| k.section == *section && k.name == name) {
                out.push_str(&format!("# (not described yet)\n{name} = {value}\n"));
            }
        }
    }
    out
}

/// Width the example's comment lines are wrapped to.
const COMMENT_WIDTH: usize = 98;

/// Appends `text` as `# ` comment lines wrapped at [`COMMENT_WIDTH`].
fn comment(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > COMMENT_WIDTH && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
}

fn write_key(out: &mut String, key: &Key, value: Option<&toml::Value>) {
    comment(out, key.about);
    match (value, key.example) {
        (Some(value), _) => out.push_str(&format!("{} = {value}\n", key.name)),
        (None, Some(example)) => out.push_str(&format!("# {} = {example}\n", key.name)),
        (None, None) => out.push_str(&format!("# {} (no default)\n", key.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses_back_to_the_defaults() {
        // Goal: the printed example is a valid config file equal to the built-in defaults.
        let example = example();
        let parsed: FileConfig = toml::from_str(&example).unwrap();
        let reserialised = toml::Table::try_from(&parsed).unwrap();
        assert_eq!(reserialised, default_values());
        check_config(&parsed).unwrap();
    }

    #[test]
    fn every_key_of_the_config_types_is_described() {
        // Goal: a key added to a section gets a line in KEYS (this test names it).
        let defaults = default_values();
        for (section, _) in SECTIONS {
            let Some(values) = section_values(&defaults, section) else { continue };
            for (name, value) in values {
                if value.is_table() {
                    assert!(SECTIONS.iter().any(|(s, _)| s == name), "section [{name}] unknown");
                    continue;
                }
                let described = KEYS.iter().any(|k| k.section == *section && k.name == name);
                assert!(described, "[{section}] {name} has no description in config_cmd.rs KEYS");
            }
        }
        let example = example();
        assert!(!example.contains("not described yet"));
        assert!(example.lines().all(|line| line.len() <= 100), "lines within 100 columns");
    }

    #[test]
    fn every_commented_out_example_value_is_accepted() {
        // Goal: uncommenting any `# key = example` line still gives a file the parser takes.
        for key in KEYS.iter().filter(|k| k.example.is_some()) {
            let example = key.example.unwrap();
            let text = if key.section.is_empty() {
                format!("{} = {example}\n", key.name)
            } else {
                format!("[{}]\n{} = {example}\n", key.section, key.name)
            };
            let parsed = toml::from_str::<FileConfig>(&text);
            assert!(parsed.is_ok(), "{text}: {:?}", parsed.err());
        }
        let values = default_values();
        for key in KEYS.iter().filter(|k| k.example.is_none()) {
            let value = section_values(&values, key.section).and_then(|v| v.get(key.name));
            assert!(
                value.is_some(),
                "[{}] {} has neither a default nor an example",
                key.section,
                key.name
            );
        }
    }
}
