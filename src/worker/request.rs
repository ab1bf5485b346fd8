//! One delivery, from bytes to a settled message (Celery's `Request` +
//! `trace`): decode, refuse what cannot run, hold ETAs, wait for a slot, ack
//! early, run, store the outcome.

use super::Shared;
use super::trace::Verdict;
use crate::broker::{Delivery, Settlement};
use crate::config::Config;
use crate::events::Event;
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
    let (queue, payload, settle) = delivery.open().await;
    let mut envelope = match payload {
        Ok(env) => env,
        Err(err) => {
            tracing::error!(
                "Received a message that is not a kombu envelope from queue {queue:?}: {err}. \
                 The message has been ignored and discarded."
            );
            return Box::pin(refuse(shared, &settle, &err)).await;
        }
    };
    // Celery looks the name up before decoding the body, so an unknown task
    // is NotRegistered whatever its serializer.
    if let Some(name) = envelope.headers.get("task").and_then(Value::as_str)
        && shared.registry.get(name).is_none()
    {
        return Box::pin(unknown_task(shared, &settle, &envelope, name)).await;
    }
    let msg = match TaskMessage::decode_taking(
        envelope.content_type.as_deref(),
        &mut envelope.headers,
        &envelope.body,
    ) {
        Ok(m) => m,
        Err(err) => {
            log_invalid(&envelope, &err);
            return Box::pin(refuse(shared, &settle, &err)).await;
        }
    };
    let Some(def) = shared.registry.get(msg.task()).cloned() else {
        return Box::pin(unknown_task(shared, &settle, &envelope, msg.task())).await;
    };
    let name = msg.display_name().to_string();
    let id = msg.id().to_string();
    // Celery checks expiry before announcing the task (strategy.py).
    let (eta, expires) = (msg.eta(), msg.expires());
    let refused = if expires.is_some_and(|e| e <= chrono::Utc::now()) {
        Some(Discard::Expired)
    } else if shared.state.is_revoked(&id) || shared.state.revoked_by_stamps(&msg.headers) {
        Some(Discard::Revoked)
    } else {
        None
    };
    if let Some(why) = refused {
        let request = Arc::new(build_request(shared, &def, msg, envelope, &queue));
        return Box::pin(discard(shared, &def, &settle, &name, &request, why)).await;
    }
    tracing::info!("Task {name}[{id}] received");
    // From here on only the request is kept: a held ETA message costs its
    // arguments and headers, not a second copy inside the envelope.
    let request = Arc::new(build_request(shared, &def, msg, envelope, &queue));
    shared.events.task(
        || shared.state.clock_forward(),
        || Event::TaskReceived {
            uuid: request.id.clone(),
            name: name.clone(),
            queue: queue.clone(),
            args: request_repr(&request, "argsrepr"),
            kwargs: request_repr(&request, "kwargsrepr"),
            root_id: request.root_id.clone(),
            parent_id: request.parent_id.clone(),
            retries: request.retries,
            eta: request.eta.clone(),
            expires: request.expires.clone(),
        },
    );

    let wait = eta
        .map(|eta| (eta - chrono::Utc::now()).to_std().unwrap_or_default())
        .filter(|w| !w.is_zero());
    let shown_eta = wait
        .and(eta)
        .map(crate::protocol::result_meta::format_date_done);
    let stop = shared.state.hold(Arc::clone(&request), shown_eta);
    // However this ends, the request stops being held.
    let _held_guard = Release(shared, &id);
    // Every later way out without running: revoked or expired meanwhile.
    let give_up = |why| Box::pin(discard(shared, &def, &settle, &name, &request, why));

    let mut held = Some(held);
    // Set while the request is outside the window; lowers the broker's
    // prefetch again when the handler ends.
    let mut _outside = None;
    if let Some(wait) = wait {
        // Like Celery's QoS bump: a held ETA task doesn't use up the
        // prefetch window, but stays unacked until it runs.
        held = None;
        _outside = Some(Outside::new(&*shared.broker));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.stopped() => {
                return give_up(Discard::Revoked).await;
            }
            _ = shared.shutdown.warm() => return Box::pin(shared.restore(&settle)).await,
        }
        shared.state.reserve(&id);
        if let Some(expires) = expires
            && expires <= chrono::Utc::now()
        {
            return give_up(Discard::Expired).await;
        }
    }

    if let Some(bucket) = shared.limits.get(&def.name) {
        // Waiting for a rate-limit token doesn't hold up other task types:
        // the message leaves the prefetch window (as Celery's QoS bump).
        if held.take().is_some() {
            _outside = Some(Outside::new(&*shared.broker));
        }
        tokio::select! {
            _ = bucket.acquire() => {}
            _ = stop.stopped() => {
                return give_up(Discard::Revoked).await;
            }
            _ = shared.shutdown.warm() => return Box::pin(shared.restore(&settle)).await,
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
        _ = stop.stopped() => {
            return give_up(Discard::Revoked).await;
        }
        _ = shared.shutdown.warm() => {
            // Prefetched but never started: back to the queue, delivered next.
            return Box::pin(shared.restore(&settle)).await;
        }
    };
    // Revoked or expired while it waited (Celery's `Request.revoked()`
    // checks both again before executing).
    if stop.is_stopped() || shared.state.is_revoked(&id) {
        drop(slot);
        return give_up(Discard::Revoked).await;
    }
    if expires.is_some_and(|e| e <= chrono::Utc::now()) {
        drop(slot);
        return give_up(Discard::Expired).await;
    }
    let acks_late = shared.policy(&def).acks_late;
    // Boxed: a handler waiting on an ETA or a slot shouldn't carry the
    // (large) state of the run inline.
    let run = Box::pin(super::trace::trace(shared, def, request, slot, stop));
    let verdict = if acks_late {
        run.await
    } else {
        // Early ack (Celery's default): issued before user code runs, and
        // settled alongside it rather than first. Waiting for the ack while
        // holding the slot allowed only `-c` tasks per broker round trip
        // (3,500 tasks/s with -c 2 on the 2-core bench machine).
        shared.state.acknowledged(&id);
        let mut ack = Box::pin(shared.ack(&settle));
        // The first poll hands the ack to the broker (`Settle::ack`); the
        // window frees then, so the next fetch need not wait for the ack's
        // reply and goes out in the same write (kombu frees it once the
        // ack returns: the same bound in Redis, a round trip sooner here).
        let issued =
            std::future::poll_fn(|cx| std::task::Poll::Ready(ack.as_mut().poll(cx).is_ready()))
                .await;
        drop(held.take());
        // The body waits for the other handlers of this fetch to free their
        // places too: the next fetch then goes out before the bodies run, and
        // Redis serves it while they do.
        tokio::task::yield_now().await;
        if issued {
            run.await
        } else {
            tokio::join!(ack, run).1
        }
    };
    if acks_late {
        match verdict {
            Verdict::Ack => Box::pin(shared.ack(&settle)).await,
            Verdict::Reject { requeue } => {
                shared.events.task(
                    || shared.state.clock_forward(),
                    || Event::TaskRejected {
                        uuid: id.clone(),
                        requeue,
                    },
                );
                Box::pin(shared.reject(&settle, requeue)).await
            }
        }
    }
    drop(held);
    shared.processed.fetch_add(1, Ordering::Relaxed);
}

