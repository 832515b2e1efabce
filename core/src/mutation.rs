//! Deliberately broken variants of the BLP, for the simulator's proof that its checkers bite
//! (`ringfence sim`'s mutation tests): compiled only with the `mutations` feature, switched
//! per thread, and never part of a build of the product.

use std::cell::Cell;

thread_local! {
    static SKIP_STOCK_CHECK: Cell<bool> = const { Cell::new(false) };
    static PROMOTION_KEEPS_CLOCK: Cell<bool> = const { Cell::new(false) };
}

/// Makes reservations on this thread skip the stock check (an engine that oversells).
pub fn set_skip_stock_check(on: bool) {
    SKIP_STOCK_CHECK.with(|cell| cell.set(on));
}

/// Whether reservations on this thread skip the stock check.
#[must_use]
pub fn skips_stock_check() -> bool {
    SKIP_STOCK_CHECK.with(Cell::get)
}

/// Makes standbys promoted on this thread stamp by their own clock instead of going on with
/// their primary's time line.
pub fn set_promotion_keeps_clock(on: bool) {
    PROMOTION_KEEPS_CLOCK.with(|cell| cell.set(on));
}

/// Whether standbys promoted on this thread keep their own clock.
#[must_use]
pub fn promotion_keeps_clock() -> bool {
    PROMOTION_KEEPS_CLOCK.with(Cell::get)
}
