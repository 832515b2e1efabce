//! Counters and latency of the network front, rendered as Prometheus text.
//!
//! Everything here is owned by the single event-loop thread, so plain integers suffice. The
//! text format is written by hand: it is a handful of `name{labels} value` lines, and no
//! encoder crate would remove more code than it adds.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use ringfence_core::Outcome;

use crate::admission::AddressLimit;
use crate::http::api::rejection_code;

/// Which listener a connection came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Binary protocol v1.
    Binary,
    /// HTTP/1.1 JSON.
    Http,
}

impl Protocol {
    fn index(self) -> usize {
        self as usize
    }

    fn label(index: usize) -> &'static str {
        ["binary", "http"][index]
    }
}

/// Counters and histograms of the front end.
pub struct Metrics {
    /// Requests decoded, per protocol.
    pub requests: [u64; 2],
    /// Requests refused for bad input (malformed frame, bad JSON, limits), per protocol.
    pub bad_requests: [u64; 2],
    /// Submissions refused because the ring or the in-flight cap was full.
    pub busy: u64,
    /// Requests refused by a connection's token bucket.
    pub rate_limited: u64,
    /// Source-address budgets met, by [`AddressLimit::index`]: pauses of a connection's reading
    /// at `address_in_flight_max`, and requests refused at `address_rate_per_sec`.
    pub address_limited: [u64; 2],
    /// Source addresses in the table of per-address budgets now.
    pub addresses_tracked: u64,
    /// Source addresses forgotten to make room in that table.
    pub addresses_evicted: u64,
    /// Tokens presented (HTTP bearer, binary `AUTH`) and found wrong, per protocol.
    pub auth_failures: [u64; 2],
    /// Authentications refused unchecked: the address failed too often, per protocol.
    pub auth_rate_limited: [u64; 2],
    /// Addresses whose failed authentications are remembered now.
    pub auth_addresses_tracked: u64,
    /// Addresses forgotten to make room in the full table of failed authentications.
    pub auth_addresses_evicted: u64,
    /// Writes refused because this node is not the primary.
    pub not_primary: u64,
    /// Writes refused, or answered without an outcome, because replication is unavailable.
    pub replication_unavailable: u64,
    /// Writes refused, or answered without an outcome, because the journal failed.
    pub journal_failed: u64,
    /// Connections accepted, per protocol.
    pub accepted: [u64; 2],
    /// Connections refused at a listener's connection limit (no idle one could give way).
    pub refused_connections: u64,
    /// Connections closed at accept: their address (IPv6: its /64) had
    /// `connections_per_address_max` open.
    pub address_limited_connections: u64,
    /// Idle connections (between requests or holding part of one) closed to admit a new one at
    /// a listener's limit.
    pub idle_reclaimed: u64,
    /// Idle connections closed by the shorter `idle_timeout_busy_ms` of a busy listener.
    pub busy_idle_timeouts: u64,
    /// Connections cut because the output buffered for all clients passed
    /// `outbound_total_max`: the biggest holders first.
    pub outbound_budget_disconnects: u64,
    /// Output bytes buffered for all clients now.
    pub outbound_buffered_bytes: u64,
    /// Connections closed because their outbound buffer filled (the client does not read).
    pub slow_reader_disconnects: u64,
    /// Connections closed by the idle or request timeout.
    pub timeouts: u64,
    /// Connections open now.
    pub open: u64,
    /// Commands submitted and not yet answered.
    pub in_flight: u64,
    /// Outcomes by name (`reserved`, `sold_out`, ...).
    pub outcomes: BTreeMap<&'static str, u64>,
    /// HTTP requests refused by the framer (each closes its connection), by error code
    /// (`duplicate_content_length`, `headers_too_large`, ...). The codes are a fixed set of
    /// static strings, so the map stays small.
    pub http_framing_refusals: BTreeMap<&'static str, u64>,
    /// Submit-to-completion latency seen by the event loop, in nanoseconds.
    pub latency_ns: Histogram<u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: [0; 2],
            bad_requests: [0; 2],
            busy: 0,
            rate_limited: 0,
            address_limited: [0; 2],
            addresses_tracked: 0,
            addresses_evicted: 0,
            auth_failures: [0; 2],
            auth_rate_limited: [0; 2],
            auth_addresses_tracked: 0,
            auth_addresses_evicted: 0,
            not_primary: 0,
            replication_unavailable: 0,
            journal_failed: 0,
            accepted: [0; 2],
            refused_connections: 0,
            address_limited_connections: 0,
            idle_reclaimed: 0,
            busy_idle_timeouts: 0,
            outbound_budget_disconnects: 0,
            outbound_buffered_bytes: 0,
            slow_reader_disconnects: 0,
            timeouts: 0,
            open: 0,
            in_flight: 0,
            outcomes: BTreeMap::new(),
            http_framing_refusals: BTreeMap::new(),
            latency_ns: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .expect("static histogram bounds are valid"),
        }
    }
}

