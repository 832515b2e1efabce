//! Command payloads: rkyv encoding into a reused buffer, and validated decoding.
//!
//! Journal bytes are untrusted after a crash or a copy, so every payload is checked with
//! bytecheck before it is turned back into a [`Command`].

use ringfence_core::Command;
use ringfence_core::command::ArchivedCommand;
use rkyv::rancor::Failure;
use rkyv::ser::allocator::SubAllocator;
use rkyv::util::AlignedVec;

use crate::format::RECORD_PAYLOAD_MAX;

/// Encodes commands into one buffer that is allocated once and reused for every record.
pub struct Encoder {
    buffer: AlignedVec<16>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

impl Encoder {
    /// An encoder with its buffer allocated.
    #[must_use]
    pub fn new() -> Encoder {
        Encoder { buffer: AlignedVec::with_capacity(RECORD_PAYLOAD_MAX) }
    }

    /// Encodes `command` and returns its bytes, valid until the next call.
    pub fn encode(&mut self, command: &Command) -> &[u8] {
        self.buffer.clear();
        // Commands are fixed-size plain data: serializing them needs no scratch allocations,
        // so an empty sub-allocator is enough and nothing touches the heap.
        let mut scratch: [std::mem::MaybeUninit<u8>; 0] = [];
        let buffer = std::mem::take(&mut self.buffer);
        let buffer = rkyv::api::low::to_bytes_in_with_alloc::<_, _, Failure>(
            command,
            buffer,
            SubAllocator::new(&mut scratch),
        )
        .expect("a command always serializes: it is fixed-size plain data");
        self.buffer = buffer;
        assert!(!self.buffer.is_empty() && self.buffer.len() <= RECORD_PAYLOAD_MAX);
        assert!(self.buffer.capacity() >= RECORD_PAYLOAD_MAX, "buffer was reallocated");
        &self.buffer
    }

    /// The bytes of the last [`Encoder::encode`] call.
    #[must_use]
    pub fn last(&self) -> &[u8] {
        &self.buffer
    }
}

/// Validates `payload` as an archived command and decodes it. `payload` must start at an
/// address aligned to 16 (records are aligned so that it does in place).
pub fn decode(payload: &[u8]) -> Option<Command> {
    let archived = rkyv::api::low::access::<ArchivedCommand, Failure>(payload).ok()?;
    rkyv::api::low::deserialize::<Command, Failure>(archived).ok()
}
