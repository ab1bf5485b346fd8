//! Celery's log format, so the lines users grep for look the same:
//! `[2026-01-01 12:00:00,123: INFO/MainProcess] Task NAME[ID] received`.

use std::fmt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as Celery's `worker_log_format`.
pub struct CeleryFormat;

impl<S, N> FormatEvent<S, N> for CeleryFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARNING",
            Level::INFO => "INFO",
            Level::DEBUG | Level::TRACE => "DEBUG",
        };
        let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S,%3f");
        write!(writer, "[{now}: {level}/MainProcess] ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Parses Celery's `-l/--loglevel` names, case-insensitively.
pub fn parse_level(name: &str) -> Result<Level, String> {
    match name.to_ascii_uppercase().as_str() {
        "DEBUG" => Ok(Level::DEBUG),
        "INFO" => Ok(Level::INFO),
        "WARNING" | "WARN" => Ok(Level::WARN),
        "ERROR" | "CRITICAL" | "FATAL" => Ok(Level::ERROR),
        other => Err(format!(
            "invalid log level {other:?}: choose from DEBUG, INFO, WARNING, ERROR, CRITICAL, FATAL"
        )),
    }
}

/// Installs the global subscriber writing to stderr at `level`.
pub fn init(level: Level) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .event_format(CeleryFormat)
        .try_init();
}

#[cfg(test)]
mod tests {
    #[test]
    fn levels_are_case_insensitive() {
        assert_eq!(super::parse_level("info"), Ok(tracing::Level::INFO));
        assert_eq!(super::parse_level("Warning"), Ok(tracing::Level::WARN));
        assert!(super::parse_level("loud").is_err());
    }
}
