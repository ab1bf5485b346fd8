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
//!
//! The first key (kombu's first in pop order: the default queue's own list)
//! needs no wake-up at all: its `BLMOVE` goes out pipelined with the fetch
//! script on one connection, and Redis runs the script the moment the
//! `BLMOVE` returns, without waiting for us. That saves an idle worker one
//! round trip per message (on the bench machine 0.66 → ~0.5 ms from LPUSH
//! to the result's PUBLISH). A message on any other key wakes its waiter,
//! which cuts the first key's `BLMOVE` short with `CLIENT UNBLOCK`, and the
//! script then finds that message.

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
    /// The first key's connection: blocks, then runs the fetch (made on
    /// first use; only the fetcher uses it).
    first: tokio::sync::Mutex<Option<Conn>>,
}

impl Wakeup {
    pub fn new(endpoint: Endpoint, block: f64) -> Wakeup {
        Wakeup {
            endpoint,
            block,
            arm: watch::channel(0).0,
            ready: Arc::new(Notify::new()),
            waiters: Mutex::new(HashMap::new()),
            first: tokio::sync::Mutex::new(None),
        }
    }

    /// Waits until `keys[0]` holds a message, then runs `fetch` in the same
    /// step; a message on another key, or `block` seconds passing, runs it
    /// too (unblocked or timed out). Returns `fetch`'s reply. `control` sends
    /// the `CLIENT UNBLOCK`. Call it after a fetch came back empty.
    pub async fn wait_then(
        &self,
        keys: &[String],
        fetch: &redis::Cmd,
        control: &Conn,
    ) -> redis::RedisResult<redis::Value> {
        let Some((first, others)) = keys.split_first() else {
            return fetch.query_async(&mut control.clone()).await;
        };
        let ready = self.ready.notified();
        self.arm(others);
        let mut slot = self.first.lock().await;
        if slot.is_none() {
            let timeout = Duration::from_secs_f64(self.block) + Duration::from_secs(5);
            *slot = Some(self.endpoint.manager(timeout).await?);
        }
        let conn = slot.as_mut().expect("connected above");
        // Asked each time: a reconnect gives the connection a new id.
        let id: i64 = redis::cmd("CLIENT").arg("ID").query_async(conn).await?;
        let mut pipe = redis::pipe();
        pipe.cmd("BLMOVE")
            .arg(first)
            .arg(first)
            .arg("RIGHT")
            .arg("RIGHT")
            .arg(self.block)
            .ignore()
            .add_command(fetch.clone());
        let mut run = std::pin::pin!(pipe.query_async::<(redis::Value,)>(conn));
        tokio::select! {
            r = &mut run => return r.map(|(v,)| v),
            _ = ready => {}
        }
        // Another key has a message. The UNBLOCK may reach Redis before the
        // BLMOVE does (it then unblocks nothing): repeat until the pipeline ends.
        let mut control = control.clone();
        loop {
            let unblocked: i64 = redis::cmd("CLIENT")
                .arg("UNBLOCK")
                .arg(id)
                .query_async(&mut control)
                .await?;
            let pause = if unblocked == 1 { self.block } else { 0.001 };
            tokio::select! {
                r = &mut run => return r.map(|(v,)| v),
                _ = tokio::time::sleep(Duration::from_secs_f64(pause)) => {}
            }
        }
    }

    /// Keeps one waiter per key in `keys` (and none for others).
    fn arm(&self, keys: &[String]) {
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
