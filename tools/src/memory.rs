//! Whether the machine can hold the engines a node is about to build.
//!
//! An engine allocates and writes every table when it is built ([`Engine::memory`]), so a node
//! asks for all of it at start, once for its own engine and once more for the snapshot
//! writer's shadow engine under periodic snapshots. Snapshots hold an image of the state
//! beside them, streamed to or from its file through bounded buffers (a primary sends one to
//! a standby a chunk at a time too); only a standby fetching its primary's snapshot at start,
//! before any engine is built, gathers a file whole. A configuration the machine cannot hold
//! is refused before
//! recovery begins, with the figures, rather than met by the kernel's out-of-memory killer
//! halfway through writing the tables, or at the first snapshot of a full sale.

use std::fs;

use ringfence_core::{Engine, EngineConfig, EngineImage};
use ringfence_journal::snapshot;

const MIB: u64 = 1 << 20;

/// Memory a process may still take: the kernel's `MemAvailable`, lowered to what the memory
/// cgroup (v2) leaves below its limit. `None` where neither can be read (not Linux).
fn available_bytes() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok();
    let system = meminfo.as_deref().and_then(|text| meminfo_field(text, "MemAvailable"));
    let read = |name: &str| fs::read_to_string(format!("/sys/fs/cgroup/{name}")).ok();
    let cgroup = match (read("memory.max"), read("memory.current")) {
        (Some(max), Some(current)) => {
            let max = max.trim().parse::<u64>().ok();
            let current = current.trim().parse::<u64>().ok();
            max.zip(current).map(|(max, current)| max.saturating_sub(current))
        }
        _ => None,
    };
    match (system, cgroup) {
        (Some(system), Some(cgroup)) => Some(system.min(cgroup)),
        (system, cgroup) => system.or(cgroup),
    }
}

/// A `/proc/meminfo` field (`Name:   123 kB`), in bytes.
fn meminfo_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.split(':').next() == Some(name))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What a node whose engines do not fit can change.
pub const LOWER_CAPACITIES: &str = "Lower the [engine] capacities (`ringfence defaults` prints \
                                    what the default ones take), or give the node more memory";

/// What `engines` engines of `config` need, with what snapshots hold beside them: an image and
/// the buffers snapshots are streamed through ([`snapshot::working_bytes_max`]). Or more, if a
/// snapshot fetched whole at start, before any engine is built, with its image, takes more.
fn needed_bytes(config: &EngineConfig, engines: u64) -> u64 {
    let each = Engine::memory(config).allocated_bytes;
    let running = each.saturating_mul(engines).saturating_add(snapshot::working_bytes_max(config));
    let starting = snapshot::file_len_max(config) + EngineImage::memory_max(config);
    running.max(starting)
}

/// Refuses `engines` engines of `config` when they need more memory than `available` bytes;
/// says what they need, what there is, and then `remedy`.
fn check(config: &EngineConfig, engines: u64, available: u64, remedy: &str) -> Result<(), String> {
    let needed = needed_bytes(config, engines);
    if needed <= available {
        return Ok(());
    }
    let each = Engine::memory(config).allocated_bytes;
    let shadow = if engines > 1 {
        " (the node's own and the snapshot writer's shadow engine, built under periodic \
         snapshots)"
    } else {
        ""
    };
    Err(format!(
        "[engine] the tables need {} MiB of memory: {engines} engine(s) of {} MiB{shadow}, \
         written at start, and up to {} MiB for snapshots (an image of the state, and the \
         buffers its file is streamed through), and only {} MiB is available. {remedy}",
        needed.div_ceil(MIB),
        each.div_ceil(MIB),
        snapshot::working_bytes_max(config).div_ceil(MIB),
        available / MIB
    ))
}

/// [`check`] against what this machine has available now; passes where that cannot be read.
pub fn check_available(config: &EngineConfig, engines: u64, remedy: &str) -> Result<(), String> {
    available_bytes().map_or(Ok(()), |available| check(config, engines, available, remedy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_that_fits_passes_and_one_that_does_not_is_refused_with_the_figures() {
        // Goal: the check compares what the engines allocate with what is available, counts
        // the shadow engine and what snapshots hold (an image and a file), and names the
        // figures.
        let config = EngineConfig::small();
        let each = Engine::memory(&config).allocated_bytes;
        let snapshot = snapshot::working_bytes_max(&config);
        assert!(snapshot > 0, "a snapshot takes memory");
        assert_eq!(check(&config, 2, 2 * each + snapshot, LOWER_CAPACITIES), Ok(()));
        let short = 2 * each + snapshot - 1;
        let refusal = check(&config, 2, short, LOWER_CAPACITIES).expect_err("one byte");
        assert!(refusal.contains("2 engine(s)"), "{refusal}");
        assert!(refusal.contains("shadow engine"), "{refusal}");
        assert!(refusal.contains("for snapshots (an image"), "{refusal}");
        assert!(refusal.contains("is available") && refusal.ends_with("more memory"), "{refusal}");
        assert!(check(&config, 1, each + snapshot, "x").is_ok());
        let alone = check(&config, 1, each + snapshot - 1, "Replay elsewhere").expect_err("short");
        assert!(!alone.contains("shadow") && alone.ends_with("Replay elsewhere"), "{alone}");
    }

    #[test]
    fn meminfo_fields_are_read_in_bytes() {
        // Goal: `MemAvailable` is found by its name, not by a prefix, and converted from KiB.
        let text = "MemTotal:       24683236 kB\nMemAvailableX:  1 kB\nMemAvailable:   1000 kB\n";
        assert_eq!(meminfo_field(text, "MemAvailable"), Some(1_024_000));
        assert_eq!(meminfo_field(text, "SwapFree"), None);
    }
}
