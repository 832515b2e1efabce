//! The data directory's lock: at most one process writes a data directory.
//!
//! A writer (`ringfence serve`, `ringfence journal truncate`, the crash-test child) takes an
//! exclusive `flock` on [`LOCK_FILE`] in the data directory and keeps it for its whole life.
//! The kernel releases it when the process exits, however it exits, so a crash never leaves a
//! stale lock behind. The file holds the holder's pid in decimal and a newline, written after
//! the lock is taken, so a refused process can say who holds it; the lock, not the file's
//! existence or contents, is what counts. (`flock` is advisory and per open file: it protects
//! against other ringfence processes on the same machine, not against other programs, and not
//! on network file systems that do not implement it.)
//!
//! A writer that refuses to start in a directory that had no lock file removes the one it
//! made (see [`DirLock::remove_created`]), so that a directory given by mistake is left as it
//! was; a lock file that was there stays. Removing it is safe against a process that opened
//! the file a moment before and is granted the lock as it is let go: [`DirLock::acquire`]
//! holds the lock only on the file the directory names, and takes it again otherwise.
//!
//! Read-only tools take no lock. They ask [`holder`] whether a writer is live, and if one is
//! they read the bytes after the last intact record of the last segment as a record in
//! progress rather than as damage.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::JournalError;

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "ringfence.lock";

/// Holds a data directory's exclusive lock until dropped (or the process ends).
#[derive(Debug)]
pub struct DirLock {
    // Closing the descriptor releases the lock.
    file: File,
    path: PathBuf,
    /// Whether this process made the lock file: the directory had none.
    created: bool,
}

/// Another process holding a directory's lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The pid written in the lock file, if it could be read (the holder writes it just after
    /// taking the lock).
    pub pid: Option<u32>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid}"),
            None => write!(f, "a process whose pid is not yet written"),
        }
    }
}

impl DirLock {
    /// Takes the exclusive lock of `dir` (which must exist) without waiting, and writes this
    /// process's pid into the lock file. Refused, naming the holder, if another process (or
    /// another handle in this process) has it.
    pub fn acquire(dir: &Path) -> Result<DirLock, JournalError> {
        let path = dir.join(LOCK_FILE);
        let io_error = |e| JournalError::io(format!("opening lock file {}", path.display()), e);
        let mut attempts = 0;
        let (file, created) = loop {
            attempts += 1;
            if attempts > ACQUIRE_ATTEMPTS {
                let replaced = io::Error::other("removed while it was being locked, repeatedly");
                return Err(io_error(replaced));
            }
            let Some((file, created)) = open_lock_file(&path).map_err(io_error)? else {
                // Removed between the two opens, by a holder that made it and let it go.
                continue;
            };
            let taken = try_flock(&file, libc::LOCK_EX | libc::LOCK_NB)
                .map_err(|e| JournalError::io(format!("locking {}", path.display()), e))?;
            if !taken {
                return Err(JournalError::Locked {
                    dir: dir.display().to_string(),
                    lock_file: path.display().to_string(),
                    holder: Holder { pid: read_pid(&file) },
                });
            }
            // Granted on a file a holder removed as it let go: not the directory's lock.
            if names(&path, &file).map_err(io_error)? {
                break (file, created);
            }
        };
        assert!(attempts <= ACQUIRE_ATTEMPTS, "the lock taken after the attempts ran out");
        let pid = format!("{}\n", std::process::id());
        // The pair of `read_pid`: decimal digits and a newline, within the bytes it reads.
        assert!(pid.len() <= PID_LEN_MAX, "a pid longer than read_pid reads");
        assert!(pid.ends_with('\n'), "the pid is a line");
        file.set_len(0)
            .and_then(|()| file.write_all_at(pid.as_bytes(), 0))
            .map_err(|e| JournalError::io(format!("writing {}", path.display()), e))?;
        debug_assert_eq!(read_pid(&file), Some(std::process::id()), "a pid that reads back wrong");
        assert!(path.ends_with(LOCK_FILE), "the lock is not the lock file");
        Ok(DirLock { file, path, created })
    }

    /// The lock file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this process made the lock file (the directory had none when it was taken).
    #[must_use]
    pub fn created(&self) -> bool {
        self.created
    }

    /// Removes the lock file if this process made it, still holding the lock (it goes when
    /// this is dropped), and says whether it did: for a writer that refused to start, so that
    /// it leaves no lock file in a directory that had none. A process that opened the file
    /// before it went and is granted the lock once it is let go finds the file gone from the
    /// directory, and takes the lock again on the one it makes ([`DirLock::acquire`]). Call it
    /// only once nothing of this process writes the directory any more: from then on another
    /// process may take the lock.
    pub fn remove_created(&self) -> io::Result<bool> {
        // A file this lock did not make, or that is no longer the one the directory names,
        // belongs to someone else.
        if !self.created || !names(&self.path, &self.file)? {
            return Ok(false);
        }
        std::fs::remove_file(&self.path)?;
        // The file is gone from the directory; the lock is held until `self` is dropped.
        assert!(!names(&self.path, &self.file)?, "the lock file is still there");
        Ok(true)
    }
}

