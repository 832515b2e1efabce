//! Handshake authentication: the shared cluster secret, the cluster id, nonces, and the
//! HMAC-SHA256 proofs a primary and a standby exchange to show each other they hold the secret.
//!
//! The secret is never sent. The handshake (`docs/replication-protocol.md`) goes:
//!
//! ```text
//! standby                                                   primary
//!   Hello     { cluster, standby_nonce Ns }            ->
//!                                                      <-   Challenge { primary_nonce Np,
//!                                                                       primary_proof }
//!   (checks primary_proof: the primary proves first)
//!   Join      { standby_proof, last record, promise }  ->
//!                                                           (checks standby_proof)
//!                                                      <-   Start | Diverged | Refuse
//!
//! primary_proof = HMAC-SHA256(secret, "ringfence replication v1 primary"
//!                                     ‖ cluster_len u8 ‖ cluster ‖ Ns ‖ Np)
//! standby_proof = HMAC-SHA256(secret, "ringfence replication v1 standby"
//!                                     ‖ cluster_len u8 ‖ cluster ‖ Ns ‖ Np)
//! ```
//!
//! - **Replay.** Each side picks a fresh random nonce per connection and every proof covers
//!   both, so a proof recorded from an earlier handshake does not match the next one.
//! - **Reflection.** The two proofs carry different labels, so a primary's proof sent back to it
//!   (or to another primary) is not a standby's proof, and the reverse.
//! - **Other clusters.** The cluster id is inside the MAC, length first, so a secret reused by
//!   two clusters still does not let a node of one join the other.
//! - **The primary proves first**, so a standby never computes a proof for a peer that has not
//!   shown the secret: an impostor primary cannot use a standby as an oracle.
//!
//! What it does not do: the stream after the handshake is neither encrypted nor authenticated
//! message by message, and nothing binds the proofs to the TCP connection, so an attacker who
//! can sit between the nodes can relay a handshake and then alter the stream. Run replication
//! on a network you trust, or inside a tunnel (WireGuard, stunnel).

use std::fmt;
use std::io::Read;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Environment variable `ClusterSecret::from_env` reads.
pub const SECRET_ENV: &str = "RINGFENCE_CLUSTER_SECRET";
/// Fewest bytes a cluster secret may have (128 bits).
pub const SECRET_LEN_MIN: usize = 16;
/// Most bytes a cluster secret may have; a secret file larger than this is a wrong file.
pub const SECRET_LEN_MAX: usize = 1024;
/// Bytes of a handshake nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of a handshake proof (an HMAC-SHA256 tag).
pub const PROOF_LEN: usize = 32;
/// Most bytes of a cluster id.
pub const CLUSTER_ID_LEN_MAX: usize = 64;

/// A handshake nonce: fresh random bytes, one per side per connection.
pub type Nonce = [u8; NONCE_LEN];
/// A handshake proof: HMAC-SHA256 over a label, the cluster id and both nonces.
pub type Proof = [u8; PROOF_LEN];

const PRIMARY_LABEL: &[u8] = b"ringfence replication v1 primary";
const STANDBY_LABEL: &[u8] = b"ringfence replication v1 standby";
const MAKE_SECRET: &str = "head -c 32 /dev/urandom | base64 > cluster.secret";

// The labels have one length and differ, so neither is a prefix of the other and no MAC input
// of one role is a MAC input of the other.
const _: () = assert!(PRIMARY_LABEL.len() == STANDBY_LABEL.len());
const _: () = assert!(!bytes_equal(PRIMARY_LABEL, STANDBY_LABEL));
const _: () = assert!(PROOF_LEN == 32, "HMAC-SHA256 tags are 32 bytes");
const _: () = assert!(CLUSTER_ID_LEN_MAX <= u8::MAX as usize, "the id's length is one byte");
const _: () = assert!(SECRET_LEN_MIN <= SECRET_LEN_MAX);

type HmacSha256 = Hmac<Sha256>;

