//! RabbitMQ (AMQP 0-9-1) through lapin, with the topology and semantics of
//! kombu's `pyamqp` transport (SPEC §5).
//!
//! One connection (a [`Session`]) carries a consuming channel with the
//! worker's QoS, a publishing channel in confirm mode, and short-lived
//! channels for passive declares and remote control. Deliveries of every
//! consumed queue meet in one buffer that [`Broker::fetch`] drains; each
//! keeps lapin's `Acker`, which settles it once. When the connection drops
//! the session is rebuilt on the next call; what was unacked comes back from
//! RabbitMQ (redelivered), and settling a delivery of the old connection is
//! a logged no-op instead of an error.

mod delayed;
pub mod url;
pub mod wire;

use super::{Broker, BrokerError, Delivery, Fanout, Settle, Settlement};
use crate::config::QueueDecl;
use crate::protocol::Envelope;
use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeBindOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
use lapin::{Acker, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Mutex as AsyncMutex, Notify, mpsc};

/// How long an idle fetch waits for a delivery before returning empty.
const POLL: Duration = Duration::from_secs(1);
/// Celery's `broker_heartbeat` default (seconds).
const HEARTBEAT: u16 = 120;
/// kombu's pidbox queue arguments: messages live 300 s, the queue 10 s
/// after its consumer is gone.
const PIDBOX_TTL_MS: i32 = 300_000;
const PIDBOX_EXPIRES_MS: i32 = 10_000;

fn conn_err(e: lapin::Error) -> BrokerError {
    if e.is_amqp_error() {
        BrokerError::Command(e.to_string())
    } else {
        BrokerError::Connection(e.to_string())
    }
}

/// What the consumers hand to `fetch`.
enum Incoming {
    Message {
        generation: u64,
        queue: String,
        delivery: Box<lapin::message::Delivery>,
    },
    /// A consumer's stream failed: its connection is gone.
    Lost { generation: u64, reason: String },
}

/// One live connection and its channels.
struct Session {
    generation: u64,
    conn: Connection,
    consume: Channel,
    publish: Channel,
    /// Consumer tag per consumed queue.
    consumers: Mutex<HashMap<String, String>>,
    /// Queues and exchanges declared on this connection.
    declared: Mutex<HashSet<String>>,
}

impl Session {
    fn alive(&self) -> bool {
        self.conn.status().connected()
            && self.consume.status().connected()
            && self.publish.status().connected()
    }

    fn is_declared(&self, what: &str) -> bool {
        self.declared.lock().expect("declared lock").contains(what)
    }

    fn mark_declared(&self, what: String) {
        self.declared.lock().expect("declared lock").insert(what);
    }
}

/// How an exchange is declared, by kombu's defaults for its role.
fn exchange_kind(name: &str) -> (ExchangeKind, bool) {
    if name.contains("celery_delayed_") {
        // kombu's native delayed delivery levels and delivery exchange.
        (ExchangeKind::Topic, true)
    } else if name == crate::events::dispatcher::EXCHANGE {
        // `Exchange('celeryev', type='topic')`: durable.
        (ExchangeKind::Topic, true)
    } else if name.starts_with("reply.") && name.ends_with(".pidbox") {
        (ExchangeKind::Direct, false)
    } else if name.ends_with(".pidbox") {
        (ExchangeKind::Fanout, false)
    } else {
        (ExchangeKind::Direct, true)
    }
}

/// What the worker declares on RabbitMQ.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Celery's `app.amqp.queues`: every queue the app knows.
    pub queues: Vec<QueueDecl>,
    /// `task_create_missing_queue_type`, for queues named later (a publish
    /// to a new queue, `add_consumer`).
    pub missing_type: String,
    /// The first quorum queue, when Celery's `detect_quorum_queues` finds
    /// one: QoS per consumer, and kombu's native delayed delivery set up.
    pub quorum: Option<String>,
    /// `broker_native_delayed_delivery_queue_type`.
    pub delayed_delivery_type: String,
}

impl Topology {
    /// `queues` with Celery's defaults for the rest.
    pub fn new(queues: Vec<QueueDecl>) -> Topology {
        Topology::detect(queues, &crate::config::QueueTypes::default())
    }

    pub fn from_config(config: &crate::config::Config) -> Topology {
        Topology::detect(config.known_queues(), &config.queue_types)
    }

