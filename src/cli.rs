//! Flags that mirror `celery worker` (and the global `celery` options that
//! apply to it), resolved into one [`Config`] plus the process options
//! ([`crate::daemon::Process`]) that act before the worker exists.
//!
//! Spellings are Celery's: short and long forms, `--opt=value` and
//! `--opt value`, env vars as click reads them (`APP`, `BROKER_URL`, …, and
//! `CELERY_WORKER_<OPTION>` from click's `auto_envvar_prefix`). A bare
//! `worker` word anywhere is accepted, so `celery -A app worker …` and the
//! older `celery worker -A app …` both work with one word changed.

use crate::config::{self, Config};
use crate::daemon::Process;
use anyhow::{Result, bail};
use clap::Parser;
use clap::builder::BoolishValueParser;

/// A Celery worker written in Rust: a drop-in for `celery -A APP worker`.
#[derive(Debug, Parser)]
#[command(name = "rust-celery-worker", version, about, long_about = None, args_override_self = true)]
pub struct Cli {
    /// `worker` (as in `celery -A APP worker`); any other command is refused.
    #[arg(value_name = "COMMAND", hide = true)]
    pub command: Vec<String>,

    // ---- global options (`celery --help`) ----
    /// The Celery app (module path), e.g. `app.workers` [env: APP, CELERY_APP].
    #[arg(short = 'A', long = "app")]
    pub app: Option<String>,
    /// Broker URL [default: redis://localhost:6379/0] [env: BROKER_URL, CELERY_BROKER, CELERY_BROKER_URL].
    #[arg(short = 'b', long = "broker")]
    pub broker: Option<String>,
    /// Result backend URL (`disabled` for none) [default: the broker URL]
    /// [env: RESULT_BACKEND, CELERY_RESULT_BACKEND].
    #[arg(long = "result-backend")]
    pub result_backend: Option<String>,
    /// Celery loader class, with -A (`CELERY_LOADER`).
    #[arg(long = "loader", env = "LOADER")]
    pub loader: Option<String>,
    /// Configuration module the app reads, with -A (`CELERY_CONFIG_MODULE`).
    #[arg(long = "config", env = "CONFIG_MODULE")]
    pub config_module: Option<String>,
    /// Change to this directory before anything else.
    #[arg(long = "workdir", env = "CELERY_WORKDIR")]
    pub workdir: Option<String>,
    /// No colours (this worker never colours its log).
    #[arg(short = 'C', long = "no-color", env = "NO_COLOR", value_parser = BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub no_color: bool,
    /// Don't print the banner.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Skip Django's checks at start-up (accepted: this worker runs none).
    #[arg(long = "skip-checks", env = "SKIP_CHECKS", value_parser = BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub skip_checks: bool,

