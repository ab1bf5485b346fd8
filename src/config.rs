//! One resolved configuration: CLI flags > env > Celery's defaults.
//!
//! Setting names are Celery's (`task_track_started`, `result_expires`,
//! `broker_transport_options`, ...) so the later step of reading the Python
//! app's `conf` feeds the same [`Config::apply_setting`].

pub use crate::broker::redis_endpoint::SentinelOptions;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::time::Duration;

/// kombu Redis transport options (`broker_transport_options`).
#[derive(Debug, Clone, PartialEq)]
pub struct TransportOptions {
    /// Seconds before an unacked message is restored to its queue (kombu: 3600).
    pub visibility_timeout: f64,
    /// Prepended verbatim to every broker key and channel (kombu: none).
    pub global_keyprefix: String,
    /// Priority buckets (kombu: 0, 3, 6, 9).
    pub priority_steps: Vec<u8>,
    pub unacked_key: String,
    pub unacked_index_key: String,
    pub unacked_mutex_key: String,
    /// Seconds the restore lock is held at most (kombu: 300).
    pub unacked_mutex_expire: u64,
    /// Seconds between visibility scans (kombu scans at most every ~100 s).
    pub unacked_restore_interval: f64,
    /// BRPOP timeout in seconds (kombu: 1).
    pub brpop_timeout: f64,
    /// `master_name` / `sentinel_kwargs` for a `sentinel://` broker.
    pub sentinel: SentinelOptions,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            visibility_timeout: 3600.0,
            global_keyprefix: String::new(),
            priority_steps: vec![0, 3, 6, 9],
            unacked_key: "unacked".into(),
            unacked_index_key: "unacked_index".into(),
            unacked_mutex_key: "unacked_mutex".into(),
            unacked_mutex_expire: 300,
            unacked_restore_interval: 100.0,
            brpop_timeout: 1.0,
            sentinel: SentinelOptions::default(),
        }
    }
}

impl TransportOptions {
    /// The options that differ from kombu's defaults, as `inspect stats` shows
    /// `broker.transport_options`.
    pub fn as_json(&self) -> Value {
        let d = TransportOptions::default();
        let mut m = serde_json::Map::new();
        if self.visibility_timeout != d.visibility_timeout {
            m.insert("visibility_timeout".into(), self.visibility_timeout.into());
        }
        if self.global_keyprefix != d.global_keyprefix {
            m.insert(
                "global_keyprefix".into(),
                self.global_keyprefix.clone().into(),
            );
        }
        if self.priority_steps != d.priority_steps {
            m.insert("priority_steps".into(), self.priority_steps.clone().into());
        }
        if let Some(name) = &self.sentinel.master_name {
            m.insert("master_name".into(), name.clone().into());
        }
        Value::Object(m)
    }

    fn apply(&mut self, opts: &Value) -> Result<()> {
        let Value::Object(map) = opts else {
            bail!("broker_transport_options must be a mapping, got {opts}");
        };
        self.sentinel.apply(opts);
        for (k, v) in map {
            let num = || v.as_f64().with_context(|| format!("{k} must be a number"));
            let text = || {
                v.as_str()
                    .map(str::to_string)
                    .with_context(|| format!("{k} must be a string"))
            };
            match k.as_str() {
                "visibility_timeout" => self.visibility_timeout = num()?,
                "global_keyprefix" => self.global_keyprefix = text()?,
                "priority_steps" => {
                    self.priority_steps = serde_json::from_value(v.clone())
                        .context("priority_steps must be a list of ints 0-9")?;
                    self.priority_steps.sort_unstable();
                }
                "unacked_key" => self.unacked_key = text()?,
                "unacked_index_key" => self.unacked_index_key = text()?,
                "unacked_mutex_key" => self.unacked_mutex_key = text()?,
                "unacked_mutex_expire" => self.unacked_mutex_expire = num()? as u64,
                "unacked_restore_interval" => self.unacked_restore_interval = num()?,
                "brpop_timeout" => self.brpop_timeout = num()?,
                "master_name" | "sentinel_kwargs" => {}
                // Options of other transports or features we don't need
                // (socket_timeout, max_connections, ...) are accepted and ignored.
                _ => tracing::debug!("ignoring broker transport option {k}"),
            }
        }
        Ok(())
    }
}

