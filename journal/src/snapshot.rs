//! Snapshots: the BLP's full state at a sequence boundary, so recovery replays only the
//! journal after it.
//!
//! The BLP thread only copies its state ([`Engine::to_image`]); a writer thread serializes the
//! image with rkyv, checks that it restores to an engine with the same running hash, writes it
//! to a temporary file, fsyncs, renames it into place and fsyncs the directory, then applies
//! retention. The writer then hands the image back, and the next snapshot copies into it
//! ([`Engine::copy_image_into`]): memory already faulted in, so the BLP's pause is a copy and
//! not a page fault per 4 KiB. The price is one image's worth of memory kept between
//! snapshots. A snapshot file:
//!
//! ```text
//!   0  magic             8  b"RFNCSNAP"
//!   8  version           4  FORMAT_VERSION
//!  12  header length     4  128
//!  16  through sequence  8  every journal record up to here is included
//!  24  last sequence     8  the engine's last mutating sequence
//!  32  now               8  the engine's logical time
//!  40  running hash      8
//!  48  state digest      8  Engine::state_digest of the restored state
//!  56  image length      8  bytes of the rkyv EngineImage
//!  64  body CRC32C       4  over everything after the header
//!  68  SKU count         4  entries in the SKU catalog
//!  72  engine config    40  (see format::encode_config)
//! 112  reserved         12  zero
//! 124  header CRC32C     4  over bytes 0..124
//! 128  image             n  rkyv EngineImage, then zero padding to a multiple of 16
//!  ..  SKU catalog   8 * k  SKU ids (u64) defined in the engine, for replay summaries
//! ```
//!
//! Files are named `snapshot-<through sequence, 20 digits>.snap`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use ringfence_core::pipeline::SnapshotHook;
use ringfence_core::{
    Command, Engine, EngineConfig, EngineImage, RestoreError, Sequence, Sequenced, SkuId, Timestamp,
};
use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::format::{self, CONFIG_BLOCK_LEN, FORMAT_VERSION, get_u32, get_u64, put_u32, put_u64};
use crate::storage::sync_dir;

/// First bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"RFNCSNAP";
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
const HEADER_CRC_OFFSET: usize = SNAPSHOT_HEADER_LEN - 4;
const _: () = assert!(CONFIG_OFFSET + CONFIG_BLOCK_LEN <= HEADER_CRC_OFFSET);

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
    /// The file is damaged or not a snapshot.
    #[error(
        "snapshot {file} is invalid: {reason}; it is skipped in favour of an older snapshot \
         (delete it, or restore a good copy, to silence this)"
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

fn io_error(context: String) -> impl FnOnce(io::Error) -> SnapshotError {
    move |source| SnapshotError::Io { context, source }
}

/// What a snapshot file says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The file.
    pub file: PathBuf,
    /// Every journal record up to this sequence is included.
    pub through: Sequence,
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
    /// File size in bytes.
    pub bytes: u64,
}

/// The file name of the snapshot through `through`.
#[must_use]
pub fn snapshot_name(through: Sequence) -> String {
    format!("snapshot-{:020}.snap", through.0)
}

fn parse_snapshot_name(name: &str) -> Option<Sequence> {
    let digits = name.strip_prefix("snapshot-")?.strip_suffix(".snap")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok().map(Sequence))?
}