    fn detect(queues: Vec<QueueDecl>, types: &crate::config::QueueTypes) -> Topology {
        let quorum = types
            .detect_quorum
            .then(|| {
                queues
                    .iter()
                    .find(|d| d.is_quorum())
                    .map(|d| d.name.clone())
            })
            .flatten();
        Topology {
            queues,
            missing_type: types.missing.clone(),
            quorum,
            delayed_delivery_type: types.delayed_delivery.clone(),
        }
    }

    fn decl(&self, queue: &str) -> QueueDecl {
        self.queues
            .iter()
            .find(|d| d.name == queue)
            .cloned()
            .unwrap_or_else(|| QueueDecl::missing(queue, &self.missing_type))
    }
}

/// A queue's exchange as its declaration names it (type, durable).
fn kind_of(d: &QueueDecl) -> (ExchangeKind, bool) {
    let kind = match d.exchange_type.as_str() {
        "topic" => ExchangeKind::Topic,
        "fanout" => ExchangeKind::Fanout,
        "headers" => ExchangeKind::Headers,
        _ => ExchangeKind::Direct,
    };
    (kind, true)
}

struct Inner {
    uri: AMQPUri,
    masked: String,
    topology: Topology,
    consumed: Mutex<Vec<String>>,
    /// The worker's prefetch window (0 = unlimited).
    prefetch: u16,
    /// Channel-wide QoS (RabbitMQ's `global`), off for quorum queues.
    global_qos: bool,
    /// Deliveries held outside the window (ETA, rate limit): Celery's QoS bump.
    bumped: AtomicI64,
    qos_changed: Arc<Notify>,
    session: AsyncMutex<Option<Arc<Session>>>,
    generation: AtomicU64,
    tx: mpsc::UnboundedSender<Incoming>,
    rx: AsyncMutex<mpsc::UnboundedReceiver<Incoming>>,
    /// Consumers start with the first fetch, not at connect: `--purge`
    /// (between the two) must find the messages still in their queues.
    consuming: std::sync::atomic::AtomicBool,
}

/// The AMQP transport.
pub struct AmqpBroker {
    inner: Arc<Inner>,
}

impl AmqpBroker {
    /// Connects, so a bad URL or refused login fails at start as in Celery.
    pub async fn connect(
        url: &str,
        queues: &[String],
        topology: &Topology,
        prefetch: usize,
    ) -> anyhow::Result<AmqpBroker> {
        let uri = url::parse(url, HEARTBEAT)?;
        if let Some(q) = &topology.quorum {
            tracing::info!("Global QoS is disabled. Prefetch count is now static.");
            // Celery's ETA_TASKS_NO_GLOBAL_QOS_WARNING.
            tracing::warn!(
                "Detected quorum queue {q:?}, disabling global QoS. With global QoS disabled, \
                 ETA tasks may not function as expected. Instead of adjusting the prefetch \
                 count dynamically, ETA tasks will occupy the prefetch buffer, potentially \
                 blocking other tasks from being consumed."
            );
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            uri,
            masked: crate::config::mask_url(url),
            topology: topology.clone(),
            consumed: Mutex::new(queues.to_vec()),
            prefetch: prefetch.min(usize::from(u16::MAX)) as u16,
            global_qos: topology.quorum.is_none(),
            bumped: AtomicI64::new(0),
            qos_changed: Arc::new(Notify::new()),
            session: AsyncMutex::new(None),
            generation: AtomicU64::new(0),
            tx,
            rx: AsyncMutex::new(rx),
            consuming: std::sync::atomic::AtomicBool::new(false),
        });
        inner.session().await.map_err(anyhow::Error::new)?;
        tokio::spawn(apply_qos(
            Arc::downgrade(&inner),
            Arc::clone(&inner.qos_changed),
        ));
        Ok(AmqpBroker { inner })
    }
}

impl Inner {
    /// The live session, connecting (and consuming) first when there is none.
    async fn session(self: &Arc<Self>) -> Result<Arc<Session>, BrokerError> {
        let mut current = self.session.lock().await;
        if let Some(s) = current.as_ref()
            && s.alive()
        {
            return Ok(Arc::clone(s));
        }
        if current.take().is_some() {
            tracing::warn!(
                "Connection to broker lost: deliveries not yet acknowledged will be redelivered by RabbitMQ"
            );
        }
        let session = Arc::new(self.open().await?);
        *current = Some(Arc::clone(&session));
        Ok(session)
    }

