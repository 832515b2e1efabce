//! SVG charts for the written report, drawn with `plotters`' SVG backend.
//!
//! - Latency by percentile, as HdrHistogram's plotter draws it: the x axis is
//!   `1 / (1 - percentile)` on a log scale, so 90%, 99%, 99.9%, ... sit one decade apart and the
//!   tail gets as much room as the median; each variant (and each peer) is one curve. The
//!   y axis is log-scaled too, in microseconds: the rows of one chart span nanoseconds (the BLP)
//!   to milliseconds (a stalled pipeline), which a linear axis would flatten.
//! - Throughput by offered rate: for open-loop rows, achieved against offered requests per
//!   second (both axes log-scaled), one line per variant, the `offered = achieved` diagonal for
//!   reference and each variant's closed-loop maximum as a dashed horizontal line.
//!
//! Charts are drawn into a string and returned; the caller writes the file, so file errors stay
//! typed I/O errors and a drawing error (a bug) is the only error here.

use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::coord::combinators::WithKeyPoints;
use plotters::prelude::*;

use super::{format_rate, hgrm};

/// Chart size in pixels.
const SIZE: (u32, u32) = (960, 600);
/// Distinct colours on white (Tableau 10), reused in order.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A drawing error: plotters refused a chart (a bug in the chart's set-up, not bad input).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ChartError(String);

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for ChartError {
    fn from(error: DrawingAreaErrorKind<E>) -> ChartError {
        ChartError(error.to_string())
    }
}

/// One curve of a latency chart: a row's label and its histogram in nanoseconds.
pub struct LatencySeries<'a> {
    /// The legend's text.
    pub label: String,
    /// The row's histogram (nanoseconds).
    pub histogram: &'a Histogram<u64>,
}

/// One line of a throughput chart: a variant's open-loop rows and its maximum.
pub struct RateSeries {
    /// The legend's text.
    pub label: String,
    /// (offered, achieved) requests per second, one per open-loop row.
    pub points: Vec<(f64, f64)>,
    /// The closed-loop maximum, when the variant has a `max` row.
    pub max: Option<f64>,
}

/// The points of a histogram's percentile curve: (`1/(1-p)`, microseconds) at the steps its
/// `.hgrm` file lists, the 100% step left out (it has no finite x); empty for an empty
/// histogram.
#[must_use]
pub fn percentile_curve(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    hgrm::percentile_steps(histogram, hgrm::TICKS_PER_HALF_DISTANCE)
        .into_iter()
        .filter(|step| step.percent < 100.0)
        .map(|step| (100.0 / (100.0 - step.percent), step.value.max(1) as f64 / 1e3))
        .collect()
}

/// The label of a point on the nines axis: `1/(1-p)` as a percentile (`10` → `90%`).
#[must_use]
pub fn nines_label(x: f64) -> String {
    if x <= 1.0 {
        return "0%".to_owned();
    }
    let percent = 100.0 * (1.0 - 1.0 / x);
    // One decimal per decade past 100, so 99.9% and 99.99% keep their nines.
    let decimals = (x.log10().round() as usize).saturating_sub(2);
    format!("{percent:.decimals$}%")
}