/// How the worker uses a Celery setting of the app's conf. This table is the
/// one list of conf keys: the Python side reads exactly the `Applied` ones
/// and names every other setting the app changed that is not here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Use {
    /// Read by the worker ([`Config::apply_setting`]).
    Applied,
    /// Honoured by the app's own Celery code in the interpreter (publishing
    /// from task bodies, serializers, routing of what Python sends), or
    /// already what this worker always does.
    ByApp,
}

pub const SETTINGS: &[(&str, Use)] = &[
    ("broker_url", Use::Applied),
    ("result_backend", Use::Applied),
    ("broker_transport_options", Use::Applied),
    ("result_backend_transport_options", Use::Applied),
    ("task_default_queue", Use::Applied),
    ("task_queues", Use::Applied),
    ("task_create_missing_queues", Use::Applied),
    ("task_default_queue_type", Use::Applied),
    ("task_create_missing_queue_type", Use::Applied),
    ("worker_detect_quorum_queues", Use::Applied),
    ("broker_native_delayed_delivery_queue_type", Use::Applied),
    ("task_serializer", Use::Applied),
    ("result_serializer", Use::Applied),
    ("accept_content", Use::Applied),
    ("result_expires", Use::Applied),
    ("result_extended", Use::Applied),
    ("task_track_started", Use::Applied),
    ("task_acks_late", Use::Applied),
    ("task_reject_on_worker_lost", Use::Applied),
    ("task_acks_on_failure_or_timeout", Use::Applied),
    ("task_time_limit", Use::Applied),
    ("task_soft_time_limit", Use::Applied),
    ("task_ignore_result", Use::Applied),
    ("task_store_errors_even_if_ignored", Use::Applied),
    ("task_default_rate_limit", Use::Applied),
    ("task_routes", Use::Applied),
    ("task_inherit_parent_priority", Use::Applied),
    ("worker_prefetch_multiplier", Use::Applied),
    ("worker_concurrency", Use::Applied),
    ("worker_max_tasks_per_child", Use::Applied),
    ("worker_max_memory_per_child", Use::Applied),
    ("worker_send_task_events", Use::Applied),
    ("worker_state_db", Use::Applied),
    ("worker_pool", Use::Applied),
    ("worker_disable_prefetch", Use::Applied),
    ("worker_soft_shutdown_timeout", Use::Applied),
    ("beat_schedule_filename", Use::Applied),
    ("beat_scheduler", Use::Applied),
    ("beat_max_loop_interval", Use::Applied),
    // Ours: not Celery settings (Celery ignores them).
    ("worker_metrics_port", Use::Applied),
    ("beat_lock_timeout", Use::Applied),
    // The app's own code applies these.
    ("task_annotations", Use::ByApp),
    ("task_compression", Use::ByApp),
    ("task_protocol", Use::ByApp),
    ("task_publish_retry", Use::ByApp),
    ("task_publish_retry_policy", Use::ByApp),
    ("task_default_exchange", Use::ByApp),
    ("task_default_exchange_type", Use::ByApp),
    ("task_default_routing_key", Use::ByApp),
    ("task_default_delivery_mode", Use::ByApp),
    ("task_default_priority", Use::ByApp),
    ("task_send_sent_event", Use::ByApp),
    ("task_always_eager", Use::ByApp),
    ("task_eager_propagates", Use::ByApp),
    ("task_store_eager_result", Use::ByApp),
    ("task_remote_tracebacks", Use::ByApp),
    ("task_allow_error_cb_on_chord_header", Use::ByApp),
    ("result_compression", Use::ByApp),
    ("result_accept_content", Use::ByApp),
    ("result_chord_join_timeout", Use::ByApp),
    ("result_chord_retry_interval", Use::ByApp),
    ("result_persistent", Use::Applied),
    ("result_cache_max", Use::ByApp),
    ("timezone", Use::ByApp),
    ("enable_utc", Use::ByApp),
    ("imports", Use::ByApp),
    ("include", Use::ByApp),
    ("beat_schedule", Use::ByApp),
    // What this worker always does: it reconnects forever, with back-off.
    ("broker_connection_retry", Use::ByApp),
    ("broker_connection_retry_on_startup", Use::ByApp),
    ("broker_connection_max_retries", Use::ByApp),
    ("broker_connection_timeout", Use::ByApp),
    ("worker_hijack_root_logger", Use::ByApp),
    ("worker_redirect_stdouts", Use::ByApp),
    ("worker_redirect_stdouts_level", Use::ByApp),
    // Its point is giving held ETA messages back before a cold shutdown:
    // this worker restores every held message on any shutdown.
    ("worker_enable_soft_shutdown_on_idle", Use::ByApp),
];

