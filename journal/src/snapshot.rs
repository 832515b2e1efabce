//! Snapshots: the BLP's full state at a sequence boundary, so recovery replays only the
//! journal after it.
//!
//! The BLP never copies its state for a snapshot. When one is due it hands the writer thread
//! the sequence and its running hash there ([`Snapshotter`]); the writer keeps a *shadow*
//! engine that follows the journal — started from the newest snapshot and the records after
//! it, as recovery starts — applies the records up to that sequence, checks it reached the
//! BLP's running hash, and snapshots its own state. So a snapshot costs the BLP a hand-off of
//! a few words however large the state, and costs the machine a second engine's memory and
//! the CPU to apply each command a second time, on the writer thread. The writer copies the
//! shadow into an image, drops the shadow and restores the image at the configured
//! capacities, as recovery would: the restored engine, checked to carry the same running hash
//! and state, is the shadow from then on, so the writer never holds two engines. It streams
//! the image, a piece at a time ([`EngineImage::encode_pieces`]), through one buffer of
//! [`SNAPSHOT_BUFFER_BYTES`] into a temporary file of the data directory's [`Storage`]
//! ([`write_atomically_with`]), syncs it, renames it into place and syncs the directory, then
//! applies retention: the file's bytes are never held whole. The shadow loads a snapshot the
//! same way ([`load_streaming`], [`EngineImage::decode_pieces`]), checksumming the file as it
//! decodes it and refusing it at the end if the checksum fails. A snapshot read through a
//! [`ReadSource`] ([`load`], [`read_meta`]: recovery, the tools) is still read whole. What a
//! node holds for snapshots beside its two engines is [`working_bytes_max`]. A snapshot that
//! fails leaves no temporary file behind, is logged and counted ([`SnapshotStats`]); the
//! journal still holds every command, so it costs only replay time. The writer keeps the image it
//! wrote and copies the next snapshot into it ([`Engine::copy_image_into`]). A snapshot file:
//!
//! ```text
//!   0  magic             8  b"RFNCSNAP"
//!   8  version           4  SNAPSHOT_FORMAT_VERSION (3; version 2, with no epoch history,
//!                           is still read)
//!  12  header length     4  128
//!  16  through sequence  8  every journal record up to here is included
//!  24  last sequence     8  the engine's last mutating sequence
//!  32  now               8  the engine's logical time
//!  40  running hash      8
//!  48  state digest      8  Engine::state_digest of the restored state
//!  56  image length      8  bytes of the EngineImage
//!  64  body CRC32C       4  over everything after the header
//!  68  SKU count         4  entries in the SKU catalog
//!  72  engine config    40  (see format::encode_config)
//! 112  engine config     2  continued: orders per user (zero before there was a quota)
//! 114  through epoch     8  the epoch of journal record `through sequence`; zero when not
//!                           recorded (the journal did not hold that record, or the file
//!                           was written before snapshots recorded it)
//! 122  reserved          2  zero
//! 124  header CRC32C     4  over bytes 0..124
//! 128  image             n  EngineImage in its explicit layout (`IMAGE_FORMAT_VERSION`),
//!                           then zero padding to a multiple of 16
//!  ..  SKU catalog   8 * k  SKU ids (u64) defined in the engine, for replay summaries
//!  ..  history count     8  entries in the epoch history (version 3 on)
//!  ..  epoch history  16 * h  (epoch u64, first sequence u64) of each epoch of the records
//!                           up to `through sequence`, in order (`crate::history`)
//! ```
//!
//! Files are named `snapshot-<through sequence, 20 digits>.snap`.
//!
//! The writer is a [`SnapshotWriter`] that runs a job when its driver calls it: in production
//! a thread blocked on the next job ([`Snapshotter::start`]); in a stepped node, whoever
//! steps the node ([`Snapshotter::stepped`]), so a simulation decides when snapshots are
//! written and can crash a node in the middle of one.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringfence_core::pipeline::SnapshotHook;
use ringfence_core::record;
use ringfence_core::{
    Command, DecodeError, Engine, EngineConfig, EngineImage, Epoch, ImageDecodeError, Lookahead,
    RestoreError, Sequence, Sequenced, SkuId, Timestamp,
};

use crate::datadir::{self, DataDir};
use crate::error::JournalError;
use crate::format::{self, CONFIG_BLOCK_LEN, CONFIG_MORE_LEN, get_u32, get_u64, put_u32, put_u64};
use crate::history::EpochHistory;
use crate::scan::ReadSource;
use crate::storage::{Retired, Storage, StorageError, write_atomically, write_atomically_with};
use crate::tail::Tail;

/// First bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"RFNCSNAP";
/// Format version written into every snapshot: version 2 ([`crate::format::FORMAT_VERSION`],
/// the segments' too) with the epoch history after the SKU catalogue.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 3;
/// The oldest snapshot format version read: version 2 files read with no history.
const SNAPSHOT_FORMAT_OLDEST: u32 = 2;
const _: () = assert!(SNAPSHOT_FORMAT_OLDEST == format::FORMAT_VERSION);
/// Size of the snapshot header.
pub const SNAPSHOT_HEADER_LEN: usize = 128;
const THROUGH_OFFSET: usize = 16;
const LAST_SEQUENCE_OFFSET: usize = THROUGH_OFFSET + 8;
const NOW_OFFSET: usize = LAST_SEQUENCE_OFFSET + 8;
const RUNNING_HASH_OFFSET: usize = NOW_OFFSET + 8;
const DIGEST_OFFSET: usize = RUNNING_HASH_OFFSET + 8;
const IMAGE_LEN_OFFSET: usize = DIGEST_OFFSET + 8;
const BODY_CRC_OFFSET: usize = IMAGE_LEN_OFFSET + 8;
const SKU_COUNT_OFFSET: usize = BODY_CRC_OFFSET + 4;
const CONFIG_OFFSET: usize = SKU_COUNT_OFFSET + 4;
const CONFIG_MORE_OFFSET: usize = CONFIG_OFFSET + CONFIG_BLOCK_LEN;
const THROUGH_EPOCH_OFFSET: usize = CONFIG_MORE_OFFSET + CONFIG_MORE_LEN;
const HEADER_CRC_OFFSET: usize = SNAPSHOT_HEADER_LEN - 4;
const _: () = assert!(THROUGH_EPOCH_OFFSET + 8 <= HEADER_CRC_OFFSET);
// The offsets, pinned to the byte diagram.
const _: () = assert!(LAST_SEQUENCE_OFFSET == 24);
const _: () = assert!(NOW_OFFSET == 32);
const _: () = assert!(RUNNING_HASH_OFFSET == 40);
const _: () = assert!(DIGEST_OFFSET == 48);
const _: () = assert!(IMAGE_LEN_OFFSET == 56);
const _: () = assert!(BODY_CRC_OFFSET == 64);
const _: () = assert!(SKU_COUNT_OFFSET == 68);
const _: () = assert!(CONFIG_OFFSET == 72);
const _: () = assert!(CONFIG_MORE_OFFSET == 112);
const _: () = assert!(THROUGH_EPOCH_OFFSET == 114);
const _: () = assert!(HEADER_CRC_OFFSET == 124);
// The image is padded to 16, so the SKU catalog after it is 8-byte aligned in the file.
const _: () = assert!(SNAPSHOT_HEADER_LEN % 16 == 0);
const _: () = assert!(SNAPSHOT_HEADER_LEN == 128);

/// A snapshot that could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// An operating-system I/O error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is damaged or not a snapshot. The message does not say what recovery does
    /// without it: that depends on the other snapshots and on where the journal starts, and
    /// the caller that knows them says it.
    #[error(
        "snapshot {file} is invalid: {reason} (restore a good copy of it from a backup or the \
         standby, or delete it)"
    )]
    Invalid {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The state does not restore under the configuration.
    #[error("snapshot {file} cannot be restored: {source}")]
    Restore {
        /// The file.
        file: PathBuf,
        /// Why.
        source: RestoreError,
    },
}

impl From<StorageError> for SnapshotError {
    fn from(error: StorageError) -> SnapshotError {
        SnapshotError::Io { context: error.context, source: error.source }
    }
}

fn io_error(context: String) -> impl FnOnce(io::Error) -> SnapshotError {
    move |source| SnapshotError::Io { context, source }
}

/// What a snapshot file says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The file's name in the data directory.
    pub name: String,
    /// The file, as the storage names it to an operator.
    pub file: PathBuf,
    /// Every journal record up to this sequence is included.
    pub through: Sequence,
    /// The epoch of journal record `through`, when the journal held it as the snapshot was
    /// written (`None` for files written before snapshots recorded it). A node whose journal
    /// was retired or rebuilt past `through` still knows from it which primary's history its
    /// state is: the same sequence and epoch are the same record.
    pub through_epoch: Option<Epoch>,
    /// The engine's last mutating sequence.
    pub last_sequence: Sequence,
    /// The engine's logical time.
    pub now: Timestamp,
    /// The engine's running hash.
    pub running_hash: u64,
    /// [`Engine::state_digest`] of the state.
    pub state_digest: u64,
    /// The configuration the engine ran with.
    pub config: EngineConfig,
    /// SKUs defined in the engine.
    pub skus: Vec<SkuId>,
    /// The epochs of the journal records up to `through` ([`EpochHistory`]); empty in a file
    /// of format version 2, written before snapshots carried it.
    pub history: EpochHistory,
    /// File size in bytes.
    pub bytes: u64,
}

/// The file name of the snapshot through `through`.
#[must_use]
pub fn snapshot_name(through: Sequence) -> String {
    let name = format!("snapshot-{:020}.snap", through.0);
    // Fixed width, so names sort in sequence order.
    assert_eq!(name.len(), 34, "a snapshot name of another width");
    debug_assert_eq!(parse_snapshot_name(&name), Some(through), "a name that does not read back");
    name
}

/// The through sequence a snapshot file name stands for, if it is one.
pub(crate) fn parse_snapshot_name(name: &str) -> Option<Sequence> {
    let digits = name.strip_prefix("snapshot-")?.strip_suffix(".snap")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok().map(Sequence))?
}

/// What a snapshot set aside for good (it includes records the journal no longer has) is
/// renamed to end with.
pub const STALE_SUFFIX: &str = ".stale";

/// The name a snapshot is set aside under when it must never be loaded again (it includes
/// records the journal no longer has).
#[must_use]
pub fn stale_name(name: &str) -> String {
    assert!(parse_snapshot_name(name).is_some(), "only a snapshot is set aside: {name}");
    let stale = format!("{name}{STALE_SUFFIX}");
    // Never listed, so never loaded again.
    assert!(parse_snapshot_name(&stale).is_none(), "a stale snapshot still reads as one");
    stale
}

/// Snapshot files (names and through sequences), oldest first.
pub fn list<R: ReadSource>(source: &R) -> Result<Vec<(Sequence, String)>, SnapshotError> {
    let names = source.list_files().map_err(io_error(format!("listing {}", source.location())))?;
    let mut found: Vec<(Sequence, String)> = names
        .into_iter()
        .filter_map(|name| parse_snapshot_name(&name).map(|through| (through, name)))
        .collect();
    found.sort();
    // Names are canonical (20 digits), so each sequence has at most one snapshot.
    assert!(found.windows(2).all(|pair| pair[0].0 < pair[1].0), "two snapshots for a sequence");
    debug_assert!(found.iter().all(|(through, name)| *name == snapshot_name(*through)));
    Ok(found)
}

/// Validates every byte of an engine image and decodes it ([`EngineImage::decode`]).
pub fn decode_image(bytes: &[u8]) -> Result<EngineImage, String> {
    EngineImage::decode(bytes).map_err(|e| e.to_string())
}

/// Writes a snapshot of `image` (taken after journal record `through`) atomically through
/// `storage`: temporary file, sync, rename, directory sync; on failure the temporary file is
/// removed. Checks that the image restores to an engine before writing.
pub fn write<S: Storage>(
    storage: &S,
    config: &EngineConfig,
    image: &EngineImage,
    through: Sequence,
) -> Result<SnapshotMeta, SnapshotError> {
    write_recording(storage, config, image, through, None)
}

