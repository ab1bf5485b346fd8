//! The AMQP transport against a real RabbitMQ, each test on a vhost of its
//! own: Celery's topology, settle-once acks and rejects, priorities, the QoS
//! bump for held messages, reconnection, and the remote-control exchanges.

mod support;

use rust_celery_worker::broker::amqp::{AmqpBroker, Topology};
use rust_celery_worker::broker::{Broker, BrokerError, Delivery, Fanout};
use rust_celery_worker::config::QueueDecl;
use rust_celery_worker::protocol::{Envelope, TaskMessage};
use serde_json::{Map, json};
use std::time::Duration;
use support::rabbit::Vhost;

fn envelope(id: &str, priority: u8) -> Envelope {
    TaskMessage::new("tasks.add", id, vec![json!(1), json!(2)], Map::new())
        .to_envelope("celery", priority)
}

async fn consumer(v: &Vhost, queues: &[&str], decls: &[QueueDecl], prefetch: usize) -> AmqpBroker {
    let queues: Vec<String> = queues.iter().map(|q| q.to_string()).collect();
    let b = AmqpBroker::connect(&v.url(), &queues, &Topology::new(decls.to_vec()), prefetch)
        .await
        .unwrap();
    b.start().await.unwrap();
    b
}

/// `Queue('prio', Exchange('prio'), 'prio', queue_arguments={'x-max-priority': 10})`.
fn prio_queue() -> QueueDecl {
    QueueDecl {
        name: "prio".into(),
        exchange: "prio".into(),
        routing_key: "prio".into(),
        exchange_type: "direct".into(),
        arguments: json!({"x-max-priority": 10}).as_object().unwrap().clone(),
    }
}

