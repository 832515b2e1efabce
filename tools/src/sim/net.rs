//! The simulated network between the two nodes: connections that carry whole replication
//! frames in order, each after a delay drawn from the seed, and faults per direction. A
//! partition holds frames (as TCP retransmits them) until it heals or an end gives up on the
//! connection, and refuses new connections. On seeds that ask for them, frames are also
//! lost (the connection breaks, as when TCP cannot mask a loss), duplicated, reordered or
//! corrupted inside their records: a real TCP connection does none of the last three, and
//! the replication sessions must refuse a stream that does anyway, which is what they test.

use std::collections::BTreeMap;

use ringfence_core::prng::Prng;

/// A connection's id; ids are never reused.
pub type ConnId = u64;

/// One frame on its way.
#[derive(Clone, Debug)]
pub struct Packet {
    /// The connection it travels on.
    pub conn: ConnId,
    /// The receiving node.
    pub to: usize,
    /// One encoded replication frame.
    pub bytes: Vec<u8>,
    /// When it was sent (a frame a partition held: when it was released).
    pub sent_ms: u64,
}

/// How a connection's frames may go wrong, in parts per million of frames.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetFaults {
    /// Frames lost in a way TCP cannot mask (the connection breaks).
    pub drop_ppm: u64,
    /// Frames delivered twice.
    pub duplicate_ppm: u64,
    /// Frames held back behind later ones.
    pub reorder_ppm: u64,
    /// Frames with a record whose bytes were flipped (the record's checksum must catch it).
    pub corrupt_ppm: u64,
    /// The delay of a frame, in ms: uniform in this range.
    pub delay_ms: (u64, u64),
}

/// What the network did, for the report.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct NetCounts {
    /// Frames sent.
    pub frames: u64,
    /// Frames lost in a way TCP cannot mask: the connection broke.
    pub dropped: u64,
    /// Frames held by a partition and sent on when it healed.
    pub held: u64,
    /// Frames duplicated.
    pub duplicated: u64,
    /// Frames reordered.
    pub reordered: u64,
    /// Frames corrupted.
    pub corrupted: u64,
    /// Connections made.
    pub connections: u64,
    /// Frames on the wire when their sender crashed or stopped, which arrived all the same.
    pub outlived_sender: u64,
}

struct Conn {
    /// The two ends: the node that connected, the node that accepted.
    ends: [usize; 2],
    /// The latest delivery time scheduled towards each end: a connection delivers in order,
    /// as TCP does, unless a reorder fault says otherwise.
    last_at: [u64; 2],
    /// When each end sees the connection end: at once for the end that closed it, after the
    /// last frame already on its way for the other (TCP's FIN follows the data).
    eof_at: [Option<u64>; 2],
    /// An end closed it: frames sent towards that end are lost.
    closed_by: [bool; 2],
    /// Reset: everything in flight is lost and both ends see it at once (a frame lost in a way
    /// TCP cannot mask, or a crash on a network losing frames at crashes).
    reset: bool,
}

impl Conn {
    fn side(&self, node: usize) -> usize {
        assert!(self.ends.contains(&node), "a node that is not an end of the connection");
        usize::from(self.ends[1] == node)
    }
}

/// A frame held by a partition: its connection and bytes.
type Parked = (ConnId, Vec<u8>);

/// The network of a two-node cluster.
pub struct Network {
    prng: Prng,
    faults: NetFaults,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: ConnId,
    /// Frames in flight by delivery time, then send order.
    in_flight: BTreeMap<(u64, u64), Packet>,
    next_order: u64,
    /// `blocked[from][to]`: frames from `from` to `to` are lost.
    blocked: [[bool; 2]; 2],
    /// Connections opened and not yet handed to the accepting node.
    opened: Vec<(ConnId, usize)>,
    /// `parked[from][to]`: frames sent while that direction was blocked, in order.
    parked: [[Vec<Parked>; 2]; 2],
    counts: NetCounts,
    /// A node's end resets its connections, losing their frames in flight.
    frames_lost_at_crash: bool,
}

impl Network {
    /// A healthy network with the given fault rates.
    pub fn new(prng: Prng, faults: NetFaults) -> Network {
        assert!(faults.delay_ms.0 <= faults.delay_ms.1, "a delay range upside down");
        Network {
            prng,
            faults,
            conns: BTreeMap::new(),
            next_conn: 1,
            in_flight: BTreeMap::new(),
            next_order: 0,
            blocked: [[false; 2]; 2],
            opened: Vec::new(),
            parked: Default::default(),
            counts: NetCounts::default(),
            frames_lost_at_crash: false,
        }
    }

