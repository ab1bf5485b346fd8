//! What a task sees: its request, its bound arguments, `update_state`, and the
//! error type whose shape Python re-raises.
//!
//! Errors are values with a Celery face: a [`TaskError`] is stored exactly as
//! `{exc_type, exc_message, exc_module}`, so `AsyncResult.get()` in Python
//! raises `ValueError` for `TaskError::value_error(..)`.

use crate::protocol::pyrepr;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::fmt;
use std::sync::Arc;

/// The outcome of a task body.
pub type TaskResult = Result<Value, TaskError>;

/// An exception as Celery stores it (`prepare_exception` in celery/backends/base.py).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskError {
    /// Class `__qualname__`, e.g. `ValueError`.
    pub exc_type: String,
    /// Module Python imports to find the class, e.g. `builtins`.
    pub exc_module: String,
    /// The exception's args (always a list on the wire).
    pub exc_message: Vec<Value>,
    /// Text stored as `traceback`; Celery stores Python's formatted traceback.
    pub traceback: Option<String>,
    /// Set when this error is a request to retry (Celery's `Retry`).
    pub retry: Option<Box<RetryRequest>>,
}

/// What `self.retry(...)` asks for. Unset fields fall back to the task's
/// options (`default_retry_delay`, `max_retries`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RetryRequest {
    /// The exception that caused the retry, stored as the RETRY state and, once
    /// retries are exhausted, as the FAILURE.
    pub exc: Option<Box<TaskError>>,
    pub countdown: Option<f64>,
    pub eta: Option<chrono::DateTime<chrono::Utc>>,
    /// Overrides the task's `max_retries`; `Some(None)` = unlimited.
    pub max_retries: Option<Option<u32>>,
    /// New positional arguments for the retried message (`retry(args=…)`).
    pub args: Option<Vec<Value>>,
    /// New keyword arguments for the retried message (`retry(kwargs=…)`).
    pub kwargs: Option<Map<String, Value>>,
}

impl RetryRequest {
    pub fn exc(mut self, exc: TaskError) -> Self {
        self.exc = Some(Box::new(exc));
        self
    }

    pub fn countdown(mut self, seconds: f64) -> Self {
        self.countdown = Some(seconds);
        self
    }

    pub fn eta(mut self, at: chrono::DateTime<chrono::Utc>) -> Self {
        self.eta = Some(at);
        self
    }

    pub fn max_retries(mut self, max: Option<u32>) -> Self {
        self.max_retries = Some(max);
        self
    }
}

impl From<RetryRequest> for TaskError {
    fn from(r: RetryRequest) -> TaskError {
        let mut e = TaskError::new("Retry", "celery.exceptions", Vec::new());
        e.retry = Some(Box::new(r));
        e
    }
}

impl TaskError {
    pub fn new(
        exc_type: impl Into<String>,
        exc_module: impl Into<String>,
        exc_message: Vec<Value>,
    ) -> Self {
        TaskError {
            exc_type: exc_type.into(),
            exc_module: exc_module.into(),
            exc_message,
            traceback: None,
            retry: None,
        }
    }

    /// A built-in Python exception with one message argument.
    pub fn builtin(exc_type: &str, message: impl Into<String>) -> Self {
        Self::new(exc_type, "builtins", vec![Value::String(message.into())])
    }

    pub fn value_error(message: impl Into<String>) -> Self {
        Self::builtin("ValueError", message)
    }

    pub fn type_error(message: impl Into<String>) -> Self {
        Self::builtin("TypeError", message)
    }

    pub fn runtime_error(message: impl Into<String>) -> Self {
        Self::builtin("RuntimeError", message)
    }

    /// An `OSError` subclass as `open()` raises it: `(errno, strerror, filename)`.
    /// Python rebuilds it with the filename, so `str(exc)` names the file.
    pub fn os_error(exc_type: &str, errno: i32, strerror: &str, filename: &str) -> Self {
        Self::new(
            exc_type,
            "builtins",
            vec![errno.into(), strerror.into(), filename.into()],
        )
    }

    /// Maps an I/O error to the exception Python's `open()` would raise.
    pub fn from_io(err: &std::io::Error, filename: &str) -> Self {
        use std::io::ErrorKind::*;
        let errno = err.raw_os_error().unwrap_or(0);
        let class = match err.kind() {
            NotFound => "FileNotFoundError",
            PermissionDenied => "PermissionError",
            IsADirectory => "IsADirectoryError",
            NotADirectory => "NotADirectoryError",
            _ => "OSError",
        };
        let strerror = match errno {
            0 => err.to_string(),
            n => std::io::Error::from_raw_os_error(n)
                .to_string()
                .split(" (os error")
                .next()
                .unwrap_or_default()
                .to_string(),
        };
        Self::os_error(class, errno, &strerror, filename)
    }

