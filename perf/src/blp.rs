//! The BLP benchmark (placeholder while it is written).

use crate::Common;

pub fn run(common: Common) {
    let _ = common;
}
