//! The simulator's checkers: what must hold after every step, and what must hold at the end,
//! once the faults stopped and the pair had time to converge.

use std::collections::BTreeMap;

use ringfence_core::{
    Command, Engine, Epoch, OrderState, Outcome, Query, Sequence, Sequenced, SkuId, UserId,
};

use super::clients::{Answer, HOT, HOT_LIMIT, Ledger};
use super::machine::{ClusterSettings, Machine, journal_records};

/// After every step: every node's BLP kept every SKU's units balanced, and every standby
/// acknowledged only records its journal held durably (under its durability) when it did: a
/// primary's answer in `sync` mode rests on that acknowledgement.
pub fn every_step(machines: &[Machine]) -> Result<(), String> {
    for machine in machines {
        if let Some((acknowledged, durable)) = machine.acknowledged_unheld {
            return Err(format!(
                "{}: the standby acknowledged record {acknowledged} with its journal durable \
                 through {durable} only",
                machine.name
            ));
        }
        let observed = machine.observed.lock().expect("never poisoned");
        if let Some(unbalanced) = &observed.unbalanced {
            return Err(format!("{}: stock out of balance {unbalanced}", machine.name));
        }
    }
    Ok(())
}

/// Every record seen held durably on any machine, by sequence and epoch: a sequence and an
/// epoch name one record on every node at every time. That is what lets a downstream loader
/// resume after the record it last loaded (`replay --after-seq N --after-epoch E`): if this
/// journal's record N is of epoch E, it is the loader's record N. Records not yet durable are
/// left out, as the README asks a loader to leave them: a power cut may take them, and the
/// node's next run writes others in their place.
#[derive(Debug, Default)]
pub struct DurableRecords {
    /// (sequence, epoch) → the record's bytes, and the machine it was first seen on.
    seen: BTreeMap<(u64, u64), (String, Vec<u8>)>,
}

impl DurableRecords {
    /// Notes `records`, whole journal records as `node` holds them: refused if one names a
    /// sequence and an epoch seen before with other bytes.
    pub fn note(&mut self, node: &str, records: &[Vec<u8>]) -> Result<(), String> {
        for record in records {
            let (header, len) = ringfence_core::record::check(record).map_err(|e| {
                format!("{node}: a journal record read back fails its check: {e:?}")
            })?;
            assert_eq!(len, record.len(), "one whole record");
            let key = (header.sequence.0, header.epoch.0);
            match self.seen.get(&key) {
                Some((first, bytes)) if bytes != record => {
                    return Err(format!(
                        "{node} holds durably a record {} of epoch {} other than the one {first} \
                         held durably: a sequence and an epoch name two records",
                        key.0, key.1
                    ));
                }
                Some(_) => {}
                None => {
                    self.seen.insert(key, (node.to_owned(), record.clone()));
                }
            }
        }
        Ok(())
    }

    /// Records noted.
    pub fn len(&self) -> usize {
        self.seen.len()
    }
}