    /// Celery's `Ignore`: the worker stores nothing and acks the message
    /// (after `update_state` the task's own state stays).
    pub fn ignore() -> Self {
        Self::new("Ignore", "celery.exceptions", Vec::new())
    }

    /// Celery's `Reject(reason, requeue)`: with `requeue` the message goes
    /// back to its queue (under `acks_late`); without, FAILURE is stored.
    pub fn reject(reason: impl Into<String>, requeue: bool) -> Self {
        Self::new(
            "Reject",
            "celery.exceptions",
            vec![Value::String(reason.into()), Value::Bool(requeue)],
        )
    }

    pub fn is_ignore(&self) -> bool {
        self.exc_module == "celery.exceptions" && self.exc_type == "Ignore"
    }

    /// `Some(requeue)` when this is Celery's `Reject`.
    pub fn reject_requeue(&self) -> Option<bool> {
        (self.exc_module == "celery.exceptions" && self.exc_type == "Reject").then(|| {
            self.exc_message
                .get(1)
                .and_then(Value::as_bool)
                .unwrap_or(false)
        })
    }

    /// Celery's `NotRegistered` for an unknown task name.
    pub fn not_registered(task_name: &str) -> Self {
        Self::new(
            "NotRegistered",
            "celery.exceptions",
            vec![Value::String(task_name.to_string())],
        )
    }

    pub fn with_traceback(mut self, traceback: impl Into<String>) -> Self {
        self.traceback = Some(traceback.into());
        self
    }

    /// Python `repr()` of the exception, e.g. `ValueError('boom')`.
    pub fn repr(&self) -> String {
        pyrepr::repr_exception(&self.exc_type, &self.exc_message)
    }

    /// The `result` field of a FAILURE/RETRY meta.
    pub fn to_meta(&self) -> Value {
        let mut m = Map::with_capacity(3);
        m.insert("exc_type".into(), Value::String(self.exc_type.clone()));
        m.insert("exc_message".into(), Value::Array(self.exc_message.clone()));
        m.insert("exc_module".into(), Value::String(self.exc_module.clone()));
        Value::Object(m)
    }

    /// A traceback-shaped text for the result meta when the task gave none.
    pub fn traceback_text(&self) -> String {
        match &self.traceback {
            Some(t) => t.clone(),
            None => format!(
                "Traceback (most recent call last):\n  File \"<rust>\", in task\n{}: {}\n",
                self.qualified_name(),
                self.message_text()
            ),
        }
    }

    fn qualified_name(&self) -> String {
        if self.exc_module == "builtins" {
            self.exc_type.clone()
        } else {
            format!("{}.{}", self.exc_module, self.exc_type)
        }
    }

    /// Python `str(exc)` for the common shapes.
    pub fn message_text(&self) -> String {
        match self.exc_message.as_slice() {
            [] => String::new(),
            [Value::String(s)] => s.clone(),
            [one] => pyrepr::repr(one),
            [
                Value::Number(errno),
                Value::String(msg),
                Value::String(file),
            ] => {
                format!("[Errno {errno}] {msg}: {}", pyrepr::repr_str(file))
            }
            many => pyrepr::repr_args(many),
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repr())
    }
}

impl std::error::Error for TaskError {}

impl From<serde_json::Error> for TaskError {
    fn from(e: serde_json::Error) -> Self {
        TaskError::type_error(e.to_string())
    }
}

/// Where a message came from, as `self.request.delivery_info` shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryInfo {
    pub exchange: String,
    pub routing_key: String,
    pub priority: u8,
    pub redelivered: bool,
}

/// The request a task runs for (Celery's `Task.request`).
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub id: String,
    pub task: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub retries: u32,
    pub root_id: Option<String>,
    pub parent_id: Option<String>,
    pub group: Option<String>,
    pub group_index: Option<i64>,
    pub eta: Option<String>,
    pub expires: Option<String>,
    pub hostname: String,
    pub delivery_info: DeliveryInfo,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub origin: Option<String>,
    /// `[hard, soft]` time limits in seconds, as they apply to this run; kept
    /// as numbers so logs and errors show `1` or `1.0` as they were given.
    pub timelimit: (Option<serde_json::Number>, Option<serde_json::Number>),
    /// Callbacks, errbacks, remaining chain and chord of this message.
    pub embed: crate::protocol::Embed,
    /// All headers as received, unknown ones included (kept on retry).
    pub headers: Map<String, Value>,
    /// The message properties as received (`request.properties`).
    pub properties: Map<String, Value>,
    /// The queue it was consumed from (where its retry goes back to).
    pub queue: String,
}