    /// Opens a connection from `client` to `server` if both directions are open; `None` is a
    /// connection refused or timed out.
    pub fn connect(&mut self, client: usize, server: usize) -> Option<ConnId> {
        assert_ne!(client, server, "a node connects to the other node");
        if self.blocked[client][server] || self.blocked[server][client] {
            return None;
        }
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                ends: [client, server],
                last_at: [0; 2],
                eof_at: [None; 2],
                closed_by: [false; 2],
                reset: false,
            },
        );
        self.opened.push((id, server));
        self.counts.connections += 1;
        Some(id)
    }

    /// Connections opened since the last call, with the node that accepts each.
    pub fn take_opened(&mut self) -> Vec<(ConnId, usize)> {
        std::mem::take(&mut self.opened)
    }

    /// Whether `node`'s end of `conn` is open at `now_ms`.
    pub fn is_open(&self, conn: ConnId, node: usize, now_ms: u64) -> bool {
        self.conns.get(&conn).is_some_and(|c| {
            let side = c.side(node);
            !c.reset && !c.closed_by[side] && c.eof_at[side].is_none_or(|at| now_ms < at)
        })
    }

    /// `node` closes its end of `conn` at `now_ms`: what it sent before still arrives, then
    /// the peer sees the end; nothing more reaches `node`.
    pub fn close(&mut self, conn: ConnId, node: usize, now_ms: u64) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let side = c.side(node);
        if c.closed_by[side] {
            return;
        }
        c.closed_by[side] = true;
        c.eof_at[side] = Some(now_ms);
        let peer = side ^ 1;
        let eof = now_ms.max(c.last_at[peer]) + 1;
        c.eof_at[peer] = Some(c.eof_at[peer].map_or(eof, |at| at.min(eof)));
    }

    /// `node`'s process ended (a crash, a power loss or a clean stop): every connection it had
    /// ends with it. Frames it sent that are on the wire still arrive, and then its peer sees
    /// the end, as after a close: the process, even the machine, is gone, not the frames its
    /// network card already sent. Frames a partition held were still the sender's kernel's, to
    /// retransmit, and are lost with it, as is everything on its way to it. A process that
    /// died `mid_step` (at a sync point) sent nothing after it: its frames of this millisecond
    /// are lost too, those it sent before and after the sync alike. A network built by
    /// [`Network::losing_frames_at_crash`] resets every such connection instead: nothing in
    /// flight arrives.
    pub fn end_node(&mut self, node: usize, now_ms: u64, mid_step: bool) {
        let ended: Vec<ConnId> =
            self.conns.iter().filter(|(_, c)| c.ends.contains(&node)).map(|(id, _)| *id).collect();
        if self.frames_lost_at_crash {
            for conn in ended {
                self.conns.get_mut(&conn).expect("listed above").reset = true;
            }
            return;
        }
        if mid_step {
            self.in_flight
                .retain(|_, p| p.sent_ms != now_ms || p.to == node || !ended.contains(&p.conn));
        }
        let on_the_wire =
            self.in_flight.values().filter(|p| p.to != node && ended.contains(&p.conn));
        self.counts.outlived_sender += on_the_wire.count() as u64;
        for conn in ended {
            self.close(conn, node, now_ms);
        }
        for parked in &mut self.parked[node] {
            parked.clear();
        }
    }

    /// A network on which a crash loses the frames its node had in flight (see
    /// [`Network::end_node`]): as simulated before frames outlived their sender, for a seed
    /// found then.
    #[must_use]
    pub fn losing_frames_at_crash(mut self) -> Network {
        self.frames_lost_at_crash = true;
        self
    }

    /// Blocks (or heals) the direction `from` → `to` at `now_ms`. Frames sent while it was
    /// blocked were held, as TCP retransmits them: on healing they leave, in order.
    pub fn set_blocked(&mut self, from: usize, to: usize, blocked: bool, now_ms: u64) {
        self.blocked[from][to] = blocked;
        if !blocked {
            for (conn, bytes) in std::mem::take(&mut self.parked[from][to]) {
                self.schedule(conn, from, bytes, now_ms, false);
            }
        }
    }

    /// Heals every partition and stops the frame faults (the end of a run's fault period).
    pub fn heal(&mut self, now_ms: u64) {
        for (from, to) in [(0, 1), (1, 0)] {
            self.set_blocked(from, to, false, now_ms);
        }
        self.faults = NetFaults { delay_ms: self.faults.delay_ms, ..NetFaults::default() };
    }

    /// Sends one frame on `conn` from `from`, at `now_ms`.
    pub fn send(&mut self, conn: ConnId, from: usize, mut bytes: Vec<u8>, now_ms: u64) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let to = c.ends[c.side(from) ^ 1];
        self.counts.frames += 1;
        if c.reset || c.closed_by[0] || c.closed_by[1] {
            return;
        }
        let faults = self.faults;
        if faults.drop_ppm > 0 && self.prng.chance(faults.drop_ppm, 1_000_000) {
            // A loss TCP cannot mask ends the connection; both ends see it break.
            self.counts.dropped += 1;
            self.conns.get_mut(&conn).expect("looked up above").reset = true;
            return;
        }
        if self.ppm(faults.corrupt_ppm) && corrupt_records(&mut self.prng, &mut bytes) {
            self.counts.corrupted += 1;
        }
        if self.blocked[from][to] {
            self.counts.held += 1;
            self.parked[from][to].push((conn, bytes));
            return;
        }
        let copies = if self.ppm(faults.duplicate_ppm) { 2 } else { 1 };
        self.counts.duplicated += copies - 1;
        for _ in 1..copies {
            self.schedule(conn, from, bytes.clone(), now_ms, true);
        }
        self.schedule(conn, from, bytes, now_ms, true);
    }

    /// Puts a frame in flight after the network's delay, behind the connection's earlier
    /// frames unless a reorder fault (`faults`) holds it back.
    fn schedule(&mut self, conn: ConnId, from: usize, bytes: Vec<u8>, now_ms: u64, faults: bool) {
        let Some(c) = self.conns.get(&conn) else { return };
        let side = c.side(from) ^ 1;
        let (to, fifo_at) = (c.ends[side], c.last_at[side]);
        let (low, high) = self.faults.delay_ms;
        let mut at = (now_ms + self.prng.range_inclusive(low, high)).max(fifo_at);
        if faults && self.ppm(self.faults.reorder_ppm) {
            self.counts.reordered += 1;
            at += high * 4 + 1;
        } else if let Some(c) = self.conns.get_mut(&conn) {
            c.last_at[side] = at;
        }
        let order = self.next_order;
        self.next_order += 1;
        self.in_flight.insert((at, order), Packet { conn, to, bytes, sent_ms: now_ms });
    }

    /// Takes every frame due by `now_ms` that its receiver can still read, in delivery order.
    pub fn due(&mut self, now_ms: u64) -> Vec<Packet> {
        let later = self.in_flight.split_off(&(now_ms + 1, 0));
        let due = std::mem::replace(&mut self.in_flight, later);
        due.into_values().filter(|p| self.readable(p)).collect()
    }

    /// Whether `packet`'s receiver can read it: not after a reset, nor once it closed its end.
    pub fn readable(&self, packet: &Packet) -> bool {
        self.conns.get(&packet.conn).is_some_and(|c| !c.reset && !c.closed_by[c.side(packet.to)])
    }

    /// What the network did.
    pub fn counts(&self) -> NetCounts {
        self.counts
    }

    fn ppm(&mut self, rate: u64) -> bool {
        rate > 0 && self.prng.chance(rate, 1_000_000)
    }
}

