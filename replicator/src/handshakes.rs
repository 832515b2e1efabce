//! The primary's handshakes in progress, at most `handshakes_max`, and which one gives way
//! when a connection arrives and they are all taken.
//!
//! A peer that never proves it holds the cluster secret holds a slot until the handshake's
//! deadline, and may open another connection the moment that one is closed. Turning every
//! connection beyond the limit away let such a peer keep every slot, and so the standby, out
//! for as long as it went on. Instead one source address (IPv6: one /64, as the client ports
//! count addresses) holds at most half the slots in handshakes that have not proved the
//! secret ([`per_address_max`]); a connection beyond that
//! closes its own address's oldest, and a connection that finds every slot taken closes the
//! oldest of the address holding the most. A peer at one address then only ever closes its own
//! handshakes, and a standby at another address always finds a slot. Peers at many addresses
//! at once can still crowd it out: the replication port belongs on the pair's own network.
//!
//! A handshake that proved the secret (a snapshot transfer keeps its slot while it runs) never
//! gives way: only a node of the cluster holds it. Nor does one held for less than a tenth of
//! the handshake's timeout: the newcomer is then refused at once, as every connection beyond
//! the limit used to be. A standby's handshake takes milliseconds, so a peer reconnecting from
//! its address as fast as it can does not cut it short; and such a peer gets a handshake (a
//! thread) only as often as one of its own ripens, not at every connection. The choice is
//! [`admit`], pure; [`Handshakes`] keeps the table and closes the handshake that gives way.

use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};

use ringfence_core::address::address_key;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A handshake in progress, as [`admit`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    /// The peer's address, as its budget counts it (`address_key`: an IPv6 address's /64, as
    /// the client ports count it).
    pub from: IpAddr,
    /// Whether the peer proved it holds the cluster secret.
    pub proven: bool,
    /// Whether it has been held long enough to give way (a tenth of the handshake timeout).
    pub ripe: bool,
}

/// What becomes of a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// It takes a free slot.
    Take,
    /// The handshake at this index (of those held, oldest first) is closed, and the new
    /// connection takes its slot.
    Replace(usize),
    /// No handshake may give way (every slot held by a peer that proved the secret, or the
    /// one that would give way too young): it is closed.
    Refuse,
}

/// Handshakes one address may hold at once before proving the secret: half of `slots`,
/// rounded up, at least 1. With two slots or more that leaves another address a slot.
#[must_use]
pub(crate) fn per_address_max(slots: usize) -> usize {
    slots.div_ceil(2).max(1)
}

/// What becomes of a new connection from `from` when `held` (oldest first) are in progress,
/// of `slots` at most. A victim is always an unproven handshake: the oldest of `from`'s when
/// `from` holds its share; otherwise, with every slot taken, the oldest of those of the
/// address holding the most (of several holding as many, the one whose oldest is oldest: a
/// real standby's handshake takes milliseconds, so the longest held is the likeliest idle).
/// The victim must be ripe, or the newcomer is refused. Quadratic in `slots`, a handful.
#[must_use]
pub(crate) fn admit(held: &[Held], from: IpAddr, slots: usize) -> Admission {
    assert!(held.len() <= slots, "more handshakes than slots");
    let unproven = |address: IpAddr| {
        held.iter().filter(|handshake| !handshake.proven && handshake.from == address).count()
    };
    let victim = if unproven(from) >= per_address_max(slots) {
        let oldest = held.iter().position(|handshake| !handshake.proven && handshake.from == from);
        oldest.expect("the address holds its share")
    } else if held.len() < slots {
        return Admission::Take;
    } else {
        let unproven_of = |handshake: &Held| (!handshake.proven).then(|| unproven(handshake.from));
        let Some(most) = held.iter().filter_map(unproven_of).max() else {
            return Admission::Refuse;
        };
        let oldest = held.iter().position(|handshake| unproven_of(handshake) == Some(most));
        oldest.expect("an address holds the most")
    };
    if held[victim].ripe { Admission::Replace(victim) } else { Admission::Refuse }
}