/// Checks that every snapshot on each machine's disk carries an epoch history that names,
/// for each record of its journal it covers, the epoch that record has: what a standby whose
/// journal the snapshot replaces trusts to tell which of its records were never the
/// primary's. It covers every record of its journal the snapshot includes, from the first the
/// journal holds: its writers had those, and a history is left unknown only where records
/// were missing, never lost. A snapshot or journal that does not read is the other checkers'
/// to judge. Returns how many records were compared.
pub fn epoch_histories(machines: &[Machine]) -> Result<u64, String> {
    use ringfence_journal::history::EpochHistory;
    use ringfence_journal::{snapshot, tail};
    let mut compared = 0;
    for machine in machines {
        let mut disk = machine.disk.clone();
        // The first record the journal holds: where each snapshot's history is compared from.
        let segments = ringfence_journal::scan::sorted_segments(&disk).unwrap_or_default();
        let Some(&(from, _)) = segments.first() else { continue };
        for (through, name) in snapshot::list(&disk).unwrap_or_default() {
            let Ok(meta) = snapshot::read_meta_streaming(&disk, &name) else { continue };
            // The journal's own history over the records it holds that the snapshot covers.
            let mut held = EpochHistory::default();
            let Ok(Some(last)) = tail::note_epochs(&mut disk, from, through, &mut held) else {
                continue;
            };
            let ends = held.starts().iter().enumerate().map(|(i, &(epoch, start))| {
                let end = held.starts().get(i + 1).map_or(last, |&(_, next)| Sequence(next.0 - 1));
                (epoch, start, end)
            });
            for (epoch, start, end) in ends {
                for at in [start, end] {
                    if meta.history.epoch_at(at) != Some(epoch) {
                        let named = meta.history.epoch_at(at);
                        return Err(format!(
                            "{}: snapshot {name}'s epoch history names {} for record {at}, which \
                             its journal holds in epoch {epoch}",
                            machine.name,
                            named.map_or("no epoch".to_owned(), |e| format!("epoch {e}"))
                        ));
                    }
                }
                compared += end.0 - start.0 + 1;
            }
        }
    }
    Ok(compared)
}

/// Notes what each machine's disk holds durably (what a power cut now would leave), up to
/// any damage: bit rot and torn tails are the other checkers' to judge.
pub fn durable_records(machines: &[Machine], seen: &mut DurableRecords) -> Result<(), String> {
    for machine in machines {
        let (durable, Some(layout)) = machine.durable_journal() else { continue };
        let (Some(first), Some(last)) = (layout.first_sequence(), layout.last_sequence()) else {
            continue;
        };
        // Read as a downstream loader would; a read that fails (a segment retired under it)
        // is left to the next look.
        if let Ok(records) = journal_records(&durable, first, last) {
            seen.note(&machine.name, &records)?;
        }
    }
    Ok(())
}

/// Backups taken by the checker ([`backup`]).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct BackupCounts {
    /// Copies that recovered as their directory does.
    pub taken: u64,
    /// Directories a backup refused where their own recovery refuses too, or finishes a
    /// repair cut off part way (which a backup leaves to it).
    pub refused: u64,
}

/// Every so often: `journal backup` of a machine's data directory, as it is between two
/// steps, recovers to what a recovery of the directory itself reaches (the same next sequence
/// and state digest); a backup is refused only where that recovery refuses too, where a
/// repair cut off part way is under way, or where the directory holds no journal yet.
pub fn backup(
    machine: &Machine,
    settings: &ClusterSettings,
    counts: &mut BackupCounts,
) -> Result<(), String> {
    use ringfence_journal::{backup, recovery};
    let options = Machine::options(settings);
    let own = recovery::recover_from(machine.disk.process_crash(), options.clone());
    let copy = ringfence_journal::fault::FaultStorage::new();
    let backed = backup::backup_still(&mut machine.disk.process_crash(), &copy);
    let name = &machine.name;
    match (own, backed) {
        (Ok(own), Ok(copied)) => {
            let restored = recovery::recover_from(copy, options)
                .map_err(|e| format!("{name}: a backup ({copied:?}) does not recover: {e}"))?;
            let reached = |r: &recovery::Recovered<_>| (r.next_sequence, r.engine.state_digest());
            if reached(&restored) != reached(&own) {
                return Err(format!(
                    "{name}: a backup recovers to {:?}, its directory to {:?} ({copied:?})",
                    reached(&restored),
                    reached(&own)
                ));
            }
            counts.taken += 1;
        }
        (Err(_), Err(_)) => counts.refused += 1,
        (Ok(own), Err(refused)) => {
            let why = refused.to_string();
            let expected = (own.report.initialised && why.contains("holds no journal"))
                || why.contains("is under way");
            if !expected {
                return Err(format!("{name}: a backup is refused ({why}), but it recovers"));
            }
            counts.refused += 1;
        }
        (Err(error), Ok(copied)) => {
            return Err(format!(
                "{name}: a backup is taken ({copied:?}), but the directory does not recover: \
                 {error}"
            ));
        }
    }
    Ok(())
}

