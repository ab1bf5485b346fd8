//! The start-up sequence the binary runs: the process options (workdir,
//! detach, privileges, pidfile, logfile), the app, the runtime, then the
//! services of [`crate::worker`] until shutdown — and a restart in place
//! after SIGHUP.

use crate::backend::{ResultBackend, redis::RedisBackend};
use crate::cli::Cli;
use crate::config::{self, Config};
use crate::daemon;
use crate::registry::Registry;
use crate::worker::{Worker, shutdown::Shutdown};
use anyhow::{Context, Result, bail};
use std::sync::Arc;

/// How [`start`] ended.
pub enum Stopped {
    Done,
    Restart,
}

/// Parses the command line, prepares the process, starts the worker, and
/// returns the exit code.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::from_env();
    #[cfg(feature = "python")]
    if cli.pool_child {
        return crate::python::pool::child_main(cli.app.as_deref().unwrap_or_default());
    }
    let usage = |e: anyhow::Error| {
        eprintln!("Error: {e:#}");
        std::process::ExitCode::from(2)
    };
    if let Err(e) = cli.check_command() {
        return usage(e);
    }
    let process = match cli.process() {
        Ok(p) => p,
        Err(e) => return usage(e),
    };
    let nodename = cli
        .hostname
        .as_deref()
        .map(config::expand_hostname)
        .unwrap_or_else(|| Config::default().hostname);
    let node_path = |p: &str| std::path::PathBuf::from(config::expand_node_path(p, &nodename));
    let logfile = process.logfile.as_deref().map(node_path);
    let pidfile = process.pidfile.as_deref().map(node_path);
    let failed = |f: daemon::Failure| {
        eprintln!("{}", f.message);
        std::process::ExitCode::from(f.code)
    };
    if let Err(e) = daemon::chdir(process.workdir.as_deref()) {
        return usage(e);
    }
    if process.detach
        && let Err(f) = daemon::detach(logfile.as_deref(), pidfile.as_deref())
    {
        return failed(f);
    }
    daemon::set_umask(process.umask);
    if let Err(e) = daemon::drop_privileges(process.uid.as_deref(), process.gid.as_deref()) {
        eprintln!("Error: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    let pidlock = match pidfile.as_deref().map(daemon::Pidfile::create).transpose() {
        Ok(p) => p,
        Err(f) => return failed(f),
    };
    if let Some(log) = &logfile
        && let Err(e) = daemon::redirect_stderr(log)
    {
        return usage(e);
    }
    let level = crate::logging::parse_level(&cli.loglevel);
    crate::logging::init(level.unwrap_or(tracing::Level::WARN));
    export_globals(&cli);
    let code = run(cli);
    if let Some(p) = &pidlock {
        p.release();
    }
    if code == Exit::Restart {
        restart();
    }
    code.into()
}

/// How the worker ended.
#[derive(Debug, PartialEq)]
enum Exit {
    Ok,
    Failed,
    Usage,
    /// SIGHUP: run again in place with the same argv.
    Restart,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        match e {
            Exit::Ok | Exit::Restart => std::process::ExitCode::SUCCESS,
            Exit::Failed => std::process::ExitCode::FAILURE,
            Exit::Usage => std::process::ExitCode::from(2),
        }
    }
}

/// As the `celery` command does before it imports the app, so the app's
/// own Celery code (and the pool processes) see the same broker, backend,
/// loader and config module as the worker.
fn export_globals(cli: &Cli) {
    let pairs = [
        ("CELERY_BROKER_URL", cli.broker.as_deref()),
        ("CELERY_RESULT_BACKEND", cli.result_backend.as_deref()),
        ("CELERY_LOADER", cli.loader.as_deref()),
        ("CELERY_CONFIG_MODULE", cli.config_module.as_deref()),
        ("CELERY_SKIP_CHECKS", cli.skip_checks.then_some("true")),
    ];
    let include = (!cli.include.is_empty()).then(|| cli.include.join(","));
    for (name, value) in pairs
        .into_iter()
        .chain([(crate::config::INCLUDE_ENV, include.as_deref())])
    {
        if let Some(v) = value {
            // SAFETY: still single-threaded (no runtime, no interpreter yet).
            unsafe { std::env::set_var(name, v) };
        }
    }
}