const fn bytes_equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Why authentication material was refused or a proof did not match.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The secret is shorter than [`SECRET_LEN_MIN`].
    #[error(
        "the cluster secret is {len} bytes; at least {SECRET_LEN_MIN} are needed. Make one \
         with `{MAKE_SECRET}` and give every node of the cluster the same file"
    )]
    SecretTooShort {
        /// Bytes given (after trailing newlines were removed).
        len: usize,
    },
    /// The secret is longer than [`SECRET_LEN_MAX`].
    #[error(
        "the cluster secret is more than {SECRET_LEN_MAX} bytes: is this the right file? Make \
         one with `{MAKE_SECRET}`"
    )]
    SecretTooLong,
    /// The secret file could not be read.
    #[error("cannot read the cluster secret file {path}: {source}")]
    SecretFile {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The operating system gave no random bytes for a nonce.
    #[error("the operating system gave no random bytes for a handshake nonce: {0}")]
    Nonce(getrandom::Error),
    /// The primary's proof does not match: it does not hold this cluster's secret.
    #[error(
        "the primary's handshake proof does not match: the two nodes do not share the cluster \
         secret and cluster id; check both nodes' secret and cluster settings"
    )]
    PrimaryProof,
    /// The standby's proof does not match: it does not hold this cluster's secret.
    #[error(
        "the standby's handshake proof does not match: the two nodes do not share the cluster \
         secret and cluster id; check both nodes' secret and cluster settings"
    )]
    StandbyProof,
}

/// The secret every node of a cluster shares. Never sent, never printed.
#[derive(Clone)]
pub struct ClusterSecret {
    bytes: Vec<u8>,
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

impl ClusterSecret {
    /// The secret made of exactly `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Result<ClusterSecret, AuthError> {
        if bytes.len() < SECRET_LEN_MIN {
            return Err(AuthError::SecretTooShort { len: bytes.len() });
        }
        if bytes.len() > SECRET_LEN_MAX {
            return Err(AuthError::SecretTooLong);
        }
        Ok(ClusterSecret { bytes: bytes.to_vec() })
    }

    /// The secret in the file at `path`: its bytes, trailing newlines (`\n`, `\r\n`) removed so
    /// a file written by `base64` or an editor works. The bytes are the secret as they are;
    /// base64 text is not decoded.
    pub fn from_file(path: &Path) -> Result<ClusterSecret, AuthError> {
        let failed = |source| AuthError::SecretFile { path: path.display().to_string(), source };
        let file = std::fs::File::open(path).map_err(failed)?;
        // One byte over the limit tells "too long" apart, plus room for the newline trimmed.
        let mut bytes = Vec::with_capacity(64);
        file.take(SECRET_LEN_MAX as u64 + 3).read_to_end(&mut bytes).map_err(failed)?;
        ClusterSecret::from_bytes(trim_newlines(&bytes))
    }

    /// The secret in the environment variable [`SECRET_ENV`], trimmed as by
    /// [`ClusterSecret::from_file`]; `Ok(None)` if it is not set.
    pub fn from_env() -> Result<Option<ClusterSecret>, AuthError> {
        let Some(value) = std::env::var_os(SECRET_ENV) else { return Ok(None) };
        ClusterSecret::from_bytes(trim_newlines(value.as_encoded_bytes())).map(Some)
    }

    fn mac(&self, label: &[u8], cluster: &ClusterId, ns: &Nonce, np: &Nonce) -> HmacSha256 {
        assert_eq!(label.len(), PRIMARY_LABEL.len());
        let mut mac = HmacSha256::new_from_slice(&self.bytes).expect("HMAC takes any key length");
        mac.update(label);
        mac.update(&[cluster.len]);
        mac.update(cluster.as_bytes());
        mac.update(ns);
        mac.update(np);
        mac
    }
}

fn trim_newlines(mut bytes: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r'] = bytes {
        bytes = rest;
    }
    bytes
}

/// Fresh random bytes for one side of one handshake.
pub fn nonce() -> Result<Nonce, AuthError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(AuthError::Nonce)?;
    Ok(nonce)
}

