//! Progress bars for the tools that read a whole journal (`journal verify`, `dump`, `stats`,
//! `replay`): drawn on standard error, only when it is a terminal and the work is long enough
//! to wait for, so scripts and pipes see nothing but the output.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Fewer records than this read in well under a second: no bar.
pub const RECORDS_SHOWN_MIN: u64 = 200_000;

/// How often (in records) a reader updates its bar: often enough to move smoothly, rarely
/// enough to cost nothing measurable per record.
pub const UPDATE_EVERY: u64 = 16_384;

/// Whether a bar for `total` records is drawn, given where its output goes.
#[must_use]
pub fn shown(total: u64, stderr_is_terminal: bool, output_on_terminal: bool) -> bool {
    // A bar on the same terminal as the records being printed would tear through them.
    stderr_is_terminal && !output_on_terminal && total >= RECORDS_SHOWN_MIN
}

/// A bar counting `total` records of `what` (e.g. "records verified"); hidden unless
/// [`shown`]. `output_on_terminal`: the tool prints its records to a terminal as it goes.
#[must_use]
pub fn records_bar(total: u64, what: &str, output_on_terminal: bool) -> ProgressBar {
    if !shown(total, std::io::stderr().is_terminal(), output_on_terminal) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let template = format!("{{bar:40}} {{pos}}/{{len}} {what}  {{per_sec}}  eta {{eta}}");
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_drawn_only_for_long_work_on_a_free_terminal() {
        // Goal: pipes, scripts and short journals never see a bar; long reads on a terminal do.
        assert!(shown(RECORDS_SHOWN_MIN, true, false));
        assert!(!shown(RECORDS_SHOWN_MIN - 1, true, false));
        assert!(!shown(u64::MAX, false, false));
        assert!(!shown(u64::MAX, true, true));
    }
}
