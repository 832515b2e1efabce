//! Authentication on both ports: which role a presented token carries (compared in constant
//! time against every configured token), the role each binary connection authenticated as,
//! and the limit on failed attempts per source address.
//!
//! An attempt is a presented token: an HTTP `Authorization: Bearer` header (on any request) or
//! a binary `AUTH` frame. One table of failures serves both ports, so switching ports buys an
//! attacker nothing. An address that failed too often is refused before its token is looked
//! at: a guess made while limited learns nothing, and the right token is refused too, until
//! the address's budget refills.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use subtle::{ConditionallySelectable as _, ConstantTimeEq as _};

use super::{Server, ServerConfig};
use crate::admission::AuthLimiter;
use crate::backend::Backend;
use crate::http::Response;
use crate::metrics::Protocol;
use crate::roles::{Caller, Role};

/// What a presented token earned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Authenticated {
    /// No token was presented: not an attempt.
    Anonymous,
    /// A configured token, of this role.
    Role(Role),
    /// A token that is none of the configured ones: one failure.
    Refused,
    /// Not checked: the address failed too often. It may try again after `retry_after`.
    Limited { retry_after: Duration },
}

/// The configured tokens, the role each binary connection authenticated as, and the failed
/// attempts per address.
pub(super) struct Auth {
    /// Every token with its role; no two alike (asserted), so at most one matches.
    tokens: Vec<(Role, Box<[u8]>)>,
    /// Whether a non-admin role has a token: then every call needs a token.
    enforced: bool,
    /// Per connection slot (the server's connection index): the connection's id and the role
    /// its last accepted `AUTH` carried. A slot reused by a new connection has another id.
    /// Bounded by `connections_max`, like the slots.
    sessions: Vec<Option<(u64, Role)>>,
    limiter: AuthLimiter,
}

impl Auth {
    pub fn new(config: &ServerConfig) -> Auth {
        let admin = config.admin_token.as_deref().map(|token| (Role::Admin, token));
        let configured = config.role_tokens.iter().map(|(role, token)| (*role, token.as_str()));
        let tokens: Vec<(Role, Box<[u8]>)> = admin
            .into_iter()
            .chain(configured)
            .filter(|(_, token)| !token.is_empty())
            .map(|(role, token)| (role, token.as_bytes().into()))
            .collect();
        assert!(tokens.len() < usize::from(u8::MAX), "one byte indexes the tokens");
        for (i, (_, token)) in tokens.iter().enumerate() {
            let shared = tokens[i + 1..].iter().any(|(_, other)| other == token);
            assert!(!shared, "two roles share a token: `serve` refuses such a configuration");
        }
        Auth {
            enforced: tokens.iter().any(|(role, _)| *role != Role::Admin),
            tokens,
            sessions: Vec::new(),
            limiter: AuthLimiter::new(
                config.auth_failures_burst,
                Duration::from_millis(config.auth_failure_refill_ms),
                config.auth_addresses_max,
            ),
        }
    }

    /// Whether roles are enforced (a non-admin role has a token).
    pub fn enforced(&self) -> bool {
        self.enforced
    }

    /// Who a caller is that authenticated as `verdict` (anything but `Limited`).
    pub fn caller(&self, verdict: Authenticated) -> Caller {
        match verdict {
            Authenticated::Role(role) => Caller::Role(role),
            _ => Caller::without_token(self.enforced),
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
        if let Some(role) = self.role_of(presented) {
            return Authenticated::Role(role);
        }
        self.limiter.record_failure(peer, now);
        Authenticated::Refused
    }

    /// The role of the token `presented` is, if any. Every token is compared, and the match
    /// is recorded with a constant-time select, so the time taken does not say which role
    /// (if any) matched or how much of a guess was right.
    fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let mut found = 0u8; // 0: none; otherwise the index of the match, plus one.
        for (index, (_, token)) in self.tokens.iter().enumerate() {
            let candidate = u8::try_from(index + 1).expect("fewer than 255 tokens (asserted)");
            found.conditional_assign(&candidate, token.ct_eq(presented));
        }
        let index = usize::from(found.checked_sub(1)?);
        Some(self.tokens[index].0)
    }

