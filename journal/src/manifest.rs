//! The manifest: the data directory's superblock, listing the segments the journal consists of.
//!
//! Without it the directory cannot tell a segment that was deleted, or cut to nothing, from
//! one that never existed: the journal would simply end earlier, and acknowledged commands
//! would vanish without a word. With it, recovery and `ringfence journal verify` compare the
//! directory with the list and refuse any difference they cannot explain by a crash.
//!
//! The manifest is rewritten atomically (temporary file, fsync, rename, directory fsync) when a
//! segment is created (after its header is synced, before its first record), when segments
//! are retired (before their files go), and by `ringfence journal truncate`. So after a crash:
//!
//! - a listed segment is always present, with the listed length and a durable header;
//! - an unlisted segment newer than every listed one holds no record (its creation was cut off
//!   before it was listed) and is removed;
//! - an unlisted segment older than every listed one was retired and not yet removed, and is
//!   removed (or archived) again.
//!
//! Anything else is refused. The file (all integers little-endian):
//!
//! ```text
//! manifest
//!   0  magic             8  b"RFNCMNFT"
//!   8  version           4  MANIFEST_VERSION
//!  12  prefix CRC32C     4  over bytes 0..12, so a newer version is told apart from damage
//!  16  generation        8  1 for the first manifest, one more at every rewrite
//!  24  retired below     8  segments whose records all precede this sequence were retired
//!                           (0 while none has been)
//!  32  segments retired  8  segments retired (archived or deleted) over the journal's life
//!  40  segment count     4  n, at most MANIFEST_SEGMENTS_MAX
//!  44  reserved          4  zero
//!  48  segments     16 * n  per segment: first sequence u64, file length u64; first
//!                           sequences strictly ascending
//!  48+16n CRC32C         4  over bytes 0 .. 48+16n; the file is exactly 52+16n bytes
//! ```

use ringfence_core::Sequence;

use crate::format::{SEGMENT_LEN_MAX, SEGMENT_LEN_MIN, get_u32, get_u64, put_u32, put_u64};

/// The manifest's file name in the data directory.
pub const MANIFEST_FILE: &str = "manifest";
/// First bytes of the manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"RFNCMNFT";
/// The manifest format this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;
/// Most segments a manifest lists (a 16 MiB manifest); retention keeps far fewer.
pub const MANIFEST_SEGMENTS_MAX: usize = 1 << 20;

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + 8;
const PREFIX_CRC_OFFSET: usize = VERSION_OFFSET + 4;
const GENERATION_OFFSET: usize = PREFIX_CRC_OFFSET + 4;
const RETIRED_BELOW_OFFSET: usize = GENERATION_OFFSET + 8;
const RETIRED_COUNT_OFFSET: usize = RETIRED_BELOW_OFFSET + 8;
const COUNT_OFFSET: usize = RETIRED_COUNT_OFFSET + 8;
const RESERVED_OFFSET: usize = COUNT_OFFSET + 4;
/// Bytes before the segment entries.
pub const MANIFEST_HEADER_LEN: usize = RESERVED_OFFSET + 4;
const ENTRY_LEN: usize = 16;
const CRC_LEN: usize = 4;

const _: () = assert!(MANIFEST_HEADER_LEN == 48);
const _: () = assert!(MANIFEST_HEADER_LEN % 8 == 0);
const _: () = assert!(PREFIX_CRC_OFFSET + 4 == GENERATION_OFFSET);
// The offsets, pinned to the byte diagram.
const _: () = assert!(VERSION_OFFSET == 8);
const _: () = assert!(GENERATION_OFFSET == 16);
const _: () = assert!(RETIRED_BELOW_OFFSET == 24);
const _: () = assert!(RETIRED_COUNT_OFFSET == 32);
const _: () = assert!(COUNT_OFFSET == 40);
const _: () = assert!(RESERVED_OFFSET == 44);
// The file is exactly 52 + 16n bytes, as documented; the count field is a u32.
const _: () = assert!(MANIFEST_HEADER_LEN + CRC_LEN == 52);
const _: () = assert!(ENTRY_LEN == 16);
const _: () = assert!(MANIFEST_SEGMENTS_MAX <= u32::MAX as usize);
// The largest manifest is the 16 MiB the documentation promises, plus its header and CRC.
const _: () = assert!(ENTRY_LEN * MANIFEST_SEGMENTS_MAX == 16 << 20);

/// One listed segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestSegment {
    /// The sequence of its first record (and its name).
    pub first: Sequence,
    /// Its file length in bytes.
    pub len: u64,
}

/// The decoded manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// 1 for the first manifest, one more at every rewrite.
    pub generation: u64,
    /// Segments whose records all precede this sequence were retired (`Sequence(0)`: none).
    pub retired_below: Sequence,
    /// Segments retired over the journal's life.
    pub segments_retired: u64,
    /// The journal's segments, oldest first.
    pub segments: Vec<ManifestSegment>,
}

