//! Whose budget a peer's address spends, for every limit a node keeps per address: the
//! client ports' connections, commands in flight and failed authentications, and the
//! replication port's handshake slots.

use std::net::{IpAddr, Ipv6Addr};

/// Whose budget an address spends: an IPv4 address (IPv4-mapped IPv6 ones included) its own;
/// an IPv6 address its /64 prefix's, the block one host is normally given, or a single host
/// could try from 2^64 addresses.
#[must_use]
pub fn address_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !(u128::from(u64::MAX)))),
        v4 => v4,
    }
}