    async fn open(self: &Arc<Self>) -> Result<Session, BrokerError> {
        let props =
            ConnectionProperties::default().with_connection_name("rust-celery-worker".into());
        let conn = Connection::connect_uri(self.uri.clone(), props)
            .await
            .map_err(|e| BrokerError::Connection(e.to_string()))?;
        let consume = conn.create_channel().await.map_err(conn_err)?;
        let publish = conn.create_channel().await.map_err(conn_err)?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(conn_err)?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let session = Session {
            generation,
            conn,
            consume,
            publish,
            consumers: Mutex::new(HashMap::new()),
            declared: Mutex::new(HashSet::new()),
        };
        self.set_qos(&session).await?;
        if self.topology.quorum.is_some() {
            self.declare_delayed_delivery(&session).await?;
        }
        let queues = self.consumed.lock().expect("queues lock").clone();
        let consuming = self.consuming.load(Ordering::Relaxed);
        for q in &queues {
            self.declare_queue(&session, q).await?;
            if consuming {
                self.consume(&session, q).await?;
            }
        }
        Ok(session)
    }

    /// kombu's native delayed delivery, as Celery's `DelayedDelivery`
    /// bootstep sets it up when it finds a quorum queue: 28 levels of topic
    /// exchange + TTL queue (level n holds 2ⁿ s and dead-letters to n-1), the
    /// `celery_delayed_delivery` exchange after level 0, and every queue of
    /// a non-direct exchange bound to it with `#.<routing key>`. Python
    /// producers then publish countdowns to `celery_delayed_27`.
    async fn declare_delayed_delivery(&self, session: &Session) -> Result<(), BrokerError> {
        let ch = &session.consume;
        let queue_type = self.topology.delayed_delivery_type.as_str();
        let mut routing_key = String::from("1.#");
        for level in (0..=delayed::MAX_LEVEL).rev() {
            let name = delayed::level_name(level);
            self.declare_exchange(session, &name).await?;
            let args = wire::json_to_table(&delayed::queue_arguments(level, queue_type));
            ch.queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await
            .map_err(conn_err)?;
            ch.queue_bind(
                name.as_str().into(),
                name.as_str().into(),
                routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(conn_err)?;
            routing_key = format!("*.{routing_key}");
        }
        let mut routing_key = String::from("0.#");
        for level in (1..=delayed::MAX_LEVEL).rev() {
            ch.exchange_bind(
                delayed::level_name(level - 1).as_str().into(),
                delayed::level_name(level).as_str().into(),
                routing_key.as_str().into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(conn_err)?;
            routing_key = format!("*.{routing_key}");
        }
        self.declare_exchange(session, delayed::DELIVERY_EXCHANGE)
            .await?;
        ch.exchange_bind(
            delayed::DELIVERY_EXCHANGE.into(),
            delayed::level_name(0).as_str().into(),
            routing_key.as_str().into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(conn_err)?;
        for d in &self.topology.queues {
            if d.exchange_type == "direct" || d.exchange.is_empty() {
                tracing::warn!(
                    "Exchange {} is a direct exchange and native delayed delivery do not \
                     support direct exchanges.\nETA tasks published to this exchange will \
                     block the worker until the ETA arrives.",
                    d.exchange
                );
                continue;
            }
            self.declare_queue(session, &d.name).await?;
            let rk = if d.routing_key.starts_with('#') {
                d.routing_key.clone()
            } else {
                format!("#.{}", d.routing_key)
            };
            ch.exchange_bind(
                d.exchange.as_str().into(),
                delayed::DELIVERY_EXCHANGE.into(),
                rk.as_str().into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(conn_err)?;
            ch.queue_bind(
                d.name.as_str().into(),
                d.exchange.as_str().into(),
                rk.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(conn_err)?;
        }
        Ok(())
    }

    fn qos_count(&self) -> u16 {
        if self.prefetch == 0 {
            return 0;
        }
        let bumped = self.bumped.load(Ordering::Relaxed).max(0);
        (i64::from(self.prefetch) + bumped).min(i64::from(u16::MAX)) as u16
    }

    async fn set_qos(&self, session: &Session) -> Result<(), BrokerError> {
        session
            .consume
            .basic_qos(
                self.qos_count(),
                BasicQosOptions {
                    global: self.global_qos,
                },
            )
            .await
            .map_err(conn_err)
    }

    /// Celery's topology for a task queue: its exchange (direct, durable),
    /// the queue (durable, with its `queue_arguments`), the binding.
    async fn declare_queue(&self, session: &Session, queue: &str) -> Result<(), BrokerError> {
        if session.is_declared(queue) {
            return Ok(());
        }
        let d = self.topology.decl(queue);
        let (exchange, routing_key, args) = (
            d.exchange.clone(),
            d.routing_key.clone(),
            wire::json_to_table(&d.arguments),
        );
        let ch = &session.consume;
        if !exchange.is_empty() {
            self.declare_exchange_as(session, &exchange, kind_of(&d))
                .await?;
        }
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .map_err(conn_err)?;
        if !exchange.is_empty() {
            ch.queue_bind(
                queue.into(),
                exchange.as_str().into(),
                routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(conn_err)?;
        }
        session.mark_declared(queue.to_string());
        Ok(())
    }

    async fn declare_exchange(&self, session: &Session, exchange: &str) -> Result<(), BrokerError> {
        let decl = self.topology.queues.iter().find(|d| d.exchange == exchange);
        let kind = match decl {
            Some(d) => kind_of(d),
            None => exchange_kind(exchange),
        };
        self.declare_exchange_as(session, exchange, kind).await
    }

    async fn declare_exchange_as(
        &self,
        session: &Session,
        exchange: &str,
        (kind, durable): (ExchangeKind, bool),
    ) -> Result<(), BrokerError> {
        let key = format!("exchange:{exchange}");
        // The default exchange always exists and can't be declared.
        if exchange.is_empty() || session.is_declared(&key) {
            return Ok(());
        }
        session
            .consume
            .exchange_declare(
                exchange.into(),
                kind,
                ExchangeDeclareOptions {
                    durable,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(conn_err)?;
        session.mark_declared(key);
        Ok(())
    }

    /// Starts a consumer on `queue` whose deliveries go to the shared buffer.
    async fn consume(&self, session: &Session, queue: &str) -> Result<(), BrokerError> {
        let tag = format!("rcw-{}-{}", session.generation, queue);
        let consumer = session
            .consume
            .basic_consume(
                queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(conn_err)?;
        session
            .consumers
            .lock()
            .expect("consumers lock")
            .insert(queue.to_string(), tag);
        let tx = self.tx.clone();
        let generation = session.generation;
        let queue = queue.to_string();
        tokio::spawn(async move {
            let mut consumer = consumer;
            while let Some(item) = consumer.next().await {
                let sent = match item {
                    Ok(delivery) => tx.send(Incoming::Message {
                        generation,
                        queue: queue.clone(),
                        delivery: Box::new(delivery),
                    }),
                    Err(e) => {
                        let _ = tx.send(Incoming::Lost {
                            generation,
                            reason: e.to_string(),
                        });
                        return;
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
        });
        Ok(())
    }

    /// Drops the session if it is `generation` (a newer one stays).
    async fn forget(&self, generation: u64) {
        let mut current = self.session.lock().await;
        if current.as_ref().is_some_and(|s| s.generation == generation) {
            *current = None;
        }
    }

    fn delivery(
        &self,
        generation: u64,
        queue: String,
        mut d: lapin::message::Delivery,
    ) -> Delivery {
        let data = std::mem::take(&mut d.data);
        let envelope = envelope_of(&d, data);
        // Connection generation and channel tag: unique for the logs.
        let tag = format!("{generation}.{}", d.delivery_tag);
        let settle = AmqpSettle {
            acker: d.acker,
            tag: tag.clone(),
        };
        Delivery {
            queue,
            payload: super::Payload::Parsed(Ok(envelope)),
            settle: Settlement::new(tag, Box::new(settle)),
        }
    }

    /// Publishes to `exchange` (declared first, as kombu's `maybe_declare`)
    /// and waits for RabbitMQ's confirm.
    async fn publish_to(
        &self,
        session: &Session,
        exchange: &str,
        routing_key: &str,
        envelope: &Envelope,
    ) -> Result<(), BrokerError> {
        self.declare_exchange(session, exchange).await?;
        let props = wire::properties(envelope, chrono::Utc::now());
        let confirm = session
            .publish
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &envelope.body,
                props,
            )
            .await
            .map_err(conn_err)?;
        match confirm.await.map_err(conn_err)? {
            Confirmation::Nack(_) => Err(BrokerError::Command(format!(
                "RabbitMQ refused the message for {exchange:?}/{routing_key:?} (nack)"
            ))),
            Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
        }
    }

    /// A channel of its own, for calls that may close it (passive declares)
    /// or consume apart from the tasks (remote control).
    async fn side_channel(self: &Arc<Self>) -> Result<(Arc<Session>, Channel), BrokerError> {
        let session = self.session().await?;
        let ch = session.conn.create_channel().await.map_err(conn_err)?;
        Ok((session, ch))
    }
}

/// Applies the QoS bump when it changes (Celery's `qos.update()`), while
/// the broker lives.
async fn apply_qos(inner: std::sync::Weak<Inner>, changed: Arc<Notify>) {
    loop {
        changed.notified().await;
        // Many holds arrive together (a burst of ETA tasks): apply once.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let session = strong.session.lock().await.clone();
        if let Some(s) = session
            && s.alive()
            && let Err(e) = strong.set_qos(&s).await
        {
            tracing::warn!("could not update the prefetch count: {e}");
        }
    }
}

/// Declares an exclusive, self-expiring queue bound to `exchange` (kombu's
/// pidbox and reply queues) on `ch`.
async fn bind_private_queue(
    ch: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> Result<(), BrokerError> {
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(PIDBOX_TTL_MS));
    args.insert("x-expires".into(), AMQPValue::LongInt(PIDBOX_EXPIRES_MS));
    let (kind, durable) = exchange_kind(exchange);
    ch.exchange_declare(
        exchange.into(),
        kind,
        ExchangeDeclareOptions {
            durable,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(conn_err)?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .map_err(conn_err)?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        routing_key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(conn_err)
}

fn lost_delivery(tag: &str) {
    tracing::warn!("delivery {tag} belongs to a lost connection: RabbitMQ redelivers it");
}

fn no_ack() -> BasicConsumeOptions {
    BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    }
}

/// The envelope of a delivery whose body is `data`.
fn envelope_of(d: &lapin::message::Delivery, data: Vec<u8>) -> Envelope {
    let arrival = wire::Arrival {
        exchange: d.exchange.as_str(),
        routing_key: d.routing_key.as_str(),
        redelivered: d.redelivered,
    };
    wire::envelope(&d.properties, data, &arrival)
}

/// A no-ack consumer on the private queue `queue` bound to `exchange`, on a
/// channel of its own (the pidbox).
async fn subscribe_once(
    inner: &Arc<Inner>,
    exchange: &str,
    queue: &str,
) -> Result<(Channel, lapin::Consumer), BrokerError> {
    let (_, ch) = inner.side_channel().await?;
    bind_private_queue(&ch, queue, exchange, "").await?;
    let consumer = ch
        .basic_consume(queue.into(), "".into(), no_ack(), FieldTable::default())
        .await
        .map_err(conn_err)?;
    Ok((ch, consumer))
}

/// Settles one delivery on the channel it came from, through lapin's
/// `Acker`. One whose connection is gone can't be settled any more: RabbitMQ
/// redelivers it, so that is logged, not an error.
struct AmqpSettle {
    acker: Acker,
    tag: String,
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(&self) -> Result<(), BrokerError> {
        // basic.ack has no reply: waiting for lapin to hand the frame to its
        // I/O loop only held up the task's slot (an early ack is awaited
        // before the body runs), so the ack goes on without us.
        let (acker, tag) = (self.acker.clone(), self.tag.clone());
        tokio::spawn(async move {
            if !matches!(acker.ack(BasicAckOptions::default()).await, Ok(true)) {
                lost_delivery(&tag);
            }
        });
        Ok(())
    }

    async fn reject(&self, requeue: bool) -> Result<(), BrokerError> {
        let done = self.acker.reject(BasicRejectOptions { requeue }).await;
        if !matches!(done, Ok(true)) {
            lost_delivery(&self.tag);
        }
        Ok(())
    }

    async fn restore(&self) -> Result<(), BrokerError> {
        self.reject(true).await
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    async fn start(&self) -> Result<(), BrokerError> {
        self.inner.session().await.map(|_| ())
    }

    async fn fetch(&self, max: usize) -> Result<Vec<Delivery>, BrokerError> {
        let inner = &self.inner;
        let session = inner.session().await?;
        if !inner.consuming.swap(true, Ordering::Relaxed) {
            let queues = inner.consumed.lock().expect("queues lock").clone();
            for q in &queues {
                inner.consume(&session, q).await?;
            }
        }
        let mut rx = inner.rx.lock().await;
        let mut out = Vec::new();
        let mut next = match tokio::time::timeout(POLL, rx.recv()).await {
            Ok(Some(item)) => Some(item),
            Ok(None) | Err(_) => None,
        };
        while let Some(item) = next.take() {
            match item {
                Incoming::Message {
                    generation,
                    queue,
                    delivery,
                } => {
                    if generation != session.generation {
                        // Its channel is gone: RabbitMQ has requeued it.
                        continue;
                    }
                    let consumed = inner.consumed.lock().expect("queues lock").contains(&queue);
                    if !consumed {
                        // Arrived while its consumer was being cancelled.
                        let _ = delivery
                            .acker
                            .reject(BasicRejectOptions { requeue: true })
                            .await;
                        continue;
                    }
                    out.push(inner.delivery(generation, queue, *delivery));
                }
                Incoming::Lost { generation, reason } => {
                    if generation == session.generation {
                        drop(rx);
                        inner.forget(generation).await;
                        return if out.is_empty() {
                            Err(BrokerError::Connection(reason))
                        } else {
                            Ok(out)
                        };
                    }
                }
            }
            if out.len() < max {
                next = rx.try_recv().ok();
            }
        }
        if out.is_empty() && !session.alive() {
            drop(rx);
            inner.forget(session.generation).await;
            return Err(BrokerError::Connection(
                "connection to RabbitMQ closed".into(),
            ));
        }
        Ok(out)
    }

    fn hold(&self, held: bool) {
        if !self.inner.global_qos || self.inner.prefetch == 0 {
            return;
        }
        let delta = if held { 1 } else { -1 };
        self.inner.bumped.fetch_add(delta, Ordering::Relaxed);
        self.inner.qos_changed.notify_one();
    }

    async fn publish(&self, queue: &str, envelope: &Envelope) -> Result<(), BrokerError> {
        let session = self.inner.session().await?;
        self.inner.declare_queue(&session, queue).await?;
        // Celery publishes through the default exchange when the queue's
        // exchange is direct (SPEC §5.2).
        self.inner.publish_to(&session, "", queue, envelope).await
    }

    fn url(&self) -> String {
        self.inner.masked.clone()
    }

    async fn queue_len(&self, queue: &str) -> Result<u64, BrokerError> {
        let (_, ch) = self.inner.side_channel().await?;
        let declared = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        let n = match declared {
            Ok(q) => u64::from(q.message_count()),
            // 404: no such queue, so nothing waits in it.
            Err(e) if e.is_amqp_error() => 0,
            Err(e) => return Err(conn_err(e)),
        };
        let _ = ch.close(200, "".into()).await;
        Ok(n)
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let session = self.inner.session().await?;
        self.inner.declare_queue(&session, queue).await?;
        let n = session
            .consume
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
            .map_err(conn_err)?;
        Ok(u64::from(n))
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        let session = self.inner.session().await?;
        if session.alive() {
            Ok(())
        } else {
            Err(BrokerError::Connection(
                "connection to RabbitMQ closed".into(),
            ))
        }
    }

    async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: &Envelope,
    ) -> Result<(), BrokerError> {
        let session = self.inner.session().await?;
        self.inner
            .publish_to(&session, exchange, routing_key, envelope)
            .await
    }

    fn queues(&self) -> Vec<String> {
        self.inner.consumed.lock().expect("queues lock").clone()
    }

    async fn add_queue(&self, queue: &str) -> Result<bool, BrokerError> {
        if self.queues().iter().any(|q| q == queue) {
            return Ok(false);
        }
        let session = self.inner.session().await?;
        self.inner.declare_queue(&session, queue).await?;
        self.inner
            .consumed
            .lock()
            .expect("queues lock")
            .push(queue.to_string());
        if self.inner.consuming.load(Ordering::Relaxed) {
            self.inner.consume(&session, queue).await?;
        }
        Ok(true)
    }

    fn cancel_queue(&self, queue: &str) -> bool {
        let mut consumed = self.inner.consumed.lock().expect("queues lock");
        let before = consumed.len();
        consumed.retain(|q| q != queue);
        let removed = consumed.len() != before;
        drop(consumed);
        if removed {
            let inner = Arc::clone(&self.inner);
            let queue = queue.to_string();
            tokio::spawn(async move {
                let session = inner.session.lock().await.clone();
                let Some(s) = session else { return };
                let tag = s.consumers.lock().expect("consumers lock").remove(&queue);
                if let Some(tag) = tag
                    && let Err(e) = s
                        .consume
                        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                        .await
                {
                    tracing::warn!("cancel_consumer {queue}: {e}");
                }
            });
        }
        removed
    }

    fn fanout(&self) -> Option<&dyn Fanout> {
        Some(self)
    }

    fn info(&self) -> Value {
        let a = &self.inner.uri.authority;
        json!({
            "hostname": a.host,
            "userid": a.userinfo.username,
            "virtual_host": self.inner.uri.vhost,
            "port": a.port,
            "insist": false,
            "ssl": matches!(self.inner.uri.scheme, lapin::uri::AMQPScheme::AMQPS),
            "transport": "amqp",
            "connect_timeout": 4,
            "transport_options": {},
            "login_method": "PLAIN",
            "uri_prefix": null,
            "heartbeat": f64::from(HEARTBEAT),
            "failover_strategy": "round-robin",
            "alternates": [],
        })
    }
}

#[async_trait]
impl Fanout for AmqpBroker {
    async fn publish_fanout(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: &Envelope,
    ) -> Result<(), BrokerError> {
        let session = self.inner.session().await?;
        self.inner
            .publish_to(&session, exchange, routing_key, envelope)
            .await
    }

    async fn subscribe_fanout(
        &self,
        exchange: &str,
        queue: &str,
    ) -> Result<mpsc::Receiver<Vec<u8>>, BrokerError> {
        let (tx, rx) = mpsc::channel(1024);
        // The first subscription happens now, so a refusal is seen at start.
        let first = subscribe_once(&self.inner, exchange, queue).await?;
        let inner = Arc::clone(&self.inner);
        let (exchange, queue) = (exchange.to_string(), queue.to_string());
        tokio::spawn(async move {
            let mut consumer = Some(first);
            let mut failures = 0u32;
            loop {
                if let Some((_ch, mut stream)) = consumer.take() {
                    failures = 0;
                    while let Some(Ok(d)) = stream.next().await {
                        let raw = envelope_of(&d, d.data.clone()).to_json().into_bytes();
                        if tx.send(raw).await.is_err() {
                            return;
                        }
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(crate::worker::backoff(failures)).await;
                failures += 1;
                match subscribe_once(&inner, &exchange, &queue).await {
                    Ok(c) => consumer = Some(c),
                    Err(e) => tracing::warn!("pidbox: cannot consume {queue}: {e}"),
                }
            }
        });
        Ok(rx)
    }

    async fn collect_replies(
        &self,
        exchange: &str,
        routing_key: &str,
        request: &Envelope,
        request_exchange: &str,
        timeout: Duration,
    ) -> Result<Vec<Envelope>, BrokerError> {
        let queue = format!("{routing_key}.{exchange}");
        let (_, ch) = self.inner.side_channel().await?;
        bind_private_queue(&ch, &queue, exchange, routing_key).await?;
        let mut consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                no_ack(),
                FieldTable::default(),
            )
            .await
            .map_err(conn_err)?;
        let sent = self.publish_fanout(request_exchange, "", request).await;
        let mut replies = Vec::new();
        if sent.is_ok() {
            let deadline = tokio::time::Instant::now() + timeout;
            while let Ok(Some(Ok(d))) = tokio::time::timeout_at(deadline, consumer.next()).await {
                replies.push(envelope_of(&d, d.data.clone()));
            }
        }
        let _ = ch
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = ch.close(200, "".into()).await;
        sent?;
        Ok(replies)
    }
}