/// [`write`], given the epoch of journal record `through` when the caller read it (the
/// shadow writer applied that record); `None` looks it up in the journal, walking the segment
/// that holds it.
fn write_recording<S: Storage>(
    storage: &S,
    config: &EngineConfig,
    image: &EngineImage,
    through: Sequence,
    through_epoch: Option<Epoch>,
) -> Result<SnapshotMeta, SnapshotError> {
    let file = PathBuf::from(storage.describe(&snapshot_name(through)));
    // Restored with tables fitted to the state: the check costs in proportion to what the
    // engine holds, and no third engine of the configured size is allocated beside the BLP's
    // and the shadow's. It is dropped before the file is encoded: one or the other is held.
    let engine = Engine::from_image_sized_to_fit(config, image)
        .map_err(|source| SnapshotError::Restore { file, source })?;
    let history = history_through(storage, through);
    let meta = restored_meta(storage, config, &engine, (through, through_epoch), history);
    drop(engine);
    write_file(storage, meta, image)
}

/// The epoch history of the journal's records up to `through`: the newest snapshot's at or
/// before it that reads, then the records after that snapshot. Where the journal no longer
/// holds the records right after that snapshot (retired, the snapshots after them damaged),
/// the history of the records it holds, known from its first; empty (nothing known) when it
/// does not hold every record from there through `through`: a history is never guessed.
fn history_through<S: Storage>(storage: &S, through: Sequence) -> EpochHistory {
    let listed = list(storage).unwrap_or_default();
    let base = listed
        .iter()
        .rev()
        .filter(|(taken, _)| *taken <= through)
        .find_map(|(_, name)| read_meta_streaming(storage, name).ok());
    let (mut history, from) = match base {
        Some(meta) => (based_history(&meta), meta.through.next()),
        None => (EpochHistory::default(), Sequence(1)),
    };
    let history = match crate::tail::note_epochs(&mut storage.clone(), from, through, &mut history)
    {
        _ if from > through => history,
        Ok(Some(last)) if last == through => history,
        _ => history_held(storage, from, through),
    };
    // Of the records the snapshot includes, and no others; where it says anything, it names
    // record `through`'s epoch.
    let last_start = history.starts().last().map(|&(_, first)| first);
    assert!(last_start.is_none_or(|first| first <= through), "a history past {through}");
    assert!(last_start.is_none() || history.epoch_at(through).is_some(), "short of {through}");
    history
}

/// The history of the records the journal holds up to `through`, known from the first it
/// holds, where that is after `from` (the records before it retired) and it holds every one
/// from there through `through`; else empty.
fn history_held<S: Storage>(storage: &S, from: Sequence, through: Sequence) -> EpochHistory {
    let segments = crate::scan::sorted_segments(storage).unwrap_or_default();
    let Some(&(first, _)) = segments.first().filter(|&&(first, _)| first > from) else {
        return EpochHistory::default();
    };
    let mut history = EpochHistory::default();
    match crate::tail::note_epochs(&mut storage.clone(), first, through, &mut history) {
        Ok(Some(last)) if last == through => {
            // Known from the first record held (later, where a record of an epoch going back
            // started it over), through `through`.
            let known = history.known_from();
            assert!(known.is_some_and(|known| known >= first), "a history from before {first}");
            assert!(history.epoch_at(through).is_some(), "a history short of {through}");
            history
        }
        _ => EpochHistory::default(),
    }
}

/// The history a snapshot's state carries: its own, or for a file written before snapshots
/// carried one, what its header says of its last record.
fn based_history(meta: &SnapshotMeta) -> EpochHistory {
    let mut history = meta.history.clone();
    if let (Some(epoch), None) = (meta.through_epoch, history.known_from()) {
        history.note(meta.through, epoch);
    }
    assert!(history.known_from().is_none_or(|from| from <= meta.through), "a history past its end");
    // Loading refused a history that names another record `through` than the header.
    let named = history.epoch_at(meta.through);
    debug_assert!(meta.through_epoch.is_none() || named.is_none() || named == meta.through_epoch);
    history
}

/// What the header of the snapshot through `through` records of `engine`, restored from the
/// image the file will hold: its position, clock, hashes, SKU catalogue and the `history` of
/// the records it includes.
fn restored_meta<S: Storage>(
    storage: &S,
    config: &EngineConfig,
    engine: &Engine,
    (through, through_epoch): (Sequence, Option<Epoch>),
    history: EpochHistory,
) -> SnapshotMeta {
    assert!(engine.last_sequence() <= through, "a snapshot covers the commands it includes");
    let name = snapshot_name(through);
    let file = PathBuf::from(storage.describe(&name));
    let mut skus: Vec<SkuId> = engine.sku_views().map(|view| view.sku).collect();
    skus.sort_unstable();
    // The record is still in the journal: retention runs after the snapshot is written.
    // An epoch handed in is the journal's (debug builds: looked up again).
    debug_assert!(
        through_epoch.is_none()
            || through_epoch == crate::tail::epoch_at(&mut storage.clone(), through).ok().flatten(),
        "the epoch handed in is not record {through}'s"
    );
    // A journal that starts after `through` (a standby that installed its primary's snapshot
    // and took no record since) no longer holds it; the snapshot of that name, which this
    // one replaces, recorded its epoch, and a snapshot without it would make the node's next
    // join fetch the primary's snapshot again.
    let in_journal = through_epoch
        .or_else(|| crate::tail::epoch_at(&mut storage.clone(), through).ok().flatten());
    let through_epoch = match in_journal {
        // A record of epoch 0 (a journal put together by hand) is recorded as no epoch.
        Some(epoch) => Some(epoch).filter(|epoch| epoch.0 > 0),
        None => match read_through(storage, &name) {
            Ok((recorded, epoch)) if recorded == through => epoch,
            _ => None,
        },
    };
    // Records are journaled in epoch 1 and later: zero stands for "not recorded".
    assert!(through_epoch.is_none_or(|epoch| epoch.0 > 0), "a record of epoch 0");
    // The history covers the records up to `through`.
    assert!(history.starts().last().is_none_or(|&(_, first)| first <= through), "history past");
    // A history from an earlier snapshot that names another record `through` than the journal
    // does (files put together by hand) is not written: none is, rather than a wrong one.
    let last_in_history = history.epoch_at(through);
    let history =
        if through_epoch.is_none() || last_in_history.is_none() || last_in_history == through_epoch
        {
            history
        } else {
            tracing::warn!(
                target: "ringfence",
                "the snapshot through {through} records no epoch history: the earlier snapshot's \
                 names epoch {} for record {through}, the journal epoch {}",
                last_in_history.map_or(0, |epoch| epoch.0),
                through_epoch.map_or(0, |epoch| epoch.0)
            );
            EpochHistory::default()
        };
    SnapshotMeta {
        name,
        file,
        through,
        through_epoch,
        last_sequence: engine.last_sequence(),
        now: engine.now(),
        running_hash: engine.running_hash(),
        state_digest: engine.state_digest(),
        config: config.clone(),
        skus,
        history,
        bytes: 0,
    }
}

/// Streams `image` under `meta`'s header into a file written atomically under `meta`'s name
/// ([`write_atomically_with`]), through one buffer of [`SNAPSHOT_BUFFER_BYTES`]: the file's
/// bytes are never held whole.
///
/// The header comes first in the file but records the body's checksum, known only once the
/// body is encoded, so the body is encoded twice: once to checksum it, then again to write it.
/// Writing a placeholder header and going back to fill it in would encode once, but every
/// storage would need positioned writes, and the file's first bytes would be written last.
/// Encoding costs CPU on the writer's thread (idle priority under `serve`); memory is what
/// streaming is for. The second pass checksums as it writes, and must agree with the first.
fn write_file<S: Storage>(
    storage: &S,
    meta: SnapshotMeta,
    image: &EngineImage,
) -> Result<SnapshotMeta, SnapshotError> {
    // The digest recorded is the image's own, computed without restoring (O(state)).
    debug_assert_eq!(meta.state_digest, image.state_digest(), "the image digests apart");
    #[cfg(feature = "mutations")]
    let meta = match crate::mutation::history_lost() {
        true => SnapshotMeta { history: EpochHistory::default(), ..meta },
        false => meta,
    };
    let mut buffer = Vec::with_capacity(SNAPSHOT_BUFFER_BYTES);
    let (crc, body_len) = stream_body(&meta, image, &mut buffer, &mut |_| Ok(()))
        .expect("checksumming hands the pieces to nothing that fails");
    let header = encode_header(&meta, image.encoded_len(), crc);
    let bytes = write_atomically_with(storage, &meta.name, &mut |file| {
        file.write_all(&header)?;
        let written = stream_body(&meta, image, &mut buffer, &mut |piece| file.write_all(piece))?;
        // The same image encodes to the same bytes: the header's checksum is the body's.
        assert_eq!(written, (crc, body_len), "the body encoded apart the second time");
        Ok(())
    })?;
    // Gone before the read-back below takes its own.
    drop(buffer);
    assert_eq!(bytes, SNAPSHOT_HEADER_LEN as u64 + body_len, "a snapshot file of another length");
    // What `working_bytes_max` counts a file as: never more.
    assert!(bytes <= file_len_max(&meta.config), "a snapshot file larger than its largest");
    // The pair of the check on loading: the file reads back as written, header and body
    // checksum (debug builds: streamed through a buffer, as it was written).
    debug_assert!(
        read_meta_streaming(storage, &meta.name)
            .is_ok_and(|read| read.state_digest == meta.state_digest && read.bytes == bytes),
        "the snapshot written does not read back"
    );
    debug_assert_eq!(
        read_through(storage, &meta.name).ok(),
        Some((meta.through, meta.through_epoch)),
        "the header's last record does not read back"
    );
    Ok(SnapshotMeta { bytes, ..meta })
}