/// At the end: the pair converged and serves writes; the journals agree byte for byte where
/// both still hold records, and their states hash the same; a recovery of the primary's disk
/// (its newest snapshot and the journal after it) reproduces its state, and so does a replay
/// of its whole journal when retention kept it all; every acknowledged write is in that state
/// with the outcome its client was given, but those acknowledged under `async` whose records a
/// failover replaced (how many, returned); limits held.
pub fn at_end(
    machines: &[Machine],
    ledger: &Ledger,
    settings: &ClusterSettings,
) -> Result<u64, String> {
    let (primary, standby) = converged(machines)?;
    let through = Sequence(primary.running().expect("converged").control.link().available());
    let read = |machine: &Machine, from: Sequence| {
        journal_records(&machine.disk, from, through)
            .map_err(|e| format!("{}: reading the journal: {e}", machine.name))
    };
    let (primary_from, standby_from) = (first_held(primary)?, first_held(standby)?);
    let from = primary_from.max(standby_from);
    let records = read(primary, primary_from)?;
    let skip = usize::try_from(from.0 - primary_from.0).expect("a journal's length fits");
    agree(records.get(skip..).unwrap_or_default(), &read(standby, from)?, from, through)?;
    hashes_agree(primary, standby, through)?;
    let observed = primary.observed.lock().expect("never poisoned").hashes.get(&through.0).copied();
    let differs = |engine: &Engine| observed.is_some_and(|hash| hash != engine.running_hash());
    let mut engine = recover(primary, settings)?;
    if engine.last_sequence() > Sequence(0) && differs(&engine) {
        return Err(format!("a recovery of the primary's disk hashes differently at {through}"));
    }
    // Orders for the limits: every reservation a client was told of, and, when the primary
    // still holds its whole journal, every one it made.
    let mut orders = ledger.reserved_orders();
    if primary_from == Sequence(1) {
        let (replayed, made) = replay(&records, settings)?;
        if through.0 > 0 && differs(&replayed) {
            return Err(format!(
                "a replay of the primary's journal hashes differently at {through}"
            ));
        }
        orders.extend(made);
    }
    orders.sort_unstable();
    orders.dedup();
    balanced(&engine, &settings.skus)?;
    limits_held(&engine, &orders)?;
    let epoch = primary.running().expect("converged").control.epoch();
    let held = Held { epoch, from: primary_from, records: &records };
    acknowledged_writes_hold(&mut engine, ledger, &held)
}

/// What the final primary's journal holds: its epoch now, and its records from `from`.
struct Held<'a> {
    epoch: Epoch,
    from: Sequence,
    records: &'a [Vec<u8>],
}

impl Held<'_> {
    /// Whether a failover replaced the record of `epoch` at `sequence`: the pair has moved to
    /// a later epoch, and the journal holds a record of another epoch there, or none yet. A
    /// record retired from the journal cannot be told; it counts as replaced.
    fn replaced(&self, sequence: Sequence, epoch: Epoch) -> bool {
        if epoch >= self.epoch {
            return false;
        }
        let Some(at) = sequence.0.checked_sub(self.from.0) else { return true };
        let Some(record) = usize::try_from(at).ok().and_then(|at| self.records.get(at)) else {
            return true;
        };
        let (header, _) = ringfence_core::record::check(record).expect("checked when read");
        assert_eq!(header.sequence, sequence, "one record per sequence from the first held");
        header.epoch != epoch
    }
}

/// The first record a machine's journal holds (retention may have retired the ones before).
pub fn first_held(machine: &Machine) -> Result<Sequence, String> {
    let check = ringfence_journal::datadir::check(&mut machine.disk.clone())
        .map_err(|e| format!("{}: checking the directory: {e}", machine.name))?;
    Ok(check.first_held())
}

