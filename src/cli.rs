//! Flags that mirror `celery worker`, resolved into one [`Config`], and the
//! start-up sequence the binary runs.

use crate::backend::{ResultBackend, redis::RedisBackend};
use crate::broker::{Broker, redis::RedisBroker};
use crate::config::{self, Config};
use crate::registry::Registry;
use crate::worker::{Worker, shutdown::Shutdown};
use anyhow::{Context, Result, bail};
use clap::Parser;
use std::sync::Arc;

/// A Celery worker written in Rust: a drop-in for `celery -A APP worker`.
#[derive(Debug, Parser)]
#[command(name = "rust-celery-worker", version, about, long_about = None)]
pub struct Cli {
    /// The Celery app (module path), e.g. `app.workers`.
    #[arg(short = 'A', long = "app")]
    pub app: Option<String>,
    /// Broker URL [default: redis://localhost:6379/0].
    #[arg(short = 'b', long = "broker", env = "CELERY_BROKER_URL")]
    pub broker: Option<String>,
    /// Result backend URL (`disabled` for none) [default: the broker URL].
    #[arg(long = "result-backend", env = "CELERY_RESULT_BACKEND")]
    pub result_backend: Option<String>,
    /// Comma-separated queues to consume [default: celery].
    #[arg(short = 'Q', long = "queues", value_delimiter = ',')]
    pub queues: Vec<String>,
    /// Tasks run at once [default: number of CPUs].
    #[arg(short = 'c', long = "concurrency")]
    pub concurrency: Option<usize>,
    /// Node name; `%h` expands to the host name [default: celery@%h].
    #[arg(short = 'n', long = "hostname")]
    pub hostname: Option<String>,
    /// DEBUG, INFO, WARNING, ERROR, CRITICAL or FATAL (any case).
    #[arg(short = 'l', long = "loglevel", default_value = "WARNING")]
    pub loglevel: String,
    /// Messages prefetched per concurrency slot [default: 4].
    #[arg(long = "prefetch-multiplier")]
    pub prefetch_multiplier: Option<usize>,
    /// A Celery setting, e.g. `task_track_started=true`,
    /// `broker_transport_options={"visibility_timeout": 60}` (repeatable).
    #[arg(long = "setting", value_name = "NAME=VALUE")]
    pub settings: Vec<String>,
    /// Hard time limit in seconds for tasks that set none (`task_time_limit`).
    #[arg(long = "time-limit")]
    pub time_limit: Option<f64>,
    /// Soft time limit in seconds (`task_soft_time_limit`).
    #[arg(long = "soft-time-limit")]
    pub soft_time_limit: Option<f64>,
    /// Recycle a Python pool process after this many tasks.
    #[arg(long = "max-tasks-per-child")]
    pub max_tasks_per_child: Option<u64>,
    /// Recycle a Python pool process whose resident memory exceeds this many KiB.
    #[arg(long = "max-memory-per-child")]
    pub max_memory_per_child: Option<u64>,
    /// Internal: run as a prefork pool process for Python task bodies.
    #[arg(long = "pool-child", hide = true)]
    pub pool_child: bool,
    /// Pool for Python task bodies: prefork (default), threads or solo. Rust
    /// tasks always run on the worker's own threads.
    #[arg(short = 'P', long = "pool")]
    pub pool: Option<String>,
    /// Send task events (for Flower and `celery events`).
    #[arg(short = 'E', long = "task-events", visible_alias = "events")]
    pub task_events: bool,
    /// Don't take part in gossip (we never track other workers' events).
    #[arg(long = "without-gossip")]
    pub without_gossip: bool,
    /// Don't ask running workers for their revoked ids at start-up.
    #[arg(long = "without-mingle")]
    pub without_mingle: bool,
    /// Send no worker events (online, heartbeat, offline).
    #[arg(long = "without-heartbeat")]
    pub without_heartbeat: bool,
    /// Seconds between worker heartbeats [default: 2.0].
    #[arg(long = "heartbeat-interval")]
    pub heartbeat_interval: Option<f64>,
    /// File where revoked task ids survive restarts.
    #[arg(short = 'S', long = "statedb")]
    pub statedb: Option<String>,
}

