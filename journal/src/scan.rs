//! Reading the journal: a structural scan of every segment, then a decoding pass over records.
//!
//! [`scan`] checks every segment header and every record's length, CRC, sequence and epoch,
//! and finds where the journal ends. Damage in the last segment with no intact record after it
//! is a *torn tail* (a write cut off by a crash); any other damage is corruption. [`read`]
//! then walks the intact records of a scanned journal, decodes each payload with the canonical
//! decoder (which refuses any byte out of place) and hands decoded commands to a visitor.

use std::fs::File;
use std::io;
use std::ops::{ControlFlow, Deref};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use memmap2::Mmap;
use ringfence_core::{Command, Epoch, Sequence, Timestamp};

use crate::error::{Damage, JournalError};
use crate::format::{
    self, HeaderProblem, RECORD_ALIGN, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, SegmentHeader,
};
use crate::storage::{Segment, Storage};

/// Read access to a data directory: a [`Storage`], or a directory mapped read-only (the tools).
/// Recovery, the tools and replication read segments, the manifest, the epoch file and
/// snapshots through it.
pub trait ReadSource {
    /// A segment's bytes.
    type Bytes: Deref<Target = [u8]> + Send;
    /// Names of every file in the directory.
    fn list_files(&self) -> io::Result<Vec<String>>;
    /// Names of the files that end in `.seg`.
    fn list_segments(&self) -> io::Result<Vec<String>> {
        let mut names = self.list_files()?;
        names.retain(|name| name.ends_with(".seg"));
        Ok(names)
    }
    /// A file's length in bytes.
    fn file_len(&self, name: &str) -> io::Result<u64>;
    /// A whole (small) file.
    fn read_file(&self, name: &str) -> io::Result<Vec<u8>>;
    /// The first `len` bytes of a file (fewer if it is shorter): a snapshot's header, without
    /// reading the state after it.
    fn read_head(&self, name: &str, len: usize) -> io::Result<Vec<u8>> {
        let mut bytes = self.read_file(name)?;
        bytes.truncate(len);
        assert!(bytes.len() <= len, "a head longer than asked for");
        Ok(bytes)
    }
    /// A reader of a file, front to back, for one too large to read whole (a snapshot loaded,
    /// checked, copied or sent to a standby). It reads the file as it was opened, whatever
    /// becomes of its name. By default the file is read whole first.
    fn open_file(&self, name: &str) -> io::Result<Box<dyn io::Read + Send>> {
        Ok(Box::new(io::Cursor::new(self.read_file(name)?)))
    }
    /// The bytes of one segment.
    fn read_segment(&mut self, name: &str) -> io::Result<Self::Bytes>;
    /// How to name a file to an operator.
    fn describe_file(&self, name: &str) -> String;
    /// How to name the journal directory to an operator.
    fn location(&self) -> String;
}

/// A segment opened through a [`Storage`], read through [`Deref`].
pub struct SegmentBytes<T: Segment>(pub T);

impl<T: Segment> Deref for SegmentBytes<T> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.bytes()
    }
}

impl<S: Storage> ReadSource for S {
    type Bytes = SegmentBytes<S::Segment>;
    fn list_files(&self) -> io::Result<Vec<String>> {
        self.list()
    }
    fn file_len(&self, name: &str) -> io::Result<u64> {
        Storage::file_len(self, name)
    }
    fn read_file(&self, name: &str) -> io::Result<Vec<u8>> {
        Storage::read_file(self, name)
    }
    fn read_head(&self, name: &str, len: usize) -> io::Result<Vec<u8>> {
        Storage::read_head(self, name, len)
    }
    fn open_file(&self, name: &str) -> io::Result<Box<dyn io::Read + Send>> {
        // A temporary file is still being written: nothing reads it as a whole one.
        assert!(!crate::storage::is_temp_name(name), "a temporary file read: {name}");
        self.open_read(name)
    }
    fn read_segment(&mut self, name: &str) -> io::Result<Self::Bytes> {
        assert!(name.ends_with(".seg"), "a segment read from a file that is not one: {name}");
        self.open_segment(name).map(SegmentBytes)
    }
    fn describe_file(&self, name: &str) -> String {
        self.describe(name)
    }
    fn location(&self) -> String {
        self.describe("").trim_end_matches('/').to_owned()
    }
}

/// A journal directory mapped read-only, for the tools: nothing is ever written.
#[derive(Debug)]
pub struct ReadOnlyDir {
    dir: PathBuf,
}

