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
        Handler::Async(f) => {
            let task = tokio::spawn(f(ctx, args));
            // If the caller stops waiting (hard time limit), the task stops too.
            let _abort = AbortOnDrop(task.abort_handle());
            task.await
        }
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

/// Aborts an async task body when its runner is dropped. Blocking bodies
/// can't be stopped from outside: past the hard limit their thread finishes
/// in the background and its result is discarded.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
        m.reply = request.rpc_reply();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use crate::task::{Params, SoftLimit};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    struct NoStates;
    impl StateWriter for NoStates {
        fn write_state(&self, _: &Request, _: &str, _: serde_json::Value) -> Result<(), TaskError> {
            Ok(())
        }
    }

    fn ctx() -> TaskContext {
        TaskContext::new(
            Arc::new(Request::default()),
            Arc::new(NoStates),
            Arc::new(SoftLimit::default()),
        )
    }

    #[tokio::test]
    async fn async_body_stops_when_its_runner_is_dropped() {
        let finished = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&finished);
        let def = Registry::async_def("t.slow", &[], move |_ctx, _args| {
            let flag = Arc::clone(&flag);
            async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                flag.store(true, Ordering::SeqCst);
                Ok(serde_json::Value::Null)
            }
        });
        let args = Params::default()
            .bind("t.slow", &[], &Default::default())
            .unwrap();
        let r = tokio::time::timeout(Duration::from_millis(50), run(&def, ctx(), args)).await;
        assert!(r.is_err(), "timed out");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !finished.load(Ordering::SeqCst),
            "the aborted body kept running"
        );
    }

    #[tokio::test]
    async fn a_panicking_body_is_a_runtime_error() {
        let def = Registry::blocking_def("t.boom", &[], |_ctx, _args| panic!("kaboom"));
        let args = Params::default()
            .bind("t.boom", &[], &Default::default())
            .unwrap();
        let err = run(&def, ctx(), args).await.unwrap_err();
        assert_eq!(err.exc_type, "RuntimeError");
        assert!(err.message_text().contains("kaboom"));
    }
}
