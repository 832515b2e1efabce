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
    refuse_truncation(storage)?;
    let mut superseded = Vec::new();
    if let Some(through) = rebuild::rebuilding(storage)? {
        // A rebuild (this tool's step 3, or `journal rebuild`'s) cut off: finished first.
        superseded.extend(rebuild::finish(storage, through)?.superseded);
    }
    let (old, last, moved) = match plan(storage, config)? {
        Plan::Same { last, start } => {
            superseded.extend(set_aside_snapshots(storage, config, start)?);
            // What is reported set aside is renamed so that nothing reads it again.
            assert!(superseded.iter().all(|file| file.ends_with(SUPERSEDED_SUFFIX)));
            let differences = String::new();
            return Ok(Reconfigured { differences, through: last, snapshot: None, superseded });
        }
        Plan::Carry { old, last, moved } => (old, last, moved),
    };
    // The pair of the plan's first branch: the journal is written with other settings.
    assert_ne!(old, *config, "a carry-over to the settings the journal has");
    let name = snapshot::snapshot_name(last);
    if let Some(moved) = moved {
        // Step 2: written only now that the state is known to fit the new tables.
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

/// Refuses a carry-over for every reason [`reconfigure`] refuses one before it changes a
/// file, reading `storage` only (a rebuild under way passes: running it again finishes it
/// first). The operator's tool asks first, so that a refused carry-over takes no lock;
/// [`reconfigure`] asks again, under the lock. Whether the state fits the new tables is known
/// only by moving it into them, so the journal is replayed here and again under the lock: a
/// second read, for a command run between sales, rather than a plan that could disagree with
/// the directory by the time the lock is taken.
pub fn check<S: Storage>(storage: &S, config: &EngineConfig) -> Result<(), JournalError> {
    refuse_truncation(storage)?;
    if rebuild::rebuilding(storage)?.is_some() {
        return Ok(());
    }
    let planned = plan(storage, config).map(drop);
    debug_assert!(storage.file_len(rebuild::REBUILDING_FILE).is_err(), "a check wrote it");
    planned
}

/// Step 1 of the module documentation, reading only: what the carry-over is to do, or why
/// it is refused.
enum Plan {
    /// The journal is written with the settings asked for already: nothing to carry over but
    /// old settings' snapshots before `start`, where the journal starts, to set aside.
    Same { last: Sequence, start: Sequence },
    /// The state through `last`, written under `old`, goes into tables of the new settings:
    /// `moved` is it there, or `None` when its snapshot under them is written already.
    Carry { old: EngineConfig, last: Sequence, moved: Option<Box<Engine>> },
}

/// Refuses a carry-over while a truncation is under way.
fn refuse_truncation<S: Storage>(storage: &S) -> Result<(), JournalError> {
    let Some(at) = datadir::truncating(storage)? else { return Ok(()) };
    Err(JournalError::Refused(format!(
        "cannot reconfigure: a truncation at sequence {at} is under way; start the node once (it \
         finishes it) and stop it cleanly first"
    )))
}

/// Step 1 (see [`Plan`]): every refusal of the carry-over, and the state moved into the new
/// tables, without writing.
fn plan<S: Storage>(storage: &S, config: &EngineConfig) -> Result<Plan, JournalError> {
    let refuse = |why: String| Err(JournalError::Refused(format!("cannot reconfigure: {why}")));
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
    // Its newest segment may be empty, starting one past the last record; none starts later.
    assert!(start <= last.next(), "a journal that starts past its end");
    if old == *config {
        refuse_unfinished(storage, config, start)?;
        return Ok(Plan::Same { last, start });
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
    let carried = matches!(
        snapshot::read_meta(storage, &snapshot::snapshot_name(last)),
        Ok(meta) if meta.config == *config && meta.through == last
    );
    if carried {
        return Ok(Plan::Carry { old, last, moved: None });
    }
    // Nothing is written unless the state fits the new tables.
    let engine = state_at(storage, &layout, &old, last)?;
    let moved = Engine::from_image(config.clone(), &engine.to_image())
        .map_err(|why| does_not_fit(last, &why))?;
    // The move changes the tables around the state, never the state.
    assert_eq!(moved.state_digest(), engine.state_digest(), "the state changed in the move");
    assert_eq!(moved.config(), config, "the state moved into tables of other settings");
    Ok(Plan::Carry { old, last, moved: Some(Box::new(moved)) })
}

/// For a journal written with `config` already: refuses when a snapshot from `start` on holds
/// the state under other settings (a carry-over to them cut off after its snapshot, which
/// only those settings finish).
fn refuse_unfinished<S: Storage>(
    storage: &S,
    config: &EngineConfig,
    start: Sequence,
) -> Result<(), JournalError> {
    for (through, name) in snapshot::list(storage)?.into_iter().filter(|s| s.0 >= start) {
        if let Ok(meta) = snapshot::read_meta(storage, &name)
            && meta.config != *config
        {
            return Err(JournalError::Refused(format!(
                "cannot reconfigure: {} holds the state through sequence {through} under other \
                 [engine] settings: a carry-over to them was cut off; run `ringfence journal \
                 reconfigure` with them to finish it ({})",
                storage.describe(&name),
                config.differences(&meta.config, "the snapshot")
            )));
        }
    }
    Ok(())
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
