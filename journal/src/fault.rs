//! A fault-injecting, in-memory [`Storage`] for crash tests.
//!
//! The model follows what a POSIX file system promises, and no more:
//!
//! - A file is an *inode* with a *live* content (what the process wrote, as the page cache would
//!   hold it) and a *durable* content (what reached the disk: bytes passed to
//!   [`Segment::sync`], or the whole file at [`Storage::sync_file`]).
//! - The directory has *live* entries (name → inode) and *durable* entries. Creating, renaming,
//!   removing or retiring a file changes the live entries at once and is queued; the queue
//!   reaches the durable entries at [`Storage::sync_dir`] (and at
//!   [`Storage::create_segment`], which syncs the directory as [`crate::storage::FileStorage`]
//!   does).
//! - [`FaultStorage::process_crash`] continues from the live entries and contents (a killed
//!   process loses nothing it handed to the kernel). [`FaultStorage::power_loss`] continues
//!   from the durable ones, optionally with a *torn* write-back: a pseudo-random prefix of
//!   the queued entry changes applied (in order, a rename whole), and per file a prefix of the
//!   unsynced bytes, cut at a [`WRITE_BACK_UNIT`] boundary.
//!
//! Every sync is a *sync point*, counted; after [`FaultStorage::capture_sync_points`] each one
//! also records a frozen copy of the disk, so a test can take the power loss at every sync
//! point of a run. Contents are shared between copies until written, so a capture is cheap.
//! Bytes written through a segment handle that is still open are seen by a capture only once
//! synced (a capture is a power-loss image; open segments' unsynced bytes count as not yet
//! written back), and by other handles and a process crash once published
//! ([`Segment::publish`], the page cache a shared mapping writes through).
//! [`FaultStorage::fail_matching`] makes writes to chosen files fail (a full
//! disk or an I/O error), and [`FaultStorage::halt_after_sync_points`] stops the machine just
//! after a chosen sync point: a crash at any sync point of a live run, not only of a scripted
//! one.

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use ringfence_core::prng::Prng;

use crate::storage::{Retired, Segment, Storage};

type Image = Vec<u8>;

/// The finest unit a torn write-back leaves whole: a cut falls on a multiple of it. Disks
/// write whole sectors (512 bytes or more); 16 bytes is finer than any, and what the journal's
/// reading of a torn tail relies on (a cut-off write leaves aligned 16-byte units zero; it
/// never flips a bit inside one).
pub const WRITE_BACK_UNIT: usize = 16;

#[derive(Clone)]
struct Inode {
    live: Arc<Image>,
    durable: Arc<Image>,
}

/// A directory entry change not yet durable.
#[derive(Clone, Debug)]
enum DirOp {
    Link { name: String, inode: u64 },
    Unlink { name: String },
    Rename { from: String, to: String },
}

#[derive(Clone, Default)]
struct Disk {
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    live: BTreeMap<String, u64>,
    durable: BTreeMap<String, u64>,
    pending: Vec<DirOp>,
    /// Retired files, when the storage archives (durable when retired).
    archive: Option<BTreeMap<String, Arc<Image>>>,
    /// Name fragments whose writes and syncs fail, and how.
    failing: Vec<(String, Failure)>,
    /// Directory syncs fail, and how ([`FaultStorage::fail_directory_syncs`]).
    failing_dir_syncs: Option<Failure>,
    /// How many operations those failed (a test waits on it to know that they were tried).
    injected: u64,
    sync_points: u64,
    /// The sync point the machine stops at, once armed.
    halt_at: Option<u64>,
    /// The disk just after that sync point, once reached: from then on every change fails.
    halted: Option<Arc<(Disk, String)>>,
}

/// The free space a [`FaultStorage`] reports while no write fails as a full disk would: 1 TiB.
pub const FAULT_FREE_BYTES: u64 = 1 << 40;

/// How an injected failure fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// `ENOSPC`: the disk is full.
    NoSpace,
    /// `EIO`: the device failed the write or the sync.
    Io,
}

impl Failure {
    fn error(self, name: &str) -> io::Error {
        let errno = match self {
            Failure::NoSpace => libc::ENOSPC,
            Failure::Io => libc::EIO,
        };
        let source = io::Error::from_raw_os_error(errno);
        io::Error::new(source.kind(), format!("injected fault on {name}: {source}"))
    }
}

impl Disk {
    /// The model's own invariants: every entry, live, durable or queued, names an inode the
    /// disk holds, and inode numbers are never reused. O(files): debug builds only.
    fn check_model(&self) {
        debug_assert!(self.live.values().all(|ino| self.inodes.contains_key(ino)), "live entry");
        debug_assert!(self.durable.values().all(|ino| self.inodes.contains_key(ino)), "durable");
        let linked = self.pending.iter().all(|op| match op {
            DirOp::Link { inode, .. } => self.inodes.contains_key(inode),
            DirOp::Unlink { .. } | DirOp::Rename { .. } => true,
        });
        debug_assert!(linked, "a queued link names no inode");
        debug_assert!(self.inodes.keys().all(|&ino| ino < self.next_inode), "an inode reused");
    }
}

#[derive(Default)]
struct Shared {
    disk: Mutex<Disk>,
    captures: Mutex<Option<Vec<SyncCapture>>>,
}

/// The disk as it was just after one sync point.
#[derive(Clone)]
pub struct SyncCapture {
    /// The sync point's number (1 is the first sync of the storage's life).
    pub point: u64,
    /// What was synced.
    pub what: String,
    /// A frozen copy of the disk: take [`FaultStorage::power_loss`] of it.
    pub disk: FaultStorage,
}