/// What `engine` answers to `answer`'s command made again (the same request key): the
/// outcome it remembers when it holds the write, else the command applied now.
pub fn retried(engine: &mut Engine, answer: &Answer) -> Outcome {
    let retry = Sequenced {
        sequence: engine.last_sequence().next(),
        timestamp: engine.now(),
        command: answer.command,
    };
    engine.apply(&retry)
}

/// The state a recovery of a copy of the machine's disk comes to.
pub fn recover(machine: &Machine, settings: &ClusterSettings) -> Result<Engine, String> {
    let options = Machine::options(settings);
    let recovered =
        ringfence_journal::recovery::recover_from(machine.disk.process_crash(), options)
            .map_err(|e| format!("{}: a recovery of its disk fails: {e}", machine.name))?;
    Ok(recovered.engine)
}

/// The primary and its standby, if the pair converged: one primary that takes writes, one
/// standby that holds everything it journaled.
pub fn converged(machines: &[Machine]) -> Result<(&Machine, &Machine), String> {
    let primaries: Vec<&Machine> = machines.iter().filter(|m| m.is_primary()).collect();
    let [primary] = primaries[..] else {
        let states: Vec<String> = machines.iter().map(describe).collect();
        return Err(format!("{} primaries after settling: {}", primaries.len(), states.join("; ")));
    };
    let standby = &machines[primary.index ^ 1];
    let (Some(p), Some(s)) = (primary.running(), standby.running()) else {
        return Err(format!("not both running after settling: {}", describe(standby)));
    };
    if let Err(refused) = p.node.check_writable() {
        return Err(format!(
            "the primary {} refuses writes after settling: {refused}",
            primary.name
        ));
    }
    let (held, journaled) = (s.node.sequences().applied, p.node.sequences().journaled);
    if held != journaled {
        return Err(format!(
            "the standby {} holds {held} of the primary's {journaled} after settling",
            standby.name
        ));
    }
    Ok((primary, standby))
}

fn describe(machine: &Machine) -> String {
    match machine.running() {
        Some(running) => format!(
            "{}: {:?} epoch {} sequences {:?}",
            machine.name,
            running.control.role(),
            running.control.epoch(),
            running.node.sequences().journaled
        ),
        None => match machine.candidate_said() {
            Some(said) => format!("{}: not running; a candidate: {said}", machine.name),
            None => format!("{}: not running", machine.name),
        },
    }
}

fn agree(
    records: &[Vec<u8>],
    copies: &[Vec<u8>],
    from: Sequence,
    through: Sequence,
) -> Result<(), String> {
    let expected = (through.0 + 1).saturating_sub(from.0);
    if records.len() as u64 != expected || copies.len() as u64 != expected {
        return Err(format!(
            "journals from {from} through {through} hold {} and {} records",
            records.len(),
            copies.len()
        ));
    }
    match records.iter().zip(copies).position(|(a, b)| a != b) {
        Some(at) => Err(format!("the journals differ at sequence {}", from.0 + at as u64)),
        None => Ok(()),
    }
}

fn hashes_agree(primary: &Machine, standby: &Machine, through: Sequence) -> Result<(), String> {
    let ours = primary.observed.lock().expect("never poisoned");
    let theirs = standby.observed.lock().expect("never poisoned");
    for (sequence, hash) in ours.hashes.range(..=through.0) {
        if theirs.hashes.get(sequence).is_some_and(|other| other != hash) {
            return Err(format!("the nodes' state hashes differ at sequence {sequence}"));
        }
    }
    Ok(())
}

/// Applies every record to a fresh engine; returns it and every order reserved.
fn replay(
    records: &[Vec<u8>],
    settings: &ClusterSettings,
) -> Result<(Engine, Vec<ringfence_core::OrderId>), String> {
    let mut engine = Engine::new(settings.engine.clone());
    // A retried reservation answers with the order it made: each order once.
    let mut orders = std::collections::BTreeSet::new();
    for bytes in records {
        let (_, sequenced, _) = ringfence_core::record::decode(bytes)
            .map_err(|e| format!("a journaled record does not decode: {e:?}"))?;
        if let Outcome::Reserved { order, .. } = engine.apply(&sequenced) {
            orders.insert(order);
        }
    }
    Ok((engine, orders.into_iter().collect()))
}

