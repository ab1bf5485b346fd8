//! One delivery, from bytes to a settled message (Celery's `Request` +
//! `trace`): decode, refuse what cannot run, hold ETAs, wait for a slot, ack
//! early, run, store the outcome.

use super::Shared;
use super::execute::{self, States};
use crate::broker::Delivery;
use crate::protocol::pyrepr;
use crate::protocol::result_meta::{Extended, ResultMeta};
use crate::protocol::{DecodeError, Envelope, TaskMessage};
use crate::registry::TaskDef;
use crate::task::{DeliveryInfo, Request, TaskContext, TaskError};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
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
            return refuse(shared, &tag, &err).await;
        }
    };
    // Celery looks the name up before decoding the body, so an unknown task
    // is NotRegistered whatever its serializer.
    if let Some(name) = envelope.headers.get("task").and_then(Value::as_str)
        && shared.registry.get(name).is_none()
    {
        return unknown_task(shared, &tag, &envelope, name).await;
    }
    let msg = match TaskMessage::decode(
        envelope.content_type.as_deref(),
        &envelope.headers,
        &envelope.body,
    ) {
        Ok(m) => m,
        Err(err) => {
            log_invalid(&envelope, &err);
            return refuse(shared, &tag, &err).await;
        }
    };
    let Some(def) = shared.registry.get(msg.task()).cloned() else {
        return unknown_task(shared, &tag, &envelope, msg.task()).await;
    };
    let name = msg.display_name().to_string();
    let id = msg.id().to_string();
    tracing::info!("Task {name}[{id}] received");

    if let Some(expires) = msg.expires()
        && expires <= chrono::Utc::now()
    {
        return expired(shared, &tag, &msg).await;
    }

    let mut held = Some(held);
    if let Some(eta) = msg.eta() {
        let wait = (eta - chrono::Utc::now()).to_std().unwrap_or_default();
        if !wait.is_zero() {
            // Like Celery's QoS bump: a held ETA task doesn't use up the
            // prefetch window, but stays unacked until it runs.
            held = None;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shared.shutdown.warm() => return shared.restore(&tag).await,
            }
            if let Some(expires) = msg.expires()
                && expires <= chrono::Utc::now()
            {
                return expired(shared, &tag, &msg).await;
            }
        }
    }

    let slot = tokio::select! {
        s = shared.slots.clone().acquire_owned() => s.expect("slot semaphore is never closed"),
        _ = shared.shutdown.warm() => {
            // Prefetched but never started: back to the queue, delivered next.
            return shared.restore(&tag).await;
        }
    };
    // Early ack (Celery's default): before user code runs.
    shared.ack(&tag).await;
    drop(held);

    let delivery_info = delivery_info(&envelope, &queue);
    run(shared, def, msg, delivery_info, &name, slot).await;
    shared.processed.fetch_add(1, Ordering::Relaxed);
}

