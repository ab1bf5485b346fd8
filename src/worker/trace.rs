//! Celery's `trace`: run an accepted request under its time limits, then
//! turn the outcome into stored states, follow-up messages (callbacks, chain,
//! retry, errbacks, chord callback) and a verdict for the message.

use super::Shared;
use super::execute::{self, States};
use super::state::Stop;
use crate::backend::ChordPart;
use crate::canvas::{self, Outgoing, Sender, Signature};
use crate::events::Event;
use crate::protocol::pyrepr;
use crate::protocol::result_meta::{Extended, ResultMeta};
use crate::registry::TaskDef;
use crate::task::{
    Request, RetryRequest, SoftLimit, TaskContext, TaskError, soft_time_limit_exceeded,
};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;

/// What to do with the message once the outcome is stored (matters under
/// `acks_late`; early-acked messages are settled already).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Verdict {
    Ack,
    Reject { requeue: bool },
}

/// How a run ended.
enum Ending {
    Returned(Value),
    Raised(TaskError),
    /// The hard time limit (seconds) passed first.
    TimedOut(serde_json::Number),
    /// `revoke(terminate=True)` stopped it with this signal.
    Terminated(i32),
}

/// Runs `request` and settles its outcome. `slot` is released as soon as the
/// task body is done.
pub(crate) async fn trace(
    shared: &Arc<Shared>,
    def: Arc<TaskDef>,
    request: Arc<Request>,
    slot: OwnedSemaphorePermit,
    stop: Arc<Stop>,
) -> Verdict {
    let cfg = &shared.config;
    let t = Tracer::new(shared, &def, &request);
    let name = request
        .headers
        .get("shadow")
        .and_then(Value::as_str)
        .unwrap_or(&request.task)
        .to_string();

    if !t.ignore_result && t.policy.track_started {
        let started = json!({"pid": std::process::id(), "hostname": cfg.hostname});
        shared.store_state(&t.meta("STARTED", started)).await;
    }

    let start = Instant::now();
    let ending = t.run_limited(&name, &stop).await;
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

    match ending {
        Ending::Returned(value) => {
            t.succeeded(&name, value, runtime).await;
            Verdict::Ack
        }
        Ending::Raised(err) if err.is_ignore() => {
            // Celery's IGNORED: nothing stored, nothing sent, the message acked.
            tracing::info!("Task {name}[{}] ignored", request.id);
            Verdict::Ack
        }
        Ending::Raised(err) if err.reject_requeue() == Some(true) => {
            tracing::warn!("Task {name}[{}] {}", request.id, err.repr());
            Verdict::Reject { requeue: true }
        }
        Ending::Raised(err) if err.reject_requeue() == Some(false) => {
            // A rejected message never runs again: FAILURE is stored
            // (Celery's #4222), then the message is dropped.
            t.failed(&name, err, true).await;
            Verdict::Reject { requeue: false }
        }
        Ending::Raised(err) => match t.retry_plan(err) {
            Ok(plan) => {
                if t.republish(&name, plan).await {
                    Verdict::Ack
                } else {
                    Verdict::Reject { requeue: false }
                }
            }
            Err(err) => t.failed(&name, err, true).await,
        },
        Ending::TimedOut(hard) => {
            let shown = pyrepr::repr(&serde_json::Value::Number(hard.clone()));
            tracing::error!(
                "Hard time limit ({shown}s) exceeded for {name}[{}]",
                request.id
            );
            let err = TaskError::new(
                "TimeLimitExceeded",
                "billiard.exceptions",
                vec![hard.into()],
            );
            t.failed(&name, err, false).await
        }
        Ending::Terminated(signum) => {
            t.terminated(&name, signum).await;
            Verdict::Ack
        }
    }
}

/// A retry to publish: its cause, delay and (when `retry(args=…,
/// kwargs=…)` gave them) the new arguments.
struct RetryPlan {
    exc: Option<TaskError>,
    countdown: f64,
    args: Option<Vec<Value>>,
    kwargs: Option<serde_json::Map<String, Value>>,
}

struct Tracer<'a> {
    shared: &'a Arc<Shared>,
    def: &'a TaskDef,
    request: &'a Arc<Request>,
    ignore_result: bool,
    store_errors: bool,
    policy: super::policy::Policy,
    /// What the body published (`request.children`).
    children: Arc<std::sync::Mutex<Vec<Value>>>,
}

