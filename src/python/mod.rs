//! The Python Celery app named by `-A`, through an embedded CPython (pyo3):
//! found by Celery's own `find_app`, its `conf` read as the worker's config,
//! its tasks registered — Rust handlers win where both exist, but the Python
//! task's options (rate_limit, time limits, retries, acks_late…) apply to them.
//!
//! Python types stay in this folder: the rest of the worker sees JSON values,
//! `TaskOptions` and ordinary handlers.

pub mod pool;

use crate::registry::{Handler, Registry, TaskDef, TaskOptions};
use crate::task::{Params, RetryRequest, TaskContext, TaskError, TaskResult};
use pyo3::prelude::*;
use serde_json::{Map, Value, json};
use std::ffi::CString;
use std::sync::Arc;

const RUNTIME_PY: &str = include_str!("runtime.py");

/// Why the app could not be imported: a one-line reason and Python's traceback.
#[derive(Debug)]
pub struct LoadError {
    pub reason: String,
    pub traceback: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for LoadError {}

fn load_error(py: Python<'_>, what: &str, err: PyErr) -> LoadError {
    let traceback = err
        .traceback(py)
        .and_then(|tb| tb.format().ok())
        .unwrap_or_default();
    LoadError {
        reason: format!("{what}: {}", err.value(py)),
        traceback: format!("{traceback}{}", err),
    }
}

/// The loaded app and the runtime module that talks to it.
pub struct PythonApp {
    runtime: Py<PyModule>,
    /// What was loaded, from where (for the banner).
    pub description: String,
}

impl PythonApp {
    /// Imports `name` (`pkg.module`, `pkg.module:attr`, or a package holding
    /// the app) with the current directory first on `sys.path` and an active
    /// `VIRTUAL_ENV` honoured.
    pub fn load(name: &str) -> Result<PythonApp, LoadError> {
        Python::attach(|py| {
            let code = CString::new(RUNTIME_PY).expect("runtime.py has no NUL");
            let runtime = PyModule::from_code(py, &code, c"rcw_runtime.py", c"rcw_runtime")
                .map_err(|e| load_error(py, "loading the worker's Python runtime", e))?;
            let cwd = std::env::current_dir()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| ".".into());
            runtime
                .getattr("prepare")
                .and_then(|f| f.call1((cwd,)))
                .map_err(|e| load_error(py, "preparing sys.path", e))?;
            let description: String = runtime
                .getattr("load")
                .and_then(|f| f.call1((name,)))
                .and_then(|d| d.extract())
                .map_err(|e| {
                    load_error(
                        py,
                        &format!("Unable to load celery application {name:?}"),
                        e,
                    )
                })?;
            Ok(PythonApp {
                runtime: runtime.unbind(),
                description,
            })
        })
    }

    /// Calls runtime function `func` with `args` (a tuple): its `str`
    /// reply, `None` when it returns None; a Python error comes back with
    /// its traceback.
    fn call<A>(&self, func: &str, args: A) -> anyhow::Result<Option<String>>
    where
        A: for<'py> pyo3::call::PyCallArgs<'py>,
    {
        Python::attach(|py| {
            self.runtime
                .bind(py)
                .getattr(func)
                .and_then(|f| f.call1(args))
                .and_then(|r| r.extract::<Option<String>>())
                .map_err(|e| anyhow::anyhow!("{func}: {}", load_error(py, func, e).traceback))
        })
    }

    /// [`Self::call`] for a function that replies with JSON text.
    fn call_json<A>(&self, func: &str, args: A) -> anyhow::Result<Value>
    where
        A: for<'py> pyo3::call::PyCallArgs<'py>,
    {
        let text = self.call(func, args)?.unwrap_or_default();
        Ok(serde_json::from_str(&text)?)
    }

    /// Fires a worker lifecycle signal (`worker_process_init`, `worker_ready`,
    /// `worker_shutdown`); a failing receiver is logged, as Celery logs it.
    pub fn worker_signal(&self, name: &str) {
        Python::attach(|py| {
            let fired = self
                .runtime
                .bind(py)
                .getattr("worker_signal")
                .and_then(|f| f.call1((name,)));
            if let Err(e) = fired {
                tracing::error!(
                    "Signal handler for {name} raised: {}",
                    load_error(py, name, e).traceback
                );
            }
        })
    }

    /// The app's settings the worker understands (Celery names, JSON values).
    pub fn conf(&self) -> anyhow::Result<Map<String, Value>> {
        let table: Map<String, Value> = crate::config::SETTINGS
            .iter()
            .map(|(k, u)| (k.to_string(), json!(format!("{u:?}"))))
            .collect();
        Ok(self
            .call_json("conf_json", (Value::Object(table).to_string(),))?
            .as_object()
            .cloned()
            .unwrap_or_default())
    }

