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
/// the worker-wide setting.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskOptions {
    pub ignore_result: Option<bool>,
    pub track_started: Option<bool>,
    pub store_errors_even_if_ignored: Option<bool>,
}

/// A registered task.
#[derive(Clone)]
pub struct TaskDef {
    pub name: String,
    pub params: Params,
    pub handler: Handler,
    pub options: TaskOptions,
}

impl TaskDef {
    pub fn ignore_result(mut self, yes: bool) -> Self {
        self.options.ignore_result = Some(yes);
        self
    }

    pub fn track_started(mut self, yes: bool) -> Self {
        self.options.track_started = Some(yes);
        self
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
