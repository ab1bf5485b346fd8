//! Task name → handler.
//!
//! Names are Celery names (`app.workers.tasks.example_task`): whatever the
//! producer put in `headers.task`. A handler is either *blocking* (runs on a
//! thread of its own, so CPU-heavy or blocking code never stalls consuming,
//! acking or result writing) or *async* (runs on the runtime; must not block).

use crate::task::{Args, Params, TaskContext, TaskResult};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub type BoxFuture = Pin<Box<dyn Future<Output = TaskResult> + Send + 'static>>;
pub type BlockingFn = dyn Fn(&TaskContext, Args) -> TaskResult + Send + Sync;
pub type AsyncFn = dyn Fn(TaskContext, Args) -> BoxFuture + Send + Sync;

/// How a task body runs.
#[derive(Clone)]
pub enum Handler {
    Blocking(Arc<BlockingFn>),
    Async(Arc<AsyncFn>),
}

/// Per-task options, as on a Python `@task(...)` decorator. `None` defers to
/// the worker-wide setting or Celery's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskOptions {
    pub ignore_result: Option<bool>,
    pub track_started: Option<bool>,
    pub store_errors_even_if_ignored: Option<bool>,
    /// `Some(None)` = retry forever; `None` = Celery's default of 3.
    pub max_retries: Option<Option<u32>>,
    /// Seconds before a retry without countdown/eta runs (Celery: 180).
    pub default_retry_delay: Option<f64>,
    /// Exception class names (`exc_type`) that trigger an automatic retry.
    pub autoretry_for: Vec<String>,
    /// Exponential backoff factor in seconds for autoretries (`retry_backoff`).
    pub retry_backoff: Option<f64>,
    /// Cap on the backoff (Celery: 600 s).
    pub retry_backoff_max: Option<f64>,
    /// Full jitter on the backoff (Celery: true).
    pub retry_jitter: Option<bool>,
    pub acks_late: Option<bool>,
    pub reject_on_worker_lost: Option<bool>,
    pub acks_on_failure_or_timeout: Option<bool>,
    /// Hard time limit in seconds.
    pub time_limit: Option<f64>,
    pub soft_time_limit: Option<f64>,
    /// `"10/s"`, `"100/m"`, `"1000/h"`.
    pub rate_limit: Option<String>,
    /// The queue messages of this task go to unless told otherwise
    /// (`@app.task(queue=…)`).
    pub queue: Option<String>,
    /// The priority its messages get unless told otherwise (`@app.task(priority=…)`).
    pub priority: Option<u8>,
}

/// A registered task.
#[derive(Clone)]
pub struct TaskDef {
    pub name: String,
    pub params: Params,
    pub handler: Handler,
    pub options: TaskOptions,
    /// Bounded by a pool of its own (Python bodies in prefork processes)
    /// rather than the worker's `-c` slots, so Rust tasks never wait behind them.
    pub own_pool: bool,
}

impl TaskDef {
    /// Adjusts the options in place: `def.with(|o| o.acks_late = Some(true))`.
    pub fn with(mut self, f: impl FnOnce(&mut TaskOptions)) -> Self {
        f(&mut self.options);
        self
    }

    pub fn ignore_result(self, yes: bool) -> Self {
        self.with(|o| o.ignore_result = Some(yes))
    }

    pub fn track_started(self, yes: bool) -> Self {
        self.with(|o| o.track_started = Some(yes))
    }
}

/// The worker's task table.
#[derive(Clone, Default)]
pub struct Registry {
    tasks: HashMap<String, Arc<TaskDef>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a task; a later registration under the same name replaces the
    /// earlier one.
    pub fn add(&mut self, def: TaskDef) {
        self.tasks.insert(def.name.clone(), Arc::new(def));
    }

    /// Registers a blocking task: `params` are Python-style (`"x"`, `"y=2"`).
    pub fn blocking<F>(&mut self, name: &str, params: &[&str], f: F)
    where
        F: Fn(&TaskContext, Args) -> TaskResult + Send + Sync + 'static,
    {
        self.add(Self::blocking_def(name, params, f));
    }

    /// Registers an async task (must not block the runtime).
    pub fn asynchronous<F, Fut>(&mut self, name: &str, params: &[&str], f: F)
    where
        F: Fn(TaskContext, Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.add(Self::async_def(name, params, f));
    }

    /// A blocking task definition to adjust (`.ignore_result(true)`) before [`Registry::add`].
    pub fn blocking_def<F>(name: &str, params: &[&str], f: F) -> TaskDef
    where
        F: Fn(&TaskContext, Args) -> TaskResult + Send + Sync + 'static,
    {
        TaskDef {
            name: name.to_string(),
            params: Params::parse(params),
            handler: Handler::Blocking(Arc::new(f)),
            options: TaskOptions::default(),
            own_pool: false,
        }
    }

    pub fn async_def<F, Fut>(name: &str, params: &[&str], f: F) -> TaskDef
    where
        F: Fn(TaskContext, Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        TaskDef {
            name: name.to_string(),
            params: Params::parse(params),
            handler: Handler::Async(Arc::new(move |ctx, args| Box::pin(f(ctx, args)))),
            options: TaskOptions::default(),
            own_pool: false,
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<TaskDef>> {
        self.tasks.get(name)
    }

    /// Registered names, sorted (as `celery inspect registered` and the banner show them).
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tasks.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}