/// In-memory storage with live and durable files and entries. Clones share the same disk.
#[derive(Clone, Default)]
pub struct FaultStorage {
    shared: Arc<Shared>,
}

/// A segment held in memory; its live content returns to the disk when dropped.
pub struct FaultSegment {
    name: String,
    inode: u64,
    live: Image,
    /// Written through `bytes_mut`: only a handle that wrote leaves its bytes in the live image
    /// when dropped, so a reader's stale copy never overwrites a writer's newer bytes.
    written: bool,
    shared: Arc<Shared>,
}

impl FaultStorage {
    /// An empty disk that deletes retired files.
    #[must_use]
    pub fn new() -> FaultStorage {
        FaultStorage::default()
    }

    /// An empty disk that archives retired files (see [`FaultStorage::archived`]).
    #[must_use]
    pub fn with_archive() -> FaultStorage {
        let storage = FaultStorage::new();
        storage.disk().archive = Some(BTreeMap::new());
        storage
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.shared.disk.lock().expect("fault disk lock")
    }

    /// Storage after the process was killed: every entry change and every byte written
    /// survives. Call it after dropping every segment handle (the writer).
    #[must_use]
    pub fn process_crash(&self) -> FaultStorage {
        let disk = self.disk();
        disk.check_model();
        let files = disk.live.iter().map(|(name, ino)| {
            let content = Arc::clone(&disk.inodes[ino].live);
            (name.clone(), content)
        });
        let crashed = FaultStorage::from_files(files.collect(), disk.archive.clone());
        // A killed process loses no entry: the same names, now durable.
        assert_eq!(crashed.disk().durable.len(), disk.live.len(), "a crash lost an entry");
        crashed
    }

    /// Storage after a power loss: only durable entries and durable bytes survive, plus, when
    /// `torn_seed` is given, a pseudo-random prefix of the queued entry changes and of each
    /// file's unsynced bytes (a write-back cut off part way), drawn from `Prng::new(torn_seed)`.
    #[must_use]
    pub fn power_loss(&self, torn_seed: Option<u64>) -> FaultStorage {
        let disk = self.disk();
        let mut entries = disk.durable.clone();
        let mut prng = torn_seed.map(Prng::new);
        if let Some(prng) = &mut prng {
            let applied = prng.range_inclusive(0, disk.pending.len() as u64) as usize;
            for op in &disk.pending[..applied] {
                apply(&mut entries, op);
            }
        }
        // Each queued change adds at most one entry; without tearing none is applied.
        assert!(entries.len() <= disk.durable.len() + disk.pending.len(), "entries from nowhere");
        assert!(torn_seed.is_some() || entries == disk.durable, "an untorn loss kept a change");
        let mut files = BTreeMap::new();
        for (name, ino) in entries {
            let inode = &disk.inodes[&ino];
            let content = match &mut prng {
                Some(prng) => torn(&inode.live, &inode.durable, prng),
                None => Arc::clone(&inode.durable),
            };
            files.insert(name, content);
        }
        FaultStorage::from_files(files, disk.archive.clone())
    }

    /// From now on, records a frozen copy of the disk at every sync point.
    pub fn capture_sync_points(&self) {
        let mut captures = self.shared.captures.lock().expect("fault captures lock");
        // Starting again would drop what was captured so far without a word.
        assert!(captures.is_none(), "sync point captures started twice");
        *captures = Some(Vec::new());
    }

    /// The copies recorded since [`FaultStorage::capture_sync_points`] (and stops recording).
    #[must_use]
    pub fn take_captures(&self) -> Vec<SyncCapture> {
        let captures =
            self.shared.captures.lock().expect("fault captures lock").take().unwrap_or_default();
        // One capture per sync point, in the order they happened, none from the future.
        let ordered = captures.windows(2).all(|pair| pair[0].point < pair[1].point);
        assert!(ordered, "sync point captures out of order");
        let last = captures.last().map_or(0, |capture| capture.point);
        assert!(last <= self.sync_points(), "a capture of a sync point not yet reached");
        captures
    }

    /// Sync points so far.
    #[must_use]
    pub fn sync_points(&self) -> u64 {
        self.disk().sync_points
    }

    /// Makes every write, sync, rename and removal of a file whose name contains `fragment`
    /// fail (as a full disk would), until [`FaultStorage::clear_faults`].
    pub fn fail_matching(&self, fragment: &str) {
        self.fail_matching_with(fragment, Failure::NoSpace);
    }

    /// How many operations [`FaultStorage::fail_matching`]'s faults have failed so far.
    #[must_use]
    pub fn faults_injected(&self) -> u64 {
        self.disk().injected
    }

    /// Makes every directory sync fail with `failure` until [`FaultStorage::clear_faults`]:
    /// the entry changes made stay live and none becomes durable, as after a failed `fsync`
    /// of a directory.
    pub fn fail_directory_syncs(&self, failure: Failure) {
        self.disk().failing_dir_syncs = Some(failure);
    }

    /// [`FaultStorage::fail_matching`], failing with `failure`.
    pub fn fail_matching_with(&self, fragment: &str, failure: Failure) {
        assert!(!fragment.is_empty(), "an empty fragment would fail every file");
        self.disk().failing.push((fragment.to_owned(), failure));
    }