fn id(d: &Delivery) -> String {
    d.envelope().unwrap().headers["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Fetches until `n` deliveries arrived (or 10 s passed).
async fn fetch_n(b: &AmqpBroker, n: usize) -> Vec<Delivery> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n && tokio::time::Instant::now() < deadline {
        match b.fetch(n - out.len()).await {
            Ok(batch) => out.extend(batch),
            Err(e) if e.is_connection() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{e}"),
        }
    }
    out
}

#[tokio::test]
async fn declares_celerys_topology() {
    let v = Vhost::new();
    let prio = prio_queue();
    let _b = consumer(&v, &["celery", "prio"], &[prio], 8).await;
    let mut queues = v.list(
        "list_queues",
        &["name", "durable", "auto_delete", "exclusive", "arguments"],
    );
    queues.sort();
    // As Celery 5.7 declared them (samples/amqp_broker_topology.json).
    assert_eq!(
        queues,
        [
            "celery\ttrue\tfalse\tfalse\t[]",
            "prio\ttrue\tfalse\tfalse\t[{\"x-max-priority\",10}]"
        ]
    );
    let exchanges = v.list(
        "list_exchanges",
        &["name", "type", "durable", "auto_delete"],
    );
    assert!(
        exchanges.contains(&"celery\tdirect\ttrue\tfalse".to_string()),
        "{exchanges:?}"
    );
    assert!(
        exchanges.contains(&"prio\tdirect\ttrue\tfalse".to_string()),
        "{exchanges:?}"
    );
    let bindings = v.list(
        "list_bindings",
        &["source_name", "destination_name", "routing_key"],
    );
    assert!(
        bindings.contains(&"celery\tcelery\tcelery".to_string()),
        "{bindings:?}"
    );
    assert!(
        bindings.contains(&"prio\tprio\tprio".to_string()),
        "{bindings:?}"
    );
}

#[tokio::test]
async fn deliveries_settle_once_and_rejects_requeue_or_drop() {
    let v = Vhost::new();
    let b = consumer(&v, &["celery"], &[], 8).await;
    for i in 0..3 {
        b.publish("celery", &envelope(&format!("t{i}"), 0))
            .await
            .unwrap();
    }
    let got = fetch_n(&b, 3).await;
    assert_eq!(got.iter().map(id).collect::<Vec<_>>(), ["t0", "t1", "t2"]);
    let env = got[0].envelope().unwrap();
    assert_eq!(env.delivery_info(), (String::new(), "celery".into()));
    assert!(!env.redelivered());
    got[0].settle.ack().await.unwrap();
    // A second settlement of the same delivery is refused before it reaches
    // RabbitMQ (a double ack would close the channel).
    assert!(matches!(
        got[0].settle.ack().await,
        Err(BrokerError::Settled(_))
    ));
    got[1].settle.reject(false).await.unwrap();
    got[2].settle.reject(true).await.unwrap();
    let again = fetch_n(&b, 1).await;
    assert_eq!(id(&again[0]), "t2");
    assert!(again[0].envelope().unwrap().redelivered());
    again[0].settle.ack().await.unwrap();
    // Nothing else is left: the dropped one is gone, the channel still works.
    assert!(b.fetch(1).await.unwrap().is_empty());
    assert_eq!(b.queue_len("celery").await.unwrap(), 0);
}

#[tokio::test]
async fn priority_queues_serve_the_highest_first() {
    let v = Vhost::new();
    let decl = prio_queue();
    // Publish everything before anyone consumes.
    let publisher = consumer(&v, &[], std::slice::from_ref(&decl), 8).await;
    for (i, p) in [1u8, 9, 5].into_iter().enumerate() {
        publisher
            .publish("prio", &envelope(&format!("p{p}-{i}"), p))
            .await
            .unwrap();
    }
    assert_eq!(publisher.queue_len("prio").await.unwrap(), 3);
    let b = consumer(&v, &["prio"], &[decl], 8).await;
    let got = fetch_n(&b, 3).await;
    assert_eq!(
        got.iter().map(id).collect::<Vec<_>>(),
        ["p9-1", "p5-2", "p1-0"]
    );
    assert_eq!(got[0].envelope().unwrap().priority(), 9);
}

#[tokio::test]
async fn held_deliveries_raise_the_prefetch_count() {
    let v = Vhost::new();
    let b = consumer(&v, &["celery"], &[], 1).await;
    for i in 0..3 {
        b.publish("celery", &envelope(&format!("h{i}"), 0))
            .await
            .unwrap();
    }
    let first = fetch_n(&b, 1).await;
    assert_eq!(first.len(), 1);
    // Window of 1, unacked 1: RabbitMQ sends nothing more.
    assert!(b.fetch(1).await.unwrap().is_empty());
    // The first is now held outside the window (an ETA): one more comes.
    b.hold(true);
    let second = fetch_n(&b, 1).await;
    assert_eq!(second.len(), 1, "QoS bump let no delivery through");
    assert!(b.fetch(1).await.unwrap().is_empty());
    // It runs and is acked; the bump ends with it.
    b.hold(false);
    first[0].settle.ack().await.unwrap();
    second[0].settle.ack().await.unwrap();
    let third = fetch_n(&b, 1).await;
    assert_eq!(id(&third[0]), "h2");
}

#[tokio::test]
async fn a_lost_connection_redelivers_what_was_unacked() {
    let v = Vhost::new();
    let b = consumer(&v, &["celery"], &[], 8).await;
    for i in 0..2 {
        b.publish("celery", &envelope(&format!("r{i}"), 0))
            .await
            .unwrap();
    }
    let got = fetch_n(&b, 2).await;
    got[0].settle.ack().await.unwrap();
    // Acks go out in the background: wait until RabbitMQ has the first.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while v.list("list_queues", &["messages_unacknowledged"]) != ["1"] {
        assert!(
            std::time::Instant::now() < deadline,
            "the ack never reached RabbitMQ"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    v.close_connections();
    // The old delivery can't be settled any more: that is not an error.
    tokio::time::sleep(Duration::from_millis(300)).await;
    got[1].settle.ack().await.unwrap();
    // Reconnected, the unacked one comes back, marked redelivered.
    let again = fetch_n(&b, 1).await;
    assert_eq!(again.len(), 1, "nothing redelivered after reconnecting");
    assert_eq!(id(&again[0]), "r1");
    assert!(again[0].envelope().unwrap().redelivered());
    again[0].settle.ack().await.unwrap();
    b.ping().await.unwrap();
    b.publish("celery", &envelope("after", 0)).await.unwrap();
    assert_eq!(id(&fetch_n(&b, 1).await[0]), "after");
}

#[tokio::test]
async fn pidbox_fanout_and_direct_replies() {
    let v = Vhost::new();
    let worker = consumer(&v, &["celery"], &[], 8).await;
    let client = consumer(&v, &[], &[], 8).await;
    let mut inbox = worker
        .subscribe_fanout("celery.pidbox", "w1@host.celery.pidbox")
        .await
        .unwrap();
    let queues = v.list(
        "list_queues",
        &["name", "exclusive", "auto_delete", "arguments"],
    );
    assert!(
        queues
            .iter()
            .any(|q| q.starts_with("w1@host.celery.pidbox\ttrue\ttrue")
                && q.contains("x-message-ttl")
                && q.contains("x-expires")),
        "{queues:?}"
    );
    let exchanges = v.list("list_exchanges", &["name", "type", "durable"]);
    assert!(
        exchanges.contains(&"celery.pidbox\tfanout\tfalse".to_string()),
        "{exchanges:?}"
    );

    // A broadcast with a reply queue: the worker answers on the direct exchange.
    let worker_side = async {
        let raw = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .unwrap()
            .unwrap();
        let req = Envelope::parse(&raw).unwrap();
        assert_eq!(req.headers["id"], "ping-1");
        worker
            .publish_to("reply.celery.pidbox", "oid-1", &envelope("pong", 0))
            .await
            .unwrap();
    };
    let request = envelope("ping-1", 0);
    let client_side = client.collect_replies(
        "reply.celery.pidbox",
        "oid-1",
        &request,
        "celery.pidbox",
        Duration::from_secs(2),
    );
    let ((), replies) = tokio::join!(worker_side, client_side);
    let replies = replies.unwrap();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].headers["id"], "pong");
    // The reply queue is deleted afterwards.
    let left = v.list("list_queues", &["name"]);
    assert!(!left.iter().any(|q| q.contains("reply")), "{left:?}");
}

