//! RFC 3339 timestamps for the journal tools: printing command times and parsing
//! `--until-time`. Times are milliseconds since the Unix epoch, in UTC. The calendar is
//! `jiff`'s: a date that does not exist (`2023-02-31`) is refused, not rolled over.

use jiff::Timestamp;

/// Formats milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
#[must_use]
pub fn format_ms(ms: u64) -> String {
    match i64::try_from(ms).ok().and_then(|ms| Timestamp::from_millisecond(ms).ok()) {
        Some(at) => at.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        // Beyond jiff's range (the year 9999): the raw figure, not a made-up date.
        None => format!("{ms} ms since 1970"),
    }
}

/// Parses an RFC 3339 date-time (`2026-03-01T12:00:00Z`; fractional seconds and `±HH:MM`
/// offsets allowed, an offset required) into milliseconds since the Unix epoch. Fractions
/// below a millisecond are cut off.
pub fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let at: Timestamp = text.parse().map_err(|error| {
        format!("`{text}` is not an RFC 3339 time such as 2026-03-01T12:00:00Z: {error}")
    })?;
    u64::try_from(at.as_millisecond()).map_err(|_| format!("`{text}` is before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_and_honours_offsets() {
        // Goal: printed times parse back, offsets shift to UTC, and junk is refused.
        for ms in [0, 1_700_000_000_123, 951_782_400_000, 4_102_444_800_999] {
            assert_eq!(parse_rfc3339(&format_ms(ms)), Ok(ms));
        }
        assert_eq!(format_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(
            parse_rfc3339("2023-11-15T00:13:20+02:00"),
            parse_rfc3339("2023-11-14T22:13:20Z")
        );
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.5Z"), Ok(1_700_000_000_500));
        for junk in
            ["", "yesterday", "2023-13-01T00:00:00Z", "2023-11-14T22:13:20", "1969-12-31T23:59:59Z"]
        {
            assert!(parse_rfc3339(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn dates_that_do_not_exist_are_refused_not_rolled_over() {
        // Goal: February 31st is an error, not March 3rd; a leap day only in leap years.
        for missing in ["2023-02-31T00:00:00Z", "2023-02-29T00:00:00Z", "2023-04-31T12:00:00Z"] {
            let error = parse_rfc3339(missing).unwrap_err();
            assert!(error.contains("RFC 3339"), "{error}");
        }
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
    }
}
