//! Waiting for a message without taking it.
//!
//! kombu blocks in `BRPOP` and records the popped message in `unacked` in a
//! second step: a worker killed between the two has taken a message that is
//! then nowhere (seen: 1 of 3,000 lost with `acks_late` and SIGKILL). Here a
//! message only ever leaves its list inside the fetch script, which records
//! it in the same atomic step. To sleep until there is something to fetch,
//! one waiter per list key blocks in `BLMOVE key key RIGHT RIGHT` — a move of
//! the tail onto itself, so the list is left exactly as it was — and wakes the
//! fetcher, which then pops with the script. Same number of round trips per
//! message as `BRPOP` + bookkeeping.

use super::super::redis_endpoint::{Conn, Endpoint};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};

pub struct Wakeup {
    endpoint: Endpoint,
    /// Seconds each `BLMOVE` blocks (kombu's `brpop_timeout`).
    block: f64,
    /// Bumped each time the fetcher found nothing and is about to wait.
    arm: watch::Sender<u64>,
    ready: Arc<Notify>,
    waiters: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

impl Wakeup {
    pub fn new(endpoint: Endpoint, block: f64) -> Wakeup {
        Wakeup {
            endpoint,
            block,
            arm: watch::channel(0).0,
            ready: Arc::new(Notify::new()),
            waiters: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until one of `keys` holds a message (true) or `block` seconds
    /// pass (false). Call it after a fetch came back empty: a message pushed
    /// since then is seen, as each waiter's `BLMOVE` is sent after the arm.
    pub async fn wait(&self, keys: &[String]) -> bool {
        let ready = self.ready.notified();
        {
            let mut waiters = self.waiters.lock().expect("waiters lock");
            waiters.retain(|k, task| {
                let keep = keys.contains(k);
                if !keep {
                    task.abort();
                }
                keep
            });
            for key in keys {
                waiters.entry(key.clone()).or_insert_with(|| {
                    tokio::spawn(waiter(
                        self.endpoint.clone(),
                        key.clone(),
                        self.block,
                        self.arm.subscribe(),
                        Arc::clone(&self.ready),
                    ))
                });
            }
        }
        self.arm.send_modify(|n| *n += 1);
        // A little longer than the waiters block, so a wake-up at the end
        // of their wait is not missed.
        let patience = Duration::from_secs_f64(self.block) + Duration::from_millis(100);
        tokio::time::timeout(patience, ready).await.is_ok()
    }
}

impl Drop for Wakeup {
    fn drop(&mut self) {
        for task in self.waiters.lock().expect("waiters lock").values() {
            task.abort();
        }
    }
}

/// One list key: on each arm, block until it is non-empty, then wake the
/// fetcher. Its own connection, as a blocked one can do nothing else.
async fn waiter(
    endpoint: Endpoint,
    key: String,
    block: f64,
    mut arm: watch::Receiver<u64>,
    ready: Arc<Notify>,
) {
    let timeout = Duration::from_secs_f64(block) + Duration::from_secs(5);
    let mut conn = None;
    while arm.changed().await.is_ok() {
        if conn.is_none() {
            match endpoint.manager(timeout).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::debug!("wake-up connection for {key:?}: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    ready.notify_one();
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let moved: redis::RedisResult<Option<Vec<u8>>> = redis::cmd("BLMOVE")
            .arg(&key)
            .arg(&key)
            .arg("RIGHT")
            .arg("RIGHT")
            .arg(block)
            .query_async(c)
            .await;
        match moved {
            Ok(Some(_)) => ready.notify_one(),
            Ok(None) => {}
            Err(e) => {
                // The fetcher finds out about a lost connection on its own
                // connection; wake it so it does.
                tracing::debug!("wake-up on {key:?}: {e}");
                conn = None;
                ready.notify_one();
            }
        }
    }
}

/// Has the server `BLMOVE` (Redis ≥ 6.2)?
pub async fn supported(conn: &mut Conn) -> bool {
    let info: redis::RedisResult<redis::Value> = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("BLMOVE")
        .query_async(conn)
        .await;
    match info {
        Ok(redis::Value::Array(items)) => items.first().is_some_and(|v| *v != redis::Value::Nil),
        _ => false,
    }
}