/// Hands `put` the body of the snapshot of `image` under `meta` (the image, its zero padding
/// to a multiple of 16, the SKU catalogue) in pieces of at most [`SNAPSHOT_BUFFER_BYTES`]
/// assembled in `buffer`; returns the body's CRC32C and length. Stops at `put`'s first error.
fn stream_body(
    meta: &SnapshotMeta,
    image: &EngineImage,
    buffer: &mut Vec<u8>,
    put: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<(u32, u64)> {
    let room = buffer.capacity();
    let (mut crc, mut len) = (0_u32, 0_u64);
    {
        let mut counted = |piece: &[u8]| -> io::Result<()> {
            crc = crc32c::crc32c_append(crc, piece);
            len += piece.len() as u64;
            put(piece)
        };
        image.encode_pieces(buffer, SNAPSHOT_BUFFER_BYTES, &mut counted)?;
        let image_len = image.encoded_len();
        buffer.clear();
        buffer.resize(image_len.next_multiple_of(16) - image_len, 0);
        for sku in &meta.skus {
            if buffer.len() + 8 > SNAPSHOT_BUFFER_BYTES {
                counted(buffer)?;
                buffer.clear();
            }
            buffer.extend_from_slice(&sku.0.to_le_bytes());
        }
        let starts = meta.history.starts();
        if buffer.len() + 8 > SNAPSHOT_BUFFER_BYTES {
            counted(buffer)?;
            buffer.clear();
        }
        buffer.extend_from_slice(&(starts.len() as u64).to_le_bytes());
        for (index, &(epoch, first)) in starts.iter().enumerate() {
            #[cfg(feature = "mutations")]
            let off = crate::mutation::history_off_by_one() && index > 0 && first < meta.through;
            #[cfg(not(feature = "mutations"))]
            let off = false;
            let first = if off { first.next() } else { first };
            assert!(index == 0 || first > starts[index - 1].1, "a history written out of order");
            if buffer.len() + 16 > SNAPSHOT_BUFFER_BYTES {
                counted(buffer)?;
                buffer.clear();
            }
            buffer.extend_from_slice(&epoch.0.to_le_bytes());
            buffer.extend_from_slice(&first.0.to_le_bytes());
        }
        if !buffer.is_empty() {
            counted(buffer)?;
        }
    }
    let padded = image.encoded_len().next_multiple_of(16) as u64;
    let tables = 8 * meta.skus.len() as u64 + history_len(meta.history.starts().len());
    assert_eq!(len, padded + tables, "a body of another length");
    assert_eq!(len % 8, 0, "a snapshot file that is not whole words");
    // One piece at a time: the buffer never grew into a copy of the file.
    assert!(buffer.capacity() <= room.max(SNAPSHOT_BUFFER_BYTES), "the snapshot buffer grew");
    Ok((crc, len))
}

/// The most bytes a snapshot file of an engine under `config` takes: header, image, SKU
/// catalogue and epoch history, every table as full as restoring allows.
#[must_use]
pub fn file_len_max(config: &EngineConfig) -> u64 {
    let image = EngineImage::encoded_len_max(config).next_multiple_of(16);
    let history = history_len(EpochHistory::MAX);
    SNAPSHOT_HEADER_LEN as u64 + image + 8 * u64::from(config.skus_max) + history
}

/// Bytes of an epoch history of `entries` in a file: its count, then the entries.
const fn history_len(entries: usize) -> u64 {
    8 + 16 * entries as u64
}

/// Bytes of the buffer a snapshot file is written and read through, a piece at a time: the
/// file is never held whole. Large enough that each piece is one long system call, small
/// beside an image.
pub const SNAPSHOT_BUFFER_BYTES: usize = 1 << 20;
const _: () = assert!(SNAPSHOT_BUFFER_BYTES >= EngineImage::PIECE_LEN_MIN);
// The image's zero padding (at most 15 bytes) and a SKU id fit a piece beside each other.
const _: () = assert!(SNAPSHOT_BUFFER_BYTES >= 16 + 8);

/// The most memory a node holds for snapshots beside its engines, at any moment, with every
/// table full: one image, two buffers and a SKU catalogue. Its paths:
///
/// - The writer holds its image (kept from one snapshot to the next) and streams the file
///   through [`SNAPSHOT_BUFFER_BYTES`] ([`write()`]); the shadow loads a snapshot the same way,
///   the image and the buffer ([`load_streaming`]). Each holds the SKU catalogue.
/// - A primary sends its newest snapshot to a standby a chunk at a time, read from the open
///   file (the replicator's `SnapshotToSend`, its chunk at most [`SNAPSHOT_BUFFER_BYTES`]), on
///   its own thread, while the writer may be streaming the next snapshot: the second buffer.
/// - What still reads a file whole does so before the node's engines are built, and is not
///   counted here: recovery's load through a [`ReadSource`] ([`load`], [`read_meta`]) holds
///   the file and then its image ([`file_len_max`] and [`EngineImage::memory_max`]), and a
///   standby installs a file fetched whole from its primary ([`install`]) at its start.
#[must_use]
pub fn working_bytes_max(config: &EngineConfig) -> u64 {
    let image = EngineImage::memory_max(config);
    // The writer's `SnapshotMeta` and the loader's both list every SKU, 8 bytes each, and
    // each holds an epoch history; the shadow keeps its own as it follows the journal.
    let catalogue = 8 * u64::from(config.skus_max);
    let histories = 3 * history_len(EpochHistory::MAX);
    let bytes = image + 2 * SNAPSHOT_BUFFER_BYTES as u64 + catalogue + histories;
    // The fullest image holds every SKU, each more than its id; so does its file.
    assert!(image > catalogue, "an image smaller than its SKU catalogue");
    let file = file_len_max(config);
    assert!(file > SNAPSHOT_HEADER_LEN as u64 + catalogue, "a file of no image");
    bytes
}

/// Checks a snapshot file received whole from elsewhere, as [`install`] would install it:
/// its header and body checksum, and that it covers `through`. Nothing is written. A caller
/// that must drop what the snapshot replaces checks it first, so that a snapshot refused
/// drops nothing.
pub fn check_received<S: Storage>(
    storage: &S,
    through: Sequence,
    bytes: &[u8],
) -> Result<SnapshotMeta, SnapshotError> {
    let name = snapshot_name(through);
    let file = PathBuf::from(storage.describe(&name));
    // Decoded under the name it is installed as: a header covering another sequence than
    // the one announced is refused there.
    let (meta, _) = read_snapshot(&name, &file, &mut &bytes[..], false, None)?;
    assert_eq!(meta.through, through, "a snapshot installed under another sequence");
    assert!(bytes.len() >= SNAPSHOT_HEADER_LEN, "a snapshot accepted shorter than its header");
    Ok(meta)
}

/// Installs a snapshot file received whole from elsewhere (a primary, for a standby whose
/// missing records it retired): checks it ([`check_received`]), then writes it atomically
/// under its name. Recovery restores and digests it before use, like any snapshot.
pub fn install<S: Storage>(
    storage: &S,
    through: Sequence,
    bytes: &[u8],
) -> Result<SnapshotMeta, SnapshotError> {
    let meta = check_received(storage, through, bytes)?;
    // What the header check accepts (the pair of `encode_header`'s).
    assert!(meta.last_sequence <= through, "an installed snapshot past its through sequence");
    write_atomically(storage, &snapshot_name(through), bytes)?;
    Ok(meta)
}

/// Writes a snapshot of `engine` right now, on the calling thread: for a clean shutdown, after
/// the pipeline has stopped. `through` is the last journal sequence the engine applied.
pub fn write_now<S: Storage>(
    storage: &S,
    engine: &Engine,
    through: Sequence,
) -> Result<SnapshotMeta, SnapshotError> {
    assert!(engine.last_sequence() <= through);
    let meta = write(storage, engine.config(), &engine.to_image(), through)?;
    assert_eq!(meta.state_digest, engine.state_digest(), "snapshot digest equals the engine's");
    Ok(meta)
}

/// The header of the snapshot of an image of `image_len` bytes under `meta`, whose body
/// (everything after the header) checksums to `body_crc`.
fn encode_header(
    meta: &SnapshotMeta,
    image_len: usize,
    body_crc: u32,
) -> [u8; SNAPSHOT_HEADER_LEN] {
    // What `checked_meta` accepts.
    assert!(meta.last_sequence <= meta.through, "a snapshot past its through sequence");
    assert!(meta.config.validate().is_ok(), "a snapshot of an invalid configuration");
    assert!(meta.skus.windows(2).all(|pair| pair[0] < pair[1]), "a SKU catalog not sorted");
    let mut header = [0_u8; SNAPSHOT_HEADER_LEN];
    header[..8].copy_from_slice(&SNAPSHOT_MAGIC);
    put_u32(&mut header, 8, SNAPSHOT_FORMAT_VERSION);
    put_u32(&mut header, 12, SNAPSHOT_HEADER_LEN as u32);
    put_u64(&mut header, THROUGH_OFFSET, meta.through.0);
    put_u64(&mut header, THROUGH_EPOCH_OFFSET, meta.through_epoch.map_or(0, |epoch| epoch.0));
    put_u64(&mut header, LAST_SEQUENCE_OFFSET, meta.last_sequence.0);
    put_u64(&mut header, NOW_OFFSET, meta.now.0);
    put_u64(&mut header, RUNNING_HASH_OFFSET, meta.running_hash);
    put_u64(&mut header, DIGEST_OFFSET, meta.state_digest);
    put_u64(&mut header, IMAGE_LEN_OFFSET, image_len as u64);
    put_u32(&mut header, BODY_CRC_OFFSET, body_crc);
    put_u32(&mut header, SKU_COUNT_OFFSET, meta.skus.len() as u32);
    let (block, more) = header[CONFIG_OFFSET..].split_at_mut(CONFIG_BLOCK_LEN);
    format::encode_config(&meta.config, block, &mut more[..CONFIG_MORE_LEN]);
    let crc = crc32c::crc32c(&header[..HEADER_CRC_OFFSET]);
    put_u32(&mut header, HEADER_CRC_OFFSET, crc);
    // The pair of the listing's check: the header reads back as this snapshot's.
    debug_assert_eq!(
        decode_through(&meta.name, &meta.file, &header).ok(),
        Some((meta.through, meta.through_epoch)),
        "a header that does not read back"
    );
    header
}

/// Reads and checks a snapshot's header (and body checksum): for listings. The file is read
/// front to back ([`ReadSource::open_file`]: through one buffer of [`SNAPSHOT_BUFFER_BYTES`]
/// for a directory or a [`Storage`]), never held whole.
pub fn read_meta<R: ReadSource>(source: &R, name: &str) -> Result<SnapshotMeta, SnapshotError> {
    let (mut reader, file) = open_file(source, name)?;
    let (meta, image) = read_snapshot(name, &file, &mut reader, false, None)?;
    // A header that checked out was read whole.
    assert!(meta.bytes >= SNAPSHOT_HEADER_LEN as u64, "a snapshot shorter than its header");
    // Only the header and the checksum were asked for: no image's memory beside the buffer.
    assert!(image.is_none(), "an image decoded for a listing");
    Ok(meta)
}

/// [`read_meta`] of a snapshot in `storage`, read through one buffer of
/// [`SNAPSHOT_BUFFER_BYTES`] rather than whole.
pub fn read_meta_streaming<S: Storage>(
    storage: &S,
    name: &str,
) -> Result<SnapshotMeta, SnapshotError> {
    let file = PathBuf::from(storage.describe(name));
    let mut reader =
        storage.open_read(name).map_err(io_error(format!("reading {}", file.display())))?;
    let (meta, image) = read_snapshot(name, &file, &mut reader, false, None)?;
    // Only the header and the checksum were asked for.
    assert!(image.is_none(), "an image decoded for a listing");
    Ok(meta)
}

/// Snapshot `name`'s through sequence and the epoch of that record, if the file recorded it,
/// read from its header alone (its magic, version and header checksum checked; the state
/// after it is not read). What a node may say of the history its state holds when its journal
/// no longer holds the record.
pub fn read_through<R: ReadSource>(
    source: &R,
    name: &str,
) -> Result<(Sequence, Option<Epoch>), SnapshotError> {
    let file = PathBuf::from(source.describe_file(name));
    let header = source
        .read_head(name, SNAPSHOT_HEADER_LEN)
        .map_err(io_error(format!("reading {}", file.display())))?;
    decode_through(name, &file, &header)
}

/// [`read_through`] of snapshot `name` whose bytes (its header at least) are in hand.
pub fn through_in(name: &str, bytes: &[u8]) -> Result<(Sequence, Option<Epoch>), SnapshotError> {
    let header = &bytes[..bytes.len().min(SNAPSHOT_HEADER_LEN)];
    decode_through(name, std::path::Path::new(name), header)
}

fn decode_through(
    name: &str,
    file: &std::path::Path,
    header: &[u8],
) -> Result<(Sequence, Option<Epoch>), SnapshotError> {
    let invalid =
        |reason: &str| SnapshotError::Invalid { file: file.to_path_buf(), reason: reason.into() };
    if header.len() < SNAPSHOT_HEADER_LEN {
        return Err(invalid("the file is shorter than a snapshot header"));
    }
    if header[..8] != SNAPSHOT_MAGIC {
        return Err(invalid("the file does not start with the snapshot magic"));
    }
    if crc32c::crc32c(&header[..HEADER_CRC_OFFSET]) != get_u32(header, HEADER_CRC_OFFSET) {
        return Err(invalid("the header checksum does not match"));
    }
    if let Some(reason) = version_problem(header) {
        return Err(invalid(&reason));
    }
    // Read in full: a shorter file was refused above.
    assert_eq!(header.len(), SNAPSHOT_HEADER_LEN, "a snapshot header of another length");
    let through = Sequence(get_u64(header, THROUGH_OFFSET));
    if parse_snapshot_name(name).is_some_and(|named| named != through) {
        return Err(invalid("the header covers another sequence than the file's name"));
    }
    let epoch = Some(Epoch(get_u64(header, THROUGH_EPOCH_OFFSET))).filter(|epoch| epoch.0 != 0);
    if through.0 == 0 && epoch.is_some() {
        return Err(invalid("the header names the epoch of a record before the first"));
    }
    // A snapshot through record `through` names, at most, that record's epoch.
    assert!(epoch.is_none() || through.0 > 0, "an epoch for record 0");
    Ok((through, epoch))
}

/// Why a snapshot header's format version (or its header length, which a version fixes) is
/// not this build's, naming the version and which build wrote it; `None` when it is.
fn version_problem(header: &[u8]) -> Option<String> {
    assert!(header.len() >= SNAPSHOT_HEADER_LEN, "a version read from a short header");
    assert_eq!(header[..8], SNAPSHOT_MAGIC, "a version read from a file that is no snapshot");
    let (version, header_len) = (get_u32(header, 8), get_u32(header, 12));
    let read = SNAPSHOT_FORMAT_OLDEST..=SNAPSHOT_FORMAT_VERSION;
    if read.contains(&version) && header_len as usize == SNAPSHOT_HEADER_LEN {
        return None;
    }
    Some(match version {
        known if read.contains(&known) => format!(
            "a {header_len}-byte header where format version {version} has \
             {SNAPSHOT_HEADER_LEN}"
        ),
        older if older < SNAPSHOT_FORMAT_OLDEST => format!(
            "format version {older} was written by an earlier, unreleased build (this build \
             reads versions {SNAPSHOT_FORMAT_OLDEST} to {SNAPSHOT_FORMAT_VERSION})"
        ),
        newer => format!(
            "format version {newer} was written by a newer build (this build reads versions \
             {SNAPSHOT_FORMAT_OLDEST} to {SNAPSHOT_FORMAT_VERSION})"
        ),
    })
}

fn open_file<R: ReadSource>(
    source: &R,
    name: &str,
) -> Result<(Box<dyn io::Read + Send>, PathBuf), SnapshotError> {
    let file = PathBuf::from(source.describe_file(name));
    let reader = source.open_file(name).map_err(io_error(format!("reading {}", file.display())))?;
    Ok((reader, file))
}

/// A snapshot's body (everything after its header) read front to back, checksummed and
/// counted as it passes.
struct Body<'a> {
    reader: &'a mut dyn io::Read,
    crc: u32,
    len: u64,
    /// The file ended before a read was filled.
    ended: bool,
}