impl ReadOnlyDir {
    /// The journal in `dir` (which must exist).
    pub fn open(dir: &Path) -> Result<ReadOnlyDir, JournalError> {
        if !dir.is_dir() {
            return Err(JournalError::io(
                format!("opening journal directory {}", dir.display()),
                match dir.try_exists() {
                    Ok(true) => io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
                    Ok(false) => io::Error::new(io::ErrorKind::NotFound, "no such directory"),
                    Err(error) => error,
                },
            ));
        }
        Ok(ReadOnlyDir { dir: dir.to_path_buf() })
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A read-only map of a segment file.
pub struct MappedFile(Mmap);

impl Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// Whether `name` is a plain file name, naming a file in the directory and nowhere else.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

impl ReadSource for ReadOnlyDir {
    type Bytes = MappedFile;
    fn list_files(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
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
    fn file_len(&self, name: &str) -> io::Result<u64> {
        assert!(is_plain_name(name), "a name that leaves the journal directory: {name}");
        Ok(std::fs::metadata(self.dir.join(name))?.len())
    }
    fn read_file(&self, name: &str) -> io::Result<Vec<u8>> {
        assert!(is_plain_name(name), "a name that leaves the journal directory: {name}");
        std::fs::read(self.dir.join(name))
    }
    fn read_head(&self, name: &str, len: usize) -> io::Result<Vec<u8>> {
        assert!(is_plain_name(name), "a name that leaves the journal directory: {name}");
        read_head(&self.dir.join(name), len)
    }
    fn open_file(&self, name: &str) -> io::Result<Box<dyn io::Read + Send>> {
        assert!(is_plain_name(name), "a name that leaves the journal directory: {name}");
        // An open file stays readable after retention unlinks its name.
        let file = File::open(self.dir.join(name))?;
        // A file's contents, not a directory's (debug builds: a stat).
        debug_assert!(file.metadata().is_ok_and(|m| m.is_file()), "not a file: {name}");
        Ok(Box::new(file))
    }
    fn read_segment(&mut self, name: &str) -> io::Result<MappedFile> {
        assert!(is_plain_name(name), "a name that leaves the journal directory: {name}");
        assert!(name.ends_with(".seg"), "a segment read from a file that is not one: {name}");
        let file = File::open(self.dir.join(name))?;
        // SAFETY: the map is read-only and every byte read from it is validated (CRC, bounds,
        // canonical decoding) before use; if a running node appends concurrently, the bytes seen may be
        // partial, which the checks report as a torn tail rather than misbehaving.
        // Faulted in as it is read, not populated up front: a fault maps the pages around the
        // one touched (64 KiB by default), and populating a 64 MiB segment in one call held
        // its reader 4-5 ms before the first record, which a replay's applying thread waited
        // out at every segment start; a reader that wants only the header paid it too.
        let map = unsafe { memmap2::MmapOptions::new().map(&file)? };
        Ok(MappedFile(map))
    }
    fn describe_file(&self, name: &str) -> String {
        assert!(is_plain_name(name), "a name that leaves the journal directory: {name}");
        self.dir.join(name).display().to_string()
    }
    fn location(&self) -> String {
        self.dir.display().to_string()
    }
}

/// One segment as found by [`scan`].
#[derive(Clone, Debug)]
pub struct SegmentLayout {
    /// File name.
    pub name: String,
    /// Its header.
    pub header: SegmentHeader,
    /// Intact records.
    pub records: u64,
    /// Sequence of the last intact record.
    pub last: Option<Sequence>,
    /// Byte offset just past the last intact record.
    pub end: usize,
    /// Epoch of the last intact record.
    pub last_epoch: Option<Epoch>,
    /// Timestamps of the first and last intact records.
    pub time_range: Option<(Timestamp, Timestamp)>,
}

impl SegmentLayout {
    /// Where the journal ends if this is its newest segment: its last record, or the sequence
    /// just before its first when it holds none.
    #[must_use]
    pub fn ends_at(&self) -> Sequence {
        // The header decoder refuses a segment from sequence 0, so `first - 1` is safe.
        assert!(self.header.first_sequence.0 >= 1, "a segment from sequence 0");
        let ends = self.last.unwrap_or(Sequence(self.header.first_sequence.0 - 1));
        assert!(ends.next() >= self.header.first_sequence, "a record before the segment's first");
        ends
    }
}

/// Where the journal stops being intact.
#[derive(Clone, Debug)]
pub struct Problem {
    /// The file.
    pub name: String,
    /// Index of the segment in [`Layout::segments`], or `None` if its header is unusable.
    pub segment: Option<usize>,
    /// Byte offset of the damage.
    pub offset: u64,
    /// The sequence expected there.
    pub sequence: Sequence,
    /// What is wrong.
    pub damage: Damage,
    /// Whether this is a torn tail: the last thing in the journal, with nothing intact after it.
    pub torn_tail: bool,
    /// One past the last non-zero byte from `offset` on (what truncation must clear).
    pub garbage_end: usize,
}

/// The structure of a journal: its intact segments and where (if anywhere) it is damaged.
#[derive(Clone, Debug)]
pub struct Layout {
    /// How to name the directory to an operator.
    pub location: String,
    /// Segments with a valid header, in sequence order, up to the problem if there is one.
    pub segments: Vec<SegmentLayout>,
    /// The first damage found.
    pub problem: Option<Problem>,
}

impl Layout {
    /// Sequence of the first intact record.
    #[must_use]
    pub fn first_sequence(&self) -> Option<Sequence> {
        let first = self.segments.iter().find(|s| s.records > 0).map(|s| s.header.first_sequence);
        assert!(first.is_none_or(|first| first.0 >= 1), "sequences start at 1");
        first
    }

    /// Sequence of the last intact record.
    #[must_use]
    pub fn last_sequence(&self) -> Option<Sequence> {
        let last = self.segments.iter().rev().find_map(|s| s.last);
        // The scan found every sequence between the first and the last, in order.
        let first = self.first_sequence();
        assert_eq!(last.is_some(), first.is_some(), "a last record without a first");
        let span = first.zip(last).map(|(first, last)| last.0 - first.0 + 1);
        assert!(span.is_none_or(|span| span == self.records()), "the journal has a gap");
        last
    }

    /// Epoch of the last intact record.
    #[must_use]
    pub fn last_epoch(&self) -> Option<Epoch> {
        let epoch = self.segments.iter().rev().find_map(|s| s.last_epoch);
        assert_eq!(epoch.is_some(), self.records() > 0, "an epoch without a record");
        epoch
    }

    /// Intact records in all.
    #[must_use]
    pub fn records(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum()
    }

    /// What the scan guarantees of a layout it returns; O(segments).
    fn verify(&self) {
        for segment in &self.segments {
            // Records end on a boundary, after the header, inside the file.
            assert!(segment.end >= SEGMENT_HEADER_LEN, "records inside the segment header");
            assert!(segment.end as u64 <= segment.header.segment_len, "records past the end");
            assert_eq!(segment.end % RECORD_ALIGN, 0, "records end off a 16-byte boundary");
            // Within a segment, sequences are contiguous from its first.
            let first = segment.header.first_sequence.0;
            let counted = segment.last.map_or(0, |last| last.0 - first + 1);
            assert_eq!(counted, segment.records, "a segment's records are not contiguous");
            assert_eq!(segment.last_epoch.is_some(), segment.last.is_some(), "epoch, no record");
            assert_eq!(segment.time_range.is_some(), segment.last.is_some(), "time, no record");
        }
        for pair in self.segments.windows(2) {
            // Each segment starts where the one before it ended, in the same epoch or later.
            let follows = pair[0].last.map_or(pair[0].header.first_sequence, Sequence::next);
            assert_eq!(pair[1].header.first_sequence, follows, "segments that do not follow on");
            let epochs = pair[0].last_epoch.zip(pair[1].last_epoch);
            assert!(epochs.is_none_or(|(before, after)| before <= after), "an epoch went back");
        }
        if let Some(problem) = &self.problem {
            // A torn tail is a write cut off: a bad checksum or length, stray bytes, or a
            // header that never reached the disk. A gap names another sequence than expected.
            let tail_like = matches!(
                problem.damage,
                Damage::Checksum
                    | Damage::Length
                    | Damage::BytesAfterEnd
                    | Damage::SegmentHeader(_)
            );
            assert!(!problem.torn_tail || tail_like, "a torn tail of another kind of damage");
            if let Damage::Gap { found } | Damage::SegmentGap { found } = problem.damage {
                assert_ne!(found, problem.sequence, "a gap where the sequence follows on");
            }
            // Damage inside a kept segment is where its intact records end.
            let at = problem.segment.map(|index| self.segments[index].end as u64);
            assert!(
                at.is_none_or(|end| end == problem.offset),
                "damage away from the records' end"
            );
            assert!(problem.segment.is_none_or(|index| index + 1 == self.segments.len()));
            // What truncation clears starts at the damage.
            let garbage_end = problem.garbage_end as u64;
            assert!(problem.segment.is_none() || garbage_end >= problem.offset, "garbage before");
        }
    }

    /// The error to refuse with if the journal is corrupt (damaged before its tail).
    #[must_use]
    pub fn corruption(&self, source: &dyn Fn(&str) -> String) -> Option<JournalError> {
        let problem = self.problem.as_ref().filter(|p| !p.torn_tail)?;
        // The damage is in a segment the scan kept, or in a header it could not read.
        assert!(problem.segment.is_none_or(|index| index < self.segments.len()));
        Some(JournalError::Corrupt {
            dir: self.location.clone(),
            file: source(&problem.name),
            offset: problem.offset,
            sequence: problem.sequence,
            damage: problem.damage,
        })
    }
}

/// Segment names sorted by first sequence; a `.seg` file with any other name is refused.
pub fn sorted_segments<S: ReadSource>(source: &S) -> Result<Vec<(Sequence, String)>, JournalError> {
    let names = source
        .list_segments()
        .map_err(|e| JournalError::io(format!("listing {}", source.location()), e))?;
    let mut segments = Vec::with_capacity(names.len());
    for name in names {
        let Some(first) = format::parse_segment_name(&name) else {
            return Err(JournalError::StrayFile { file: source.describe_file(&name) });
        };
        segments.push((first, name));
    }
    segments.sort_unstable();
    // Names are canonical (20 digits), so no two name the same first sequence.
    assert!(segments.windows(2).all(|pair| pair[0].0 < pair[1].0), "two names for one segment");
    debug_assert!(segments.iter().all(|(first, name)| *name == format::segment_name(*first)));
    Ok(segments)
}

/// Checks the structure of every segment in the directory. I/O failures are errors; damage is
/// reported in [`Layout::problem`] so the caller decides (recovery truncates a torn tail, tools
/// report). Recovery and the tools first compare the directory with its manifest
/// ([`crate::datadir::check`]) and scan only the segments it lists, with [`scan_segments`].
pub fn scan<S: ReadSource>(source: &mut S) -> Result<Layout, JournalError> {
    let names = sorted_segments(source)?;
    scan_segments(source, &names)
}

/// Checks the structure of the segments `names` (sorted by first sequence), as [`scan`] does.
/// A journal of large segments is scanned on two threads (`scan_ahead`); the layout is the
/// one a scan of each segment in turn finds.
pub fn scan_segments<S: ReadSource>(
    source: &mut S,
    names: &[(Sequence, String)],
) -> Result<Layout, JournalError> {
    let large = |(_, name): &(Sequence, String)| {
        source.file_len(name).is_ok_and(|len| len >= SCAN_AHEAD_SEGMENT_MIN)
    };
    let mut ahead =
        if names.len() >= 2 && large(&names[0]) { scan_ahead(source, names) } else { Vec::new() };
    join_segments(source, names, &mut ahead)
}

/// Segments this long or longer are worth a second thread; a smaller one scans in well under
/// a millisecond. (`serve` writes 64 MiB segments; tests and the simulator small ones.)
const SCAN_AHEAD_SEGMENT_MIN: u64 = 1 << 20;

/// Segment by segment, in order, checks that each follows on from the one before and stops at
/// the first problem, taking a segment's scan from `ahead` where its guess holds
/// ([`Guess::holds`]) and scanning the segment now otherwise.
fn join_segments<S: ReadSource>(
    source: &mut S,
    names: &[(Sequence, String)],
    ahead: &mut [Option<io::Result<Guess>>],
) -> Result<Layout, JournalError> {
    debug_assert!(names.windows(2).all(|pair| pair[0].0 < pair[1].0), "segments out of order");
    assert!(ahead.is_empty() || ahead.len() == names.len(), "a guess for another journal");
    let mut layout = Layout { location: source.location(), segments: Vec::new(), problem: None };
    let mut expected: Option<Sequence> = None;
    let mut epoch = Epoch(0);
    for (index, (first, name)) in names.iter().enumerate() {
        let is_last = index + 1 == names.len();
        let read = match ahead.get_mut(index).and_then(Option::take) {
            Some(Ok(guess)) if guess.holds(expected, epoch) => {
                // Only a scan that found the segment's header holds: this segment's.
                let named = matches!(&guess.scan, Ok((segment, _)) if segment.name == *name);
                assert!(named, "a guess taken for another segment");
                Ok(guess.scan)
            }
            Some(Err(error)) => Err(error),
            _ => source
                .read_segment(name)
                .map(|bytes| scan_segment(name, *first, &bytes, expected, epoch, is_last)),
        };
        let scanned = read
            .map_err(|e| JournalError::io(format!("reading {}", source.describe_file(name)), e))?;
        match scanned {
            Ok((segment, problem)) => {
                // `check_header` refused a segment that does not follow on, and the record
                // loop a record whose epoch went back.
                let follows = expected.is_none_or(|e| e == segment.header.first_sequence);
                assert!(follows, "a segment accepted out of sequence");
                assert!(segment.last_epoch.is_none_or(|e| e >= epoch), "an epoch went back");
                if let Some(last) = segment.last {
                    expected = Some(last.next());
                } else {
                    expected = Some(segment.header.first_sequence);
                }
                epoch = segment.last_epoch.unwrap_or(epoch);
                layout.segments.push(segment);
                if let Some(mut problem) = problem {
                    problem.segment = Some(layout.segments.len() - 1);
                    layout.problem = Some(problem);
                    break;
                }
            }
            Err(problem) => {
                layout.problem = Some(problem);
                break;
            }
        }
    }
    layout.verify();
    Ok(layout)
}

type SegmentScan = Result<(SegmentLayout, Option<Problem>), Problem>;

/// A segment scanned as if it followed on from whatever came before it: expecting no first
/// sequence in particular, and any epoch.
struct Guess {
    scan: SegmentScan,
    /// The epoch of its first intact record.
    first_epoch: Option<Epoch>,
}

impl Guess {
    fn of(name: &str, first: Sequence, bytes: &[u8], is_last: bool) -> Guess {
        let scan = scan_segment(name, first, bytes, None, Epoch(0), is_last);
        let first_epoch = match &scan {
            Ok((segment, _)) if segment.records > 0 => {
                Some(format::read_record_header(&bytes[SEGMENT_HEADER_LEN..]).epoch)
            }
            _ => None,
        };
        if let Ok((segment, _)) = &scan {
            // What `holds` compares with: the segment's own header, its epochs in order.
            assert_eq!(segment.header.first_sequence, first, "a guess for another segment");
            assert!(first_epoch <= segment.last_epoch, "a segment's epochs went back");
        }
        Guess { scan, first_epoch }
    }

    /// Whether scanning the segment expecting the first sequence `expected` and records of
    /// `epoch` or later finds what the guess found. Those two are all a segment's scan takes
    /// from the ones before it: `expected` only decides a gap between segments, which the guess
    /// would show as a header whose first sequence is another; and an epoch is checked only
    /// against the record before, so where the first intact record's epoch is `epoch` or later,
    /// every record meets the same checks both ways. A record that fails a check before its
    /// epoch's is not intact either way. A header problem names the sequence `expected`, so it
    /// is scanned again.
    fn holds(&self, expected: Option<Sequence>, epoch: Epoch) -> bool {
        match &self.scan {
            Ok((segment, _)) => {
                expected.is_none_or(|expected| expected == segment.header.first_sequence)
                    && self.first_epoch.is_none_or(|first| first >= epoch)
            }
            Err(_) => false,
        }
    }
}

/// Scans the segments `names` on two threads: this one reads every segment (a source is read
/// from one thread) and scans every other one; a helper scans the rest. Each is scanned as a
/// [`Guess`], for [`join_segments`] to take where it holds. Reading stops at the first segment
/// that cannot be read or whose guess found a problem: a scan in turn goes no further.
fn scan_ahead<S: ReadSource>(
    source: &mut S,
    names: &[(Sequence, String)],
) -> Vec<Option<io::Result<Guess>>> {
    let count = names.len();
    let mut ahead: Vec<Option<io::Result<Guess>>> = (0..count).map(|_| None).collect();
    let damaged = |guess: &Guess| !matches!(guess.scan, Ok((_, None)));
    // One segment waits for the helper at most, so that no more than three are mapped at once.
    let (to_helper, jobs) = mpsc::sync_channel::<(usize, S::Bytes)>(1);
    let (done, scanned) = mpsc::channel::<(usize, Guess)>();
    std::thread::scope(|scope| {
        let helper =
            std::thread::Builder::new().name("rf-scan".into()).spawn_scoped(scope, move || {
                for (index, bytes) in jobs {
                    let (first, name) = &names[index];
                    let guess = Guess::of(name, *first, &bytes, index + 1 == count);
                    // Dropped here, off the reading thread: unmapping a segment takes time too.
                    drop(bytes);
                    if done.send((index, guess)).is_err() {
                        break;
                    }
                }
            });
        // Without a helper (no thread to be had), no guesses: the join scans in turn.
        if helper.is_err() {
            return;
        }
        for (index, (first, name)) in names.iter().enumerate() {
            let found_damage = scanned.try_iter().fold(false, |found, (at, guess)| {
                let damaged = damaged(&guess);
                ahead[at] = Some(Ok(guess));
                found || damaged
            });
            if found_damage {
                break;
            }
            let bytes = match source.read_segment(name) {
                Ok(bytes) => bytes,
                Err(error) => {
                    ahead[index] = Some(Err(error));
                    break;
                }
            };
            // The helper's first, so that the two scan side by side from the start.
            if index % 2 == 0 {
                to_helper.send((index, bytes)).expect("the helper scans until told to stop");
                continue;
            }
            let guess = Guess::of(name, *first, &bytes, index + 1 == count);
            let damaged = damaged(&guess);
            ahead[index] = Some(Ok(guess));
            if damaged {
                break;
            }
        }
        drop(to_helper);
    });
    for (at, guess) in scanned.try_iter() {
        ahead[at] = Some(Ok(guess));
    }
    // Every segment read was scanned, and reading went in order: the guesses are a prefix.
    let known = ahead.iter().take_while(|guess| guess.is_some()).count();
    assert!(ahead[known..].iter().all(Option::is_none), "a segment skipped while scanning ahead");
    ahead
}

fn scan_segment(
    name: &str,
    named_first: Sequence,
    bytes: &[u8],
    expected: Option<Sequence>,
    mut epoch: Epoch,
    is_last: bool,
) -> SegmentScan {
    // The name and the sequence it stands for come from one listing.
    assert_eq!(format::parse_segment_name(name), Some(named_first), "a name and its first differ");
    let header = check_header(name, named_first, bytes, expected, is_last)?;
    let mut segment = SegmentLayout {
        name: name.to_owned(),
        header: header.clone(),
        records: 0,
        last: None,
        end: SEGMENT_HEADER_LEN,
        last_epoch: None,
        time_range: None,
    };
    let mut next = header.first_sequence;
    let mut offset = SEGMENT_HEADER_LEN;
    // Whether a record was found written where the records had ended: the segment is a
    // running node's, and its writer is appending.
    let mut live = false;
    let damage = loop {
        // Offsets only grow, by whole records, so they stay on 16-byte boundaries.
        assert_eq!(offset % RECORD_ALIGN, 0, "a record off a 16-byte boundary");
        assert!(offset <= bytes.len(), "the scan stepped past the segment's end");
        let rest = &bytes[offset.min(bytes.len())..];
        let (record, len) = match format::check_record(rest) {
            Some(found) => found,
            // Past the last record the writer of a live segment appends: bytes there are its.
            None if format::is_end_marker(rest) && (live || last_nonzero(rest).is_none()) => {
                segment.end = offset;
                let counted = next.0 - header.first_sequence.0;
                assert_eq!(segment.records, counted, "records counted apart from their sequences");
                return Ok((segment, None));
            }
            None => {
                // Read again, into a copy: the last segment may be a running node's (`journal
                // verify` and `journal backup` read live directories), whose writer appended
                // here while this scan looked past the end of its records, most of a segment
                // of zeros. A volatile read, since the compiler may take these bytes for
                // unchanging; a segment nothing writes reads the same again.
                let again: Vec<u8> = rest[..rest.len().min(format::RECORD_LEN_MAX)]
                    .iter()
                    // SAFETY: a pointer to a byte of `rest`, valid and aligned for reads.
                    .map(|byte| unsafe { std::ptr::read_volatile(byte) })
                    .collect();
                match format::check_record(&again).filter(|_| is_last) {
                    Some(found) => {
                        live = true;
                        found
                    }
                    None if format::is_end_marker(&again) => break Damage::BytesAfterEnd,
                    None => break record_damage(&again, next, offset),
                }
            }
        };
        if record.sequence != next {
            break Damage::Gap { found: record.sequence };
        }
        if record.epoch < epoch {
            break Damage::EpochWentBack;
        }
        epoch = record.epoch;
        segment.records += 1;
        segment.last = Some(record.sequence);
        segment.last_epoch = Some(record.epoch);
        let first_time = segment.time_range.map_or(record.timestamp, |(first, _)| first);
        segment.time_range = Some((first_time, record.timestamp));
        next = next.next();
        offset += len;
    };
    segment.end = offset;
    let counted = next.0 - header.first_sequence.0;
    assert_eq!(segment.records, counted, "records counted apart from their sequences");
    let torn_tail = is_last
        && could_be_cut_off(damage, &bytes[offset..])
        && !boundaries(bytes, offset).any(|at| format::check_record(&bytes[at..]).is_some());
    let garbage_end = offset + last_nonzero(&bytes[offset..]).map_or(0, |i| i + 1);
    assert!(garbage_end > offset, "damage with nothing to clear");
    assert!(garbage_end <= bytes.len(), "garbage past the segment's end");
    let problem = Problem {
        name: name.to_owned(),
        segment: None,
        offset: offset as u64,
        sequence: next,
        damage,
        torn_tail,
        garbage_end,
    };
    Ok((segment, Some(problem)))
}

fn check_header(
    name: &str,
    named_first: Sequence,
    bytes: &[u8],
    expected: Option<Sequence>,
    is_last: bool,
) -> Result<SegmentHeader, Problem> {
    let problem = |damage, torn_tail| Problem {
        name: name.to_owned(),
        segment: None,
        offset: 0,
        sequence: expected.unwrap_or(named_first),
        damage,
        torn_tail,
        garbage_end: SEGMENT_HEADER_LEN.min(bytes.len()),
    };
    let header = match format::decode_segment_header(bytes) {
        Ok(header) => header,
        Err(header_problem) => {
            // A segment whose creation was cut off: the last file, nothing after its header.
            let empty = bytes.len() <= SEGMENT_HEADER_LEN
                || last_nonzero(&bytes[SEGMENT_HEADER_LEN..]).is_none();
            return Err(problem(Damage::SegmentHeader(header_problem), is_last && empty));
        }
    };
    if header.first_sequence != named_first || header.segment_len != bytes.len() as u64 {
        let field = if header.first_sequence != named_first { "first sequence" } else { "length" };
        let damage = Damage::SegmentHeader(HeaderProblem::BadField(field));
        return Err(problem(damage, false));
    }
    // The header decoder refuses a segment from sequence 0, so `first - 1` is safe for callers.
    assert!(header.first_sequence.0 >= 1, "a segment accepted from sequence 0");
    if expected.is_some_and(|expected| header.first_sequence != expected) {
        return Err(problem(Damage::SegmentGap { found: header.first_sequence }, false));
    }
    Ok(header)
}

/// Record boundaries after `offset` where a record header fits and no end marker stands: where
/// a record past damage may start (found by its CRC32C).
pub(crate) fn boundaries(bytes: &[u8], offset: usize) -> impl Iterator<Item = usize> + '_ {
    assert_eq!(offset % RECORD_ALIGN, 0, "records start on 16-byte boundaries");
    (offset + RECORD_ALIGN..)
        .step_by(RECORD_ALIGN)
        .take_while(move |at| at + RECORD_HEADER_LEN <= bytes.len())
        .filter(move |&at| !format::is_end_marker(&bytes[at..]))
}

/// What is wrong with the record at the start of `rest` (at byte `offset` of its segment),
/// which fails its checks where record `expected` is due: one flipped bit, a length out of
/// range, or a checksum that does not match.
fn record_damage(rest: &[u8], expected: Sequence, offset: usize) -> Damage {
    assert!(format::check_record(rest).is_none(), "an intact record judged damaged");
    if let Some((at, mask)) = flipped_bit(rest, expected) {
        assert_eq!(mask.count_ones(), 1, "a bit flip of more than one bit");
        return Damage::BitFlip { offset: (offset + at) as u64, mask };
    }
    if format::read_record_header(rest).payload_len > format::RECORD_PAYLOAD_MAX {
        Damage::Length
    } else {
        Damage::Checksum
    }
}

/// Whether damage at the start of `rest`, where record `expected` is due, could be a write a
/// crash cut off, judged as the scan judges a torn tail: bytes after an end marker, or a record
/// that fails its checks as a cut-off write leaves it (never one flipped bit, damage at rest).
/// An intact record there is no damage a crash leaves either (a gap). The caller checks that
/// nothing intact follows.
pub(crate) fn could_be_torn_write(rest: &[u8], expected: Sequence) -> bool {
    assert!(expected.0 >= 1, "a record due at sequence 0");
    let damage = if format::is_end_marker(rest) {
        Damage::BytesAfterEnd
    } else if format::check_record(rest).is_some() {
        return false;
    } else {
        record_damage(rest, expected, 0)
    };
    could_be_cut_off(damage, rest)
}

/// Whether a write cut off by a crash could have left `damage` at the start of `rest`. Such a
/// write leaves aligned [`RECORD_ALIGN`]-byte units zero and the others as the writer wrote
/// them (see [`flipped_bit`]): so the record's first unit, which holds its length, is whole,
/// and some unit of the record is wholly zero. Bytes after an end marker may be units written
/// before the one that holds it. Anything else — a length no writer wrote, a record with every
/// unit written that fails its CRC, garbage — is damage at rest.
///
/// `damage` is what the scan found at the start of `rest`, which is not read again to confirm
/// it: the segment may be a running node's, whose writer has appended there since (`journal
/// verify` on a live directory), and a scan judges what it found rather than panic on bytes
/// that moved under it.
fn could_be_cut_off(damage: Damage, rest: &[u8]) -> bool {
    match damage {
        Damage::BytesAfterEnd => true,
        Damage::Checksum => {
            let payload_len = format::read_record_header(rest).payload_len;
            let len = format::record_len(payload_len);
            payload_len >= 1
                && len <= rest.len()
                && rest[..len].chunks(RECORD_ALIGN).any(|unit| unit.iter().all(|&b| b == 0))
        }
        _ => false,
    }
}

/// The one flipped bit in the record at the start of `rest`, which fails its checks, if
/// flipping it back makes the record intact with the sequence `expected`: damage at rest, which
/// a write cut off cannot leave. Returns the byte's index in `rest` and the bit's mask.
///
/// A write cut off leaves bytes zero, in aligned [`RECORD_ALIGN`]-byte units at the finest: a
/// disk writes whole sectors, and the writer copies a record (16-byte aligned, a multiple of
/// 16 long) with aligned stores of 16 bytes or more. So a bit that restoring would *set* inside
/// a wholly zero unit may be a unit never written, and is left to be read as a torn write.
///
/// It works on one copy of the bytes: a running node's writer may be completing the record
/// while `journal verify` reads its segment, and a record found whole in the copy (written
/// since the scan read it) has no flipped bit.
fn flipped_bit(rest: &[u8], expected: Sequence) -> Option<(usize, u8)> {
    let window = rest[..rest.len().min(format::RECORD_LEN_MAX)].to_vec();
    if format::check_record(&window).is_some() {
        return None;
    }
    let mut bytes = window.clone();
    for at in 0..bytes.len() {
        for bit in 0..8 {
            let mask = 1u8 << bit;
            bytes[at] ^= mask;
            let intact = format::check_record(&bytes)
                .is_some_and(|(header, len)| header.sequence == expected && at < len);
            bytes[at] ^= mask;
            if !intact {
                continue;
            }
            let unit = at / RECORD_ALIGN * RECORD_ALIGN;
            let unwritten =
                window[unit..(unit + RECORD_ALIGN).min(window.len())].iter().all(|&b| b == 0);
            // CRC32C detects every two-bit error, so no other single flip makes it intact.
            return (window[at] & mask != 0 || !unwritten).then_some((at, mask));
        }
    }
    assert_eq!(bytes, window, "the bytes tried are left as found");
    None
}

/// The intact records at the front of a segment's bytes, after its header: how many follow on
/// from `first`, whole and in order (each record's length, CRC32C and sequence checked, epochs
/// never going back, as the scan checks them), and the byte offset where they end. What is
/// left of a segment cut short is read this way: the scan refuses such a segment whole (its
/// header names the longer length), yet `journal truncate` can keep these records.
pub(crate) fn intact_prefix(bytes: &[u8], first: Sequence) -> IntactPrefix {
    assert!(first.0 >= 1, "a segment from sequence 0");
    let mut offset = SEGMENT_HEADER_LEN.min(bytes.len());
    let (mut next, mut epoch, mut last_at) = (first, Epoch(0), None);
    while let Some((record, len)) = format::check_record(&bytes[offset..]) {
        if record.sequence != next || record.epoch < epoch {
            break;
        }
        (next, epoch, last_at) = (next.next(), record.epoch, Some(offset));
        offset += len;
    }
    // Whole records only, each on a 16-byte boundary, inside the bytes there are.
    assert!(offset <= bytes.len(), "records counted past the bytes left");
    assert_eq!(offset % RECORD_ALIGN, 0, "records ending off a 16-byte boundary");
    IntactPrefix { records: next.0 - first.0, end: offset, last_at }
}

/// The intact records at the front of a segment's bytes ([`intact_prefix`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct IntactPrefix {
    /// How many.
    pub records: u64,
    /// The byte offset where they end.
    pub end: usize,
    /// Where the last of them starts (`None` with none): its bytes are `last_at..end`.
    pub last_at: Option<usize>,
}

/// Index of the last non-zero byte.
pub(crate) fn last_nonzero(bytes: &[u8]) -> Option<usize> {
    let chunks = bytes.len() / 8;
    let (words, rest) = bytes.split_at(chunks * 8);
    if let Some(i) = rest.iter().rposition(|&b| b != 0) {
        return Some(words.len() + i);
    }
    let word =
        words.chunks_exact(8).rposition(|w| u64::from_ne_bytes(w.try_into().unwrap()) != 0)?;
    let within = words[word * 8..word * 8 + 8].iter().rposition(|&b| b != 0).expect("non-zero");
    let last = word * 8 + within;
    // Not checked: that every byte after it is zero. A running node's writer may be appending
    // there while `journal verify` reads its segment; it never turns a byte back to zero.
    assert_ne!(bytes[last], 0, "the last non-zero byte is zero");
    Some(last)
}

/// One decoded journal record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// The command's sequence.
    pub sequence: Sequence,
    /// The writer's epoch.
    pub epoch: Epoch,
    /// When the command was sequenced.
    pub timestamp: Timestamp,
    /// The command.
    pub command: Command,
    /// Byte length of the record on disk.
    pub len: u32,
}

