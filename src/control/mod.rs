//! Remote control (pidbox), as `celery/worker/control.py` answers it: the
//! worker's `<nodename>.celery.pidbox` queue on the `celery.pidbox` fanout,
//! one file per command family, Celery's reply shapes.
//!
//! The service runs beside the task consumer on its own connection and
//! task, so a slow command never holds up consuming, and the pipeline never
//! waits for a command.

mod consumers;
mod events;
mod inspect;
mod limits;
pub mod mingle;
mod pool;
mod revoke;

use crate::protocol::Envelope;
use crate::protocol::pidbox::{self, ControlRequest};
use crate::worker::Shared;
use async_trait::async_trait;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use tokio::sync::mpsc;

/// What the `-A` app can tell about itself (`inspect conf`, `report`); the
/// Python bridge implements it.
pub trait AppInfo: Send + Sync {
    /// `app.conf.table(with_defaults)`, JSON-safe, as Celery replies to `conf`.
    fn conf(&self, with_defaults: bool) -> Option<Value>;
    /// `app.bugreport()`.
    fn bugreport(&self) -> Option<String>;
    /// The stacks of the interpreter's threads (Celery's `cry`, for SIGUSR1).
    fn thread_stacks(&self) -> Option<String> {
        None
    }
}

/// The process pool that runs Python bodies, as `pool_grow`/`pool_shrink`
/// and `stats` see it.
#[async_trait]
pub trait ProcessPool: Send + Sync {
    fn size(&self) -> usize;
    fn max_tasks_per_child(&self) -> Option<u64>;
    fn pids(&self) -> Vec<u32>;
    fn grow(&self, n: usize);
    /// Returns how many processes it took away.
    async fn shrink(&self, n: usize) -> usize;
}

/// A command failed the way a Python handler raises: the reply is
/// `{"error": "<repr of the exception>"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandError(pub String);

impl CommandError {
    /// `ValueError('...')`-style reprs.
    pub fn raised(class: &str, message: &str) -> CommandError {
        CommandError(crate::protocol::pyrepr::repr_exception(
            class,
            &[Value::String(message.to_string())],
        ))
    }
}

type Outcome = Result<Value, CommandError>;

pub(crate) fn ok(text: impl Into<String>) -> Value {
    json!({"ok": text.into()})
}

pub(crate) fn nok(text: impl Into<String>) -> Value {
    json!({"error": text.into()})
}

/// Subscribes to the pidbox: done before the worker says it is ready, so a
/// command sent the moment it is ready is heard (Redis drops broadcasts
/// nobody is subscribed to). `None` if a warm shutdown came first.
pub(crate) async fn subscribe(shared: &Arc<Shared>) -> Option<mpsc::Receiver<Vec<u8>>> {
    let queue = format!("{}.{}", shared.config.hostname, pidbox::EXCHANGE);
    let mut failures = 0;
    loop {
        let subscribed = async {
            crate::broker::fanout_of(&*shared.broker)?
                .subscribe_fanout(pidbox::EXCHANGE, &queue)
                .await
        };
        match subscribed.await {
            Ok(rx) => return Some(rx),
            Err(e) => {
                let wait = crate::worker::backoff(failures);
                failures += 1;
                tracing::warn!(
                    "Remote control: cannot subscribe to {}: {e}. Trying again in {:.2} seconds...",
                    pidbox::EXCHANGE,
                    wait.as_secs_f64()
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shared.shutdown.warm() => return None,
                }
            }
        }
    }
}

/// Serves pidbox requests until warm shutdown.
pub(crate) async fn serve(shared: Arc<Shared>, mut requests: mpsc::Receiver<Vec<u8>>) {
    loop {
        let raw = tokio::select! {
            r = requests.recv() => match r {
                Some(raw) => raw,
                None => return,
            },
            _ = shared.shutdown.warm() => return,
        };
        handle_message(&shared, &raw).await;
    }
}

/// One pidbox message: decode, select by destination, run, reply.
pub(crate) async fn handle_message(shared: &Arc<Shared>, raw: &[u8]) {
    let req = match Envelope::parse(raw)
        .map_err(|e| e.to_string())
        .and_then(|env| ControlRequest::from_envelope(&env))
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("Cannot decode message: {e}");
            return;
        }
    };
    shared.state.clock_adjust(req.clock);
    if !req.is_for(&shared.config.hostname) {
        return;
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
        let arguments = crate::protocol::pyrepr::repr(&Value::Object(req.arguments.clone()));
        tracing::debug!(
            "pidbox received method {}({arguments}) [reply_to:{:?} ticket:{:?}]",
            req.method,
            req.reply_to,
            req.ticket
        );
    }
    // `shutdown` raises WorkerShutdown in Celery: no reply, even if asked.
    let replies = req.method != "shutdown";
    let reply = match dispatch(shared, &req).await {
        Ok(v) => v,
        Err(CommandError(repr)) => {
            tracing::error!("pidbox command error: {repr}");
            nok(repr)
        }
    };
    if let (true, Some(reply_to), Some(ticket)) = (replies, &req.reply_to, &req.ticket) {
        let clock = shared.state.clock_forward();
        let env = pidbox::reply_envelope(&shared.config.hostname, reply, reply_to, ticket, clock);
        if let Err(e) = shared
            .broker
            .publish_to(&reply_to.exchange, &reply_to.routing_key, &env)
            .await
        {
            tracing::warn!("Remote control: cannot reply to {}: {e}", req.method);
        }
    }
}

