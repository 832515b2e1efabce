//! The on-disk layout of segments: constants, the segment header, and its checks. Records are
//! `ringfence_core::record`'s framing, the same bytes the replication stream carries.
//!
//! A segment file is named by the sequence of its first record (`00000000000000000001.seg`),
//! preallocated to its full size and filled front to back; everything after the last record is
//! zero. All integers are little-endian.
//!
//! ```text
//! segment file
//! +----------------------+ 0
//! | segment header       |   SEGMENT_HEADER_LEN (128) bytes
//! +----------------------+ 128
//! | record               |   RECORD_HEADER_LEN + payload, padded to RECORD_ALIGN (16)
//! | record               |
//! | ...                  |
//! | zeros to the end     |
//! +----------------------+ segment length
//!
//! segment header
//!   0  magic            8  b"RFNCJRNL"
//!   8  version          4  FORMAT_VERSION
//!  12  header length    4  128
//!  16  first sequence   8  sequence of the first record; equals the file name
//!  24  segment length   8  file size in bytes
//!  32  epoch            8  epoch of the writer when the segment was created
//!  40  engine config   40  the capacities replay must use (see `encode_config`)
//!  80  encoding         2  ENCODING_VERSION of the record payloads (`ringfence_core::codec`)
//!  82  engine config    2  continued: orders per user (see `encode_config`)
//!  84  reserved        40  zero
//! 124  header CRC32C    4  over bytes 0..124
//!
//! record (at a multiple of 16 from the start of the file): see `ringfence_core::record`
//!   0  CRC32C           4  over bytes 4..RECORD_HEADER_LEN + padded payload
//!   4  payload length   4  1..=RECORD_PAYLOAD_MAX
//!   8  sequence         8
//!  16  epoch            8
//!  24  timestamp        8  milliseconds since the Unix epoch
//!  32  payload          n  the command in the canonical encoding, validated when read
//!  32+n padding         zero up to the next multiple of 16 (covered by the CRC)
//! ```
//!
//! A record header whose first 8 bytes are zero marks the end of a segment's records.

use ringfence_core::{ENCODING_VERSION, EngineConfig, Epoch, Sequence};

pub use ringfence_core::record::{
    RECORD_ALIGN, RECORD_HEADER_LEN, RECORD_LEN_MAX, RECORD_PAYLOAD_MAX, RecordHeader,
    read_header as read_record_header, record_len,
};

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RFNCJRNL";
/// Format version written into, and required of, every segment and snapshot. Version 1
/// journals (rkyv payloads, no manifest) were written by builds before any release; this build
/// refuses them by number rather than misread them.
pub const FORMAT_VERSION: u32 = 2;

/// Size of the segment header; records start here.
pub const SEGMENT_HEADER_LEN: usize = 128;
const SEGMENT_MAGIC_OFFSET: usize = 0;
const SEGMENT_VERSION_OFFSET: usize = SEGMENT_MAGIC_OFFSET + 8;
const SEGMENT_HEADER_LEN_OFFSET: usize = SEGMENT_VERSION_OFFSET + 4;
const SEGMENT_FIRST_SEQUENCE_OFFSET: usize = SEGMENT_HEADER_LEN_OFFSET + 4;
const SEGMENT_LEN_OFFSET: usize = SEGMENT_FIRST_SEQUENCE_OFFSET + 8;
const SEGMENT_EPOCH_OFFSET: usize = SEGMENT_LEN_OFFSET + 8;
const SEGMENT_CONFIG_OFFSET: usize = SEGMENT_EPOCH_OFFSET + 8;
const SEGMENT_ENCODING_OFFSET: usize = SEGMENT_CONFIG_OFFSET + CONFIG_BLOCK_LEN;
const SEGMENT_CONFIG_MORE_OFFSET: usize = SEGMENT_ENCODING_OFFSET + 2;
const SEGMENT_RESERVED_OFFSET: usize = SEGMENT_CONFIG_MORE_OFFSET + CONFIG_MORE_LEN;
const SEGMENT_CRC_OFFSET: usize = SEGMENT_HEADER_LEN - 4;

/// Bytes of the engine configuration block in segment and snapshot headers.
pub const CONFIG_BLOCK_LEN: usize = 40;
/// Bytes of the configuration's continuation, in bytes that were reserved (always zero) before
/// there was a live-order quota: zero there still means none.
pub const CONFIG_MORE_LEN: usize = 2;