    // ---- worker options ----
    /// Node name; expands %h (host), %n (name), %d (domain) [default: celery@%h].
    #[arg(short = 'n', long = "hostname", env = "CELERY_WORKER_HOSTNAME")]
    pub hostname: Option<String>,
    /// Start the worker as a background process (daemon).
    #[arg(short = 'D', long = "detach", env = "CELERY_WORKER_DETACH", value_parser = BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub detach: bool,
    /// File where revoked task ids survive restarts (%n, %h expanded).
    #[arg(short = 'S', long = "statedb", env = "CELERY_WORKER_STATEDB")]
    pub statedb: Option<String>,
    /// DEBUG, INFO, WARNING, ERROR, CRITICAL or FATAL (any case).
    #[arg(
        short = 'l',
        long = "loglevel",
        default_value = "WARNING",
        env = "CELERY_WORKER_LOGLEVEL"
    )]
    pub loglevel: String,
    /// Optimization profile: default or fair (our pools only ever hand a task
    /// to an idle process, which is what `fair` asks for).
    #[arg(short = 'O', long = "optimization", value_parser = ["default", "fair"], env = "CELERY_WORKER_OPTIMIZATION")]
    pub optimization: Option<String>,
    /// Messages prefetched per concurrency slot [default: 4].
    #[arg(
        long = "prefetch-multiplier",
        env = "CELERY_WORKER_PREFETCH_MULTIPLIER"
    )]
    pub prefetch_multiplier: Option<usize>,
    /// Fetch a message only when a slot is free to run it.
    #[arg(long = "disable-prefetch", env = "CELERY_WORKER_DISABLE_PREFETCH", value_parser = BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub disable_prefetch: bool,
    /// Tasks run at once: a number, or `auto` [default: number of CPUs].
    #[arg(short = 'c', long = "concurrency", env = "CELERY_WORKER_CONCURRENCY")]
    pub concurrency: Option<String>,
    /// Pool for Python task bodies: prefork (default), threads, solo, or
    /// gevent/eventlet (served by threads). Rust tasks always run on the
    /// worker's own threads.
    #[arg(short = 'P', long = "pool", env = "CELERY_WORKER_POOL")]
    pub pool: Option<String>,
    /// Send task events (for Flower and `celery events`).
    #[arg(short = 'E', long = "task-events", visible_alias = "events", env = "CELERY_WORKER_TASK_EVENTS", value_parser = BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub task_events: bool,
    /// Hard time limit in seconds for tasks that set none (`task_time_limit`).
    #[arg(long = "time-limit", env = "CELERY_WORKER_TIME_LIMIT")]
    pub time_limit: Option<f64>,
    /// Soft time limit in seconds (`task_soft_time_limit`).
    #[arg(long = "soft-time-limit", env = "CELERY_WORKER_SOFT_TIME_LIMIT")]
    pub soft_time_limit: Option<f64>,
    /// Recycle a Python pool process after this many tasks.
    #[arg(
        long = "max-tasks-per-child",
        env = "CELERY_WORKER_MAX_TASKS_PER_CHILD"
    )]
    pub max_tasks_per_child: Option<u64>,
    /// fork or spawn (accepted: pool processes always start fresh, as spawn).
    #[arg(long = "pool-start-method", value_parser = ["fork", "spawn"], env = "CELERY_WORKER_POOL_START_METHOD")]
    pub pool_start_method: Option<String>,
    /// Recycle a Python pool process whose resident memory exceeds this many KiB.
    #[arg(
        long = "max-memory-per-child",
        env = "CELERY_WORKER_MAX_MEMORY_PER_CHILD"
    )]
    pub max_memory_per_child: Option<u64>,
    /// Delete the messages waiting in the consumed queues before consuming.
    #[arg(long = "purge", visible_alias = "discard", env = "CELERY_WORKER_PURGE", value_parser = BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub purge: bool,
    /// Comma-separated queues to consume [default: celery].
    #[arg(
        short = 'Q',
        long = "queues",
        value_delimiter = ',',
        env = "CELERY_WORKER_QUEUES"
    )]
    pub queues: Vec<String>,
    /// Comma-separated queues not to consume.
    #[arg(
        short = 'X',
        long = "exclude-queues",
        value_delimiter = ',',
        env = "CELERY_WORKER_EXCLUDE_QUEUES"
    )]
    pub exclude_queues: Vec<String>,
    /// Comma-separated modules the app imports before its tasks are read.
    #[arg(
        short = 'I',
        long = "include",
        value_delimiter = ',',
        env = "CELERY_WORKER_INCLUDE"
    )]
    pub include: Vec<String>,
    /// Don't take part in gossip (we never track other workers' events).
    #[arg(long = "without-gossip", env = "CELERY_WORKER_WITHOUT_GOSSIP", value_parser = BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub without_gossip: bool,
    /// Don't ask running workers for their revoked ids at start-up.
    #[arg(long = "without-mingle", env = "CELERY_WORKER_WITHOUT_MINGLE", value_parser = BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub without_mingle: bool,
    /// Send no worker events (online, heartbeat, offline).
    #[arg(long = "without-heartbeat", env = "CELERY_WORKER_WITHOUT_HEARTBEAT", value_parser = BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub without_heartbeat: bool,
    /// Seconds between worker heartbeats [default: 2.0].
    #[arg(long = "heartbeat-interval", env = "CELERY_WORKER_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<f64>,
    /// `MAX,MIN` (or `MAX`): the Python pool grows to MAX processes under
    /// load and shrinks to MIN when idle.
    #[arg(long = "autoscale", env = "CELERY_WORKER_AUTOSCALE")]
    pub autoscale: Option<String>,
    /// Also run beat, the periodic task scheduler, in this worker.
    #[arg(short = 'B', long = "beat", env = "CELERY_WORKER_BEAT", value_parser = BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub beat: bool,
    /// Beat's schedule database [default: celerybeat-schedule].
    #[arg(
        short = 's',
        long = "schedule-filename",
        visible_alias = "schedule",
        env = "CELERY_WORKER_SCHEDULE_FILENAME"
    )]
    pub schedule_filename: Option<String>,
    /// Beat's scheduler class [default: celery.beat:PersistentScheduler].
    #[arg(long = "scheduler", env = "CELERY_WORKER_SCHEDULER")]
    pub scheduler: Option<String>,

    // ---- daemon options ----
    /// Log to this file instead of stderr (%n %i %h expanded).
    #[arg(short = 'f', long = "logfile", env = "CELERY_WORKER_LOGFILE")]
    pub logfile: Option<String>,
    /// Write the worker's pid here (%n %h expanded); refuse to start while a
    /// live process holds it.
    #[arg(long = "pidfile", env = "CELERY_WORKER_PIDFILE")]
    pub pidfile: Option<String>,
    /// Drop privileges to this user (name or id).
    #[arg(long = "uid", env = "CELERY_WORKER_UID")]
    pub uid: Option<String>,
    /// Drop privileges to this group (name or id).
    #[arg(long = "gid", env = "CELERY_WORKER_GID")]
    pub gid: Option<String>,
    /// Umask of files the worker creates (octal, e.g. 022).
    #[arg(long = "umask", env = "CELERY_WORKER_UMASK")]
    pub umask: Option<String>,
    /// Python executable to re-exec (accepted; this worker re-execs itself).
    #[arg(long = "executable", env = "CELERY_WORKER_EXECUTABLE")]
    pub executable: Option<String>,

    // ---- ours ----
    /// A Celery setting, e.g. `task_track_started=true`,
    /// `broker_transport_options={"visibility_timeout": 60}` (repeatable).
    #[arg(long = "setting", value_name = "NAME=VALUE")]
    pub settings: Vec<String>,
    /// On cold shutdown, seconds running tasks still get to finish
    /// (`worker_soft_shutdown_timeout`).
    #[arg(
        long = "soft-shutdown-timeout",
        env = "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT"
    )]
    pub soft_shutdown_timeout: Option<f64>,
    /// Serve `/metrics` (Prometheus) and `/healthz` on this port (`worker_metrics_port`).
    #[arg(long = "metrics-port", env = "RCW_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// Internal: run as a prefork pool process for Python task bodies.
    #[arg(long = "pool-child", hide = true)]
    pub pool_child: bool,
}