    /// Stops the machine just after its `after`-th sync point from now: that sync completes,
    /// then every write, sync, rename and removal fails with `EIO`, and
    /// [`FaultStorage::halted`] returns the disk as that sync point left it. A crash of the
    /// process there, or a power loss, starts from that copy.
    pub fn halt_after_sync_points(&self, after: u64) {
        assert!(after >= 1, "a halt at a sync point already passed");
        let mut disk = self.disk();
        assert!(disk.halted.is_none(), "a halted disk halts again");
        disk.halt_at = Some(disk.sync_points + after);
    }

    /// Takes back a halt armed by [`FaultStorage::halt_after_sync_points`] that the disk has
    /// not reached; whether one was armed and not reached. A halt reached stays: the process
    /// on the disk is dead from there on.
    pub fn disarm_halt(&self) -> bool {
        let mut disk = self.disk();
        let armed = disk.halt_at.is_some() && disk.halted.is_none();
        // A halt not reached lies ahead: the sync point that reaches it halts the disk.
        assert!(!armed || disk.halt_at > Some(disk.sync_points), "an armed halt was passed");
        if armed {
            disk.halt_at = None;
        }
        assert!(disk.halted.is_some() || disk.halt_at.is_none(), "a halt left armed");
        armed
    }

    /// Whether the disk reached its armed sync point: the process on it is dead from there on
    /// (whatever it still does before the machine is crashed reaches nothing).
    #[must_use]
    pub fn is_halted(&self) -> bool {
        let disk = self.disk();
        let Some(frozen) = disk.halted.as_ref() else { return false };
        // Frozen as it was at the armed sync point, which the live disk has reached.
        assert_eq!(Some(frozen.0.sync_points), disk.halt_at, "frozen at another sync point");
        assert!(frozen.0.sync_points <= disk.sync_points, "halted before its sync point");
        true
    }

    /// The sync point the machine halted at, with the disk as it left it, if it has halted.
    #[must_use]
    pub fn halted(&self) -> Option<SyncCapture> {
        let (frozen, what) = <(Disk, String)>::clone(self.disk().halted.as_ref()?);
        // A frozen disk is at rest: nothing armed, nothing failing.
        assert!(frozen.halt_at.is_none() && frozen.halted.is_none(), "a frozen disk halts");
        let point = frozen.sync_points;
        assert!(point >= 1, "halted before any sync point");
        let storage = FaultStorage::new();
        *storage.disk() = frozen;
        // The copy counts the sync points it was frozen after, as a capture does.
        assert_eq!(storage.sync_points(), point, "a frozen disk that lost its count");
        Some(SyncCapture { point, what, disk: storage })
    }

    /// Stops the failures [`FaultStorage::fail_matching`] set up.
    pub fn clear_faults(&self) {
        let mut disk = self.disk();
        disk.failing.clear();
        disk.failing_dir_syncs = None;
    }

    /// Flips bits of one byte of a file in both contents (bit rot), for detection tests.
    pub fn corrupt(&self, name: &str, offset: usize, mask: u8) {
        assert_ne!(mask, 0, "a bit flip that flips no bit");
        let mut disk = self.disk();
        let Some(&ino) = disk.live.get(name) else { return };
        let inode = disk.inodes.get_mut(&ino).expect("inode");
        assert!(offset < inode.live.len(), "bit rot past the live content of {name}");
        assert!(offset < inode.durable.len(), "bit rot past the durable content of {name}");
        Arc::make_mut(&mut inode.live).as_mut_slice()[offset] ^= mask;
        Arc::make_mut(&mut inode.durable).as_mut_slice()[offset] ^= mask;
    }

    /// Cuts a file to `len` bytes in both contents (an operator's mistake, for refusal tests).
    pub fn set_len(&self, name: &str, len: usize) {
        let mut disk = self.disk();
        let Some(&ino) = disk.live.get(name) else { return };
        let inode = disk.inodes.get_mut(&ino).expect("inode");
        Arc::make_mut(&mut inode.live).resize(len, 0);
        Arc::make_mut(&mut inode.durable).resize(len, 0);
    }

    /// Deletes a file durably (an operator's mistake, for refusal tests).
    pub fn delete(&self, name: &str) {
        let mut disk = self.disk();
        let live = disk.live.remove(name);
        let durable = disk.durable.remove(name);
        // A durable entry is also live unless a queued removal or rename took it away.
        assert!(durable.is_none() || live.is_some() || !disk.pending.is_empty());
    }

    /// A copy of a file's live content.
    #[must_use]
    pub fn live_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let disk = self.disk();
        disk.live.get(name).map(|ino| disk.inodes[ino].live.to_vec())
    }

    /// Names of the files retired into the archive, sorted.
    #[must_use]
    pub fn archived(&self) -> Vec<String> {
        self.disk().archive.as_ref().map_or_else(Vec::new, |a| a.keys().cloned().collect())
    }

    fn from_files(
        files: BTreeMap<String, Arc<Image>>,
        archive: Option<BTreeMap<String, Arc<Image>>>,
    ) -> FaultStorage {
        let mut disk = Disk { archive, ..Disk::default() };
        for (name, content) in files {
            let ino = disk.next_inode;
            disk.next_inode += 1;
            let inode = Inode { live: Arc::clone(&content), durable: content };
            disk.inodes.insert(ino, inode);
            disk.live.insert(name.clone(), ino);
            disk.durable.insert(name, ino);
        }
        // Everything starts durable: the same entries, the same contents.
        assert_eq!(disk.live, disk.durable, "a fresh disk with undurable entries");
        assert_eq!(disk.inodes.len(), disk.live.len(), "a fresh disk with unnamed inodes");
        disk.check_model();
        let storage = FaultStorage::new();
        *storage.disk() = disk;
        storage
    }
}