/// The metrics name of an outcome: its rejection code, or its kind in snake_case.
#[must_use]
pub fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Rejected(rejection) => rejection_code(*rejection),
        other => other.name(),
    }
}

impl Metrics {
    /// Counts a decoded request.
    pub fn request(&mut self, protocol: Protocol) {
        self.requests[protocol.index()] += 1;
    }

    /// Counts a refused bad request.
    pub fn bad_request(&mut self, protocol: Protocol) {
        self.bad_requests[protocol.index()] += 1;
    }

    /// Counts an HTTP request the framer refused, by its error code.
    pub fn http_framing_refusal(&mut self, code: &'static str) {
        *self.http_framing_refusals.entry(code).or_insert(0) += 1;
    }

    /// Counts a wrong token presented.
    pub fn auth_failure(&mut self, protocol: Protocol) {
        self.auth_failures[protocol.index()] += 1;
    }

    /// Counts an authentication refused unchecked for too many failures.
    pub fn auth_limited(&mut self, protocol: Protocol) {
        self.auth_rate_limited[protocol.index()] += 1;
    }

    /// Counts an accepted connection.
    pub fn accepted(&mut self, protocol: Protocol) {
        self.accepted[protocol.index()] += 1;
    }

    /// Counts an outcome and its latency.
    pub fn outcome(&mut self, outcome: &Outcome, latency_ns: u64) {
        *self.outcomes.entry(outcome_name(outcome)).or_insert(0) += 1;
        let _ = self.latency_ns.record(latency_ns.max(1));
    }

