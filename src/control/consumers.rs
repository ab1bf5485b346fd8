//! `add_consumer` / `cancel_consumer`: change the consumed queues live.

use super::{Args, CommandError, Outcome, ok};
use crate::worker::Shared;
use serde_json::{Map, Value};
use std::sync::Arc;

pub(crate) async fn add(shared: &Arc<Shared>, args: &Map<String, Value>) -> Outcome {
    let a = Args(args);
    let Some(queue) = a.text("queue").filter(|q| !q.is_empty()) else {
        return Err(CommandError::raised(
            "TypeError",
            "add_consumer() missing 1 required positional argument: 'queue'",
        ));
    };
    match shared.broker.add_queue(&queue).await {
        Ok(true) => tracing::info!("Started consuming from {queue}"),
        Ok(false) => tracing::info!("Already consuming from {queue}"),
        Err(e) => tracing::error!("Cannot consume from {queue}: {e}"),
    }
    Ok(ok(format!("add consumer {queue}")))
}

pub(crate) fn cancel(shared: &Arc<Shared>, args: &Map<String, Value>) -> Outcome {
    let queue = Args(args).text("queue").unwrap_or_default();
    if shared.broker.cancel_queue(&queue) {
        tracing::info!("Stopped consuming from {queue}");
    }
    Ok(ok(format!("no longer consuming from {queue}")))
}