/// Runs one command by its Celery name (aliases included).
async fn dispatch(shared: &Arc<Shared>, req: &ControlRequest) -> Outcome {
    let args = Args(&req.arguments);
    match req.method.as_str() {
        // -- inspect
        "ping" => Ok(ok("pong")),
        "clock" => Ok(json!({"clock": shared.state.clock()})),
        "stats" => Ok(inspect::stats(shared)),
        "active" | "dump_active" => Ok(inspect::active(shared, args.flag("safe"))),
        "reserved" | "dump_reserved" => Ok(inspect::reserved(shared)),
        "scheduled" | "dump_schedule" => Ok(inspect::scheduled(shared)),
        "revoked" | "dump_revoked" => Ok(json!(shared.state.revoked_ids())),
        "registered" | "dump_tasks" => Ok(inspect::registered(
            shared,
            args.list("taskinfoitems"),
            args.flag("builtins"),
        )),
        "active_queues" => Ok(inspect::active_queues(shared)),
        "query_task" => Ok(inspect::query_task(shared, &args.list("ids"))),
        "conf" | "dump_conf" => inspect::conf(shared, args.flag("with_defaults")).await,
        "report" => inspect::report(shared).await,
        "hello" => Ok(mingle::hello(shared, &req.arguments)),
        "memsample" | "memdump" | "objgraph" => Err(CommandError::raised(
            "NotImplementedError",
            &format!("{} needs the Python worker's own memory", req.method),
        )),
        // -- control
        "revoke" => revoke::revoke(shared, &req.arguments).await,
        "terminate" => revoke::terminate(shared, &req.arguments).await,
        "revoke_by_stamped_headers" => revoke::by_stamped_headers(shared, &req.arguments),
        "rate_limit" => limits::rate_limit(shared, &req.arguments),
        "time_limit" => limits::time_limit(shared, &req.arguments),
        "add_consumer" => consumers::add(shared, &req.arguments).await,
        "cancel_consumer" => consumers::cancel(shared, &req.arguments),
        "pool_grow" => pool::grow(shared, args.count("n")?).await,
        "pool_shrink" => pool::shrink(shared, args.count("n")?).await,
        "autoscale" => {
            let get = |k: &str| {
                req.arguments
                    .get(k)
                    .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
                    .map(|n| n as usize)
            };
            match crate::worker::services::update_autoscale(shared, get("max"), get("min")).await {
                Some((max, min)) => Ok(ok(format!("autoscale now max={max} min={min}"))),
                None => Err(CommandError::raised("ValueError", "Autoscale not enabled")),
            }
        }
        "pool_restart" => Err(CommandError::raised(
            "ValueError",
            "Pool restarts not enabled",
        )),
        "enable_events" => Ok(events::enable(shared)),
        "disable_events" => Ok(events::disable(shared)),
        "heartbeat" => Ok(events::heartbeat(shared)),
        "election" => Ok(Value::Null),
        "shutdown" => {
            let msg = args
                .text("msg")
                .unwrap_or_else(|| "Got shutdown from remote".into());
            tracing::warn!("{msg}");
            shared.shutdown.warm_now();
            Ok(Value::Null)
        }
        other => {
            tracing::error!("No such control command: {other}");
            Err(CommandError(format!(
                "KeyError({})",
                crate::protocol::pyrepr::repr_str(other)
            )))
        }
    }
}

/// Typed access to a request's `arguments`, lenient as Python's kwargs are.
#[derive(Clone, Copy)]
pub(crate) struct Args<'a>(pub &'a Map<String, Value>);

impl Args<'_> {
    pub fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    /// Celery's `strtobool` for flags that may arrive as text.
    pub fn flag(&self, k: &str) -> bool {
        match self.get(k) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => {
                matches!(
                    s.to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on" | "y"
                )
            }
            Some(Value::Number(n)) => n.as_f64() != Some(0.0),
            _ => false,
        }
    }

    pub fn text(&self, k: &str) -> Option<String> {
        match self.get(k)? {
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }

    /// Celery's `maybe_list`: one value or a list of them, as strings.
    pub fn list(&self, k: &str) -> Vec<String> {
        match self.get(k) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Null => None,
                    other => Some(other.to_string()),
                })
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(other) => vec![other.to_string()],
            None => Vec::new(),
        }
    }

    pub fn number(&self, k: &str) -> Result<Option<f64>, CommandError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| {
                CommandError::raised(
                    "ValueError",
                    &format!("could not convert string to float: {s:?}"),
                )
            }),
            Some(other) => Err(CommandError::raised(
                "TypeError",
                &format!("{k} must be a number, not {other}"),
            )),
        }
    }

    /// `n` of pool_grow/pool_shrink: an int, 1 by default.
    pub fn count(&self, k: &str) -> Result<usize, CommandError> {
        Ok(self.number(k)?.map_or(1, |n| n.max(0.0) as usize))
    }
}