/// Counts a sync point and, if captures are on, records the disk as it is now.
fn sync_point(shared: &Shared, disk: &mut Disk, what: &str) {
    disk.check_model();
    disk.sync_points += 1;
    if disk.halt_at == Some(disk.sync_points) {
        // A halted disk syncs nothing more: it cannot reach its halt twice.
        assert!(disk.halted.is_none(), "a disk halted twice");
        let frozen = Disk {
            failing: Vec::new(),
            failing_dir_syncs: None,
            halt_at: None,
            halted: None,
            ..disk.clone()
        };
        disk.halted = Some(Arc::new((frozen, what.to_owned())));
    }
    let mut captures = shared.captures.lock().expect("fault captures lock");
    if let Some(captures) = captures.as_mut() {
        let after = captures.last().is_none_or(|last| last.point < disk.sync_points);
        assert!(after, "a sync point captured twice");
        let frozen = Disk {
            failing: Vec::new(),
            failing_dir_syncs: None,
            halt_at: None,
            halted: None,
            ..disk.clone()
        };
        let storage = FaultStorage::new();
        *storage.disk() = frozen;
        captures.push(SyncCapture {
            point: disk.sync_points,
            what: what.to_owned(),
            disk: storage,
        });
    }
}

fn apply(entries: &mut BTreeMap<String, u64>, op: &DirOp) {
    match op {
        DirOp::Link { name, inode } => {
            entries.insert(name.clone(), *inode);
            assert_eq!(entries.get(name), Some(inode), "a linked name names another file");
        }
        DirOp::Unlink { name } => {
            entries.remove(name);
            assert!(!entries.contains_key(name), "an unlinked name is still there");
        }
        DirOp::Rename { from, to } => {
            if let Some(inode) = entries.remove(from) {
                entries.insert(to.clone(), inode);
                assert_eq!(entries.get(to), Some(&inode), "a renamed file is not at its new name");
            }
            assert!(!entries.contains_key(from) || from == to, "a renamed file is at its old name");
        }
    }
}

/// A file's content after a torn write-back. A file that kept its length (a segment written
/// in place) keeps the durable bytes with a prefix of the differing range taken from the live
/// ones; a file rewritten to another length keeps its durable content or a prefix of its live
/// content (truncated, then written back part way).
fn torn(live: &Arc<Image>, durable: &Arc<Image>, prng: &mut Prng) -> Arc<Image> {
    if live.len() != durable.len() {
        if prng.chance(1, 2) {
            return Arc::clone(durable);
        }
        let cut = prng.range_inclusive(0, live.len() as u64) as usize;
        let cut = if cut == live.len() { cut } else { cut / WRITE_BACK_UNIT * WRITE_BACK_UNIT };
        assert!(cut <= live.len(), "torn past the live content");
        let mut content = Image::new();
        content.extend_from_slice(&live[..cut]);
        return Arc::new(content);
    }
    let Some(first) = (0..live.len()).find(|&i| live[i] != durable[i]) else {
        return Arc::clone(durable);
    };
    let last = (0..live.len()).rev().find(|&i| live[i] != durable[i]).expect("differs");
    let cut = first + prng.range_inclusive(0, (last + 1 - first) as u64) as usize;
    // Whole units: a cut inside one moves back to its start (the bytes before `first` are the
    // same in both contents, so a unit written from `first` on is written whole).
    let cut = if cut > last { cut } else { (cut / WRITE_BACK_UNIT * WRITE_BACK_UNIT).max(first) };
    // A prefix of the differing range, possibly all of it, possibly none.
    assert!(cut <= last + 1, "torn past the last differing byte");
    let mut content = Image::clone(durable);
    content.as_mut_slice()[first..cut].copy_from_slice(&live[first..cut]);
    // Written in place: a torn write-back keeps the file's length.
    assert_eq!(content.len(), durable.len(), "a torn write-back changed the length");
    Arc::new(content)
}

fn check_fault(disk: &mut Disk, name: &str) -> io::Result<()> {
    check_halted(disk, name)?;
    match disk.failing.iter().find(|(fragment, _)| name.contains(fragment.as_str())) {
        Some((fragment, failure)) => {
            // As `fail_matching_with` requires: an empty fragment would fail every file.
            assert!(!fragment.is_empty(), "an empty fragment failing every file");
            disk.injected += 1;
            Err(failure.error(name))
        }
        None => Ok(()),
    }
}

/// A halted machine changes nothing more on its disk.
fn check_halted(disk: &Disk, name: &str) -> io::Result<()> {
    match disk.halted {
        Some(_) => {
            // The disk halts only at the sync point a halt was armed for, which it keeps.
            assert!(disk.halt_at.is_some(), "a disk halted with no halt armed");
            Err(Failure::Io.error(name))
        }
        None => Ok(()),
    }
}

fn gone(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file {name}"))
}

impl Segment for FaultSegment {
    fn bytes(&self) -> &[u8] {
        &self.live
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self.written = true;
        &mut self.live
    }