impl Request {
    /// Where Celery's RPC backend sends this task's states: the caller's
    /// `reply_to` queue, tagged with the `correlation_id` (else the id).
    pub fn rpc_reply(&self) -> Option<(String, String)> {
        let to = self.reply_to.as_ref().filter(|t| !t.is_empty())?;
        let id = self.correlation_id.as_ref().unwrap_or(&self.id);
        Some((to.clone(), id.clone()))
    }

    /// The request for a decoded message consumed from `queue` by node
    /// `hostname`; the envelope's properties move into it.
    pub fn from_message(
        msg: crate::protocol::TaskMessage,
        env: crate::protocol::Envelope,
        queue: &str,
        hostname: &str,
    ) -> Request {
        let h = |k: &str| {
            msg.headers
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let (exchange, routing_key) = env.delivery_info();
        Request {
            id: msg.id().to_string(),
            task: msg.task().to_string(),
            retries: msg.retries(),
            root_id: h("root_id"),
            parent_id: h("parent_id"),
            group: h("group"),
            group_index: msg.group_index(),
            eta: h("eta"),
            expires: h("expires"),
            hostname: hostname.to_string(),
            delivery_info: DeliveryInfo {
                exchange,
                routing_key: if routing_key.is_empty() {
                    queue.to_string()
                } else {
                    routing_key
                },
                priority: env.priority().clamp(0, 255) as u8,
                redelivered: env.redelivered(),
            },
            correlation_id: h("id"),
            reply_to: env
                .properties
                .get("reply_to")
                .and_then(Value::as_str)
                .map(str::to_string),
            origin: h("origin"),
            timelimit: msg.timelimit_numbers(),
            // Moved, not copied: the message is done with once the request exists.
            args: msg.args,
            kwargs: msg.kwargs,
            embed: msg.embed,
            headers: msg.headers,
            properties: env.properties,
            queue: queue.to_string(),
        }
    }

    /// Celery's request dict (`Task.request` / `Context`) without args and
    /// kwargs: every header (custom ones become `request.headers`;
    /// `replaced_task_nesting`, `stamps`, … as sent), then what the worker
    /// knows of the delivery, and the embed.
    pub fn celery_context(&self) -> Map<String, Value> {
        let r = self;
        let mut request = r.headers.clone();
        let known = serde_json::json!({
            "id": r.id, "task": r.task, "retries": r.retries, "root_id": r.root_id,
            "parent_id": r.parent_id, "group": r.group, "group_index": r.group_index,
            "eta": r.eta, "expires": r.expires, "hostname": r.hostname,
            "delivery_info": {
                "exchange": r.delivery_info.exchange, "routing_key": r.delivery_info.routing_key,
                "priority": r.delivery_info.priority, "redelivered": r.delivery_info.redelivered,
            },
            "correlation_id": r.correlation_id, "reply_to": r.reply_to, "origin": r.origin,
            "is_eager": false, "timelimit": [r.timelimit.0, r.timelimit.1],
            "callbacks": r.embed.callbacks, "errbacks": r.embed.errbacks,
            "chain": r.embed.chain, "chord": r.embed.chord,
            "properties": r.properties,
        });
        if let Value::Object(known) = known {
            request.extend(known);
        }
        request
    }
}

/// Writes intermediate states (`update_state`) for a running task.
///
/// Kept as a trait so the task API does not depend on a backend.
pub trait StateWriter: Send + Sync {
    fn write_state(&self, request: &Request, state: &str, meta: Value) -> Result<(), TaskError>;
}

/// The soft time limit as a task sees it: a flag the worker raises, and a
/// note of whether the task looked (a task that never looks is treated as
/// Python treats an uncaught `SoftTimeLimitExceeded`).
#[derive(Default)]
pub struct SoftLimit {
    exceeded: std::sync::atomic::AtomicBool,
    observed: std::sync::atomic::AtomicBool,
    /// Delivers the limit into a body that can take it as an exception
    /// (Python bodies: `SoftTimeLimitExceeded` raised in their thread).
    deliver: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for SoftLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftLimit")
            .field("exceeded", &self.exceeded())
            .finish_non_exhaustive()
    }
}