/// A queue of `task_queues` as kombu declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDecl {
    pub name: String,
    pub exchange: String,
    pub routing_key: String,
    /// The exchange's type (`direct`, `topic`, `fanout`).
    pub exchange_type: String,
    /// `queue_arguments` (`x-max-priority`, …), for brokers that take them.
    pub arguments: serde_json::Map<String, Value>,
}

impl QueueDecl {
    /// kombu's queue for a bare name: a direct exchange and routing key of
    /// that name; a `quorum` type becomes `x-queue-type`.
    pub fn missing(name: &str, queue_type: &str) -> QueueDecl {
        let mut arguments = serde_json::Map::new();
        if queue_type == "quorum" {
            arguments.insert("x-queue-type".into(), "quorum".into());
        }
        QueueDecl {
            name: name.to_string(),
            exchange: name.to_string(),
            routing_key: name.to_string(),
            exchange_type: "direct".into(),
            arguments,
        }
    }

    pub fn is_quorum(&self) -> bool {
        self.arguments.get("x-queue-type").and_then(Value::as_str) == Some("quorum")
    }
}

/// Celery ≥ 5.5's queue-type settings.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueTypes {
    pub default: String,
    pub missing: String,
    pub detect_quorum: bool,
    pub delayed_delivery: String,
}

impl Default for QueueTypes {
    fn default() -> Self {
        QueueTypes {
            default: "classic".into(),
            missing: "classic".into(),
            detect_quorum: true,
            delayed_delivery: "quorum".into(),
        }
    }
}

/// `classic` or `quorum`, as Celery validates them.
fn queue_type(name: &str, value: &Value) -> Result<String> {
    match value.as_str() {
        Some(t @ ("classic" | "quorum")) => Ok(t.to_string()),
        _ => bail!("{name}: invalid queue type {value}; valid types are 'classic' and 'quorum'"),
    }
}

