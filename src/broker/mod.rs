//! Message transports. A [`Broker`] hands out [`Delivery`]s and settles them
//! (ack / reject / restore); it knows routing, not task semantics.

pub mod amqp;
pub mod redis;
pub mod redis_endpoint;
pub mod redis_url;

use crate::protocol::{DecodeError, Envelope};
use async_trait::async_trait;
use std::sync::Arc;

/// One message taken from a queue, still unacknowledged.
#[derive(Debug)]
pub struct Delivery {
    /// kombu delivery tag (key in `unacked`); empty when the bytes were not
    /// even an envelope and so could not be recorded.
    pub tag: String,
    /// The queue it was consumed from.
    pub queue: String,
    pub payload: Result<Envelope, DecodeError>,
}

impl Delivery {
    /// `(exchange, routing_key)` it was published with.
    pub fn route(&self) -> (String, String) {
        match &self.payload {
            Ok(env) => env.delivery_info(),
            Err(_) => (String::new(), self.queue.clone()),
        }
    }
}

/// Why a broker call failed, and whether reconnecting can help.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The connection is gone: back off, reconnect, retry.
    #[error("connection to broker lost: {0}")]
    Connection(String),
    /// The broker refused the command; retrying will not help.
    #[error("broker error: {0}")]
    Command(String),
}

impl BrokerError {
    pub fn is_connection(&self) -> bool {
        matches!(self, BrokerError::Connection(_))
    }
}

/// The transport for `config.broker_url`, picked by URL scheme: kombu's
/// Redis transport (`redis://`, `rediss://`, `socket://`) or AMQP
/// (`amqp://`, `amqps://`, `pyamqp://`).
pub async fn connect(config: &crate::config::Config) -> anyhow::Result<Arc<dyn Broker>> {
    let url = &config.broker_url;
    if amqp::url::is_amqp(url) {
        let b = amqp::AmqpBroker::connect(
            url,
            &config.queues,
            &amqp::Topology::from_config(config),
            config.prefetch_count(),
        )
        .await?;
        return Ok(Arc::new(b));
    }
    let b = redis::RedisBroker::connect(url, &config.queues, config.transport.clone()).await?;
    Ok(Arc::new(b.with_bindings(&config.queue_decls)))
}

/// True when a broker URL names a transport this build has.
pub fn supported(url: &str) -> bool {
    amqp::url::is_amqp(url) || redis_url::is_redis(url)
}

/// A transport with kombu's consume/ack semantics.
#[async_trait]
pub trait Broker: Send + Sync {
    /// Declares the consumed queues (bindings) and runs start-up recovery.
    async fn start(&self) -> Result<(), BrokerError>;
    /// Up to `max` messages, waiting at most one poll interval when none is ready.
    async fn fetch(&self, max: usize) -> Result<Vec<Delivery>, BrokerError>;
    /// Done with the message: forget it.
    async fn ack(&self, tag: &str) -> Result<(), BrokerError>;
    /// Refuse the message; with `requeue` it goes to the back of its queue.
    async fn reject(&self, tag: &str, requeue: bool) -> Result<(), BrokerError>;
    /// Give an unstarted message back, to be delivered next (shutdown).
    async fn restore(&self, tag: &str) -> Result<(), BrokerError>;
    /// Periodic housekeeping (visibility-timeout restore).
    async fn maintain(&self) -> Result<(), BrokerError>;
    /// A delivery starts (`true`) or stops (`false`) being held outside the
    /// prefetch window (ETA, rate limit). A broker that enforces prefetch
    /// itself raises its count meanwhile, as Celery's QoS bump does.
    fn hold(&self, _held: bool) {}
    /// Publishes an envelope to a queue (anonymous exchange).
    async fn publish(&self, queue: &str, envelope: &Envelope) -> Result<(), BrokerError>;
    /// The broker URL with the password masked.
    fn url(&self) -> String;
    /// Messages waiting in `queue` (all priorities).
    async fn queue_len(&self, queue: &str) -> Result<u64, BrokerError>;
    /// Deletes the messages waiting in `queue`; returns how many (`--purge`).
    async fn purge(&self, queue: &str) -> Result<u64, BrokerError>;
    /// A round trip to the broker (`/healthz`).
    async fn ping(&self) -> Result<(), BrokerError>;

    // ---- broadcast and remote control (pidbox, events) ----

    /// Publishes to a fanout exchange (Redis: `PUBLISH` on kombu's topic).
    async fn publish_fanout(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: &Envelope,
    ) -> Result<(), BrokerError>;
    /// Publishes through a direct exchange to every queue bound with
    /// `routing_key`; unrouted messages are dropped, as kombu drops them.
    async fn publish_direct(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: &Envelope,
    ) -> Result<(), BrokerError>;
    /// Declares `queue` bound to the fanout `exchange` and streams what is
    /// broadcast there (raw envelopes) until the receiver is dropped,
    /// reconnecting by itself.
    async fn subscribe_fanout(
        &self,
        exchange: &str,
        queue: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>, BrokerError>;
    /// Binds a private reply queue for `routing_key` on the direct `exchange`,
    /// runs `send`, collects what arrives for `timeout`, then deletes the queue.
    async fn collect_replies(
        &self,
        exchange: &str,
        routing_key: &str,
        request: &Envelope,
        request_exchange: &str,
        timeout: std::time::Duration,
    ) -> Result<Vec<Envelope>, BrokerError>;

    // ---- consumed queues, changed live (add_consumer / cancel_consumer) ----

    /// The queues consumed now.
    fn queues(&self) -> Vec<String>;
    /// Starts consuming `queue` (declared first). False if already consumed.
    async fn add_queue(&self, queue: &str) -> Result<bool, BrokerError>;
    /// Stops consuming `queue`. False if it wasn't consumed.
    fn cancel_queue(&self, queue: &str) -> bool;
    /// Connection facts for `inspect stats` (`broker`), as kombu's `Connection.info()`.
    fn info(&self) -> serde_json::Value;
}
