//! Records: a sequenced command framed for the journal and the replication stream — the same
//! bytes in both, encoded once by the node that sequenced the command.
//!
//! ```text
//! record (at a multiple of RECORD_ALIGN (16) in a segment; whole on the replication stream)
//!   0  CRC32C           4  over bytes 4 .. RECORD_HEADER_LEN + padded payload
//!   4  payload length   4  1 ..= COMMAND_LEN_MAX
//!   8  sequence         8  journal sequence, contiguous from 1
//!  16  epoch            8  epoch of the node that sequenced it; never decreases
//!  24  timestamp        8  milliseconds since the Unix epoch, stamped when sequenced
//!  32  payload          n  the command in the canonical encoding (`crate::codec`)
//!  32+n padding         zero up to the next multiple of 16 (covered by the CRC)
//! ```
//!
//! All integers are little-endian. A record header whose first 8 bytes are zero is never a
//! record (the payload length is at least 1), which is how a segment marks the end of its
//! records.

use crate::codec::{self, COMMAND_LEN_MAX, DecodeError};
use crate::command::Sequenced;
use crate::types::{Epoch, Sequence, Timestamp};

/// Records start at multiples of this many bytes in a segment.
pub const RECORD_ALIGN: usize = 16;
/// Size of a record's fixed header.
pub const RECORD_HEADER_LEN: usize = 32;
const CRC_OFFSET: usize = 0;
const LEN_OFFSET: usize = CRC_OFFSET + 4;
const SEQUENCE_OFFSET: usize = LEN_OFFSET + 4;
const EPOCH_OFFSET: usize = SEQUENCE_OFFSET + 8;
const TIMESTAMP_OFFSET: usize = EPOCH_OFFSET + 8;
/// Largest payload a record carries: the longest canonical command.
pub const RECORD_PAYLOAD_MAX: usize = COMMAND_LEN_MAX;
/// Largest record, padding included.
pub const RECORD_LEN_MAX: usize = record_len(RECORD_PAYLOAD_MAX);

const _: () = assert!(TIMESTAMP_OFFSET + 8 == RECORD_HEADER_LEN);
const _: () = assert!(RECORD_HEADER_LEN % RECORD_ALIGN == 0);
const _: () = assert!(RECORD_LEN_MAX % RECORD_ALIGN == 0);

/// Bytes a record with `payload_len` payload bytes occupies, padding included.
#[must_use]
pub const fn record_len(payload_len: usize) -> usize {
    RECORD_HEADER_LEN + payload_len.next_multiple_of(RECORD_ALIGN)
}

/// The fixed fields of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Stored CRC32C.
    pub crc: u32,
    /// Payload bytes (without padding).
    pub payload_len: usize,
    /// The command's journal sequence.
    pub sequence: Sequence,
    /// The epoch of the node that sequenced it.
    pub epoch: Epoch,
    /// When it was sequenced.
    pub timestamp: Timestamp,
}

/// Why bytes are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Fewer bytes than the header, or than the header's length field says.
    #[error("the record is cut short: {have} bytes of {need}")]
    Short {
        /// Bytes present.
        have: usize,
        /// Bytes the record needs.
        need: usize,
    },
    /// The payload length field is zero or above the largest command.
    #[error("the record's payload length {0} is out of range (1..={RECORD_PAYLOAD_MAX})")]
    Length(usize),
    /// The CRC32C does not match the bytes.
    #[error("the record's CRC32C does not match its bytes")]
    Checksum,
    /// The padding after the payload is not zero.
    #[error("the record's padding is not zero")]
    Padding,
    /// The payload is not a canonical command.
    #[error("the record's payload is not a valid command: {0}")]
    Payload(DecodeError),
    /// More bytes than one record where exactly one was expected.
    #[error("{have} bytes where one record of {len} was expected")]
    Trailing {
        /// The record's length.
        len: usize,
        /// Bytes given.
        have: usize,
    },
    /// A read (query or snapshot request) framed as a record: reads are never journaled.
    #[error("the record carries a read, which is never journaled")]
    NotMutating,
}

/// One encoded record in a fixed buffer: no allocation per record.
#[derive(Clone)]
pub struct RecordBuf {
    bytes: [u8; RECORD_LEN_MAX],
    len: usize,
}

impl Default for RecordBuf {
    fn default() -> Self {
        RecordBuf { bytes: [0; RECORD_LEN_MAX], len: 0 }
    }
}

