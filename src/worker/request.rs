//! One delivery, from bytes to a settled message (Celery's `Request` +
//! `trace`): decode, refuse what cannot run, hold ETAs, wait for a slot, ack
//! early, run, store the outcome.

use super::Shared;
use super::trace::Verdict;
use crate::broker::Delivery;
use crate::config::Config;
use crate::protocol::pyrepr;
use crate::protocol::result_meta::ResultMeta;
use crate::protocol::{DecodeError, Envelope, TaskMessage};
use crate::registry::TaskDef;
use crate::task::{Request, TaskError};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::OwnedSemaphorePermit;

/// Handles one delivery; `held` is its place in the prefetch window, freed
/// when the message is acked (or handed back).
pub(crate) async fn handle(shared: &Arc<Shared>, delivery: Delivery, held: OwnedSemaphorePermit) {
    let Delivery {
        tag,
        queue,
        payload,
    } = delivery;
    let envelope = match payload {
        Ok(env) => env,
        Err(err) => {
            tracing::error!(
                "Received a message that is not a kombu envelope from queue {queue:?}: {err}. \
                 The message has been ignored and discarded."
            );
            return Box::pin(refuse(shared, &tag, &err)).await;
        }
    };
    // Celery looks the name up before decoding the body, so an unknown task
    // is NotRegistered whatever its serializer.
    if let Some(name) = envelope.headers.get("task").and_then(Value::as_str)
        && shared.registry.get(name).is_none()
    {
        return Box::pin(unknown_task(shared, &tag, &envelope, name)).await;
    }
    let msg = match TaskMessage::decode(
        envelope.content_type.as_deref(),
        &envelope.headers,
        &envelope.body,
    ) {
        Ok(m) => m,
        Err(err) => {
            log_invalid(&envelope, &err);
            return Box::pin(refuse(shared, &tag, &err)).await;
        }
    };
    let Some(def) = shared.registry.get(msg.task()).cloned() else {
        return Box::pin(unknown_task(shared, &tag, &envelope, msg.task())).await;
    };
    let name = msg.display_name().to_string();
    let id = msg.id().to_string();
    // Celery checks expiry before announcing the task (strategy.py).
    let (eta, expires) = (msg.eta(), msg.expires());
    if let Some(expires) = expires
        && expires <= chrono::Utc::now()
    {
        let request = build_request(&shared.config, &def, msg, &envelope, &queue);
        return Box::pin(expired(shared, &tag, &name, &request)).await;
    }
    tracing::info!("Task {name}[{id}] received");
    // From here on only the request is kept: a held ETA message costs its
    // arguments and headers, not a second copy inside the envelope.
    let request = build_request(&shared.config, &def, msg, &envelope, &queue);
    drop(envelope);

    let mut held = Some(held);
    if let Some(eta) = eta {
        let wait = (eta - chrono::Utc::now()).to_std().unwrap_or_default();
        if !wait.is_zero() {
            // Like Celery's QoS bump: a held ETA task doesn't use up the
            // prefetch window, but stays unacked until it runs.
            held = None;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shared.shutdown.warm() => return Box::pin(shared.restore(&tag)).await,
            }
            if let Some(expires) = expires
                && expires <= chrono::Utc::now()
            {
                return Box::pin(expired(shared, &tag, &name, &request)).await;
            }
        }
    }

    if let Some(bucket) = shared.limits.get(&def.name) {
        // Waiting for a rate-limit token doesn't hold up other task types:
        // the message leaves the prefetch window (as Celery's QoS bump).
        held = None;
        tokio::select! {
            _ = bucket.acquire() => {}
            _ = shared.shutdown.warm() => return Box::pin(shared.restore(&tag)).await,
        }
    }

    // Pooled bodies wait for a pool process, not for the worker's slots.
    let slots = if def.own_pool {
        &shared.pooled
    } else {
        &shared.slots
    };
    let slot = tokio::select! {
        s = slots.clone().acquire_owned() => s.expect("slot semaphore is never closed"),
        _ = shared.shutdown.warm() => {
            // Prefetched but never started: back to the queue, delivered next.
            return Box::pin(shared.restore(&tag)).await;
        }
    };
    let acks_late = def
        .options
        .acks_late
        .unwrap_or(shared.config.task_acks_late);
    if !acks_late {
        // Early ack (Celery's default): before user code runs.
        Box::pin(shared.ack(&tag)).await;
        drop(held.take());
    }

    // Boxed: a handler waiting on an ETA or a slot shouldn't carry the
    // (large) state of the run inline.
    let verdict = Box::pin(super::trace::trace(shared, def, Arc::new(request), slot)).await;
    if acks_late {
        match verdict {
            Verdict::Ack => Box::pin(shared.ack(&tag)).await,
            Verdict::Reject { requeue } => Box::pin(shared.reject(&tag, requeue)).await,
        }
    }
    drop(held);
    shared.processed.fetch_add(1, Ordering::Relaxed);
}