/// The primary's proof for the handshake with nonces `standby_nonce` and `primary_nonce`.
#[must_use]
pub fn primary_proof(
    secret: &ClusterSecret,
    cluster: &ClusterId,
    standby_nonce: &Nonce,
    primary_nonce: &Nonce,
) -> Proof {
    secret.mac(PRIMARY_LABEL, cluster, standby_nonce, primary_nonce).finalize().into_bytes().into()
}

/// The standby's proof for the handshake with nonces `standby_nonce` and `primary_nonce`.
#[must_use]
pub fn standby_proof(
    secret: &ClusterSecret,
    cluster: &ClusterId,
    standby_nonce: &Nonce,
    primary_nonce: &Nonce,
) -> Proof {
    secret.mac(STANDBY_LABEL, cluster, standby_nonce, primary_nonce).finalize().into_bytes().into()
}

/// Checks, in constant time, that `proof` is the primary's proof for this handshake.
pub fn verify_primary(
    secret: &ClusterSecret,
    cluster: &ClusterId,
    standby_nonce: &Nonce,
    primary_nonce: &Nonce,
    proof: &Proof,
) -> Result<(), AuthError> {
    let mac = secret.mac(PRIMARY_LABEL, cluster, standby_nonce, primary_nonce);
    mac.verify_slice(proof).map_err(|_| AuthError::PrimaryProof)
}

/// Checks, in constant time, that `proof` is the standby's proof for this handshake.
pub fn verify_standby(
    secret: &ClusterSecret,
    cluster: &ClusterId,
    standby_nonce: &Nonce,
    primary_nonce: &Nonce,
    proof: &Proof,
) -> Result<(), AuthError> {
    let mac = secret.mac(STANDBY_LABEL, cluster, standby_nonce, primary_nonce);
    mac.verify_slice(proof).map_err(|_| AuthError::StandbyProof)
}

/// Why a cluster id was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterIdError {
    /// Empty, or longer than [`CLUSTER_ID_LEN_MAX`].
    #[error(
        "the cluster id is {len} bytes; it must be 1..={CLUSTER_ID_LEN_MAX} characters of \
         A-Z a-z 0-9 . _ -"
    )]
    Length {
        /// Bytes given.
        len: usize,
    },
    /// A byte outside `[A-Za-z0-9._-]`.
    #[error(
        "the cluster id has byte {byte:#04x} at position {at}; only A-Z a-z 0-9 . _ - are allowed"
    )]
    Byte {
        /// Position of the first bad byte.
        at: usize,
        /// The byte.
        byte: u8,
    },
}

/// The name of a cluster: 1..=64 characters of `[A-Za-z0-9._-]`. Held inline, so it is `Copy`
/// and a decoded `Hello` owns it without allocating.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ClusterId {
    // Bytes past `len` are always zero, so the derived equality is equality of the ids.
    bytes: [u8; CLUSTER_ID_LEN_MAX],
    len: u8,
}

impl ClusterId {
    /// Checks and copies `id`.
    pub fn new(id: &str) -> Result<ClusterId, ClusterIdError> {
        ClusterId::from_bytes(id.as_bytes())
    }

    /// Checks and copies `id` given as bytes (as read off the wire).
    pub fn from_bytes(id: &[u8]) -> Result<ClusterId, ClusterIdError> {
        if !(1..=CLUSTER_ID_LEN_MAX).contains(&id.len()) {
            return Err(ClusterIdError::Length { len: id.len() });
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
        if let Some(at) = id.iter().position(|&b| !allowed(b)) {
            return Err(ClusterIdError::Byte { at, byte: id[at] });
        }
        let mut bytes = [0u8; CLUSTER_ID_LEN_MAX];
        bytes[..id.len()].copy_from_slice(id);
        let len = u8::try_from(id.len()).expect("at most 64");
        Ok(ClusterId { bytes, len })
    }

    /// The id's bytes (ASCII).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The id.
    #[must_use]
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("checked ASCII")
    }
}

impl std::str::FromStr for ClusterId {
    type Err = ClusterIdError;