/// Smallest segment size accepted: a header and a few largest records.
pub const SEGMENT_LEN_MIN: u64 = 64 * 1024;
/// Largest segment size accepted (the map must fit the address space comfortably).
pub const SEGMENT_LEN_MAX: u64 = 1 << 34;

const _: () = assert!(SEGMENT_HEADER_LEN % RECORD_ALIGN == 0);
const _: () = assert!(SEGMENT_RESERVED_OFFSET <= SEGMENT_CRC_OFFSET);
const _: () = assert!(SEGMENT_LEN_MIN as usize >= SEGMENT_HEADER_LEN + 16 * RECORD_LEN_MAX);
// The segment header's offsets, pinned to the byte diagram: the layout is a format.
const _: () = assert!(SEGMENT_VERSION_OFFSET == 8);
const _: () = assert!(SEGMENT_HEADER_LEN_OFFSET == 12);
const _: () = assert!(SEGMENT_FIRST_SEQUENCE_OFFSET == 16);
const _: () = assert!(SEGMENT_LEN_OFFSET == 24);
const _: () = assert!(SEGMENT_EPOCH_OFFSET == 32);
const _: () = assert!(SEGMENT_CONFIG_OFFSET == 40);
const _: () = assert!(SEGMENT_ENCODING_OFFSET == 80);
const _: () = assert!(SEGMENT_CONFIG_MORE_OFFSET == 82);
const _: () = assert!(SEGMENT_RESERVED_OFFSET == 84);
const _: () = assert!(SEGMENT_CRC_OFFSET == 124);
// Shard u16, zero u16, seven u32 maxima, the request-key window u64 (`encode_config`).
const _: () = assert!(CONFIG_BLOCK_LEN == 2 + 2 + 7 * 4 + 8);
// Records are aligned by masking and rounding: the alignment is a power of two.
const _: () = assert!(RECORD_ALIGN.is_power_of_two());
// Every file kind has its own magic, so no file is ever read as another kind.
const _: () = assert!(magic(SEGMENT_MAGIC) != magic(crate::snapshot::SNAPSHOT_MAGIC));
const _: () = assert!(magic(SEGMENT_MAGIC) != magic(crate::manifest::MANIFEST_MAGIC));
const _: () = assert!(magic(SEGMENT_MAGIC) != magic(crate::epoch::EPOCH_MAGIC));
const _: () =
    assert!(magic(crate::snapshot::SNAPSHOT_MAGIC) != magic(crate::manifest::MANIFEST_MAGIC));
const _: () = assert!(magic(crate::snapshot::SNAPSHOT_MAGIC) != magic(crate::epoch::EPOCH_MAGIC));
const _: () = assert!(magic(crate::manifest::MANIFEST_MAGIC) != magic(crate::epoch::EPOCH_MAGIC));
// Segments end on a record boundary: every record is a multiple of 16 bytes.
const _: () = assert!(SEGMENT_LEN_MIN % RECORD_ALIGN as u64 == 0);
const _: () = assert!(SEGMENT_LEN_MAX % RECORD_ALIGN as u64 == 0);

/// A magic number as one integer, for comparing magics at compile time.
const fn magic(bytes: [u8; 8]) -> u64 {
    u64::from_le_bytes(bytes)
}

/// The file name of the segment whose first record has `first`.
#[must_use]
pub fn segment_name(first: Sequence) -> String {
    let name = format!("{:020}.seg", first.0);
    // Fixed width, so a directory listing sorts in sequence order (u64::MAX has 20 digits).
    assert_eq!(name.len(), 24, "a segment name of another width");
    debug_assert_eq!(parse_segment_name(&name), Some(first), "a name that does not read back");
    name
}

/// The first sequence a segment file name stands for, if it is one.
#[must_use]
pub fn parse_segment_name(name: &str) -> Option<Sequence> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Sequence)
}

/// A decoded segment header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Sequence of the segment's first record.
    pub first_sequence: Sequence,
    /// File size in bytes.
    pub segment_len: u64,
    /// The writer's epoch when the segment was created.
    pub epoch: Epoch,
    /// The engine configuration the writer ran with.
    pub config: EngineConfig,
}

/// Why a segment header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderProblem {
    /// The file is shorter than a header.
    TooShort,
    /// All header bytes are zero: the segment was created but its header never reached disk.
    Zeroed,
    /// The magic number is wrong: this is not a ringfence segment.
    BadMagic,
    /// A version this build cannot read.
    UnsupportedVersion(u32),
    /// Record payloads in a canonical encoding version this build cannot read.
    UnsupportedEncoding(u16),
    /// The header checksum does not match.
    BadChecksum,
    /// A field is out of range (header length, segment length).
    BadField(&'static str),
}

