//! Deliberately broken variants of the BLP, for the simulator's proof that its checkers bite
//! (`ringfence sim`'s mutation tests): compiled only with the `mutations` feature, switched
//! per thread, and never part of a build of the product.

use std::cell::Cell;

thread_local! {
    static SKIP_STOCK_CHECK: Cell<bool> = const { Cell::new(false) };
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