    fn from_str(id: &str) -> Result<ClusterId, ClusterIdError> {
        ClusterId::new(id)
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterId({:?})", self.as_str())
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> ClusterSecret {
        ClusterSecret::from_bytes(b"0123456789abcdef0123456789abcdef").expect("32 bytes")
    }

    fn cluster() -> ClusterId {
        ClusterId::new("shop-eu.1").expect("a valid id")
    }

    const NS: Nonce = [1; NONCE_LEN];
    const NP: Nonce = [2; NONCE_LEN];

    #[test]
    fn both_proofs_verify_for_the_same_handshake() {
        // Goal: a primary and a standby that share the secret and cluster id accept each other.
        let (secret, cluster) = (secret(), cluster());
        let primary = primary_proof(&secret, &cluster, &NS, &NP);
        let standby = standby_proof(&secret, &cluster, &NS, &NP);
        assert!(verify_primary(&secret, &cluster, &NS, &NP, &primary).is_ok());
        assert!(verify_standby(&secret, &cluster, &NS, &NP, &standby).is_ok());
        assert_ne!(primary, standby, "the labels separate the roles");
    }

    #[test]
    fn the_proof_is_hmac_sha256_over_the_documented_bytes() {
        // Goal: the proof is a format other implementations can compute: the MAC input is the
        // label, the id's length byte, the id and both nonces, written out here by hand.
        let mut input = b"ringfence replication v1 primary".to_vec();
        input.push(9);
        input.extend_from_slice(b"shop-eu.1");
        input.extend_from_slice(&NS);
        input.extend_from_slice(&NP);
        let mut mac = HmacSha256::new_from_slice(b"0123456789abcdef0123456789abcdef").unwrap();
        mac.update(&input);
        let expected: Proof = mac.finalize().into_bytes().into();
        assert_eq!(primary_proof(&secret(), &cluster(), &NS, &NP), expected);
    }

    #[test]
    fn a_wrong_secret_fails_both_ways() {
        // Goal: a node with another secret can neither pass as a primary nor as a standby.
        let (secret, cluster) = (secret(), cluster());
        let other = ClusterSecret::from_bytes(b"0123456789abcdef0123456789abcdeF").unwrap();
        let primary = primary_proof(&other, &cluster, &NS, &NP);
        let standby = standby_proof(&other, &cluster, &NS, &NP);
        assert!(matches!(
            verify_primary(&secret, &cluster, &NS, &NP, &primary),
            Err(AuthError::PrimaryProof)
        ));
        assert!(matches!(
            verify_standby(&secret, &cluster, &NS, &NP, &standby),
            Err(AuthError::StandbyProof)
        ));
    }

    #[test]
    fn a_proof_for_another_cluster_fails() {
        // Goal: one secret shared by two clusters does not let a node cross between them.
        let secret = secret();
        let other = ClusterId::new("shop-eu.2").unwrap();
        let primary = primary_proof(&secret, &other, &NS, &NP);
        assert!(verify_primary(&secret, &cluster(), &NS, &NP, &primary).is_err());
        let standby = standby_proof(&secret, &other, &NS, &NP);
        assert!(verify_standby(&secret, &cluster(), &NS, &NP, &standby).is_err());
    }

    #[test]
    fn swapped_or_replayed_nonces_fail() {
        // Goal: a proof binds both nonces in their places: swapping them, or replaying an old
        // proof against a fresh nonce from either side, does not verify.
        let (secret, cluster) = (secret(), cluster());
        let primary = primary_proof(&secret, &cluster, &NS, &NP);
        assert!(verify_primary(&secret, &cluster, &NP, &NS, &primary).is_err());
        let standby = standby_proof(&secret, &cluster, &NS, &NP);
        assert!(verify_standby(&secret, &cluster, &NP, &NS, &standby).is_err());
        let fresh = [3; NONCE_LEN];
        assert!(verify_standby(&secret, &cluster, &NS, &fresh, &standby).is_err());
        assert!(verify_primary(&secret, &cluster, &fresh, &NP, &primary).is_err());
    }

    #[test]
    fn a_reflected_primary_proof_is_not_a_standby_proof() {
        // Goal: an impostor standby that sends the primary's own proof back (from this
        // connection, or from a second connection with the same nonces) is refused.
        let (secret, cluster) = (secret(), cluster());
        let primary = primary_proof(&secret, &cluster, &NS, &NP);
        assert!(matches!(
            verify_standby(&secret, &cluster, &NS, &NP, &primary),
            Err(AuthError::StandbyProof)
        ));
        let standby = standby_proof(&secret, &cluster, &NS, &NP);
        assert!(verify_primary(&secret, &cluster, &NS, &NP, &standby).is_err());
    }

    #[test]
    fn short_and_oversized_secrets_are_refused_with_the_recipe() {
        // Goal: a secret under 16 bytes is refused with a message saying how to make one.
        let error = ClusterSecret::from_bytes(b"fifteen bytes!!").unwrap_err();
        assert!(matches!(error, AuthError::SecretTooShort { len: 15 }));
        assert!(error.to_string().contains("head -c 32 /dev/urandom | base64"));
        assert!(ClusterSecret::from_bytes(&[7; SECRET_LEN_MIN]).is_ok());
        assert!(ClusterSecret::from_bytes(&[7; SECRET_LEN_MAX]).is_ok());
        assert!(matches!(
            ClusterSecret::from_bytes(&[7; SECRET_LEN_MAX + 1]),
            Err(AuthError::SecretTooLong)
        ));
    }

    #[test]
    fn debug_never_prints_the_secret() {
        // Goal: logging a secret (or a struct holding one) leaks none of its bytes.
        let secret = ClusterSecret::from_bytes(b"hunter2hunter2hunter2").unwrap();
        let printed = format!("{secret:?} {secret:#?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("104"), "no byte values either: {printed}");
    }

    #[test]
    fn a_secret_file_loses_its_trailing_newline_only() {
        // Goal: `base64 > file` and `echo secret > file` give the secret without the newline;
        // the rest of the file is the secret byte for byte.
        let dir = std::env::temp_dir().join(format!("ringfence-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cluster.secret");
        std::fs::write(&path, b" 0123456789abcdef\r\n").unwrap();
        let from_file = ClusterSecret::from_file(&path).unwrap();
        assert_eq!(from_file.bytes, b" 0123456789abcdef");
        std::fs::write(&path, b"0123456789abcde\n").unwrap();
        assert!(matches!(
            ClusterSecret::from_file(&path),
            Err(AuthError::SecretTooShort { len: 15 })
        ));
        std::fs::write(&path, vec![b'x'; SECRET_LEN_MAX + 10]).unwrap();
        assert!(matches!(ClusterSecret::from_file(&path), Err(AuthError::SecretTooLong)));
        let missing = ClusterSecret::from_file(&dir.join("missing")).unwrap_err();
        assert!(matches!(missing, AuthError::SecretFile { .. }));
        assert!(missing.to_string().contains("missing"), "the message names the file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cluster_ids_allow_only_the_documented_characters() {
        // Goal: ids are 1..=64 of [A-Za-z0-9._-]; anything else names the first bad byte.
        let id = ClusterId::new("A-z_0.9").unwrap();
        assert_eq!(id.as_str(), "A-z_0.9");
        assert_eq!(id.to_string(), "A-z_0.9");
        assert!(ClusterId::new(&"x".repeat(CLUSTER_ID_LEN_MAX)).is_ok());
        assert_eq!(ClusterId::new(""), Err(ClusterIdError::Length { len: 0 }));
        assert_eq!(ClusterId::new(&"x".repeat(65)), Err(ClusterIdError::Length { len: 65 }));
        assert_eq!(ClusterId::new("eu west"), Err(ClusterIdError::Byte { at: 2, byte: b' ' }));
        assert_eq!(ClusterId::new("é"), Err(ClusterIdError::Byte { at: 0, byte: 0xC3 }));
        assert_ne!(ClusterId::new("a").unwrap(), ClusterId::new("ab").unwrap());
    }

    #[test]
    fn nonces_are_fresh() {
        // Goal: two nonces drawn in a row differ (a stuck source would make replay possible).
        assert_ne!(nonce().unwrap(), nonce().unwrap());
    }
}