/// Flags of older Celery versions, refused with what to use instead.
const REMOVED: &[(&str, &str)] = &[
    (
        "--autoreload",
        "--autoreload was removed in Celery 4; use watchmedo auto-restart -d . -p '*.py' -- rust-celery-worker …",
    ),
    (
        "--no-execv",
        "--no-execv was removed in Celery 4: pool processes always start fresh",
    ),
    (
        "--maxmemperchild",
        "--maxmemperchild is Celery 4's spelling: use --max-memory-per-child",
    ),
    (
        "--maxtasksperchild",
        "--maxtasksperchild is Celery 3's spelling: use --max-tasks-per-child",
    ),
    (
        "--autoscaler",
        "--autoscaler is not a worker option: use --autoscale MAX,MIN",
    ),
    (
        "--scheduler-cls",
        "--scheduler-cls is Celery 3's spelling: use --scheduler",
    ),
    (
        "-Ofast",
        "-O fast was removed in Celery 4: choose -O default or -O fair",
    ),
];

impl Cli {
    /// Parses `std::env::args`, refusing removed flags with one line (exit 2).
    pub fn from_env() -> Cli {
        for arg in std::env::args().skip(1) {
            let flag = arg.split('=').next().unwrap_or_default();
            if let Some((_, why)) = REMOVED.iter().find(|(f, _)| *f == flag) {
                eprintln!("Error: {why}");
                std::process::exit(2);
            }
        }
        let mut cli = Cli::parse();
        cli.app = cli.app.or_else(|| env_first(&["APP", "CELERY_APP"]));
        cli.broker = cli
            .broker
            .or_else(|| env_first(&["BROKER_URL", "CELERY_BROKER", "CELERY_BROKER_URL"]));
        cli.result_backend = cli
            .result_backend
            .or_else(|| env_first(&["RESULT_BACKEND", "CELERY_RESULT_BACKEND"]));
        cli.config_module = cli.config_module.or_else(|| env_first(&["CELERY_CONFIG"]));
        cli.quiet |= env_first(&["CELERY_QUIET"]).is_some_and(|v| truthy(&v));
        cli.no_color |= env_first(&["CELERY_NO_COLOR"]).is_some_and(|v| truthy(&v));
        cli
    }