impl std::fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderProblem::TooShort => write!(f, "the file is shorter than a segment header"),
            HeaderProblem::Zeroed => write!(f, "the segment header is all zeros"),
            HeaderProblem::BadMagic => write!(f, "the file does not start with the segment magic"),
            HeaderProblem::UnsupportedVersion(v) if *v < FORMAT_VERSION => write!(
                f,
                "format version {v} was written by an earlier, unreleased build and is not \
                 supported (this build reads version {FORMAT_VERSION}): replay it with the \
                 build that wrote it and start a new data directory"
            ),
            HeaderProblem::UnsupportedVersion(v) => write!(
                f,
                "format version {v} was written by a newer build (this build reads version \
                 {FORMAT_VERSION}): run that build or a newer one"
            ),
            HeaderProblem::UnsupportedEncoding(v) => write!(
                f,
                "record payloads use canonical encoding version {v}; this build reads version \
                 {ENCODING_VERSION}"
            ),
            HeaderProblem::BadChecksum => write!(f, "the segment header checksum does not match"),
            HeaderProblem::BadField(field) => write!(f, "header field `{field}` is out of range"),
        }
    }
}

/// Encodes a segment header into the first [`SEGMENT_HEADER_LEN`] bytes of `out`.
pub fn encode_segment_header(header: &SegmentHeader, out: &mut [u8]) {
    assert!(out.len() >= SEGMENT_HEADER_LEN);
    // What the decoder accepts: a header written is one that reads back.
    assert!(header.segment_len >= SEGMENT_LEN_MIN, "a segment below the minimum length");
    assert!(header.segment_len <= SEGMENT_LEN_MAX, "a segment above the maximum length");
    assert!(header.first_sequence.0 >= 1, "sequences start at 1");
    assert!(header.config.validate().is_ok(), "a segment of an invalid engine configuration");
    let out = &mut out[..SEGMENT_HEADER_LEN];
    out.fill(0);
    out[SEGMENT_MAGIC_OFFSET..][..8].copy_from_slice(&SEGMENT_MAGIC);
    put_u32(out, SEGMENT_VERSION_OFFSET, FORMAT_VERSION);
    put_u32(out, SEGMENT_HEADER_LEN_OFFSET, SEGMENT_HEADER_LEN as u32);
    put_u64(out, SEGMENT_FIRST_SEQUENCE_OFFSET, header.first_sequence.0);
    put_u64(out, SEGMENT_LEN_OFFSET, header.segment_len);
    put_u64(out, SEGMENT_EPOCH_OFFSET, header.epoch.0);
    let (block, more) = out[SEGMENT_CONFIG_OFFSET..].split_at_mut(CONFIG_BLOCK_LEN);
    let more = &mut more[2..][..CONFIG_MORE_LEN];
    encode_config(&header.config, block, more);
    out[SEGMENT_ENCODING_OFFSET..][..2].copy_from_slice(&ENCODING_VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&out[..SEGMENT_CRC_OFFSET]);
    put_u32(out, SEGMENT_CRC_OFFSET, crc);
    debug_assert_eq!(decode_segment_header(out), Ok(header.clone()));
}

