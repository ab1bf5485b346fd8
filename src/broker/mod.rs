//! Message transports. A [`Broker`] consumes with a prefetch window, hands
//! out [`Delivery`]s that each settle themselves once, and publishes to an
//! exchange with a routing key; it knows routing, not task semantics.
//! What only some transports do is a capability of its own: [`Fanout`]
//! (broadcast and replies, for pidbox and events) and [`Maintain`]
//! (visibility-timeout restore, where the broker can't redeliver by itself).

pub mod amqp;
pub mod redis;
pub mod redis_endpoint;
pub mod redis_url;

use crate::protocol::{DecodeError, Envelope};
use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

/// One message taken from a queue, still unacknowledged.
#[derive(Debug)]
pub struct Delivery {
    /// The queue it was consumed from.
    pub queue: String,
    pub payload: Payload,
    /// How it is acked, rejected or given back: once.
    pub settle: Settlement,
}

/// A transport's way of settling one delivery (Redis: its `unacked` entry;
/// AMQP: its channel's delivery tag).
#[async_trait]
pub trait Settle: Send + Sync {
    /// Done with the message: forget it. The first poll issues the ack
    /// (the worker frees its prefetch window then); the rest waits for it.
    async fn ack(&self) -> Result<(), BrokerError>;
    /// Refuse the message; with `requeue` it goes to the back of its queue.
    async fn reject(&self, requeue: bool) -> Result<(), BrokerError>;
    /// Give an unstarted message back, to be delivered next (shutdown).
    async fn restore(&self) -> Result<(), BrokerError>;
    /// The handler parsed a message recorded under `recorded`, a tag the
    /// transport read without parsing, and found the envelope's own `tag`
    /// (empty: none) differs: move the record there and settle by it.
    async fn retag(&mut self, _recorded: &str, _tag: &str, _raw: &[u8], _env: &Envelope) {}
}

const OPEN: u8 = 0;
const SETTLING: u8 = 1;
const SETTLED: u8 = 2;

/// A delivery's settlement handle. The first ack, reject or restore that
/// succeeds settles it; any later one is refused with
/// [`BrokerError::Settled`]. One that failed (a lost connection) may be
/// tried again.
pub struct Settlement {
    /// The delivery tag, for logs.
    tag: String,
    by: Box<dyn Settle>,
    state: AtomicU8,
}

impl std::fmt::Debug for Settlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settlement")
            .field("tag", &self.tag)
            .finish()
    }
}

impl Settlement {
    pub fn new(tag: String, by: Box<dyn Settle>) -> Settlement {
        Settlement {
            tag,
            by,
            state: AtomicU8::new(OPEN),
        }
    }

    /// kombu's delivery tag; empty when the bytes were not even an envelope.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// See [`Settle::retag`].
    async fn opened(&mut self, raw: &[u8], env: &Envelope) {
        let own = env.delivery_tag().unwrap_or_default();
        if own != self.tag {
            self.by.retag(&self.tag, own, raw, env).await;
            self.tag = own.to_string();
        }
    }

    pub fn is_settled(&self) -> bool {
        self.state.load(Ordering::Acquire) == SETTLED
    }

    pub async fn ack(&self) -> Result<(), BrokerError> {
        self.once(self.by.ack()).await
    }

    pub async fn reject(&self, requeue: bool) -> Result<(), BrokerError> {
        self.once(self.by.reject(requeue)).await
    }

    pub async fn restore(&self) -> Result<(), BrokerError> {
        self.once(self.by.restore()).await
    }

    async fn once(
        &self,
        op: impl std::future::Future<Output = Result<(), BrokerError>>,
    ) -> Result<(), BrokerError> {
        if self
            .state
            .compare_exchange(OPEN, SETTLING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(BrokerError::Settled(self.tag.clone()));
        }
        let result = op.await;
        let next = if result.is_ok() { SETTLED } else { OPEN };
        self.state.store(next, Ordering::Release);
        result
    }
}

/// A delivery's message: parsed by the transport, or the JSON bytes it
/// popped, parsed by [`Delivery::open`] in the message's own handler. On
/// Redis the next fetch goes out only once the last one's deliveries are
/// handed over, so an envelope parsed there delays it; parsed in the
/// handler it overlaps that fetch (40k tasks, -c 2, on the 2-core bench
/// machine, two sets of interleaved runs: medians 34.4k -> 40.3k and 33.6k
/// -> 36.3k tasks/s).
#[derive(Debug)]
pub enum Payload {
    /// Parsed as it arrived (AMQP builds the envelope from frame properties;
    /// Redis parses what its fetch script could not read a tag from).
    Parsed(Result<Envelope, DecodeError>),
    /// kombu's stored JSON, as popped.
    Json(Vec<u8>),
}

impl Delivery {
    /// Parses the message if the transport left it as bytes, and lets the
    /// transport check what it recorded against the envelope's own tag.
    pub async fn open(self) -> (String, Result<Envelope, DecodeError>, Settlement) {
        let Delivery {
            queue,
            payload,
            mut settle,
        } = self;
        let envelope = match payload {
            Payload::Parsed(parsed) => parsed,
            Payload::Json(raw) => {
                let parsed = Envelope::parse(&raw);
                if let Ok(env) = &parsed {
                    settle.opened(&raw, env).await;
                }
                parsed
            }
        };
        (queue, envelope, settle)
    }

