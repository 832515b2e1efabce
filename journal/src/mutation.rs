//! A deliberately broken variant of recovery, for the simulator's proof that its checkers
//! bite (`ringfence sim`'s mutation tests): compiled only with the `mutations` feature,
//! switched per thread, and never part of a build of the product.

use std::cell::Cell;

thread_local! {
    static IGNORES_DAMAGE: Cell<bool> = const { Cell::new(false) };
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