/// Decodes and checks a segment header.
pub fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, HeaderProblem> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(HeaderProblem::TooShort);
    }
    let bytes = &bytes[..SEGMENT_HEADER_LEN];
    if bytes.iter().all(|&b| b == 0) {
        return Err(HeaderProblem::Zeroed);
    }
    if bytes[..8] != SEGMENT_MAGIC {
        return Err(HeaderProblem::BadMagic);
    }
    if crc32c::crc32c(&bytes[..SEGMENT_CRC_OFFSET]) != get_u32(bytes, SEGMENT_CRC_OFFSET) {
        return Err(HeaderProblem::BadChecksum);
    }
    let version = get_u32(bytes, SEGMENT_VERSION_OFFSET);
    if version != FORMAT_VERSION {
        return Err(HeaderProblem::UnsupportedVersion(version));
    }
    if get_u32(bytes, SEGMENT_HEADER_LEN_OFFSET) as usize != SEGMENT_HEADER_LEN {
        return Err(HeaderProblem::BadField("header length"));
    }
    let segment_len = get_u64(bytes, SEGMENT_LEN_OFFSET);
    if !(SEGMENT_LEN_MIN..=SEGMENT_LEN_MAX).contains(&segment_len) {
        return Err(HeaderProblem::BadField("segment length"));
    }
    // Sequences start at 1: no segment ever starts at 0 (the manifest refuses it too).
    if get_u64(bytes, SEGMENT_FIRST_SEQUENCE_OFFSET) == 0 {
        return Err(HeaderProblem::BadField("first sequence"));
    }
    let config = decode_config(
        &bytes[SEGMENT_CONFIG_OFFSET..][..CONFIG_BLOCK_LEN],
        &bytes[SEGMENT_CONFIG_MORE_OFFSET..][..CONFIG_MORE_LEN],
    )
    .ok_or(HeaderProblem::BadField("engine config"))?;
    let encoding =
        u16::from_le_bytes([bytes[SEGMENT_ENCODING_OFFSET], bytes[SEGMENT_ENCODING_OFFSET + 1]]);
    if encoding != ENCODING_VERSION {
        return Err(HeaderProblem::UnsupportedEncoding(encoding));
    }
    if bytes[SEGMENT_RESERVED_OFFSET..SEGMENT_CRC_OFFSET].iter().any(|&b| b != 0) {
        return Err(HeaderProblem::BadField("reserved"));
    }
    Ok(SegmentHeader {
        first_sequence: Sequence(get_u64(bytes, SEGMENT_FIRST_SEQUENCE_OFFSET)),
        segment_len,
        epoch: Epoch(get_u64(bytes, SEGMENT_EPOCH_OFFSET)),
        config,
    })
}

/// Encodes the engine configuration into a [`CONFIG_BLOCK_LEN`]-byte block — shard u16,
/// request keys per user u16, then skus, orders, coupons, batches, holdings, request keys and
/// order quantity maxima as u32, then the request-key window in ms as u64 — and its
/// [`CONFIG_MORE_LEN`]-byte continuation: orders per user u16.
pub fn encode_config(config: &EngineConfig, out: &mut [u8], more: &mut [u8]) {
    assert_eq!(out.len(), CONFIG_BLOCK_LEN);
    assert_eq!(more.len(), CONFIG_MORE_LEN);
    // `decode_config` refuses a configuration the engine would refuse.
    assert!(config.validate().is_ok(), "an invalid engine configuration written");
    out[0..2].copy_from_slice(&config.shard.to_le_bytes());
    out[2..4].copy_from_slice(&config.request_keys_per_user_max.to_le_bytes());
    let maxima = [
        config.skus_max,
        config.orders_max,
        config.coupons_max,
        config.batches_max,
        config.holdings_max,
        config.request_keys_max,
        config.order_qty_max,
    ];
    for (i, value) in maxima.into_iter().enumerate() {
        put_u32(out, 4 + 4 * i, value);
    }
    put_u64(out, 32, config.request_key_window_ms);
    more.copy_from_slice(&config.orders_per_user_max.to_le_bytes());
    debug_assert_eq!(decode_config(out, more).as_ref(), Some(config), "does not read back");
}

/// Decodes a configuration block and its continuation; `None` if the configuration is not one
/// the engine accepts.
#[must_use]
pub fn decode_config(bytes: &[u8], more: &[u8]) -> Option<EngineConfig> {
    assert_eq!(bytes.len(), CONFIG_BLOCK_LEN);
    assert_eq!(more.len(), CONFIG_MORE_LEN);
    // Bytes 2..4, zero in blocks written before there was a per-user key limit, are that
    // limit: zero still means none.
    let config = EngineConfig {
        shard: u16::from_le_bytes([bytes[0], bytes[1]]),
        request_keys_per_user_max: u16::from_le_bytes([bytes[2], bytes[3]]),
        skus_max: get_u32(bytes, 4),
        orders_max: get_u32(bytes, 8),
        coupons_max: get_u32(bytes, 12),
        batches_max: get_u32(bytes, 16),
        holdings_max: get_u32(bytes, 20),
        request_keys_max: get_u32(bytes, 24),
        order_qty_max: get_u32(bytes, 28),
        request_key_window_ms: get_u64(bytes, 32),
        // Zero in headers written before there was a live-order quota: none, as then.
        orders_per_user_max: u16::from_le_bytes([more[0], more[1]]),
    };
    config.validate().ok().map(|()| config)
}