    /// The envelope, parsed afresh when the transport left it as bytes.
    pub fn envelope(&self) -> Result<Envelope, DecodeError> {
        match &self.payload {
            Payload::Parsed(parsed) => parsed.clone(),
            Payload::Json(raw) => Envelope::parse(raw),
        }
    }
}

/// Why a broker call failed, and whether reconnecting can help.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The connection is gone: back off, reconnect, retry.
    #[error("connection to broker lost: {0}")]
    Connection(String),
    /// The broker refused the command; retrying will not help.
    #[error("broker error: {0}")]
    Command(String),
    /// The delivery was already acked, rejected or restored (or is being).
    #[error("delivery {0:?} is already settled")]
    Settled(String),
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

/// What every transport does: consume with a prefetch window, hand out
/// deliveries that settle themselves, publish.
#[async_trait]
pub trait Broker: Send + Sync {
    /// Declares the consumed queues (bindings) and runs start-up recovery.
    async fn start(&self) -> Result<(), BrokerError>;
    /// Up to `max` messages, waiting at most one poll interval when none is ready.
    async fn fetch(&self, max: usize) -> Result<Vec<Delivery>, BrokerError>;
    /// A delivery starts (`true`) or stops (`false`) being held outside the
    /// prefetch window (ETA, rate limit). A broker that enforces prefetch
    /// itself raises its count meanwhile, as Celery's QoS bump does.
    fn hold(&self, _held: bool) {}
    /// Publishes an envelope to a queue (anonymous exchange).
    async fn publish(&self, queue: &str, envelope: &Envelope) -> Result<(), BrokerError>;
    /// Publishes through a direct `exchange` to every queue bound with
    /// `routing_key` (`""`: the queue of that name); unrouted messages are
    /// dropped, as kombu drops them.
    async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: &Envelope,
    ) -> Result<(), BrokerError>;
    /// The broker URL with the password masked.
    fn url(&self) -> String;
    /// Messages waiting in `queue` (all priorities).
    async fn queue_len(&self, queue: &str) -> Result<u64, BrokerError>;
    /// Deletes the messages waiting in `queue`; returns how many (`--purge`).
    async fn purge(&self, queue: &str) -> Result<u64, BrokerError>;
    /// A round trip to the broker (`/healthz`).
    async fn ping(&self) -> Result<(), BrokerError>;

    // ---- consumed queues, changed live (add_consumer / cancel_consumer) ----

    /// The queues consumed now.
    fn queues(&self) -> Vec<String>;
    /// Starts consuming `queue` (declared first). False if already consumed.
    async fn add_queue(&self, queue: &str) -> Result<bool, BrokerError>;
    /// Stops consuming `queue`. False if it wasn't consumed.
    fn cancel_queue(&self, queue: &str) -> bool;
    /// Connection facts for `inspect stats` (`broker`), as kombu's `Connection.info()`.
    fn info(&self) -> serde_json::Value;

    // ---- capabilities ----

    /// Broadcast and replies (remote control, events), if it has them.
    fn fanout(&self) -> Option<&dyn Fanout> {
        None
    }
    /// Periodic housekeeping, for a broker that needs it.
    fn maintenance(&self) -> Option<&dyn Maintain> {
        None
    }
}

/// The broker's [`Fanout`], or the error to report where it has none.
pub fn fanout_of(broker: &dyn Broker) -> Result<&dyn Fanout, BrokerError> {
    broker.fanout().ok_or_else(|| {
        BrokerError::Command(
            "this transport has no broadcast: remote control and events need one".into(),
        )
    })
}

/// Broadcast: what pidbox, events and mingle need.
#[async_trait]
pub trait Fanout: Send + Sync {
    /// Publishes to a fanout exchange (Redis: `PUBLISH` on kombu's topic).
    async fn publish_fanout(
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
}

/// Housekeeping a transport runs between fetches: kombu's Redis restores
/// messages whose visibility timeout passed, as nothing else would.
#[async_trait]
pub trait Maintain: Send + Sync {
    async fn maintain(&self) -> Result<(), BrokerError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts settlements; the first `fail` calls lose the connection.
    struct Counting {
        calls: Arc<AtomicUsize>,
        fail: usize,
    }

    #[async_trait]
    impl Settle for Counting {
        async fn ack(&self) -> Result<(), BrokerError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.fail {
                Err(BrokerError::Connection("gone".into()))
            } else {
                Ok(())
            }
        }
        async fn reject(&self, _: bool) -> Result<(), BrokerError> {
            self.ack().await
        }
        async fn restore(&self) -> Result<(), BrokerError> {
            self.ack().await
        }
    }

    fn settlement(fail: usize) -> (Settlement, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let by = Counting {
            calls: Arc::clone(&calls),
            fail,
        };
        (Settlement::new("t1".into(), Box::new(by)), calls)
    }

    #[tokio::test]
    async fn a_delivery_settles_once() {
        let (s, calls) = settlement(0);
        s.ack().await.unwrap();
        assert!(s.is_settled());
        assert!(matches!(s.reject(true).await, Err(BrokerError::Settled(_))));
        assert!(matches!(s.restore().await, Err(BrokerError::Settled(_))));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the transport was asked again"
        );
    }

    #[tokio::test]
    async fn a_failed_settlement_may_be_retried() {
        let (s, calls) = settlement(1);
        assert!(s.ack().await.unwrap_err().is_connection());
        assert!(!s.is_settled());
        s.ack().await.unwrap();
        assert!(s.is_settled());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