/// A delivery held outside the prefetch window, for as long as it lives.
struct Outside<'a>(&'a dyn crate::broker::Broker);

impl<'a> Outside<'a> {
    fn new(broker: &'a dyn crate::broker::Broker) -> Self {
        broker.hold(true);
        Outside(broker)
    }
}

impl Drop for Outside<'_> {
    fn drop(&mut self) {
        self.0.hold(false);
    }
}

/// Stops holding a request when its handler ends, however it ends.
struct Release<'a>(&'a Shared, &'a str);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.state.release(self.1);
    }
}

/// `argsrepr` / `kwargsrepr` as sent, else computed as Python shows them.
pub(crate) fn request_repr(r: &Request, header: &str) -> String {
    if let Some(s) = r.headers.get(header).and_then(Value::as_str) {
        return s.to_string();
    }
    if header == "argsrepr" {
        pyrepr::repr_args(&r.args)
    } else {
        pyrepr::repr(&Value::Object(r.kwargs.clone()))
    }
}

/// The request a task runs for; time limits resolved as Celery does:
/// message header, else the task's own, else the worker's.
fn build_request(
    shared: &Shared,
    def: &TaskDef,
    msg: TaskMessage,
    env: Envelope,
    queue: &str,
) -> Request {
    let cfg: &Config = &shared.config;
    let mut request = Request::from_message(msg, env, queue, &cfg.hostname);
    let (hard, soft) = request.timelimit;
    let option = |s: Option<f64>| s.map(crate::task::seconds_number);
    // `time_limit` sent to the live worker replaces the task's own limits.
    let (task_soft, task_hard) = shared
        .state
        .time_limits(&def.name)
        .unwrap_or((def.options.soft_time_limit, def.options.time_limit));
    request.timelimit = (
        hard.or(option(task_hard)).or(cfg.task_time_limit.clone()),
        soft.or(option(task_soft))
            .or(cfg.task_soft_time_limit.clone()),
    );
    request
}