impl RecordBuf {
    /// Encodes `sequenced` as written by a node in `epoch`, replacing what the buffer held.
    pub fn encode(&mut self, epoch: Epoch, sequenced: &Sequenced) -> &[u8] {
        let payload_len = codec::encode_command(
            &sequenced.command,
            &mut self.bytes[RECORD_HEADER_LEN..RECORD_HEADER_LEN + RECORD_PAYLOAD_MAX],
        );
        assert!((1..=RECORD_PAYLOAD_MAX).contains(&payload_len));
        let len = record_len(payload_len);
        self.bytes[RECORD_HEADER_LEN + payload_len..len].fill(0);
        put_u32(&mut self.bytes, LEN_OFFSET, payload_len as u32);
        put_u64(&mut self.bytes, SEQUENCE_OFFSET, sequenced.sequence.0);
        put_u64(&mut self.bytes, EPOCH_OFFSET, epoch.0);
        put_u64(&mut self.bytes, TIMESTAMP_OFFSET, sequenced.timestamp.0);
        let crc = crc32c::crc32c(&self.bytes[LEN_OFFSET..len]);
        put_u32(&mut self.bytes, CRC_OFFSET, crc);
        self.len = len;
        debug_assert_eq!(check(self.as_bytes()).map(|(h, _)| h.sequence), Ok(sequenced.sequence));
        self.as_bytes()
    }

    /// Copies a record received from elsewhere (checked by the caller).
    pub fn copy_from(&mut self, record: &[u8]) {
        assert!(record.len() <= RECORD_LEN_MAX && record.len() % RECORD_ALIGN == 0);
        self.bytes[..record.len()].copy_from_slice(record);
        self.len = record.len();
    }

