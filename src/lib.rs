//! # rust-celery-worker
//!
//! A Celery worker written in Rust: it consumes Celery protocol v2 (and v1)
//! task messages from kombu's Redis transport, runs the task registered under
//! the message's Celery name, and stores the outcome in Celery's Redis result
//! format, so Python producers and clients (`.delay()`, `AsyncResult.get()`)
//! see nothing unusual.
//!
//! ## Map
//!
//! One task flows left to right; nothing reaches back upstream except through
//! the delivery handle (ack / requeue) that travels with the message.
//!
//! ```text
//! broker ─► decode ─► worker (schedule, execute) ─► outcome ─► backend / ack
//! ```
//!
//! * [`protocol`] — bytes ⇄ [`protocol::TaskMessage`]: kombu's envelope, protocol v2/v1,
//!   kombu JSON tags, compression, result meta JSON. No I/O.
//! * [`broker`] — the [`broker::Broker`] trait and its Redis transport with kombu's
//!   list, priority and `unacked` semantics.
//! * [`backend`] — the [`backend::ResultBackend`] trait and Celery's Redis result format.
//! * [`registry`], [`task`] — the task API: name → handler, argument binding,
//!   the context a task sees, errors with a Python face.
//! * [`worker`] — the pipeline: consume, execute with bounded concurrency,
//!   store, ack; warm and cold shutdown.
//! * [`control`] — remote control (pidbox): `celery inspect` / `control` commands.
//! * [`events`] — typed events and the `celeryev` dispatcher (Flower, `celery events`).
//! * [`tasks`] — Rust-native tasks of the example app (`app.workers.tasks.*`).
//! * `python` (feature `python`, default) — the `-A` app through an embedded
//!   CPython: its conf as config, its tasks as handlers.
//! * [`config`], [`cli`] — one resolved [`config::Config`] from flags, env and
//!   Celery's defaults; [`logging`] prints Celery's log format.
//! * [`boot`], [`daemon`] — the start-up sequence: workdir, detach, privileges,
//!   pidfile, logfile, then the runtime; a restart in place on SIGHUP.
//! * [`beat`] — embedded beat (`-B`) with one leader per broker;
//!   [`metrics`] — `/metrics` and `/healthz`.
//!
//! ## Registering a task
//!
//! ```no_run
//! use rust_celery_worker::{registry::Registry, task::TaskError};
//! let mut registry = Registry::new();
//! registry.blocking("app.workers.tasks.example_task", &["x", "y"], |_ctx, args| {
//!     let (x, y): (i64, i64) = (args.get(0)?, args.get(1)?);
//!     Ok((x + y).into())
//! });
//! ```

pub mod backend;
pub mod banner;
pub(crate) mod batch;
pub mod beat;
pub mod boot;
pub mod broker;
pub mod builtins;
pub mod canvas;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod logging;
pub mod metrics;
pub mod protocol;
#[cfg(feature = "python")]
pub mod python;
pub mod registry;
pub mod task;
pub mod tasks;
pub mod worker;