impl SoftLimit {
    pub fn raise_flag(&self) {
        self.exceeded
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let deliver = self
            .deliver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(deliver) = deliver {
            // The body handles it natively now (catches it or fails with it).
            self.observed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            deliver();
        }
    }

    pub fn exceeded(&self) -> bool {
        self.exceeded.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Exceeded, and the task never checked.
    pub fn ignored(&self) -> bool {
        self.exceeded() && !self.observed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Seconds as a JSON number: whole values become ints (as a Python user
/// writing `time_limit=3` would have it), others stay floats.
pub fn seconds_number(s: f64) -> serde_json::Number {
    if s.fract() == 0.0 && s.abs() < 1e15 {
        serde_json::Number::from(s as i64)
    } else {
        serde_json::Number::from_f64(s).unwrap_or_else(|| serde_json::Number::from(0))
    }
}

/// billiard's `SoftTimeLimitExceeded`, as Python tasks see it.
pub fn soft_time_limit_exceeded() -> TaskError {
    TaskError::new("SoftTimeLimitExceeded", "billiard.exceptions", Vec::new())
}

/// Handed to every task invocation.
#[derive(Clone)]
pub struct TaskContext {
    request: Arc<Request>,
    states: Arc<dyn StateWriter>,
    soft_limit: Arc<SoftLimit>,
    /// The process running the body when it is not this one (a prefork pool
    /// process); 0 until known. Read by `inspect active` and `terminate`.
    process: Arc<std::sync::atomic::AtomicU32>,
    /// Results of tasks the body published (Celery's `request.children`),
    /// stored with its result before the callbacks and chain; not kept
    /// outside a worker.
    children: Option<Arc<std::sync::Mutex<Vec<Value>>>>,
    /// What the body may ask of the worker's canvas (Celery's built-in
    /// tasks use it); absent outside a worker.
    canvas: Option<Arc<dyn Canvas>>,
}

/// The worker's canvas as a task body sees it: run another registered task
/// in this process (`celery.map` calls `task.type(item)`), or apply a
/// signature as the worker applies follow-ups (`celery.group`, `celery.chord`).
#[async_trait::async_trait]
pub trait Canvas: Send + Sync {
    async fn call(&self, task: &str, args: Vec<Value>, kwargs: Map<String, Value>) -> TaskResult;
    /// Publishes `sig` with `args` prepended; returns its result tuple.
    async fn apply(&self, sig: &Value, args: Vec<Value>) -> TaskResult;
}

impl TaskContext {
    pub fn new(
        request: Arc<Request>,
        states: Arc<dyn StateWriter>,
        soft_limit: Arc<SoftLimit>,
    ) -> Self {
        TaskContext {
            request,
            states,
            soft_limit,
            process: Arc::default(),
            children: None,
            canvas: None,
        }
    }

    /// Gives the body the worker's canvas.
    pub fn with_canvas(mut self, canvas: Arc<dyn Canvas>) -> Self {
        self.canvas = Some(canvas);
        self
    }

    /// The worker's canvas, or a RuntimeError when there is none.
    pub fn canvas(&self) -> Result<&Arc<dyn Canvas>, TaskError> {
        self.canvas
            .as_ref()
            .ok_or_else(|| TaskError::runtime_error("no worker canvas in this context"))
    }

    /// Shares the list the body's `children` are collected in.
    pub fn with_children(mut self, children: Arc<std::sync::Mutex<Vec<Value>>>) -> Self {
        self.children = Some(children);
        self
    }

    /// Records a result tuple (`[[id, null], null]`, or a group's) of a task
    /// the body published.
    pub fn add_child(&self, child: Value) {
        if let Some(children) = &self.children {
            children
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(child);
        }
    }

    /// Records the process the body runs in (pool processes call this).
    pub fn set_process(&self, pid: u32) {
        self.process
            .store(pid, std::sync::atomic::Ordering::Release);
    }

    /// Where the worker reads [`TaskContext::set_process`] back.
    pub fn process_handle(&self) -> Arc<std::sync::atomic::AtomicU32> {
        Arc::clone(&self.process)
    }

    /// `self.retry(...)`: return `Err(ctx.retry().exc(e).countdown(5.0).into())`.
    pub fn retry(&self) -> RetryRequest {
        RetryRequest::default()
    }

    /// Has the soft time limit passed? Checking counts as handling it, as
    /// catching `SoftTimeLimitExceeded` does in Python.
    pub fn soft_time_limit_exceeded(&self) -> bool {
        let hit = self.soft_limit.exceeded();
        if hit {
            self.soft_limit
                .observed
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        hit
    }

    /// Registers how to deliver the soft limit into the running body; called
    /// at most once, from the worker's timer.
    pub fn on_soft_time_limit(&self, deliver: impl FnOnce() + Send + 'static) {
        *self
            .soft_limit
            .deliver
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Box::new(deliver));
    }

    /// Deregisters the delivery (the body is done; nothing to interrupt).
    pub fn clear_soft_time_limit(&self) {
        self.soft_limit
            .deliver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// `Err(SoftTimeLimitExceeded)` once the soft limit has passed, for `?`.
    pub fn check_soft_time_limit(&self) -> Result<(), TaskError> {
        if self.soft_time_limit_exceeded() {
            Err(soft_time_limit_exceeded())
        } else {
            Ok(())
        }
    }

    pub fn request(&self) -> &Request {
        &self.request
    }

    pub fn id(&self) -> &str {
        &self.request.id
    }

    /// `self.update_state(state=..., meta=...)`: stores and publishes a custom
    /// state (e.g. `PROGRESS`) that Python sees as `.state` / `.info`.
    /// Blocks until stored; call it from blocking tasks (async tasks should use
    /// `tokio::task::spawn_blocking` or keep progress coarse).
    pub fn update_state(&self, state: &str, meta: Value) -> Result<(), TaskError> {
        self.states.write_state(&self.request, state, meta)
    }
}

/// One parameter of a task's Python-style signature.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: String,
    pub default: Option<Value>,
}

/// A task's parameter list, bound the way Python binds a call.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Params {
    pub params: Vec<Param>,
    /// Accept any call and bind nothing: the body binds `request.args` /
    /// `request.kwargs` itself (Python task bodies do).
    pub passthrough: bool,
}

impl Params {
    /// Parses `["x", "y=2", "source_name=\"documents\""]`: a name, optionally
    /// `=` and a JSON default.
    ///
    /// # Panics
    /// On a malformed spec — it is written by the programmer, not the sender.
    pub fn parse(spec: &[&str]) -> Self {
        let params = spec
            .iter()
            .map(|s| match s.split_once('=') {
                Some((name, default)) => Param {
                    name: name.trim().to_string(),
                    default: Some(serde_json::from_str(default.trim()).unwrap_or_else(|e| {
                        panic!("bad default for parameter {name:?}: {default:?}: {e}")
                    })),
                },
                None => Param {
                    name: s.trim().to_string(),
                    default: None,
                },
            })
            .collect();
        Params {
            params,
            passthrough: false,
        }
    }

    /// Parameters the task body binds itself.
    pub fn passthrough() -> Self {
        Params {
            params: Vec::new(),
            passthrough: true,
        }
    }

    /// Binds positional and keyword arguments to parameters, raising the same
    /// `TypeError` texts CPython does for a bad call.
    pub fn bind(
        &self,
        func: &str,
        args: &[Value],
        kwargs: &Map<String, Value>,
    ) -> Result<Args, TaskError> {
        let short = func.rsplit('.').next().unwrap_or(func);
        if self.passthrough {
            return Ok(Args {
                func: short.to_string(),
                names: Vec::new(),
                values: Vec::new(),
            });
        }
        let n = self.params.len();
        if args.len() > n {
            let required = self.params.iter().filter(|p| p.default.is_none()).count();
            let takes = if required == n {
                format!("{n}")
            } else {
                format!("from {required} to {n}")
            };
            let plural = if n == 1 && required == n { "" } else { "s" };
            let were = if args.len() == 1 { "was" } else { "were" };
            return Err(TaskError::type_error(format!(
                "{short}() takes {takes} positional argument{plural} but {} {were} given",
                args.len()
            )));
        }
        let mut values: Vec<Option<Value>> = vec![None; n];
        for (slot, a) in values.iter_mut().zip(args) {
            *slot = Some(a.clone());
        }
        for (k, v) in kwargs {
            match self.params.iter().position(|p| &p.name == k) {
                Some(i) if values[i].is_some() => {
                    return Err(TaskError::type_error(format!(
                        "{short}() got multiple values for argument '{k}'"
                    )));
                }
                Some(i) => values[i] = Some(v.clone()),
                None => {
                    return Err(TaskError::type_error(format!(
                        "{short}() got an unexpected keyword argument '{k}'"
                    )));
                }
            }
        }
        let missing: Vec<&str> = self
            .params
            .iter()
            .zip(&values)
            .filter(|(p, v)| v.is_none() && p.default.is_none())
            .map(|(p, _)| p.name.as_str())
            .collect();
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|m| format!("'{m}'")).collect();
            let list = match names.len() {
                1 => names[0].clone(),
                2 => format!("{} and {}", names[0], names[1]),
                _ => format!(
                    "{}, and {}",
                    names[..names.len() - 1].join(", "),
                    names[names.len() - 1]
                ),
            };
            let s = if missing.len() == 1 { "" } else { "s" };
            return Err(TaskError::type_error(format!(
                "{short}() missing {} required positional argument{s}: {list}",
                missing.len()
            )));
        }
        let values = values
            .into_iter()
            .zip(&self.params)
            .map(|(v, p)| v.or_else(|| p.default.clone()).unwrap_or(Value::Null))
            .collect();
        Ok(Args {
            func: short.to_string(),
            names: self.params.iter().map(|p| p.name.clone()).collect(),
            values,
        })
    }
}

/// Arguments bound to a task's parameters, in parameter order.
#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    func: String,
    names: Vec<String>,
    values: Vec<Value>,
}

