//! Keeps the prefetch window full: a message is fetched only while fewer
//! than `prefetch_count` are held unacked (kombu's `QoS.can_consume`).

use super::Shared;
use super::store::backoff;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Most messages taken in one fetch.
const MAX_BATCH: usize = 64;

/// Runs until a warm shutdown begins.
pub(crate) async fn consume(shared: &Arc<Shared>) {
    shared.consuming.store(true, Ordering::Relaxed);
    consume_loop(shared).await;
    shared.consuming.store(false, Ordering::Relaxed);
}

async fn consume_loop(shared: &Arc<Shared>) {
    let mut failures = 0u32;
    loop {
        let first = tokio::select! {
            p = shared.prefetch.clone().acquire_owned() => p.expect("prefetch semaphore is never closed"),
            _ = shared.shutdown.warm() => return,
        };
        if shared.shutdown.is_warm() {
            return;
        }
        let mut permits = vec![first];
        while permits.len() < MAX_BATCH {
            match shared.prefetch.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        // Not raced against shutdown: a fetch that popped messages must hand
        // them over, and it returns within the poll timeout anyway.
        match shared.broker.fetch(permits.len()).await {
            Ok(deliveries) => {
                shared.fetch_failing.store(false, Ordering::Relaxed);
                if failures > 0 {
                    tracing::info!("Connected to {}", shared.broker.url());
                    failures = 0;
                }
                for delivery in deliveries {
                    let permit = permits.pop().expect("never fetch more than permitted");
                    let owned = Arc::clone(shared);
                    shared.tasks.clone().spawn(async move {
                        super::request::handle(&owned, delivery, permit).await
                    });
                }
            }
            Err(e) => {
                shared.fetch_failing.store(true, Ordering::Relaxed);
                let wait = backoff(failures);
                failures += 1;
                tracing::error!(
                    "consumer: Cannot fetch from {}: {e}. Trying again in {:.2} seconds... ({failures})",
                    shared.broker.url(),
                    wait.as_secs_f64()
                );
                drop(permits);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shared.shutdown.warm() => return,
                }
                continue;
            }
        }
        if let Some(m) = shared.broker.maintenance()
            && let Err(e) = m.maintain().await
        {
            tracing::warn!("consumer: visibility restore failed: {e}");
        }
    }
}