/// The latency-by-percentile chart of `series` as SVG text; `None` when no series holds a
/// sample.
pub fn latency_by_percentile(
    title: &str,
    series: &[LatencySeries<'_>],
) -> Result<Option<String>, ChartError> {
    let curves: Vec<(&LatencySeries<'_>, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| (s, percentile_curve(s.histogram)))
        .filter(|(_, curve)| !curve.is_empty())
        .collect();
    if curves.is_empty() {
        return Ok(None);
    }
    let points = curves.iter().flat_map(|(_, curve)| curve.iter());
    let x_max = points.clone().map(|&(x, _)| x).fold(100.0, f64::max);
    let decades = x_max.log10().ceil() as i32;
    let (y_min, y_max) = decade_bounds(
        points.map(|&(_, y)| y),
        curves.iter().map(|(s, _)| s.histogram.max().max(1) as f64 / 1e3),
    );
    let legend: Vec<(String, RGBColor)> = curves
        .iter()
        .enumerate()
        .map(|(index, (s, _))| {
            let max = format_us(s.histogram.max() as f64 / 1e3);
            (format!("{} (max {max})", s.label), COLOURS[index % COLOURS.len()])
        })
        .collect();
    let mut svg = String::new();
    {
        let (root, plot, key) = areas(&mut svg, legend.len())?;
        let key_points: Vec<f64> = (0..=decades).map(|d| 10f64.powi(d)).collect();
        let x_range = (1.0..10f64.powi(decades)).log_scale().with_key_points(key_points);
        let y_range = (y_min..y_max).log_scale().with_key_points(log_marks(y_min, y_max));
        let mut chart = chart_builder(&plot, title).build_cartesian_2d(x_range, y_range)?;
        chart
            .configure_mesh()
            .x_desc("percentile (log scale of 1/(1-p))")
            .y_desc("latency (log scale)")
            .x_label_formatter(&|x| nines_label(*x))
            .y_label_formatter(&|y| format_us(*y))
            .draw()?;
        for ((_, curve), (_, colour)) in curves.into_iter().zip(&legend) {
            chart.draw_series(LineSeries::new(curve, colour.stroke_width(2)))?;
        }
        draw_legend(&key, &legend)?;
        root.present()?;
    }
    Ok(Some(svg))
}

/// The throughput-by-offered-rate chart of `series` as SVG text; `None` when no series has an
/// open-loop row.
pub fn throughput_by_offered_rate(
    title: &str,
    series: &[RateSeries],
) -> Result<Option<String>, ChartError> {
    let offered: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    if offered.is_empty() {
        return Ok(None);
    }
    let achieved = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let maxima = series.iter().filter_map(|s| s.max);
    let (x_min, x_max) = decade_bounds(offered.iter().copied(), std::iter::empty());
    let (y_min, y_max) = decade_bounds(achieved.chain(offered.iter().copied()), maxima);
    let grey = RGBColor(150, 150, 150);
    let mut legend = vec![("offered = achieved".to_owned(), grey)];
    legend.extend(series.iter().enumerate().map(|(index, line)| {
        let label = match line.max {
            Some(max) => format!("{} (dashed: max {})", line.label, format_rate(max)),
            None => line.label.clone(),
        };
        (label, COLOURS[index % COLOURS.len()])
    }));
    let mut svg = String::new();
    {
        let (root, plot, key) = areas(&mut svg, legend.len())?;
        let mut chart = chart_builder(&plot, title).build_cartesian_2d(
            (x_min..x_max).log_scale().with_key_points(log_marks(x_min, x_max)),
            (y_min..y_max).log_scale().with_key_points(log_marks(y_min, y_max)),
        )?;
        chart
            .configure_mesh()
            .x_desc("offered, requests/s (log scale)")
            .y_desc("achieved, requests/s (log scale)")
            .x_label_formatter(&|x| format_rate(*x))
            .y_label_formatter(&|y| format_rate(*y))
            .draw()?;
        let diagonal = [(x_min, x_min), (x_max, x_max)];
        chart.draw_series(DashedLineSeries::new(diagonal, 4, 4, grey.stroke_width(1)))?;
        for (line, (_, colour)) in series.iter().zip(&legend[1..]) {
            draw_rate_series(&mut chart, line, *colour, (x_min, x_max))?;
        }
        draw_legend(&key, &legend)?;
        root.present()?;
    }
    Ok(Some(svg))
}

/// A chart with log-scaled axes on any backend.
type LogChart<'a, DB> = ChartContext<'a, DB, Cartesian2d<LogAxis, LogAxis>>;

/// A log-scaled axis marked where [`log_marks`] says.
type LogAxis = WithKeyPoints<LogCoord<f64>>;

/// One variant's open-loop line with its points, and its maximum as a dashed line.
fn draw_rate_series<'a, DB>(
    chart: &mut LogChart<'a, DB>,
    line: &RateSeries,
    colour: RGBColor,
    (x_min, x_max): (f64, f64),
) -> Result<(), ChartError>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
{
    let mut points = line.points.clone();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart.draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?;
    chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, colour.filled())))?;
    if let Some(max) = line.max {
        let level = [(x_min, max), (x_max, max)];
        chart.draw_series(DashedLineSeries::new(level, 8, 6, colour.stroke_width(1)))?;
    }
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// The whole picture, the plot above and the legend's band below it, sized for `entries`
/// legend entries in two columns: a legend inside the plot would hide curves.
fn areas(svg: &mut String, entries: usize) -> Result<(Area<'_>, Area<'_>, Area<'_>), ChartError> {
    let band = LEGEND_PADDING * 2 + LEGEND_ROW * (entries as u32).div_ceil(2);
    let root = SVGBackend::with_string(svg, (SIZE.0, SIZE.1 + band)).into_drawing_area();
    root.fill(&WHITE)?;
    let (plot, key) = root.split_vertically(SIZE.1);
    Ok((root, plot, key))
}