/// Runs an accepted request and stores its outcome. The concurrency `slot`
/// covers the task body only: the result write happens outside it, bounded
/// by `shared.settling`, so a slot never idles through a round trip.
async fn run(
    shared: &Arc<Shared>,
    def: Arc<TaskDef>,
    msg: TaskMessage,
    delivery_info: DeliveryInfo,
    name: &str,
    slot: OwnedSemaphorePermit,
) {
    let cfg = &shared.config;
    let ignore_result = msg
        .ignore_result()
        .or(def.options.ignore_result)
        .unwrap_or(cfg.task_ignore_result);
    let store_errors = !ignore_result
        || def
            .options
            .store_errors_even_if_ignored
            .unwrap_or(cfg.task_store_errors_even_if_ignored);
    let request = Arc::new(build_request(msg, delivery_info, &cfg.hostname));
    let meta = |status: &str, result: Value| {
        let mut m = ResultMeta::new(&request.id, status, result);
        m.group_id = request.group.clone();
        m.parent_id = request.parent_id.clone();
        if cfg.result_extended {
            m.extended = Some(Extended {
                name: request.task.clone(),
                args: request.args.clone(),
                kwargs: request.kwargs.clone(),
                worker: cfg.hostname.clone(),
                retries: request.retries,
                queue: request.delivery_info.routing_key.clone(),
            });
        }
        m
    };

    if !ignore_result && def.options.track_started.unwrap_or(cfg.task_track_started) {
        let started = serde_json::json!({"pid": std::process::id(), "hostname": cfg.hostname});
        shared.store_state(&meta("STARTED", started)).await;
    }

    let start = Instant::now();
    let outcome = match def.params.bind(&def.name, &request.args, &request.kwargs) {
        Ok(args) => {
            let states = Arc::new(States {
                shared: Arc::clone(shared),
                handle: tokio::runtime::Handle::current(),
                ignore_result,
            });
            let ctx = TaskContext::new(Arc::clone(&request), states);
            execute::run(&def, ctx, args).await
        }
        Err(e) => Err(e),
    };
    let runtime = start.elapsed().as_secs_f64();
    // When results can't be written (backend down), slots stay taken and
    // consuming stops, instead of finished results piling up in memory.
    let _settling = shared
        .settling
        .clone()
        .acquire_owned()
        .await
        .expect("settling semaphore is never closed");
    drop(slot);

    match outcome {
        Ok(value) => {
            let shown = pyrepr::repr(&value);
            if !ignore_result {
                shared.store_state(&meta("SUCCESS", value)).await;
            }
            tracing::info!(
                "Task {name}[{}] succeeded in {}s: {}",
                request.id,
                pyrepr::repr_float(runtime),
                truncate(&shown, 1024)
            );
        }
        Err(err) => {
            let traceback = err.traceback_text();
            if store_errors {
                let mut m = meta("FAILURE", err.to_meta());
                m.traceback = Some(traceback.clone());
                shared.store_state(&m).await;
            }
            tracing::error!(
                "Task {name}[{}] raised unexpected: {}\n{}",
                request.id,
                err.repr(),
                traceback.trim_end()
            );
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn delivery_info(env: &Envelope, queue: &str) -> DeliveryInfo {
    let (exchange, routing_key) = env.delivery_info();
    DeliveryInfo {
        exchange,
        routing_key: if routing_key.is_empty() {
            queue.to_string()
        } else {
            routing_key
        },
        priority: env.priority().clamp(0, 255) as u8,
        redelivered: env.redelivered(),
    }
}

fn build_request(msg: TaskMessage, delivery_info: DeliveryInfo, hostname: &str) -> Request {
    let h = |k: &str| {
        msg.headers
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let mut request = Request {
        id: msg.id().to_string(),
        task: msg.task().to_string(),
        args: Vec::new(),
        kwargs: Default::default(),
        retries: msg.retries(),
        root_id: h("root_id"),
        parent_id: h("parent_id"),
        group: h("group"),
        group_index: msg.group_index(),
        eta: h("eta"),
        expires: h("expires"),
        hostname: hostname.to_string(),
        delivery_info,
        correlation_id: h("id"),
        reply_to: None,
        origin: h("origin"),
    };
    // Moved, not copied: the message is done with once the request exists.
    request.args = msg.args;
    request.kwargs = msg.kwargs;
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
async fn expired(shared: &Shared, tag: &str, msg: &TaskMessage) {
    tracing::info!(
        "Discarding revoked task: {}[{}] (expired)",
        msg.display_name(),
        msg.id()
    );
    let err = TaskError::new(
        "TaskRevokedError",
        "celery.exceptions",
        vec!["expired".into()],
    );
    let mut m = ResultMeta::new(msg.id(), "REVOKED", err.to_meta());
    m.group_id = msg.group().map(str::to_string);
    m.parent_id = msg.parent_id().map(str::to_string);
    shared.store_state(&m).await;
    shared.ack(tag).await;
}