    /// Appends the front end's metrics in Prometheus text format.
    pub fn write_prometheus(&self, out: &mut String) {
        let per_protocol = [
            ("ringfence_requests_total", "Requests decoded.", &self.requests),
            ("ringfence_bad_requests_total", "Requests refused as malformed.", &self.bad_requests),
            ("ringfence_connections_accepted_total", "Connections accepted.", &self.accepted),
            (
                "ringfence_auth_failures_total",
                "Admin tokens presented and found wrong.",
                &self.auth_failures,
            ),
            (
                "ringfence_auth_rate_limited_total",
                "Authentications refused unchecked: too many failures from the address.",
                &self.auth_rate_limited,
            ),
        ];
        for (name, help, values) in per_protocol {
            header(out, name, help, "counter");
            for (index, value) in values.iter().enumerate() {
                let _ = writeln!(out, "{name}{{protocol=\"{}\"}} {value}", Protocol::label(index));
            }
        }
        let scalars = [
            (
                "ringfence_busy_total",
                "Submissions refused: ring or in-flight cap full.",
                "counter",
                self.busy,
            ),
            (
                "ringfence_rate_limited_total",
                "Requests refused by the per-connection rate limit.",
                "counter",
                self.rate_limited,
            ),
            (
                "ringfence_addresses_tracked",
                "Source addresses in the table of per-address budgets.",
                "gauge",
                self.addresses_tracked,
            ),
            (
                "ringfence_addresses_evicted_total",
                "Source addresses forgotten to make room in the table of per-address budgets.",
                "counter",
                self.addresses_evicted,
            ),
            (
                "ringfence_auth_addresses_tracked",
                "Addresses whose failed authentications are remembered.",
                "gauge",
                self.auth_addresses_tracked,
            ),
            (
                "ringfence_auth_addresses_evicted_total",
                "Addresses forgotten to make room in the failed-authentication table.",
                "counter",
                self.auth_addresses_evicted,
            ),
            (
                "ringfence_not_primary_total",
                "Writes refused: this node is not the primary.",
                "counter",
                self.not_primary,
            ),
            (
                "ringfence_replication_unavailable_total",
                "Writes refused or left without an outcome: the standby is not acknowledging.",
                "counter",
                self.replication_unavailable,
            ),
            (
                "ringfence_journal_failed_total",
                "Writes refused or left without an outcome: the journal cannot make them durable.",
                "counter",
                self.journal_failed,
            ),
            (
                "ringfence_connections_refused_total",
                "Connections refused at a listener's connection limit.",
                "counter",
                self.refused_connections,
            ),
            (
                "ringfence_connections_address_limited_total",
                "Connections closed at accept: too many open from the address (IPv6: its /64).",
                "counter",
                self.address_limited_connections,
            ),
            (
                "ringfence_idle_connections_reclaimed_total",
                "Idle connections (between requests or holding part of one) closed to admit a new one \
                 at a listener's limit.",
                "counter",
                self.idle_reclaimed,
            ),
            (
                "ringfence_busy_idle_timeouts_total",
                "Idle connections closed by idle_timeout_busy_ms while their listener was busy.",
                "counter",
                self.busy_idle_timeouts,
            ),
            (
                "ringfence_outbound_budget_disconnects_total",
                "Connections cut, biggest first, because buffered output passed \
                 outbound_total_max.",
                "counter",
                self.outbound_budget_disconnects,
            ),
            (
                "ringfence_outbound_buffered_bytes",
                "Output bytes buffered for all clients.",
                "gauge",
                self.outbound_buffered_bytes,
            ),
            (
                "ringfence_slow_reader_disconnects_total",
                "Connections closed because the client did not read.",
                "counter",
                self.slow_reader_disconnects,
            ),
            (
                "ringfence_timeouts_total",
                "Connections closed by the idle or request timeout.",
                "counter",
                self.timeouts,
            ),
            ("ringfence_connections_open", "Connections open.", "gauge", self.open),
            (
                "ringfence_in_flight",
                "Commands submitted and not yet answered.",
                "gauge",
                self.in_flight,
            ),
        ];
        for (name, help, kind, value) in scalars {
            header(out, name, help, kind);
            let _ = writeln!(out, "{name} {value}");
        }
        let name = "ringfence_address_limited_total";
        let help = "Source-address budgets met: reading paused at address_in_flight_max \
                    (limit=in_flight), requests refused at address_rate_per_sec (limit=rate).";
        header(out, name, help, "counter");
        for limit in AddressLimit::ALL {
            let value = self.address_limited[limit.index()];
            let _ = writeln!(out, "{name}{{limit=\"{}\"}} {value}", limit.label());
        }
        header(
            out,
            "ringfence_outcomes_total",
            "Answers by engine outcome kind or rejection code; a retry answered from the \
             request-key memory counts again, and a catalogue page's positions past the last \
             SKU do not count.",
            "counter",
        );
        for (name, value) in &self.outcomes {
            let _ = writeln!(out, "ringfence_outcomes_total{{outcome=\"{name}\"}} {value}");
        }
        let name = "ringfence_http_framing_refusals_total";
        header(out, name, "HTTP requests refused by the framer, by error code.", "counter");
        for (reason, value) in &self.http_framing_refusals {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {value}");
        }
        self.write_latency(out);
    }

    fn write_latency(&self, out: &mut String) {
        let name = "ringfence_request_latency_seconds";
        let help = "Submit-to-outcome latency seen by the event loop.";
        write_histogram(out, name, help, &self.latency_ns);
    }
}

