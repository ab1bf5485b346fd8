//! The pipeline: consume → decode → (eta/expiry) → execute → store → ack.
//!
//! * [`consumer`] keeps the prefetch window full (`prefetch_multiplier × concurrency`).
//! * [`request`] takes one delivery from bytes to a settled message.
//! * [`execute`] runs a handler on a blocking thread or the runtime, so a
//!   CPU-heavy task never stalls consuming, acking or result writing.
//! * [`store`] writes states and settles messages, riding out broker/backend
//!   reconnects instead of losing work.
//! * [`shutdown`] turns signals into warm and cold shutdown.
//! * [`state`] is what the worker holds (reserved, scheduled, active,
//!   revoked, counts); the pidbox commands in `control` read and steer it.
//!
//! Beside the consumer, [`Worker::run`] starts the services a Celery
//! consumer's bootsteps start: remote control (`control::serve`), the event
//! dispatcher and heartbeats, and mingle at start-up.

mod body_canvas;
mod consumer;
mod execute;
mod heartbeat;
pub mod policy;
pub mod rate_limit;
mod request;
pub(crate) mod services;
pub mod shutdown;
pub mod state;
pub mod statedb;
mod store;
mod trace;

pub use store::backoff;

use crate::backend::ResultBackend;
use crate::broker::Broker;
use crate::config::Config;
use crate::control::{AppInfo, ProcessPool};
use crate::events::dispatcher::Events;
use crate::events::{Event, WorkerStatus};
use crate::protocol::result_meta::ResultMeta;
use crate::registry::Registry;
use crate::task::TaskError;
use shutdown::Shutdown;
use state::WorkerState;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// Everything a request handler needs, shared by all of them.
pub(crate) struct Shared {
    pub config: Config,
    pub registry: Registry,
    pub broker: Arc<dyn Broker>,
    pub backend: Option<Arc<dyn ResultBackend>>,
    /// `-c`: tasks running at once.
    pub slots: Arc<Semaphore>,
    /// Admission for Python bodies in the prefork pool: one per pool process,
    /// taken before the ack like `slots`, so prefetch still bounds what is
    /// held; separate from `slots`, so Rust tasks never wait behind them.
    pub pooled: Arc<Semaphore>,
    /// Messages held unacked at once (kombu's QoS window).
    pub prefetch: Arc<Semaphore>,
    /// Finished tasks whose outcome is still being written.
    pub settling: Arc<Semaphore>,
    pub shutdown: Shutdown,
    pub tasks: TaskTracker,
    pub processed: AtomicU64,
    /// Per-task rate limits.
    pub limits: rate_limit::Limits,
    /// `gen<pid>@<host>`: the origin of messages this worker publishes.
    pub origin: String,
    /// Where the messages this worker publishes go.
    pub router: crate::canvas::routes::Router,
    /// Held requests, revokes, counts, clock.
    pub state: Arc<WorkerState>,
    pub events: Arc<Events>,
    /// The Python process pool, when Python bodies run in one.
    pub pool: Option<Arc<dyn ProcessPool>>,
    /// The `-A` app, for `inspect conf` / `report`.
    pub app: Option<Arc<dyn AppInfo>>,
    /// Celery's canvas code, when the app is loaded.
    pub canvas_host: Option<Arc<dyn crate::canvas::host::CanvasHost>>,
    /// Calls into `canvas_host` go one at a time.
    pub host_lane: Semaphore,
    /// Current size of `slots` (`pool_grow`/`pool_shrink` change it).
    slots_size: AtomicUsize,
    /// Each registered task's resolved policy.
    policies: std::collections::HashMap<String, policy::Policy>,
    /// Task counters for `/metrics` (only with `--metrics-port`).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The consumer loop is running (`/healthz`).
    pub consuming: AtomicBool,
    /// The last fetch failed: the broker connection is down (`/healthz`).
    pub fetch_failing: AtomicBool,
    /// `--autoscale` bounds (the `autoscale` command changes them).
    pub autoscale: Option<services::Bounds>,
}

impl Shared {
    /// The resolved policy of task `def` (resolved now if it was registered late).
    pub fn policy(&self, def: &crate::registry::TaskDef) -> policy::Policy {
        self.policies
            .get(&def.name)
            .copied()
            .unwrap_or_else(|| policy::Policy::resolve(&def.options, &self.config))
    }

    pub fn slots_size(&self) -> usize {
        self.slots_size.load(Ordering::Relaxed)
    }

