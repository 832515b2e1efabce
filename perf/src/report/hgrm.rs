//! HdrHistogram's percentile-distribution text (`.hgrm`), as the Java library's
//! `AbstractHistogram.outputPercentileDistribution` writes it, so that a report's histograms
//! open in HdrHistogram's plotter and in every tool that reads wrk2's output.
//!
//! The `hdrhistogram` crate does not write this text (its CLI example prints other columns and
//! a different footer), and its `iter_quantiles` steps in fractions, whose sums round
//! differently from Java's percent steps (it lands on 0.7500000000000001 where Java lands on
//! 75.0, and moves a step later), so both the steps and the text are written here, as Java's
//! `PercentileIterator` takes them: `ticks` steps per halving of the distance to 100% (Java's
//! default is 5), each line the value, the percentile as a fraction, the count up to that value
//! and `1/(1-percentile)`; one last line at 100% without that column; then the `#[Mean ...]`,
//! `#[Max ...]` and `#[Buckets ...]` footer. Values are divided by `unit_ratio` (1000 turns
//! the histograms' nanoseconds into microseconds) and printed with as many decimals as the
//! histogram has significant digits, as Java prints them.

use std::fmt::Write;

use hdrhistogram::Histogram;

/// Java's default number of steps per halving of the distance to 100%.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// Nanoseconds per microsecond: the report's `.hgrm` files are in microseconds.
pub const NS_PER_US: f64 = 1_000.0;

/// One step of the percentile walk.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    /// The highest value equivalent to the bucket the step stopped in.
    pub value: u64,
    /// The percentile level iterated to, in percent (100 for the last step).
    pub percent: f64,
    /// Samples up to and including that bucket.
    pub total: u64,
}

/// The steps of Java's `PercentileIterator` over `histogram`, `ticks` per half distance:
/// empty for an empty histogram, else ending with one step at 100%.
#[must_use]
pub fn percentile_steps(histogram: &Histogram<u64>, ticks: u32) -> Vec<Step> {
    assert!(ticks > 0, "at least one step per half distance");
    let count = histogram.len();
    let mut steps = Vec::new();
    let (mut level, mut total, mut value) = (0.0_f64, 0u64, 0u64);
    for bucket in histogram.iter_recorded() {
        total += bucket.count_at_value();
        value = bucket.value_iterated_to();
        // Every level this bucket reaches gets a step; the last bucket gets one, then 100%.
        while 100.0 * total as f64 / count as f64 >= level {
            steps.push(Step { value, percent: level, total });
            level += 100.0 / ticks_per_whole(level, ticks) as f64;
            if total == count {
                break;
            }
        }
    }
    if count > 0 {
        steps.push(Step { value, percent: 100.0, total });
    }
    steps
}

/// Java's `percentileReportingTicks`: the steps into which 0-100% is cut at `level`, doubling
/// each time the distance to 100% halves.
fn ticks_per_whole(level: f64, ticks: u32) -> u64 {
    let halvings = ((100.0 / (100.0 - level)).ln() / 2f64.ln()) as u32;
    u64::from(ticks).saturating_mul(1u64.checked_shl(halvings + 1).unwrap_or(u64::MAX))
}

