//! `rate_limit` and `time_limit`: change a task type's limits in the live worker.

use super::{Args, Outcome, nok, ok};
use crate::worker::Shared;
use serde_json::{Map, Value};
use std::sync::Arc;

pub(crate) fn rate_limit(shared: &Arc<Shared>, args: &Map<String, Value>) -> Outcome {
    let a = Args(args);
    let task = a.text("task_name").unwrap_or_default();
    let spec = match a.get("rate_limit") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let rate = if spec.is_empty() {
        None
    } else {
        match crate::worker::rate_limit::parse(&spec) {
            Ok(r) => r,
            Err(e) => {
                return Ok(nok(format!(
                    "Invalid rate limit string: {}",
                    crate::protocol::pyrepr::repr_exception("ValueError", &[Value::String(e)])
                )));
            }
        }
    };
    if shared.registry.get(&task).is_none() {
        tracing::error!("Rate limit attempt for unknown task {task}");
        return Ok(nok("unknown task"));
    }
    shared.limits.set(&task, rate.map(|r| (r, spec.clone())));
    if rate.is_none() {
        tracing::info!("Rate limits disabled for tasks of type {task}");
        return Ok(ok("rate limit disabled successfully"));
    }
    tracing::info!("New rate limit for tasks of type {task}: {spec}.");
    Ok(ok("new rate limit set successfully"))
}

pub(crate) fn time_limit(shared: &Arc<Shared>, args: &Map<String, Value>) -> Outcome {
    let a = Args(args);
    let task = a.text("task_name").unwrap_or_default();
    if shared.registry.get(&task).is_none() {
        tracing::error!("Change time limit attempt for unknown task {task}");
        return Ok(nok("unknown task"));
    }
    let soft = a.number("soft")?;
    let hard = a.number("hard")?;
    shared.state.set_time_limits(&task, soft, hard);
    // Logged as given (`soft=5`, `soft=5.0`), as Celery's %s shows them.
    let show = |k: &str| {
        a.get(k)
            .map_or("None".to_string(), crate::protocol::pyrepr::repr)
    };
    tracing::info!(
        "New time limits for tasks of type {task}: soft={} hard={}",
        show("soft"),
        show("hard")
    );
    Ok(ok("time limits set successfully"))
}
