//! The event dispatcher: one service that publishes events to the `celeryev`
//! exchange. Senders never wait: an event is stamped (clock, time) and
//! queued; the service drains whatever is queued at once, so under load task
//! events leave in `task.multi` batches (as Celery's buffered dispatcher
//! sends them) and when idle each leaves immediately.

use super::{Common, Event};
use crate::broker::Broker;
use crate::protocol::pidbox;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{mpsc, oneshot};

/// The `celeryev` exchange (`event_exchange`).
pub const EXCHANGE: &str = "celeryev";

/// Most events published in one `task.multi` message.
const MAX_BATCH: usize = 256;

/// How long task events may wait for company before they are published.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(5);

// Nearly every item is an event: boxing it would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Item {
    Event(Stamped),
    Flush(oneshot::Sender<()>),
}

impl Item {
    fn is_task_event(&self) -> bool {
        matches!(self, Item::Event(s) if s.event.is_task_event())
    }
}

/// An event with the clock and time it was sent at.
struct Stamped {
    event: Event,
    clock: u64,
    timestamp: f64,
}

/// The sending side, shared by everything that emits events.
pub struct Events {
    tx: mpsc::UnboundedSender<Item>,
    task_events: AtomicBool,
    /// Worker events (heartbeats) are on unless `--without-heartbeat`.
    worker_events: bool,
    /// Celery starts no dispatcher when nothing would use it (no `-E`,
    /// `--without-heartbeat` and `--without-gossip`); `enable_events` then fails.
    available: bool,
    /// Sees every task event, sent or not (`/metrics`).
    observer: Option<Arc<crate::metrics::Metrics>>,
}

impl Events {
    /// Starts the dispatcher service publishing on `broker` as `hostname`.
    pub fn start(
        broker: Arc<dyn Broker>,
        hostname: String,
        task_events: bool,
        worker_events: bool,
        available: bool,
        observer: Option<Arc<crate::metrics::Metrics>>,
    ) -> Arc<Events> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(publish_loop(broker, hostname, rx));
        Arc::new(Events {
            tx,
            task_events: AtomicBool::new(task_events),
            worker_events,
            available,
            observer,
        })
    }

    /// Is there a dispatcher at all (Celery's `event_dispatcher is not None`)?
    pub fn available(&self) -> bool {
        self.available
    }

    /// Task events are being sent (`-E` or `enable_events`).
    pub fn task_events(&self) -> bool {
        self.task_events.load(Ordering::Relaxed)
    }

    /// Switches task events; returns the previous setting.
    pub fn set_task_events(&self, on: bool) -> bool {
        self.task_events.swap(on, Ordering::Relaxed)
    }

    pub fn worker_events(&self) -> bool {
        self.worker_events
    }

    /// Queues a task event, built only if task events are on.
    /// Will [`Self::task`] build its event (sent, or observed for `/metrics`)?
    pub fn builds_task_events(&self) -> bool {
        self.observer.is_some() || self.task_events()
    }

    pub fn task(&self, clock: impl FnOnce() -> u64, build: impl FnOnce() -> Event) {
        match &self.observer {
            None if self.task_events() => self.send(build(), clock()),
            None => {}
            Some(o) => {
                let event = build();
                o.observe(&event);
                if self.task_events() {
                    self.send(event, clock());
                }
            }
        }
    }

    /// A task the worker published: observed only (Celery sends `task-sent`
    /// only with `task_send_sent_event`, which the app's own code honours).
    pub fn sent(&self, build: impl FnOnce() -> Event) {
        if let Some(o) = &self.observer {
            o.observe(&build());
        }
    }

    /// Queues an event stamped with `clock` and the current time.
    pub fn send(&self, event: Event, clock: u64) {
        let _ = self.tx.send(Item::Event(Stamped {
            event,
            clock,
            timestamp: super::unix_now(),
        }));
    }

    /// Waits until everything queued so far has been published (shutdown).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Item::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), wait).await;
        }
    }
}

async fn publish_loop(
    broker: Arc<dyn Broker>,
    hostname: String,
    mut rx: mpsc::UnboundedReceiver<Item>,
) {
    let pid = std::process::id();
    let mut items = Vec::with_capacity(MAX_BATCH);
    let mut failing = false;
    while rx.recv_many(&mut items, MAX_BATCH).await > 0 {
        // Under load, let a few milliseconds of events gather so they leave
        // as one `task.multi` message (Celery's dispatcher buffers the same
        // way); when idle that is all the delay an event sees.
        if items.len() < MAX_BATCH && items.iter().any(Item::is_task_event) {
            tokio::time::sleep(COALESCE).await;
            while items.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(item) => items.push(item),
                    Err(_) => break,
                }
            }
        }
        // Task events: one JSON array, written in place.
        let mut tasks: Vec<u8> = Vec::new();
        let mut flushes = Vec::new();
        for item in items.drain(..) {
            match item {
                Item::Flush(done) => flushes.push(done),
                Item::Event(Stamped {
                    event,
                    clock,
                    timestamp,
                }) => {
                    let common = Common {
                        hostname: &hostname,
                        pid,
                        clock,
                        timestamp,
                    };
                    if event.is_task_event() {
                        batch_push(&mut tasks, &event, &common);
                    } else {
                        let mut body = Vec::with_capacity(256);
                        event.write_json(&common, &mut body);
                        let rk = event.routing_key();
                        let env = envelope_bytes(&hostname, body, &rk);
                        report(&mut failing, publish(&*broker, &rk, &env).await);
                    }
                }
            }
        }
        if !tasks.is_empty() {
            batch_close(&mut tasks);
            let env = envelope_bytes(&hostname, tasks, "task.multi");
            report(&mut failing, publish(&*broker, "task.multi", &env).await);
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Sends one event message to the `celeryev` exchange.
async fn publish(
    broker: &dyn crate::broker::Broker,
    routing_key: &str,
    env: &crate::protocol::Envelope,
) -> Result<(), crate::broker::BrokerError> {
    crate::broker::fanout_of(broker)?
        .publish_fanout(EXCHANGE, routing_key, env)
        .await
}

/// Appends an event to a `task.multi` body (`[e1, e2, ...]`, as `json.dumps`).
pub fn batch_push(batch: &mut Vec<u8>, event: &Event, common: &Common<'_>) {
    batch.extend_from_slice(if batch.is_empty() { b"[" } else { b", " });
    event.write_json(common, batch);
}

/// Closes a non-empty `task.multi` body.
pub fn batch_close(batch: &mut Vec<u8>) {
    batch.push(b']');
}

/// Events are fire-and-forget (as on Celery's Redis transport): a failure is
/// logged once until publishing works again.
fn report(failing: &mut bool, outcome: Result<(), crate::broker::BrokerError>) {
    match outcome {
        Ok(()) if *failing => {
            tracing::info!("Events: publishing again");
            *failing = false;
        }
        Ok(()) => {}
        Err(e) if !*failing => {
            tracing::warn!("Events: cannot publish, events are dropped until it works: {e}");
            *failing = true;
        }
        Err(_) => {}
    }
}

/// The event envelope: header `hostname`, transient delivery.
pub fn envelope(hostname: &str, body: &Value, routing_key: &str) -> crate::protocol::Envelope {
    envelope_bytes(hostname, body.to_string().into_bytes(), routing_key)
}

fn envelope_bytes(hostname: &str, body: Vec<u8>, routing_key: &str) -> crate::protocol::Envelope {
    let mut headers = Map::new();
    headers.insert("hostname".into(), json!(hostname));
    pidbox::envelope(body, headers, EXCHANGE, routing_key, 1)
}
