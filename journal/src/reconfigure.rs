//! Carrying a stopped node's data directory over to new `[engine]` settings.
//!
//! A journal's records replay only under the settings they were written with, so a node
//! refuses a directory written with others (`JournalError::SettingsChanged`). To grow the
//! tables for the next sale, or to change a limit, the directory is carried over at the point
//! where the node stopped: the state through its last record `L` is moved into tables of the
//! new settings (`Engine::from_image`, which refuses another shard and tables too small for
//! what is held), written as the snapshot through `L` under them, and the journal restarts at
//! `L + 1` under them, as if retention had retired every record before it. Nothing is
//! dropped: the records through `L` are the snapshot's state, and their segments are set
//! aside (`*.superseded`), not deleted. Order ids, stock, live orders, remembered request keys
//! all carry over; what the records after `L` decide, they decide under the new settings.
//!
//! The steps, each safe to cut off:
//!
//! 1. refuse unless the node stopped cleanly, the journal is intact and one set of settings
//!    wrote it (nothing is written before these checks and the move into the new tables pass);
//! 2. write the snapshot through `L` under the new settings, atomically (it replaces a
//!    shutdown snapshot through `L` under the old ones);
//! 3. rebuild the journal after it ([`rebuild`]): marker, a new empty segment
//!    `L + 1` whose header carries the new settings, the manifest, the old segments renamed;
//! 4. mark the clean stop again, at `L`, and set aside the snapshots of the old settings.
//!
//! Cut off after step 2, the directory is refused by a node under either settings (the
//! snapshot and the segments disagree), and a second run with the new settings finishes from
//! the snapshot (one with the old settings is refused, naming the new ones); after the marker
//! of step 3, the node's next start finishes the rebuild, as a second run does.

use std::ops::ControlFlow;

use ringfence_core::{Engine, EngineConfig, Lookahead, RestoreError, Sequence};

use crate::datadir::{self, CleanStop};
use crate::error::JournalError;
use crate::format::{self, SEGMENT_HEADER_LEN};
use crate::rebuild::{self, SUPERSEDED_SUFFIX};
use crate::recovery;
use crate::scan::{self, Layout, ReadSource};
use crate::snapshot;
use crate::storage::Storage;

/// What [`reconfigure`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconfigured {
    /// The settings that changed, as `name = new (before: old)`; empty if the journal was
    /// already written with the settings asked for.
    pub differences: String,
    /// The last record whose state was carried over: the journal continues after it.
    pub through: Sequence,
    /// The snapshot holding that state under the new settings, if one was written.
    pub snapshot: Option<String>,
    /// Files set aside (`*.superseded`): the old segments and the old settings' snapshots.
    pub superseded: Vec<String>,
}