/// Everything the worker needs, resolved once at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    /// `-A`: the app the worker serves (shown in the banner).
    pub app: Option<String>,
    pub broker_url: String,
    /// `None` = results disabled.
    pub result_backend: Option<String>,
    pub queues: Vec<String>,
    /// `task_queues` as declared (exchange, routing key, arguments).
    pub queue_decls: Vec<QueueDecl>,
    /// `task_create_missing_queues`: `-Q` may name queues `task_queues` lacks.
    pub create_missing_queues: bool,
    /// RabbitMQ queue types (Celery ≥ 5.5): `task_default_queue_type`,
    /// `task_create_missing_queue_type`, `worker_detect_quorum_queues`,
    /// `broker_native_delayed_delivery_queue_type`.
    pub queue_types: QueueTypes,
    /// Follow-ups the worker publishes take the sender's priority.
    pub task_inherit_parent_priority: bool,
    pub concurrency: usize,
    /// Node name, `celery@<host>` by default.
    pub hostname: String,
    pub loglevel: String,
    pub prefetch_multiplier: usize,
    pub task_track_started: bool,
    pub task_ignore_result: bool,
    pub task_store_errors_even_if_ignored: bool,
    /// `None` = results never expire.
    pub result_expires: Option<Duration>,
    pub result_extended: bool,
    /// `result_persistent`: RPC replies survive a broker restart.
    pub result_persistent: bool,
    pub transport: TransportOptions,
    /// `result_backend_transport_options.global_keyprefix`.
    pub result_keyprefix: String,
    /// `result_backend_transport_options` for a `sentinel://` backend.
    pub result_sentinel: SentinelOptions,
    pub task_acks_late: bool,
    pub task_reject_on_worker_lost: bool,
    pub task_acks_on_failure_or_timeout: bool,
    /// Hard / soft time limits in seconds for tasks that set none.
    pub task_time_limit: Option<serde_json::Number>,
    pub task_soft_time_limit: Option<serde_json::Number>,
    pub task_default_rate_limit: Option<String>,
    /// Where follow-up messages (callbacks, chains) go when they name no queue.
    pub task_default_queue: String,
    /// Set once a result backend was configured explicitly (app conf or
    /// setting), so `-b` alone no longer moves it.
    pub result_backend_explicit: bool,
    /// What `-A` loaded, from where (for the banner).
    pub app_source: Option<String>,
    /// `-P`: pool asked for (`prefork`, `threads`, `solo`).
    pub pool: Option<String>,
    pub max_tasks_per_child: Option<u64>,
    /// KiB.
    pub max_memory_per_child: Option<u64>,
    /// `-E` / `worker_send_task_events`: send task events.
    pub task_events: bool,
    /// Worker events and heartbeats (off with `--without-heartbeat`).
    pub heartbeat: bool,
    /// Seconds between heartbeats (`--heartbeat-interval`, Celery: 2.0).
    pub heartbeat_interval: f64,
    /// Ask running nodes for their revokes at start (off with `--without-mingle`).
    pub mingle: bool,
    /// `--without-gossip` clears it; we don't track other workers either way.
    pub gossip: bool,
    /// `-S/--statedb` / `worker_state_db`: where revokes survive restarts.
    pub statedb: Option<String>,
    /// `task_routes`, as data (see `canvas::routes`).
    pub task_routes: Value,
    /// `--purge`: empty the consumed queues before consuming.
    pub purge: bool,
    /// `-I/--include`: modules the app imports before its tasks are read.
    pub includes: Vec<String>,
    /// `--autoscale MAX,MIN` for the Python pool.
    pub autoscale: Option<(usize, usize)>,
    /// `worker_soft_shutdown_timeout`: on cold shutdown, seconds running
    /// tasks still get before they are cut off.
    pub soft_shutdown_timeout: f64,
    /// `-B`: the embedded beat service.
    pub embedded_beat: bool,
    /// Beat's settings (`-s`, `--scheduler`, `beat_*`), used with `-B`.
    pub beat: BeatConfig,
    /// `--metrics-port`: `/metrics` and `/healthz` (off when `None`).
    pub metrics_port: Option<u16>,
    /// How `-P` was understood, when it was mapped (gevent/eventlet), for the banner.
    pub pool_note: Option<String>,
    /// `-q`: no banner.
    pub quiet: bool,
}

/// Env var naming the `-I` modules, read by the main process and the pool
/// processes alike when they import the app.
pub const INCLUDE_ENV: &str = "RCW_INCLUDE";

/// The embedded beat service (`-B`), as `celery worker -B` runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct BeatConfig {
    /// `beat_schedule_filename` (`-s`).
    pub schedule_filename: String,
    /// `beat_scheduler` (`--scheduler`).
    pub scheduler: String,
    /// `beat_max_loop_interval`, seconds (0: the scheduler's own default).
    pub max_interval: f64,
    /// `beat_lock_timeout`: seconds the leader lock lives unless renewed.
    pub lock_timeout: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            app: None,
            broker_url: "redis://localhost:6379/0".into(),
            result_backend: Some("redis://localhost:6379/0".into()),
            queues: vec!["celery".into()],
            queue_decls: Vec::new(),
            create_missing_queues: true,
            queue_types: QueueTypes::default(),
            task_inherit_parent_priority: false,
            concurrency: std::thread::available_parallelism().map_or(1, |n| n.get()),
            hostname: format!("celery@{}", host_name()),
            loglevel: "WARNING".into(),
            prefetch_multiplier: 4,
            task_track_started: false,
            task_ignore_result: false,
            task_store_errors_even_if_ignored: false,
            result_expires: Some(Duration::from_secs(86400)),
            result_extended: false,
            result_persistent: false,
            transport: TransportOptions::default(),
            result_keyprefix: String::new(),
            result_sentinel: SentinelOptions::default(),
            task_acks_late: false,
            task_reject_on_worker_lost: false,
            task_acks_on_failure_or_timeout: true,
            task_time_limit: None,
            task_soft_time_limit: None,
            task_default_rate_limit: None,
            task_default_queue: "celery".into(),
            result_backend_explicit: false,
            app_source: None,
            pool: None,
            max_tasks_per_child: None,
            max_memory_per_child: None,
            task_events: false,
            heartbeat: true,
            heartbeat_interval: 2.0,
            mingle: true,
            gossip: true,
            statedb: None,
            task_routes: Value::Null,
            purge: false,
            includes: Vec::new(),
            autoscale: None,
            soft_shutdown_timeout: 0.0,
            embedded_beat: false,
            beat: BeatConfig {
                schedule_filename: "celerybeat-schedule".into(),
                scheduler: "celery.beat:PersistentScheduler".into(),
                max_interval: 0.0,
                lock_timeout: 30.0,
            },
            metrics_port: None,
            pool_note: None,
            quiet: false,
        }
    }
}

