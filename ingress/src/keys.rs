//! Stable 128-bit keys for the strings HTTP clients send: `request_id` and `payment_ref`.
//!
//! The engine keys idempotency on 16 bytes ([`RequestKey`]) and payments on 16 bytes
//! ([`PaymentRef`]). HTTP clients send strings of 1–64 characters instead, so the front end
//! hashes them with XXH3-128 (seed 0, output as the little-endian bytes of the 128-bit value).
//! XXH3's output is frozen by its specification, so every node and every release maps a string
//! to the same key, and a retry that arrives at another node after failover is still
//! recognised. The binary protocol carries the 16 bytes directly; the client library hashes
//! strings the same way, so a request id means the same thing on both ports.

use ringfence_core::{PaymentRef, RequestKey};
use xxhash_rust::xxh3::xxh3_128;

/// Longest request id or payment reference accepted, in characters.
pub const KEY_STRING_LEN_MAX: usize = 64;

/// The request key for an HTTP `request_id` (or any client-chosen string).
#[must_use]
pub fn request_key(request_id: &str) -> RequestKey {
    RequestKey(xxh3_128(request_id.as_bytes()).to_le_bytes())
}

/// The payment reference for a provider's reference string.
#[must_use]
pub fn payment_ref(reference: &str) -> PaymentRef {
    PaymentRef(xxh3_128(reference.as_bytes()).to_le_bytes())
}

/// Whether `value` is a usable request id or payment reference: 1–64 characters (as the
/// HTTP API's document counts a string's length).
#[must_use]
pub fn is_valid_key_string(value: &str) -> bool {
    !value.is_empty() && value.chars().count() <= KEY_STRING_LEN_MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_key_hash_is_pinned() {
        // Goal: the mapping from request id to key never drifts between builds or nodes.
        let key = request_key("order-1");
        assert_eq!(key, request_key("order-1"));
        assert_ne!(key, request_key("order-2"));
        // XXH3-128 of the empty input with seed 0, from the reference implementation.
        let empty = xxh3_128(b"");
        assert_eq!(empty, 0x99aa_06d3_0147_98d8_6001_c324_468d_497f);
        assert_eq!(payment_ref("order-1").0, key.0);
    }

    #[test]
    fn key_strings_are_one_to_sixty_four_bytes() {
        // Goal: empty and oversized ids are refused before they reach the engine.
        assert!(!is_valid_key_string(""));
        assert!(is_valid_key_string("a"));
        assert!(is_valid_key_string(&"x".repeat(64)));
        assert!(!is_valid_key_string(&"x".repeat(65)));
        // Characters, not bytes: 64 two-byte characters are a valid reference.
        assert!(is_valid_key_string(&"é".repeat(64)));
        assert!(!is_valid_key_string(&"é".repeat(65)));
    }
}
