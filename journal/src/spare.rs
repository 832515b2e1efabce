//! The next segment, made ready before the writer needs it.
//!
//! Starting a segment on the appending thread costs the file's creation, allocation and syncs
//! and its mapping, then the header sync and the manifest: a p50 of 2.8–4.4 ms in `perf
//! journal`'s `segment_start` rows on this project's machine, every 64 MiB of journal, during
//! which the journaling thread (on two cores, also the processor's) does nothing else. A
//! `SparePreparer` does the first part on a helper thread as soon as a segment starts: it
//! creates the next segment under the temporary name [`SPARE_NAME`] (zero-filled, allocated,
//! synced, mapped, its first pages faulted in), and it unmaps the segment the writer moves
//! past. At the next rotation the writer writes the spare's header, syncs it, renames the
//! spare to the segment's name and syncs the directory, then lists it in the manifest.
//!
//! Crash safety is the rotation's own: a spare that was never renamed is a temporary file,
//! which recovery removes; one renamed but not listed has nothing after its header, which
//! recovery removes as a creation cut off; the rename is durable before the manifest names it.
//!
//! The helper is also the journal's lookout for disk space. A spare it cannot make is logged
//! at once and retried every [`DISK_CHECK_EVERY`] until it is made or the writer needs the
//! segment (and creates it itself). At the same pace, and after each spare, it reads the free
//! space on the directory's file system and the newest snapshot's size ([`DataDir::disk_room`],
//! in `/metrics`), and logs a warning when the space falls short of the next snapshot (about
//! as large as the newest) and [`LOW_DISK_SEGMENTS`] segments, and again when it recovers.

use std::io;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::datadir::{DataDir, DiskRoom};
use crate::format::{SEGMENT_LEN_MIN, SEGMENT_MAGIC};
use crate::storage::{Segment, Storage, is_temp_name};

/// The spare segment's file name (a temporary name: recovery removes one a crash leaves).
pub const SPARE_NAME: &str = ".next-segment.tmp";

const _: () = assert!(SPARE_NAME.as_bytes()[0] == b'.');

/// How often the helper reads the free disk space, and retries a spare it could not make.
pub const DISK_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Journal segments the free space should hold beyond the next snapshot: less is warned about.
pub const LOW_DISK_SEGMENTS: u64 = 4;

enum Job<T> {
    /// Create the spare, `len` bytes, and fault in its first `prefault` bytes.
    Prepare { len: u64, prefault: usize },
    /// The writer needs the spare now: answer with the last failure if it is still not made.
    Take,
    /// Unmap a segment the writer has moved past.
    Release(T),
}

/// The helper thread's state.
struct Helper<S: Storage> {
    dir: DataDir<S>,
    done: mpsc::Sender<io::Result<S::Segment>>,
    check_every: Duration,
    /// The spare asked for that could not be made yet, with the last failure.
    retrying: Option<(u64, usize, io::Error)>,
    /// The journal's segment length, once a spare was asked for.
    segment_len: Option<u64>,
    /// The free space was short at the last look ([`DiskRoom::low`]).
    low: bool,
}