impl Args {
    /// The raw value of parameter `i`.
    pub fn value(&self, i: usize) -> &Value {
        &self.values[i]
    }

    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// Converts parameter `i` to `T`; a mismatch is the `TypeError` Python
    /// callers would get from a type check in the task.
    pub fn get<T: DeserializeOwned>(&self, i: usize) -> Result<T, TaskError> {
        serde_json::from_value(self.values[i].clone()).map_err(|e| {
            TaskError::type_error(format!(
                "{}() argument '{}' has the wrong type: {e}",
                self.func, self.names[i]
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kw(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn binds_like_python() {
        let p = Params::parse(&["file_paths", "source_name=\"documents\""]);
        let a = p.bind("m.f", &[json!(["a"])], &Map::new()).unwrap();
        assert_eq!(a.values(), &[json!(["a"]), json!("documents")]);
        let a = p
            .bind(
                "m.f",
                &[],
                &kw(json!({"source_name": "s", "file_paths": []})),
            )
            .unwrap();
        assert_eq!(a.values(), &[json!([]), json!("s")]);
    }

    #[test]
    fn bad_calls_raise_python_type_errors() {
        let p = Params::parse(&["x", "y"]);
        let e = p
            .bind("app.t.example_task", &[json!(1)], &Map::new())
            .unwrap_err();
        assert_eq!(
            e.exc_message,
            vec![json!(
                "example_task() missing 1 required positional argument: 'y'"
            )]
        );
        let e = p.bind("t", &[], &Map::new()).unwrap_err();
        assert_eq!(
            e.exc_message,
            vec![json!(
                "t() missing 2 required positional arguments: 'x' and 'y'"
            )]
        );
        let e = p
            .bind("t", &[json!(1), json!(2), json!(3)], &Map::new())
            .unwrap_err();
        assert_eq!(
            e.exc_message,
            vec![json!("t() takes 2 positional arguments but 3 were given")]
        );
        let e = p.bind("t", &[json!(1)], &kw(json!({"x": 2}))).unwrap_err();
        assert_eq!(
            e.exc_message,
            vec![json!("t() got multiple values for argument 'x'")]
        );
        let e = p
            .bind("t", &[json!(1), json!(2)], &kw(json!({"z": 2})))
            .unwrap_err();
        assert_eq!(
            e.exc_message,
            vec![json!("t() got an unexpected keyword argument 'z'")]
        );
        assert_eq!(e.exc_type, "TypeError");
    }

    #[test]
    fn io_errors_map_to_python_classes() {
        let err = std::fs::File::open("/definitely/not/here").unwrap_err();
        let e = TaskError::from_io(&err, "/definitely/not/here");
        assert_eq!(e.exc_type, "FileNotFoundError");
        assert_eq!(
            e.exc_message,
            vec![
                json!(2),
                json!("No such file or directory"),
                json!("/definitely/not/here")
            ]
        );
        assert_eq!(
            e.message_text(),
            "[Errno 2] No such file or directory: '/definitely/not/here'"
        );
    }
}