/// Celery's `on_unknown_task`: log, store `NotRegistered` so the caller is
/// not left waiting, reject without requeue.
async fn unknown_task(shared: &Shared, settle: &Settlement, env: &Envelope, name: &str) {
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
        shared.events.task(
            || shared.state.clock_forward(),
            || Event::TaskRefused {
                uuid: id.to_string(),
                exception: format!("NotRegistered({})", pyrepr::repr_str(name)),
            },
        );
        let err = TaskError::not_registered(name);
        let mut m = ResultMeta::new(id, "FAILURE", err.to_meta());
        m.traceback = Some(err.traceback_text());
        shared.store_state(&m).await;
    }
    shared.reject(settle, false).await;
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
async fn refuse(shared: &Shared, settle: &Settlement, err: &DecodeError) {
    if let Some(id) = err.task_id() {
        let (exc_type, module, message) = err.exception();
        let e = TaskError::new(exc_type, module, vec![Value::String(message)]);
        let mut m = ResultMeta::new(id, "FAILURE", e.to_meta());
        m.traceback = Some(e.traceback_text());
        shared.store_state(&m).await;
    }
    shared.reject(settle, false).await;
}

/// Why a request is discarded without running.
#[derive(Clone, Copy, PartialEq)]
enum Discard {
    Expired,
    Revoked,
}

/// Celery's `Request.revoked()` / expiry: `Discarding revoked task`,
/// `task-revoked`, REVOKED stored (reason `expired` or `revoked`), acked.
async fn discard(
    shared: &Arc<Shared>,
    def: &TaskDef,
    settle: &Settlement,
    name: &str,
    request: &Arc<Request>,
    why: Discard,
) {
    tracing::info!("Discarding revoked task: {name}[{}]", request.id);
    let expired = why == Discard::Expired;
    shared.events.task(
        || shared.state.clock_forward(),
        || Event::TaskRevoked {
            uuid: request.id.clone(),
            terminated: false,
            signum: None,
            expired,
        },
    );
    let mut m = super::revoked_meta(&request.id, if expired { "expired" } else { "revoked" });
    m.group_id = request.group.clone();
    m.parent_id = request.parent_id.clone();
    shared.store_state(&m).await;
    if request.embed.chord.is_some() {
        super::trace::chord_part_revoked(shared, def, request, m.result).await;
    }
    shared.ack(settle).await;
}