/// Rows of the legend's band, and its padding, in pixels.
const LEGEND_ROW: u32 = 22;
const LEGEND_PADDING: u32 = 8;

/// The legend: a coloured stroke and a label per entry, two columns, left to right.
fn draw_legend(key: &Area<'_>, entries: &[(String, RGBColor)]) -> Result<(), ChartError> {
    let column = (SIZE.0 - 2 * 96) / 2;
    for (index, (label, colour)) in entries.iter().enumerate() {
        let x = 96 + (index as u32 % 2) * column;
        let y = LEGEND_PADDING + (index as u32 / 2) * LEGEND_ROW;
        let (x, y) = (x as i32, y as i32);
        let stroke = [(x, y + 8), (x + 24, y + 8)];
        key.draw(&PathElement::new(stroke, colour.stroke_width(3)))?;
        key.draw(&Text::new(label.as_str(), (x + 32, y), ("sans-serif", 13).into_font()))?;
    }
    Ok(())
}

/// The title, margins and label areas every chart shares.
fn chart_builder<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    title: &str,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(16)
        // Room for the last x label, centred on the plot's right edge.
        .margin_right(40)
        .x_label_area_size(48)
        .y_label_area_size(80);
    builder
}

/// A log axis's bounds: the decades below the smallest and above the largest of `values` and
/// `more` (positive values only; 1 to 10 when there are none). A value on a decade gets the
/// decade beyond it, so that no point sits on the chart's frame, as a single offered rate of
/// exactly 1M/s otherwise would.
fn decade_bounds(values: impl Iterator<Item = f64>, more: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut low, mut high) = (f64::INFINITY, f64::NEG_INFINITY);
    for value in values.chain(more).filter(|v| *v > 0.0 && v.is_finite()) {
        low = low.min(value);
        high = high.max(value);
    }
    if low > high {
        return (1.0, 10.0);
    }
    let below = 10f64.powf(low.log10().floor());
    let above = 10f64.powf(high.log10().ceil());
    let low = if below < low { below } else { below / 10.0 };
    let high = if above > high { above } else { above * 10.0 };
    (low, high)
}

/// Where a log axis from `low` to `high` (decades, as [`decade_bounds`] gives) is marked and
/// labelled: at every decade when it spans two or more, and at 1, 2 and 5 of the decade when
/// it spans one. plotters' own marks on a one-decade axis, at 1 to 9 of it, print labels that
/// run into each other near its top (`8M/s9M/s10M/s`).
fn log_marks(low: f64, high: f64) -> Vec<f64> {
    let (first, last) = (low.log10().round() as i32, high.log10().round() as i32);
    let steps: &[f64] = if last - first >= 2 { &[1.0] } else { &[1.0, 2.0, 5.0] };
    let mut marks: Vec<f64> = (first..last)
        .flat_map(|exponent| steps.iter().map(move |step| step * 10f64.powi(exponent)))
        .collect();
    marks.push(10f64.powi(last));
    marks
}