/// Tries to take the lock this many times when the file keeps being removed under it (each
/// removal is a holder letting go of a directory it refused to start in).
const ACQUIRE_ATTEMPTS: u32 = 8;

/// Opens the lock file at `path`, making it if there is none, and whether it was made; `None`
/// if it was removed between the attempt to make it and the open.
fn open_lock_file(path: &Path) -> io::Result<Option<(File, bool)>> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).mode(0o644);
    match options.clone().create_new(true).open(path) {
        Ok(file) => {
            // Empty until the lock is taken and the pid written.
            debug_assert!(file.metadata().is_ok_and(|m| m.len() == 0), "a new lock file in use");
            return Ok(Some((file, true)));
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(error),
    }
    match options.open(path) {
        Ok(file) => Ok(Some((file, false))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Whether `path` names `file` (the same file, not one made since in its place).
fn names(path: &Path, file: &File) -> io::Result<bool> {
    assert!(path.ends_with(LOCK_FILE), "a lock on another file than the lock file");
    let held = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(named) => Ok(named.dev() == held.dev() && named.ino() == held.ino()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

/// Who holds the lock of `dir`, if anyone does. Takes nothing: it tries a shared lock and
/// releases it at once. (For that instant a writer starting up would be refused; it can retry.)
pub fn holder(dir: &Path) -> io::Result<Option<Holder>> {
    let file = match File::open(dir.join(LOCK_FILE)) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    if try_flock(&file, libc::LOCK_SH | libc::LOCK_NB)? {
        // Dropping the file would release it too; unlock first so the window is as short as
        // the call.
        let unlocked = try_flock(&file, libc::LOCK_UN);
        // Releasing a lock this file holds is never refused.
        debug_assert!(unlocked.is_ok_and(|released| released), "a held lock not released");
        return Ok(None);
    }
    Ok(Some(Holder { pid: read_pid(&file) }))
}

/// `flock(2)`; `Ok(false)` when another open file holds a conflicting lock.
fn try_flock(file: &File, operation: libc::c_int) -> io::Result<bool> {
    // The lock is never waited for: a refused writer says who holds it instead.
    let unlock = operation == libc::LOCK_UN;
    assert!(unlock || operation & libc::LOCK_NB != 0, "a lock call that would wait");
    assert!(unlock || operation & (libc::LOCK_EX | libc::LOCK_SH) != 0, "a lock of no kind");
    // SAFETY: the descriptor is open for the duration of the call; flock takes no pointers.
    let rc = unsafe { libc::flock(file.as_raw_fd(), operation) };
    if rc == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(false);
    }
    Err(error)
}

/// Bytes of the lock file `read_pid` reads: a `u32` in decimal and a newline, with room.
const PID_LEN_MAX: usize = 32;
// Any pid fits with its newline: u32::MAX has ten digits.
const _: () = assert!(PID_LEN_MAX > 10);

fn read_pid(file: &File) -> Option<u32> {
    let mut buffer = [0u8; PID_LEN_MAX];
    let read = file.read_at(&mut buffer, 0).ok()?;
    std::str::from_utf8(&buffer[..read]).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_naming_the_pid() {
        // Goal: the lock is exclusive even within one process, the refusal names the holder's
        // pid, the probe sees it, and dropping the lock frees the directory.
        let dir = std::env::temp_dir().join(format!("ringfence-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(holder(&dir).unwrap(), None, "no lock file yet");
        let lock = DirLock::acquire(&dir).unwrap();
        let refused = DirLock::acquire(&dir).expect_err("second lock refused");
        let message = refused.to_string();
        assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
        assert!(message.contains(LOCK_FILE), "{message}");
        let held = holder(&dir).unwrap().expect("held");
        assert_eq!(held.pid, Some(std::process::id()));
        drop(lock);
        assert_eq!(holder(&dir).unwrap(), None);
        let again = DirLock::acquire(&dir).unwrap();
        assert!(again.path().ends_with(LOCK_FILE));
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_lock_file_made_and_removed_is_never_a_lock_held() {
        // Goal: a writer that made the lock file removes it on refusing, still holding the
        // lock; a process that opened the file just before, and is granted the lock on it once
        // it is let go, is told that file is no longer the directory's, and the next writer
        // takes the lock on a new one. A lock file that was there is never removed.
        let dir = std::env::temp_dir().join(format!("ringfence-lock-gone-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(LOCK_FILE);
        let lock = DirLock::acquire(&dir).unwrap();
        assert!(lock.created(), "the directory had no lock file");
        let early = File::open(&path).unwrap();
        assert!(lock.remove_created().unwrap());
        assert!(!path.exists(), "the lock file made is removed");
        drop(lock);
        assert!(try_flock(&early, libc::LOCK_EX | libc::LOCK_NB).unwrap(), "the old file's lock");
        assert!(!names(&path, &early).unwrap(), "a removed file taken for the directory's");
        let next = DirLock::acquire(&dir).unwrap();
        assert!(next.created() && path.exists(), "the next writer makes a new lock file");
        drop((next, early));
        let again = DirLock::acquire(&dir).unwrap();
        assert!(!again.created(), "the lock file was there");
        assert!(!again.remove_created().unwrap(), "a lock file that was there is removed");
        assert!(path.exists());
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