impl Body<'_> {
    /// Reads into as much of `into` as the file has left; how much.
    fn fill(&mut self, into: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < into.len() {
            match self.reader.read(&mut into[filled..]) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        assert!(filled <= into.len(), "a read past its buffer");
        self.crc = crc32c::crc32c_append(self.crc, &into[..filled]);
        self.len += filled as u64;
        self.ended |= filled < into.len();
        Ok(filled)
    }

    /// Reads the next `len` bytes (fewer, if the file ends first) through `buffer`.
    fn skip(&mut self, mut len: u64, buffer: &mut Vec<u8>) -> io::Result<()> {
        // Grown to a whole piece once; what it held is read over, not zeroed again.
        buffer.resize(SNAPSHOT_BUFFER_BYTES, 0);
        while len > 0 && !self.ended {
            let piece = len.min(SNAPSHOT_BUFFER_BYTES as u64) as usize;
            len -= self.fill(&mut buffer[..piece])? as u64;
        }
        // Skipped in whole, or to the file's end.
        assert!(len == 0 || self.ended, "{len} bytes left to skip in a file not ended");
        Ok(())
    }
}

/// What a checked snapshot header says of the body after it: the image's length, the image
/// padded to 16 (`None` past `usize`), the SKU count, and the engine configuration if it is
/// a valid one.
struct BodyLens {
    image: usize,
    padded: Option<usize>,
    skus: usize,
    config: Option<EngineConfig>,
    /// The file carries an epoch history after its SKU catalogue (format version 3 on).
    history: bool,
}

impl BodyLens {
    fn of(header: &[u8; SNAPSHOT_HEADER_LEN]) -> BodyLens {
        let image = usize::try_from(get_u64(header, IMAGE_LEN_OFFSET)).unwrap_or(usize::MAX);
        let padded = image.checked_next_multiple_of(16);
        let block = &header[CONFIG_OFFSET..][..CONFIG_BLOCK_LEN];
        let config = format::decode_config(block, &header[CONFIG_MORE_OFFSET..][..CONFIG_MORE_LEN]);
        // The decoder accepts only what an engine starts with.
        assert!(config.as_ref().is_none_or(|c| c.validate().is_ok()), "an invalid configuration");
        assert!(padded.is_none_or(|padded| padded >= image), "padding shortened the image");
        let skus = get_u32(header, SKU_COUNT_OFFSET) as usize;
        let history = get_u32(header, 8) >= 3;
        BodyLens { image, padded, skus, config, history }
    }
}

/// What snapshot `name` (`file` to an operator) holds, read front to back from `reader`
/// through one buffer of [`SNAPSHOT_BUFFER_BYTES`]: its header checked; its image decoded as
/// it is read if `decode` asks for it, bounded by the capacities of `config` (the header's
/// when none is given); every byte after the header checksummed. The checks are made in one
/// order, whatever the damage: the header's own, then the body's checksum, then the lengths
/// against the file's size, the configuration and the sequences, and only then the image's
/// decoding. So nothing decoded is returned from a body whose checksum fails. The image is
/// there when `decode` asked for it.
fn read_snapshot(
    name: &str,
    file: &Path,
    reader: &mut dyn io::Read,
    decode: bool,
    config: Option<&EngineConfig>,
) -> Result<(SnapshotMeta, Option<EngineImage>), SnapshotError> {
    let failed =
        |source| SnapshotError::Io { context: format!("reading {}", file.display()), source };
    let mut header = [0_u8; SNAPSHOT_HEADER_LEN];
    // Read as the body is, to its end or the file's; its checksum is its own, not the body's.
    let mut head = Body { reader: &mut *reader, crc: 0, len: 0, ended: false };
    let got = head.fill(&mut header).map_err(failed)?;
    decode_through(name, file, &header[..got])?;
    let lens = BodyLens::of(&header);
    let config = config.or(lens.config.as_ref());
    let mut body = Body { reader, crc: 0, len: 0, ended: false };
    // Zeroed by the allocator, once: each piece read over what the last one left.
    let mut buffer = vec![0_u8; SNAPSHOT_BUFFER_BYTES];
    let image = match config {
        Some(config) if decode => {
            Some(read_image(&mut body, lens.image, config, &mut buffer).map_err(failed)?)
        }
        _ => None,
    };
    // Decoding reads no byte past the image, and stops at the first problem in it.
    assert!(body.len <= lens.image as u64, "the image read past its length");
    // The rest of the image, if it was not read (or not to its end), and its padding.
    let to_catalogue = lens.padded.map_or(u64::MAX, |padded| padded as u64 - body.len);
    body.skip(to_catalogue, &mut buffer).map_err(failed)?;
    let skus = read_catalogue(&mut body, lens.skus, config, &mut buffer).map_err(failed)?;
    let history =
        if lens.history { read_history(&mut body).map_err(failed)? } else { Some(vec![]) };
    body.skip(u64::MAX, &mut buffer).map_err(failed)?;
    assert!(body.ended, "a snapshot read short of its end");
    let meta = checked_meta(name, file, &header, (body.crc, body.len), skus, history)?;
    let image = image.transpose().map_err(|e| SnapshotError::Invalid {
        file: file.to_path_buf(),
        reason: format!("image: {e}"),
    })?;
    // A valid header's configuration is there to decode the image under.
    assert!(!decode || image.is_some(), "an image asked for and not decoded");
    Ok((meta, image))
}

/// Decodes the `len`-byte image at the start of `body` under `config`'s capacities
/// ([`EngineImage::decode_pieces`]). An image cut short by the file's end is refused as cut
/// short; the lengths refuse the file before that is reported.
fn read_image(
    body: &mut Body<'_>,
    len: usize,
    config: &EngineConfig,
    buffer: &mut Vec<u8>,
) -> io::Result<Result<EngineImage, ImageDecodeError>> {
    // Each piece whole, or the file ended short of it.
    let mut take = |into: &mut [u8]| match body.fill(into)? {
        filled if filled == into.len() => Ok(()),
        _ => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
    };
    match EngineImage::decode_pieces(len, config, buffer, SNAPSHOT_BUFFER_BYTES, &mut take) {
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
            assert!(body.ended && body.len < len as u64, "an image cut short of a longer file");
            let offset = body.len as usize;
            let cut = DecodeError::Truncated { field: "snapshot image", offset };
            Ok(Err(ImageDecodeError::Bytes(cut)))
        }
        Ok(Ok(image)) => {
            // The pair of the decoder's own check: it took the image's bytes, all of them.
            assert_eq!(body.len, len as u64, "an image decoded from another length");
            Ok(Ok(image))
        }
        decoded => decoded,
    }
}

/// The `count` SKU ids after the image, as many as the file holds, room made for no more
/// than `config` allows (the count is checked against the file's size afterwards).
fn read_catalogue(
    body: &mut Body<'_>,
    count: usize,
    config: Option<&EngineConfig>,
    buffer: &mut Vec<u8>,
) -> io::Result<Vec<SkuId>> {
    let allowed = config.map_or(SNAPSHOT_BUFFER_BYTES / 8, |config| config.skus_max as usize);
    let mut skus = Vec::with_capacity(count.min(allowed));
    buffer.resize(SNAPSHOT_BUFFER_BYTES, 0);
    while skus.len() < count && !body.ended {
        let piece = 8 * (count - skus.len()).min(SNAPSHOT_BUFFER_BYTES / 8);
        let read = body.fill(&mut buffer[..piece])?;
        let ids = buffer[..read].chunks_exact(8);
        skus.extend(ids.map(|id| SkuId(u64::from_le_bytes(id.try_into().expect("8 bytes")))));
    }
    // Every id, or every whole one the file holds; never one more.
    assert!(skus.len() == count || body.ended, "a catalogue read short of a file not ended");
    assert!(skus.len() <= count, "more SKU ids read than counted");
    Ok(skus)
}

/// The epoch history after the SKU catalogue: its entries, or `None` when the file ends
/// before them or counts more than a history holds (the lengths then refuse the file).
fn read_history(body: &mut Body<'_>) -> io::Result<Option<Vec<(Epoch, Sequence)>>> {
    let mut count = [0_u8; 8];
    if body.fill(&mut count)? < count.len() {
        return Ok(None);
    }
    let count = u64::from_le_bytes(count);
    if count > EpochHistory::MAX as u64 {
        return Ok(None);
    }
    // At most a megabyte: read in one piece.
    let mut entries = vec![0_u8; 16 * count as usize];
    if body.fill(&mut entries)? < entries.len() {
        return Ok(None);
    }
    let starts: Vec<(Epoch, Sequence)> = entries
        .chunks_exact(16)
        .map(|entry| (Epoch(get_u64(entry, 0)), Sequence(get_u64(entry, 8))))
        .collect();
    assert_eq!(starts.len() as u64, count, "a history read short");
    Ok(Some(starts))
}

/// What snapshot `name`'s checked `header` says, once the body read after it (its `crc`
/// and `len`, and the SKU ids and epoch history found where the header puts them) agrees
/// with it.
fn checked_meta(
    name: &str,
    file: &Path,
    header: &[u8; SNAPSHOT_HEADER_LEN],
    (crc, len): (u32, u64),
    skus: Vec<SkuId>,
    history: Option<Vec<(Epoch, Sequence)>>,
) -> Result<SnapshotMeta, SnapshotError> {
    let invalid = |reason: &str| SnapshotError::Invalid {
        file: file.to_path_buf(),
        reason: reason.to_owned(),
    };
    // The header's own checks passed before its body was read.
    let (through, through_epoch) = decode_through(name, file, header)?;
    if crc != get_u32(header, BODY_CRC_OFFSET) {
        return Err(invalid("the body checksum does not match (truncated or damaged)"));
    }
    let lens = BodyLens::of(header);
    let expected = lens.padded.and_then(|padded| padded.checked_add(lens.skus.checked_mul(8)?));
    let history_bytes = match (&history, lens.history) {
        (Some(starts), true) => Some(history_len(starts.len())),
        (Some(_), false) => Some(0),
        (None, _) => None,
    };
    let expected = expected.zip(history_bytes).map(|(tables, history)| tables as u64 + history);
    if expected != Some(len) {
        return Err(invalid("the lengths in the header do not match the file size"));
    }
    let history = EpochHistory::from_starts(history.expect("a history the lengths counted"))
        .map_err(|reason| invalid(&format!("the epoch history: {reason}")))?;
    let config = lens
        .config
        .ok_or_else(|| invalid("the engine configuration in the header is not valid"))?;
    let meta = SnapshotMeta {
        name: name.to_owned(),
        file: file.to_path_buf(),
        through,
        through_epoch,
        last_sequence: Sequence(get_u64(header, LAST_SEQUENCE_OFFSET)),
        now: Timestamp(get_u64(header, NOW_OFFSET)),
        running_hash: get_u64(header, RUNNING_HASH_OFFSET),
        state_digest: get_u64(header, DIGEST_OFFSET),
        config,
        skus,
        history,
        bytes: SNAPSHOT_HEADER_LEN as u64 + len,
    };
    if meta.last_sequence > meta.through {
        return Err(invalid("the last sequence is past the through sequence"));
    }
    if meta.history.starts().last().is_some_and(|&(_, first)| first > meta.through) {
        return Err(invalid("the epoch history goes past the through sequence"));
    }
    let last_epoch = meta.history.epoch_at(meta.through);
    if meta.through_epoch.is_some() && last_epoch.is_some() && last_epoch != meta.through_epoch {
        return Err(invalid("the epoch history disagrees with the through epoch"));
    }
    // The length check above: the image lies inside the body, and the file held every SKU id
    // the header counts.
    assert!(lens.image as u64 <= len, "an image longer than the snapshot's body");
    assert_eq!(meta.skus.len(), lens.skus, "a SKU catalog of another count");
    Ok(meta)
}