/// A chord header task revoked before it ran still counts for its chord
/// (Celery's `mark_as_revoked` → `on_chord_part_return`): the chord fails.
pub(crate) async fn chord_part_revoked(
    shared: &Arc<Shared>,
    def: &TaskDef,
    request: &Arc<Request>,
    exc: Value,
) {
    Tracer::new(shared, def, request)
        .chord_part("REVOKED", exc)
        .await;
}

impl<'a> Tracer<'a> {
    fn new(shared: &'a Arc<Shared>, def: &'a TaskDef, request: &'a Arc<Request>) -> Tracer<'a> {
        let policy = shared.policy(def);
        let ignore_result = request
            .headers
            .get("ignore_result")
            .and_then(Value::as_bool)
            .unwrap_or(policy.ignore_result);
        let store_errors = !ignore_result || policy.store_errors_even_if_ignored;
        Tracer {
            shared,
            def,
            request,
            policy,
            ignore_result,
            store_errors,
            children: Arc::default(),
        }
    }
}

impl Tracer<'_> {
    fn meta(&self, status: &str, result: Value) -> ResultMeta {
        let cfg = &self.shared.config;
        let r = self.request;
        let mut m = ResultMeta::new(&r.id, status, result);
        m.group_id = r.group.clone();
        m.parent_id = r.parent_id.clone();
        m.reply = r.rpc_reply();
        if cfg.result_extended {
            m.extended = Some(Extended {
                name: r.task.clone(),
                args: r.args.clone(),
                kwargs: r.kwargs.clone(),
                worker: cfg.hostname.clone(),
                retries: r.retries,
                queue: r.delivery_info.routing_key.clone(),
            });
        }
        m
    }