    /// Checks the positional words: only `worker` is a command here.
    pub fn check_command(&self) -> Result<()> {
        for word in &self.command {
            match word.as_str() {
                "worker" => {}
                "beat" => bail!(
                    "`beat` is a separate celery command: run `celery beat`, or add -B to run \
                     beat inside this worker"
                ),
                // Celery's `config_from_cmdline`, applied in into_config_over.
                w if w.contains('=') => {}
                w => bail!(
                    "{w}: this program runs the worker only (`rust-celery-worker [worker] -A APP …`); \
                     use `celery {w}` for other commands"
                ),
            }
        }
        Ok(())
    }

    /// The options that act on the process before the worker starts.
    pub fn process(&self) -> Result<Process> {
        let umask = match &self.umask {
            Some(u) => Some(parse_umask(u)?),
            None => None,
        };
        Ok(Process {
            detach: self.detach,
            logfile: self.logfile.clone(),
            pidfile: self.pidfile.clone(),
            uid: self.uid.clone(),
            gid: self.gid.clone(),
            umask,
            workdir: self.workdir.clone(),
        })
    }

    /// Flags > env (via clap) > `--setting` > Celery's defaults.
    pub fn into_config(self) -> Result<Config> {
        self.into_config_over(Config::default())
    }

    /// The same over `base` (Celery's defaults with the app's conf applied).
    pub fn into_config_over(self, base: Config) -> Result<Config> {
        self.check_command()?;
        let mut cfg = base;
        for s in &self.settings {
            cfg.apply_setting_str(s)?;
        }
        for arg in self.command.iter().filter(|w| w.contains('=')) {
            cfg.apply_setting_str(&cmdline_setting(arg))
                .map_err(|e| anyhow::anyhow!("{arg}: {e:#}"))?;
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
        if !cfg.result_backend_explicit && crate::broker::amqp::url::is_amqp(&cfg.broker_url) {
            // An AMQP broker (from -b or the app's conf) is no result store:
            // without a backend named, results are disabled, as Celery's default.
            cfg.result_backend = None;
        }
        if let Some(r) = self.result_backend {
            cfg.result_backend = config::normalize_backend(&r);
        }
        let queues = names(self.queues);
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
        let excluded = names(self.exclude_queues);
        if !excluded.is_empty() {
            // Celery's `deselect`: what -Q (or the default) chose, minus -X.
            cfg.queues.retain(|q| !excluded.contains(q));
            if cfg.queues.is_empty() {
                bail!("-X {}: no queue is left to consume", excluded.join(","));
            }
        }
        cfg.includes = names(self.include);
        if let Some(c) = self.concurrency {
            cfg.concurrency = parse_concurrency(&c)?;
        }
        if let Some(n) = self.hostname {
            cfg.hostname = config::expand_hostname(&n);
        }
        if let Some(p) = self.prefetch_multiplier {
            cfg.prefetch_multiplier = p;
        }
        if self.disable_prefetch {
            cfg.prefetch_multiplier = 1;
        }
        if let Some(p) = self.pool {
            cfg.pool = Some(p.to_ascii_lowercase());
        }
        resolve_pool(&mut cfg)?;
        if let Some(a) = self.autoscale {
            let (max, min) = parse_autoscale(&a)?;
            cfg.autoscale = Some((max, min));
            // Celery sizes everything but the pool by the maximum.
            cfg.concurrency = max.max(1);
        }
        cfg.max_tasks_per_child = self.max_tasks_per_child.or(cfg.max_tasks_per_child);
        cfg.max_memory_per_child = self.max_memory_per_child.or(cfg.max_memory_per_child);
        if let Some(t) = self.time_limit {
            cfg.apply_setting("task_time_limit", serde_json::json!(t))?;
        }
        if let Some(t) = self.soft_time_limit {
            cfg.apply_setting("task_soft_time_limit", serde_json::json!(t))?;
        }
        if let Some(t) = self.soft_shutdown_timeout {
            cfg.apply_setting("worker_soft_shutdown_timeout", serde_json::json!(t))?;
        }
        if self.task_events {
            cfg.task_events = true;
        }
        if self.purge {
            cfg.purge = true;
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
            cfg.statedb = Some(path);
        }
        cfg.statedb = cfg
            .statedb
            .take()
            .map(|p| config::expand_node_path(&p, &cfg.hostname));
        if let Some(f) = self.schedule_filename {
            cfg.beat.schedule_filename = f;
        }
        if let Some(s) = self.scheduler {
            cfg.beat.scheduler = s;
        }
        if self.beat {
            if cfg.app.is_none() {
                bail!(
                    "-B runs the app's beat_schedule: give the app with -A (without one \
                     there is no schedule to run)"
                );
            }
            cfg.embedded_beat = true;
        }
        if let Some(p) = self.metrics_port {
            cfg.metrics_port = Some(p);
        }
        cfg.quiet = self.quiet;
        if cfg.app.is_none() && !cfg.includes.is_empty() {
            bail!(
                "-I {}: modules are imported into the app: give it with -A",
                cfg.includes.join(",")
            );
        }
        crate::logging::parse_level(&self.loglevel).map_err(anyhow::Error::msg)?;
        cfg.loglevel = self.loglevel.to_ascii_uppercase();
        if !crate::broker::supported(&cfg.broker_url) {
            bail!(
                "unsupported broker URL {}: this build speaks Redis (redis://, rediss://, socket://, sentinel://) and AMQP (amqp://, amqps://, pyamqp://)",
                config::mask_url(&cfg.broker_url)
            );
        }
        if let Some(url) = &cfg.result_backend
            && !(crate::broker::redis_url::is_redis(url) || url.starts_with("rpc://"))
        {
            bail!(
                "unsupported result backend {}: this build stores results in Redis (redis://, rediss://, socket://, sentinel://) or sends them back over the broker (rpc://)",
                config::mask_url(url)
            );
        }
        Ok(cfg)
    }
}

/// Celery's `config_from_cmdline(args, namespace='worker')`: after the
/// options, `worker.prefetch_multiplier=1` or `.prefetch_multiplier=1`
/// (the worker namespace) or `task_acks_late=true`, as a setting.
fn cmdline_setting(arg: &str) -> String {
    let (key, value) = arg.split_once('=').unwrap_or((arg, ""));
    let key = key.to_ascii_lowercase().replace('.', "_");
    let key = match key.strip_prefix('_') {
        Some(rest) => format!("worker_{rest}"),
        None => key,
    };
    format!("{key}={value}")
}

/// The first of `names` set (non-empty) in the environment.
fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// click's boolean env values.
fn truthy(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "1" | "true" | "t" | "yes" | "y" | "on"
    )
}