/// Re-executes this program with its original arguments (Celery's
/// `_reload_current_worker`): same pid, fresh state.
fn restart() {
    use std::os::unix::process::CommandExt;
    let args: Vec<String> = std::env::args().collect();
    println!("Restarting celery worker ({})", args.join(" "));
    // As Celery's detached re-exec: this process already is the daemon
    // (same pid for the pidfile and systemd) and already dropped privileges.
    // (`run` has already stopped the pool processes.)
    let args: Vec<String> = without_daemon_flags(&args);
    let exe = std::env::current_exe().unwrap_or_else(|_| args[0].clone().into());
    let err = std::process::Command::new(exe).args(&args[1..]).exec();
    eprintln!("Error: restarting: {err}");
    std::process::exit(1);
}

/// `argv` minus `-D/--detach` and `--uid/--gid` (with their values).
fn without_daemon_flags(argv: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut skip_value = false;
    for a in argv {
        if skip_value {
            skip_value = false;
            continue;
        }
        match a.as_str() {
            "-D" | "--detach" => {}
            "--uid" | "--gid" => skip_value = true,
            s if s.starts_with("--uid=") || s.starts_with("--gid=") => {}
            _ => out.push(a.clone()),
        }
    }
    out
}

/// Loads the app, resolves the config and runs the worker to its end.
fn run(cli: Cli) -> Exit {
    let (base, app) = match load_app(cli.app.as_deref()) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let config = match cli.into_config_over(base) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e:#}");
            return Exit::Usage;
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
    // Whatever happened, no pool process outlives the worker.
    crate::daemon::kill_children(false);
    match outcome {
        Ok(Ok(Stopped::Restart)) => Exit::Restart,
        Ok(Ok(Stopped::Done)) => Exit::Ok,
        Ok(Err(e)) => {
            tracing::error!("{e:#}");
            Exit::Failed
        }
        Err(e) => {
            tracing::error!("{e:#}");
            Exit::Failed
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
fn load_app(name: Option<&str>) -> std::result::Result<(Config, App), Exit> {
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
                return Err(Exit::Failed);
            }
        };
        let applied = app.conf().and_then(|conf| base.apply_app_conf(&conf));
        if let Err(e) = applied {
            eprintln!("Error: reading the conf of {name}: {e:#}");
            return Err(Exit::Usage);
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
pub async fn start(config: Config, app: App) -> Result<Stopped> {
    let shutdown = Shutdown::with_soft_timeout(config.soft_shutdown_timeout);
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
        extras.beat = Some(Arc::clone(app) as Arc<dyn crate::beat::BeatHost>);
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
                // solo/threads semantics aside, -c is the number of
                // processes; with --autoscale the pool starts at its minimum.
                processes: config
                    .autoscale
                    .map_or(config.concurrency, |(_, min)| min.max(1)),
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
        crate::broker::connect(&config)
    })
    .await?;
    let backend: Option<Arc<dyn ResultBackend>> = match &config.result_backend {
        Some(url) if url.starts_with("rpc://") => {
            let persistent = config.result_persistent;
            Some(Arc::new(crate::backend::rpc::RpcBackend::new(
                Arc::clone(&broker),
                persistent,
            )))
        }
        Some(url) => {
            let b = connect_retrying("result backend", url, &shutdown, || {
                RedisBackend::connect(
                    url,
                    config.result_expires,
                    &config.result_keyprefix,
                    &config.result_sentinel,
                )
            })
            .await?;
            Some(Arc::new(b))
        }
        None => None,
    };

    if !config.quiet {
        println!("{}", crate::banner::render(&config, &registry));
    }
    let worker = Worker::new(config, registry, broker, backend, shutdown.clone(), extras)?;
    #[cfg(feature = "python")]
    if let Some(app) = &app {
        app.worker_signal("worker_ready");
    }
    let outcome = worker.run().await;
    #[cfg(feature = "python")]
    if let Some(app) = &app {
        app.worker_signal("worker_shutdown");
    }
    outcome?;
    Ok(if shutdown.restart_requested() {
        Stopped::Restart
    } else {
        Stopped::Done
    })
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
                    .is_some_and(crate::broker::redis_url::is_connection_error)
                    || e.downcast_ref::<crate::broker::BrokerError>()
                        .is_some_and(crate::broker::BrokerError::is_connection) =>
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