    /// Names of the app's own tasks that have no Rust handler in `registry`
    /// (Celery's built-in `celery.*` tasks every app carries don't count:
    /// they alone never justify starting a pool).
    pub fn python_only_tasks(&self, registry: &Registry) -> anyhow::Result<Vec<String>> {
        let tasks = self.call_json("tasks_json", ())?;
        Ok(tasks
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .filter(|k| !k.starts_with("celery.") && registry.get(k).is_none())
            .collect())
    }

    /// In a pool process: SIGUSR1 → SoftTimeLimitExceeded, and `worker_process_init`.
    pub fn child_setup(&self) -> anyhow::Result<()> {
        Python::attach(|py| {
            self.runtime
                .bind(py)
                .getattr("install_soft_limit_handler")
                .and_then(|f| f.call0())
                .map(|_| ())
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{}",
                        load_error(py, "install_soft_limit_handler", e).traceback
                    )
                })
        })?;
        self.worker_signal("worker_process_init");
        Ok(())
    }

    /// In a pool process: runs one job line, always answering with a reply line.
    pub fn run_job(&self, line: &str) -> String {
        Python::attach(|py| {
            let reply = self
                .runtime
                .bind(py)
                .getattr("run_job")
                .and_then(|f| f.call1((line,)))
                .and_then(|r| r.extract::<String>());
            reply.unwrap_or_else(|e| {
                let le = load_error(py, "running the task", e);
                json!(["error", {"exc_type": "RuntimeError", "exc_module": "builtins",
                    "exc_message": [le.reason], "traceback": le.traceback}])
                .to_string()
            })
        })
    }

    /// Registers the app's tasks: Python bodies for names Rust doesn't
    /// handle (run in `pool` when given, else in this process), and the
    /// Python options on every task of that name.
    pub fn register_tasks(
        &self,
        registry: &mut Registry,
        pool: Option<Arc<pool::Pool>>,
    ) -> anyhow::Result<usize> {
        let tasks = self.call_json("tasks_json", ())?;
        let runner = Arc::new(Python::attach(|py| -> PyResult<Runner> {
            let rt = self.runtime.bind(py);
            Ok(Runner {
                run: rt.getattr("run")?.unbind(),
                raise_soft: rt.getattr("raise_soft_time_limit")?.unbind(),
            })
        })?);
        let mut python_bodies = 0;
        for (name, opts) in tasks.as_object().into_iter().flatten() {
            let def = match registry.get(name) {
                Some(rust) => TaskDef::clone(rust),
                None => {
                    python_bodies += 1;
                    match &pool {
                        Some(p) => pooled_task(name, Arc::clone(p)),
                        None => python_task(name, Arc::clone(&runner)),
                    }
                }
            };
            registry.add(def.with(|o| apply_options(o, opts)));
        }
        Ok(python_bodies)
    }
}

/// The runtime functions a Python task body needs.
struct Runner {
    run: Py<PyAny>,
    raise_soft: Py<PyAny>,
}

/// A task whose body is the Python function (run in this process; the
/// interpreter lock serialises Python code, not the worker around it).
fn python_task(name: &str, runner: Arc<Runner>) -> TaskDef {
    let task = name.to_string();
    TaskDef {
        name: name.to_string(),
        params: Params::passthrough(),
        handler: Handler::Blocking(Arc::new(move |ctx: &TaskContext, _args| {
            run_python(&runner, &task, ctx)
        })),
        options: TaskOptions::default(),
        own_pool: false,
    }
}

/// A task whose body runs in a prefork pool process.
fn pooled_task(name: &str, pool: Arc<pool::Pool>) -> TaskDef {
    let task = name.to_string();
    TaskDef {
        name: name.to_string(),
        params: Params::passthrough(),
        handler: Handler::Async(Arc::new(move |ctx: TaskContext, _args| {
            let (pool, task) = (Arc::clone(&pool), task.clone());
            Box::pin(async move {
                let (args, kwargs, request) = job_parts(&ctx)?;
                let job = serde_json::to_string(&[task, args, kwargs, request])?;
                let reply = pool.run(job, &ctx).await?;
                parse_reply(&reply, &ctx)
            })
        })),
        options: TaskOptions::default(),
        own_pool: true,
    }
}