impl Record {
    /// The record as the engine applies it.
    #[must_use]
    pub fn sequenced(&self) -> ringfence_core::Sequenced {
        // `read` refuses a record holding a read: the engine applies only what changes state.
        assert!(self.command.is_mutating(), "a journaled read");
        ringfence_core::Sequenced {
            sequence: self.sequence,
            timestamp: self.timestamp,
            command: self.command,
        }
    }
}

/// Visits, in order, every intact record of `layout` with sequence at least `from`, decoding
/// and validating each payload. Stops early when the visitor breaks. A payload that fails
/// validation is corruption (its CRC matched, so it was written that way).
pub fn read<S: ReadSource>(
    source: &mut S,
    layout: &Layout,
    from: Sequence,
    visit: &mut dyn FnMut(&Record) -> ControlFlow<()>,
) -> Result<(), JournalError> {
    for (index, segment) in layout.segments.iter().enumerate() {
        let after = layout.segments.get(index + 1);
        if segment.last.is_none_or(|last| last < from) {
            continue;
        }
        if after.is_some_and(|next| next.header.first_sequence <= from) {
            continue;
        }
        // The scan accepted only segments that follow on from the one before.
        let follows = after.is_none_or(|next| {
            segment.last.map(Sequence::next) == Some(next.header.first_sequence)
        });
        assert!(follows, "segments read out of sequence");
        // A segment with records has them after its header.
        assert!(segment.end > SEGMENT_HEADER_LEN, "records in no bytes");
        let bytes = source.read_segment(&segment.name).map_err(|e| {
            JournalError::io(format!("reading {}", source.describe_file(&segment.name)), e)
        })?;
        let file = || source.describe_file(&segment.name);
        let flow = read_segment(&bytes, segment, from, visit).map_err(|problem| match problem {
            ReadProblem::Payload { offset, sequence } => JournalError::Corrupt {
                dir: layout.location.clone(),
                file: file(),
                offset: offset as u64,
                sequence,
                damage: Damage::Payload,
            },
            ReadProblem::Changed(what) => JournalError::io(
                format!("reading {}", file()),
                std::io::Error::other(format!(
                    "{what} since the journal was scanned: the node writing it cut or rewrote \
                     it meanwhile (a standby dropping a diverged tail, say); read it again"
                )),
            ),
        })?;
        if flow.is_break() {
            break;
        }
    }
    Ok(())
}