/// Snapshot files in `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<(Sequence, PathBuf)>, SnapshotError> {
    let mut found = Vec::new();
    let entries = fs::read_dir(dir).map_err(io_error(format!("listing {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_error(format!("listing {}", dir.display())))?;
        let name = entry.file_name();
        if let Some(through) = name.to_str().and_then(parse_snapshot_name) {
            found.push((through, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Writes a snapshot of `image` (taken after journal record `through`) into `dir` atomically:
/// temporary file, fsync, rename, directory fsync. Checks that the image restores to an
/// engine with the BLP's running hash and last sequence before writing.
pub fn write(
    dir: &Path,
    config: &EngineConfig,
    image: &EngineImage,
    through: Sequence,
) -> Result<SnapshotMeta, SnapshotError> {
    let file = dir.join(snapshot_name(through));
    let engine = Engine::from_image(config.clone(), image)
        .map_err(|source| SnapshotError::Restore { file: file.clone(), source })?;
    assert!(engine.last_sequence() <= through, "a snapshot covers the commands it includes");
    let mut skus: Vec<SkuId> = engine.sku_views().map(|view| view.sku).collect();
    skus.sort_unstable();
    let payload = rkyv::to_bytes::<rancor::Error>(image)
        .map_err(|e| SnapshotError::Invalid { file: file.clone(), reason: e.to_string() })?;
    let meta = SnapshotMeta {
        file: file.clone(),
        through,
        last_sequence: engine.last_sequence(),
        now: engine.now(),
        running_hash: engine.running_hash(),
        state_digest: engine.state_digest(),
        config: config.clone(),
        skus,
        bytes: 0,
    };
    let bytes = encode(&meta, &payload);
    let temp = dir.join(format!(".{}.tmp", snapshot_name(through)));
    let mut out = File::create(&temp).map_err(io_error(format!("creating {}", temp.display())))?;
    out.write_all(&bytes).map_err(io_error(format!("writing {}", temp.display())))?;
    out.sync_all().map_err(io_error(format!("syncing {}", temp.display())))?;
    drop(out);
    fs::rename(&temp, &file).map_err(io_error(format!("renaming {}", temp.display())))?;
    sync_dir(dir).map_err(io_error(format!("syncing {}", dir.display())))?;
    Ok(SnapshotMeta { bytes: bytes.len() as u64, ..meta })
}

/// Writes a snapshot of `engine` right now, on the calling thread: for a clean shutdown, after
/// the pipeline has stopped. `through` is the last journal sequence the engine applied.
pub fn write_now(
    dir: &Path,
    engine: &Engine,
    through: Sequence,
) -> Result<SnapshotMeta, SnapshotError> {
    assert!(engine.last_sequence() <= through);
    let meta = write(dir, engine.config(), &engine.to_image(), through)?;
    assert_eq!(meta.state_digest, engine.state_digest(), "snapshot digest equals the engine's");
    Ok(meta)
}

fn encode(meta: &SnapshotMeta, image: &[u8]) -> Vec<u8> {
    let padded = image.len().next_multiple_of(16);
    let mut bytes = vec![0u8; SNAPSHOT_HEADER_LEN + padded + 8 * meta.skus.len()];
    let (header, body) = bytes.split_at_mut(SNAPSHOT_HEADER_LEN);
    body[..image.len()].copy_from_slice(image);
    for (i, sku) in meta.skus.iter().enumerate() {
        put_u64(body, padded + 8 * i, sku.0);
    }
    header[..8].copy_from_slice(&SNAPSHOT_MAGIC);
    put_u32(header, 8, FORMAT_VERSION);
    put_u32(header, 12, SNAPSHOT_HEADER_LEN as u32);
    put_u64(header, THROUGH_OFFSET, meta.through.0);
    put_u64(header, LAST_SEQUENCE_OFFSET, meta.last_sequence.0);
    put_u64(header, NOW_OFFSET, meta.now.0);
    put_u64(header, RUNNING_HASH_OFFSET, meta.running_hash);
    put_u64(header, DIGEST_OFFSET, meta.state_digest);
    put_u64(header, IMAGE_LEN_OFFSET, image.len() as u64);
    put_u32(header, BODY_CRC_OFFSET, crc32c::crc32c(body));
    put_u32(header, SKU_COUNT_OFFSET, meta.skus.len() as u32);
    format::encode_config(&meta.config, &mut header[CONFIG_OFFSET..][..CONFIG_BLOCK_LEN]);
    let crc = crc32c::crc32c(&header[..HEADER_CRC_OFFSET]);
    put_u32(header, HEADER_CRC_OFFSET, crc);
    bytes
}

/// Reads and checks a snapshot's header only (cheap: for listings).
pub fn read_meta(file: &Path) -> Result<SnapshotMeta, SnapshotError> {
    let bytes = read_file(file)?;
    decode_meta(file, &bytes).map(|(meta, _)| meta)
}

fn read_file(file: &Path) -> Result<AlignedVec<16>, SnapshotError> {
    let mut handle = File::open(file).map_err(io_error(format!("opening {}", file.display())))?;
    let mut bytes = AlignedVec::<16>::new();
    bytes
        .extend_from_reader(&mut handle)
        .map_err(io_error(format!("reading {}", file.display())))?;
    Ok(bytes)
}

fn decode_meta(file: &Path, bytes: &[u8]) -> Result<(SnapshotMeta, usize), SnapshotError> {
    let invalid = |reason: &str| SnapshotError::Invalid {
        file: file.to_path_buf(),
        reason: reason.to_owned(),
    };
    if bytes.len() < SNAPSHOT_HEADER_LEN {
        return Err(invalid("the file is shorter than a snapshot header"));
    }
    let header = &bytes[..SNAPSHOT_HEADER_LEN];
    if header[..8] != SNAPSHOT_MAGIC {
        return Err(invalid("the file does not start with the snapshot magic"));
    }
    if crc32c::crc32c(&header[..HEADER_CRC_OFFSET]) != get_u32(header, HEADER_CRC_OFFSET) {
        return Err(invalid("the header checksum does not match"));
    }
    if get_u32(header, 8) != FORMAT_VERSION || get_u32(header, 12) as usize != SNAPSHOT_HEADER_LEN {
        return Err(invalid("unsupported snapshot version"));
    }
    let body = &bytes[SNAPSHOT_HEADER_LEN..];
    if crc32c::crc32c(body) != get_u32(header, BODY_CRC_OFFSET) {
        return Err(invalid("the body checksum does not match (truncated or damaged)"));
    }
    let image_len = usize::try_from(get_u64(header, IMAGE_LEN_OFFSET)).unwrap_or(usize::MAX);
    let sku_count = get_u32(header, SKU_COUNT_OFFSET) as usize;
    let padded = image_len.checked_next_multiple_of(16).unwrap_or(usize::MAX);
    if padded.checked_add(sku_count.saturating_mul(8)) != Some(body.len()) {
        return Err(invalid("the lengths in the header do not match the file size"));
    }
    let config = format::decode_config(&header[CONFIG_OFFSET..][..CONFIG_BLOCK_LEN])
        .ok_or_else(|| invalid("the engine configuration in the header is not valid"))?;
    let skus = (0..sku_count).map(|i| SkuId(get_u64(body, padded + 8 * i))).collect();
    let meta = SnapshotMeta {
        file: file.to_path_buf(),
        through: Sequence(get_u64(header, THROUGH_OFFSET)),
        last_sequence: Sequence(get_u64(header, LAST_SEQUENCE_OFFSET)),
        now: Timestamp(get_u64(header, NOW_OFFSET)),
        running_hash: get_u64(header, RUNNING_HASH_OFFSET),
        state_digest: get_u64(header, DIGEST_OFFSET),
        config,
        skus,
        bytes: bytes.len() as u64,
    };
    if meta.last_sequence > meta.through {
        return Err(invalid("the last sequence is past the through sequence"));
    }
    Ok((meta, image_len))
}

/// Loads a snapshot and restores the engine, with `config` if given (else the one recorded in
/// the file). Every byte is checked: checksums, bytecheck validation of the image, the
/// engine's own consistency checks, and the state digest.
pub fn load(
    file: &Path,
    config: Option<&EngineConfig>,
) -> Result<(Engine, SnapshotMeta), SnapshotError> {
    let bytes = read_file(file)?;
    let (meta, image_len) = decode_meta(file, &bytes)?;
    let image_bytes = &bytes[SNAPSHOT_HEADER_LEN..SNAPSHOT_HEADER_LEN + image_len];
    let image = rkyv::from_bytes::<EngineImage, rancor::Error>(image_bytes).map_err(|e| {
        SnapshotError::Invalid { file: file.to_path_buf(), reason: format!("image: {e}") }
    })?;
    let config = config.cloned().unwrap_or_else(|| meta.config.clone());
    let engine = Engine::from_image(config, &image)
        .map_err(|source| SnapshotError::Restore { file: file.to_path_buf(), source })?;
    let digest = engine.state_digest();
    if digest != meta.state_digest || engine.last_sequence() != meta.last_sequence {
        return Err(SnapshotError::Invalid {
            file: file.to_path_buf(),
            reason: format!(
                "restored state digest {digest:#018x} differs from the recorded {:#018x}",
                meta.state_digest
            ),
        });
    }
    Ok((engine, meta))
}

/// When snapshots are taken and how many are kept.
#[derive(Clone, Debug)]
pub struct SnapshotPolicy {
    /// Take a snapshot after this many commands since the last one (`None`: only on request
    /// and at shutdown).
    pub every_commands: Option<u64>,
    /// Snapshots kept; older ones are deleted, and with them segments only they needed.
    pub keep: usize,
    /// Where segments no longer needed go; `None` deletes them.
    pub archive_dir: Option<PathBuf>,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy { every_commands: Some(1_000_000), keep: 3, archive_dir: None }
    }
}

/// What retention removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Snapshot files deleted.
    pub snapshots_removed: Vec<PathBuf>,
    /// Segment files deleted or archived.
    pub segments_retired: Vec<PathBuf>,
}

/// Keeps the newest `policy.keep` snapshots and retires segments whose records all precede the
/// oldest kept snapshot (never the newest segment). Until `keep` snapshots exist nothing is
/// retired, so the journal always reaches back to the `keep`-th newest snapshot or the start.
pub fn apply_retention(dir: &Path, policy: &SnapshotPolicy) -> Result<Retention, SnapshotError> {
    assert!(policy.keep >= 1, "at least one snapshot is kept");
    let mut retention = Retention::default();
    let snapshots = list(dir)?;
    let Some(cut) = snapshots.len().checked_sub(policy.keep) else { return Ok(retention) };
    for (_, file) in &snapshots[..cut] {
        fs::remove_file(file).map_err(io_error(format!("removing {}", file.display())))?;
        retention.snapshots_removed.push(file.clone());
    }
    let oldest_kept = snapshots[cut].0;
    let mut segments: Vec<(Sequence, String)> = Vec::new();
    let entries = fs::read_dir(dir).map_err(io_error(format!("listing {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_error(format!("listing {}", dir.display())))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(first) = format::parse_segment_name(name) {
            segments.push((first, name.to_owned()));
        }
    }
    segments.sort();
    // A segment is retired only if the next segment starts at or before the sequence replay
    // from the oldest kept snapshot begins with: then none of its records is needed.
    for pair in segments.windows(2) {
        let ((_, name), (next_first, _)) = (&pair[0], &pair[1]);
        if next_first.0 > oldest_kept.0 + 1 {
            break;
        }
        let from = dir.join(name);
        match &policy.archive_dir {
            Some(archive) => {
                fs::create_dir_all(archive)
                    .map_err(io_error(format!("creating {}", archive.display())))?;
                fs::rename(&from, archive.join(name))
                    .map_err(io_error(format!("archiving {}", from.display())))?;
            }
            None => {
                fs::remove_file(&from).map_err(io_error(format!("removing {}", from.display())))?
            }
        }
        retention.segments_retired.push(from);
    }
    sync_dir(dir).map_err(io_error(format!("syncing {}", dir.display())))?;
    Ok(retention)
}

/// Counters and the last result of the snapshot writer, shared with whoever reports them.
#[derive(Clone, Debug, Default)]
pub struct SnapshotStats {
    /// Snapshots written.
    pub written: u64,
    /// Snapshots that failed (see `last_error`).
    pub failed: u64,
    /// Times a due snapshot had to wait for the writer to finish the previous one (it is taken
    /// after the first command that finds the writer free).
    pub deferred_busy: u64,
    /// The last snapshot written.
    pub last: Option<SnapshotMeta>,
    /// The last failure (snapshots are not fatal: the journal remains the record).
    pub last_error: Option<String>,
    /// BLP pauses taken for snapshots (copying state), in nanoseconds.
    pub pauses: u64,
    /// The longest pause.
    pub pause_ns_max: u64,
    /// The last pause.
    pub pause_ns_last: u64,
}

struct Job {
    image: EngineImage,
    through: Sequence,
    running_hash: u64,
    last_sequence: Sequence,
}

/// The snapshot hook for the pipeline: counts commands, copies the engine's state on the BLP
/// thread when a snapshot is due (an operator's `Command::Snapshot`, or every N commands), and
/// hands the copy to its writer thread.
pub struct Snapshotter {
    dir: PathBuf,
    policy: SnapshotPolicy,
    since_last: u64,
    /// An operator asked for a snapshot while the writer was busy: take it when it is free.
    requested: bool,
    /// A due snapshot is waiting for the writer (counted once per wait).
    waiting: bool,
    deferred: u64,
    jobs: Option<SyncSender<Job>>,
    /// Images the writer is done with, for the next snapshot to copy into. At most one: one
    /// snapshot is written at a time, and its image comes back before the writer is marked free.
    spares: Receiver<EngineImage>,
    busy: Arc<AtomicBool>,
    stats: Arc<Mutex<SnapshotStats>>,
    worker: Option<JoinHandle<()>>,
}

impl Snapshotter {
    /// Starts the writer thread.
    pub fn start(
        dir: &Path,
        policy: SnapshotPolicy,
        config: EngineConfig,
    ) -> Result<Snapshotter, SnapshotError> {
        assert!(policy.keep >= 1, "at least one snapshot is kept");
        fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
        let (jobs, receiver) = mpsc::sync_channel::<Job>(1);
        let (spare, spares) = mpsc::sync_channel::<EngineImage>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(SnapshotStats::default()));
        let worker = {
            let (dir, policy, busy, stats) =
                (dir.to_path_buf(), policy.clone(), Arc::clone(&busy), Arc::clone(&stats));
            std::thread::Builder::new()
                .name("ringfence-snapshot".to_owned())
                .spawn(move || {
                    for job in receiver {
                        let result = write_job(&dir, &config, &policy, &job);
                        let mut stats = stats.lock().expect("snapshot stats lock");
                        match result {
                            Ok(meta) => {
                                stats.written += 1;
                                stats.last = Some(meta);
                            }
                            Err(error) => {
                                stats.failed += 1;
                                stats.last_error = Some(error.to_string());
                            }
                        }
                        // Never blocks: the BLP takes the spare before it sends a job.
                        let _ = spare.try_send(job.image);
                        busy.store(false, Ordering::Release);
                    }
                })
                .map_err(io_error("starting the snapshot writer thread".to_owned()))?
        };
        Ok(Snapshotter {
            dir: dir.to_path_buf(),
            policy,
            since_last: 0,
            requested: false,
            waiting: false,
            deferred: 0,
            jobs: Some(jobs),
            spares,
            busy,
            stats,
            worker: Some(worker),
        })
    }

    /// A handle on the counters, readable from any thread.
    #[must_use]
    pub fn stats_handle(&self) -> Arc<Mutex<SnapshotStats>> {
        Arc::clone(&self.stats)
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

    /// Clean shutdown: waits for queued snapshots, then writes one of `engine` (which has
    /// applied every command up to `through`) on this thread and applies retention.
    pub fn shutdown(
        mut self,
        engine: &Engine,
        through: Sequence,
    ) -> Result<SnapshotMeta, SnapshotError> {
        self.stop_worker();
        let meta = write_now(&self.dir, engine, through)?;
        apply_retention(&self.dir, &self.policy)?;
        Ok(meta)
    }

    fn stop_worker(&mut self) {
        self.jobs = None;
        if let Some(worker) = self.worker.take() {
            worker.join().expect("the snapshot writer thread panicked");
        }
    }

    /// Copies the state and hands it to the writer; returns false (taking nothing) if the
    /// writer is still busy with the previous snapshot.
    fn take(&mut self, engine: &Engine, through: Sequence) -> bool {
        // Checked without the stats lock: while the writer is busy this runs on every command.
        if self.busy.swap(true, Ordering::AcqRel) {
            if !self.waiting {
                self.waiting = true;
                self.deferred += 1;
            }
            return false;
        }
        self.waiting = false;
        let started = Instant::now();
        let image = match self.spares.try_recv() {
            Ok(mut image) => {
                engine.copy_image_into(&mut image);
                image
            }
            Err(_) => engine.to_image_unsorted(),
        };
        let job = Job {
            image,
            through,
            running_hash: engine.running_hash(),
            last_sequence: engine.last_sequence(),
        };
        let pause_ns = started.elapsed().as_nanos() as u64;
        self.since_last = 0;
        let sent = self.jobs.as_ref().is_some_and(|jobs| jobs.try_send(job).is_ok());
        let mut stats = self.stats.lock().expect("snapshot stats lock");
        stats.pauses += 1;
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

fn write_job(
    dir: &Path,
    config: &EngineConfig,
    policy: &SnapshotPolicy,
    job: &Job,
) -> Result<SnapshotMeta, SnapshotError> {
    let meta = write(dir, config, &job.image, job.through)?;
    assert_eq!(meta.running_hash, job.running_hash, "snapshot restores to the BLP's hash");
    assert_eq!(meta.last_sequence, job.last_sequence, "snapshot restores to the BLP's sequence");
    apply_retention(dir, policy)?;
    Ok(meta)
}

impl SnapshotHook for Snapshotter {
    fn after_apply(&mut self, engine: &Engine, command: &Sequenced) {
        self.since_last += 1;
        self.requested |= matches!(command.command, Command::Snapshot);
        let due = self.policy.every_commands.is_some_and(|every| self.since_last >= every);
        if (self.requested || due) && self.take(engine, command.sequence) {
            self.requested = false;
        }
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