/// Carries the data directory in `storage` over to the engine settings `config` (see the
/// module documentation), or finishes a carry-over cut off part way. A directory already
/// written with `config` is left as it is, but for old settings' snapshots left behind.
/// Refused, changing nothing, when the node did not stop cleanly, when the journal is damaged
/// or has a truncation under way, and when the state does not fit the new settings (a rebuild
/// under way is finished first, as the node's start would).
pub fn reconfigure<S: Storage>(
    storage: &S,
    config: &EngineConfig,
) -> Result<Reconfigured, JournalError> {
    let refuse = |why: String| Err(JournalError::Refused(format!("cannot reconfigure: {why}")));
    if let Some(at) = datadir::truncating(storage)? {
        return refuse(format!(
            "a truncation at sequence {at} is under way; start the node once (it finishes it) \
             and stop it cleanly first"
        ));
    }
    let mut superseded = Vec::new();
    if let Some(through) = rebuild::rebuilding(storage)? {
        // A rebuild (this tool's step 3, or `journal rebuild`'s) cut off: finished first.
        superseded.extend(rebuild::finish(storage, through)?.superseded);
    }
    let rebuild::Scanned { source, layout, .. } = rebuild::scanned(storage, "reconfigure")?;
    if let Some(problem) = &layout.problem {
        return refuse(format!(
            "the journal is damaged at sequence {} in {} ({}); `ringfence journal verify` says \
             how to repair it",
            problem.sequence,
            storage.describe(&problem.name),
            problem.damage
        ));
    }
    let Some(newest) = layout.segments.last() else {
        return Err(JournalError::NoData { dir: source.location() });
    };
    let old = newest.header.config.clone();
    if let Some(segment) = layout.segments.iter().find(|segment| segment.header.config != old) {
        return refuse(format!(
            "{} was written with other [engine] settings than the newest segment: {}",
            storage.describe(&segment.name),
            old.differences(&segment.header.config, "that segment")
        ));
    }
    let last = newest.ends_at();
    let start = layout.segments.first().map_or(last, |segment| segment.header.first_sequence);
    if old == *config {
        // Nothing to carry over, or a carry-over finished but for its last step; or one to
        // other settings cut off after their snapshot, which only those settings finish.
        for (through, name) in snapshot::list(storage)?.into_iter().filter(|s| s.0 >= start) {
            if let Ok(meta) = snapshot::read_meta(storage, &name)
                && meta.config != *config
            {
                return refuse(format!(
                    "{} holds the state through sequence {through} under other [engine] \
                     settings: a carry-over to them was cut off; run `ringfence journal \
                     reconfigure` with them to finish it ({})",
                    storage.describe(&name),
                    config.differences(&meta.config, "the snapshot")
                ));
            }
        }
        superseded.extend(set_aside_snapshots(storage, config, start)?);
        let differences = String::new();
        return Ok(Reconfigured { differences, through: last, snapshot: None, superseded });
    }
    let Some(stop) = datadir::clean_stop(storage)? else {
        return refuse(
            "the node did not stop cleanly; start it once on its current settings and stop it \
             cleanly (SIGTERM), so the journal ends where it acknowledged"
                .to_owned(),
        );
    };
    if recovery::check_clean_stop(&layout, &stop, &|name| storage.describe(name))? {
        return refuse(format!(
            "the journal runs past the node's clean stop at sequence {}: a node wrote to it \
             since; stop that node cleanly first",
            stop.last
        ));
    }
    assert_eq!(stop.last, last, "a clean stop elsewhere than the journal's end");
    if last == Sequence(0) {
        return refuse(
            "the journal holds no record: there is nothing to carry over; start the node on a new \
             data directory with the new settings"
                .to_owned(),
        );
    }
    let name = snapshot::snapshot_name(last);
    let carried = matches!(
        snapshot::read_meta(storage, &name),
        Ok(meta) if meta.config == *config && meta.through == last
    );
    if !carried {
        // Step 1, then 2: nothing is written unless the state fits the new tables.
        let engine = state_at(storage, &layout, &old, last)?;
        let moved = Engine::from_image(config.clone(), &engine.to_image())
            .map_err(|why| does_not_fit(last, &why))?;
        // The move changes the tables around the state, never the state.
        assert_eq!(moved.state_digest(), engine.state_digest(), "the state changed in the move");
        drop(engine);
        let meta = snapshot::write(storage, config, &moved.to_image(), last)?;
        // The pair of the move: the state is the same, only the tables around it changed.
        assert_eq!(meta.last_sequence, moved.last_sequence(), "a snapshot of another state");
    }
    // Step 3: the journal restarts after the snapshot, under its settings.
    rebuild::write_rebuilding(storage, last)?;
    superseded.extend(rebuild::finish(storage, last)?.superseded);
    assert!(rebuild::rebuilding(storage)?.is_none(), "a finished rebuild left its marker");
    // Step 4: the directory is as clean as the node left it.
    let restart = last.next();
    let segment = format::segment_name(restart);
    let stop = CleanStop { last, segment, end: SEGMENT_HEADER_LEN as u64 };
    datadir::mark_clean_stop(storage, &stop)?;
    superseded.extend(set_aside_snapshots(storage, config, restart)?);
    let differences = config.differences(&old, "before");
    assert!(!differences.is_empty(), "carried over to the same settings");
    let snapshot = Some(storage.describe(&name));
    Ok(Reconfigured { differences, through: last, snapshot, superseded })
}

