//! The worker's canvas as task bodies see it ([`crate::task::Canvas`]):
//! Celery's built-in tasks run other tasks in-process (`celery.map`) and
//! apply signatures (`celery.group`, `celery.chord`) through it.

use super::Shared;
use super::execute::{self, States};
use crate::canvas::{self, Sender, Signature};
use crate::task::{Canvas, Request, SoftLimit, TaskContext, TaskError, TaskResult};
use serde_json::{Map, Value};
use std::sync::Arc;

pub(crate) struct BodyCanvas {
    pub shared: Arc<Shared>,
    /// The request whose body is asking (parent of what it sends).
    pub request: Arc<Request>,
}

#[async_trait::async_trait]
impl Canvas for BodyCanvas {
    async fn call(&self, task: &str, args: Vec<Value>, kwargs: Map<String, Value>) -> TaskResult {
        let def = self
            .shared
            .registry
            .get(task)
            .cloned()
            .ok_or_else(|| TaskError::not_registered(task))?;
        let bound = def.params.bind(&def.name, &args, &kwargs)?;
        // `task.type(item)`: called directly, under the caller's request.
        let states = Arc::new(States {
            shared: Arc::clone(&self.shared),
            handle: tokio::runtime::Handle::current(),
            ignore_result: true,
        });
        let ctx = TaskContext::new(
            Arc::clone(&self.request),
            states,
            Arc::new(SoftLimit::default()),
        );
        Box::pin(execute::run(&def, ctx, bound)).await
    }

    async fn apply(&self, sig: &Value, args: Vec<Value>) -> TaskResult {
        let sig = Signature::from_value(sig)
            .ok_or_else(|| TaskError::type_error(format!("not a signature: {sig}")))?;
        let sender = Sender {
            request: &self.request,
            origin: &self.shared.origin,
            router: &self.shared.router,
        };
        let (messages, child) = canvas::apply(&sig, &args, &sender, None, None);
        for m in messages {
            if let (Some((gid, size)), Some(backend)) = (&m.chord_size, &self.shared.backend) {
                backend
                    .set_chord_size(gid, *size)
                    .await
                    .map_err(|e| TaskError::runtime_error(format!("chord size of {gid}: {e}")))?;
            }
            self.shared
                .broker
                .publish(&m.queue, &m.envelope)
                .await
                .map_err(|e| TaskError::runtime_error(format!("publishing {}: {e}", m.id)))?;
            self.shared.events.sent(|| m.sent_event());
        }
        Ok(child.unwrap_or(Value::Null))
    }
}