/// Flips one bit inside the records of a `Records` frame (kind 6); whether it did.
fn corrupt_records(prng: &mut Prng, bytes: &mut [u8]) -> bool {
    // Frame: len (4), kind (1), then the body: first sequence (8), count (4), records.
    const RECORDS_AT: usize = 4 + 1 + 8 + 4;
    if bytes.len() <= RECORDS_AT || bytes[4] != 6 {
        return false;
    }
    let at = RECORDS_AT + prng.below((bytes.len() - RECORDS_AT) as u64) as usize;
    bytes[at] ^= 1 << prng.below(8);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network() -> Network {
        Network::new(Prng::new(1), NetFaults { delay_ms: (5, 5), ..NetFaults::default() })
    }

    #[test]
    fn frames_on_the_wire_outlive_their_crashed_sender_and_nothing_reaches_it() {
        // Goal: when a node's process ends, what it already sent arrives and then its peer
        // sees the end; what was on its way to it, and what a partition held back from it,
        // never arrives; a network losing frames at crashes delivers neither.
        for losing in [false, true] {
            let mut net = if losing { network().losing_frames_at_crash() } else { network() };
            let conn = net.connect(0, 1).expect("no partition");
            net.send(conn, 0, b"sent".to_vec(), 0);
            net.send(conn, 1, b"to the dead".to_vec(), 0);
            net.set_blocked(0, 1, true, 1);
            net.send(conn, 0, b"held".to_vec(), 1);
            net.end_node(0, 2, false);
            net.set_blocked(0, 1, false, 3);
            let due: Vec<Vec<u8>> = net.due(100).into_iter().map(|p| p.bytes).collect();
            let expected: Vec<Vec<u8>> = if losing { vec![] } else { vec![b"sent".to_vec()] };
            assert_eq!(due, expected, "losing: {losing}");
            assert_eq!(net.counts().outlived_sender, u64::from(!losing));
            // The peer sees the end once the frame has arrived (at 5), not before.
            assert_eq!(net.is_open(conn, 1, 4), !losing);
            assert!(!net.is_open(conn, 1, 7));
        }
    }

    #[test]
    fn a_process_that_died_at_a_sync_point_sent_nothing_in_its_last_millisecond() {
        // Goal: a crash at a sync point ends the process there, so the frames its step sent
        // (an acknowledgement of what the crash then lost, say) never leave; what it sent in
        // earlier steps is on the wire and arrives.
        let mut net = network();
        let conn = net.connect(0, 1).expect("no partition");
        net.send(conn, 0, b"earlier".to_vec(), 1);
        net.send(conn, 0, b"last step".to_vec(), 2);
        net.end_node(0, 2, true);
        let due: Vec<Vec<u8>> = net.due(100).into_iter().map(|p| p.bytes).collect();
        assert_eq!(due, vec![b"earlier".to_vec()]);
    }
}
