//! Where the data directory lives: a small storage trait, and the real one on files.
//!
//! Everything the journal keeps on disk goes through [`Storage`]: segments (preallocated and
//! written in place through a map), and whole files written atomically: small ones from a
//! buffer (the manifest, the epoch file), large ones streamed through a writer and read back
//! through a reader (snapshots, [`write_atomically_with`]), so that neither is ever held
//! whole in memory. The segment writer, the snapshot writer, retention and recovery
//! are generic over it, so the same code runs on [`FileStorage`] (real files, `fsync`, rename,
//! directory `fsync`) and on the fault-injecting [`crate::fault::FaultStorage`], which keeps a
//! live and a durable image of every file and of the directory and can lose whatever was not
//! made durable.
//!
//! What is durable when — the contract both implementations keep:
//!
//! | call               | durable when                                                  |
//! | ------------------ | ------------------------------------------------------------- |
//! | `create_segment`   | on return: the entry, the length and the zero contents        |
//! | `Segment::sync(r)` | on return: the bytes in `r`                                   |
//! | `write_file`       | contents after `sync_file`, the entry after `sync_dir`        |
//! | `write_file_with`  | as `write_file`: the bytes are streamed, not handed over whole |
//! | `rename`, `remove` | after `sync_dir` (a rename is atomic either way)              |
//! | `retire`           | the archived copy on return; the removal here after `sync_dir` |
//! | `sync_dir`         | every entry change made before it                             |
//!
//! Every change is live (visible to this process and to a process crash) at once.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek as _, Write as _};
use std::ops::Range;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::MmapMut;

use crate::lock::DirLock;

/// One segment: a fixed-size byte array that can be written in place and synced by range.
pub trait Segment: Send + 'static {
    /// The live contents (what a reader in this process sees).
    fn bytes(&self) -> &[u8];
    /// The live contents, for writing in place.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// Makes `range` durable: after it returns, a power loss keeps those bytes.
    fn sync(&mut self, range: Range<usize>) -> io::Result<()>;
    /// Makes the bytes of `range` visible to every other handle of the file, as a shared
    /// mapping does at once through the page cache. Makes nothing durable. By default it does
    /// nothing: a mapped segment's bytes are visible as soon as they are written.
    fn publish(&mut self, range: Range<usize>) {
        assert!(range.start <= range.end, "a backwards publish range");
    }
    /// Starts writing `range` back to disk without waiting for it, so that a later
    /// [`Segment::sync`] of it has little left to do. Makes nothing durable. By default it
    /// does nothing: a storage without a page cache has nothing to start.
    fn start_writeback(&mut self, range: Range<usize>) -> io::Result<()> {
        let _ = range;
        Ok(())
    }
    /// Makes the pages of `range` present and writable before records are written there, so
    /// that writing them takes no page fault. Changes no byte. By default it does nothing: a
    /// storage without page tables has nothing to fault in.
    fn prefault(&mut self, range: Range<usize>) -> io::Result<()> {
        let _ = range;
        Ok(())
    }
    /// Says that this handle will append to the segment, front to back, faulting pages in
    /// ahead of the records with [`Segment::prefault`]: a page fault then reads nothing ahead.
    /// Handles that read a segment (recovery, tails) keep the default, readahead. By default
    /// it does nothing.
    fn appending(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where a retired file went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retired {
    /// Moved to the archive directory; the string names the copy there.
    Archived(String),
    /// Deleted.
    Deleted,
}

impl std::fmt::Display for Retired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Retired::Archived(to) => write!(f, "archived to {to}"),
            Retired::Deleted => write!(f, "deleted"),
        }
    }
}

