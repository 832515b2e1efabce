//! Admin authentication on both ports: the token comparison, in constant time, and the limit
//! on failed attempts per source address.
//!
//! An attempt is a presented token: an HTTP `Authorization: Bearer` header (on any request) or
//! a binary `AUTH` frame. One table of failures serves both ports, so switching ports buys an
//! attacker nothing. An address that failed too often is refused before its token is looked
//! at: a guess made while limited learns nothing, and the right token is refused too, until
//! the address's budget refills.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq as _;

use super::{Server, ServerConfig};
use crate::admission::AuthLimiter;
use crate::backend::Backend;
use crate::http::Response;
use crate::metrics::Protocol;

/// What a presented token earned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Authenticated {
    /// No token was presented: not an attempt.
    Anonymous,
    /// The admin token.
    Admin,
    /// A token that is not the admin token (or the server has none): one failure.
    Refused,
    /// Not checked: the address failed too often. It may try again after `retry_after`.
    Limited { retry_after: Duration },
}

/// The admin token and the failed attempts per address.
pub(super) struct Auth {
    token: Option<Box<[u8]>>,
    limiter: AuthLimiter,
}

impl Auth {
    pub fn new(config: &ServerConfig) -> Auth {
        let token = config.admin_token.as_deref().filter(|t| !t.is_empty());
        Auth {
            token: token.map(|t| t.as_bytes().into()),
            limiter: AuthLimiter::new(
                config.auth_failures_burst,
                Duration::from_millis(config.auth_failure_refill_ms),
                config.auth_addresses_max,
            ),
        }
    }

    /// Judges `presented` from `peer` at `now`: the address's budget first, then the token.
    pub fn attempt(
        &mut self,
        peer: IpAddr,
        presented: Option<&[u8]>,
        now: Instant,
    ) -> Authenticated {
        let Some(presented) = presented else { return Authenticated::Anonymous };
        if let Err(retry_after) = self.limiter.check(peer, now) {
            return Authenticated::Limited { retry_after };
        }
        if self.token.as_deref().is_some_and(|token| token_matches(token, presented)) {
            return Authenticated::Admin;
        }
        self.limiter.record_failure(peer, now);
        Authenticated::Refused
    }
}

/// Whether `presented` is `token`, in time that does not depend on where they differ. A
/// length mismatch answers at once (as in `subtle` itself): the length is not the secret.
fn token_matches(token: &[u8], presented: &[u8]) -> bool {
    bool::from(token.ct_eq(presented))
}

impl<B: Backend> Server<B> {
    /// Judges a token presented by `peer` on `protocol`, counting and logging (rate-limited)
    /// failures and refusals.
    pub(super) fn authenticate(
        &mut self,
        peer: IpAddr,
        presented: Option<&[u8]>,
        protocol: Protocol,
        now: Instant,
    ) -> Authenticated {
        let verdict = self.auth.attempt(peer, presented, now);
        let port = match protocol {
            Protocol::Binary => "binary",
            Protocol::Http => "HTTP",
        };
        match verdict {
            Authenticated::Anonymous | Authenticated::Admin => return verdict,
            Authenticated::Refused => {
                self.metrics.auth_failure(protocol);
                self.log.warn(now, format_args!("{port} client {peer}: wrong admin token"));
            }
            Authenticated::Limited { retry_after } => {
                self.metrics.auth_limited(protocol);
                self.log.warn(
                    now,
                    format_args!(
                        "{port} client {peer}: authentication refused unchecked after too many \
                         failures (next try in {} ms)",
                        retry_after.as_millis()
                    ),
                );
            }
        }
        self.metrics.auth_addresses_tracked = self.auth.limiter.tracked() as u64;
        self.metrics.auth_addresses_evicted = self.auth.limiter.evictions();
        verdict
    }
}

/// The HTTP answer to a limited address: 429 `auth_rate_limited` with `Retry-After`.
pub(super) fn limited_response(retry_after: Duration) -> Response {
    let message = "too many failed authentications from this address; the token was not \
                   checked: retry after the Retry-After delay";
    Response::error(429, "auth_rate_limited", message).retry_after(retry_after_s(retry_after))
}

/// `retry_after` in whole seconds, rounded up, at least one.
fn retry_after_s(retry_after: Duration) -> u32 {
    u32::try_from(retry_after.as_millis().div_ceil(1_000)).unwrap_or(u32::MAX).max(1)
}

/// `retry_after` in milliseconds for the binary error frame, at least one.
pub(super) fn retry_after_ms(retry_after: Duration) -> u32 {
    u32::try_from(retry_after.as_millis()).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(token: Option<&str>) -> Auth {
        let config = ServerConfig {
            admin_token: token.map(str::to_owned),
            auth_failures_burst: 2,
            auth_failure_refill_ms: 60_000,
            ..ServerConfig::default()
        };
        Auth::new(&config)
    }

    #[test]
    fn a_limited_address_is_refused_before_its_token_is_checked() {
        // Goal: after the burst of wrong tokens, the right token from the same address is
        // refused as limited, while another address still gets in; no token is no attempt.
        let now = Instant::now();
        let (attacker, other) = (IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2]));
        let mut auth = auth(Some("right-token"));
        assert_eq!(auth.attempt(attacker, Some(b"right-token"), now), Authenticated::Admin);
        for _ in 0..2 {
            assert_eq!(auth.attempt(attacker, Some(b"guess"), now), Authenticated::Refused);
        }
        let limited = Authenticated::Limited { retry_after: Duration::from_secs(60) };
        assert_eq!(auth.attempt(attacker, Some(b"right-token"), now), limited);
        assert_eq!(auth.attempt(attacker, None, now), Authenticated::Anonymous);
        assert_eq!(auth.attempt(other, Some(b"right-token"), now), Authenticated::Admin);
        let refilled = now + Duration::from_secs(60);
        assert_eq!(auth.attempt(attacker, Some(b"right-token"), refilled), Authenticated::Admin);
    }

    #[test]
    fn without_an_admin_token_every_token_is_a_failure() {
        // Goal: a server with no admin token accepts none, and counts each as a failure.
        let now = Instant::now();
        let peer = IpAddr::from([192, 0, 2, 1]);
        let mut auth = auth(None);
        assert_eq!(auth.attempt(peer, Some(b"anything"), now), Authenticated::Refused);
        assert_eq!(auth.attempt(peer, Some(b""), now), Authenticated::Refused);
        assert!(matches!(auth.attempt(peer, Some(b"x"), now), Authenticated::Limited { .. }));
    }

    #[test]
    fn tokens_match_only_when_equal() {
        // Goal: the comparison is equality: prefixes, extensions and one-byte changes fail.
        assert!(token_matches(b"abcdef", b"abcdef"));
        assert!(!token_matches(b"abcdef", b"abcde"));
        assert!(!token_matches(b"abcdef", b"abcdefg"));
        assert!(!token_matches(b"abcdef", b"abcdeF"));
        assert!(!token_matches(b"abcdef", b""));
    }

    #[test]
    fn retry_hints_round_up() {
        // Goal: hints never say "now": 1 ms is one second on HTTP and 1 ms on the binary port.
        assert_eq!(retry_after_s(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_s(Duration::from_millis(6_001)), 7);
        assert_eq!(retry_after_ms(Duration::from_micros(10)), 1);
        assert_eq!(limited_response(Duration::from_secs(6)).retry_after_s, Some(6));
    }
}
