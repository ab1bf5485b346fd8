//! The pipeline: consume → decode → (eta/expiry) → execute → store → ack.
//!
//! * [`consumer`] keeps the prefetch window full (`prefetch_multiplier × concurrency`).
//! * [`request`] takes one delivery from bytes to a settled message.
//! * [`execute`] runs a handler on a blocking thread or the runtime, so a
//!   CPU-heavy task never stalls consuming, acking or result writing.
//! * [`store`] writes states and settles messages, riding out broker/backend
//!   reconnects instead of losing work.
//! * [`shutdown`] turns signals into warm and cold shutdown.

mod consumer;
mod execute;
pub mod rate_limit;
mod request;
pub mod shutdown;
mod store;
mod trace;

pub use store::backoff;

use crate::backend::ResultBackend;
use crate::broker::Broker;
use crate::config::Config;
use crate::registry::Registry;
use shutdown::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
}

/// A configured worker, ready to [`Worker::run`].
pub struct Worker {
    shared: Arc<Shared>,
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
    ) -> anyhow::Result<Worker> {
        let limits = rate_limit::Limits::new(&registry, config.task_default_rate_limit.as_deref())
            .map_err(anyhow::Error::msg)?;
        let prefetch = match config.prefetch_count() {
            0 => UNLIMITED_PREFETCH,
            n => n,
        };
        Ok(Worker {
            shared: Arc::new(Shared {
                limits,
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
        store::until_ok("declare queues", &shared.shutdown, || shared.broker.start()).await;
        tracing::info!("Connected to {}", shared.broker.url());
        tracing::info!("{} ready.", shared.config.hostname);

        consumer::consume(&shared).await;

        shared.tasks.close();
        let running = shared.tasks.len();
        if running > 0 && !shared.shutdown.is_cold() {
            tracing::info!("Waiting for {running} task(s) to finish");
        }
        tokio::select! {
            _ = shared.tasks.wait() => {}
            _ = shared.shutdown.cold() => {
                tracing::warn!("Cold shutdown: {} task(s) abandoned", shared.tasks.len());
            }
        }
        tracing::info!(
            "{} stopped after {} task(s)",
            shared.config.hostname,
            shared.processed.load(Ordering::Relaxed)
        );
        Ok(())
    }
}
