//! Bytes ⇄ Celery task messages, with no I/O.
//!
//! * [`envelope`] — kombu's Redis envelope (`body`, `content-type`, `headers`, `properties`).
//! * [`message`] — protocol v2 / v1 / hybrid task messages and their embed.
//! * [`json_tags`] — kombu's JSON type tags (`{"__type__": "datetime", ...}`).
//! * [`compression`] — the `compression` header (zlib for `application/x-gzip`).
//! * [`result_meta`] — the result JSON Celery's Redis backend stores.
//! * [`pidbox`] — remote-control requests and replies (kombu's Mailbox).
//! * [`pyrepr`] — Python reprs for log lines and events.

pub mod compression;
pub mod envelope;
pub mod json_tags;
pub mod message;
pub mod pidbox;
pub mod pyrepr;
pub mod result_meta;

pub use envelope::Envelope;
pub use message::{DecodeError, Embed, TaskMessage};

/// Seconds from a message or a command (a time limit, a rate, an expiry) as
/// a `Duration`: negative and NaN are zero and anything past a century is a
/// century. `Duration::from_secs_f64` panics on what it can't hold, and a
/// `timelimit` of `1e300` reached it (seen while writing the fuzz targets).
pub fn duration_secs(secs: f64) -> std::time::Duration {
    const CENTURY: f64 = 100.0 * 365.25 * 86_400.0;
    if secs.is_nan() || secs <= 0.0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::from_secs_f64(secs.min(CENTURY))
}