/// Why the state through `last` does not fit the new settings, in the carry-over's terms.
fn does_not_fit(last: Sequence, why: &RestoreError) -> JournalError {
    let why = match why {
        RestoreError::TooLarge { table, len, max } => {
            format!("the node holds {len} {table}, and the new settings allow {max}")
        }
        RestoreError::ShardMismatch { image, config } => format!(
            "the journal is shard {image}'s and the new settings say shard {config}: order and \
             coupon ids carry the shard, so a data directory keeps it for life"
        ),
        other => other.to_string(),
    };
    JournalError::Refused(format!(
        "cannot reconfigure: the state through sequence {last} does not carry over to the new \
         settings: {why}"
    ))
}

/// The engine after record `last` under the settings `old` the journal was written with: the
/// newest snapshot through `last` or before that loads under them, and the records after it.
fn state_at<S: Storage>(
    storage: &S,
    layout: &Layout,
    old: &EngineConfig,
    last: Sequence,
) -> Result<Engine, JournalError> {
    let snapshots = snapshot::list(storage)?.into_iter().rev().filter(|(at, _)| *at <= last);
    let loaded = snapshots
        .filter_map(|(_, name)| snapshot::load(storage, &name, None).ok())
        .find(|(_, meta)| meta.config == *old);
    let (mut engine, through) = match loaded {
        Some((engine, meta)) => (engine, meta.through),
        None => (Engine::new(old.clone()), Sequence(0)),
    };
    let start = through.next();
    if let Some(first) = layout.first_sequence().filter(|first| *first > start && start <= last) {
        return Err(JournalError::MissingStart { first, needed: start });
    }
    let mut ahead = Lookahead::default();
    let mut source = storage.clone();
    scan::read_pipelined(&mut source, layout, start, &mut |record| {
        ahead.push(&mut engine, record.sequenced(), |engine, command| {
            engine.apply(command);
        });
        ControlFlow::Continue(())
    })?;
    ahead.finish(&mut engine, |engine, command| {
        engine.apply(command);
    });
    // Every record through `last` was applied, on top of the snapshot's state.
    assert!(engine.last_sequence() <= last, "replayed past the journal's end");
    assert_eq!(engine.config(), old, "replayed under other settings");
    Ok(engine)
}

/// Renames every snapshot not written with `config` and through a sequence before `start`,
/// where the journal now starts, to `*.superseded`: the journal no longer holds the records
/// that would follow them, and a node would refuse them.
fn set_aside_snapshots<S: Storage>(
    storage: &S,
    config: &EngineConfig,
    start: Sequence,
) -> Result<Vec<String>, JournalError> {
    let mut aside = Vec::new();
    for (_, name) in snapshot::list(storage)?.into_iter().filter(|(at, _)| *at < start) {
        // A snapshot that does not read is left for `journal verify` to report.
        if !snapshot::read_meta(storage, &name).is_ok_and(|meta| meta.config != *config) {
            continue;
        }
        let to = format!("{name}{SUPERSEDED_SUFFIX}");
        storage
            .rename(&name, &to)
            .map_err(|e| JournalError::io(format!("renaming {}", storage.describe(&name)), e))?;
        aside.push(storage.describe(&to));
    }
    if !aside.is_empty() {
        datadir::sync_dir(storage)?;
    }
    // Left before `start`: only snapshots of `config`, or ones that do not read.
    debug_assert!(snapshot::list(storage).is_ok_and(|left| left.iter().all(|(at, name)| {
        *at >= start || !snapshot::read_meta(storage, name).is_ok_and(|m| m.config != *config)
    })));
    Ok(aside)
}