/// Why a segment's records did not read back as they were scanned.
enum ReadProblem {
    /// A record intact on disk holds a payload this build does not decode.
    Payload { offset: usize, sequence: Sequence },
    /// The bytes are not those scanned: the directory is live, and its writer cut or
    /// rewrote them in place since (a tool reading a running node's journal).
    Changed(&'static str),
}

fn read_segment(
    bytes: &[u8],
    segment: &SegmentLayout,
    from: Sequence,
    visit: &mut dyn FnMut(&Record) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, ReadProblem> {
    let mut offset = SEGMENT_HEADER_LEN;
    let mut expected = segment.header.first_sequence;
    assert!(segment.end >= SEGMENT_HEADER_LEN, "a scanned segment ends inside its header");
    // Segments are preallocated and never resized: the file is the length its header says.
    if bytes.len() as u64 != segment.header.segment_len || segment.end > bytes.len() {
        return Err(ReadProblem::Changed("the segment's length changed"));
    }
    while offset < segment.end {
        // Records start on the boundaries the scan stepped along.
        assert_eq!(offset % RECORD_ALIGN, 0, "a record read off a 16-byte boundary");
        // The scan found these records intact and contiguous; they read back the same unless
        // they changed.
        let (header, len) = format::check_record(&bytes[offset..segment.end])
            .ok_or(ReadProblem::Changed("a record no longer reads back intact"))?;
        assert!(offset + len <= segment.end, "a record checked past the bytes it was given");
        if header.sequence != expected {
            return Err(ReadProblem::Changed("a record's sequence changed"));
        }
        expected = expected.next();
        if header.sequence >= from {
            let payload = &bytes[offset + RECORD_HEADER_LEN..][..header.payload_len];
            let command = ringfence_core::codec::decode_command(payload)
                .ok()
                // Reads are never journaled: a record holding one is not this format's.
                .filter(Command::is_mutating)
                .ok_or(ReadProblem::Payload { offset, sequence: header.sequence })?;
            let record = Record {
                sequence: header.sequence,
                epoch: header.epoch,
                timestamp: header.timestamp,
                command,
                len: len as u32,
            };
            if visit(&record).is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
        offset += len;
    }
    assert_eq!(offset, segment.end, "the records read end where the scan ended");
    // The records read are those the scan counted.
    let after_last = segment.last.map_or(segment.header.first_sequence, Sequence::next);
    assert_eq!(expected, after_last, "the records read end at another sequence than scanned");
    Ok(ControlFlow::Continue(()))
}

/// Records handed from the reading thread to the applying thread at a time.
const PIPELINE_BATCH: usize = 4_096;
/// Batches in flight between the two threads: the applying thread's work for about 6 ms at
/// 5M records/s, so that it does not wait out the reader's start of a segment.
const PIPELINE_DEPTH: usize = 8;

/// [`read`] on two threads: a reader thread maps, checks and decodes records into batches while
/// the calling thread runs `visit` on them, so replay through the engine is not slowed by
/// page faults, CRCs and validation. Same order, same results, same errors as [`read`].
pub fn read_pipelined<S: ReadSource + Send>(
    source: &mut S,
    layout: &Layout,
    from: Sequence,
    visit: &mut dyn FnMut(&Record) -> ControlFlow<()>,
) -> Result<(), JournalError> {
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Vec<Record>>(PIPELINE_DEPTH);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<Record>>();
    for _ in 0..PIPELINE_DEPTH + 1 {
        empty_tx.send(Vec::with_capacity(PIPELINE_BATCH)).expect("receiver alive");
    }
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let mut batch = empty_rx.recv().expect("a free batch");
            let result = read(source, layout, from, &mut |record| {
                // Batches are handed over full, so a batch never grows past its capacity.
                assert!(batch.len() < PIPELINE_BATCH, "a batch was not handed over when full");
                batch.push(*record);
                if batch.len() < PIPELINE_BATCH {
                    return ControlFlow::Continue(());
                }
                let Ok(next) = empty_rx.recv() else { return ControlFlow::Break(()) };
                match full_tx.send(std::mem::replace(&mut batch, next)) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(_) => ControlFlow::Break(()),
                }
            });
            if !batch.is_empty() {
                let _ = full_tx.send(batch);
            }
            result
        });
        let mut stopped = false;
        let mut expected = None;
        for mut batch in full_rx.iter() {
            // Two threads, one order: records arrive contiguous, as `read` visits them.
            let first = batch.first().map(|record| record.sequence);
            assert!(expected.is_none() || first == expected, "pipelined records out of order");
            expected = batch.last().map(|record| record.sequence.next());
            if !stopped {
                stopped = batch.iter().any(|record| visit(record).is_break());
            }
            if stopped {
                break;
            }
            batch.clear();
            // Fails only once the reader has finished; batches it queued are still drained.
            let _ = empty_tx.send(batch);
        }
        drop(full_rx);
        drop(empty_tx);
        reader.join().expect("the journal reader thread panicked")
    })
}