    fn publish(&mut self, range: Range<usize>) {
        assert!(range.start <= range.end && range.end <= self.live.len(), "a bad publish range");
        let mut disk = self.shared.disk.lock().expect("fault disk lock");
        // The page cache: other handles see the bytes, a power loss does not keep them.
        if let Some(inode) = disk.inodes.get_mut(&self.inode) {
            let bytes = &self.live[range.clone()];
            Arc::make_mut(&mut inode.live).as_mut_slice()[range].copy_from_slice(bytes);
        }
    }

    fn sync(&mut self, range: Range<usize>) -> io::Result<()> {
        assert!(range.start <= range.end, "a backwards sync range");
        assert!(range.end <= self.live.len(), "a sync past the segment's end");
        let mut disk = self.shared.disk.lock().expect("fault disk lock");
        // Faults and sync points follow the file's current name: a renamed segment (a spare
        // made ready ahead, then named) is known by its new one.
        let named = disk.live.iter().find(|(_, inode)| **inode == self.inode);
        if let Some((name, _)) = named.filter(|(name, _)| **name != self.name) {
            self.name = name.clone();
        }
        check_fault(&mut disk, &self.name)?;
        let inode = disk.inodes.get_mut(&self.inode).expect("inode of an open segment");
        // A segment is written in place: its images never change length.
        assert_eq!(inode.live.len(), inode.durable.len(), "a segment's images differ in length");
        assert_eq!(self.live.len(), inode.durable.len(), "a segment handle of another length");
        let bytes = &self.live[range.clone()];
        // The live content is updated too, so a torn capture never mixes in older bytes.
        Arc::make_mut(&mut inode.live).as_mut_slice()[range.clone()].copy_from_slice(bytes);
        Arc::make_mut(&mut inode.durable).as_mut_slice()[range].copy_from_slice(bytes);
        sync_point(&self.shared, &mut disk, &format!("segment {}", self.name));
        Ok(())
    }
}

impl Drop for FaultSegment {
    fn drop(&mut self) {
        if !self.written {
            return;
        }
        let Ok(mut disk) = self.shared.disk.lock() else { return };
        if let Some(inode) = disk.inodes.get_mut(&self.inode) {
            inode.live = Arc::new(std::mem::take(&mut self.live));
        }
    }
}

/// A file being written by [`Storage::write_file_with`]: each write appends to its inode's
/// live content, under the name it was created with for faults.
struct FaultFile {
    shared: Arc<Shared>,
    name: String,
    inode: u64,
    /// Bytes written so far.
    written: u64,
}

impl io::Write for FaultFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut disk = self.shared.disk.lock().expect("fault disk lock");
        check_fault(&mut disk, &self.name)?;
        // Inodes outlive their names, so an open file's is always there.
        let inode = disk.inodes.get_mut(&self.inode).expect("the inode of an open file");
        let before = inode.live.len();
        Arc::make_mut(&mut inode.live).extend_from_slice(bytes);
        // Live only: durable once synced, like any file's bytes.
        assert_eq!(inode.live.len(), before + bytes.len(), "a write appended another length");
        self.written += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Nothing is buffered: every write reached the live content.
        Ok(())
    }
}