/// Whether the record header at the start of `bytes` marks the end of the records: its CRC and
/// length fields are zero (a real record never has a zero length).
#[must_use]
pub fn is_end_marker(bytes: &[u8]) -> bool {
    bytes.len() < RECORD_HEADER_LEN || get_u64(bytes, 0) == 0
}

/// Checks the record starting at `bytes[0]`: length in range, CRC matching, padding zero.
/// Returns its header and total length, or `None` if it is not an intact record. The payload
/// is decoded separately ([`ringfence_core::record::decode`]).
#[must_use]
#[inline]
pub fn check_record(bytes: &[u8]) -> Option<(RecordHeader, usize)> {
    let (header, len) = ringfence_core::record::check(bytes).ok()?;
    // The payload length the format documents: 1..=RECORD_PAYLOAD_MAX.
    assert!(header.payload_len >= 1, "an intact record with no payload");
    assert!(header.payload_len <= RECORD_PAYLOAD_MAX, "an intact record past the payload limit");
    // What the scan relies on to step from record to record.
    assert!(len <= bytes.len(), "an intact record runs past the bytes");
    assert_eq!(len % RECORD_ALIGN, 0, "a record that is not a multiple of 16 bytes");
    assert_eq!(len, record_len(header.payload_len), "a record of another length than it says");
    Some((header, len))
}

pub(crate) fn put_u32(out: &mut [u8], offset: usize, value: u32) {
    out[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u64(out: &mut [u8], offset: usize, value: u64) {
    out[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn get_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

pub(crate) fn get_u64(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        // Goal: a header reads back as written, and any flipped byte is refused.
        let header = SegmentHeader {
            first_sequence: Sequence(42),
            segment_len: 1 << 20,
            epoch: Epoch(3),
            config: EngineConfig::small(),
        };
        let mut bytes = [0u8; SEGMENT_HEADER_LEN];
        encode_segment_header(&header, &mut bytes);
        assert_eq!(decode_segment_header(&bytes), Ok(header));
        for i in 0..SEGMENT_HEADER_LEN {
            let mut damaged = bytes;
            damaged[i] ^= 0x40;
            assert!(decode_segment_header(&damaged).is_err(), "flip at {i} accepted");
        }
        assert_eq!(decode_segment_header(&[0; SEGMENT_HEADER_LEN]), Err(HeaderProblem::Zeroed));
    }

    #[test]
    fn the_per_user_quotas_ride_in_bytes_that_were_zero_before_them() {
        // Goal: bytes 2..4 of the block and the two bytes after it, zero in headers written
        // before the quotas existed, hold them: an old header reads as "no quotas", a new one
        // round-trips.
        let old = EngineConfig {
            request_keys_per_user_max: 0,
            orders_per_user_max: 0,
            ..EngineConfig::small()
        };
        let (mut block, mut more) = ([0u8; CONFIG_BLOCK_LEN], [0u8; CONFIG_MORE_LEN]);
        encode_config(&old, &mut block, &mut more);
        assert_eq!((&block[2..4], more), (&[0, 0][..], [0, 0]));
        assert_eq!(decode_config(&block, &more), Some(old));
        let limited = EngineConfig {
            request_keys_per_user_max: 300,
            orders_per_user_max: 40,
            ..EngineConfig::small()
        };
        encode_config(&limited, &mut block, &mut more);
        assert_eq!(&block[2..4], &300_u16.to_le_bytes());
        assert_eq!(more, 40_u16.to_le_bytes());
        assert_eq!(decode_config(&block, &more), Some(limited.clone()));
        let header = SegmentHeader {
            first_sequence: Sequence(1),
            segment_len: 1 << 20,
            epoch: Epoch(1),
            config: limited,
        };
        let mut bytes = [0u8; SEGMENT_HEADER_LEN];
        encode_segment_header(&header, &mut bytes);
        assert_eq!(bytes[82..84], 40_u16.to_le_bytes(), "after the encoding version");
        assert_eq!(decode_segment_header(&bytes), Ok(header));
    }

    #[test]
    fn segment_names_sort_by_first_sequence() {
        // Goal: names are fixed-width so a directory listing sorts in sequence order.
        assert_eq!(segment_name(Sequence(7)), "00000000000000000007.seg");
        assert_eq!(parse_segment_name(&segment_name(Sequence(u64::MAX))), Some(Sequence(u64::MAX)));
        assert_eq!(parse_segment_name("7.seg"), None);
        assert_eq!(parse_segment_name("0000000000000000000x.seg"), None);
        assert!(segment_name(Sequence(9)) < segment_name(Sequence(10)));
    }
}