impl Config {
    /// Prefetch window: multiplier × concurrency (0 = unlimited, as in Celery).
    pub fn prefetch_count(&self) -> usize {
        self.prefetch_multiplier * self.concurrency
    }

    /// Applies one Celery setting by name. Values are JSON (`true`, `60`,
    /// `{"visibility_timeout": 10}`) or plain strings.
    pub fn apply_setting(&mut self, name: &str, value: Value) -> Result<()> {
        let flag = |v: &Value| -> Result<bool> {
            match v {
                Value::Bool(b) => Ok(*b),
                Value::String(s) => match s.to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => Ok(true),
                    "0" | "false" | "no" | "off" => Ok(false),
                    _ => bail!("{name} expects a boolean, got {s:?}"),
                },
                Value::Number(n) => Ok(n.as_f64() != Some(0.0)),
                _ => bail!("{name} expects a boolean, got {v}"),
            }
        };
        let text = |v: &Value| -> Result<String> {
            v.as_str()
                .map(str::to_string)
                .with_context(|| format!("{name} expects a string"))
        };
        let secs = |v: &Value, name: &str| -> Result<f64> {
            match v {
                Value::Null => Ok(0.0),
                v => v
                    .as_f64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .with_context(|| format!("{name} expects seconds, got {v}")),
            }
        };
        match name {
            "broker_url" => self.broker_url = text(&value)?,
            "result_backend" => {
                self.result_backend = normalize_backend(&text(&value)?);
                self.result_backend_explicit = true;
            }
            "task_queues" => {
                // Names, or kombu Queue objects as `{name, exchange, routing_key, …}`.
                let decls: Vec<QueueDecl> = value
                    .as_array()
                    .with_context(|| format!("task_queues expects a list of queues, got {value}"))?
                    .iter()
                    .filter_map(|q| {
                        let name = q.as_str().or_else(|| q.get("name")?.as_str())?.to_string();
                        let field =
                            |k: &str| q.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
                        Some(QueueDecl {
                            exchange: field("exchange").unwrap_or(&name).to_string(),
                            routing_key: field("routing_key").unwrap_or(&name).to_string(),
                            exchange_type: field("exchange_type").unwrap_or("direct").to_string(),
                            arguments: q
                                .get("queue_arguments")
                                .and_then(Value::as_object)
                                .cloned()
                                .unwrap_or_default(),
                            name,
                        })
                    })
                    .collect();
                if !decls.is_empty() {
                    self.queues = decls.iter().map(|d| d.name.clone()).collect();
                    self.queue_decls = decls;
                }
            }
            "task_create_missing_queues" => self.create_missing_queues = flag(&value)?,
            "task_default_queue_type" => self.queue_types.default = queue_type(name, &value)?,
            "task_create_missing_queue_type" => {
                self.queue_types.missing = queue_type(name, &value)?
            }
            "worker_detect_quorum_queues" => self.queue_types.detect_quorum = flag(&value)?,
            "broker_native_delayed_delivery_queue_type" => {
                self.queue_types.delayed_delivery = queue_type(name, &value)?
            }
            "task_inherit_parent_priority" => self.task_inherit_parent_priority = flag(&value)?,
            // Python-side serialisation settings: we consume JSON and say so
            // when the app expects something else.
            "task_serializer" | "result_serializer" => {
                if value.as_str() != Some("json") {
                    tracing::warn!("{name}={value}: this worker reads and writes JSON only");
                }
            }
            "accept_content" => {
                let accepts_json = value
                    .as_array()
                    .is_some_and(|a| a.iter().any(|c| c == "json" || c == "application/json"));
                if !accepts_json {
                    tracing::warn!("accept_content={value}: this worker accepts JSON only");
                }
            }
            "task_track_started" => self.task_track_started = flag(&value)?,
            "task_ignore_result" => self.task_ignore_result = flag(&value)?,
            "task_store_errors_even_if_ignored" => {
                self.task_store_errors_even_if_ignored = flag(&value)?
            }
            "result_extended" => self.result_extended = flag(&value)?,
            "result_persistent" => self.result_persistent = flag(&value)?,
            "result_expires" => {
                self.result_expires = match &value {
                    Value::Null => None,
                    v => {
                        let secs = v
                            .as_f64()
                            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                            .with_context(|| format!("result_expires expects seconds, got {v}"))?;
                        (secs > 0.0).then(|| Duration::from_secs_f64(secs))
                    }
                }
            }
            "worker_prefetch_multiplier" => {
                self.prefetch_multiplier = value
                    .as_u64()
                    .with_context(|| "worker_prefetch_multiplier expects an int")?
                    as usize
            }
            "worker_concurrency" => {
                self.concurrency = value
                    .as_u64()
                    .filter(|n| *n > 0)
                    .with_context(|| "worker_concurrency expects a positive int")?
                    as usize
            }
            "worker_max_tasks_per_child" => self.max_tasks_per_child = value.as_u64(),
            "worker_max_memory_per_child" => self.max_memory_per_child = value.as_u64(),
            "worker_send_task_events" => self.task_events = flag(&value)?,
            "task_routes" => self.task_routes = value,
            "worker_state_db" => self.statedb = value.as_str().map(str::to_string),
            "worker_pool" => self.pool = value.as_str().map(str::to_ascii_lowercase),
            "worker_disable_prefetch" => {
                if flag(&value)? {
                    self.prefetch_multiplier = 1;
                }
            }
            "worker_soft_shutdown_timeout" => {
                self.soft_shutdown_timeout = secs(&value, name)?;
            }
            "beat_schedule_filename" => self.beat.schedule_filename = text(&value)?,
            "beat_scheduler" => self.beat.scheduler = text(&value)?,
            "beat_max_loop_interval" => self.beat.max_interval = secs(&value, name)?,
            "beat_lock_timeout" => self.beat.lock_timeout = secs(&value, name)?,
            "worker_metrics_port" => {
                self.metrics_port = match &value {
                    Value::Null => None,
                    v => Some(
                        v.as_u64()
                            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                            .and_then(|p| u16::try_from(p).ok())
                            .with_context(|| {
                                format!("worker_metrics_port expects a port, got {v}")
                            })?,
                    ),
                }
            }
            "task_default_queue" => {
                self.task_default_queue = text(&value)?;
                self.queues = vec![self.task_default_queue.clone()];
            }
            "task_acks_late" => self.task_acks_late = flag(&value)?,
            "task_reject_on_worker_lost" => self.task_reject_on_worker_lost = flag(&value)?,
            "task_acks_on_failure_or_timeout" => {
                self.task_acks_on_failure_or_timeout = flag(&value)?
            }
            "task_time_limit" => self.task_time_limit = seconds(name, &value)?,
            "task_soft_time_limit" => self.task_soft_time_limit = seconds(name, &value)?,
            "task_default_rate_limit" => {
                self.task_default_rate_limit = match &value {
                    Value::Null => None,
                    v => {
                        let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                        crate::worker::rate_limit::parse(&text).map_err(anyhow::Error::msg)?;
                        Some(text)
                    }
                }
            }
            "broker_transport_options" => self.transport.apply(&value)?,
            "result_backend_transport_options" => {
                if let Some(p) = value.get("global_keyprefix").and_then(Value::as_str) {
                    self.result_keyprefix = p.to_string();
                }
                self.result_sentinel.apply(&value);
            }
            _ => bail!("unknown or unsupported setting {name:?}"),
        }
        Ok(())
    }

    /// Applies an app's conf: the `Applied` settings of [`SETTINGS`]; the
    /// settings the app changed that this worker does not support
    /// (`__unsupported__`) are named in one warning.
    pub fn apply_app_conf(&mut self, conf: &serde_json::Map<String, Value>) -> Result<()> {
        for (name, value) in conf {
            if name == "__unsupported__" {
                let names: Vec<&str> = value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                if !names.is_empty() {
                    tracing::warn!(
                        "app conf: not supported by this worker, ignored: {}",
                        names.join(", ")
                    );
                }
                continue;
            }
            self.apply_setting(name, value.clone())
                .with_context(|| format!("app conf {name}"))?;
        }
        Ok(())
    }

    /// The `task_queues` declaration of `queue`, else kombu's default one
    /// (exchange and routing key named after the queue).
    pub fn queue_decl(&self, queue: &str) -> QueueDecl {
        self.queue_decls
            .iter()
            .find(|d| d.name == queue)
            .cloned()
            .unwrap_or_else(|| QueueDecl::missing(queue, &self.queue_types.missing))
    }

    /// Every queue the app knows, as Celery's `app.amqp.queues` after `-Q`:
    /// `task_queues` (else the default queue, of `task_default_queue_type`),
    /// then the consumed queues it lacks (`new_missing`, of
    /// `task_create_missing_queue_type`).
    pub fn known_queues(&self) -> Vec<QueueDecl> {
        let mut all = if self.queue_decls.is_empty() {
            vec![QueueDecl::missing(
                &self.task_default_queue,
                &self.queue_types.default,
            )]
        } else {
            self.queue_decls.clone()
        };
        for q in &self.queues {
            if !all.iter().any(|d| &d.name == q) {
                all.push(QueueDecl::missing(q, &self.queue_types.missing));
            }
        }
        all
    }

    /// Parses `NAME=VALUE` (value as JSON, else as a plain string).
    pub fn apply_setting_str(&mut self, assignment: &str) -> Result<()> {
        let (name, raw) = assignment
            .split_once('=')
            .with_context(|| format!("--setting expects NAME=VALUE, got {assignment:?}"))?;
        let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
        self.apply_setting(name.trim(), value)
    }
}