impl Storage for FaultStorage {
    type Segment = FaultSegment;

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.disk().live.keys().cloned().collect())
    }

    // Names are checked as `FileStorage::path` checks them, so that a caller that the real
    // storage would refuse is refused in the crash tests too.

    fn file_len(&self, name: &str) -> io::Result<u64> {
        assert!(!name.contains('/'), "storage names are plain file names: {name}");
        let disk = self.disk();
        let ino = disk.live.get(name).ok_or_else(|| gone(name))?;
        Ok(disk.inodes[ino].live.len() as u64)
    }

    fn read_file(&self, name: &str) -> io::Result<Vec<u8>> {
        assert!(!name.contains('/'), "storage names are plain file names: {name}");
        let disk = self.disk();
        let ino = disk.live.get(name).ok_or_else(|| gone(name))?;
        Ok(Image::clone(&disk.inodes[ino].live))
    }

    fn create_segment(&self, name: &str, len: u64) -> io::Result<FaultSegment> {
        assert!(!name.contains('/'), "storage names are plain file names: {name}");
        let mut disk = self.disk();
        if disk.live.contains_key(name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, name.to_owned()));
        }
        check_fault(&mut disk, name)?;
        let image: Image = vec![0; usize::try_from(len).expect("segment length fits memory")];
        let ino = disk.next_inode;
        disk.next_inode += 1;
        let content = Arc::new(image.clone());
        disk.inodes.insert(ino, Inode { live: Arc::clone(&content), durable: content });
        disk.live.insert(name.to_owned(), ino);
        disk.pending.push(DirOp::Link { name: name.to_owned(), inode: ino });
        // The directory is synced, as FileStorage does: every queued change becomes durable.
        let pending = std::mem::take(&mut disk.pending);
        for op in &pending {
            apply(&mut disk.durable, op);
        }
        // Every change to the live entries was queued, so a synced directory is the live one.
        debug_assert_eq!(disk.durable, disk.live, "an entry change was not queued");
        sync_point(&self.shared, &mut disk, &format!("create {name}"));
        Ok(FaultSegment {
            name: name.to_owned(),
            inode: ino,
            live: image,
            written: false,
            shared: self.shared.clone(),
        })
    }

    fn open_segment(&self, name: &str) -> io::Result<FaultSegment> {
        assert!(!name.contains('/'), "storage names are plain file names: {name}");
        let disk = self.disk();
        let &ino = disk.live.get(name).ok_or_else(|| gone(name))?;
        let live = Image::clone(&disk.inodes[&ino].live);
        let durable = disk.inodes[&ino].durable.len();
        assert_eq!(live.len(), durable, "a segment's images differ in length: {name}");
        let shared = self.shared.clone();
        Ok(FaultSegment { name: name.to_owned(), inode: ino, live, written: false, shared })
    }

    fn write_file(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        assert!(!name.contains('/'), "storage names are plain file names: {name}");
        let mut disk = self.disk();
        check_fault(&mut disk, name)?;
        let mut content = Image::new();
        content.extend_from_slice(bytes);
        if let Some(&ino) = disk.live.get(name) {
            // Rewriting an existing file truncates the same inode.
            disk.inodes.get_mut(&ino).expect("inode").live = Arc::new(content);
            return Ok(());
        }
        let ino = disk.next_inode;
        assert!(!disk.inodes.contains_key(&ino), "an inode number reused");
        disk.next_inode += 1;
        let inode = Inode { live: Arc::new(content), durable: Arc::new(Image::new()) };
        disk.inodes.insert(ino, inode);
        disk.live.insert(name.to_owned(), ino);
        disk.pending.push(DirOp::Link { name: name.to_owned(), inode: ino });
        // Linked live at once, durable only once the directory is synced.
        debug_assert!(!disk.durable.contains_key(name) || disk.durable[name] != ino);
        Ok(())
    }

    /// The file is created empty (or truncated) at once, as `File::create` does, and each
    /// write appends to its live content: a process crash part way keeps what was written so
    /// far, a power loss nothing the file's last sync did not, and a failing or halted disk
    /// fails the write that meets it.
    fn write_file_with(
        &self,
        name: &str,
        write: &mut dyn FnMut(&mut dyn io::Write) -> io::Result<()>,
    ) -> io::Result<u64> {
        self.write_file(name, &[])?;
        let inode = *self.disk().live.get(name).expect("the file just created");
        let shared = Arc::clone(&self.shared);
        let mut file = FaultFile { shared, name: name.to_owned(), inode, written: 0 };
        write(&mut file)?;
        let written = self.disk().inodes[&inode].live.len() as u64;
        // Nothing else writes a file being created: it holds what was written, all of it.
        assert_eq!(written, file.written, "a streamed file of another length: {name}");
        Ok(written)
    }

    fn open_read(&self, name: &str) -> io::Result<Box<dyn io::Read + Send>> {
        // A copy of the live content, as `read_file` reads: the model's memory is not the
        // point; a reader of a real file sees it as it is when read.
        Ok(Box::new(io::Cursor::new(self.read_file(name)?)))
    }

    fn sync_file(&self, name: &str) -> io::Result<()> {
        assert!(!name.contains('/'), "storage names are plain file names: {name}");
        let mut disk = self.disk();
        check_fault(&mut disk, name)?;
        let &ino = disk.live.get(name).ok_or_else(|| gone(name))?;
        let inode = disk.inodes.get_mut(&ino).expect("inode");
        inode.durable = Arc::clone(&inode.live);
        // The file's bytes are durable; its entry is as durable as the directory's last sync.
        debug_assert!(Arc::ptr_eq(&inode.durable, &inode.live), "a synced file differs");
        sync_point(&self.shared, &mut disk, &format!("file {name}"));
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        assert!(!from.contains('/'), "storage names are plain file names: {from}");
        assert!(!to.contains('/'), "storage names are plain file names: {to}");
        assert_ne!(from, to, "a rename onto itself");
        let mut disk = self.disk();
        check_fault(&mut disk, from)?;
        check_fault(&mut disk, to)?;
        let ino = disk.live.remove(from).ok_or_else(|| gone(from))?;
        disk.live.insert(to.to_owned(), ino);
        disk.pending.push(DirOp::Rename { from: from.to_owned(), to: to.to_owned() });
        debug_assert!(!disk.live.contains_key(from), "a renamed file under its old name");
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        assert!(!name.contains('/'), "storage names are plain file names: {name}");
        let mut disk = self.disk();
        check_fault(&mut disk, name)?;
        disk.live.remove(name).ok_or_else(|| gone(name))?;
        disk.pending.push(DirOp::Unlink { name: name.to_owned() });
        debug_assert!(!disk.live.contains_key(name), "a removed file still listed");
        Ok(())
    }

    fn retire(&self, name: &str) -> io::Result<Retired> {
        assert!(!name.contains('/'), "storage names are plain file names: {name}");
        let mut disk = self.disk();
        check_halted(&disk, name)?;
        let &ino = disk.live.get(name).ok_or_else(|| gone(name))?;
        if disk.archive.is_none() {
            drop(disk);
            self.remove(name)?;
            return Ok(Retired::Deleted);
        }
        // Synced, then moved, then the archive's directory synced: durable there on return.
        let inode = disk.inodes.get_mut(&ino).expect("inode");
        inode.durable = Arc::clone(&inode.live);
        let content = Arc::clone(&inode.live);
        disk.archive.as_mut().expect("archive").insert(name.to_owned(), content);
        disk.live.remove(name);
        disk.pending.push(DirOp::Unlink { name: name.to_owned() });
        sync_point(&self.shared, &mut disk, &format!("archive {name}"));
        Ok(Retired::Archived(format!("fault-archive:{name}")))
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut disk = self.disk();
        check_halted(&disk, "the directory")?;
        if let Some(failure) = disk.failing_dir_syncs {
            disk.injected += 1;
            assert!(!disk.pending.is_empty() || disk.durable == disk.live, "changes stay queued");
            return Err(failure.error("the directory"));
        }
        let pending = std::mem::take(&mut disk.pending);
        for op in &pending {
            apply(&mut disk.durable, op);
        }
        debug_assert_eq!(disk.durable, disk.live, "an entry change was not queued");
        sync_point(&self.shared, &mut disk, "directory");
        Ok(())
    }

    fn describe(&self, name: &str) -> String {
        assert!(!name.contains('/'), "storage names are plain file names: {name}");
        format!("fault:{name}")
    }

    /// A disk failing writes as full ([`FaultStorage::fail_matching`]) has nothing free;
    /// otherwise [`FAULT_FREE_BYTES`].
    fn free_bytes(&self) -> io::Result<u64> {
        let full = self.disk().failing.iter().any(|(_, failure)| *failure == Failure::NoSpace);
        Ok(if full { 0 } else { FAULT_FREE_BYTES })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{temp_name, write_atomically, write_atomically_with};

    #[test]
    fn a_rename_is_durable_only_after_the_directory_is_synced() {
        // Goal: a synced file renamed into place survives a power loss only once the directory
        // was synced; before that the old name and content are what the disk holds.
        let disk = FaultStorage::new();
        write_atomically(&disk, "a", b"old").unwrap();
        disk.write_file("b.tmp", b"new").unwrap();
        disk.sync_file("b.tmp").unwrap();
        disk.rename("b.tmp", "a").unwrap();
        assert_eq!(disk.read_file("a").unwrap().as_slice(), b"new");
        let lost = disk.power_loss(None);
        assert_eq!(lost.read_file("a").unwrap().as_slice(), b"old");
        assert_eq!(lost.list().unwrap(), vec!["a".to_owned()]);
        disk.sync_dir().unwrap();
        assert_eq!(disk.power_loss(None).read_file("a").unwrap().as_slice(), b"new");
    }

    #[test]
    fn published_segment_bytes_are_read_by_other_handles_and_lost_with_the_power() {
        // Goal: the page cache of a mapped segment: bytes published through one handle are
        // read through another at once and survive a kill, but not a power loss; bytes only
        // written are seen by neither until published or synced.
        let disk = FaultStorage::new();
        let mut writer = disk.create_segment("s.seg", 64).unwrap();
        writer.bytes_mut()[..4].copy_from_slice(b"abcd");
        assert_eq!(&disk.open_segment("s.seg").unwrap().bytes()[..4], &[0; 4], "unpublished");
        writer.publish(0..2);
        assert_eq!(&disk.open_segment("s.seg").unwrap().bytes()[..4], b"ab\0\0");
        assert_eq!(&disk.process_crash().read_file("s.seg").unwrap()[..2], b"ab");
        assert_eq!(&disk.power_loss(None).read_file("s.seg").unwrap()[..2], &[0; 2]);
        writer.sync(0..4).unwrap();
        assert_eq!(&disk.power_loss(None).read_file("s.seg").unwrap()[..4], b"abcd");
    }

    #[test]
    fn unsynced_contents_are_lost_or_torn_and_a_crash_keeps_everything() {
        // Goal: a file written but not synced comes back empty after a power loss (its entry
        // was synced), as a prefix under torn write-back, and whole after a process crash.
        // A cut falls on a whole write-back unit, or at the end.
        let content: Vec<u8> = (0..100).collect();
        let disk = FaultStorage::new();
        disk.write_file("f", &content).unwrap();
        disk.sync_dir().unwrap();
        assert_eq!(disk.power_loss(None).read_file("f").unwrap().len(), 0);
        let mut lengths = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let torn = disk.power_loss(Some(seed)).read_file("f").unwrap();
            assert!(content.starts_with(&torn), "{torn:?}");
            assert!(
                torn.len() % WRITE_BACK_UNIT == 0 || torn.len() == 100,
                "cut at {}",
                torn.len()
            );
            lengths.insert(torn.len());
        }
        assert!(lengths.len() > 3, "torn write-back gives varied prefixes: {lengths:?}");
        assert_eq!(disk.process_crash().read_file("f").unwrap(), content);
    }

    #[test]
    fn captures_freeze_the_disk_at_every_sync_point() {
        // Goal: each capture is the disk just after its sync point, unaffected by later writes,
        // and writes to a failing file return errors without touching it.
        let disk = FaultStorage::new();
        disk.capture_sync_points();
        let mut segment = disk.create_segment("s", 64).unwrap();
        segment.bytes_mut()[..4].copy_from_slice(b"abcd");
        segment.sync(0..2).unwrap();
        segment.bytes_mut()[4..8].copy_from_slice(b"efgh");
        segment.sync(0..8).unwrap();
        drop(segment);
        let captures = disk.take_captures();
        assert_eq!(captures.len(), 3);
        assert_eq!(captures[0].what, "create s");
        let after = |i: usize| captures[i].disk.power_loss(None).read_file("s").unwrap();
        assert_eq!(&after(0)[..8], &[0; 8]);
        assert_eq!(&after(1)[..8], b"ab\0\0\0\0\0\0");
        assert_eq!(&after(2)[..8], b"abcdefgh");
        disk.fail_matching("snap");
        assert!(write_atomically(&disk, "x.snap", b"1").is_err());
        assert!(disk.list().unwrap().iter().all(|name| !name.contains("snap")));
        disk.clear_faults();
        write_atomically(&disk, "x.snap", b"1").unwrap();
    }

    #[test]
    fn a_halted_machine_keeps_the_disk_of_its_sync_point() {
        // Goal: a halt armed for the second sync point from now freezes the disk just after it
        // (here the temporary file's sync inside an atomic write, which then fails), and every
        // change after it fails with EIO without reaching the frozen copy.
        let disk = FaultStorage::new();
        let mut segment = disk.create_segment("s", 16).unwrap();
        disk.halt_after_sync_points(2);
        segment.bytes_mut()[..2].copy_from_slice(b"ab");
        segment.sync(0..2).unwrap();
        assert!(disk.halted().is_none(), "halted one sync point early");
        write_atomically(&disk, "epoch", b"7").unwrap_err();
        let halted = disk.halted().expect("halted at the second sync point");
        assert_eq!((halted.point, halted.what.as_str()), (3, "file .epoch.tmp"));
        let frozen = halted.disk;
        segment.bytes_mut()[2..4].copy_from_slice(b"cd");
        let error = segment.sync(0..4).unwrap_err();
        assert!(error.to_string().contains("Input/output error"), "{error}");
        assert!(disk.remove("s").is_err() && disk.sync_dir().is_err());
        drop(segment);
        let lost = frozen.power_loss(None);
        assert_eq!(&lost.read_file("s").unwrap()[..4], b"ab\0\0");
        assert_eq!(lost.list().unwrap(), ["s"], "the epoch file was never linked durably");
        let killed = frozen.process_crash();
        assert_eq!(killed.read_file(&temp_name("epoch")).unwrap(), b"7", "written, not renamed");
    }

    #[test]
    fn a_streamed_file_is_written_as_a_whole_one_is() {
        // Goal: a file written through a writer is the file `write_file` of the same bytes
        // would be, at every step: live at once, a prefix of it kept by a process crash part
        // way, durable only once synced (a power loss before keeps none of it, a torn one a
        // prefix), refused by `fail_matching` and by a halted disk; and an atomic streamed
        // write that fails, for the disk or for its own writer, leaves no temporary file.
        use std::io::Read as _;
        let content: Vec<u8> = (0..=255).collect();
        let disk = FaultStorage::new();
        let written = disk
            .write_file_with("f", &mut |file| {
                file.write_all(&content[..100])?;
                assert_eq!(disk.process_crash().read_file("f").unwrap(), &content[..100]);
                file.write_all(&content[100..])
            })
            .unwrap();
        assert_eq!(written, 256);
        disk.sync_dir().unwrap();
        let mut read = Vec::new();
        disk.open_read("f").unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(read, content);
        assert!(disk.power_loss(None).read_file("f").unwrap().is_empty(), "unsynced, yet kept");
        for seed in 0..16 {
            let torn = disk.power_loss(Some(seed)).read_file("f").unwrap();
            assert!(content.starts_with(&torn), "seed {seed}: {torn:?}");
        }
        disk.sync_file("f").unwrap();
        assert_eq!(disk.power_loss(None).read_file("f").unwrap(), content);

        disk.fail_matching("snap");
        let full = write_atomically_with(&disk, "x.snap", &mut |file| file.write_all(b"1"));
        assert!(full.is_err() && disk.faults_injected() > 0, "{full:?}");
        disk.clear_faults();
        let mut failing = |file: &mut dyn io::Write| {
            file.write_all(b"12")?;
            Err(io::Error::other("the encoder failed"))
        };
        let failed = write_atomically_with(&disk, "x.snap", &mut failing).unwrap_err();
        assert!(failed.source.to_string().contains("encoder"), "{}", failed.source);
        assert!(disk.list().unwrap().iter().all(|name| !name.contains("snap")), "a leftover");

        disk.capture_sync_points();
        let written = write_atomically_with(&disk, "x.snap", &mut |f| f.write_all(b"123"));
        assert_eq!(written.unwrap(), 3);
        let captures = disk.take_captures();
        let whats: Vec<&str> = captures.iter().map(|capture| capture.what.as_str()).collect();
        assert_eq!(whats, ["file .x.snap.tmp", "directory"]);
        assert!(captures[0].disk.power_loss(None).read_file("x.snap").is_err(), "not renamed");
        assert_eq!(captures[1].disk.power_loss(None).read_file("x.snap").unwrap(), b"123");

        disk.halt_after_sync_points(1);
        let halted = disk.write_file_with("g", &mut |file| {
            file.write_all(b"before")?;
            disk.sync_file("f").unwrap();
            file.write_all(b"after")
        });
        assert!(halted.is_err(), "a write after the halt went through");
        assert_eq!(disk.halted().unwrap().disk.process_crash().read_file("g").unwrap(), b"before");
    }

    #[test]
    fn a_failure_names_its_kind() {
        // Goal: a full disk and a failing device give the errors a real one gives.
        let disk = FaultStorage::new();
        disk.fail_matching_with("seg", Failure::Io);
        disk.fail_matching_with("manifest", Failure::NoSpace);
        let Err(io) = disk.create_segment("1.seg", 16) else { panic!("a failing device") };
        let full = disk.write_file("manifest", b"m").unwrap_err();
        assert_eq!(io.kind(), io::Error::from_raw_os_error(libc::EIO).kind());
        assert_eq!(full.kind(), io::ErrorKind::StorageFull);
        assert!(full.to_string().contains("manifest"), "{full}");
    }
}
