//! `pipeline --layout/--rate`: a filter that selects nothing is refused before anything runs.

mod common;

use common::perf;

/// Exit code 2, the message on stderr, and no row measured.
fn assert_refused(args: &[&str], message: &str) {
    let output = perf(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(stderr.contains(message), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(output.stdout.is_empty(), "{args:?} measured something");
}

#[test]
fn a_layout_or_rate_that_selects_no_row_is_refused_with_the_choices() {
    // Goal: a misspelt layout names every layout there is; a rate that is neither `max` nor a
    // positive number is a usage error; a layout and rate that exist but never meet say so.
    assert_refused(
        &["pipeline", "--quick", "--layout", "compact spin"],
        "no pipeline layout is named `compact spin`; the layouts: compact spin polled pin, \
         compact park polled, compact park thread, parallel park thread, parallel spin thread",
    );
    assert_refused(&["pipeline", "--quick", "--rate", "fast"], "`fast` is neither `max` nor");
    assert_refused(&["pipeline", "--quick", "--rate", "0"], "`0` is neither `max` nor");
    assert_refused(
        &["pipeline", "--quick", "--layout", "parallel spin thread", "--rate", "max"],
        "no layout named runs at the rates named",
    );
}
