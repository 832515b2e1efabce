//! The process's log: levels, timestamps, a filter, and optionally JSON lines, through
//! `tracing`. Every crate logs with `tracing` macros (target `ringfence`); the binaries call
//! [`init`] once at start. Rate limits stay where the floods come from
//! ([`crate::admission::LogLimiter`]): the log itself never drops a line.
//!
//! - `RINGFENCE_LOG`: a filter in `tracing`'s `EnvFilter` syntax (`info`, `warn`,
//!   `ringfence=debug`); default `info`. A filter that does not parse is reported and the
//!   default used.
//! - `RINGFENCE_LOG_FORMAT=json`: one JSON object per line (`timestamp`, `level`, `target`,
//!   `fields.message`), for a log shipper; otherwise text:
//!   `2026-03-01T12:00:00.000000Z  INFO ringfence: HTTP API listening on http://127.0.0.1:7080`.
//!
//! Logs go to standard error; standard output stays for the tools' results.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The environment variable holding the filter.
pub const FILTER_ENV: &str = "RINGFENCE_LOG";
/// The environment variable choosing the format: `json` or `text` (the default).
pub const FORMAT_ENV: &str = "RINGFENCE_LOG_FORMAT";

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `timestamp LEVEL target: message`.
    Text,
    /// One JSON object per line.
    Json,
}

impl Format {
    /// The format `RINGFENCE_LOG_FORMAT` names; unset or unknown is text.
    #[must_use]
    pub fn from_env_value(value: Option<&str>) -> Format {
        match value {
            Some(value) if value.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Text,
        }
    }
}

/// Installs the process's log from the environment. Call once, first thing in `main`; a
/// second call does nothing.
pub fn init() {
    init_with_default("info");
}

/// [`init`], with `default` as the filter where `RINGFENCE_LOG` is unset or does not parse
/// (a tool whose own output would drown in `info` lines passes `warn`).
pub fn init_with_default(default: &str) {
    let (filter, problem) = match std::env::var(FILTER_ENV) {
        Err(_) => (EnvFilter::new(default), None),
        Ok(text) => match EnvFilter::try_new(&text) {
            Ok(filter) => (filter, None),
            Err(error) => {
                (EnvFilter::new(default), Some(format!("{FILTER_ENV}={text:?}: {error}")))
            }
        },
    };
    let format = Format::from_env_value(std::env::var(FORMAT_ENV).ok().as_deref());
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match format {
        Format::Json => builder.json().try_init(),
        Format::Text => builder.try_init(),
    };
    if installed.is_ok() {
        if let Some(problem) = problem {
            let message = format!("log filter not understood, using `{default}`: {problem}");
            tracing::warn!(target: "ringfence", "{message}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_is_json_only_when_asked_for() {
        // Goal: an unset or unknown format keeps the human-readable text lines.
        assert_eq!(Format::from_env_value(Some("json")), Format::Json);
        assert_eq!(Format::from_env_value(Some("JSON")), Format::Json);
        assert_eq!(Format::from_env_value(Some("yaml")), Format::Text);
        assert_eq!(Format::from_env_value(None), Format::Text);
    }
}