impl Cli {
    /// Flags > env (via clap) > `--setting` > Celery's defaults.
    pub fn into_config(self) -> Result<Config> {
        self.into_config_over(Config::default())
    }

    /// The same over `base` (Celery's defaults with the app's conf applied).
    pub fn into_config_over(self, base: Config) -> Result<Config> {
        let mut cfg = base;
        for s in &self.settings {
            cfg.apply_setting_str(s)?;
        }
        cfg.app = self.app;
        if let Some(b) = self.broker {
            // Without an app conf naming one, results follow the broker, as
            // the example app configures them.
            if !cfg.result_backend_explicit {
                cfg.result_backend = Some(b.clone());
            }
            cfg.broker_url = b;
        }
        if let Some(r) = self.result_backend {
            cfg.result_backend = config::normalize_backend(&r);
        }
        let queues: Vec<String> = self
            .queues
            .into_iter()
            .map(|q| q.trim().to_string())
            .filter(|q| !q.is_empty())
            .collect();
        if !queues.is_empty() {
            // Celery's `select_queues`: with task_create_missing_queues off,
            // -Q may only pick queues task_queues declares.
            if !cfg.create_missing_queues && !cfg.queue_decls.is_empty() {
                let declared: Vec<&str> = cfg.queue_decls.iter().map(|d| d.name.as_str()).collect();
                if let Some(q) = queues.iter().find(|q| !declared.contains(&q.as_str())) {
                    let shown = crate::protocol::pyrepr::repr(&serde_json::json!(queues));
                    let q = crate::protocol::pyrepr::repr_str(q);
                    bail!(
                        "Trying to select queue subset of {shown}, but queue {q} isn't \
                         defined in the `task_queues` setting.\n\nIf you want to automatically \
                         declare unknown queues you can enable the \
                         `task_create_missing_queues` setting."
                    );
                }
            }
            cfg.queues = queues;
        }
        if let Some(c) = self.concurrency {
            if c == 0 {
                bail!("--concurrency must be at least 1");
            }
            cfg.concurrency = c;
        }
        if let Some(n) = self.hostname {
            cfg.hostname = config::expand_hostname(&n);
        }
        if let Some(p) = self.prefetch_multiplier {
            cfg.prefetch_multiplier = p;
        }
        if let Some(p) = self.pool {
            let p = p.to_ascii_lowercase();
            if !matches!(p.as_str(), "prefork" | "threads" | "solo") {
                bail!("-P {p}: choose prefork, threads or solo");
            }
            if p == "solo" {
                // Celery's solo pool: one task at a time, in the worker process.
                cfg.concurrency = 1;
            }
            cfg.pool = Some(p);
        }
        cfg.max_tasks_per_child = self.max_tasks_per_child.or(cfg.max_tasks_per_child);
        cfg.max_memory_per_child = self.max_memory_per_child.or(cfg.max_memory_per_child);
        if let Some(t) = self.time_limit {
            cfg.apply_setting("task_time_limit", serde_json::json!(t))?;
        }
        if let Some(t) = self.soft_time_limit {
            cfg.apply_setting("task_soft_time_limit", serde_json::json!(t))?;
        }
        if self.task_events {
            cfg.task_events = true;
        }
        cfg.heartbeat &= !self.without_heartbeat;
        cfg.mingle &= !self.without_mingle;
        cfg.gossip &= !self.without_gossip;
        if let Some(i) = self.heartbeat_interval {
            if i.is_nan() || i <= 0.0 {
                bail!("--heartbeat-interval must be a positive number of seconds");
            }
            cfg.heartbeat_interval = i;
        }
        if let Some(path) = self.statedb {
            cfg.statedb = Some(config::expand_node_path(&path, &cfg.hostname));
        }
        crate::logging::parse_level(&self.loglevel).map_err(anyhow::Error::msg)?;
        cfg.loglevel = self.loglevel.to_ascii_uppercase();
        for url in std::iter::once(&cfg.broker_url).chain(cfg.result_backend.as_ref()) {
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("socket://"))
            {
                bail!(
                    "unsupported URL {}: this build speaks Redis (redis://, rediss://, socket://)",
                    config::mask_url(url)
                );
            }
        }
        Ok(cfg)
    }
}