/// `(args, kwargs, request)` as the JSON texts `runtime.run` takes.
fn job_parts(ctx: &TaskContext) -> Result<(String, String, String), TaskError> {
    let r = ctx.request();
    let args = serde_json::to_string(&r.args)?;
    let kwargs = serde_json::to_string(&r.kwargs)?;
    let request = Value::Object(r.celery_context()).to_string();
    Ok((args, kwargs, request))
}

fn run_python(runner: &Arc<Runner>, task: &str, ctx: &TaskContext) -> TaskResult {
    let r = ctx.request();
    let (args, kwargs, request) = job_parts(ctx)?;
    // The soft limit arrives as SoftTimeLimitExceeded raised in the body's
    // thread, as billiard raises it in a pool process.
    let (deliver, id) = (Arc::clone(runner), r.id.clone());
    ctx.on_soft_time_limit(move || {
        Python::attach(|py| {
            if let Err(e) = deliver.raise_soft.call1(py, (id,)) {
                tracing::warn!("could not deliver the soft time limit: {e}");
            }
        })
    });
    let out: Result<String, TaskError> = Python::attach(|py| {
        runner
            .run
            .call1(py, (task, args, kwargs, request))
            .and_then(|v| v.extract(py))
            .map_err(|e| {
                let le = load_error(py, "running the task", e);
                TaskError::runtime_error(le.reason).with_traceback(le.traceback)
            })
    });
    ctx.clear_soft_time_limit();
    parse_reply(&out?, ctx)
}

/// A runtime reply (`["ok", v, children]`, `["error", exc, children]`,
/// `["retry", {...}, children]`) as the outcome; children go to `ctx`.
fn parse_reply(out: &str, ctx: &TaskContext) -> TaskResult {
    let reply: Value = serde_json::from_str(out)?;
    for child in reply.get(2).and_then(Value::as_array).into_iter().flatten() {
        ctx.add_child(child.clone());
    }
    match (reply.get(0).and_then(Value::as_str), reply.get(1)) {
        (Some("ok"), Some(v)) => Ok(v.clone()),
        (Some("error"), Some(e)) => Err(exception(e)),
        (Some("retry"), Some(p)) => {
            let mut req = RetryRequest::default();
            if let Some(e) = p.get("exc").filter(|e| !e.is_null()) {
                req = req.exc(exception(e));
            }
            if let Some(c) = p.get("countdown").and_then(Value::as_f64) {
                req = req.countdown(c);
            }
            if let Some(eta) = p
                .get("eta")
                .and_then(Value::as_str)
                .and_then(crate::protocol::json_tags::parse_header_time)
            {
                req = req.eta(eta);
            }
            if let Some(args) = p.get("args").and_then(Value::as_array) {
                req.args = Some(args.clone());
            }
            if let Some(kwargs) = p.get("kwargs").and_then(Value::as_object) {
                req.kwargs = Some(kwargs.clone());
            }
            if p.get("has_max").and_then(Value::as_bool) == Some(true) {
                req = req.max_retries(
                    p.get("max_retries")
                        .and_then(Value::as_u64)
                        .map(|m| m as u32),
                );
            }
            Err(req.into())
        }
        _ => Err(TaskError::runtime_error(format!(
            "unexpected reply from the Python runtime: {out}"
        ))),
    }
}

