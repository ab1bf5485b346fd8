//! Runs a task body: blocking handlers on the blocking pool, async ones on
//! the runtime; a panic becomes a `RuntimeError` FAILURE, never a crash.

use super::Shared;
use crate::protocol::result_meta::ResultMeta;
use crate::registry::{Handler, TaskDef};
use crate::task::{Args, Request, StateWriter, TaskContext, TaskError, TaskResult};
use std::any::Any;
use std::sync::Arc;

/// Runs `def`'s handler to completion.
pub(crate) async fn run(def: &TaskDef, ctx: TaskContext, args: Args) -> TaskResult {
    let joined = match &def.handler {
        Handler::Blocking(f) => {
            let f = Arc::clone(f);
            tokio::task::spawn_blocking(move || f(&ctx, args)).await
        }
        Handler::Async(f) => tokio::spawn(f(ctx, args)).await,
    };
    match joined {
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(TaskError::runtime_error(format!(
            "task panicked: {}",
            panic_message(e.into_panic())
        ))),
        Err(e) => Err(TaskError::runtime_error(format!("task was cancelled: {e}"))),
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// `update_state` for tasks: writes through the worker's backend.
pub(crate) struct States {
    pub shared: Arc<Shared>,
    pub handle: tokio::runtime::Handle,
    pub ignore_result: bool,
}

impl StateWriter for States {
    fn write_state(
        &self,
        request: &Request,
        state: &str,
        meta: serde_json::Value,
    ) -> Result<(), TaskError> {
        if self.ignore_result {
            return Ok(());
        }
        let mut m = ResultMeta::new(&request.id, state, meta);
        m.group_id = request.group.clone();
        m.parent_id = request.parent_id.clone();
        let shared = Arc::clone(&self.shared);
        // Blocking tasks call this from the blocking pool; async tasks from a
        // runtime thread, where block_in_place keeps other tasks running.
        tokio::task::block_in_place(|| {
            self.handle
                .block_on(async move { shared.store_state(&m).await })
        });
        Ok(())
    }
}