/// A number of seconds (int or float kept as given), or `null` for none.
fn seconds(name: &str, v: &Value) -> Result<Option<serde_json::Number>> {
    let parsed = match v {
        Value::Null => return Ok(None),
        Value::Number(n) => Some(n.clone()),
        Value::String(s) => serde_json::from_str::<serde_json::Number>(s.trim()).ok(),
        _ => None,
    };
    parsed
        .filter(|n| n.as_f64().is_some_and(|f| f > 0.0))
        .map(Some)
        .with_context(|| format!("{name} expects positive seconds, got {v}"))
}

/// `disabled`/`none`/empty switch results off.
pub fn normalize_backend(url: &str) -> Option<String> {
    match url.trim() {
        "" | "disabled" | "none" | "None" => None,
        "rpc" => Some("rpc://".into()),
        u => Some(u.to_string()),
    }
}

/// The machine's short host name, for `%h` and the default node name.
pub fn host_name() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Expands Celery's node-name placeholders: `%h` (host), `%n` (name part), `%d` (domain), `%%`.
pub fn expand_hostname(pattern: &str) -> String {
    let host = host_name();
    let (short, domain) = host.split_once('.').unwrap_or((&host, ""));
    let out = expand_percent(pattern, |c| match c {
        'h' => Some(host.as_str()),
        'n' => Some(short),
        'd' => Some(domain),
        _ => None,
    });
    if out.contains('@') {
        out
    } else {
        format!("celery@{out}")
    }
}