#[tokio::test]
async fn queues_are_added_cancelled_and_purged_live() {
    let v = Vhost::new();
    let b = consumer(&v, &["celery"], &[], 8).await;
    assert!(b.add_queue("extra").await.unwrap());
    assert!(!b.add_queue("extra").await.unwrap());
    b.publish("extra", &envelope("x1", 0)).await.unwrap();
    let got = fetch_n(&b, 1).await;
    assert_eq!((id(&got[0]), got[0].queue.as_str()), ("x1".into(), "extra"));
    got[0].settle.ack().await.unwrap();
    assert!(b.cancel_queue("extra"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.publish("extra", &envelope("x2", 0)).await.unwrap();
    assert!(
        b.fetch(1).await.unwrap().is_empty(),
        "cancelled queue still consumed"
    );
    assert_eq!(b.queue_len("extra").await.unwrap(), 1);
    assert_eq!(b.purge("extra").await.unwrap(), 1);
    assert_eq!(b.queue_len("extra").await.unwrap(), 0);
    assert_eq!(b.queue_len("no-such-queue").await.unwrap(), 0);
    assert_eq!(b.queues(), ["celery"]);
}

/// Celery ≥ 5.5 with a quorum queue: per-consumer QoS, and kombu's native
/// delayed delivery declared, so a Python producer's countdown published to
/// `celery_delayed_27` reaches the queue after its delay.
#[tokio::test]
async fn quorum_queues_get_consumer_qos_and_native_delayed_delivery() {
    let v = Vhost::new();
    let qq = QueueDecl {
        name: "qq".into(),
        exchange: "tx".into(),
        routing_key: "tasks.qq".into(),
        exchange_type: "topic".into(),
        arguments: json!({"x-queue-type": "quorum"})
            .as_object()
            .unwrap()
            .clone(),
    };
    let topology = Topology::new(vec![qq]);
    assert_eq!(topology.quorum.as_deref(), Some("qq"));
    let b = AmqpBroker::connect(&v.url(), &["qq".to_string()], &topology, 4)
        .await
        .unwrap();
    b.start().await.unwrap();
    assert!(b.fetch(1).await.unwrap().is_empty());
    // QoS on the consumer (global QoS is refused by quorum queues).
    assert_eq!(
        v.list("list_consumers", &["queue_name", "prefetch_count"]),
        ["qq\t4"]
    );
    let queues = v.list("list_queues", &["name", "arguments"]);
    let delayed: Vec<&String> = queues
        .iter()
        .filter(|q| q.starts_with("celery_delayed_"))
        .collect();
    assert_eq!(delayed.len(), 28, "{queues:?}");
    assert!(
        delayed
            .iter()
            .all(|q| q.contains("{\"x-queue-type\",\"quorum\"}")),
        "{delayed:?}"
    );
    let bindings = v.list(
        "list_bindings",
        &["source_name", "destination_name", "routing_key"],
    );
    for wanted in [
        "celery_delayed_delivery\ttx\t#.tasks.qq",
        "tx\tqq\t#.tasks.qq",
        "celery_delayed_0\tcelery_delayed_delivery\t*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.0.#",
    ] {
        assert!(
            bindings.iter().any(|b| b == wanted),
            "{wanted} not in {bindings:?}"
        );
    }
    // kombu's calculate_routing_key(1, 'tasks.qq'): 28 bits, then the key.
    let bits: Vec<String> = format!("{:028b}", 1)
        .chars()
        .map(|c| c.to_string())
        .collect();
    let rk = format!("{}.tasks.qq", bits.join("."));
    let sent = std::time::Instant::now();
    b.publish_to("celery_delayed_27", &rk, &envelope("later", 0))
        .await
        .unwrap();
    let got = fetch_n(&b, 1).await;
    assert_eq!(id(&got[0]), "later");
    assert!(
        sent.elapsed() >= Duration::from_millis(900),
        "delivered after {:?}, before its 1 s delay",
        sent.elapsed()
    );
    got[0].settle.ack().await.unwrap();
}