    fn sender(&self) -> Sender<'_> {
        Sender {
            request: self.request,
            origin: &self.shared.origin,
            router: &self.shared.router,
        }
    }

    /// Binds arguments and runs the body; the soft limit raises the task's
    /// flag, the hard limit abandons it (a blocking thread finishes in the
    /// background, its result discarded) and frees the slot.
    async fn run_limited(&self, name: &str, stop: &Stop) -> Ending {
        let args =
            match self
                .def
                .params
                .bind(&self.def.name, &self.request.args, &self.request.kwargs)
            {
                Ok(a) => a,
                Err(e) => return Ending::Raised(e),
            };
        let soft_limit = Arc::new(SoftLimit::default());
        let states = Arc::new(States {
            shared: Arc::clone(self.shared),
            handle: tokio::runtime::Handle::current(),
            ignore_result: self.ignore_result,
        });
        let ctx = TaskContext::new(Arc::clone(self.request), states, Arc::clone(&soft_limit))
            .with_children(Arc::clone(&self.children))
            .with_canvas(Arc::new(super::body_canvas::BodyCanvas {
                shared: Arc::clone(self.shared),
                request: Arc::clone(self.request),
            }));
        let process = ctx.process_handle();
        let shared = self.shared;
        shared.state.start(
            &self.request.id,
            &self.request.task,
            Some(Arc::clone(&process)),
        );
        shared.events.task(
            || shared.state.clock_forward(),
            || Event::TaskStarted {
                uuid: self.request.id.clone(),
            },
        );
        let (hard, soft) = self.request.timelimit.clone();
        let secs =
            |n: &serde_json::Number| crate::protocol::duration_secs(n.as_f64().unwrap_or(0.0));
        let soft_timer = soft.map(|s| {
            let flag = Arc::clone(&soft_limit);
            let label = format!("{name}[{}]", self.request.id);
            let wait = secs(&s);
            let shown = pyrepr::repr(&serde_json::Value::Number(s));
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                tracing::warn!("Soft time limit ({shown}s) exceeded for {label}");
                flag.raise_flag();
            })
        });
        let body = execute::run(self.def, ctx, args);
        let limited = async {
            match hard {
                Some(h) => match tokio::time::timeout(secs(&h), body).await {
                    Ok(r) => r.into(),
                    Err(_) => Ending::TimedOut(h),
                },
                None => body.await.into(),
            }
        };
        // A terminate stops the run: the pool process gets the signal (then
        // is replaced), an async body is dropped; a blocking body can't be
        // stopped, so its outcome is discarded.
        let ending = tokio::select! {
            e = limited => e,
            _ = stop.stopped(), if stop.signal().is_some() || !stop.is_stopped() => {
                let signum = stop.signal().unwrap_or(libc::SIGTERM);
                let pid = process.load(std::sync::atomic::Ordering::Acquire);
                if pid != 0 {
                    // SAFETY: signalling the pool child that runs this body.
                    unsafe { libc::kill(pid as i32, signum) };
                } else if matches!(self.def.handler, crate::registry::Handler::Blocking(_)) {
                    tracing::warn!(
                        "Task {name}[{}] runs a blocking body that cannot be stopped: \
                         it goes on in the background and its outcome is discarded",
                        self.request.id
                    );
                }
                Ending::Terminated(signum)
            }
        };
        if let Some(t) = soft_timer {
            t.abort();
        }
        match ending {
            // A task that never looked at the soft limit gets what an
            // uncaught SoftTimeLimitExceeded gives in Python.
            Ending::Returned(_) if soft_limit.ignored() => {
                Ending::Raised(soft_time_limit_exceeded())
            }
            other => other,
        }
    }

    async fn publish_all(&self, messages: Vec<Outgoing>) {
        for m in messages {
            if let (Some((gid, size)), Some(backend)) = (&m.chord_size, &self.shared.backend) {
                let what = || format!("chord size of {gid}");
                super::store::until_ok(what, &self.shared.shutdown, || {
                    backend.set_chord_size(gid, *size)
                })
                .await;
            }
            let what = || format!("publish {}[{}] to {}", m.task(), m.id, m.queue);
            super::store::until_ok(what, &self.shared.shutdown, || {
                self.shared.broker.publish(&m.queue, &m.envelope)
            })
            .await;
            self.shared.events.sent(|| m.sent_event());
        }
    }

    async fn succeeded(&self, name: &str, value: Value, runtime: f64) {
        let embed = &self.request.embed;
        let sent = match &self.shared.canvas_host {
            Some(_) if canvas::host::has_nested_follow_ups(embed) => {
                let (retval, callbacks, chain) = (
                    value.clone(),
                    embed.callbacks.clone().unwrap_or_default(),
                    embed.chain.clone().unwrap_or_default(),
                );
                let request = self.context_value();
                match self
                    .on_host("dispatch callbacks and chain", move |h| {
                        h.dispatch(&retval, &callbacks, &chain, &request)
                    })
                    .await
                {
                    Some(sent) => sent,
                    // The app's code failed (logged): the Rust port sends them.
                    None => {
                        let (follow_ups, sent) = canvas::on_success(&value, &self.sender());
                        self.publish_all(follow_ups).await;
                        sent
                    }
                }
            }
            _ => {
                let (follow_ups, sent) = canvas::on_success(&value, &self.sender());
                self.publish_all(follow_ups).await;
                sent
            }
        };
        let mut children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(|e| e.into_inner()));
        children.extend(sent);
        // The result's repr is only for the event and the log line: not
        // computed when neither is wanted (the default: no -E, -l warning).
        let shown =
            if self.shared.events.builds_task_events() || tracing::enabled!(tracing::Level::INFO) {
                pyrepr::repr(&value)
            } else {
                String::new()
            };
        if !self.ignore_result {
            let mut m = self.meta("SUCCESS", value.clone());
            m.children = Some(children);
            self.shared.store_state(&m).await;
        }
        self.chord_part("SUCCESS", value).await;
        let shared = self.shared;
        shared.events.task(
            || shared.state.clock_forward(),
            || Event::TaskSucceeded {
                uuid: self.request.id.clone(),
                result: truncate(&shown, 1024).to_string(),
                runtime,
            },
        );
        tracing::info!(
            "Task {name}[{}] succeeded in {}s: {}",
            self.request.id,
            pyrepr::repr_float(runtime),
            truncate(&shown, 1024)
        );
    }

    /// FAILURE: stored for this task and every chain step that won't run,
    /// chord notified, errbacks sent.
    /// `raised`: the error came out of the task body (it has a traceback);
    /// a hard time limit comes from outside, and Celery stores none then.
    async fn failed(&self, name: &str, err: TaskError, raised: bool) -> Verdict {
        if err.exc_type == "WorkerLostError"
            && self.policy.acks_late
            && self.policy.reject_on_worker_lost
        {
            // The pool process died under the task: back on the queue, no
            // failure stored (task_reject_on_worker_lost).
            tracing::error!(
                "Task {name}[{}] lost its pool process; requeued: {}",
                self.request.id,
                err.repr()
            );
            return Verdict::Reject { requeue: true };
        }
        let traceback = err.traceback_text();
        let stored_tb = raised.then(|| traceback.clone());
        let exc = err.to_meta();
        let embed = &self.request.embed;
        let in_canvas = embed.chord.as_ref().is_some_and(|c| !c.is_null())
            || embed.chain.as_ref().is_some_and(|c| !c.is_empty())
            || embed.errbacks.as_ref().is_some_and(|e| !e.is_empty());
        if self.shared.canvas_host.is_some() && in_canvas {
            // Celery's `mark_as_failure` with the request: stored, chord
            // told, the rest of the chain failed, errbacks called or sent.
            let (request, meta, tb, store) = (
                self.context_value(),
                exc.clone(),
                stored_tb.clone(),
                self.store_errors,
            );
            let marked = self
                .on_host("mark the failure", move |h| {
                    h.mark_failure(&request, &meta, tb.as_deref(), store)
                })
                .await;
            if marked.is_none() {
                // The app's code failed (logged): the failure is not lost.
                self.settle_failure(exc, stored_tb).await;
            }
        } else {
            self.settle_failure(exc, stored_tb).await;
        }
        let shared = self.shared;
        shared.events.task(
            || shared.state.clock_forward(),
            || Event::TaskFailed {
                uuid: self.request.id.clone(),
                exception: err.repr(),
                traceback: traceback.clone(),
            },
        );
        tracing::error!(
            "Task {name}[{}] raised unexpected: {}\n{}",
            self.request.id,
            err.repr(),
            traceback.trim_end()
        );
        if self.policy.acks_on_failure_or_timeout {
            Verdict::Ack
        } else {
            Verdict::Reject { requeue: false }
        }
    }

    /// The Rust port of `mark_as_failure`: FAILURE stored for this task and
    /// the chain steps that won't run, chord told, errbacks sent.
    async fn settle_failure(&self, exc: Value, stored_tb: Option<String>) {
        if self.store_errors {
            let mut m = self.meta("FAILURE", exc.clone());
            m.traceback = stored_tb.clone();
            self.shared.store_state(&m).await;
            for id in canvas::pending_chain_ids(&self.request.embed) {
                let mut m = ResultMeta::new(&id, "FAILURE", exc.clone());
                m.traceback = stored_tb.clone();
                self.shared.store_state(&m).await;
            }
        }
        self.chord_part("FAILURE", exc).await;
        let errbacks = self.request.embed.errbacks.clone().unwrap_or_default();
        self.publish_all(canvas::on_failure(
            &self.request.id,
            &errbacks,
            &self.sender(),
        ))
        .await;
    }

    /// Celery's request dict with args and kwargs, for the app's own code.
    fn context_value(&self) -> Value {
        let r = self.request;
        let mut ctx = r.celery_context();
        ctx.insert("args".into(), Value::Array(r.args.clone()));
        ctx.insert("kwargs".into(), Value::Object(r.kwargs.clone()));
        Value::Object(ctx)
    }

    /// Runs a blocking call into the app's interpreter off the async
    /// threads; a failure is logged (as Celery logs a failing callback).
    async fn on_host<T: Send + 'static>(
        &self,
        what: &str,
        call: impl FnOnce(&dyn canvas::host::CanvasHost) -> anyhow::Result<T> + Send + 'static,
    ) -> Option<T> {
        let host = Arc::clone(self.shared.canvas_host.as_ref()?);
        // One call at a time: waiting here is cheap, while every caller
        // waiting for the GIL on a thread of its own is not.
        let _lane = self.shared.host_lane.acquire().await.ok()?;
        let r = self.request;
        match tokio::task::spawn_blocking(move || call(host.as_ref())).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::error!("{what} for {}[{}]: {e:#}", r.task, r.id);
                None
            }
            Err(e) => {
                tracing::error!("{what} for {}[{}]: {e}", r.task, r.id);
                None
            }
        }
    }

    /// Decides whether an error becomes a retry: an explicit `ctx.retry()`, or
    /// an `autoretry_for` match. `Ok(plan)` to retry; `Err` with the
    /// exception to store as FAILURE when retries are exhausted (or none was
    /// asked for).
    fn retry_plan(&self, err: TaskError) -> Result<RetryPlan, TaskError> {
        let opts = &self.def.options;
        let req = match err.retry {
            Some(r) => *r,
            None if opts
                .autoretry_for
                .iter()
                .any(|t| t == &err.exc_type || t == "Exception") =>
            {
                let countdown = opts.retry_backoff.filter(|f| *f > 0.0).map(|factor| {
                    let cap = opts.retry_backoff_max.unwrap_or(600.0);
                    let d = (factor * 2f64.powi(self.request.retries as i32)).min(cap);
                    if opts.retry_jitter.unwrap_or(true) {
                        // Full jitter, as Celery: a whole number of seconds in [0, d].
                        (uuid::Uuid::new_v4().as_u128() % (d as u128 + 1)) as f64
                    } else {
                        d
                    }
                });
                RetryRequest {
                    exc: Some(Box::new(err)),
                    countdown,
                    ..Default::default()
                }
            }
            None => return Err(err),
        };
        let max = req
            .max_retries
            .unwrap_or(opts.max_retries.unwrap_or(Some(3)));
        let exc = req.exc.map(|e| *e);
        if let Some(max) = max
            && self.request.retries + 1 > max
        {
            return Err(exc.unwrap_or_else(|| {
                TaskError::new(
                    "MaxRetriesExceededError",
                    "celery.exceptions",
                    vec![json!(format!(
                        "Can't retry {}[{}] args:{} kwargs:{}",
                        self.request.task,
                        self.request.id,
                        pyrepr::repr_args(&self.request.args),
                        pyrepr::repr(&Value::Object(self.request.kwargs.clone()))
                    ))],
                )
            }));
        }
        let countdown = match (req.eta, req.countdown) {
            (Some(eta), _) => (eta - chrono::Utc::now()).num_milliseconds().max(0) as f64 / 1000.0,
            (None, Some(c)) => c,
            (None, None) => opts.default_retry_delay.unwrap_or(180.0),
        };
        Ok(RetryPlan {
            exc,
            countdown,
            args: req.args,
            kwargs: req.kwargs,
        })
    }

    /// Celery's `Task.retry`: the same message again with `retries + 1`, an
    /// eta, and `parent_id` = its own id; RETRY stored with the cause.
    async fn republish(&self, name: &str, plan: RetryPlan) -> bool {
        let r = self.request;
        let RetryPlan {
            exc,
            countdown,
            args,
            kwargs,
        } = plan;
        let Outgoing {
            queue,
            envelope: env,
            ..
        } = canvas::retry_message(
            r,
            countdown,
            args,
            kwargs,
            &self.shared.config.task_default_queue,
        );
        let what = || format!("republish {name}[{}] for retry", r.id);
        let published = super::store::until_ok(what, &self.shared.shutdown, || {
            self.shared.broker.publish(&queue, &env)
        })
        .await
        .is_some();
        if !published {
            return false;
        }
        let when_secs = crate::task::seconds_number(countdown);
        let when = format!("in {}s", pyrepr::repr(&Value::Number(when_secs.clone())));
        let reason = match &exc {
            Some(e) => format!("Retry {when}: {}", e.repr()),
            None => format!("Retry {when}"),
        };
        // Celery's `on_retry` reports the retry's cause (`Retry.exc`).
        let (cause_repr, cause_tb) = match &exc {
            Some(e) => (e.repr(), e.traceback_text()),
            None => ("None".to_string(), String::new()),
        };
        if self.store_errors {
            let cause = exc.unwrap_or_else(|| {
                TaskError::new(
                    "Retry",
                    "celery.exceptions",
                    vec![json!(reason), Value::Null, Value::Number(when_secs)],
                )
            });
            let mut m = self.meta("RETRY", cause.to_meta());
            m.traceback = Some(cause.traceback_text());
            // Celery lists the republished message as the retry's child.
            m.children = Some(vec![canvas::child_ref(&r.id)]);
            self.shared.store_state(&m).await;
        }
        let shared = self.shared;
        shared.events.task(
            || shared.state.clock_forward(),
            || Event::TaskRetried {
                uuid: r.id.clone(),
                exception: cause_repr,
                traceback: cause_tb,
            },
        );
        tracing::info!("Task {name}[{}] retry: {reason}", r.id);
        true
    }

    /// Celery's `_announce_revoked('terminated', …)`: REVOKED with reason
    /// `terminated`, `task-revoked`, the chord told.
    async fn terminated(&self, name: &str, signum: i32) {
        let r = self.request;
        tracing::info!("Task {name}[{}] terminated by signal {signum}", r.id);
        let shared = self.shared;
        shared.events.task(
            || shared.state.clock_forward(),
            || Event::TaskRevoked {
                uuid: r.id.clone(),
                terminated: true,
                signum: Some(signum),
                expired: false,
            },
        );
        let m = {
            let mut m = super::revoked_meta(&r.id, "terminated");
            m.group_id = r.group.clone();
            m.parent_id = r.parent_id.clone();
            m
        };
        if self.store_errors {
            self.shared.store_state(&m).await;
        }
        self.chord_part("REVOKED", m.result.clone()).await;
    }

    /// A chord header part finished: record it and, if it completed the chord
    /// and this worker won the claim, send (or fail) the callback.
    async fn chord_part(&self, state: &str, result: Value) {
        let r = self.request;
        let (Some(chord), Some(group)) = (&r.embed.chord, &r.group) else {
            return;
        };
        let Some(backend) = &self.shared.backend else {
            return;
        };
        let Some(body) = Signature::from_value(chord) else {
            tracing::error!("chord body of {} is not a signature: {chord}", r.id);
            return;
        };
        let part = ChordPart {
            group_id: group.clone(),
            task_id: r.id.clone(),
            group_index: r.group_index,
            state: state.to_string(),
            result,
            chord_size: body.options.get("chord_size").and_then(Value::as_u64),
        };
        let what = || format!("chord part {} of {group}", r.id);
        let Some(Some(join)) = super::store::until_ok(what, &self.shared.shutdown, || {
            backend.chord_part_return(&part)
        })
        .await
        else {
            return;
        };
        let failure = join
            .results
            .iter()
            .find(|(_, s, _)| s == "FAILURE" || s == "REVOKED")
            .map(|(id, _, exc)| json!([id, exc]));
        // With the app loaded, its own code completes the complex chords (a
        // failed part, a nested body, a header saved as a GroupResult): the
        // structure restored, the body applied in any shape, or failed with
        // its errbacks (`chord_error_from_stack`). A plain body after a flat
        // header, the common chord, is sent by Rust.
        let by_app = self.shared.canvas_host.is_some()
            && (failure.is_some()
                || !canvas::host::is_plain(chord)
                || backend.has_group_result(group).await.unwrap_or(true));
        if by_app {
            let values: Vec<Value> = join.results.iter().map(|(_, _, v)| v.clone()).collect();
            let request = self.context_value();
            let completed = self
                .on_host("complete the chord", move |h| {
                    h.chord_complete(&request, &Value::Array(values), failure.as_ref())
                })
                .await;
            if completed.is_none() {
                self.complete_chord(&body, group, join.results).await;
            }
        } else {
            self.complete_chord(&body, group, join.results).await;
        }
        super::store::until_ok(
            || "chord cleanup",
            &self.shared.shutdown,
            || backend.chord_done(group, &join.token),
        )
        .await;
    }

    /// The Rust port of the chord's completion: the body applied with the
    /// header's results, or failed with a `ChordError` and its errbacks sent.
    async fn complete_chord(
        &self,
        body: &Signature,
        group: &str,
        results: Vec<(String, String, Value)>,
    ) {
        let sender = self.sender();
        let group_opt = body
            .options
            .get("group_id")
            .and_then(Value::as_str)
            .unwrap_or(group);
        // A body that is itself a member of an outer chord keeps its index
        // there: the outer chord orders its results by it.
        let group_index = body.options.get("group_index").and_then(Value::as_i64);
        if let Some((id, _, exc)) = results
            .iter()
            .find(|(_, s, _)| s == "FAILURE" || s == "REVOKED")
        {
            let err = TaskError::new(
                "ChordError",
                "celery.exceptions",
                vec![json!(canvas::chord_error_message(id, exc))],
            );
            let callback_id = body.id_or_new();
            let mut m = ResultMeta::new(&callback_id, "FAILURE", err.to_meta());
            m.traceback = Some(err.traceback_text());
            self.shared.store_state(&m).await;
            let errbacks = body.option_list("link_error").unwrap_or_default();
            self.publish_all(canvas::on_failure(&callback_id, &errbacks, &sender))
                .await;
            tracing::error!("Chord {} raised: {}", pyrepr::repr_str(group), err.repr());
        } else {
            let values: Vec<Value> = results.into_iter().map(|(_, _, v)| v).collect();
            // The body may itself be a chain, group or chord (nested canvas).
            let (msgs, _) = canvas::apply(
                body,
                &[Value::Array(values)],
                &sender,
                Some((group_opt, group_index)),
                None,
            );
            self.publish_all(msgs).await;
        }
    }
}

impl From<crate::task::TaskResult> for Ending {
    fn from(r: crate::task::TaskResult) -> Ending {
        match r {
            Ok(v) => Ending::Returned(v),
            Err(e) => Ending::Raised(e),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