/// Parses the command line, starts the worker, and returns the exit code.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    #[cfg(feature = "python")]
    if cli.pool_child {
        return crate::python::pool::child_main(cli.app.as_deref().unwrap_or_default());
    }
    let level = crate::logging::parse_level(&cli.loglevel);
    crate::logging::init(level.unwrap_or(tracing::Level::WARN));
    let (base, app) = match load_app(cli.app.as_deref()) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let config = match cli.into_config_over(base) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    // One runtime thread by default: the pipeline is I/O-bound, and hopping
    // between threads costs more than it gains (measured: see bench/). Task
    // bodies that block run on the blocking pool regardless.
    let threads = std::env::var("RCW_RUNTIME_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1usize);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .thread_name("rcw-runtime")
        .build()
        .expect("tokio runtime");
    // Spawned rather than driven by `block_on`, so the consumer and the
    // request handlers share the runtime thread instead of waking each other
    // across threads.
    let outcome = runtime.block_on(async { tokio::spawn(start(config, app)).await });
    // Don't wait for blocking task threads: after a warm shutdown none are
    // left, and after a cold one the point is not to wait for them.
    runtime.shutdown_background();
    match outcome {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "python")]
type App = Option<crate::python::PythonApp>;
#[cfg(not(feature = "python"))]
type App = Option<()>;

/// Imports the `-A` app (feature `python`) and returns Celery's defaults with
/// its conf applied. An app that won't import stops the worker, as `celery`
/// does: its traceback, then a one-line reason, exit code 1.
fn load_app(name: Option<&str>) -> std::result::Result<(Config, App), std::process::ExitCode> {
    let mut base = Config::default();
    let Some(name) = name else {
        return Ok((base, None));
    };
    #[cfg(feature = "python")]
    {
        let app = match crate::python::PythonApp::load(name) {
            Ok(app) => app,
            Err(e) => {
                eprintln!("{}", e.traceback.trim_end());
                eprintln!("Error: {e}");
                return Err(std::process::ExitCode::FAILURE);
            }
        };
        let applied = app.conf().and_then(|conf| base.apply_app_conf(&conf));
        if let Err(e) = applied {
            eprintln!("Error: reading the conf of {name}: {e:#}");
            return Err(std::process::ExitCode::from(2));
        }
        base.app_source = Some(app.description.clone());
        Ok((base, Some(app)))
    }
    #[cfg(not(feature = "python"))]
    {
        tracing::warn!("built without the `python` feature: -A {name} is shown, not imported");
        Ok((base, None))
    }
}