/// Loads snapshot `name` and restores the engine, with `config` if given (else the one
/// recorded in the file). Every byte is checked: checksums, validation of the image, the
/// engine's own consistency checks, and the state digest. The file is read front to back
/// ([`ReadSource::open_file`]: through one buffer of [`SNAPSHOT_BUFFER_BYTES`] for a directory
/// or a [`Storage`], as [`load_streaming`] reads one), never held whole: the image and the
/// buffer, then the engine built from the image.
pub fn load<R: ReadSource>(
    source: &R,
    name: &str,
    config: Option<&EngineConfig>,
) -> Result<(Engine, SnapshotMeta), SnapshotError> {
    let (image, meta) = {
        let (mut reader, file) = open_file(source, name)?;
        let (meta, image) = read_snapshot(name, &file, &mut reader, true, config)?;
        let image = image.expect("an image asked for");
        // The lengths were checked against the bytes read: the image lies inside the file.
        let image_end = SNAPSHOT_HEADER_LEN as u64 + image.encoded_len() as u64;
        assert!(image_end <= meta.bytes, "an image larger than its file");
        (image, meta)
    };
    let (engine, meta) = restore(image, meta, config)?;
    // Under the configuration asked for, else the one the snapshot was taken under.
    assert_eq!(engine.config(), config.unwrap_or(&meta.config), "restored under other settings");
    Ok((engine, meta))
}

/// [`load`] of a snapshot in `storage`, read through one buffer of [`SNAPSHOT_BUFFER_BYTES`]
/// rather than whole: the image and the buffer are held, then the engine built from the image.
pub fn load_streaming<S: Storage>(
    storage: &S,
    name: &str,
    config: Option<&EngineConfig>,
) -> Result<(Engine, SnapshotMeta), SnapshotError> {
    let (image, meta) = read_image_streaming(storage, name, config)?;
    let (engine, meta) = restore(image, meta, config)?;
    // Under the configuration asked for, else the one the snapshot was taken under.
    assert_eq!(engine.config(), config.unwrap_or(&meta.config), "restored under other settings");
    Ok((engine, meta))
}

/// The image snapshot `name` in `storage` holds, read through one buffer of
/// [`SNAPSHOT_BUFFER_BYTES`] and checked as [`load_streaming`] checks it (checksums, the
/// header, the image's decoding, each table within `config`'s capacities, else the header's)
/// but not restored: what `load_streaming` restores.
pub fn read_image_streaming<S: Storage>(
    storage: &S,
    name: &str,
    config: Option<&EngineConfig>,
) -> Result<(EngineImage, SnapshotMeta), SnapshotError> {
    let file = PathBuf::from(storage.describe(name));
    let mut reader =
        storage.open_read(name).map_err(io_error(format!("reading {}", file.display())))?;
    let (meta, image) = read_snapshot(name, &file, &mut reader, true, config)?;
    let image = image.expect("an image asked for");
    // The header's checks: a state no later than the records it covers, in a file that holds
    // the image whole.
    assert!(meta.last_sequence <= meta.through, "a snapshot past its through sequence");
    let image_end = SNAPSHOT_HEADER_LEN as u64 + image.encoded_len() as u64;
    assert!(image_end <= meta.bytes, "an image larger than its file");
    Ok((image, meta))
}

/// The engine `image`, read from the snapshot `meta` describes, restores to under `config`
/// (else the snapshot's), once its state digest and sequence are the ones recorded.
fn restore(
    image: EngineImage,
    meta: SnapshotMeta,
    config: Option<&EngineConfig>,
) -> Result<(Engine, SnapshotMeta), SnapshotError> {
    let file = meta.file.clone();
    let config = config.cloned().unwrap_or_else(|| meta.config.clone());
    let engine = Engine::from_image(config, &image)
        .map_err(|source| SnapshotError::Restore { file: file.clone(), source })?;
    drop(image);
    let digest = engine.state_digest();
    // The header's config or the caller's: either restored the image, so it is valid.
    assert!(engine.config().validate().is_ok(), "an engine of an invalid configuration");
    if digest != meta.state_digest || engine.last_sequence() != meta.last_sequence {
        return Err(SnapshotError::Invalid {
            file,
            reason: format!(
                "restored state digest {digest:#018x} differs from the recorded {:#018x}",
                meta.state_digest
            ),
        });
    }
    Ok((engine, meta))
}

/// When snapshots are taken and how many are kept. Where retired segments go (an archive
/// directory, or nowhere) is the storage's setting ([`crate::storage::FileStorage::with_archive`]).
#[derive(Clone, Debug)]
pub struct SnapshotPolicy {
    /// Take a snapshot after this many commands since the last one (`None`: only on request
    /// and at shutdown).
    pub every_commands: Option<u64>,
    /// Snapshots kept; older ones are deleted, and segments only they needed are retired.
    pub keep: usize,
    /// How the writer's thread is scheduled.
    pub writer: WriterPriority,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy { every_commands: Some(1_000_000), keep: 3, writer: WriterPriority::Normal }
    }
}

/// How the snapshot writer's thread is scheduled against the node's other threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriterPriority {
    /// Like any other thread: on a machine with no core to spare, the shadow's replay of the
    /// journal and the image write take their share of CPU from the threads serving requests.
    #[default]
    Normal,
    /// Linux's `SCHED_IDLE`: the writer runs on CPU time no other thread of the machine wants,
    /// and a thread that wakes takes its core at once. The sale is served first; on a machine
    /// kept busy without pause, snapshots fall behind (counted as deferred) and the journal
    /// they would let go is kept until they catch up, which lengthens a restart's replay.
    ///
    /// The writer takes two locks the serving threads also take, each for microseconds (the
    /// counters it records into, and the data directory's manifest when it retires segments).
    /// Linux gives no priority inheritance here; a serving thread that waits on one of them
    /// leaves its core idle, which the writer then gets, so such a wait lasts about as long as
    /// the critical section plus a wake-up. Where other busy processes share the CPUs with no
    /// CPU controller between them, an idle writer gets about 0.3% of a CPU (`SCHED_IDLE`
    /// weighs 3 against 1,024 for a normal thread), so snapshots fall far behind: use
    /// `Normal` there. (A stopping node raises the writer to normal priority before joining
    /// it: [`Snapshotter::stopping`].)
    Idle,
}

impl WriterPriority {
    /// Applies this priority to the calling thread. `Normal` changes nothing.
    fn apply_to_this_thread(self) -> io::Result<()> {
        if self == WriterPriority::Normal {
            return Ok(());
        }
        set_policy(0, libc::SCHED_IDLE)?;
        // SAFETY: pid 0 is the calling thread.
        let policy = unsafe { libc::sched_getscheduler(0) };
        assert_eq!(policy, libc::SCHED_IDLE, "the writer's scheduling policy did not change");
        Ok(())
    }
}

