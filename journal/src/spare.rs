//! The next segment, made ready before the writer needs it.
//!
//! Starting a segment on the appending thread costs the file's creation, allocation and syncs
//! and its mapping, then the header sync and the manifest: a p50 of 2.8–4.4 ms in `perf
//! journal`'s `segment_start` rows on this project's machine, every 64 MiB of journal, during
//! which the journaling thread (on two cores, also the processor's) does nothing else. A
//! [`SparePreparer`] does the first part on a helper thread as soon as a segment starts: it
//! creates the next segment under the temporary name [`SPARE_NAME`] (zero-filled, allocated,
//! synced, mapped, its first pages faulted in), and it unmaps the segment the writer moves
//! past. At the next rotation the writer writes the spare's header, syncs it, renames the
//! spare to the segment's name and syncs the directory, then lists it in the manifest.
//!
//! Crash safety is the rotation's own: a spare that was never renamed is a temporary file,
//! which recovery removes; one renamed but not listed has nothing after its header, which
//! recovery removes as a creation cut off; the rename is durable before the manifest names it.

use std::io;
use std::sync::mpsc;
use std::thread;

use crate::datadir::DataDir;
use crate::format::{SEGMENT_LEN_MIN, SEGMENT_MAGIC};
use crate::storage::{Segment, Storage, is_temp_name};

/// The spare segment's file name (a temporary name: recovery removes one a crash leaves).
pub const SPARE_NAME: &str = ".next-segment.tmp";

const _: () = assert!(SPARE_NAME.as_bytes()[0] == b'.');

enum Job<T> {
    /// Create the spare, `len` bytes, and fault in its first `prefault` bytes.
    Prepare { len: u64, prefault: usize },
    /// Unmap a segment the writer has moved past.
    Release(T),
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
    /// Starts the helper thread (`rf-spare`) for the journal in `dir`.
    pub(crate) fn start(dir: DataDir<S>) -> io::Result<SparePreparer<S>> {
        assert!(is_temp_name(SPARE_NAME), "a spare that recovery would not remove");
        let (jobs, inbox) = mpsc::channel::<Job<S::Segment>>();
        let (done, ready) = mpsc::channel();
        let storage = dir.storage().clone();
        let thread = thread::Builder::new().name("rf-spare".into()).spawn(move || {
            for job in inbox {
                match job {
                    Job::Prepare { len, prefault } => {
                        let spare = prepare(dir.storage(), len, prefault);
                        if let Err(error) = &spare {
                            // The first sign of a disk that will not take the next segment:
                            // said at once, while the current one still has room, and counted.
                            dir.note_spare_failed();
                            tracing::warn!(
                                target: "ringfence",
                                "could not make the journal's next segment ready ({}: {error}); \
                                 it will be created when the current one is full, and the \
                                 journal fails then unless that succeeds",
                                dir.storage().describe(SPARE_NAME)
                            );
                        }
                        if done.send(spare).is_err() {
                            return;
                        }
                    }
                    Job::Release(segment) => drop(segment),
                }
            }
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