/// The first `len` bytes of the file at `path` (fewer if it is shorter).
pub(crate) fn read_head(path: &Path, len: usize) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::with_capacity(len);
    File::open(path)?.take(len as u64).read_to_end(&mut bytes)?;
    assert!(bytes.len() <= len, "a head longer than asked for: {}", path.display());
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use ringfence_core::record::RecordBuf;
    use ringfence_core::{EngineConfig, Sequenced};

    use super::*;
    use crate::epoch::Epochs;
    use crate::fault::FaultStorage;
    use crate::recovery::recover_from;
    use crate::writer::{Durability, WriterOptions};

    const TICKS: u64 = 8_000;
    /// Ticks up to this one are written in epoch 1, the rest in epoch 2.
    const LAST_OF_EPOCH_1: u64 = 100;

    fn tick(sequence: u64) -> Sequenced {
        Sequenced {
            sequence: Sequence(sequence),
            timestamp: Timestamp(sequence),
            command: Command::Tick,
        }
    }

    #[test]
    fn a_tail_a_live_writer_filled_in_after_the_scan_read_it_is_judged_as_found() {
        // Goal: `journal verify` on a running node scans segments their writer appends to. The
        // scan found stray bytes after an end marker, or a record failing its checks; by the
        // time it judges them, a whole record stands there. It judges what it found (a write in
        // progress looks like one cut off), and it does not panic.
        let record = RecordBuf::default().encode(Epoch(1), &tick(7)).to_vec();
        assert!(!format::is_end_marker(&record), "a record is no end marker");
        assert!(could_be_cut_off(Damage::BytesAfterEnd, &record));
        // Damage no cut-off write leaves stays damage, whatever stands there now.
        assert!(!could_be_cut_off(Damage::Length, &record));
        // A record found damaged that stands whole by the time a flipped bit is sought has
        // none; and one flipped bit in it is still found.
        assert_eq!(flipped_bit(&record, Sequence(7)), None);
        let mut flipped = record.clone();
        flipped[40] ^= 0x10;
        assert_eq!(flipped_bit(&flipped, Sequence(7)), Some((40, 0x10)));
    }

    /// A journal of small segments, the first records in epoch 1 and the rest in epoch 2.
    fn journal() -> FaultStorage {
        journal_of(64 * 1024, TICKS)
    }

    /// A journal of `ticks` ticks in segments of `segment_len` bytes, the first records in
    /// epoch 1 and the rest in epoch 2.
    fn journal_of(segment_len: u64, ticks: u64) -> FaultStorage {
        let disk = FaultStorage::new();
        let options = WriterOptions {
            segment_len,
            durability: Durability::None,
            engine_config: EngineConfig::small(),
        };
        let mut writer = recover_from(disk.clone(), options).unwrap().writer;
        for sequence in 1..=ticks {
            let epoch = Epoch(if sequence <= LAST_OF_EPOCH_1 { 1 } else { 2 });
            if epoch > writer.data_dir().current_epoch() {
                writer.data_dir().store_epochs(Epochs { current: epoch, promised: epoch }).unwrap();
            }
            writer.append_command(epoch, &tick(sequence)).unwrap();
        }
        writer.sync_now().unwrap();
        assert_eq!(writer.last_appended(), Sequence(ticks), "every tick written");
        disk
    }

    /// Writes `bytes` over the segment `name` at `offset`.
    fn overwrite(disk: &FaultStorage, name: &str, offset: usize, bytes: &[u8]) {
        let mut segment = disk.open_segment(name).unwrap();
        // Within the segment's records, never over its header or past its end.
        assert!(offset >= SEGMENT_HEADER_LEN && offset + bytes.len() <= segment.bytes().len());
        segment.bytes_mut()[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// The layout scanned in turn, and as scanned ahead on two threads then joined.
    fn both_ways(disk: &mut FaultStorage) -> (Layout, Layout) {
        let names = sorted_segments(disk).unwrap();
        let in_turn = join_segments(disk, &names, &mut []).unwrap();
        let mut ahead = scan_ahead(disk, &names);
        assert_eq!(ahead.len(), names.len());
        (in_turn, join_segments(disk, &names, &mut ahead).unwrap())
    }

    #[test]
    fn scanning_ahead_finds_the_layout_a_scan_in_turn_finds() {
        // Goal: segments scanned on two threads, each as if it followed on, are joined into
        // exactly the layout of a scan in turn — above all where a segment does not follow on
        // from the one before (a gap between segments, an epoch that went back across a
        // boundary), which only the join can see.
        let names = sorted_segments(&journal()).unwrap();
        assert!(names.len() >= 5, "{} segments", names.len());
        let (second, third) = (&names[1], &names[2]);
        // The first record of the third segment, framed in epoch 1 after records of epoch 2.
        let epoch_back = RecordBuf::default().encode(Epoch(1), &tick(third.0.0)).to_vec();
        // The first record of the second segment, with the sequence of the one after it.
        let misnumbered = RecordBuf::default().encode(Epoch(2), &tick(second.0.0 + 1)).to_vec();
        type Damaging<'a> = Box<dyn Fn(&FaultStorage) + 'a>;
        let cases: Vec<(&str, Damaging<'_>, Option<Damage>)> = vec![
            ("intact", Box::new(|_| {}), None),
            (
                "a middle segment gone",
                Box::new(|disk| disk.delete(&third.1)),
                Some(Damage::SegmentGap { found: names[3].0 }),
            ),
            (
                "an epoch back across a boundary",
                Box::new(|disk| overwrite(disk, &third.1, SEGMENT_HEADER_LEN, &epoch_back)),
                Some(Damage::EpochWentBack),
            ),
            (
                "a gap at a segment's first record",
                Box::new(|disk| overwrite(disk, &second.1, SEGMENT_HEADER_LEN, &misnumbered)),
                Some(Damage::Gap { found: second.0.next() }),
            ),
            ("a damaged segment header", Box::new(|disk| disk.corrupt(&second.1, 12, 0x10)), None),
            (
                "a segment gone, the next one's header damaged",
                Box::new(|disk| {
                    disk.delete(&third.1);
                    disk.corrupt(&names[3].1, 12, 0x10);
                }),
                None,
            ),
            (
                "a flipped bit mid-segment",
                Box::new(|disk| disk.corrupt(&third.1, SEGMENT_HEADER_LEN + 4_800 + 40, 0x04)),
                None,
            ),
            (
                "a torn tail",
                Box::new(|disk| {
                    let last = &names[names.len() - 1].1;
                    let end = disk.live_bytes(last).unwrap().iter().rposition(|&b| b != 0);
                    let unit = end.unwrap() / RECORD_ALIGN * RECORD_ALIGN;
                    overwrite(disk, last, unit, &[0; RECORD_ALIGN]);
                }),
                None,
            ),
        ];
        for (case, damage, expected) in &cases {
            let mut disk = journal();
            damage(&disk);
            let (layout, joined) = both_ways(&mut disk);
            assert_eq!(format!("{joined:?}"), format!("{layout:?}"), "{case}");
            let found = layout.problem.as_ref().map(|problem| problem.damage);
            assert_eq!(found.is_some(), *case != "intact", "{case}: {found:?}");
            if expected.is_some() {
                assert_eq!(found, *expected, "{case}");
            }
        }
    }

    #[test]
    fn a_journal_of_large_segments_is_scanned_ahead_and_joined_as_in_turn() {
        // Goal: `scan_segments` takes the two-thread path for segments of 1 MiB, and what it
        // returns is the layout of a scan in turn, intact and with an epoch that went back at
        // the start of the third segment.
        let mut disk = journal_of(SCAN_AHEAD_SEGMENT_MIN, 60_000);
        let names = sorted_segments(&disk).unwrap();
        assert!(names.len() >= 3, "{} segments", names.len());
        assert!(ReadSource::file_len(&disk, &names[0].1).unwrap() >= SCAN_AHEAD_SEGMENT_MIN);
        let ahead = scan_ahead(&mut disk, &names);
        assert!(ahead.iter().all(|guess| matches!(guess, Some(Ok(_)))), "every segment guessed");
        for damaged in [false, true] {
            if damaged {
                let third = &names[2];
                let record = RecordBuf::default().encode(Epoch(1), &tick(third.0.0)).to_vec();
                overwrite(&disk, &third.1, SEGMENT_HEADER_LEN, &record);
            }
            let in_turn = join_segments(&mut disk, &names, &mut []).unwrap();
            let scanned = scan_segments(&mut disk, &names).unwrap();
            assert_eq!(format!("{scanned:?}"), format!("{in_turn:?}"), "damaged: {damaged}");
            let found = scanned.problem.map(|problem| (problem.damage, problem.sequence));
            assert_eq!(found, damaged.then_some((Damage::EpochWentBack, names[2].0)));
        }
    }
}