impl<S: Storage> Helper<S> {
    fn run(mut self, inbox: &mpsc::Receiver<Job<S::Segment>>) {
        // On a schedule of its own: jobs arriving more often than that do not put it off.
        let mut next_look = Instant::now() + self.check_every;
        loop {
            // A spare being retried was asked for, so its length is known.
            debug_assert!(self.retrying.is_none() || self.segment_len.is_some());
            let wait = next_look.saturating_duration_since(Instant::now());
            let answered = match inbox.recv_timeout(wait) {
                Ok(Job::Prepare { len, prefault }) => {
                    assert!(self.retrying.is_none(), "a spare asked for before the last was taken");
                    self.segment_len = Some(len);
                    let answered = self.attempt(len, prefault);
                    self.check_disk();
                    answered
                }
                // Answered already if the spare was made; otherwise the writer waits for this.
                Ok(Job::Take) => match self.retrying.take() {
                    Some((_, _, error)) => self.done.send(Err(error)).is_ok(),
                    None => true,
                },
                Ok(Job::Release(segment)) => {
                    drop(segment);
                    true
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let retry = self.retrying.as_ref().map(|&(len, prefault, _)| (len, prefault));
                    let answered = retry.is_none_or(|(len, prefault)| self.attempt(len, prefault));
                    self.check_disk();
                    next_look = Instant::now() + self.check_every;
                    answered
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            if !answered {
                return;
            }
        }
    }

    /// Tries to make the spare; sends it if made, keeps the failure to retry otherwise. False
    /// if the writer is gone.
    fn attempt(&mut self, len: u64, prefault: usize) -> bool {
        // The pair of `request`'s check, across the channel.
        assert!(len >= SEGMENT_LEN_MIN, "a spare shorter than any segment");
        match prepare(self.dir.storage(), len, prefault) {
            Ok(spare) => {
                if self.retrying.take().is_some() {
                    tracing::info!(target: "ringfence", "the journal's next segment is ready after all");
                }
                self.done.send(Ok(spare)).is_ok()
            }
            Err(error) => {
                if self.retrying.is_none() {
                    // The first sign of a disk that will not take the next segment: said at
                    // once, while the current one still has room, and counted.
                    self.dir.note_spare_failed();
                    tracing::warn!(
                        target: "ringfence",
                        "could not make the journal's next segment ready ({}: {error}); retrying \
                         every {} s: if it is still not ready when the current segment is full, \
                         the journal creates it then, and fails unless that succeeds",
                        self.dir.storage().describe(SPARE_NAME),
                        self.check_every.as_secs_f64()
                    );
                }
                self.retrying = Some((len, prefault, error));
                true
            }
        }
    }

    /// Reads the free space and the newest snapshot's size, publishes them, and warns as the
    /// space falls short of the next snapshot and [`LOW_DISK_SEGMENTS`] segments (says so again
    /// when it no longer is).
    fn check_disk(&mut self) {
        let Some(segment_len) = self.segment_len else { return };
        let storage = self.dir.storage();
        let Ok(free_bytes) = storage.free_bytes() else { return };
        // u64::MAX marks space not yet read; a file system that large is counted a byte short.
        let free_bytes = free_bytes.min(u64::MAX - 1);
        // The newest snapshot, by name; none yet (or none readable) counts as empty.
        let newest = crate::snapshot::list(storage).ok().and_then(|found| found.last().cloned());
        let snapshot_len = newest.and_then(|(_, name)| storage.file_len(&name).ok()).unwrap_or(0);
        let room = DiskRoom { free_bytes, segment_len, snapshot_len };
        self.dir.note_disk_room(room);
        let low = room.low();
        let where_ = storage.describe("");
        let mib = |bytes: u64| bytes / (1 << 20);
        match (self.low, low) {
            (false, true) => tracing::warn!(
                target: "ringfence",
                "the data directory's disk is nearly full: {} MiB free at {where_}, room for {} \
                 more journal segments of {} MiB, and the next snapshot needs about {} MiB (as \
                 the newest); free space or move the archive before it fills (the journal then \
                 refuses writes)",
                mib(free_bytes),
                free_bytes / segment_len,
                mib(segment_len),
                mib(snapshot_len)
            ),
            (true, false) => tracing::info!(
                target: "ringfence",
                "the data directory's disk has room again: {} MiB free at {where_}",
                mib(free_bytes)
            ),
            _ => {}
        }
        self.low = low;
        debug_assert_eq!(self.dir.disk_room(), Some(room), "the room seen is not published");
    }
}

/// Prepares spares on a helper thread, one at a time.
pub(crate) struct SparePreparer<S: Storage> {
    storage: S,
    jobs: Option<mpsc::Sender<Job<S::Segment>>>,
    ready: mpsc::Receiver<io::Result<S::Segment>>,
    /// The length of the spare asked for and not yet taken, if one was.
    pending: Option<u64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl<S: Storage> SparePreparer<S> {
    /// Starts the helper thread (`rf-spare`) for the journal in `dir`; it reads the free disk
    /// space, and retries a spare it could not make, every `check_every`.
    pub(crate) fn start(dir: DataDir<S>, check_every: Duration) -> io::Result<SparePreparer<S>> {
        assert!(is_temp_name(SPARE_NAME), "a spare that recovery would not remove");
        assert!(!check_every.is_zero(), "a helper that never sleeps");
        let (jobs, inbox) = mpsc::channel::<Job<S::Segment>>();
        let (done, ready) = mpsc::channel();
        let storage = dir.storage().clone();
        let helper =
            Helper { dir, done, check_every, retrying: None, segment_len: None, low: false };
        let thread = thread::Builder::new().name("rf-spare".into()).spawn(move || {
            helper.run(&inbox);
        })?;
        Ok(SparePreparer { storage, jobs: Some(jobs), ready, pending: None, thread: Some(thread) })
    }

    /// Asks for a spare of `len` bytes with its first `prefault` bytes faulted in. One at a
    /// time: the last one must have been taken.
    pub(crate) fn request(&mut self, len: u64, prefault: usize) {
        assert!(self.pending.is_none(), "a spare asked for twice");
        assert!(len >= SEGMENT_LEN_MIN, "a spare shorter than any segment");
        let job = Job::Prepare { len, prefault };
        // A helper that is gone leaves the writer creating segments itself.
        let sent = self.jobs.as_ref().is_some_and(|jobs| jobs.send(job).is_ok());
        self.pending = sent.then_some(len);
    }

    /// The spare asked for, waiting for it if the helper is still at work; `None` if none was
    /// asked for. An error is the helper's: the caller creates the segment itself instead, and
    /// reports the error that gives, if any.
    pub(crate) fn take(&mut self) -> Option<io::Result<S::Segment>> {
        let len = self.pending.take()?;
        // A helper still retrying answers with its last failure; one that made the spare has
        // sent it already and ignores this.
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job::Take);
        }
        let helper_gone = || io::Error::other("the spare segment's helper thread stopped");
        let spare = self.ready.recv().unwrap_or_else(|_| Err(helper_gone()));
        // The one asked for: of its length, and nothing written in it yet.
        let made = spare.as_ref().ok().map(|segment| segment.bytes());
        assert!(made.is_none_or(|bytes| bytes.len() as u64 == len), "a spare of another length");
        let header = made.map(|bytes| &bytes[..SEGMENT_MAGIC.len()]);
        assert!(header.is_none_or(|h| h != SEGMENT_MAGIC), "a spare that holds a header");
        Some(spare)
    }

    /// Unmaps `segment` on the helper thread (on this one if the helper is gone).
    pub(crate) fn release(&mut self, segment: S::Segment) {
        // Only a segment the writer moved past, which has its header: never a spare.
        let header = segment.bytes().get(..SEGMENT_MAGIC.len());
        assert_eq!(header, Some(&SEGMENT_MAGIC[..]), "releasing what is not a journal segment");
        if let Some(jobs) = &self.jobs {
            // A helper that is gone hands the segment back in the error, dropped here.
            let _ = jobs.send(Job::Release(segment));
        }
    }
}

/// Creates the spare. A failure leaves no file behind (best effort), so the next attempt is
/// not refused for the name.
fn prepare<S: Storage>(storage: &S, len: u64, prefault: usize) -> io::Result<S::Segment> {
    let created = storage.create_segment(SPARE_NAME, len);
    let Ok(mut segment) = created else {
        let _ = storage.remove(SPARE_NAME);
        return created;
    };
    // Hints, as for any appended segment: a failure leaves pages to fault as records come.
    let _hint_only = segment.appending();
    let lead = prefault.min(segment.bytes().len());
    let _hint_only = segment.prefault(0..lead);
    // Made as asked, and zero-filled (its first bytes: reading all of it would fault it in).
    assert_eq!(segment.bytes().len() as u64, len, "a spare of another length");
    debug_assert!(segment.bytes()[..lead].iter().all(|b| *b == 0), "a spare not zero-filled");
    Ok(segment)
}

impl<S: Storage> Drop for SparePreparer<S> {
    /// Stops the helper and removes a spare that was made and never used (recovery would
    /// remove it too; a directory left tidy reads better).
    fn drop(&mut self) {
        let unused = self.take();
        assert!(self.pending.is_none(), "a spare still asked for at stop");
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            // The helper finishes the job in hand (a release, or nothing) and stops.
            let _ = thread.join();
        }
        if let Some(Ok(spare)) = unused {
            drop(spare);
            let _ = self.storage.remove(SPARE_NAME);
        }
    }
}