fn names(list: Vec<String>) -> Vec<String> {
    list.into_iter()
        .map(|q| q.trim().to_string())
        .filter(|q| !q.is_empty())
        .collect()
}

/// `-c N` or `-c auto` (the CPUs this process may use: affinity and cgroup
/// quota, as Celery's `auto`); 0 keeps the default, as in Celery.
fn parse_concurrency(c: &str) -> Result<usize> {
    if c.eq_ignore_ascii_case("auto") {
        return Ok(std::thread::available_parallelism().map_or(1, |n| n.get()));
    }
    match c.trim().parse::<usize>() {
        Ok(0) => Ok(Config::default().concurrency),
        Ok(n) => Ok(n),
        Err(_) => bail!("--concurrency: must be a non-negative integer or 'auto', got {c:?}"),
    }
}

/// Celery's `--autoscale`: `MAX,MIN` in either order, or `MAX` (min 0).
fn parse_autoscale(a: &str) -> Result<(usize, usize)> {
    let parts: Vec<&str> = a.split(',').map(str::trim).collect();
    let nums: Result<Vec<usize>, _> = parts.iter().map(|p| p.parse::<usize>()).collect();
    match (parts.len(), nums) {
        (1, Ok(n)) => Ok((n[0], 0)),
        (2, Ok(n)) => Ok((n[0].max(n[1]), n[0].min(n[1]))),
        (k, _) if k > 2 => {
            bail!("--autoscale: expected two comma separated integers or one integer, got {k}")
        }
        _ => bail!("--autoscale: expected two comma separated integers, got {a:?}"),
    }
}

