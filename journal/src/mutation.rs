//! Deliberately broken variants of recovery and of the epoch history, for the simulator's proof that its checkers
//! bite (`ringfence sim`'s mutation tests): compiled only with the `mutations` feature,
//! switched per thread, and never part of a build of the product.

use std::cell::Cell;

thread_local! {
    static IGNORES_DAMAGE: Cell<bool> = const { Cell::new(false) };
    static HISTORY_OFF_BY_ONE: Cell<bool> = const { Cell::new(false) };
    static HISTORY_LOST: Cell<bool> = const { Cell::new(false) };
}

/// Makes the snapshots written on this thread record each epoch of their history after the
/// first as starting one record later than it does: the first record of each new epoch is
/// named with the epoch before.
pub fn set_history_off_by_one(on: bool) {
    HISTORY_OFF_BY_ONE.with(|cell| cell.set(on));
}

/// Whether snapshots written on this thread record their epoch history one record off.
#[must_use]
pub fn history_off_by_one() -> bool {
    HISTORY_OFF_BY_ONE.with(Cell::get)
}

/// Makes the snapshots written on this thread record no epoch history at all, as if their
/// writer could never tell which epochs their records were written in.
pub fn set_history_lost(on: bool) {
    HISTORY_LOST.with(|cell| cell.set(on));
}

/// Whether snapshots written on this thread record no epoch history.
#[must_use]
pub fn history_lost() -> bool {
    HISTORY_LOST.with(Cell::get)
}

/// Makes recovery on this thread drop a damaged record and everything after it silently,
/// instead of refusing to start.
pub fn set_ignores_damage(on: bool) {
    IGNORES_DAMAGE.with(|cell| cell.set(on));
}

/// Whether recovery on this thread drops damage silently.
#[must_use]
pub fn ignores_damage() -> bool {
    IGNORES_DAMAGE.with(Cell::get)
}
