//! Where segments live: a small storage trait, and the real one on memory-mapped files.
//!
//! The segment writer and the recovery scan are generic over [`Storage`], so the same code runs
//! on [`FileStorage`] (preallocated files mapped with `memmap2`) and on the fault-injecting
//! [`crate::fault::FaultStorage`], which keeps a live and a durable image of every file and
//! drops unsynced bytes at a simulated power loss.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

/// One segment: a fixed-size byte array that can be written in place and synced by range.
pub trait Segment: Send + 'static {
    /// The live contents (what a reader in this process sees).
    fn bytes(&self) -> &[u8];
    /// The live contents, for writing in place.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// Makes `range` durable: after it returns, a power loss keeps those bytes.
    fn sync(&mut self, range: Range<usize>) -> io::Result<()>;
}

/// A directory of segments.
pub trait Storage: Send + 'static {
    /// The segment handle.
    type Segment: Segment;
    /// Names of all files that look like segments (`*.seg`), in any order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates a zero-filled, fully allocated segment of `len` bytes; the directory entry is
    /// durable when this returns. Fails if the name exists.
    fn create(&mut self, name: &str, len: u64) -> io::Result<Self::Segment>;
    /// Opens an existing segment for reading and writing.
    fn open(&mut self, name: &str) -> io::Result<Self::Segment>;
    /// Removes a segment (durably).
    fn remove(&mut self, name: &str) -> io::Result<()>;
    /// How to name the segment to an operator (a path for files).
    fn describe(&self, name: &str) -> String;
}

/// Segments as preallocated files in one directory, mapped read-write.
#[derive(Debug)]
pub struct FileStorage {
    dir: PathBuf,
}

impl FileStorage {
    /// Storage in `dir`, created if missing.
    pub fn open(dir: &Path) -> io::Result<FileStorage> {
        fs::create_dir_all(dir)?;
        Ok(FileStorage { dir: dir.to_path_buf() })
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A segment file mapped read-write.
#[derive(Debug)]
pub struct FileSegment {
    map: MmapMut,
    // Kept open so the mapping's file cannot be swapped underneath by a rename.
    _file: File,
}

impl Segment for FileSegment {
    fn bytes(&self) -> &[u8] {
        &self.map
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }

    fn sync(&mut self, range: Range<usize>) -> io::Result<()> {
        assert!(range.start <= range.end && range.end <= self.map.len());
        if range.is_empty() {
            return Ok(());
        }
        // memmap2 widens the range to page boundaries and calls msync(MS_SYNC).
        self.map.flush_range(range.start, range.end - range.start)
    }
}

impl Storage for FileStorage {
    type Segment = FileSegment;

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if let Some(name) = name.to_str().filter(|n| n.ends_with(".seg")) {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn create(&mut self, name: &str, len: u64) -> io::Result<FileSegment> {
        let path = self.dir.join(name);
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        allocate(&file, len)?;
        file.sync_all()?;
        sync_dir(&self.dir)?;
        map_file(file)
    }

    fn open(&mut self, name: &str) -> io::Result<FileSegment> {
        let file = OpenOptions::new().read(true).write(true).open(self.dir.join(name))?;
        map_file(file)
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        fs::remove_file(self.dir.join(name))?;
        sync_dir(&self.dir)
    }

    fn describe(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

fn map_file(file: File) -> io::Result<FileSegment> {
    // SAFETY: ringfence owns the journal directory; the only writer of a segment is this
    // process's journaler, which holds the single writable mapping. Other processes (tools) map
    // read-only and validate every byte they read, so a concurrent change cannot cause undefined
    // behaviour in Rust code here beyond reading bytes that then fail their checksum.
    let map = unsafe { MmapMut::map_mut(&file)? };
    Ok(FileSegment { map, _file: file })
}

/// Reserves every block of the file so writes through the map cannot fail for lack of space
/// (which would arrive as SIGBUS, not as an error).
fn allocate(file: &File, len: u64) -> io::Result<()> {
    let len_off = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment length too large"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: `file` is an open descriptor for the lifetime of the call; posix_fallocate only
    // reads its integer arguments.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len_off) };
    match rc {
        0 => Ok(()),
        // Some file systems cannot preallocate; a sized sparse file still works.
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