/// `{exc_type, exc_module, exc_message, traceback}` from Python.
fn exception(e: &Value) -> TaskError {
    let s = |k: &str| {
        e.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut err = TaskError::new(
        s("exc_type"),
        s("exc_module"),
        e.get("exc_message")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
    );
    err.traceback = e
        .get("traceback")
        .and_then(Value::as_str)
        .map(str::to_string);
    err
}

/// A Python task's attributes as [`TaskOptions`].
fn apply_options(o: &mut TaskOptions, opts: &Value) {
    let b = |k: &str| opts.get(k).and_then(Value::as_bool);
    let f = |k: &str| opts.get(k).and_then(Value::as_f64);
    if let Some(v) = opts.get("rate_limit") {
        o.rate_limit = v
            .as_str()
            .map(str::to_string)
            .or_else(|| v.as_f64().map(|n| n.to_string()));
    }
    o.time_limit = f("time_limit").or(o.time_limit);
    o.soft_time_limit = f("soft_time_limit").or(o.soft_time_limit);
    o.acks_late = b("acks_late").or(o.acks_late);
    o.ignore_result = b("ignore_result").or(o.ignore_result);
    o.track_started = b("track_started").or(o.track_started);
    o.reject_on_worker_lost = b("reject_on_worker_lost").or(o.reject_on_worker_lost);
    o.store_errors_even_if_ignored =
        b("store_errors_even_if_ignored").or(o.store_errors_even_if_ignored);
    o.acks_on_failure_or_timeout = b("acks_on_failure_or_timeout").or(o.acks_on_failure_or_timeout);
    // Present only when the task sets it; `null` there means "retry forever".
    if let Some(m) = opts.get("max_retries") {
        o.max_retries = Some(m.as_u64().map(|n| n as u32));
    }
    o.default_retry_delay = f("default_retry_delay").or(o.default_retry_delay);
    if let Some(q) = opts.get("queue").and_then(Value::as_str) {
        o.queue = Some(q.to_string());
    }
    if let Some(p) = opts.get("priority").and_then(Value::as_u64) {
        o.priority = Some(p.min(255) as u8);
    }
    o.retry_backoff = f("retry_backoff").filter(|v| *v > 0.0).or(o.retry_backoff);
    o.retry_backoff_max = f("retry_backoff_max").or(o.retry_backoff_max);
    o.retry_jitter = b("retry_jitter").or(o.retry_jitter);
    if let Some(list) = opts.get("autoretry_for").and_then(Value::as_array)
        && !list.is_empty()
    {
        o.autoretry_for = list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
    }
}

impl crate::canvas::host::CanvasHost for PythonApp {
    fn dispatch(
        &self,
        retval: &Value,
        callbacks: &[Value],
        chain: &[Value],
        request: &Value,
    ) -> anyhow::Result<Vec<Value>> {
        let args = (
            retval.to_string(),
            serde_json::to_string(callbacks)?,
            serde_json::to_string(chain)?,
            request.to_string(),
        );
        Ok(serde_json::from_value(self.call_json("dispatch", args)?)?)
    }

    fn mark_failure(
        &self,
        request: &Value,
        exc: &Value,
        traceback: Option<&str>,
        store_result: bool,
    ) -> anyhow::Result<()> {
        let args = (
            request.to_string(),
            exc.to_string(),
            traceback.map(str::to_string),
            store_result,
        );
        self.call("mark_failure", args).map(drop)
    }

    fn chord_complete(
        &self,
        request: &Value,
        values: &Value,
        failure: Option<&Value>,
    ) -> anyhow::Result<()> {
        let failure = failure.cloned().unwrap_or(Value::Null);
        let args = (request.to_string(), values.to_string(), failure.to_string());
        self.call("chord_complete", args).map(drop)
    }
}

impl crate::control::AppInfo for PythonApp {
    fn conf(&self, with_defaults: bool) -> Option<Value> {
        self.call_json("conf_table", (with_defaults,))
            .map_err(|e| tracing::error!("inspect conf: {e:#}"))
            .ok()
    }

    fn thread_stacks(&self) -> Option<String> {
        self.call("thread_stacks", ())
            .map_err(|e| tracing::error!("thread stacks: {e:#}"))
            .ok()
            .flatten()
    }

    fn bugreport(&self) -> Option<String> {
        self.call_json("bugreport", ())
            .map_err(|e| tracing::error!("inspect report: {e:#}"))
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
    }
}

impl crate::beat::BeatHost for PythonApp {
    fn beat_start(
        &self,
        cfg: &crate::config::BeatConfig,
        loglevel: &str,
    ) -> anyhow::Result<String> {
        let reply = self
            .call(
                "beat_start",
                (
                    cfg.scheduler.as_str(),
                    cfg.schedule_filename.as_str(),
                    cfg.max_interval,
                    loglevel,
                ),
            )?
            .unwrap_or_default();
        let (app, max_interval) = reply.split_once('\t').unwrap_or((reply.as_str(), "?"));
        tracing::info!(
            "beat: {} ticking with max interval {max_interval} s, schedule {}",
            cfg.scheduler,
            cfg.schedule_filename
        );
        Ok(app.to_string())
    }

    fn beat_tick(&self) -> anyhow::Result<f64> {
        let next = self.call("beat_tick", ())?.unwrap_or_default();
        Ok(next.parse().unwrap_or(1.0))
    }

    fn beat_stop(&self) {
        if let Err(e) = self.call("beat_stop", ()) {
            tracing::error!("beat: saving the schedule: {e:#}");
        }
    }

    fn beat_thread_start(&self) {
        // SAFETY: the interpreter is initialised (the app is loaded). The
        // thread state made here is never released, so each later
        // `Python::attach` on this thread reuses it instead of making (and
        // dropping) a fresh one, and its thread-locals (RedBeat's lock
        // token) survive between scheduler calls.
        unsafe {
            pyo3::ffi::PyGILState_Ensure();
            pyo3::ffi::PyEval_SaveThread();
        }
    }
}