    /// Grows (`delta > 0`) or shrinks the `-c` slots; never below one.
    pub fn resize_slots(&self, delta: isize) {
        if delta > 0 {
            self.slots.add_permits(delta as usize);
            self.slots_size.fetch_add(delta as usize, Ordering::Relaxed);
        } else {
            let want = (-delta) as usize;
            let n = want.min(self.slots_size().saturating_sub(1));
            let taken = self.slots.forget_permits(n);
            self.slots_size.fetch_sub(taken, Ordering::Relaxed);
        }
    }

    /// What worker events report.
    pub fn worker_status(&self) -> WorkerStatus {
        WorkerStatus {
            freq: self.config.heartbeat_interval,
            active: self.state.active_count(),
            processed: self.processed.load(Ordering::Relaxed),
            loadavg: crate::events::loadavg(),
        }
    }

    /// Writes the revoked ids to `--statedb`, if one is set.
    pub fn persist_revoked(&self) {
        if let Some(path) = &self.config.statedb {
            let saved = statedb::Saved {
                revoked: self.state.revoked_ids(),
                clock: self.state.clock(),
            };
            if let Err(e) = statedb::save(std::path::Path::new(path), &saved) {
                tracing::error!("statedb: {e}");
            }
        }
    }
}

/// `--purge`: Celery's `app.control.purge()` over the consumed queues.
async fn purge(shared: &Shared) {
    let mut total = 0;
    for q in shared.broker.queues() {
        match shared.broker.purge(&q).await {
            Ok(n) => total += n,
            Err(e) => tracing::error!("purge: cannot purge {q}: {e}"),
        }
    }
    if total > 0 {
        let noun = if total == 1 { "message" } else { "messages" };
        println!("purge: Erased {total} {noun} from the queue.\n");
    }
}

/// REVOKED with Celery's `TaskRevokedError(reason)` (`revoked`, `expired`,
/// `terminated`), as `mark_as_revoked` stores it.
pub(crate) fn revoked_meta(id: &str, reason: &str) -> ResultMeta {
    let err = TaskError::new("TaskRevokedError", "celery.exceptions", vec![reason.into()]);
    ResultMeta::new(id, "REVOKED", err.to_meta())
}

/// What the embedding program hands the worker besides its core parts.
#[derive(Default)]
pub struct Extras {
    pub pool: Option<Arc<dyn ProcessPool>>,
    pub app: Option<Arc<dyn AppInfo>>,
    pub canvas_host: Option<Arc<dyn crate::canvas::host::CanvasHost>>,
    /// Celery's scheduler, for `-B`.
    pub beat: Option<Arc<dyn crate::beat::BeatHost>>,
}

/// A configured worker, ready to [`Worker::run`].
pub struct Worker {
    shared: Arc<Shared>,
    beat: Option<Arc<dyn crate::beat::BeatHost>>,
}

/// Semaphore size standing for "unlimited" prefetch (`worker_prefetch_multiplier = 0`).
const UNLIMITED_PREFETCH: usize = 1 << 16;

/// Finished tasks allowed to wait for their result write at once.
const MAX_SETTLING: usize = 256;