/// `-P`: prefork, threads and solo as Celery; gevent and eventlet mapped to
/// threads, which serve I/O-bound Python bodies at `-c` concurrency (a
/// blocking socket call releases the GIL) without monkey-patching.
fn resolve_pool(cfg: &mut Config) -> Result<()> {
    let Some(p) = cfg.pool.clone() else {
        return Ok(());
    };
    match p.as_str() {
        "prefork" | "threads" => {}
        // Celery's alias of prefork.
        "processes" => cfg.pool = Some("prefork".into()),
        "solo" => {
            // Celery's solo pool: one task at a time, in the worker process.
            cfg.concurrency = 1;
        }
        "gevent" | "eventlet" => {
            cfg.pool_note = Some(format!(
                "{p} → threads ({} threads in the worker process; blocking I/O releases the GIL, no monkey-patching)",
                cfg.concurrency
            ));
            cfg.pool = Some("threads".into());
        }
        other => bail!("-P {other}: choose prefork, threads, solo, gevent or eventlet"),
    }
    Ok(())
}

fn parse_umask(u: &str) -> Result<u32> {
    let digits = u.trim().trim_start_matches("0o");
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| anyhow::anyhow!("--umask {u:?}: expected an octal mode such as 022"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config> {
        let mut argv = vec!["rust-celery-worker"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)?.into_config()
    }

    #[test]
    fn an_amqp_broker_disables_results_unless_a_backend_is_named() {
        let c = parse(&["-b", "amqp://guest:guest@localhost:5672//"]).unwrap();
        assert_eq!(c.result_backend, None);
        let mut conf = Config::default();
        conf.apply_setting_str("broker_url=pyamqp://rabbit//")
            .unwrap();
        let c = Cli::try_parse_from(["rust-celery-worker"])
            .unwrap()
            .into_config_over(conf)
            .unwrap();
        assert_eq!(c.result_backend, None, "the app's conf named the broker");
        let c = parse(&["-b", "amqp://h//", "--result-backend", "redis://r/1"]).unwrap();
        assert_eq!(c.result_backend.as_deref(), Some("redis://r/1"));
        let c = parse(&["-b", "amqp://h//", "--result-backend", "rpc"]).unwrap();
        assert_eq!(c.result_backend.as_deref(), Some("rpc://"));
        let c = parse(&["-b", "redis://h/2"]).unwrap();
        assert_eq!(c.result_backend.as_deref(), Some("redis://h/2"));
        assert!(parse(&["-b", "sqs://"]).is_err());
    }

    #[test]
    fn worker_word_is_accepted_before_or_after_options() {
        let a = parse(&["worker", "-c", "3", "-Q", "a,b"]).unwrap();
        let b = parse(&["-c", "3", "worker", "-Q", "a,b"]).unwrap();
        assert_eq!(a.concurrency, 3);
        assert_eq!(a.queues, b.queues);
        assert!(
            parse(&["beat"])
                .unwrap_err()
                .to_string()
                .contains("celery beat")
        );
        assert!(parse(&["inspect"]).is_err());
        let c = parse(&["worker", "-c", "1", ".task_acks_late=x"]);
        assert!(c.is_err(), "worker_task_acks_late is no setting");
        let c = parse(&[
            "-c",
            "1",
            "worker.prefetch_multiplier=7",
            "task_acks_late=true",
        ])
        .unwrap();
        assert_eq!(c.prefetch_multiplier, 7);
        assert!(c.task_acks_late);
    }

    #[test]
    fn exclude_queues_and_autoscale() {
        let c = parse(&["-Q", "a,b,c", "-X", "b", "--autoscale=2,6"]).unwrap();
        assert_eq!(c.queues, ["a", "c"]);
        assert_eq!(c.autoscale, Some((6, 2)));
        assert_eq!(c.concurrency, 6);
        assert_eq!(parse_autoscale("4").unwrap(), (4, 0));
        assert!(parse_autoscale("1,2,3").is_err());
        assert!(parse(&["-Q", "a", "-X", "a"]).is_err());
    }

    #[test]
    fn concurrency_auto_and_pools() {
        assert!(parse(&["-c", "auto"]).unwrap().concurrency >= 1);
        assert!(parse(&["-c", "x"]).is_err());
        let g = parse(&["-P", "gevent", "-c", "100"]).unwrap();
        assert_eq!(g.pool.as_deref(), Some("threads"));
        assert!(g.pool_note.unwrap().contains("100 threads"));
        assert_eq!(parse(&["--pool=solo", "-c", "4"]).unwrap().concurrency, 1);
        assert_eq!(
            parse(&["-P", "processes"]).unwrap().pool.as_deref(),
            Some("prefork")
        );
        assert!(parse(&["-P", "custom"]).is_err());
    }

    #[test]
    fn spellings_of_celery_flags() {
        let c = parse(&[
            "-linfo",
            "-Ofair",
            "--disable-prefetch",
            "--discard",
            "--without-gossip",
            "--heartbeat-interval=5",
            "--soft-shutdown-timeout",
            "3",
            "--metrics-port=9808",
        ])
        .unwrap();
        assert_eq!(c.loglevel, "INFO");
        assert_eq!(c.prefetch_multiplier, 1);
        assert!(c.purge && !c.gossip);
        assert_eq!(c.heartbeat_interval, 5.0);
        assert_eq!(c.soft_shutdown_timeout, 3.0);
        assert_eq!(c.metrics_port, Some(9808));
        assert!(parse(&["-O", "fast"]).is_err());
    }

    #[test]
    fn metrics_port_and_beat_lock_from_settings() {
        let c = parse(&[
            "--setting",
            "worker_metrics_port=9001",
            "--setting",
            "beat_lock_timeout=4",
        ]);
        let c = c.unwrap();
        assert_eq!(c.metrics_port, Some(9001));
        assert_eq!(c.beat.lock_timeout, 4.0);
        assert!(parse(&["--setting", "worker_metrics_port=70000"]).is_err());
    }

    #[test]
    fn beat_needs_an_app() {
        assert!(parse(&["-B"]).unwrap_err().to_string().contains("-A"));
        let c = parse(&["-A", "x", "-B", "-s", "/tmp/s", "--scheduler", "m:S"]).unwrap();
        assert!(c.embedded_beat);
        let beat = c.beat;
        assert_eq!(beat.schedule_filename, "/tmp/s");
        assert_eq!(beat.scheduler, "m:S");
    }

    #[test]
    fn repeated_options_take_the_last_as_click_does() {
        let c = parse(&["-c", "2", "-l", "info", "-c", "5", "-Q", "a", "-Q", "b"]).unwrap();
        assert_eq!(c.concurrency, 5);
        assert_eq!(c.queues, ["a", "b"]);
        let s = parse(&[
            "--setting",
            "task_acks_late=true",
            "--setting",
            "result_extended=true",
        ]);
        let s = s.unwrap();
        assert!(s.task_acks_late && s.result_extended);
    }

    #[test]
    fn umask_is_octal() {
        assert_eq!(parse_umask("022").unwrap(), 0o22);
        assert_eq!(parse_umask("0o077").unwrap(), 0o77);
        assert!(parse_umask("9").is_err());
    }
}