/// The handshakes in progress, shared by the listener and the handshake threads.
pub(crate) struct Handshakes {
    slots: usize,
    /// How long a handshake is held before it may give way.
    ripe_after: Duration,
    table: Mutex<Table>,
}

struct Table {
    /// The next handshake's id: ids rise in accept order.
    next_id: u64,
    /// Oldest first.
    entries: Vec<Entry>,
}

struct Entry {
    id: u64,
    peer: SocketAddr,
    accepted: Instant,
    proven: bool,
    /// A clone of the connection, to close it when it gives way: the blocking read of its
    /// handshake thread then ends at once.
    socket: TcpStream,
    /// Set when it gave way, before it is closed: its thread then says nothing more of it.
    gave_way: Arc<AtomicBool>,
}

/// A handshake that gave way to a new connection.
#[derive(Debug)]
pub(crate) struct GaveWay {
    /// Its peer.
    pub peer: SocketAddr,
    /// How long it had been held.
    pub held: Duration,
}

impl Handshakes {
    /// No handshake in progress, of `slots` at most, each giving way to a new connection only
    /// once held for `ripe_after`.
    pub(crate) fn new(slots: usize, ripe_after: Duration) -> Arc<Handshakes> {
        let table = Table { next_id: 0, entries: Vec::with_capacity(slots) };
        Arc::new(Handshakes { slots, ripe_after, table: Mutex::new(table) })
    }

    /// A slot for the connection from `peer` accepted at `now`, of which `socket` is a clone,
    /// and the handshake that gave way to it, closed already, if one did; `None` if every slot
    /// is held by a peer that proved the secret or the one that would give way is not yet
    /// ripe. The one that gave way leaves the table here,
    /// not when its thread notices, so the table never holds more than `slots`.
    pub(crate) fn admit(
        self: &Arc<Self>,
        peer: SocketAddr,
        socket: TcpStream,
        now: Instant,
    ) -> Option<(HandshakeSlot, Option<GaveWay>)> {
        let mut table = self.lock();
        let held: Vec<Held> = table
            .entries
            .iter()
            .map(|entry| Held {
                from: address_key(entry.peer.ip()),
                proven: entry.proven,
                ripe: now.saturating_duration_since(entry.accepted) >= self.ripe_after,
            })
            .collect();
        let gave_way = match admit(&held, address_key(peer.ip()), self.slots) {
            Admission::Refuse => return None,
            Admission::Take => None,
            Admission::Replace(index) => {
                let victim = table.entries.remove(index);
                assert!(!victim.proven, "a proven handshake never gives way");
                victim.gave_way.store(true, Ordering::Release);
                let _ = victim.socket.shutdown(Shutdown::Both);
                let held = now.saturating_duration_since(victim.accepted);
                Some(GaveWay { peer: victim.peer, held })
            }
        };
        let id = table.next_id;
        table.next_id += 1;
        let flag = Arc::new(AtomicBool::new(false));
        let gave_way_flag = Arc::clone(&flag);
        let entry = Entry { id, peer, accepted: now, proven: false, socket, gave_way: flag };
        table.entries.push(entry);
        assert!(table.entries.len() <= self.slots, "more handshakes than slots");
        let slot = HandshakeSlot { handshakes: Arc::clone(self), id, gave_way: gave_way_flag };
        Some((slot, gave_way))
    }

    /// Handshakes in progress.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().expect("the handshake table's lock is never poisoned")
    }
}

/// One of the `handshakes_max` handshakes served at once, given back when dropped (when the
/// handshake ends, or when it turns into a stream).
pub(crate) struct HandshakeSlot {
    handshakes: Arc<Handshakes>,
    id: u64,
    gave_way: Arc<AtomicBool>,
}