/// Sets the scheduling `policy` (priority 0) of thread `tid` of this process (0: the calling
/// thread). Leaving `SCHED_IDLE` for `SCHED_OTHER` needs no privilege at nice 0.
fn set_policy(tid: libc::pid_t, policy: libc::c_int) -> io::Result<()> {
    assert!(tid >= 0, "a thread id is never negative");
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` that outlives the call.
    let rc = unsafe { libc::sched_setscheduler(tid, policy, &raw const param) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl std::str::FromStr for WriterPriority {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let priority = match text {
            "normal" => WriterPriority::Normal,
            "idle" => WriterPriority::Idle,
            other => return Err(format!("snapshot writer priority `{other}`: use idle or normal")),
        };
        // The configuration's word is the one logs and `defaults` print.
        debug_assert_eq!(priority.to_string(), text, "a priority printed under another name");
        Ok(priority)
    }
}

impl std::fmt::Display for WriterPriority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WriterPriority::Normal => "normal",
            WriterPriority::Idle => "idle",
        })
    }
}

/// What retention removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Snapshot files deleted.
    pub snapshots_removed: Vec<String>,
    /// Segment files retired, and where each went.
    pub segments_retired: Vec<(String, Retired)>,
    /// The first sequence replay may need (one past the oldest kept snapshot), once `keep`
    /// snapshots exist.
    pub needed_from: Option<Sequence>,
}

/// Keeps the newest `policy.keep` snapshots and retires the segments whose records all precede
/// the oldest kept one (never the newest segment). Until `keep` snapshots exist nothing is
/// retired, so the journal always reaches back to the `keep`-th newest snapshot or the start.
///
/// Only snapshots the journal has durably reached count ([`DataDir::durable_sequence`]). The
/// BLP can run ahead of the journaler, so a snapshot can be on disk before the records it
/// includes; after a power loss recovery sets such a snapshot aside, and the journal must then
/// still reach back to the snapshot before it. Newer snapshots are left alone until the
/// journal catches up.
///
/// Old snapshots go first, then the manifest is rewritten without the retired segments, then
/// their files go: a crash anywhere leaves only files recovery removes again.
pub fn apply_retention<S: Storage>(
    dir: &DataDir<S>,
    policy: &SnapshotPolicy,
) -> Result<Retention, JournalError> {
    assert!(policy.keep >= 1, "at least one snapshot is kept");
    let storage = dir.storage();
    let mut retention = Retention::default();
    let durable = dir.durable_sequence();
    let mut snapshots = list(storage)?;
    snapshots.retain(|(through, _)| *through <= durable);
    let Some(cut) = snapshots.len().checked_sub(policy.keep) else { return Ok(retention) };
    // Only snapshots the journal durably reached are counted, oldest first.
    assert!(snapshots.iter().all(|(through, _)| *through <= durable));
    assert!(cut < snapshots.len(), "retention keeps at least one snapshot");
    for (_, name) in &snapshots[..cut] {
        storage
            .remove(name)
            .map_err(|e| JournalError::io(format!("removing {}", storage.describe(name)), e))?;
        retention.snapshots_removed.push(name.clone());
    }
    if cut > 0 {
        datadir::sync_dir(storage)?;
    }
    let needed_from = snapshots[cut].0.next();
    // Replay from the oldest kept snapshot never needs what the journal has not made durable.
    assert!(needed_from.0 <= durable.0 + 1, "retention past the durable journal");
    retention.needed_from = Some(needed_from);
    retention.segments_retired = dir.retire_segments(needed_from)?;
    // Exactly `keep` durably reached snapshots are left (debug builds: a listing). Only this
    // thread writes snapshots, so none appeared meanwhile.
    debug_assert!(
        list(storage)
            .is_ok_and(|left| left.iter().filter(|s| s.0 <= durable).count() == policy.keep),
        "retention kept another number of snapshots"
    );
    Ok(retention)
}

/// Counters and the last result of the snapshot writer, shared with whoever reports them.
#[derive(Clone, Debug, Default)]
pub struct SnapshotStats {
    /// Snapshots written.
    pub written: u64,
    /// Snapshots that failed (see `last_error`); each is also logged.
    pub failed: u64,
    /// Times a due snapshot had to wait for the writer to finish the previous one (it is taken
    /// after the first command that finds the writer free).
    pub deferred_busy: u64,
    /// The last snapshot written.
    pub last: Option<SnapshotMeta>,
    /// The journal sequence the newest snapshot in the data directory covers, 0 if there is
    /// none: the one found at start, then each written. With the durable sequence it gives
    /// how much journal a restart would replay.
    pub through: u64,
    /// The last failure, of a snapshot or of retention (snapshots are not fatal: the journal
    /// remains the record).
    pub last_error: Option<String>,
    /// Snapshots the BLP handed to the writer (each a pause of the BLP for the hand-off only).
    pub pauses: u64,
    /// The longest hand-off, in nanoseconds.
    pub pause_ns_max: u64,
    /// The last hand-off, in nanoseconds.
    pub pause_ns_last: u64,
    /// Journal records the writer's shadow engine applied to follow the BLP.
    pub shadow_records: u64,
    /// The writer thread's time on the last snapshot written (catching up, copying, writing,
    /// retention), in nanoseconds.
    pub writer_ns_last: u64,
    /// Retention runs that failed after their snapshot was written (logged too).
    pub retention_failed: u64,
    /// Old snapshot files deleted by retention.
    pub snapshots_removed: u64,
    /// Segments retired (archived or deleted) by retention.
    pub segments_retired: u64,
    /// Snapshots abandoned because the node stopped while the writer was on them (the node's
    /// own final snapshot, or the journal, covers what they would have).
    pub cancelled: u64,
    /// Whether the writer's shadow engine is built and following the journal, so that the
    /// next snapshot only applies the records since the last one. Periodic snapshots build it
    /// when the writer starts; otherwise at the first snapshot, and again after a failure.
    pub shadow_ready: bool,
}

impl SnapshotStats {
    /// The counters as (metric name, help text, value), for a Prometheus text endpoint.
    #[must_use]
    pub fn counters(&self) -> [(&'static str, &'static str, f64); 14] {
        // Both are set under one lock, so a copy never sees them apart. (Written and failed
        // against pauses are counted under separate locks, so they may be seen apart.)
        assert!(self.pause_ns_last <= self.pause_ns_max, "a last pause above the longest");
        let seconds = |ns: u64| ns as f64 / 1e9;
        [
            ("ringfence_snapshots_written_total", "Snapshots written.", self.written as f64),
            ("ringfence_snapshots_failed_total", "Snapshots that failed.", self.failed as f64),
            (
                "ringfence_snapshots_deferred_total",
                "Due snapshots that waited for the writer.",
                self.deferred_busy as f64,
            ),
            (
                "ringfence_snapshot_pauses_total",
                "Snapshots the BLP handed over.",
                self.pauses as f64,
            ),
            (
                "ringfence_snapshot_pause_seconds_max",
                "Longest BLP hand-off.",
                seconds(self.pause_ns_max),
            ),
            (
                "ringfence_snapshot_pause_seconds_last",
                "Last BLP hand-off.",
                seconds(self.pause_ns_last),
            ),
            (
                "ringfence_snapshot_shadow_records_total",
                "Journal records the snapshot writer's shadow engine applied.",
                self.shadow_records as f64,
            ),
            (
                "ringfence_snapshot_writer_seconds_last",
                "Writer time on the last snapshot.",
                seconds(self.writer_ns_last),
            ),
            (
                "ringfence_snapshot_retention_failed_total",
                "Retention runs that failed.",
                self.retention_failed as f64,
            ),
            (
                "ringfence_snapshots_removed_total",
                "Old snapshots deleted by retention.",
                self.snapshots_removed as f64,
            ),
            (
                "ringfence_segments_retired_total",
                "Journal segments retired by retention.",
                self.segments_retired as f64,
            ),
            (
                "ringfence_snapshots_cancelled_total",
                "Snapshots abandoned because the node stopped during them.",
                self.cancelled as f64,
            ),
            (
                "ringfence_snapshot_shadow_ready",
                "1 once the snapshot writer's shadow engine follows the journal.",
                f64::from(u8::from(self.shadow_ready)),
            ),
            (
                "ringfence_snapshot_through",
                "Journal sequence the newest snapshot covers (0: none); a restart replays the rest.",
                self.through as f64,
            ),
        ]
    }
}

/// A handle on a [`Snapshotter`]'s counters, readable from any thread (e.g. `/metrics`).
#[derive(Clone, Debug)]
pub struct SnapshotStatsHandle(Arc<Mutex<SnapshotStats>>);

impl SnapshotStatsHandle {
    /// A copy of the counters now.
    #[must_use]
    pub fn get(&self) -> SnapshotStats {
        self.0.lock().expect("snapshot stats lock").clone()
    }
}

/// A snapshot the BLP asked for: through which sequence, and what its engine held there, so
/// the shadow engine can prove it reached the same state.
struct Job {
    through: Sequence,
    running_hash: u64,
    last_sequence: Sequence,
}

/// The snapshot hook for the pipeline. On the BLP thread it only counts commands and, when a
/// snapshot is due (an operator's `Command::Snapshot`, or every N commands), hands its writer
/// thread a `Job`: three words, no copy of the state. The writer keeps a shadow engine that
/// follows the journal (`Shadow`): it applies the journal's records up to the job's sequence,
/// checks that it reached the BLP's running hash, and snapshots its own state. So the BLP never
/// pauses for a snapshot, whatever the size of its state — the LMAX way: a second copy of the
/// business logic, fed the same journal, does the slow work. The price is a second engine's
/// memory and the CPU to apply every command twice (off the BLP's thread, and only when a
/// snapshot is due).
pub struct Snapshotter<S: Storage> {
    dir: DataDir<S>,
    policy: SnapshotPolicy,
    since_last: u64,
    /// An operator asked for a snapshot while the writer was busy: take it when it is free.
    requested: bool,
    /// A due snapshot is waiting for the writer (counted once per wait).
    waiting: bool,
    deferred: u64,
    jobs: Option<SyncSender<Job>>,
    busy: Arc<AtomicBool>,
    /// Set when the node stops: the writer abandons the job it is on.
    cancel: Arc<AtomicBool>,
    /// The engine's last applied sequence, for the writer to follow the journal up to.
    published: Arc<AtomicU64>,
    stats: Arc<Mutex<SnapshotStats>>,
    worker: Option<JoinHandle<()>>,
    /// The writer thread's id once it has started (0 before, and without a thread).
    worker_tid: Arc<AtomicI32>,
}

impl<S: Storage> Snapshotter<S> {
    /// Starts the writer thread, writing into `dir` (from [`crate::recovery::Recovered`]). Its
    /// shadow engine starts, at the first job, from the newest snapshot in `dir` and the journal
    /// after it, as recovery does.
    pub fn start(
        dir: DataDir<S>,
        policy: SnapshotPolicy,
        config: EngineConfig,
    ) -> Result<Snapshotter<S>, SnapshotError> {
        let (mut snapshotter, writer) =
            Snapshotter::pair(dir, policy, config, Some(RECORD_VISIBLE_WAIT));
        let priority = snapshotter.policy.writer;
        let worker_tid = Arc::clone(&snapshotter.worker_tid);
        let cancel = Arc::clone(&snapshotter.cancel);
        let worker = std::thread::Builder::new()
            .name("ringfence-snapshot".to_owned())
            .spawn(move || {
                // Only a hint: a writer left at normal priority still writes every snapshot.
                if let Err(error) = priority.apply_to_this_thread() {
                    tracing::warn!(
                        target: "ringfence",
                        "snapshot writer: cannot run at {priority} priority ({error}); it runs \
                         at normal priority"
                    );
                }
                // Published once the priority is set; a stop that began before it could see
                // the id (`stopping` raises the writer) is seen here: either way it is raised.
                // SAFETY: gettid has no preconditions.
                worker_tid.store(unsafe { libc::gettid() }, Ordering::SeqCst);
                if priority == WriterPriority::Idle && cancel.load(Ordering::SeqCst) {
                    let _ = set_policy(0, libc::SCHED_OTHER);
                }
                writer.run_until_closed();
            })
            .map_err(io_error("starting the snapshot writer thread".to_owned()))?;
        snapshotter.worker = Some(worker);
        Ok(snapshotter)
    }

    /// The hook and its writer without a thread: the caller runs each snapshot the hook asks
    /// for with [`SnapshotWriter::step`]. A record the writer cannot read yet fails the
    /// snapshot at once (nothing waits on a clock); the next one starts over.
    #[must_use]
    pub fn stepped(
        dir: DataDir<S>,
        policy: SnapshotPolicy,
        config: EngineConfig,
    ) -> (Snapshotter<S>, SnapshotWriter<S>) {
        Snapshotter::pair(dir, policy, config, None)
    }

    fn pair(
        dir: DataDir<S>,
        policy: SnapshotPolicy,
        config: EngineConfig,
        visible_wait: Option<Duration>,
    ) -> (Snapshotter<S>, SnapshotWriter<S>) {
        assert!(policy.keep >= 1, "at least one snapshot is kept");
        assert!(config.validate().is_ok(), "a snapshotter of an invalid configuration");
        let (jobs, receiver) = mpsc::sync_channel::<Job>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let cancel = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(0));
        // The newest snapshot already there, by name: what a restart now would start from (or
        // an older one, if that file were damaged).
        let newest = list(dir.storage()).ok().and_then(|found| found.last().map(|(s, _)| s.0));
        let stats = Arc::new(Mutex::new(SnapshotStats {
            through: newest.unwrap_or(0),
            ..SnapshotStats::default()
        }));
        let shadow =
            Shadow::new(dir.clone(), config, policy.clone(), visible_wait, Arc::clone(&cancel));
        let writer = SnapshotWriter {
            shadow,
            jobs: receiver,
            busy: Arc::clone(&busy),
            published: Arc::clone(&published),
            stats: Arc::clone(&stats),
        };
        let snapshotter = Snapshotter {
            dir,
            policy,
            since_last: 0,
            requested: false,
            waiting: false,
            deferred: 0,
            jobs: Some(jobs),
            busy,
            cancel,
            published,
            stats,
            worker: None,
            worker_tid: Arc::new(AtomicI32::new(0)),
        };
        (snapshotter, writer)
    }

    /// A handle on the counters, readable from any thread.
    #[must_use]
    pub fn stats_handle(&self) -> SnapshotStatsHandle {
        SnapshotStatsHandle(Arc::clone(&self.stats))
    }

    /// A copy of the counters.
    #[must_use]
    pub fn stats(&self) -> SnapshotStats {
        self.stats.lock().expect("snapshot stats lock").clone()
    }

    /// Waits for the writer to finish queued work and stops it.
    pub fn finish(mut self) -> SnapshotStats {
        self.stop_worker();
        self.stats()
    }

    /// Clean shutdown: abandons the snapshot the writer is on (this one covers it), then writes
    /// one of `engine` (which has applied every command up to `through`) on this thread and
    /// applies retention.
    pub fn shutdown(
        mut self,
        engine: &Engine,
        through: Sequence,
    ) -> Result<SnapshotMeta, JournalError> {
        self.stopping();
        self.stop_worker();
        let meta = write_now(self.dir.storage(), engine, through)?;
        apply_retention(&self.dir, &self.policy)?;
        Ok(meta)
    }

    /// The node is stopping: the writer abandons the snapshot it is on at its next check, and
    /// a writer at idle priority is raised to normal, so that stopping, which joins it, waits
    /// for the writer's work at the pace of any thread — not at the fraction of a CPU an idle
    /// thread gets on a busy machine (what it is still doing is the image it is writing, past
    /// its last cancel check, or a record batch). Nothing is served any more to yield to.
    pub fn stopping(&self) {
        // Sequentially consistent with the writer's publication of its id: one of the two
        // sees the other's store.
        self.cancel.store(true, Ordering::SeqCst);
        let tid = self.worker_tid.load(Ordering::SeqCst);
        if self.policy.writer != WriterPriority::Idle || tid == 0 || self.worker.is_none() {
            return;
        }
        // A writer that already ended (ESRCH) needs nothing; any other failure leaves it idle.
        match set_policy(tid, libc::SCHED_OTHER) {
            Err(error) if error.raw_os_error() != Some(libc::ESRCH) => tracing::warn!(
                target: "ringfence",
                "snapshot writer: cannot raise it to normal priority for the stop ({error}); \
                 the stop waits for it at idle priority"
            ),
            Err(_) => {}
            Ok(()) => {
                // SAFETY: no preconditions; a thread that has just ended answers -1.
                let policy = unsafe { libc::sched_getscheduler(tid) };
                assert!(policy == libc::SCHED_OTHER || policy == -1, "the writer stayed idle");
            }
        }
    }

    fn stop_worker(&mut self) {
        self.jobs = None;
        if let Some(worker) = self.worker.take() {
            worker.join().expect("the snapshot writer thread panicked");
            // Every job sent was finished: a stopped writer is not busy.
            assert!(!self.busy.load(Ordering::Acquire), "the snapshot writer stopped mid-job");
        }
    }

    /// Hands the writer a snapshot through `through`; returns false (taking nothing) if the
    /// writer is still busy with the previous one.
    fn take(&mut self, engine: &Engine, through: Sequence) -> bool {
        // A snapshot through `through` holds no command after it.
        assert!(engine.last_sequence() <= through, "a snapshot ahead of its through sequence");
        // Checked without the stats lock: while the writer is busy this runs on every command.
        if self.busy.swap(true, Ordering::AcqRel) {
            if !self.waiting {
                self.waiting = true;
                self.deferred += 1;
                // Shown while it waits, not only once it is taken: a writer that stays busy
                // (a shadow engine still being built, a disk that stalls) is seen at once.
                // Once per wait, so the lock is not taken on every command.
                self.stats.lock().expect("snapshot stats lock").deferred_busy = self.deferred;
            }
            return false;
        }
        self.waiting = false;
        let started = Instant::now();
        let job = Job {
            through,
            running_hash: engine.running_hash(),
            last_sequence: engine.last_sequence(),
        };
        self.since_last = 0;
        // Counted before the job is sent, under the lock the writer records its end with: a
        // job that fails at once must not be recorded as done before it was taken.
        let mut stats = self.stats.lock().expect("snapshot stats lock");
        stats.pauses += 1;
        let sent = self.jobs.as_ref().is_some_and(|jobs| jobs.try_send(job).is_ok());
        let pause_ns = started.elapsed().as_nanos() as u64;
        stats.deferred_busy = self.deferred;
        stats.pause_ns_last = pause_ns;
        stats.pause_ns_max = stats.pause_ns_max.max(pause_ns);
        if !sent {
            stats.last_error = Some("the snapshot writer is not running".to_owned());
            self.busy.store(false, Ordering::Release);
        }
        true
    }
}

/// The writer's side: the shadow engine and the jobs the hook hands it.
pub struct SnapshotWriter<S: Storage> {
    shadow: Shadow<S>,
    jobs: Receiver<Job>,
    busy: Arc<AtomicBool>,
    /// The BLP's last applied sequence: every record up to it is appended.
    published: Arc<AtomicU64>,
    stats: Arc<Mutex<SnapshotStats>>,
}

impl<S: Storage> SnapshotWriter<S> {
    /// Writes the snapshot the hook asked for, if it asked for one; whether it did. A failure
    /// is counted and logged, never returned: the journal still holds every command.
    pub fn step(&mut self) -> bool {
        match self.jobs.try_recv() {
            Ok(job) => {
                self.run(&job);
                // One job at a time: the hook hands over the next only once this one is done.
                assert!(!self.busy.load(Ordering::Acquire), "a job done left the writer busy");
                true
            }
            Err(_) => false,
        }
    }

    /// The writer thread: every job, until the hook is gone. Under periodic snapshots the
    /// shadow engine is built first, while nothing waits for it, and follows the journal
    /// between jobs ([`FOLLOW_EVERY`]), so that a snapshot applies only the records since the
    /// last round, and the second apply of each command is spread over time instead of
    /// arriving as one burst per snapshot.
    fn run_until_closed(mut self) {
        let periodic = self.shadow.policy.every_commands.is_some();
        if periodic {
            self.shadow.prepare();
            self.stats.lock().expect("snapshot stats lock").shadow_ready =
                self.shadow.following.is_some();
        }
        loop {
            let job = if periodic {
                match self.jobs.recv_timeout(FOLLOW_EVERY) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => {
                        self.follow();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match self.jobs.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            };
            self.run(&job);
        }
        // The hook is gone, and every job it handed over was run first.
        assert!(!self.busy.load(Ordering::Acquire), "the writer stopped with a job in flight");
    }

    /// One round of following: the records the BLP has applied since the last round. Not
    /// while a snapshot is due: its job catches up through its own sequence, and the shadow
    /// must not pass it. (The hook marks the writer busy before it publishes any sequence
    /// after the job's, so a sequence read here past the job's is seen with the mark.)
    fn follow(&mut self) {
        let through = Sequence(self.published.load(Ordering::Acquire));
        if self.busy.load(Ordering::Acquire) {
            return;
        }
        let applied = self.shadow.follow(through);
        let ready = self.shadow.following.is_some();
        if applied > 0 || !ready {
            let mut stats = self.stats.lock().expect("snapshot stats lock");
            stats.shadow_records += applied;
            stats.shadow_ready = ready;
        }
    }

    fn run(&mut self, job: &Job) {
        // The hook marks the writer busy before it hands a job over, and never asks for a
        // snapshot through a sequence before the engine's last.
        assert!(self.busy.load(Ordering::Acquire), "a job the hook did not mark");
        assert!(job.last_sequence <= job.through, "a job behind its engine");
        let done = self.shadow.run(job);
        let ready = self.shadow.following.is_some();
        self.busy.store(false, Ordering::Release);
        // Counted once the writer is free again: whoever sees the count can have the next
        // snapshot taken at once, not deferred.
        done.record(&self.stats, ready);
    }
}

/// How long the shadow waits for a record the BLP has applied to be readable in the journal.
/// A file-backed journal's appends are visible at once (the reader maps the same page cache);
/// a storage that publishes writes only when it syncs them needs the journal's next sync.
const RECORD_VISIBLE_WAIT: Duration = Duration::from_secs(5);
/// Bytes of records read from the journal at a time.
const SHADOW_READ_BYTES: usize = 1 << 20;
/// How often the writer's shadow engine follows the journal between snapshots.
const FOLLOW_EVERY: Duration = Duration::from_millis(50);
/// Bytes of records the shadow applies in one round of following, at most: a round stays
/// short, and a job that arrives meanwhile waits for little.
const FOLLOW_BYTES: usize = 8 << 20;

/// The writer thread's engine: a second copy of the business logic that follows the journal
/// and is snapshotted in place of the BLP's own.
struct Shadow<S: Storage> {
    dir: DataDir<S>,
    config: EngineConfig,
    policy: SnapshotPolicy,
    /// The engine and the journal reader positioned after its last sequence; `None` until the
    /// first job, and again after a failure (the next job starts over from the newest
    /// snapshot).
    following: Option<(Engine, Tail<S>)>,
    /// The last journal record the shadow applied, and its epoch, which the snapshot through
    /// it records; `None` when following starts over.
    last_record: Option<(Sequence, Epoch)>,
    /// The epochs of the records the shadow's state includes: the snapshot's it started from,
    /// then each record it applied.
    history: EpochHistory,
    /// The previous snapshot's image, copied into for the next one: memory already faulted in.
    image: Option<EngineImage>,
    records: Vec<u8>,
    /// How long to wait for a record to become readable; `None`: fail at once.
    visible_wait: Option<Duration>,
    /// Set when the node stops: the job in hand is abandoned at the next batch of records.
    cancel: Arc<AtomicBool>,
}

impl<S: Storage> Shadow<S> {
    fn new(
        dir: DataDir<S>,
        config: EngineConfig,
        policy: SnapshotPolicy,
        visible_wait: Option<Duration>,
        cancel: Arc<AtomicBool>,
    ) -> Shadow<S> {
        assert!(policy.keep >= 1, "at least one snapshot is kept");
        assert!(config.validate().is_ok(), "a shadow of an invalid configuration");
        let records = Vec::new();
        let image = None;
        let (following, last_record, history) = (None, None, EpochHistory::default());
        Shadow {
            dir,
            config,
            policy,
            following,
            last_record,
            history,
            image,
            records,
            visible_wait,
            cancel,
        }
    }

    /// Builds the shadow engine from the newest snapshot, before any job asks for it. A
    /// failure is only logged: the first job starts over, and reports it if it persists.
    fn prepare(&mut self) {
        assert!(self.following.is_none(), "the shadow is prepared once, before any job");
        match self.start_following(Sequence(u64::MAX)) {
            Ok((engine, tail)) => {
                // Following from the snapshot: the reader is past everything its state holds.
                assert!(engine.last_sequence() < tail.next(), "a reader behind the engine");
                self.following = Some((engine, tail));
                self.last_record = None;
            }
            Err(error) => tracing::warn!(
                target: "ringfence",
                "the snapshot writer could not build its shadow engine yet (the first snapshot \
                 tries again): {error}"
            ),
        }
    }

    /// Applies the journal's records up to `through` (a sequence the BLP has applied, so
    /// appended), at most [`FOLLOW_BYTES`] of them, and returns how many. Best effort: a record
    /// not readable yet ends the round (with a fresh reader for the next, whose map sees the
    /// segments added since); a record that does not decode drops the shadow, and the next job
    /// starts over and reports it.
    fn follow(&mut self, through: Sequence) -> u64 {
        let Some((engine, tail)) = self.following.as_mut() else { return 0 };
        let start = engine.last_sequence();
        let (mut applied, mut budget) = (0, FOLLOW_BYTES);
        let mut broken = None;
        while tail.next() <= through && budget > 0 && !self.cancel.load(Ordering::Acquire) {
            self.records.clear();
            if tail.read(through, &mut self.records, SHADOW_READ_BYTES.min(budget)).is_err() {
                if let Ok(fresh) = Tail::open(self.dir.storage().clone(), tail.next()) {
                    *tail = fresh;
                }
                break;
            }
            budget = budget.saturating_sub(self.records.len());
            match apply_records(engine, &self.records, &mut self.last_record, &mut self.history) {
                Ok(count) => applied += count,
                Err(error) => {
                    broken = Some(error);
                    break;
                }
            }
        }
        // Never past what the BLP had applied (unless the shadow was already), one record per
        // sequence, and the reader still after the engine's state.
        assert!(engine.last_sequence() <= through.max(start), "followed past the BLP");
        assert!(applied <= through.0.saturating_sub(start.0), "more records than sequences");
        assert!(tail.next() > engine.last_sequence(), "the reader behind the engine");
        let last = self.last_record.map(|(at, _)| at);
        assert!(last.is_none_or(|at| at <= through.max(start)), "a record noted past the BLP");
        if let Some(error) = broken {
            tracing::warn!(target: "ringfence", "the snapshot writer stops following: {error}");
            self.following = None;
        }
        applied
    }

    /// Brings the shadow to the job's sequence and writes its snapshot; failures are logged
    /// and counted, never fatal (the journal still holds every command).
    fn run(&mut self, job: &Job) -> JobDone {
        let started = Instant::now();
        let applied = match self.catch_up(job) {
            _ if self.cancel.load(Ordering::Acquire) => return JobDone::Cancelled,
            Ok(applied) => applied,
            Err(error) => {
                self.following = None;
                tracing::error!(
                    target: "ringfence",
                    "snapshot through {} failed (the journal still holds every command): {error}",
                    job.through
                );
                return JobDone::Failed(error);
            }
        };
        let (engine, tail) = self.following.take().expect("caught up");
        // Caught up exactly: the state the BLP had, and the reader at the next record.
        assert_eq!(engine.last_sequence(), job.last_sequence, "the shadow is not at the job");
        assert_eq!(tail.next(), job.through.next(), "the reader is not after the job");
        let image = match self.image.take() {
            Some(mut image) => {
                engine.copy_image_into(&mut image);
                image
            }
            None => engine.to_image_unsorted(),
        };
        // Records are journaled in epoch 1 and later: one of epoch 0 (a journal put together
        // by hand) is recorded as no epoch.
        let last = self.last_record.filter(|&(at, epoch)| at == job.through && epoch.0 > 0);
        let epoch = last.map(|(_, epoch)| epoch);
        let written = self.restore_and_write(engine, tail, &image, job.through, epoch);
        self.image = Some(image);
        let meta = match written {
            Ok(meta) => meta,
            Err(error) => {
                tracing::error!(
                    target: "ringfence",
                    "snapshot through {} failed (the journal still holds every command): {error}",
                    job.through
                );
                return JobDone::Failed(error.to_string());
            }
        };
        assert_eq!(meta.running_hash, job.running_hash, "snapshot restores to the BLP's hash");
        // A file is more than its header: the image follows.
        assert!(meta.bytes > SNAPSHOT_HEADER_LEN as u64, "a snapshot with no image");
        assert_eq!(
            meta.last_sequence, job.last_sequence,
            "snapshot restores to the BLP's sequence"
        );
        let retention = apply_retention(&self.dir, &self.policy);
        if let Err(error) = &retention {
            let message =
                format!("snapshot retention failed (retried after the next one): {error}");
            tracing::warn!(target: "ringfence", "{message}");
        }
        let writer_ns = started.elapsed().as_nanos() as u64;
        let retention = retention.map_err(|error| error.to_string());
        JobDone::Written { meta: Box::new(meta), retention, applied, writer_ns }
    }

    /// Proves `image`, the shadow's state, restores as recovery would restore it, and writes
    /// it. The engine it restores to, at the configured capacities, is the shadow from here
    /// on: the old one is dropped first, so the writer holds one engine and the image (and,
    /// while writing, the buffer it streams the file through), never a second engine beside
    /// the BLP's and its own.
    /// An image that does not restore leaves no shadow: the next job starts over from the
    /// newest snapshot.
    fn restore_and_write(
        &mut self,
        shadow: Engine,
        tail: Tail<S>,
        image: &EngineImage,
        through: Sequence,
        epoch: Option<Epoch>,
    ) -> Result<SnapshotMeta, SnapshotError> {
        let (running_hash, digest) = (shadow.running_hash(), image.state_digest());
        drop(shadow);
        let storage = self.dir.storage();
        let restored = Engine::from_image(self.config.clone(), image).map_err(|source| {
            let file = PathBuf::from(storage.describe(&snapshot_name(through)));
            SnapshotError::Restore { file, source }
        })?;
        // The shadow it replaces, to the bit: the same running hash and state.
        assert_eq!(restored.running_hash(), running_hash, "the restored shadow's hash");
        assert_eq!(restored.state_digest(), digest, "the restored shadow's state");
        let history = self.history.clone();
        let meta = restored_meta(storage, &self.config, &restored, (through, epoch), history);
        self.following = Some((restored, tail));
        write_file(storage, meta, image)
    }

    /// Applies the journal's records up to the job's sequence and checks the shadow reached
    /// the state the BLP had there. Returns how many records it applied.
    fn catch_up(&mut self, job: &Job) -> Result<u64, String> {
        if self.following.is_none() {
            self.following = Some(self.start_following(job.through)?);
            self.last_record = None;
        }
        let (engine, tail) = self.following.as_mut().expect("following");
        if engine.last_sequence() > job.through {
            // A snapshot through an older sequence than one already written: a restarted
            // writer's leftovers cannot cause this; the BLP only moves forward.
            return Err(format!(
                "the shadow engine is at {} past the requested {}",
                engine.last_sequence(),
                job.through
            ));
        }
        let storage = self.dir.storage();
        let mut applied = 0;
        let mut waiting_since: Option<Instant> = None;
        while tail.next() <= job.through {
            if self.cancel.load(Ordering::Acquire) {
                return Err("cancelled: the node is stopping".to_owned());
            }
            self.records.clear();
            match tail.read(job.through, &mut self.records, SHADOW_READ_BYTES) {
                Ok(_) => waiting_since = None,
                Err(error) => {
                    // The reader's map may predate a segment the journal has since added: read
                    // again from a fresh one at once. Still unreadable (not synced yet, or
                    // damaged): again, for a while, if this writer may wait.
                    let since = waiting_since.replace(Instant::now());
                    if let Some(since) = since {
                        if self.visible_wait.is_none_or(|wait| since.elapsed() > wait) {
                            return Err(format!("reading the journal: {error}"));
                        }
                        waiting_since = Some(since);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    *tail = Tail::open(storage.clone(), engine.last_sequence().next())
                        .map_err(|error| format!("reading the journal: {error}"))?;
                    assert_eq!(tail.next(), engine.last_sequence().next(), "a reader elsewhere");
                    continue;
                }
            }
            applied +=
                apply_records(engine, &self.records, &mut self.last_record, &mut self.history)?;
        }
        // The reader stops at the job's sequence.
        let last = self.last_record.map(|(at, _)| at);
        assert!(last.is_none_or(|at| at <= job.through), "a record noted past the job");
        if engine.last_sequence() != job.last_sequence || engine.running_hash() != job.running_hash
        {
            return Err(format!(
                "the shadow engine reached sequence {} with running hash {:#018x}, but the BLP \
                 was at {} with {:#018x}: the journal does not reproduce the BLP's state",
                engine.last_sequence(),
                engine.running_hash(),
                job.last_sequence,
                job.running_hash
            ));
        }
        Ok(applied)
    }

    /// The newest snapshot at or before `through` that loads, and a reader of the journal
    /// after it; or an empty engine and the journal from its first record.
    fn start_following(&mut self, through: Sequence) -> Result<(Engine, Tail<S>), String> {
        // Loading decodes an image of its own: the last snapshot's is not held beside it.
        self.image = None;
        let storage = self.dir.storage();
        let listed = list(storage).map_err(|error| error.to_string())?;
        let mut start = None;
        self.history = EpochHistory::default();
        for (taken, name) in listed.into_iter().rev().filter(|(taken, _)| *taken <= through) {
            match load_streaming(storage, &name, Some(&self.config)) {
                Ok((engine, meta)) => {
                    self.history = based_history(&meta);
                    start = Some((engine, taken));
                    break;
                }
                Err(error) => {
                    tracing::warn!(target: "ringfence", "snapshot writer skips {name}: {error}");
                }
            }
        }
        // An empty engine only where no snapshot restored: never two engines at once.
        let (engine, taken) =
            start.unwrap_or_else(|| (Engine::new(self.config.clone()), Sequence(0)));
        // The history of the records the starting state includes, none after them.
        let last_start = self.history.starts().last().map(|&(_, first)| first);
        assert!(last_start.is_none_or(|first| first <= taken), "a history past {taken}");
        // Every journal record up to `taken` is in the snapshot, and they are all mutating.
        assert!(engine.last_sequence() <= taken, "a snapshot past its own name");
        let tail = Tail::open(storage.clone(), taken.next())
            .map_err(|error| format!("reading the journal after {taken}: {error}"))?;
        assert_eq!(tail.next(), taken.next(), "a reader positioned elsewhere");
        Ok((engine, tail))
    }
}

/// Decodes whole records and applies them in order; returns how many, and notes the last one
/// decoded in `last`, and each one's epoch in `history`.
fn apply_records(
    engine: &mut Engine,
    mut records: &[u8],
    last: &mut Option<(Sequence, Epoch)>,
    history: &mut EpochHistory,
) -> Result<u64, String> {
    let mut applied = 0;
    // Hinted as decoded, applied a few records later (as recovery does); all of them applied
    // before returning, a record that fails to decode or not.
    let mut ahead = Lookahead::default();
    let mut next = engine.last_sequence().next();
    let mut decoded = Ok(());
    while !records.is_empty() {
        let (header, sequenced, len) = match record::decode(records) {
            Ok(record) => record,
            Err(error) => {
                decoded = Err(format!("decoding the record after {}: {error}", next.0 - 1));
                break;
            }
        };
        // The tail hands over whole records, in sequence.
        assert!(len <= records.len() && len % record::RECORD_ALIGN == 0, "a part of a record");
        assert_eq!(header.sequence, next, "a record out of sequence");
        *last = Some((header.sequence, header.epoch));
        history.note(header.sequence, header.epoch);
        ahead.push(engine, sequenced, |engine, command| {
            engine.apply(command);
        });
        next = next.next();
        records = &records[len..];
        applied += 1;
    }
    ahead.finish(engine, |engine, command| {
        engine.apply(command);
    });
    // The record noted is the one before the next expected, in the history's last epoch.
    debug_assert!(applied == 0 || last.is_some_and(|(at, _)| at.next() == next), "noted another");
    let named =
        |(at, epoch): (Sequence, Epoch)| epoch.0 == 0 || history.epoch_at(at) == Some(epoch);
    assert!(
        applied == 0 || last.is_some_and(named),
        "the history names another epoch for the last record applied"
    );
    decoded.map(|()| applied)
}

/// What a snapshot job came to, for the stats.
enum JobDone {
    /// Abandoned: the node stopped.
    Cancelled,
    Failed(String),
    Written {
        meta: Box<SnapshotMeta>,
        retention: Result<Retention, String>,
        /// Journal records the shadow applied to catch up.
        applied: u64,
        /// The writer thread's time on the job: catching up, copying, writing, retention.
        writer_ns: u64,
    },
}

impl JobDone {
    fn record(self, stats: &Mutex<SnapshotStats>, shadow_ready: bool) {
        let mut stats = stats.lock().expect("snapshot stats lock");
        // Every job was counted when the BLP handed it over, before it was sent.
        assert!(
            stats.written + stats.failed + stats.cancelled < stats.pauses,
            "a snapshot done that was never taken"
        );
        stats.shadow_ready = shadow_ready;
        match self {
            JobDone::Cancelled => {
                stats.cancelled += 1;
                tracing::info!(target: "ringfence", "snapshot abandoned: the node is stopping");
            }
            JobDone::Failed(error) => {
                stats.failed += 1;
                stats.last_error = Some(error);
            }
            JobDone::Written { meta, retention, applied, writer_ns } => {
                stats.written += 1;
                stats.through = meta.through.0;
                stats.last = Some(*meta);
                stats.shadow_records += applied;
                stats.writer_ns_last = writer_ns;
                match retention {
                    Ok(retention) => {
                        stats.snapshots_removed += retention.snapshots_removed.len() as u64;
                        stats.segments_retired += retention.segments_retired.len() as u64;
                    }
                    Err(error) => {
                        stats.retention_failed += 1;
                        stats.last_error = Some(error);
                    }
                }
            }
        }
        // Each job handed over ends once, at most: none is counted done twice.
        let ended = stats.written + stats.failed + stats.cancelled;
        assert!(ended <= stats.pauses, "more snapshots ended than were taken");
    }
}

impl<S: Storage> SnapshotHook for Snapshotter<S> {
    fn after_apply(&mut self, engine: &Engine, command: &Sequenced) {
        // The hook's contract: the engine has applied `command` (or, for a snapshot request,
        // everything journaled before it).
        assert!(engine.last_sequence() <= command.sequence, "a hook ahead of the engine");
        // Before any hand-off below: the writer follows the journal up to here, and a sequence
        // published after a job's must come with the busy mark set (see `SnapshotWriter::follow`).
        self.published.store(engine.last_sequence().0, Ordering::Release);
        self.since_last += 1;
        self.requested |= matches!(command.command, Command::Snapshot);
        let due = self.policy.every_commands.is_some_and(|every| self.since_last >= every);
        if (self.requested || due) && self.take(engine, command.sequence) {
            self.requested = false;
        }
    }

    /// A snapshot that fell due while the writer was busy is taken here as well as at the next
    /// command: a node that goes quiet after a burst gets it once the writer is free, not
    /// whenever the next order arrives.
    fn idle(&mut self, engine: &Engine) {
        // Only an operator's request, or a period under periodic snapshots, makes one due.
        assert!(
            !self.waiting || self.requested || self.policy.every_commands.is_some(),
            "a snapshot waits that nothing asked for"
        );
        if (self.waiting || self.requested) && self.take(engine, engine.last_sequence()) {
            assert!(!self.waiting, "a snapshot handed over still counted as waiting");
            self.requested = false;
        }
    }
}

impl<S: Storage> Drop for Snapshotter<S> {
    /// The node is stopping (its processor drops the hook): the writer abandons the snapshot
    /// it is on, so that stopping waits for the next record batch, not for a whole catch-up
    /// and write; the journal holds everything that snapshot would have.
    fn drop(&mut self) {
        self.stopping();
        self.jobs = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