/// The request a task runs for; time limits resolved as Celery does:
/// message header, else the task's own, else the worker's.
fn build_request(
    cfg: &Config,
    def: &TaskDef,
    msg: TaskMessage,
    env: &Envelope,
    queue: &str,
) -> Request {
    let mut request = Request::from_message(msg, env, queue, &cfg.hostname);
    let (hard, soft) = request.timelimit;
    let option = |s: Option<f64>| s.map(crate::task::seconds_number);
    request.timelimit = (
        hard.or(option(def.options.time_limit))
            .or(cfg.task_time_limit.clone()),
        soft.or(option(def.options.soft_time_limit))
            .or(cfg.task_soft_time_limit.clone()),
    );
    request
}

/// Celery's `on_unknown_task`: log, store `NotRegistered` so the caller is
/// not left waiting, reject without requeue.
async fn unknown_task(shared: &Shared, tag: &str, env: &Envelope, name: &str) {
    let (exchange, routing_key) = env.delivery_info();
    let headers = pyrepr::repr(&serde_json::Value::Object(env.headers.clone()));
    tracing::error!(
        "Received unregistered task of type {}.\nThe message has been ignored and discarded.\n\n\
         Did you remember to import the module containing this task?\n\
         Or maybe you're using relative imports?\n\n\
         Please see\nhttps://docs.celeryq.dev/en/latest/internals/protocol.html\nfor more information.\n\n\
         The full contents of the message body was:\n{}\n\n\
         The full contents of the message headers:\n{}\n\n\
         The delivery info for this task is:\n{{'exchange': {}, 'routing_key': {}}}",
        pyrepr::repr_str(name),
        body_preview(&env.body),
        headers,
        pyrepr::repr_str(&exchange),
        pyrepr::repr_str(&routing_key),
    );
    if let Some(id) = env.headers.get("id").and_then(Value::as_str) {
        let err = TaskError::not_registered(name);
        let mut m = ResultMeta::new(id, "FAILURE", err.to_meta());
        m.traceback = Some(err.traceback_text());
        shared.store_state(&m).await;
    }
    shared.reject(tag, false).await;
}

/// Celery's `dump_body`: the body as a Python bytes repr with its size.
fn body_preview(body: &[u8]) -> String {
    let shown = &body[..body.len().min(1024)];
    let text = String::from_utf8_lossy(shown);
    format!("b{} ({}b)", pyrepr::repr_str(&text), body.len())
}

fn log_invalid(env: &Envelope, err: &DecodeError) {
    let headers = pyrepr::repr(&serde_json::Value::Object(env.headers.clone()));
    match err {
        DecodeError::ContentDisallowed { .. } | DecodeError::Invalid { .. } => tracing::error!(
            "Received invalid task message: {err}\nThe message has been ignored and discarded.\n\n\
             Please ensure your message conforms to the task\nmessage protocol as described here:\n\
             https://docs.celeryq.dev/en/latest/internals/protocol.html\n\n\
             The full contents of the message body was:\n{}",
            body_preview(&env.body)
        ),
        _ => tracing::error!(
            "Can't decode message body: {err} [type:{} encoding:{} headers:{}]\n\nbody: {}",
            pyrepr::repr_str(env.content_type.as_deref().unwrap_or("")),
            pyrepr::repr_str(env.content_encoding.as_deref().unwrap_or("")),
            headers,
            body_preview(&env.body)
        ),
    }
}

/// A message that can never run: store FAILURE when we know its id (so the
/// caller isn't left waiting), then drop it (reject without requeue).
async fn refuse(shared: &Shared, tag: &str, err: &DecodeError) {
    if let Some(id) = err.task_id() {
        let (exc_type, module, message) = err.exception();
        let e = TaskError::new(exc_type, module, vec![Value::String(message)]);
        let mut m = ResultMeta::new(id, "FAILURE", e.to_meta());
        m.traceback = Some(e.traceback_text());
        shared.store_state(&m).await;
    }
    shared.reject(tag, false).await;
}

/// An expired request is not run: REVOKED with reason `expired`, then acked.
async fn expired(shared: &Shared, tag: &str, name: &str, request: &Request) {
    tracing::info!("Discarding revoked task: {name}[{}]", request.id);
    let err = TaskError::new(
        "TaskRevokedError",
        "celery.exceptions",
        vec!["expired".into()],
    );
    let mut m = ResultMeta::new(&request.id, "REVOKED", err.to_meta());
    m.group_id = request.group.clone();
    m.parent_id = request.parent_id.clone();
    shared.store_state(&m).await;
    shared.ack(tag).await;
}