fn balanced(engine: &Engine, skus: &[SkuId]) -> Result<(), String> {
    for &sku in skus {
        let Outcome::Sku(view) = engine.query(&Query::Sku(sku)) else { continue };
        if view.available + view.reserved + view.sold != view.stock {
            return Err(format!("SKU {} is out of balance at the end: {view:?}", sku.0));
        }
    }
    Ok(())
}

fn limits_held(engine: &Engine, orders: &[ringfence_core::OrderId]) -> Result<(), String> {
    let mut held: BTreeMap<UserId, u32> = BTreeMap::new();
    for &order in orders {
        let Outcome::Order(view) = engine.query(&Query::Order(order)) else { continue };
        let holds = matches!(
            view.state,
            OrderState::Reserved | OrderState::Paid | OrderState::Shipped | OrderState::Completed
        );
        if view.sku == HOT && holds {
            *held.entry(view.user).or_default() += view.qty;
        }
    }
    match held.iter().find(|&(_, &units)| units > HOT_LIMIT) {
        Some((user, units)) => Err(format!("user {} holds {units} units of the hot SKU", user.0)),
        None => Ok(()),
    }
}

/// Every write a client was given an outcome for is in the final state: the same command with
/// the same key, sent again, gets the same outcome. The exception is a write acknowledged
/// under `async` whose record a failover replaced: lost, as `async` allows; how many, returned.
fn acknowledged_writes_hold(
    engine: &mut Engine,
    ledger: &Ledger,
    held: &Held<'_>,
) -> Result<u64, String> {
    let mut lost = 0;
    for answer in &ledger.answers {
        if !matches!(answer.command, Command::Client { .. }) || answer.outcome.is_rejected() {
            continue;
        }
        let outcome = retried(engine, answer);
        if outcome != answer.outcome
            && answer.at_risk
            && held.replaced(answer.sequence, answer.epoch)
        {
            lost += 1;
        } else if outcome != answer.outcome {
            return Err(format!(
                "client {} was told {:?} by node {} in epoch {} at {} ms (record {}{}), but the \
                 final state answers {outcome:?} to {:?}",
                answer.client,
                answer.outcome,
                answer.node,
                answer.epoch,
                answer.at_ms,
                answer.sequence,
                if answer.at_risk { ", acknowledged under async and still held" } else { "" },
                answer.command
            ));
        }
    }
    Ok(lost)
}

#[cfg(test)]
mod tests {
    use ringfence_core::Timestamp;
    use ringfence_core::record::RecordBuf;

    use super::*;

    fn record(epoch: u64, sequence: u64, command: Command) -> Vec<u8> {
        let sequenced =
            Sequenced { sequence: Sequence(sequence), timestamp: Timestamp(1_000), command };
        RecordBuf::default().encode(Epoch(epoch), &sequenced).to_vec()
    }

    #[test]
    fn one_sequence_and_epoch_may_name_only_one_record() {
        // Goal: the same record seen again, on either machine, passes; so does another
        // record at the same sequence in another epoch (a failover replaced a tail); another
        // record at the same sequence in the same epoch is reported, naming both machines.
        let mut seen = DurableRecords::default();
        let tick = record(1, 7, Command::Tick);
        let snapshot = record(1, 8, Command::Snapshot);
        seen.note("a", &[tick.clone(), snapshot.clone()]).unwrap();
        seen.note("b", std::slice::from_ref(&tick)).unwrap();
        seen.note("b", &[record(2, 8, Command::Tick)]).unwrap();
        assert_eq!(seen.len(), 3);
        let other = seen.note("b", &[tick, record(1, 8, Command::Tick)]).unwrap_err();
        assert!(other.contains("b holds durably a record 8 of epoch 1 other than the one a"));
        assert_eq!(seen.len(), 3, "the other record is not kept");
    }
}
