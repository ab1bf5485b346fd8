//! Writing states and settling messages without losing them to a broken
//! connection: transient errors are retried with backoff (as Celery's
//! consumer reconnects), permanent ones are logged once.

use super::Shared;
use super::shutdown::Shutdown;
use crate::backend::BackendError;
use crate::broker::{BrokerError, Settlement};
use crate::protocol::result_meta::ResultMeta;
use std::future::Future;
use std::time::Duration;

/// Errors that may go away after a reconnect.
pub(crate) trait Transient: std::fmt::Display {
    fn is_transient(&self) -> bool;
}

impl Transient for BrokerError {
    fn is_transient(&self) -> bool {
        self.is_connection()
    }
}

impl Transient for BackendError {
    fn is_transient(&self) -> bool {
        self.is_connection()
    }
}

/// Exponential backoff: 0.1 s doubling to 5 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(6)).min(5000))
}

/// Runs `op` until it succeeds, a permanent error occurs, or a cold shutdown
/// begins. Returns the value, or `None` when it gave up. `what` names the
/// operation in logs; it is only formatted when something is logged.
pub(crate) async fn until_ok<T, E, F, Fut, W>(
    what: impl Fn() -> W,
    shutdown: &Shutdown,
    mut op: F,
) -> Option<T>
where
    W: std::fmt::Display,
    E: Transient,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 0u32;
    loop {
        match op().await {
            Ok(v) => {
                if attempt > 0 {
                    tracing::info!("{}: succeeded after reconnecting", what());
                }
                return Some(v);
            }
            Err(e) if e.is_transient() && !shutdown.is_cold() => {
                let wait = backoff(attempt);
                attempt += 1;
                tracing::warn!(
                    "{}: {e}. Trying again in {:.2} seconds... ({attempt})",
                    what(),
                    wait.as_secs_f64()
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cold() => {}
                }
            }
            Err(e) => {
                tracing::error!("{}: {e}", what());
                return None;
            }
        }
    }
}

impl Shared {
    /// Stores a state (when a backend is configured), retrying through outages.
    pub(crate) async fn store_state(&self, meta: &ResultMeta) {
        let Some(backend) = &self.backend else {
            return;
        };
        let what = || format!("store {} for {}", meta.status, meta.task_id);
        until_ok(what, &self.shutdown, || backend.store(meta)).await;
    }

    pub(crate) async fn ack(&self, settle: &Settlement) {
        let what = || format!("ack {}", settle.tag());
        until_ok(what, &self.shutdown, || settle.ack()).await;
    }

    pub(crate) async fn reject(&self, settle: &Settlement, requeue: bool) {
        let what = || format!("reject {}", settle.tag());
        until_ok(what, &self.shutdown, || settle.reject(requeue)).await;
    }

    /// Gives an unstarted message back to its queue (warm shutdown).
    pub(crate) async fn restore(&self, settle: &Settlement) {
        let what = || format!("restore {}", settle.tag());
        until_ok(what, &self.shutdown, || settle.restore()).await;
    }
}
