//! `enable_events`, `disable_events`, `heartbeat`.

use super::{nok, ok};
use crate::events::{Event, WorkerStatus};
use crate::worker::Shared;
use serde_json::Value;
use std::sync::Arc;

pub(crate) fn enable(shared: &Arc<Shared>) -> Value {
    if !shared.events.available() {
        return nok("event dispatcher unavailable");
    }
    if shared.events.set_task_events(true) {
        return ok("task events already enabled");
    }
    tracing::info!("Events of group {{task}} enabled by remote.");
    ok("task events enabled")
}

pub(crate) fn disable(shared: &Arc<Shared>) -> Value {
    if !shared.events.available() {
        return nok("event dispatcher unavailable");
    }
    if !shared.events.set_task_events(false) {
        return ok("task events already disabled");
    }
    tracing::info!("Events of group {{task}} disabled by remote.");
    ok("task events disabled")
}

/// A heartbeat now, with `freq=5` as Celery's handler sends it.
pub(crate) fn heartbeat(shared: &Arc<Shared>) -> Value {
    tracing::debug!("Heartbeat requested by remote.");
    if !shared.events.available() {
        return Value::Null;
    }
    let status = WorkerStatus {
        freq: 5.0,
        ..shared.worker_status()
    };
    shared
        .events
        .send(Event::WorkerHeartbeat(status), shared.state.clock_forward());
    Value::Null
}