impl HandshakeSlot {
    /// The peer proved it holds the secret: its handshake no longer gives way. Fails if it
    /// already had (its connection is closed, and it was counted then).
    pub(crate) fn prove(&self) -> Result<(), &'static str> {
        let mut table = self.handshakes.lock();
        let entry = table.entries.iter_mut().find(|entry| entry.id == self.id);
        let proven = entry.map(|entry| entry.proven = true);
        proven.ok_or("the handshake gave way to a new connection")
    }

    /// Set once this handshake gave way to a new connection (and was counted so).
    pub(crate) fn gave_way(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.gave_way)
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut table = self.handshakes.lock();
        let index = table.entries.iter().position(|entry| entry.id == self.id);
        match index {
            Some(index) => drop(table.entries.remove(index)),
            None => assert!(self.gave_way.load(Ordering::Acquire), "a slot given back twice"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    fn unproven(n: u8) -> Held {
        Held { from: address(n), proven: false, ripe: true }
    }

    fn young(n: u8) -> Held {
        Held { from: address(n), proven: false, ripe: false }
    }

    fn proven(n: u8) -> Held {
        Held { from: address(n), proven: true, ripe: true }
    }

    #[test]
    fn one_address_at_its_share_closes_its_own_oldest_even_with_slots_free() {
        // Goal: a peer reconnecting from one address cycles through its own share of the
        // slots; the other slots stay free for other addresses.
        let held = [unproven(2), unproven(1), unproven(2)];
        assert_eq!(admit(&held, address(2), 4), Admission::Replace(0));
        assert_eq!(admit(&held, address(1), 4), Admission::Take);
        assert_eq!(admit(&held, address(3), 4), Admission::Take);
        assert_eq!(per_address_max(4), 2);
        assert_eq!(per_address_max(3), 2);
        assert_eq!(per_address_max(1), 1);
        assert_eq!(per_address_max(0), 1);
    }

    #[test]
    fn with_every_slot_taken_the_address_holding_the_most_gives_way() {
        // Goal: a newcomer finding the slots full closes the oldest handshake of the address
        // holding the most unproven ones; of addresses holding as many, the one holding the
        // oldest.
        let held = [unproven(1), unproven(2), unproven(3), unproven(3)];
        assert_eq!(admit(&held, address(4), 4), Admission::Replace(2));
        assert_eq!(admit(&held, address(1), 4), Admission::Replace(2));
        let tied = [unproven(1), unproven(2), unproven(2), unproven(1)];
        assert_eq!(admit(&tied, address(3), 4), Admission::Replace(0));
    }

    #[test]
    fn a_proven_handshake_never_gives_way_and_all_proven_refuse() {
        // Goal: a handshake that proved the secret (a snapshot transfer) keeps its slot: with
        // every slot proven the newcomer is refused, and beside unproven ones it is passed over
        // however old it is and whoever holds it.
        let all = [proven(1), proven(2), proven(2), proven(1)];
        assert_eq!(admit(&all, address(1), 4), Admission::Refuse);
        let held = [proven(2), unproven(1), unproven(2), unproven(2)];
        assert_eq!(admit(&held, address(2), 4), Admission::Replace(2));
        assert_eq!(admit(&held, address(3), 4), Admission::Replace(2));
    }

    #[test]
    fn a_handshake_too_young_to_give_way_refuses_the_newcomer() {
        // Goal: the handshake that would give way, held for less than its ripening time, is
        // kept and the newcomer refused: at its address's share, and with every slot taken.
        let held = [young(2), unproven(2), unproven(1)];
        assert_eq!(admit(&held, address(2), 4), Admission::Refuse, "its own oldest is young");
        assert_eq!(admit(&held, address(3), 4), Admission::Take, "a free slot is still free");
        let full = [young(3), unproven(1), young(3), unproven(2)];
        assert_eq!(admit(&full, address(4), 4), Admission::Refuse, "address 3's oldest is young");
        let full = [unproven(3), unproven(1), young(3), unproven(2)];
        assert_eq!(admit(&full, address(4), 4), Admission::Replace(0));
    }

    /// Every table of `len` handshakes from addresses 1..=3, proven or not, ripe or not, oldest
    /// first.
    fn tables(len: usize) -> Vec<Vec<Held>> {
        let kinds: Vec<Held> = (1..=3).flat_map(|n| [unproven(n), young(n), proven(n)]).collect();
        let mut tables = vec![Vec::new()];
        for _ in 0..len {
            tables = tables
                .into_iter()
                .flat_map(|table| {
                    kinds.iter().map(move |&kind| {
                        let mut longer = table.clone();
                        longer.push(kind);
                        longer
                    })
                })
                .collect();
        }
        tables
    }

    #[test]
    fn every_table_keeps_the_limits_and_one_address_never_closes_anothers_handshake() {
        // Goal: over every table of up to five slots and three addresses, checked against the
        // rules stated plainly: the count never passes the slots; a proven or young handshake
        // never gives way; an address at its share closes only its own; an address below its
        // share takes a free slot when there is one; a refusal has no ripe handshake it could
        // have closed instead; and so a lone peer address never closes another address's
        // handshake. The counts prove every outcome was reached.
        let mut seen = [0u32; 3];
        for slots in 0..=5 {
            for len in 0..=slots {
                for table in tables(len) {
                    for n in 1..=3 {
                        let from = address(n);
                        let share = |a| table.iter().filter(|h| !h.proven && h.from == a).count();
                        let outcome = admit(&table, from, slots);
                        let at_share = share(from) >= per_address_max(slots);
                        match outcome {
                            Admission::Take => {
                                seen[0] += 1;
                                assert!(table.len() < slots && !at_share, "{table:?} {n}");
                            }
                            Admission::Replace(index) => {
                                seen[1] += 1;
                                let victim = table[index];
                                assert!(!victim.proven, "{table:?} {n}: a proven one gave way");
                                assert!(victim.ripe, "{table:?} {n}: a young one gave way");
                                assert!(at_share || table.len() == slots, "{table:?} {n}");
                                if at_share {
                                    assert_eq!(victim.from, from, "{table:?} {n}");
                                }
                                let most = table.iter().map(|h| share(h.from)).max();
                                assert!(at_share || Some(share(victim.from)) == most);
                            }
                            Admission::Refuse => {
                                seen[2] += 1;
                                assert!(at_share || table.len() == slots, "{table:?} {n}");
                                // The one that would give way: `from`'s oldest at its share,
                                // else the oldest of the addresses holding the most.
                                let most = table.iter().map(|h| share(h.from)).max().unwrap_or(0);
                                let candidate = table.iter().find(|h| {
                                    !h.proven
                                        && if at_share {
                                            h.from == from
                                        } else {
                                            share(h.from) == most
                                        }
                                });
                                assert!(candidate.is_none_or(|h| !h.ripe), "{table:?} {n}");
                            }
                        }
                    }
                }
            }
        }
        assert!(seen.iter().all(|&count| count > 0), "{seen:?}");
    }

    #[test]
    fn one_address_reconnecting_forever_never_closes_a_standby_at_another() {
        // Goal: the audit's attack, played out on the pure choice, for every slot count of two
        // or more: one address opens a connection every millisecond, a thousand times, each
        // handshake ripe after 10. Throughout, a standby arriving from another address takes a
        // free slot, one already in its handshake never gives way, and the peer gets a new
        // handshake only as often as one of its own ripens.
        const RIPE_MS: u64 = 10;
        for slots in 2..=6 {
            for standby_in in [false, true] {
                let (peer, standby) = (address(2), address(1));
                // (address, accepted at ms), oldest first.
                let mut held: Vec<(IpAddr, u64)> = Vec::new();
                if standby_in {
                    held.push((standby, 0));
                }
                let mut taken = 0;
                for now in 0..1_000 {
                    let table: Vec<Held> = (held.iter())
                        .map(|&(from, at)| Held { from, proven: false, ripe: now - at >= RIPE_MS })
                        .collect();
                    match admit(&table, peer, slots) {
                        Admission::Take => {}
                        Admission::Replace(index) => {
                            assert_eq!(held[index].0, peer, "{slots} slots: the standby gave way");
                            held.remove(index);
                        }
                        Admission::Refuse => continue,
                    }
                    taken += 1;
                    held.push((peer, now));
                    if !standby_in {
                        let table: Vec<Held> = (held.iter())
                            .map(|&(from, _)| Held { from, proven: false, ripe: true })
                            .collect();
                        assert_eq!(admit(&table, standby, slots), Admission::Take, "{slots} slots");
                    }
                }
                assert_eq!(held.iter().any(|&(from, _)| from == standby), standby_in);
                let share = per_address_max(slots) as u64;
                assert!(taken <= share + 1_000 / RIPE_MS * share, "{slots} slots: {taken} taken");
            }
        }
    }

    #[test]
    fn addresses_of_one_ipv6_64_share_one_address_share_of_the_slots() {
        // Goal: a peer holding an IPv6 /64 counts as one address, as on the client ports: its
        // third handshake from another address of the block closes its own oldest, though
        // slots are free, and an address of the next /64 takes a free slot.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let handshakes = Handshakes::new(4, Duration::from_millis(5));
        let now = Instant::now();
        let admit_from = |peer: &str, at: Instant| {
            let _client = TcpStream::connect(target).unwrap();
            let (accepted, _) = listener.accept().unwrap();
            let peer: SocketAddr = peer.parse().unwrap();
            handshakes.admit(peer, accepted, at)
        };
        let first = admit_from("[2001:db8::1]:5000", now).expect("a free slot");
        let second = admit_from("[2001:db8::2]:5000", now).expect("a free slot");
        assert!(first.1.is_none() && second.1.is_none());
        let ripe = now + Duration::from_millis(6);
        let (_third, gave_way) = admit_from("[2001:db8::3]:5000", ripe).expect("its own oldest");
        let gave_way = gave_way.expect("the block was at its share");
        assert_eq!(gave_way.peer, "[2001:db8::1]:5000".parse().unwrap());
        let (_other, gave_way) = admit_from("[2001:db8:0:1::1]:5000", ripe).expect("a slot");
        assert!(gave_way.is_none(), "another /64 closed a handshake: {gave_way:?}");
        assert_eq!(handshakes.len(), 3);
    }

    #[test]
    fn the_table_closes_the_handshake_that_gives_way_and_forgets_it_at_once() {
        // Goal: the handshake chosen gives way at once: its connection is closed (its peer
        // reads the end), it leaves the table before the newcomer enters (the table never
        // holds more than its slots), its slot says so, and giving that slot back later is no
        // second release.
        use std::io::Read as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let handshakes = Handshakes::new(1, Duration::from_millis(5));
        let now = Instant::now();
        let mut first = TcpStream::connect(target).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        let (slot, gave_way) = handshakes.admit(peer, accepted, now).expect("a free slot");
        assert!(gave_way.is_none());
        let _second = TcpStream::connect(target).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        let later = now + Duration::from_millis(7);
        let (newer, gave_way) = handshakes.admit(peer, accepted, later).expect("gave way");
        let gave_way = gave_way.expect("the first gave way");
        assert_eq!(gave_way.held, Duration::from_millis(7));
        assert_eq!(handshakes.len(), 1);
        assert!(slot.gave_way().load(Ordering::Acquire));
        assert!(slot.prove().is_err(), "a handshake that gave way cannot be proven");
        first.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        assert_eq!(first.read(&mut [0u8; 1]).unwrap(), 0, "the connection was not closed");
        drop(slot);
        assert_eq!(handshakes.len(), 1, "the newer handshake was given back with the older");
        assert_eq!(newer.prove(), Ok(()));
        drop(newer);
        assert_eq!(handshakes.len(), 0);
    }
}