/// Why a manifest was not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestProblem {
    /// Written by a newer build (the version field is intact: its prefix CRC matched).
    FutureVersion(u32),
    /// Damaged or not a manifest.
    Invalid(String),
}

impl Default for Manifest {
    fn default() -> Self {
        Manifest::empty()
    }
}

impl Manifest {
    /// The manifest of a new, empty journal.
    #[must_use]
    pub fn empty() -> Manifest {
        Manifest {
            generation: 1,
            retired_below: Sequence(0),
            segments_retired: 0,
            segments: Vec::new(),
        }
    }

    /// The same list with one more segment at the end, as the next generation.
    #[must_use]
    pub fn with_segment(&self, segment: ManifestSegment) -> Manifest {
        assert!(self.segments.last().is_none_or(|last| last.first < segment.first));
        // What `decode` accepts of a listed segment.
        assert!(segment.first.0 >= 1, "sequences start at 1");
        assert!(segment.len >= SEGMENT_LEN_MIN, "a segment below the minimum length");
        assert!(segment.len <= SEGMENT_LEN_MAX, "a segment above the maximum length");
        let mut next = self.next_generation();
        next.segments.push(segment);
        next
    }

    /// A copy as the next generation (the caller changes it before writing).
    #[must_use]
    pub fn next_generation(&self) -> Manifest {
        // `decode` refuses the last generation, so this never wraps to an older-looking one.
        assert!(self.generation < u64::MAX, "the manifest generation is exhausted");
        Manifest { generation: self.generation + 1, ..self.clone() }
    }

    /// Whether segment `first` is listed.
    #[must_use]
    pub fn lists(&self, first: Sequence) -> bool {
        // A binary search needs the list sorted (O(segments): debug builds only).
        debug_assert!(self.segments.windows(2).all(|pair| pair[0].first < pair[1].first));
        self.segments.binary_search_by_key(&first, |s| s.first).is_ok()
    }

    /// The sequences listed segment `index` holds, for messages: `sequences 42..=97`, or for
    /// the last segment, whose end only the segment knows, `sequences from 42 on`.
    #[must_use]
    pub fn held(&self, index: usize) -> String {
        assert!(index < self.segments.len(), "no segment {index} is listed");
        let first = self.segments[index].first;
        match self.segments.get(index + 1) {
            Some(next) if next.first.0 > first.0 + 1 => {
                format!("sequences {first}..={}", next.first.0 - 1)
            }
            Some(_) => format!("sequence {first}"),
            None => format!("sequences from {first} on (the journal's newest records)"),
        }
    }