/// The percentile distribution of `histogram`, values divided by `unit_ratio`.
#[must_use]
pub fn percentile_distribution(histogram: &Histogram<u64>, ticks: u32, unit_ratio: f64) -> String {
    assert!(unit_ratio > 0.0, "a positive unit ratio");
    let digits = usize::from(histogram.sigfig());
    let mut text = String::new();
    // Writing into a `String` cannot fail: the `fmt::Result`s below are always `Ok`.
    let _ = write!(
        text,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    for Step { value, percent, total } in percentile_steps(histogram, ticks) {
        let value = value as f64 / unit_ratio;
        let fraction = percent / 100.0;
        if percent < 100.0 {
            let inverse = 1.0 / (1.0 - fraction);
            let _ = writeln!(text, "{value:12.digits$} {fraction:2.12} {total:10} {inverse:14.2}");
        } else {
            let _ = writeln!(text, "{value:12.digits$} {fraction:2.12} {total:10}");
        }
    }
    let (mean, deviation) = (histogram.mean() / unit_ratio, histogram.stdev() / unit_ratio);
    let max = histogram.max() as f64 / unit_ratio;
    let _ =
        writeln!(text, "#[Mean    = {mean:12.digits$}, StdDeviation   = {deviation:12.digits$}]");
    let _ =
        writeln!(text, "#[Max     = {max:12.digits$}, Total count    = {:12}]", histogram.len());
    let sub_buckets = sub_bucket_count(histogram.sigfig());
    let _ = writeln!(
        text,
        "#[Buckets = {:12}, SubBuckets     = {sub_buckets:12}]",
        histogram.buckets()
    );
    text
}

/// The sub-buckets per bucket of a histogram with `sigfig` significant digits, as Java
/// computes `subBucketCount` (the crate keeps it private): the power of two that holds
/// `2 * 10^sigfig` values at unit resolution.
fn sub_bucket_count(sigfig: u8) -> u64 {
    let single_unit_max = 2 * 10u64.pow(u32::from(sigfig));
    let magnitude = u64::BITS - (single_unit_max - 1).leading_zeros();
    let half_magnitude = magnitude.max(1) - 1;
    1 << (half_magnitude + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::latency_histogram;

    #[test]
    fn four_values_print_as_java_prints_them() {
        // Goal: byte for byte the text HdrHistogram's Java `outputPercentileDistribution(out,
        // 5, 1.0)` gives for 100, 200, 250 and 600 in a (1, 3.6e12, 3) histogram (the
        // library's own example, as its ports test it).
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
        for value in [100, 200, 250, 600] {
            histogram.record(value).unwrap();
        }
        let expected = "       Value     Percentile TotalCount 1/(1-Percentile)

     100.000 0.000000000000          1           1.00
     100.000 0.100000000000          1           1.11
     100.000 0.200000000000          1           1.25
     200.000 0.300000000000          2           1.43
     200.000 0.400000000000          2           1.67
     200.000 0.500000000000          2           2.00
     250.000 0.550000000000          3           2.22
     250.000 0.600000000000          3           2.50
     250.000 0.650000000000          3           2.86
     250.000 0.700000000000          3           3.33
     250.000 0.750000000000          3           4.00
     600.000 0.775000000000          4           4.44
     600.000 1.000000000000          4
#[Mean    =      287.500, StdDeviation   =      188.331]
#[Max     =      600.000, Total count    =            4]
#[Buckets =           32, SubBuckets     =         2048]
";
        assert_eq!(percentile_distribution(&histogram, 5, 1.0), expected);
    }

    #[test]
    fn nanoseconds_are_written_as_microseconds() {
        // Goal: with the report's ratio, 1500 ns reads 1.500 everywhere a value appears.
        let mut histogram = latency_histogram();
        histogram.record(1_500).unwrap();
        let text = percentile_distribution(&histogram, TICKS_PER_HALF_DISTANCE, NS_PER_US);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[2].split_whitespace().next(), Some("1.500"));
        assert!(lines.contains(&"#[Max     =        1.500, Total count    =            1]"));
        assert!(text.contains("#[Mean    =        1.500, StdDeviation   =        0.000]"));
    }

    #[test]
    fn an_empty_histogram_has_a_header_and_a_footer_only() {
        // Goal: a row without samples still gives a file that parses.
        let text = percentile_distribution(&latency_histogram(), 5, NS_PER_US);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].contains("1/(1-Percentile)") && lines[1].is_empty());
        assert!(lines[2..].iter().all(|line| line.starts_with("#[")));
    }

    #[test]
    fn sub_buckets_match_javas_for_every_precision() {
        // Goal: the footer's SubBuckets is Java's subBucketCount for 0 to 5 digits.
        let counts: Vec<u64> = (0..=5).map(sub_bucket_count).collect();
        assert_eq!(counts, [2, 32, 256, 2_048, 32_768, 262_144]);
    }
}
