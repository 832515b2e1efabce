//! The `ringfence` binary: serve a node, drive it as a client, and inspect or replay journals.
// The commands' doc comments are their `--help` text, written for a terminal: `[engine]` there
// names a section of the configuration file and `<ms>` a value, not a link or an HTML tag.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod admin_cmd;
mod client_cmd;
mod config_cmd;
mod journal_cmd;
mod json;
mod memory;
mod progress;
mod replay;
mod replication;
mod rollback;
mod serve;
mod signals;
mod sim;
mod status_cmd;
mod time;

/// ringfence — an exchange-grade flash-sale engine: one deterministic business-logic thread,
/// a lock-free ring, and a memory-mapped journal with snapshots and crash recovery.
#[derive(Parser, Debug)]
#[command(name = "ringfence", version = version_text(), long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: TopCommand,
}

/// What this release reads and speaks, as `(label, version)`: the journal format, the
/// snapshot format, the engine image, the replication and the client protocol. `--version`
/// prints them and `/metrics` labels `ringfence_build_info` with them.
pub(crate) fn formats_and_protocols() -> [(&'static str, u32); 5] {
    [
        ("journal_format", ringfence_journal::format::FORMAT_VERSION),
        ("snapshot_format", ringfence_journal::snapshot::SNAPSHOT_FORMAT_VERSION),
        ("engine_image", ringfence_core::IMAGE_FORMAT_VERSION.into()),
        ("replication_protocol", ringfence_replicator::message::PROTOCOL_VERSION.into()),
        ("client_protocol", ringfence_ingress::wire::VERSION.into()),
    ]
}

/// The release and the formats and protocols it speaks, as `--version` prints them: what two
/// releases must share for a rolling upgrade of a pair (`docs/failover.md`, "Upgrading a
/// pair").
pub(crate) fn version_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        let [journal, snapshot, image, replication, client] =
            formats_and_protocols().map(|(_, v)| v);
        format!(
            "{} (formats: journal {journal}, snapshot {snapshot}, engine image {image}; \
             protocols: replication {replication}, client {client})",
            env!("CARGO_PKG_VERSION")
        )
    })
}

#[derive(Subcommand, Debug)]
enum TopCommand {
    /// Start a node (a primary, or a standby of one): recover from the data directory, then
    /// serve the binary protocol and the HTTP API until SIGINT or SIGTERM.
    Serve(Box<serve::ServeArgs>),
    /// Send one command to a node over the binary protocol and print the answer as JSON.
    Client(client_cmd::ClientArgs),
    /// Admin: promote the standby at --http to primary, once its primary is gone; on a pair
    /// run with --etcd, a planned switchover.
    ///
    /// Without etcd: for a primary that is gone (stopped, dead or fenced off). The standby
    /// takes a new epoch and serves writes at once.
    ///
    /// On a pair run with --etcd, where a standby takes over by itself when its primary dies:
    /// a planned switchover through etcd, asked of the in-sync standby while its primary runs.
    /// The primary holds writes until this standby has everything, hands it the leader key and
    /// rejoins as its standby. The answer names the new epoch, or, after 10 s, says the
    /// switchover did not complete and its request was withdrawn (a standby lost meanwhile is
    /// not handed the key: the primary calls the switchover off and writes on).
    ///
    /// docs/failover.md, "Planned switchover", has both.
    Promote(admin_cmd::PromoteArgs),
    /// Admin: switch the replication ack mode of the node at --http (sync or async).
    Replication(admin_cmd::ReplicationArgs),
    /// Show a pair (or a lone node) at a glance and judge it: one primary, its standby in
    /// sync, both ready, one state at one sequence. Exit 0 healthy, 1 a problem, 2 a node
    /// could not be read.
    Status(status_cmd::StatusArgs),
    /// Print every setting that has a fixed default, as TOML (`config example` adds what each
    /// one means, and the defaults worked out at start: replication's, coordination's).
    Defaults,
    /// Write a commented example configuration file, or check one.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Inspect, repair or back up a journal directory: verify, dump, stats, truncate, rebuild,
    /// heal, reconfigure, backup.
    #[command(subcommand)]
    Journal(journal_cmd::JournalCommand),
    /// Rebuild state at a sequence or time from snapshot + journal; print its hash and a
    /// summary; optionally export every outcome as JSON lines.
    Replay(replay::ReplayArgs),
    /// Run the deterministic simulator: a primary, a standby, the witness and clients on one
    /// thread with injected crashes, pauses, partitions and disk faults, checked throughout.
    /// A failing seed prints the command that replays it.
    Sim(sim::SimArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The simulator's nodes log as a served node does: thousands of lines a run, so only when
    // asked for (RINGFENCE_LOG).
    let quiet = matches!(cli.command, TopCommand::Sim(_))
        && std::env::var_os(ringfence_ingress::logging::FILTER_ENV).is_none();
    if !quiet {
        ringfence_ingress::logging::init();
    }
    if !matches!(cli.command, TopCommand::Serve(_)) {
        end_quietly_on_a_closed_pipe();
    }
    match cli.command {
        TopCommand::Serve(args) => serve::run(&args),
        TopCommand::Client(args) => client_cmd::run(args),
        TopCommand::Promote(args) => admin_cmd::promote(&args),
        TopCommand::Replication(args) => admin_cmd::replication(&args),
        TopCommand::Status(args) => status_cmd::status(&args),
        TopCommand::Defaults => config_cmd::defaults(),
        TopCommand::Config(command) => config_cmd::run(&command),
        TopCommand::Journal(command) => journal_cmd::run(command),
        TopCommand::Replay(args) => replay::run(&args),
        TopCommand::Sim(args) => sim::run(&args),
    }
}

/// A command whose output is piped into a reader that stops early (`ringfence defaults | head
/// -1`, `journal dump | head`) ends there, as Unix tools do, rather than panicking on the
/// next write or reading on for nothing. The Rust runtime ignores `SIGPIPE`; this restores its
/// default action. Not for `serve`, which must outlive any reader. The other commands write
/// their sockets with `TcpStream::write` (`send` with `MSG_NOSIGNAL`), so a node that closes
/// on them is an error they report, never this signal.
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: called on the main thread before any other is started; SIG_DFL is a valid
    // disposition for SIGPIPE.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // Ignored by the runtime before `main`: anything else is a surprise, not a failure.
    debug_assert_eq!(previous, libc::SIG_IGN, "SIGPIPE was not ignored");
}