/// One data directory. A handle is cheap to clone and clones share the directory, so the
/// journal writer and the snapshot writer each hold one. Names are plain file names (no
/// separators). See the module documentation for what is durable when.
pub trait Storage: Clone + Send + 'static {
    /// The segment handle.
    type Segment: Segment;
    /// Names of every file in the directory, in any order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Names of every entry in the directory, in any order: subdirectories too, with a trailing
    /// `/`, and names that are not UTF-8 shown lossily; this storage's own archive directory,
    /// and the files its node's configuration names ([`FileStorage::with_named_files`]), are
    /// left out. What a directory with no journal yet is judged by
    /// ([`crate::datadir::foreign_entries`]). By default the files of [`Storage::list`], for a
    /// storage that holds no subdirectory.
    fn list_entries(&self) -> io::Result<Vec<String>> {
        self.list()
    }
    /// Length of a file in bytes.
    fn file_len(&self, name: &str) -> io::Result<u64>;
    /// A whole file's contents.
    fn read_file(&self, name: &str) -> io::Result<Vec<u8>>;
    /// The first `len` bytes of a file (fewer if it is shorter).
    fn read_head(&self, name: &str, len: usize) -> io::Result<Vec<u8>> {
        let mut bytes = self.read_file(name)?;
        bytes.truncate(len);
        assert!(bytes.len() <= len, "a head longer than asked for");
        Ok(bytes)
    }
    /// Creates a zero-filled, fully allocated segment of `len` bytes; the file and its
    /// directory entry are durable when this returns. Fails if the name exists.
    fn create_segment(&self, name: &str, len: u64) -> io::Result<Self::Segment>;
    /// Opens an existing segment for reading and writing in place.
    fn open_segment(&self, name: &str) -> io::Result<Self::Segment>;
    /// Creates or replaces a file with `bytes`. Nothing is durable until [`Storage::sync_file`]
    /// (contents) and [`Storage::sync_dir`] (the entry).
    fn write_file(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Creates or replaces a file with the bytes `write` writes into it, front to back, and
    /// returns how many: what [`Storage::write_file`] of those bytes does (nothing is durable
    /// until [`Storage::sync_file`] and [`Storage::sync_dir`]), without the bytes ever being in
    /// one buffer. The writer is not buffered: every call reaches the file, so write large
    /// pieces.
    fn write_file_with(
        &self,
        name: &str,
        write: &mut dyn FnMut(&mut dyn io::Write) -> io::Result<()>,
    ) -> io::Result<u64>;
    /// A reader of a file's contents, front to back: for a file too large to read whole
    /// ([`Storage::read_file`]). Not buffered: every call reaches the file, so read large
    /// pieces.
    fn open_read(&self, name: &str) -> io::Result<Box<dyn io::Read + Send>>;
    /// Makes a file's contents durable (not its directory entry).
    fn sync_file(&self, name: &str) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to` atomically; durable after [`Storage::sync_dir`].
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Deletes a file; durable after [`Storage::sync_dir`].
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Takes a file out of the directory for good: into the archive directory if this storage
    /// has one (the copy there, contents and entry, is durable when this returns), otherwise
    /// deleted. Its removal from this directory is durable after [`Storage::sync_dir`].
    fn retire(&self, name: &str) -> io::Result<Retired>;
    /// Makes every entry change made so far (create, rename, remove, retire) durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// How to name a file to an operator (a path for real files).
    fn describe(&self, name: &str) -> String;
    /// Bytes free for this process on the directory's file system: what new segments and
    /// snapshots can still take (for warnings and `/metrics`; nothing is decided on it).
    fn free_bytes(&self) -> io::Result<u64>;
}

/// An I/O failure, with what was being done and to which file.
#[derive(Debug)]
pub struct StorageError {
    /// What was being done, naming the file.
    pub context: String,
    /// The underlying error.
    pub source: io::Error,
}

impl StorageError {
    /// Wraps `source`, saying what was being done.
    pub fn new(context: impl Into<String>, source: io::Error) -> StorageError {
        let context = context.into();
        assert!(!context.is_empty(), "an I/O error that does not say what was being done");
        StorageError { context, source }
    }
}

/// The temporary name `name` is written under before it is renamed into place. Temporary
/// names start with `.` and end with `.tmp`; recovery removes any it finds (a crash's leftover).
#[must_use]
pub fn temp_name(name: &str) -> String {
    assert!(!name.is_empty(), "a temporary name for no file");
    assert!(!name.contains('/'), "storage names are plain file names: {name}");
    let temp = format!(".{name}.tmp");
    // The pair of the check recovery runs: what is written here is removed there.
    debug_assert!(is_temp_name(&temp), "a temporary name recovery would not remove");
    temp
}

/// Whether `name` is a temporary file (see [`temp_name`]).
#[must_use]
pub fn is_temp_name(name: &str) -> bool {
    name.len() >= ".x.tmp".len() && name.starts_with('.') && name.ends_with(".tmp")
}

/// Replaces file `name` with `bytes` atomically and durably: a temporary file is written and
/// synced, renamed over `name`, and the directory synced. After a crash at any point `name` holds
/// the old contents or the new, never a mix; a leftover temporary file is removed by recovery.
/// On failure the temporary file is removed (best effort) so nothing stray is left behind.
pub fn write_atomically<S: Storage>(
    storage: &S,
    name: &str,
    bytes: &[u8],
) -> Result<(), StorageError> {
    // A temporary file is never itself replaced atomically: recovery removes it.
    assert!(!is_temp_name(name), "an atomic write of a temporary file: {name}");
    // Every file written this way has a header; an empty one could never be read.
    assert!(!bytes.is_empty(), "an atomic write of nothing: {name}");
    let temp = temp_name(name);
    let result = write_then_rename(storage, &temp, name, |temp| storage.write_file(temp, bytes));
    if result.is_err() {
        // The temporary file may or may not exist; either way it must not stay.
        let _ = storage.remove(&temp);
    }
    // The pair of every reader: the file holds the bytes (debug builds: it reads them back).
    debug_assert!(
        result.is_err() || storage.read_file(name).is_ok_and(|read| read == bytes),
        "an atomic write that does not read back: {name}"
    );
    result
}

/// [`write_atomically`] of the bytes `write` writes, streamed into the temporary file
/// ([`Storage::write_file_with`]) instead of handed over in one buffer: a file too large to
/// hold whole (a snapshot). Returns how many bytes the file holds. The same steps, so the same
/// crash states: `name` holds the old contents or all of the new, and a failure (of `write`
/// too) leaves no temporary file behind.
pub fn write_atomically_with<S: Storage>(
    storage: &S,
    name: &str,
    write: &mut dyn FnMut(&mut dyn io::Write) -> io::Result<()>,
) -> Result<u64, StorageError> {
    // A temporary file is never itself replaced atomically: recovery removes it.
    assert!(!is_temp_name(name), "an atomic write of a temporary file: {name}");
    let temp = temp_name(name);
    let mut written = 0;
    let result = write_then_rename(storage, &temp, name, |temp| {
        written = storage.write_file_with(temp, write)?;
        Ok(())
    });
    if result.is_err() {
        // The temporary file may or may not exist; either way it must not stay.
        let _ = storage.remove(&temp);
    }
    // Every file written this way has a header; an empty one could never be read.
    assert!(result.is_err() || written > 0, "an atomic write of nothing: {name}");
    // The pair of every reader: the file is as long as what was written (debug builds: a stat).
    debug_assert!(
        result.is_err() || storage.file_len(name).is_ok_and(|len| len == written),
        "an atomic write of another length: {name}"
    );
    result.map(|()| written)
}

fn write_then_rename<S: Storage>(
    storage: &S,
    temp: &str,
    name: &str,
    write_temp: impl FnOnce(&str) -> io::Result<()>,
) -> Result<(), StorageError> {
    assert_eq!(temp, temp_name(name), "renamed into place from another file");
    let described = || storage.describe(temp);
    write_temp(temp).map_err(|e| StorageError::new(format!("writing {}", described()), e))?;
    storage
        .sync_file(temp)
        .map_err(|e| StorageError::new(format!("syncing {}", described()), e))?;
    storage.rename(temp, name).map_err(|e| {
        StorageError::new(format!("renaming {} to {}", described(), storage.describe(name)), e)
    })?;
    storage
        .sync_dir()
        .map_err(|e| StorageError::new(format!("syncing the directory of {}", described()), e))
}

/// Files in one directory: segments preallocated and mapped read-write, whole files written
/// with `std::fs` and synced with `fsync`. Cheap to clone; clones share the directory, the
/// archive setting and (for [`FileStorage::open_exclusive`]) the directory lock, which is
/// released when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct FileStorage {
    inner: Arc<FileDir>,
}

#[derive(Clone, Debug)]
struct FileDir {
    dir: PathBuf,
    archive: Option<PathBuf>,
    /// Files the node's configuration names, wherever they are ([`FileStorage::with_named_files`]).
    named: Vec<PathBuf>,
    lock: Option<Arc<DirLock>>,
}

impl FileStorage {
    /// Storage in `dir`, created if missing, without taking the directory lock: for
    /// benchmarks, tests and callers that hold the lock themselves.
    pub fn open(dir: &Path) -> io::Result<FileStorage> {
        fs::create_dir_all(dir)?;
        debug_assert!(dir.is_dir(), "the data directory is not a directory");
        Ok(FileStorage {
            inner: Arc::new(FileDir {
                dir: dir.to_path_buf(),
                archive: None,
                named: Vec::new(),
                lock: None,
            }),
        })
    }

    /// Storage in `dir`, created if missing, holding the directory's exclusive lock for as
    /// long as any clone lives: refused, naming the holder's pid, if another process has it.
    pub fn open_exclusive(dir: &Path) -> Result<FileStorage, crate::error::JournalError> {
        fs::create_dir_all(dir).map_err(|e| {
            crate::error::JournalError::io(format!("creating data directory {}", dir.display()), e)
        })?;
        let lock = DirLock::acquire(dir)?;
        // The lock is the directory's own (debug builds: a stat).
        debug_assert!(lock.path().starts_with(dir), "a lock outside the data directory");
        debug_assert!(lock.path().exists(), "the lock file is not there");
        let dir = dir.to_path_buf();
        let inner = FileDir { dir, archive: None, named: Vec::new(), lock: Some(Arc::new(lock)) };
        Ok(FileStorage { inner: Arc::new(inner) })
    }

    /// The same directory, retiring files into `archive` (created when first needed) instead
    /// of deleting them. It should be on the same file system, so a retirement is a rename.
    #[must_use]
    pub fn with_archive(self, archive: &Path) -> FileStorage {
        // Retired files in the data directory itself would be read as journal files again.
        assert_ne!(archive, self.dir(), "the archive is the data directory");
        let mut inner = FileDir::clone(&self.inner);
        inner.archive = Some(archive.to_path_buf());
        FileStorage { inner: Arc::new(inner) }
    }

    /// The same directory, knowing `files` as its node's own where they lie in it: the files
    /// the node's configuration names (its config file, token files, cluster secret), which an
    /// operator may keep in the data directory before its first start.
    #[must_use]
    pub fn with_named_files(self, files: &[&Path]) -> FileStorage {
        assert!(self.inner.named.is_empty(), "a node's configuration names its files once");
        let mut inner = FileDir::clone(&self.inner);
        inner.named = files.iter().map(|file| file.to_path_buf()).collect();
        FileStorage { inner: Arc::new(inner) }
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The archive directory, if retired files are kept.
    #[must_use]
    pub fn archive_dir(&self) -> Option<&Path> {
        self.inner.archive.as_deref()
    }

    /// Whether this handle holds the directory's exclusive lock.
    #[must_use]
    pub fn is_exclusive(&self) -> bool {
        self.inner.lock.is_some()
    }

    /// Lets go of this handle and, when it is the last one holding the directory's lock,
    /// removes the lock file first if taking the lock made it (the directory had none): for a
    /// writer that refused to start, so that it leaves no lock file where there was none
    /// ([`DirLock::remove_created`]). Says whether the file was removed. While another handle
    /// is left (a thread of this process that may still write the directory), nothing is
    /// removed: the lock must stay where other processes see it.
    pub fn release_removing_new_lock(self) -> io::Result<bool> {
        let Some(lock) = self.inner.lock.as_ref() else { return Ok(false) };
        assert!(lock.path().starts_with(self.dir()), "the lock of another directory");
        // No other handle, nor a clone of this one: nothing else of this process can write.
        let last = Arc::strong_count(&self.inner) == 1 && Arc::strong_count(lock) == 1;
        if !last {
            return Ok(false);
        }
        let removed = lock.remove_created()?;
        // A file is removed only where the lock made it.
        assert!(!removed || lock.created(), "a lock file that was there removed");
        debug_assert!(!removed || !lock.path().exists(), "the lock file removed is still there");
        Ok(removed)
    }

    fn path(&self, name: &str) -> PathBuf {
        assert!(!name.contains('/'), "storage names are plain file names: {name}");
        // An empty name would be the directory itself.
        assert!(!name.is_empty(), "a file with no name");
        self.inner.dir.join(name)
    }
}

/// A segment file mapped read-write.
#[derive(Debug)]
pub struct FileSegment {
    map: MmapMut,
    /// Kept open so the mapping's file cannot be swapped underneath by a rename; writeback
    /// hints name it.
    file: File,
}

impl Segment for FileSegment {
    fn bytes(&self) -> &[u8] {
        &self.map
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }

    fn sync(&mut self, range: Range<usize>) -> io::Result<()> {
        assert!(range.start <= range.end, "a backwards sync range");
        assert!(range.end <= self.map.len(), "a sync past the segment's end");
        if range.is_empty() {
            return Ok(());
        }
        // memmap2 widens the range to page boundaries and calls msync(MS_SYNC).
        self.map.flush_range(range.start, range.end - range.start)
    }

    fn start_writeback(&mut self, range: Range<usize>) -> io::Result<()> {
        assert!(range.start <= range.end, "a backwards writeback range");
        assert!(range.end <= self.map.len(), "a writeback past the segment's end");
        let (offset, len) = (range.start as libc::off64_t, range.len() as libc::off64_t);
        // SAFETY: the descriptor is open for the call; the kernel only reads the arguments.
        // `SYNC_FILE_RANGE_WRITE` queues the dirty pages of the range for writing (pages
        // written through the map included) and returns without waiting for them.
        let rc = unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }

    fn appending(&mut self) -> io::Result<()> {
        // A segment holds at least its header (`allocate` refuses less).
        assert!(!self.map.is_empty(), "appending to a segment of no bytes");
        // No readahead on faults: readahead would have the fault that enters each new window
        // fill the whole window, megabytes of preallocated, unwritten blocks zeroed at once on
        // the appending thread (and inside `prefault` too). One page per fault instead.
        self.map.advise(memmap2::Advice::Random)
    }

    fn prefault(&mut self, range: Range<usize>) -> io::Result<()> {
        assert!(range.start <= range.end, "a backwards prefault range");
        assert!(range.end <= self.map.len(), "a prefault past the segment's end");
        // Linux 5.14 and later: faults the range in as writes would, without writing.
        self.map.advise_range(memmap2::Advice::PopulateWrite, range.start, range.len())
    }
}

impl Storage for FileStorage {
    type Segment = FileSegment;

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.inner.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                continue;
            }
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn list_entries(&self) -> io::Result<Vec<String>> {
        // The archive and the named files are known by their inodes: named in the config,
        // they may be spelled otherwise.
        let identity = |meta: fs::Metadata| (meta.dev(), meta.ino());
        let archive = self.inner.archive.as_deref().and_then(|dir| fs::metadata(dir).ok());
        let archive = archive.map(identity);
        let named: Vec<(u64, u64)> = self
            .inner
            .named
            .iter()
            .filter_map(|file| fs::metadata(file).ok().map(identity))
            .collect();
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.inner.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(name != "." && name != "..", "the directory listed itself or its parent");
            assert!(!name.contains('/'), "an entry's name holds a separator: {name}");
            // A symbolic link is an entry of its own, whatever it points at.
            let kind = entry.file_type()?;
            let id = identity(entry.metadata()?);
            if kind.is_dir() {
                if Some(id) != archive {
                    names.push(format!("{name}/"));
                }
            } else if !(kind.is_file() && named.contains(&id)) {
                names.push(name);
            }
        }
        assert!(names.iter().all(|name| !name.is_empty()), "an entry with no name");
        Ok(names)
    }

    fn file_len(&self, name: &str) -> io::Result<u64> {
        Ok(fs::metadata(self.path(name))?.len())
    }

    fn read_file(&self, name: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.path(name))
    }

    fn read_head(&self, name: &str, len: usize) -> io::Result<Vec<u8>> {
        assert!(!name.is_empty() && !name.contains('/'), "not a file's name: {name}");
        crate::scan::read_head(&self.path(name), len)
    }

    fn create_segment(&self, name: &str, len: u64) -> io::Result<FileSegment> {
        let path = self.path(name);
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        if let Err(error) = allocate(&file, len) {
            // A full disk: leave no short, headerless file behind for recovery to puzzle over.
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(error);
        }
        file.sync_all()?;
        sync_dir(&self.inner.dir)?;
        let segment = map_file(file)?;
        // The contract: a segment is its full length from the start, on disk and in the map.
        assert_eq!(segment.map.len() as u64, len, "a segment mapped at another length: {name}");
        debug_assert!(fs::metadata(&path).is_ok_and(|m| m.len() == len), "a short file: {name}");
        Ok(segment)
    }

    fn open_segment(&self, name: &str) -> io::Result<FileSegment> {
        let file = OpenOptions::new().read(true).write(true).open(self.path(name))?;
        map_file(file)
    }

    fn write_file(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let mut file = File::create(self.path(name))?;
        file.write_all(bytes)?;
        // Replaced, not appended to (debug builds: a stat).
        debug_assert!(file.metadata().is_ok_and(|m| m.len() == bytes.len() as u64), "{name}");
        Ok(())
    }

    fn write_file_with(
        &self,
        name: &str,
        write: &mut dyn FnMut(&mut dyn io::Write) -> io::Result<()>,
    ) -> io::Result<u64> {
        let mut file = File::create(self.path(name))?;
        write(&mut file)?;
        let written = file.stream_position()?;
        // Written front to back: the file ends where the writing did (debug builds: a stat).
        debug_assert!(
            file.metadata().is_ok_and(|m| m.len() == written),
            "a streamed file that does not end where its writing did: {name}"
        );
        Ok(written)
    }

    fn open_read(&self, name: &str) -> io::Result<Box<dyn io::Read + Send>> {
        let file = File::open(self.path(name))?;
        // A file's contents, not a directory's (debug builds: a stat).
        debug_assert!(file.metadata().is_ok_and(|m| m.is_file()), "not a file: {name}");
        Ok(Box::new(file))
    }

    fn sync_file(&self, name: &str) -> io::Result<()> {
        // fsync through a new descriptor flushes every dirty page of the file, whoever wrote it.
        File::open(self.path(name))?.sync_all()
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        assert_ne!(from, to, "a rename onto itself");
        fs::rename(self.path(from), self.path(to))?;
        // Moved within the directory (debug builds: two stats).
        debug_assert!(!self.path(from).exists(), "a renamed file is still there: {from}");
        debug_assert!(self.path(to).exists(), "a renamed file is not in place: {to}");
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.path(name))?;
        debug_assert!(!self.path(name).exists(), "a removed file is still there: {name}");
        Ok(())
    }

    fn retire(&self, name: &str) -> io::Result<Retired> {
        let from = self.path(name);
        let Some(archive) = &self.inner.archive else {
            fs::remove_file(&from)?;
            debug_assert!(!from.exists(), "a retired file is still in the data directory");
            return Ok(Retired::Deleted);
        };
        fs::create_dir_all(archive)?;
        // The contents must be on disk before the entry moves: the archive is a copy of record.
        File::open(&from)?.sync_all()?;
        let to = archive.join(name);
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(error) if error.raw_os_error() == Some(libc::EXDEV) => copy_across(&from, &to)?,
            Err(error) => return Err(error),
        }
        sync_dir(archive)?;
        debug_assert!(!from.exists(), "a retired file is still in the data directory");
        Ok(Retired::Archived(to.display().to_string()))
    }

    fn sync_dir(&self) -> io::Result<()> {
        sync_dir(&self.inner.dir)
    }

    fn describe(&self, name: &str) -> String {
        // The empty name describes the directory (for messages about it).
        assert!(!name.contains('/'), "storage names are plain file names: {name}");
        self.inner.dir.join(name).display().to_string()
    }

    fn free_bytes(&self) -> io::Result<u64> {
        use std::os::unix::ffi::OsStrExt as _;
        let path = std::ffi::CString::new(self.inner.dir.as_os_str().as_bytes())?;
        let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `path` is a NUL-terminated string and `stat` a buffer of the type statvfs(3)
        // fills; both outlive the call.
        if unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: statvfs returned 0, so it filled `stat`.
        let stat = unsafe { stat.assume_init() };
        // What an unprivileged writer may use is part of what is free.
        assert!(stat.f_bavail <= stat.f_bfree, "more blocks available than free");
        // `fsblkcnt_t` and `c_ulong` are 32 bits wide on some targets, `u64` on this one.
        #[allow(clippy::useless_conversion)]
        let (blocks, block_len) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
        Ok(blocks.saturating_mul(block_len))
    }
}

/// Moves `from` to `to` on another file system: copy to a temporary name there, sync, rename,
/// then delete the original (the caller syncs both directories).
fn copy_across(from: &Path, to: &Path) -> io::Result<()> {
    assert_ne!(from, to, "a copy onto itself");
    let name = to.file_name().and_then(|n| n.to_str()).unwrap_or("archived");
    let temp = to.with_file_name(temp_name(name));
    fs::copy(from, &temp)?;
    File::open(&temp)?.sync_all()?;
    fs::rename(&temp, to)?;
    debug_assert!(to.exists(), "the archived copy is not there");
    fs::remove_file(from)
}

fn map_file(file: File) -> io::Result<FileSegment> {
    // SAFETY: ringfence owns the journal directory and holds its exclusive lock while writing;
    // the only writer of a segment is this process's journaler, which holds the single
    // writable mapping. Other processes (tools) map read-only and validate every byte they
    // read, so a concurrent change cannot cause undefined behaviour in Rust code here beyond
    // reading bytes that then fail their checksum.
    let map = unsafe { MmapMut::map_mut(&file)? };
    Ok(FileSegment { map, file })
}

/// Reserves every block of the file so writes through the map cannot fail for lack of space
/// (which would arrive as SIGBUS, not as an error).
fn allocate(file: &File, len: u64) -> io::Result<()> {
    // A segment holds at least its header: a zero-length one cannot even be mapped.
    assert!(len > 0, "a segment of no bytes");
    let len_off = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment length too large"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: `file` is an open descriptor for the lifetime of the call; posix_fallocate only
    // reads its integer arguments.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len_off) };
    match rc {
        0 => {
            debug_assert!(file.metadata().is_ok_and(|m| m.len() >= len), "allocated short");
            Ok(())
        }
        // Some file systems cannot preallocate; a sized sparse file still works.
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_streamed_atomically_reads_back_and_a_failed_one_leaves_nothing() {
        // Goal: on real files, a file written piece by piece through `write_atomically_with`
        // holds every piece, in order, and reads back through `open_read`; one whose writer
        // fails part way leaves neither its name nor a temporary file behind.
        use std::io::Read as _;
        let dir = std::env::temp_dir().join(format!("ringfence-storage-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let storage = FileStorage::open(&dir).unwrap();
        let pieces: Vec<Vec<u8>> = (0..5_u8).map(|n| vec![n; 1 << 16]).collect();
        let mut write =
            |file: &mut dyn io::Write| pieces.iter().try_for_each(|p| file.write_all(p));
        let written = write_atomically_with(&storage, "big", &mut write).unwrap();
        assert_eq!(written, 5 << 16);
        let mut read = Vec::new();
        storage.open_read("big").unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(read, pieces.concat());
        let mut failing = |file: &mut dyn io::Write| {
            file.write_all(&pieces[0])?;
            Err(io::Error::other("the encoder failed"))
        };
        assert!(write_atomically_with(&storage, "other", &mut failing).is_err());
        assert_eq!(storage.list().unwrap(), ["big"], "a failed write left a file");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temporary_names_are_recognised_and_nothing_else_is() {
        // Goal: recovery removes exactly the files `write_atomically` could have left behind.
        assert_eq!(temp_name("MANIFEST"), ".MANIFEST.tmp");
        assert!(is_temp_name(&temp_name("snapshot-00000000000000000001.snap")));
        for name in ["MANIFEST", "00000000000000000001.seg", ".tmp", "x.tmp", ".hidden"] {
            assert!(!is_temp_name(name), "{name}");
        }
    }
}