    /// The record's bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Reads the fixed header fields at the start of `bytes` (no checks beyond length).
#[must_use]
pub fn read_header(bytes: &[u8]) -> RecordHeader {
    assert!(bytes.len() >= RECORD_HEADER_LEN);
    RecordHeader {
        crc: get_u32(bytes, CRC_OFFSET),
        payload_len: get_u32(bytes, LEN_OFFSET) as usize,
        sequence: Sequence(get_u64(bytes, SEQUENCE_OFFSET)),
        epoch: Epoch(get_u64(bytes, EPOCH_OFFSET)),
        timestamp: Timestamp(get_u64(bytes, TIMESTAMP_OFFSET)),
    }
}

/// Checks the record at the start of `bytes`: length in range, CRC and zero padding. Returns
/// its header and total length. Does not decode the payload.
#[inline]
pub fn check(bytes: &[u8]) -> Result<(RecordHeader, usize), RecordError> {
    if bytes.len() < RECORD_HEADER_LEN {
        return Err(RecordError::Short { have: bytes.len(), need: RECORD_HEADER_LEN });
    }
    let header = read_header(bytes);
    if !(1..=RECORD_PAYLOAD_MAX).contains(&header.payload_len) {
        return Err(RecordError::Length(header.payload_len));
    }
    let len = record_len(header.payload_len);
    if bytes.len() < len {
        return Err(RecordError::Short { have: bytes.len(), need: len });
    }
    if crc32c::crc32c(&bytes[LEN_OFFSET..len]) != header.crc {
        return Err(RecordError::Checksum);
    }
    // The padding is the end of the record's last 16-byte unit: one load, not a byte loop.
    let padding = len - RECORD_HEADER_LEN - header.payload_len;
    let last_unit =
        u128::from_le_bytes(bytes[len - RECORD_ALIGN..len].try_into().expect("a 16-byte unit"));
    if padding > 0 && last_unit >> (8 * (RECORD_ALIGN - padding)) != 0 {
        return Err(RecordError::Padding);
    }
    Ok((header, len))
}

/// Checks and decodes the record at the start of `bytes`: its header, the sequenced command
/// and the record's total length.
pub fn decode(bytes: &[u8]) -> Result<(RecordHeader, Sequenced, usize), RecordError> {
    let (header, len) = check(bytes)?;
    let payload = &bytes[RECORD_HEADER_LEN..RECORD_HEADER_LEN + header.payload_len];
    let command = codec::decode_command(payload).map_err(RecordError::Payload)?;
    let sequenced = Sequenced { sequence: header.sequence, timestamp: header.timestamp, command };
    Ok((header, sequenced, len))
}

fn put_u32(out: &mut [u8], offset: usize, value: u32) {
    out[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut [u8], offset: usize, value: u64) {
    out[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

fn get_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

fn get_u64(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Action, Command, Reserve};
    use crate::types::{RequestKey, SkuId, UserId};

    fn reserve(sequence: u64) -> Sequenced {
        let reserve = Reserve { user: UserId(3), sku: SkuId(1), qty: 1, coupon: None };
        let command =
            Command::Client { key: RequestKey::from_u128(7), action: Action::Reserve(reserve) };
        Sequenced { sequence: Sequence(sequence), timestamp: Timestamp(1_700_000_000_123), command }
    }

    #[test]
    fn a_record_is_its_header_then_the_canonical_payload() {
        // Goal: the framing is the documented byte layout, written out here by hand: a tick is
        // one payload byte padded to 16, and a reservation's payload is its canonical bytes.
        let mut buf = RecordBuf::default();
        let tick =
            Sequenced { sequence: Sequence(5), timestamp: Timestamp(9), command: Command::Tick };
        let bytes = buf.encode(Epoch(2), &tick).to_vec();
        assert_eq!(bytes.len(), 48);
        assert_eq!(&bytes[4..8], &1u32.to_le_bytes(), "payload length");
        assert_eq!(&bytes[8..16], &5u64.to_le_bytes(), "sequence");
        assert_eq!(&bytes[16..24], &2u64.to_le_bytes(), "epoch");
        assert_eq!(&bytes[24..32], &9u64.to_le_bytes(), "timestamp");
        assert_eq!(&bytes[32..], &[0u8; 16], "tag 00 and zero padding");
        assert_eq!(&bytes[..4], &crc32c::crc32c(&bytes[4..]).to_le_bytes(), "CRC over the rest");

        let bytes = buf.encode(Epoch(1), &reserve(6)).to_vec();
        let mut payload = [0u8; COMMAND_LEN_MAX];
        let len = codec::encode_command(&reserve(6).command, &mut payload);
        assert_eq!(bytes.len(), record_len(len));
        assert_eq!(&bytes[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len], &payload[..len]);
    }

    #[test]
    fn a_record_decodes_to_what_was_encoded() {
        // Goal: the header and the command come back exactly, with the record's length.
        let mut buf = RecordBuf::default();
        let bytes = buf.encode(Epoch(4), &reserve(42)).to_vec();
        let (header, sequenced, len) = decode(&bytes).expect("a fresh record decodes");
        assert_eq!((header.sequence, header.epoch, len), (Sequence(42), Epoch(4), bytes.len()));
        assert_eq!(sequenced, reserve(42));
    }

    #[test]
    fn every_flipped_bit_and_every_cut_is_refused() {
        // Goal: a record damaged anywhere — one bit of any byte, or cut at any length — is
        // refused with a typed error, never misread and never a panic.
        let mut buf = RecordBuf::default();
        let bytes = buf.encode(Epoch(1), &reserve(1)).to_vec();
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 << bit;
                assert!(decode(&damaged).is_err(), "flip of bit {bit} at {at} accepted");
            }
        }
        for len in 0..bytes.len() {
            assert!(
                matches!(
                    decode(&bytes[..len]),
                    Err(RecordError::Short { .. } | RecordError::Length(_))
                ),
                "cut at {len} accepted"
            );
        }
    }

    /// A record framed around `payload` (any bytes: `check` does not decode it), its CRC good.
    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0; record_len(payload.len())];
        put_u32(&mut bytes, LEN_OFFSET, payload.len() as u32);
        put_u64(&mut bytes, SEQUENCE_OFFSET, 5);
        bytes[RECORD_HEADER_LEN..][..payload.len()].copy_from_slice(payload);
        let crc = crc32c::crc32c(&bytes[LEN_OFFSET..]);
        put_u32(&mut bytes, CRC_OFFSET, crc);
        bytes
    }

    #[test]
    fn every_padding_byte_is_checked_and_no_payload_byte_is_taken_for_padding() {
        // Goal: the padding check reads the record's last 16-byte unit at once; for every
        // payload length modulo 16, a nonzero byte at any padding position is refused, and a
        // payload whose every byte is nonzero (up to the padding) is not.
        for payload_len in 1..=3 * RECORD_ALIGN {
            let bytes = framed(&vec![0xA5; payload_len]);
            assert_eq!(
                check(&bytes).map(|(h, len)| (h.payload_len, len)),
                Ok((payload_len, bytes.len()))
            );
            for at in RECORD_HEADER_LEN + payload_len..bytes.len() {
                let mut bad = bytes.clone();
                bad[at] = 0x80;
                let crc = crc32c::crc32c(&bad[LEN_OFFSET..]);
                put_u32(&mut bad, CRC_OFFSET, crc);
                assert_eq!(
                    check(&bad),
                    Err(RecordError::Padding),
                    "payload {payload_len}, byte {at}"
                );
            }
        }
    }

    #[test]
    fn nonzero_padding_and_a_bad_payload_are_refused_even_with_a_good_crc() {
        // Goal: the checks behind the CRC bite on their own: padding must be zero and the
        // payload a canonical command, whatever the checksum says.
        let mut buf = RecordBuf::default();
        let mut bytes = buf.encode(Epoch(1), &reserve(1)).to_vec();
        let last = bytes.len() - 1;
        bytes[last] = 1;
        let crc = crc32c::crc32c(&bytes[LEN_OFFSET..]);
        bytes[..4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(check(&bytes), Err(RecordError::Padding));

        let mut bytes = buf.encode(Epoch(1), &reserve(1)).to_vec();
        bytes[RECORD_HEADER_LEN] = 0xEE;
        let crc = crc32c::crc32c(&bytes[LEN_OFFSET..]);
        bytes[..4].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode(&bytes), Err(RecordError::Payload(_))));
    }
}