/// Microseconds as an axis label: `0.1`, `25`, `1.5k`... would hide units, so use the
/// report's units: `100ns`, `25µs`, `1.5ms`.
fn format_us(us: f64) -> String {
    let ns = us * 1e3;
    match ns {
        n if n < 1e3 => format!("{n:.0}ns"),
        n if n < 1e6 => format!("{}µs", trim(n / 1e3)),
        n if n < 1e9 => format!("{}ms", trim(n / 1e6)),
        n => format!("{}s", trim(n / 1e9)),
    }
}

/// A figure with at most one decimal, without a trailing `.0`.
fn trim(value: f64) -> String {
    let text = format!("{value:.1}");
    text.strip_suffix(".0").map_or(text.clone(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::latency_histogram;

    #[test]
    fn the_nines_axis_is_labelled_in_percentiles() {
        // Goal: decades on the x axis read as HdrHistogram's plots label them.
        let labels: Vec<String> = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5].map(nines_label).to_vec();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]);
    }

    #[test]
    fn log_axes_keep_every_point_off_the_frame_and_mark_one_two_and_five() {
        // Goal: a single offered rate on a decade is drawn inside the chart, not on its
        // frame; values between decades get the decades around them; an axis spanning one
        // decade is marked at 1, 2 and 5 of it, one spanning more at its decades.
        let none = std::iter::empty;
        assert_eq!(decade_bounds([1e6].into_iter(), none()), (1e5, 1e7));
        assert_eq!(decade_bounds([2e4, 5e5].into_iter(), none()), (1e4, 1e6));
        assert_eq!(decade_bounds([3e4].into_iter(), [1e5].into_iter()), (1e4, 1e6));
        assert_eq!(decade_bounds(none(), none()), (1.0, 10.0));
        assert_eq!(log_marks(1e6, 1e7), [1e6, 2e6, 5e6, 1e7]);
        assert_eq!(log_marks(1e4, 1e6), [1e4, 1e5, 1e6]);
        assert_eq!(log_marks(0.1, 1e3), [0.1, 1.0, 10.0, 100.0, 1e3]);
    }

    #[test]
    fn a_curve_climbs_from_the_median_to_the_tail_without_the_infinite_point() {
        // Goal: the curve's x grows with the percentile and stops short of 100%.
        let mut histogram = latency_histogram();
        for ns in 1..=10_000u64 {
            histogram.record(ns * 100).unwrap();
        }
        let curve = percentile_curve(&histogram);
        assert!(curve.len() > 20, "{}", curve.len());
        assert_eq!(curve[0].0, 1.0);
        assert!(curve.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert!(curve.iter().all(|&(x, _)| x.is_finite()));
        assert!(percentile_curve(&latency_histogram()).is_empty());
    }

    #[test]
    fn charts_are_svg_with_one_legend_entry_per_series() {
        // Goal: both charts render as SVG documents naming every series; nothing to draw
        // gives no chart.
        let mut fast = latency_histogram();
        let mut slow = latency_histogram();
        for ns in 1..=1_000u64 {
            fast.record(ns * 10).unwrap();
            slow.record(ns * 1_000).unwrap();
        }
        let series = [
            LatencySeries { label: "fast_variant".into(), histogram: &fast },
            LatencySeries { label: "slow_peer".into(), histogram: &slow },
        ];
        let svg = latency_by_percentile("latency", &series).unwrap().unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("fast_variant") && svg.contains("slow_peer"));
        assert!(svg.contains("99.9%"));
        let empty = [LatencySeries { label: "none".into(), histogram: &latency_histogram() }];
        assert!(latency_by_percentile("empty", &empty).unwrap().is_none());

        let rates = [RateSeries {
            label: "ringfence".into(),
            points: vec![(20e3, 20e3), (50e3, 49e3)],
            max: Some(700e3),
        }];
        let svg = throughput_by_offered_rate("throughput", &rates).unwrap().unwrap();
        assert!(svg.contains("ringfence") && svg.contains("offered = achieved"));
        let closed_only = [RateSeries { label: "x".into(), points: vec![], max: Some(1.0) }];
        assert!(throughput_by_offered_rate("none", &closed_only).unwrap().is_none());
    }
}
