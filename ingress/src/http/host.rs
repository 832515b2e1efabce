//! Which `Host` a node whose client commands are open answers: the defence against DNS
//! rebinding. A page in an operator's browser can have its own name resolve to 127.0.0.1 and
//! then read a loopback node as a same-origin page, sending no `Origin` (so the `cross_origin`
//! check never sees it) but its own name as `Host`. A name the operator did not list is
//! refused; an IP literal or `localhost` is always answered, since no page can be served
//! under those names by anyone but the machine itself.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The longest name accepted in the list (a DNS name is at most 253 characters).
const NAME_LEN_MAX: usize = 253;

/// `[server] allowed_hosts` / `serve --http-allowed-host`: the DNS names, besides IP literals
/// and `localhost`, that requests may carry in `Host` where client commands are open. `*`
/// allows any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    /// Lowercase, without a trailing dot.
    names: Vec<String>,
    any: bool,
}

impl AllowedHosts {
    /// The list from the names an operator gave: each a host name without scheme, port or
    /// path (`shop-api.internal`), or `*`.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<AllowedHosts, String> {
        let mut allowed = AllowedHosts::default();
        for name in names {
            if name == "*" {
                allowed.any = true;
                continue;
            }
            let bare = name.strip_suffix('.').unwrap_or(name);
            let valid = !bare.is_empty()
                && bare.len() <= NAME_LEN_MAX
                && bare.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid {
                return Err(format!(
                    "allowed host `{name}`: give a host name (letters, digits, `-` and `.`, \
                     no scheme or port), or `*` for any"
                ));
            }
            allowed.names.push(bare.to_ascii_lowercase());
        }
        Ok(allowed)
    }

    /// Whether a request whose `Host` field is `host` (`None`: an HTTP/1.0 request without
    /// one, which no browser sends) is answered.
    #[must_use]
    pub fn allows(&self, host: Option<&[u8]>) -> bool {
        let Some(host) = host else { return true };
        if self.any {
            return true;
        }
        let Ok(host) = std::str::from_utf8(host) else { return false };
        if let Some(literal) = host.strip_prefix('[') {
            // `[v6]` or `[v6]:port`.
            let Some((address, rest)) = literal.split_once(']') else { return false };
            return address.parse::<Ipv6Addr>().is_ok() && port_or_nothing(rest);
        }
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.parse::<u16>().is_ok() => name,
            Some(_) => return false,
            None => host,
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        name.parse::<Ipv4Addr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || self.names.iter().any(|allowed| allowed.eq_ignore_ascii_case(name))
    }
}

/// `""` or `:` followed by a port number.
fn port_or_nothing(rest: &str) -> bool {
    match rest.strip_prefix(':') {
        None => rest.is_empty(),
        Some(port) => port.parse::<u16>().is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_localhost_and_listed_names_are_answered_other_names_refused() {
        // Goal: the DNS-rebinding check: an attacker's name is refused, whatever its case or
        // port; the machine's own ways of naming itself and the operator's names pass.
        let hosts = AllowedHosts::new(["Shop-API.internal."]).unwrap();
        for answered in [
            "127.0.0.1",
            "127.0.0.1:7080",
            "10.0.0.5:80",
            "[::1]:7080",
            "[::1]",
            "localhost:7080",
            "LOCALHOST",
            "localhost.",
            "shop-api.internal",
            "SHOP-API.INTERNAL:443",
        ] {
            assert!(hosts.allows(Some(answered.as_bytes())), "{answered} refused");
        }
        for refused in [
            "attacker.example",
            "attacker.example:7080",
            "127.0.0.1.attacker.example",
            "localhost.attacker.example",
            "shop-api.internal.attacker.example",
            "[::1",
            "[not-v6]:80",
            "127.0.0.1:port",
            "127.0.0.1:70800",
            "",
        ] {
            assert!(!hosts.allows(Some(refused.as_bytes())), "{refused} answered");
        }
        assert!(!hosts.allows(Some(b"\xff\xfe")), "not UTF-8");
        assert!(hosts.allows(None), "HTTP/1.0 without Host");
        let any = AllowedHosts::new(["*"]).unwrap();
        assert!(any.allows(Some(b"attacker.example")));
    }

    #[test]
    fn a_listed_name_must_be_a_bare_host_name() {
        // Goal: a scheme, port, path or empty name in the list is refused when the config is
        // read, naming the entry, rather than never matching.
        for bad in ["https://shop", "shop:443", "shop/api", "", ".", "sh op"] {
            let error = AllowedHosts::new([bad]).unwrap_err();
            assert!(error.contains(&format!("`{bad}`")), "{error}");
        }
        assert_eq!(AllowedHosts::new(["a.b", "*"]).map(|h| h.any), Ok(true));
    }
}
