//! A deliberately broken variant of the standby, for the simulator's proof that its checkers
//! bite (`ringfence sim`'s mutation tests): compiled only with the `mutations` feature,
//! switched per thread, and never part of a build of the product.

use std::cell::Cell;

thread_local! {
    static STANDBY_ACKS_SUBMITTED: Cell<bool> = const { Cell::new(false) };
}

/// Makes standbys following on this thread acknowledge every record handed to their node,
/// journaled or not, instead of those their node answered (journaled durably and applied).
pub fn set_standby_acks_submitted(on: bool) {
    STANDBY_ACKS_SUBMITTED.with(|cell| cell.set(on));
}

/// Whether standbys following on this thread acknowledge what they only submitted.
#[must_use]
pub fn standby_acks_submitted() -> bool {
    STANDBY_ACKS_SUBMITTED.with(Cell::get)
}