/// Writes `# HELP` and `# TYPE` lines.
pub fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The upper bounds (`le`) of the latency histograms' buckets, in seconds: 100 ns to 10 s, in
/// steps of 1, 2.5 and 5, so a BLP's sub-microsecond service time and a request held by a
/// failing disk both land in a bucket of their own.
pub const LATENCY_BUCKETS_S: [f64; 25] = [
    1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3,
    5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Writes `histogram` (nanoseconds, counted since the node started) as a Prometheus histogram
/// in seconds: cumulative `_bucket` counters over [`LATENCY_BUCKETS_S`], `_sum` and `_count`.
/// A quantile over any window is then the scraper's:
/// `histogram_quantile(0.999, rate(NAME_bucket[5m]))`.
pub fn write_histogram(out: &mut String, name: &str, help: &str, histogram: &Histogram<u64>) {
    header(out, name, help, "histogram");
    let mut counts = [0u64; LATENCY_BUCKETS_S.len()];
    for recorded in histogram.iter_recorded() {
        let seconds = recorded.value_iterated_to() as f64 / 1e9;
        if let Some(bucket) = LATENCY_BUCKETS_S.iter().position(|&le| seconds <= le) {
            counts[bucket] += recorded.count_at_value();
        }
    }
    let mut below = 0;
    for (le, count) in LATENCY_BUCKETS_S.iter().zip(counts) {
        below += count;
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {below}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", histogram.len());
    let sum = histogram.mean() * histogram.len() as f64 / 1e9;
    let _ = writeln!(out, "{name}_sum {sum:.9}");
    let _ = writeln!(out, "{name}_count {}", histogram.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringfence_core::Rejection;

    #[test]
    fn prometheus_text_has_types_and_outcome_labels() {
        // Goal: the exposition names every family with HELP/TYPE and labels outcomes by code.
        let mut metrics = Metrics::default();
        metrics.request(Protocol::Http);
        metrics.outcome(&Outcome::Rejected(Rejection::SoldOut), 1_000);
        metrics.http_framing_refusal("duplicate_content_length");
        let mut out = String::new();
        metrics.write_prometheus(&mut out);
        assert!(out.contains("# TYPE ringfence_requests_total counter"));
        assert!(out.contains("ringfence_requests_total{protocol=\"http\"} 1"));
        assert!(out.contains("ringfence_outcomes_total{outcome=\"sold_out\"} 1"));
        assert!(out.contains("ringfence_request_latency_seconds_count 1"));
        let refusals =
            "ringfence_http_framing_refusals_total{reason=\"duplicate_content_length\"} 1";
        assert!(out.contains(refusals));
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line {line}");
        }
    }

    #[test]
    fn a_latency_histogram_counts_each_sample_in_every_bucket_at_or_above_it() {
        // Goal: the buckets are Prometheus's cumulative `le` counters, in seconds: a 150 ns
        // sample is under 250 ns, two of 3 µs are under 5 µs, one of 20 ms under 25 ms, and
        // `+Inf` and `_count` hold all four; `_sum` is their total.
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for ns in [150, 3_000, 3_000, 20_000_000] {
            histogram.record(ns).unwrap();
        }
        let mut out = String::new();
        write_histogram(&mut out, "t_seconds", "Test.", &histogram);
        let bucket = |le: &str| {
            let prefix = format!("t_seconds_bucket{{le=\"{le}\"}} ");
            let line = out.lines().find_map(|line| line.strip_prefix(&prefix));
            line.unwrap_or_else(|| panic!("no bucket {le} in {out}")).parse::<u64>().unwrap()
        };
        assert!(out.starts_with("# HELP t_seconds Test.\n# TYPE t_seconds histogram\n"));
        let expected = [
            ("0.0000001", 0),
            ("0.00000025", 1),
            ("0.0000025", 1),
            ("0.000005", 3),
            ("0.01", 3),
            ("0.025", 4),
            ("10", 4),
            ("+Inf", 4),
        ];
        for (le, count) in expected {
            assert_eq!(bucket(le), count, "le {le}: {out}");
        }
        assert!(out.contains("\nt_seconds_count 4\n"), "{out}");
        let sum = out.lines().find_map(|l| l.strip_prefix("t_seconds_sum ")).unwrap();
        let sum: f64 = sum.parse().unwrap();
        assert!((sum - 0.020_006_15).abs() < 0.000_1, "{sum}");
    }
}