impl Worker {
    pub fn new(
        config: Config,
        registry: Registry,
        broker: Arc<dyn Broker>,
        backend: Option<Arc<dyn ResultBackend>>,
        shutdown: Shutdown,
        extras: Extras,
    ) -> anyhow::Result<Worker> {
        let limits = rate_limit::Limits::new(&registry, config.task_default_rate_limit.as_deref())
            .map_err(anyhow::Error::msg)?;
        let prefetch = match config.prefetch_count() {
            0 => UNLIMITED_PREFETCH,
            n => n,
        };
        let mut router = crate::canvas::routes::Router::new(&config.task_default_queue);
        let skipped = router.add_task_routes(&config.task_routes);
        if !skipped.is_empty() {
            tracing::warn!(
                "task_routes: router functions and regex routes are not read by the \
                 worker itself (with an app loaded, Celery's router resolved them at start \
                 for the app's own tasks, without the call's arguments); for other tasks \
                 these are ignored and messages go to the task's queue or {:?}: {}",
                config.task_default_queue,
                skipped.join("; ")
            );
        }
        router.inherit_parent_priority = config.task_inherit_parent_priority;
        // Per task definition, once: its routing and its policy.
        let mut policies = std::collections::HashMap::new();
        for def in registry.names().into_iter().filter_map(|n| registry.get(n)) {
            if let Some(q) = &def.options.queue {
                router.task_queue(&def.name, q);
            }
            if let Some(p) = def.options.priority {
                router.task_priority(&def.name, p);
            }
            policies.insert(
                def.name.clone(),
                policy::Policy::resolve(&def.options, &config),
            );
        }
        let metrics = config
            .metrics_port
            .map(|_| crate::metrics::Metrics::new(&config.hostname));
        let events = Events::start(
            Arc::clone(&broker),
            config.hostname.clone(),
            config.task_events,
            config.heartbeat,
            config.task_events || config.heartbeat || config.gossip,
            metrics.clone(),
        );
        Ok(Worker {
            beat: extras.beat,
            shared: Arc::new(Shared {
                metrics,
                consuming: AtomicBool::new(false),
                fetch_failing: AtomicBool::new(false),
                autoscale: config
                    .autoscale
                    .map(|(max, min)| services::Bounds::new(max, min)),
                limits,
                router,
                state: Arc::new(WorkerState::new()),
                events,
                pool: extras.pool,
                app: extras.app,
                canvas_host: extras.canvas_host,
                host_lane: Semaphore::new(1),
                slots_size: AtomicUsize::new(config.concurrency.max(1)),
                policies,
                origin: format!("gen{}@{}", std::process::id(), crate::config::host_name()),
                slots: Arc::new(Semaphore::new(config.concurrency.max(1))),
                pooled: Arc::new(Semaphore::new(config.concurrency.max(1))),
                prefetch: Arc::new(Semaphore::new(prefetch)),
                settling: Arc::new(Semaphore::new(MAX_SETTLING.max(prefetch))),
                config,
                registry,
                broker,
                backend,
                shutdown,
                tasks: TaskTracker::new(),
                processed: AtomicU64::new(0),
            }),
        })
    }

    /// Consumes until a warm shutdown has drained running tasks, or a cold
    /// shutdown cuts them off.
    pub async fn run(self) -> anyhow::Result<()> {
        let shared = self.shared;
        // Bound before anything else, so a taken port stops the start.
        let metrics_listener = match shared.config.metrics_port {
            Some(port) => Some(crate::metrics::http::bind(port).await?),
            None => None,
        };
        store::until_ok(
            || "declare queues",
            &shared.shutdown,
            || shared.broker.start(),
        )
        .await;
        tracing::info!("Connected to {}", shared.broker.url());
        if shared.config.purge {
            purge(&shared).await;
        }
        let mut services = services::start(&shared, metrics_listener, self.beat).await?;
        if let Some(path) = &shared.config.statedb {
            match statedb::load(std::path::Path::new(path)) {
                Ok(saved) => {
                    shared.state.merge_revoked(&saved.revoked);
                    shared.state.clock_adjust(saved.clock);
                }
                Err(e) => anyhow::bail!("statedb: {e}"),
            }
        }
        if shared.config.mingle {
            crate::control::mingle::sync(&shared).await;
        }
        let control = crate::control::subscribe(&shared)
            .await
            .map(|requests| tokio::spawn(crate::control::serve(Arc::clone(&shared), requests)));
        if shared.events.worker_events() {
            shared.events.send(
                Event::WorkerOnline(shared.worker_status()),
                shared.state.clock_forward(),
            );
            tokio::spawn(heartbeat::beat(Arc::clone(&shared)));
        }
        if shared.events.task_events() {
            tracing::info!("Events of group {{task}} enabled by default.");
        }
        tracing::info!("{} ready.", shared.config.hostname);

        consumer::consume(&shared).await;
        if let Some(c) = control {
            c.abort();
        }
        services.stop_beat().await;

        shared.tasks.close();
        let running = shared.tasks.len();
        if running > 0 && !shared.shutdown.is_cold() {
            tracing::info!("Waiting for {running} task(s) to finish");
        }
        tokio::select! {
            _ = shared.tasks.wait() => {}
            _ = shared.shutdown.cold() => {
                tracing::warn!("Cold shutdown: {} task(s) abandoned", shared.tasks.len());
                // Their pool processes go now: an abandoned task must not
                // finish behind the worker's back.
                crate::daemon::kill_children(true);
            }
        }
        services.stop();
        if shared.events.worker_events() {
            shared.events.send(
                Event::WorkerOffline(shared.worker_status()),
                shared.state.clock_forward(),
            );
        }
        shared.events.flush().await;
        shared.persist_revoked();
        tracing::info!(
            "{} stopped after {} task(s)",
            shared.config.hostname,
            shared.processed.load(Ordering::Relaxed)
        );
        Ok(())
    }
}