    /// Records that connection `conn_id` in slot `index` authenticated as `role`.
    pub fn set_session(&mut self, index: usize, conn_id: u64, role: Role) {
        if self.sessions.len() <= index {
            self.sessions.resize(index + 1, None);
        }
        self.sessions[index] = Some((conn_id, role));
    }

    /// The role connection `conn_id` in slot `index` authenticated as, if it did.
    pub fn session(&self, index: usize, conn_id: u64) -> Option<Role> {
        match self.sessions.get(index).copied().flatten() {
            Some((id, role)) if id == conn_id => Some(role),
            _ => None,
        }
    }
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
            Authenticated::Anonymous | Authenticated::Role(_) => return verdict,
            Authenticated::Refused => {
                self.metrics.auth_failure(protocol);
                self.log.warn(now, format_args!("{port} client {peer}: wrong token"));
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
        assert_eq!(
            auth.attempt(attacker, Some(b"right-token"), now),
            Authenticated::Role(Role::Admin)
        );
        for _ in 0..2 {
            assert_eq!(auth.attempt(attacker, Some(b"guess"), now), Authenticated::Refused);
        }
        let limited = Authenticated::Limited { retry_after: Duration::from_secs(60) };
        assert_eq!(auth.attempt(attacker, Some(b"right-token"), now), limited);
        assert_eq!(auth.attempt(attacker, None, now), Authenticated::Anonymous);
        assert_eq!(
            auth.attempt(other, Some(b"right-token"), now),
            Authenticated::Role(Role::Admin)
        );
        let refilled = now + Duration::from_secs(60);
        assert_eq!(
            auth.attempt(attacker, Some(b"right-token"), refilled),
            Authenticated::Role(Role::Admin)
        );
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
        let auth = auth(Some("abcdef"));
        assert_eq!(auth.role_of(b"abcdef"), Some(Role::Admin));
        for wrong in [&b"abcde"[..], b"abcdefg", b"abcdeF", b""] {
            assert_eq!(auth.role_of(wrong), None, "{wrong:?}");
        }
    }

    #[test]
    fn each_token_earns_its_own_role_and_any_role_token_enforces_roles() {
        // Goal: with several tokens, each presented token earns exactly its role (first, middle
        // and last place alike); an admin token alone leaves client commands open, and one
        // more role token turns enforcement on.
        let mut config =
            ServerConfig { admin_token: Some("admin-token".into()), ..Default::default() };
        assert!(!Auth::new(&config).enforced());
        assert_eq!(Auth::new(&config).caller(Authenticated::Refused), Caller::Open);
        config.role_tokens = vec![
            (Role::Orders, "orders-token".into()),
            (Role::Payments, "payments-token".into()),
            (Role::Read, "read-token".into()),
        ];
        let auth = Auth::new(&config);
        assert!(auth.enforced());
        assert_eq!(auth.caller(Authenticated::Anonymous), Caller::Anonymous);
        assert_eq!(auth.caller(Authenticated::Refused), Caller::Anonymous);
        for (token, role) in [
            ("admin-token", Role::Admin),
            ("orders-token", Role::Orders),
            ("payments-token", Role::Payments),
            ("read-token", Role::Read),
        ] {
            assert_eq!(auth.role_of(token.as_bytes()), Some(role), "{token}");
            assert_eq!(auth.caller(Authenticated::Role(role)), Caller::Role(role));
        }
        assert_eq!(auth.role_of(b"orders-tokeN"), None);
    }

    #[test]
    #[should_panic(expected = "two roles share a token")]
    fn two_roles_sharing_a_token_is_a_programmer_error() {
        // Goal: the server never has to choose between two roles for one token.
        let config = ServerConfig {
            admin_token: Some("same-token".into()),
            role_tokens: vec![(Role::Read, "same-token".into())],
            ..Default::default()
        };
        let _ = Auth::new(&config);
    }

    #[test]
    fn a_session_belongs_to_its_connection_id() {
        // Goal: a slot reused by a new connection does not inherit the old one's role.
        let mut auth = auth(Some("t"));
        assert_eq!(auth.session(3, 7), None);
        auth.set_session(3, 7, Role::Orders);
        assert_eq!(auth.session(3, 7), Some(Role::Orders));
        assert_eq!(auth.session(3, 8), None);
        assert_eq!(auth.session(2, 7), None);
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