    /// The file's bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.segments.len() <= MANIFEST_SEGMENTS_MAX);
        assert!(self.segments.windows(2).all(|pair| pair[0].first < pair[1].first));
        // What `decode` accepts: a manifest written is one that reads back.
        assert!(self.generation >= 1, "manifest generations start at 1");
        assert!(self.generation < u64::MAX, "the manifest generation is exhausted");
        assert!(self.segments.iter().all(|s| s.first.0 >= 1), "a segment before sequence 1");
        let lengths = SEGMENT_LEN_MIN..=SEGMENT_LEN_MAX;
        assert!(self.segments.iter().all(|s| lengths.contains(&s.len)), "a segment length");
        let body_len = MANIFEST_HEADER_LEN + ENTRY_LEN * self.segments.len();
        let mut bytes = vec![0u8; body_len + CRC_LEN];
        bytes[MAGIC_OFFSET..][..8].copy_from_slice(&MANIFEST_MAGIC);
        put_u32(&mut bytes, VERSION_OFFSET, MANIFEST_VERSION);
        let prefix_crc = crc32c::crc32c(&bytes[..PREFIX_CRC_OFFSET]);
        put_u32(&mut bytes, PREFIX_CRC_OFFSET, prefix_crc);
        put_u64(&mut bytes, GENERATION_OFFSET, self.generation);
        put_u64(&mut bytes, RETIRED_BELOW_OFFSET, self.retired_below.0);
        put_u64(&mut bytes, RETIRED_COUNT_OFFSET, self.segments_retired);
        put_u32(&mut bytes, COUNT_OFFSET, self.segments.len() as u32);
        for (i, segment) in self.segments.iter().enumerate() {
            let at = MANIFEST_HEADER_LEN + ENTRY_LEN * i;
            put_u64(&mut bytes, at, segment.first.0);
            put_u64(&mut bytes, at + 8, segment.len);
        }
        let crc = crc32c::crc32c(&bytes[..body_len]);
        put_u32(&mut bytes, body_len, crc);
        assert_eq!(bytes.len(), MANIFEST_HEADER_LEN + ENTRY_LEN * self.segments.len() + CRC_LEN);
        debug_assert_eq!(Manifest::decode(&bytes).as_ref(), Ok(self));
        bytes
    }

    /// Reads and checks a manifest file's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestProblem> {
        let invalid = |reason: &str| Err(ManifestProblem::Invalid(reason.to_owned()));
        if bytes.len() < MANIFEST_HEADER_LEN + CRC_LEN {
            return invalid("the file is shorter than a manifest header");
        }
        if bytes[MAGIC_OFFSET..][..8] != MANIFEST_MAGIC {
            return invalid("the file does not start with the manifest magic");
        }
        if crc32c::crc32c(&bytes[..PREFIX_CRC_OFFSET]) != get_u32(bytes, PREFIX_CRC_OFFSET) {
            return invalid("the version field's checksum does not match");
        }
        let version = get_u32(bytes, VERSION_OFFSET);
        if version > MANIFEST_VERSION {
            return Err(ManifestProblem::FutureVersion(version));
        }
        if version != MANIFEST_VERSION {
            return invalid(&format!("version {version} is not a manifest version"));
        }
        let count = get_u32(bytes, COUNT_OFFSET) as usize;
        let body_len = MANIFEST_HEADER_LEN + ENTRY_LEN * count.min(MANIFEST_SEGMENTS_MAX);
        if count > MANIFEST_SEGMENTS_MAX || bytes.len() != body_len + CRC_LEN {
            return invalid("the segment count does not match the file's length");
        }
        if crc32c::crc32c(&bytes[..body_len]) != get_u32(bytes, body_len) {
            return invalid("the checksum does not match (damaged or cut short)");
        }
        if get_u32(bytes, RESERVED_OFFSET) != 0 {
            return invalid("reserved bytes are not zero");
        }
        let segments: Vec<ManifestSegment> = (0..count)
            .map(|i| {
                let at = MANIFEST_HEADER_LEN + ENTRY_LEN * i;
                ManifestSegment { first: Sequence(get_u64(bytes, at)), len: get_u64(bytes, at + 8) }
            })
            .collect();
        if segments.windows(2).any(|pair| pair[0].first >= pair[1].first) {
            return invalid("the segments are not in ascending sequence order");
        }
        if segments
            .iter()
            .any(|s| s.first.0 == 0 || !(SEGMENT_LEN_MIN..=SEGMENT_LEN_MAX).contains(&s.len))
        {
            return invalid("a segment's first sequence or length is out of range");
        }
        let generation = get_u64(bytes, GENERATION_OFFSET);
        if generation == 0 || generation == u64::MAX {
            return invalid("the generation is out of range");
        }
        Ok(Manifest {
            generation,
            retired_below: Sequence(get_u64(bytes, RETIRED_BELOW_OFFSET)),
            segments_retired: get_u64(bytes, RETIRED_COUNT_OFFSET),
            segments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            generation: 7,
            retired_below: Sequence(100),
            segments_retired: 3,
            segments: vec![
                ManifestSegment { first: Sequence(100), len: 1 << 20 },
                ManifestSegment { first: Sequence(900), len: 1 << 20 },
            ],
        }
    }

    #[test]
    fn a_manifest_round_trips_and_any_flipped_byte_is_refused() {
        // Goal: the manifest reads back as written, and damage anywhere is caught, never
        // misread as another list.
        let manifest = sample();
        let bytes = manifest.encode();
        assert_eq!(bytes.len(), 52 + 32);
        assert_eq!(Manifest::decode(&bytes), Ok(manifest));
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x04;
            assert!(Manifest::decode(&damaged).is_err(), "flip at {i} accepted");
        }
        assert!(Manifest::decode(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(Manifest::decode(&Manifest::empty().encode()), Ok(Manifest::empty()));
    }

    #[test]
    fn a_manifest_from_a_future_version_is_recognised_as_such() {
        // Goal: a newer format is reported as newer (so the operator runs the right build),
        // not as damage, and is never read as this version.
        let mut bytes = sample().encode();
        put_u32(&mut bytes, VERSION_OFFSET, MANIFEST_VERSION + 1);
        let crc = crc32c::crc32c(&bytes[..PREFIX_CRC_OFFSET]);
        put_u32(&mut bytes, PREFIX_CRC_OFFSET, crc);
        assert_eq!(Manifest::decode(&bytes), Err(ManifestProblem::FutureVersion(2)));
    }

    #[test]
    fn held_ranges_name_the_sequences_each_segment_covers() {
        // Goal: a refusal can say which sequences a missing segment held.
        let manifest = sample();
        assert_eq!(manifest.held(0), "sequences 100..=899");
        assert!(manifest.held(1).starts_with("sequences from 900 on"));
        assert!(manifest.lists(Sequence(900)) && !manifest.lists(Sequence(901)));
    }
}