/// A URL fit for logs: the password replaced by `**` (kombu's `maskpass`).
pub fn mask_url(url: &str) -> String {
    // kombu's failover and Sentinel lists (`a;b`) carry a password per URL.
    if url.contains(';') {
        return url.split(';').map(mask_url).collect::<Vec<_>>().join(";");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            // A userinfo without ':' may be a bare password (redis-py reads
            // it so): hide it whole rather than risk printing it.
            let masked = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:**"),
                None if userinfo.is_empty() => String::new(),
                None => "**".to_string(),
            };
            format!("{scheme}://{masked}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// Celery's `node_format` for file names (`--statedb`, later `--pidfile`,
/// `--logfile`): `%p` the node name, `%n` its name part, `%h` its host part,
/// `%d` the host's domain, `%%` a percent sign.
pub fn expand_node_path(pattern: &str, nodename: &str) -> String {
    let (name, host) = nodename.split_once('@').unwrap_or(("celery", nodename));
    let domain = host.split_once('.').map_or("", |(_, d)| d);
    expand_percent(pattern, |c| match c {
        'p' => Some(nodename),
        'n' => Some(name),
        'h' => Some(host),
        'd' => Some(domain),
        // The pool process index: this is the main process (Celery: `0`, `%I` empty).
        'i' => Some("0"),
        'I' => Some(""),
        _ => None,
    })
}

/// `%x` expansion as Celery's `host_format`: `lookup(x)` replaces it, `%%`
/// is a percent sign, anything else is kept as written.
fn expand_percent<'a>(pattern: &str, lookup: impl Fn(char) -> Option<&'a str>) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(o) => match lookup(o) {
                Some(v) => out.push_str(v),
                None => {
                    out.push('%');
                    out.push(o);
                }
            },
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_applied_setting_is_read_by_apply_setting() {
        for (name, use_) in SETTINGS {
            let mut c = Config::default();
            let err = c.apply_setting(name, serde_json::Value::Null).err();
            let unknown = err.is_some_and(|e| e.to_string().contains("unknown or unsupported"));
            assert_eq!(
                unknown,
                *use_ == Use::ByApp,
                "{name}: {use_:?} in SETTINGS, but apply_setting disagrees"
            );
        }
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url("redis://:s3cret@host:6379/0"),
            "redis://:**@host:6379/0"
        );
        assert_eq!(mask_url("redis://user:pw@host/1"), "redis://user:**@host/1");
        assert_eq!(
            mask_url("rediss://pw@host:6380/0?ssl_cert_reqs=none"),
            "rediss://**@host:6380/0?ssl_cert_reqs=none"
        );
        assert_eq!(
            mask_url("redis://localhost:6379/0"),
            "redis://localhost:6379/0"
        );
        assert!(!mask_url("amqp://guest:guest@localhost:5672//").contains("guest@"));
        assert_eq!(
            mask_url("sentinel://:pw1@h1:26379/0;sentinel://:pw2@h2/0"),
            "sentinel://:**@h1:26379/0;sentinel://:**@h2/0"
        );
    }

    #[test]
    fn queue_types_shape_the_known_queues_as_celerys_app_amqp_queues() {
        let mut c = Config::default();
        c.apply_setting("task_default_queue_type", "quorum".into())
            .unwrap();
        c.queues = vec!["celery".into(), "extra".into()];
        let known = c.known_queues();
        assert!(known[0].is_quorum(), "{known:?}");
        assert!(
            !known[1].is_quorum(),
            "missing queues are classic by default"
        );
        c.apply_setting("task_create_missing_queue_type", "quorum".into())
            .unwrap();
        assert!(c.known_queues()[1].is_quorum());
        assert!(
            c.apply_setting("task_default_queue_type", "stream".into())
                .is_err()
        );
        c.apply_setting("worker_detect_quorum_queues", false.into())
            .unwrap();
        assert!(!c.queue_types.detect_quorum);
    }

    #[test]
    fn applies_celery_settings() {
        let mut c = Config::default();
        c.apply_setting_str("task_track_started=true").unwrap();
        c.apply_setting_str("result_expires=60").unwrap();
        c.apply_setting_str(
            r#"broker_transport_options={"visibility_timeout": 2, "global_keyprefix": "p:"}"#,
        )
        .unwrap();
        assert!(c.task_track_started);
        assert_eq!(c.result_expires, Some(Duration::from_secs(60)));
        assert_eq!(c.transport.visibility_timeout, 2.0);
        assert_eq!(c.transport.global_keyprefix, "p:");
        assert!(c.apply_setting("no_such_thing", json!(1)).is_err());
        assert!(c.apply_setting_str("task_track_started=maybe").is_err());
    }

    #[test]
    fn expands_node_names() {
        let host = host_name();
        assert_eq!(expand_hostname("w1@%h"), format!("w1@{host}"));
        assert_eq!(expand_hostname("w1"), "celery@w1");
    }
}