/// Connects, prints the banner and runs until shutdown.
pub async fn start(config: Config, app: App) -> Result<()> {
    let shutdown = Shutdown::new();
    shutdown
        .listen_for_signals()
        .context("installing signal handlers")?;

    let mut registry = Registry::new();
    crate::builtins::register(&mut registry);
    if app.is_none() {
        // An app brings Celery's own canvas built-ins (its exact code).
        crate::builtins::register_canvas(&mut registry);
    }
    crate::tasks::register_all(
        &mut registry,
        &crate::tasks::TaskEnv {
            storage_url: config.result_backend.clone(),
            testing: std::env::var("RCW_TEST_TASKS").is_ok_and(|v| v == "1"),
            native: std::env::var("RCW_NATIVE_TASKS").map_or(true, |v| v != "0"),
        },
    );
    let mut extras = crate::worker::Extras::default();
    #[cfg(feature = "python")]
    let app = app.map(Arc::new);
    #[cfg(feature = "python")]
    if let Some(app) = &app {
        extras.app = Some(Arc::clone(app) as Arc<dyn crate::control::AppInfo>);
        // RCW_CANVAS=rust keeps the Rust canvas even with the app loaded
        // (to compare the two, and to test the Rust port through the app).
        if std::env::var("RCW_CANVAS").as_deref() != Ok("rust") {
            extras.canvas_host = Some(Arc::clone(app) as Arc<dyn crate::canvas::host::CanvasHost>);
        }
        let python_only = app.python_only_tasks(&registry)?;
        let prefork = matches!(config.pool.as_deref(), None | Some("prefork"));
        let pool = if prefork && !python_only.is_empty() {
            let cfg = crate::python::pool::PoolConfig {
                app: config.app.clone().unwrap_or_default(),
                // solo/threads semantics aside, -c is the number of processes.
                processes: config.concurrency,
                max_tasks_per_child: config.max_tasks_per_child,
                max_memory_per_child: config.max_memory_per_child,
            };
            let pool = crate::python::pool::Pool::start(cfg).await?;
            extras.pool = Some(Arc::clone(&pool) as Arc<dyn crate::control::ProcessPool>);
            Some(pool)
        } else {
            // No child processes: this process is where Python task code runs.
            app.worker_signal("worker_process_init");
            None
        };
        app.register_tasks(&mut registry, pool)?;
    }
    #[cfg(not(feature = "python"))]
    let _ = app;

    let broker = connect_retrying("broker", &config.broker_url, &shutdown, || {
        let decls = config.queue_decls.clone();
        let connecting =
            RedisBroker::connect(&config.broker_url, &config.queues, config.transport.clone());
        async move { connecting.await.map(|b| b.with_bindings(&decls)) }
    })
    .await?;
    let broker: Arc<dyn Broker> = Arc::new(broker);
    let backend: Option<Arc<dyn ResultBackend>> = match &config.result_backend {
        Some(url) => {
            let b = connect_retrying("result backend", url, &shutdown, || {
                RedisBackend::connect(url, config.result_expires, &config.result_keyprefix)
            })
            .await?;
            Some(Arc::new(b))
        }
        None => None,
    };

    println!("{}", crate::banner::render(&config, &registry));
    let worker = Worker::new(config, registry, broker, backend, shutdown, extras)?;
    #[cfg(feature = "python")]
    if let Some(app) = &app {
        app.worker_signal("worker_ready");
    }
    let outcome = worker.run().await;
    #[cfg(feature = "python")]
    if let Some(app) = &app {
        app.worker_signal("worker_shutdown");
    }
    outcome
}

/// Retries the first connection like Celery's consumer does, until a
/// shutdown signal; a bad URL fails at once.
async fn connect_retrying<T, F, Fut>(
    what: &str,
    url: &str,
    shutdown: &Shutdown,
    mut connect: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0u32;
    loop {
        match connect().await {
            Ok(v) => return Ok(v),
            Err(e)
                if e.downcast_ref::<redis::RedisError>()
                    .is_some_and(crate::broker::redis_url::is_connection_error) =>
            {
                let wait = crate::worker::backoff(attempt);
                attempt += 1;
                tracing::error!(
                    "consumer: Cannot connect to {what} {}: {e}. Trying again in {:.2} seconds... ({attempt})",
                    config::mask_url(url),
                    wait.as_secs_f64()
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.warm() => bail!("shut down before connecting to the {what}"),
                }
            }
            Err(e) => {
                return Err(e.context(format!(
                    "connecting to the {what} {}",
                    config::mask_url(url)
                )));
            }
        }
    }
}
