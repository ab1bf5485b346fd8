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
