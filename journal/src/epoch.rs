//! The epoch file: the node's current epoch and the highest epoch it has promised.
//!
//! Epochs order leaderships: every record carries the epoch of the primary that wrote it, and
//! a new primary starts a higher one. The *current* epoch is the one this node writes records
//! in; the *promised* epoch is the highest it has agreed not to go below (a standby that
//! promised epoch 7 to a candidate must refuse a primary still in epoch 6, even after a
//! restart). Both must survive restarts exactly, so they live in their own small file, written
//! atomically with fsync, and are never inferred from the last record: a journal can end
//! before the first record of a new epoch, and a promise leaves no record at all.
//!
//! ```text
//! epoch
//!   0  magic             8  b"RFNCEPCH"
//!   8  version           4  EPOCH_VERSION
//!  12  prefix CRC32C     4  over bytes 0..12, so a newer version is told apart from damage
//!  16  current epoch     8  the epoch this node writes records in (at least 1)
//!  24  promised epoch    8  the highest epoch promised (at least the current one)
//!  32  CRC32C            4  over bytes 0..32; the file is exactly 36 bytes
//! ```

use ringfence_core::Epoch;

use crate::format::{get_u32, get_u64, put_u32, put_u64};

/// The epoch file's name in the data directory.
pub const EPOCH_FILE: &str = "epoch";
/// First bytes of the epoch file.
pub const EPOCH_MAGIC: [u8; 8] = *b"RFNCEPCH";
/// The epoch file format this build writes and reads.
pub const EPOCH_VERSION: u32 = 1;

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + 8;
const PREFIX_CRC_OFFSET: usize = VERSION_OFFSET + 4;
const CURRENT_OFFSET: usize = PREFIX_CRC_OFFSET + 4;
const PROMISED_OFFSET: usize = CURRENT_OFFSET + 8;
const CRC_OFFSET: usize = PROMISED_OFFSET + 8;
/// The epoch file's length.
pub const EPOCH_FILE_LEN: usize = CRC_OFFSET + 4;

const _: () = assert!(EPOCH_FILE_LEN == 36);
const _: () = assert!(CURRENT_OFFSET % 8 == 0);
// The offsets, pinned to the byte diagram.
const _: () = assert!(VERSION_OFFSET == 8);
const _: () = assert!(PREFIX_CRC_OFFSET == 12);
const _: () = assert!(CURRENT_OFFSET == 16);
const _: () = assert!(PROMISED_OFFSET == 24);
const _: () = assert!(CRC_OFFSET == 32);

/// The node's epochs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epochs {
    /// The epoch this node writes records in.
    pub current: Epoch,
    /// The highest epoch this node has promised not to go below.
    pub promised: Epoch,
}

/// Why an epoch file was not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EpochProblem {
    /// Written by a newer build.
    FutureVersion(u32),
    /// Damaged, not an epoch file, or inconsistent.
    Invalid(String),
}

impl Epochs {
    /// A new data directory's epochs: current and promised 1.
    pub const FIRST: Epochs = Epochs { current: Epoch(1), promised: Epoch(1) };

    /// Why this pair cannot be stored, if it cannot: the current epoch is at least 1 and the
    /// promise is at least the current epoch.
    #[must_use]
    pub fn problem(&self) -> Option<String> {
        if self.current.0 == 0 {
            return Some("the current epoch is 0; epochs start at 1".to_owned());
        }
        if self.promised < self.current {
            return Some(format!(
                "the promised epoch {} is below the current epoch {}",
                self.promised, self.current
            ));
        }
        None
    }

    /// The file's bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; EPOCH_FILE_LEN] {
        assert!(self.problem().is_none(), "{:?}", self.problem());
        let mut bytes = [0u8; EPOCH_FILE_LEN];
        bytes[MAGIC_OFFSET..][..8].copy_from_slice(&EPOCH_MAGIC);
        put_u32(&mut bytes, VERSION_OFFSET, EPOCH_VERSION);
        let prefix_crc = crc32c::crc32c(&bytes[..PREFIX_CRC_OFFSET]);
        put_u32(&mut bytes, PREFIX_CRC_OFFSET, prefix_crc);
        put_u64(&mut bytes, CURRENT_OFFSET, self.current.0);
        put_u64(&mut bytes, PROMISED_OFFSET, self.promised.0);
        let crc = crc32c::crc32c(&bytes[..CRC_OFFSET]);
        put_u32(&mut bytes, CRC_OFFSET, crc);
        debug_assert_eq!(Epochs::decode(&bytes), Ok(*self));
        bytes
    }

    /// Reads and checks an epoch file's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Epochs, EpochProblem> {
        let invalid = |reason: &str| Err(EpochProblem::Invalid(reason.to_owned()));
        if bytes.len() < PREFIX_CRC_OFFSET + 4 || bytes[..8] != EPOCH_MAGIC {
            return invalid("the file does not start with the epoch file magic");
        }
        if crc32c::crc32c(&bytes[..PREFIX_CRC_OFFSET]) != get_u32(bytes, PREFIX_CRC_OFFSET) {
            return invalid("the version field's checksum does not match");
        }
        let version = get_u32(bytes, VERSION_OFFSET);
        if version > EPOCH_VERSION {
            return Err(EpochProblem::FutureVersion(version));
        }
        if version != EPOCH_VERSION || bytes.len() != EPOCH_FILE_LEN {
            return invalid("the version or the length is not an epoch file's");
        }
        if crc32c::crc32c(&bytes[..CRC_OFFSET]) != get_u32(bytes, CRC_OFFSET) {
            return invalid("the checksum does not match (damaged)");
        }
        let epochs = Epochs {
            current: Epoch(get_u64(bytes, CURRENT_OFFSET)),
            promised: Epoch(get_u64(bytes, PROMISED_OFFSET)),
        };
        match epochs.problem() {
            Some(reason) => Err(EpochProblem::Invalid(reason)),
            None => Ok(epochs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_round_trip_and_any_flipped_byte_is_refused() {
        // Goal: the pair reads back exactly; damage anywhere is refused, not misread.
        let epochs = Epochs { current: Epoch(3), promised: Epoch(5) };
        let bytes = epochs.encode();
        assert_eq!(Epochs::decode(&bytes), Ok(epochs));
        for i in 0..bytes.len() {
            let mut damaged = bytes;
            damaged[i] ^= 0x10;
            assert!(Epochs::decode(&damaged).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn a_promise_below_the_current_epoch_is_refused() {
        // Goal: a file claiming a promise lower than its current epoch is inconsistent: a
        // node never promises less than the epoch it is already in.
        let mut bytes = Epochs { current: Epoch(4), promised: Epoch(4) }.encode();
        put_u64(&mut bytes, PROMISED_OFFSET, 2);
        let crc = crc32c::crc32c(&bytes[..CRC_OFFSET]);
        put_u32(&mut bytes, CRC_OFFSET, crc);
        let Err(EpochProblem::Invalid(reason)) = Epochs::decode(&bytes) else { panic!() };
        assert!(reason.contains("promised epoch 2 is below the current epoch 4"), "{reason}");
        assert!(Epochs { current: Epoch(0), promised: Epoch(0) }.problem().is_some());
        put_u32(&mut bytes, VERSION_OFFSET, 9);
        let crc = crc32c::crc32c(&bytes[..PREFIX_CRC_OFFSET]);
        put_u32(&mut bytes, PREFIX_CRC_OFFSET, crc);
        assert_eq!(Epochs::decode(&bytes), Err(EpochProblem::FutureVersion(9)));
    }
}
