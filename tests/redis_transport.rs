//! The Redis transport and result backend against a real, private
//! `redis-server`: kombu's key layout, pop order, unacked bookkeeping,
//! restores, key prefixes, and Celery's result writes.

mod support;

use redis::Commands;
use rust_celery_worker::backend::{ResultBackend, redis::RedisBackend};
use rust_celery_worker::broker::{Broker, Fanout, redis::RedisBroker};
use rust_celery_worker::config::TransportOptions;
use rust_celery_worker::protocol::result_meta::ResultMeta;
use rust_celery_worker::protocol::{Envelope, TaskMessage};
use serde_json::{Map, Value, json};
use std::time::Duration;
use support::RedisServer;

fn envelope(id: &str, queue: &str, priority: u8) -> Envelope {
    TaskMessage::new("tasks.add", id, vec![json!(1), json!(2)], Map::new())
        .to_envelope(queue, priority)
}

async fn broker(server: &RedisServer, queues: &[&str], opts: TransportOptions) -> RedisBroker {
    let queues: Vec<String> = queues.iter().map(|q| q.to_string()).collect();
    let b = RedisBroker::connect(&server.url(), &queues, opts)
        .await
        .unwrap();
    b.start().await.unwrap();
    b
}

fn task_id(d: &rust_celery_worker::broker::Delivery) -> String {
    d.envelope().unwrap().headers["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Drains with single fetches (the BRPOP path).
async fn drain_one_by_one(b: &RedisBroker, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = b.fetch(1).await.unwrap();
        assert_eq!(d.len(), 1);
        out.push(task_id(&d[0]));
    }
    out
}

#[tokio::test]
async fn priorities_pop_lowest_bucket_first_across_queues() {
    let server = RedisServer::start();
    let b = broker(&server, &["a", "b"], TransportOptions::default()).await;
    // kombu's buckets: 0-2 → "", 3-5 → 3, 6-8 → 6, 9 → 9; lower first.
    for (id, q, p) in [
        ("a9", "a", 9),
        ("a5", "a", 5),
        ("b0", "b", 0),
        ("a3", "a", 3),
        ("b7", "b", 7),
    ] {
        b.publish(q, &envelope(id, q, p)).await.unwrap();
    }
    let mut conn = server.conn();
    assert_eq!(
        conn.llen::<_, i64>("a\x06\x163").unwrap(),
        2,
        "priorities 3 and 5 share bucket 3"
    );
    assert_eq!(conn.llen::<_, i64>("a\x06\x169").unwrap(), 1);
    assert_eq!(conn.llen::<_, i64>("b").unwrap(), 1);
    assert_eq!(
        drain_one_by_one(&b, 5).await,
        ["b0", "a5", "a3", "b7", "a9"]
    );
}

#[tokio::test]
async fn batch_fetch_keeps_the_same_order_and_records_every_message() {
    let server = RedisServer::start();
    let b = broker(&server, &["celery"], TransportOptions::default()).await;
    for (i, p) in [9u8, 0, 6, 3, 0].iter().enumerate() {
        b.publish("celery", &envelope(&format!("m{i}-p{p}"), "celery", *p))
            .await
            .unwrap();
    }
    let batch = b.fetch(10).await.unwrap();
    let ids: Vec<String> = batch.iter().map(task_id).collect();
    assert_eq!(ids, ["m1-p0", "m4-p0", "m3-p3", "m2-p6", "m0-p9"]);
    let mut conn = server.conn();
    assert_eq!(conn.hlen::<_, i64>("unacked").unwrap(), 5);
    assert_eq!(conn.zcard::<_, i64>("unacked_index").unwrap(), 5);
    for d in &batch {
        d.settle.ack().await.unwrap();
    }
    assert_eq!(conn.hlen::<_, i64>("unacked").unwrap(), 0);
    assert_eq!(conn.zcard::<_, i64>("unacked_index").unwrap(), 0);
}

#[tokio::test]
async fn unacked_entry_has_kombus_shape() {
    let server = RedisServer::start();
    let b = broker(&server, &["celery"], TransportOptions::default()).await;
    let env = envelope("shape", "celery", 0);
    b.publish("celery", &env).await.unwrap();
    let before = now();
    for max in [1usize] {
        let d = b.fetch(max).await.unwrap().remove(0);
        let mut conn = server.conn();
        let raw: String = conn.hget("unacked", d.settle.tag()).unwrap();
        let entry: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(entry[1], json!(""), "exchange");
        assert_eq!(entry[2], json!("celery"), "routing key");
        assert_eq!(
            entry[0]["properties"]["delivery_tag"],
            json!(d.settle.tag())
        );
        assert_eq!(
            Envelope::parse(entry[0].to_string().as_bytes()).unwrap(),
            env
        );
        let score: f64 = conn.zscore("unacked_index", d.settle.tag()).unwrap();
        assert!(
            score >= before - 1.0 && score <= now() + 1.0,
            "score {score} is a unix time"
        );
        // Binding declared as a Celery worker declares it.
        let members: Vec<String> = conn.smembers("_kombu.binding.celery").unwrap();
        assert_eq!(members, ["celery\x06\x16\x06\x16celery"]);
    }
}

/// The fetch script reads tags with string searches when the envelope is
/// written as kombu writes it, and decodes it otherwise; either way, once
/// the handler has opened the delivery, `unacked` is keyed by each
/// envelope's own `properties.delivery_tag` and the delivery settles by it.
#[tokio::test]
async fn unacked_is_keyed_by_the_properties_tag_however_the_json_is_written() {
    let server = RedisServer::start();
    let b = broker(&server, &["q"], TransportOptions::default()).await;
    let di = |ex: &str, rk: &str| json!({"exchange": ex, "routing_key": rk});
    let msgs = [
        // kombu's own spacing: the fast path.
        (
            json!({"body": "", "headers": {}, "properties":
            {"delivery_info": di("ex", "rk/1"), "delivery_tag": "t1"}}),
            false,
            Some(("t1", "ex", "rk/1")),
        ),
        // Compact separators and an escaped quote: decoded.
        (
            json!({"body": "", "headers": {}, "properties":
            {"delivery_tag": "t\"2", "delivery_info": di("", "q")}}),
            true,
            Some(("t\"2", "", "q")),
        ),
        // Keys in another order: decoded.
        (
            json!({"body": "", "headers": {}, "properties":
            {"delivery_info": {"routing_key": "q", "exchange": "e"}, "delivery_tag": "t3"}}),
            false,
            Some(("t3", "e", "q")),
        ),
        // Other keys ending in `_tag` / `_info`, and the key names inside a
        // string: skipped by the fast path's search.
        (
            json!({"body": "", "headers": {"my_tag": "h", "x_info": 1,
                "note": "\"delivery_tag\": \"no\" _info\""},
            "properties": {"delivery_info": di("ex", "rk"), "delivery_tag": "t5"}}),
            false,
            Some(("t5", "ex", "rk")),
        ),
        // A header of the same name besides the properties' own: decoded.
        (
            json!({"body": "", "headers": {"delivery_tag": "header"}, "properties":
            {"delivery_info": di("", "q"), "delivery_tag": "t6"}}),
            false,
            Some(("t6", "", "q")),
        ),
        // The only "delivery_tag" is a header: nothing may stay recorded under it.
        (
            json!({"body": "", "headers": {"delivery_tag": "header"}, "properties":
            {"delivery_info": di("", "q")}}),
            false,
            None,
        ),
    ];
    let mut conn = server.conn();
    for (m, compact, _) in &msgs {
        let raw = if *compact {
            serde_json::to_string(m).unwrap()
        } else {
            // Python's json.dumps spacing.
            serde_json::to_string(m)
                .unwrap()
                .replace("\":", "\": ")
                .replace(",\"", ", \"")
        };
        let _: () = conn.lpush("q", raw).unwrap();
    }
    let got = b.fetch(10).await.unwrap();
    assert_eq!(got.len(), msgs.len());
    for (d, (_, _, want)) in got.into_iter().zip(&msgs) {
        let (_, env, settle) = d.open().await;
        env.unwrap();
        assert_eq!(settle.tag(), want.map_or("", |w| w.0));
    }
    let unacked: std::collections::HashMap<String, String> = conn.hgetall("unacked").unwrap();
    let index: Vec<String> = conn.zrange("unacked_index", 0, -1).unwrap();
    let want: Vec<_> = msgs.iter().filter_map(|(_, _, w)| *w).collect();
    assert_eq!(unacked.len(), want.len(), "{unacked:?}");
    assert_eq!(index.len(), want.len(), "{index:?}");
    for (tag, ex, rk) in want {
        let entry: Value = serde_json::from_str(&unacked[tag]).unwrap();
        assert_eq!(entry[0]["properties"]["delivery_tag"], json!(tag));
        assert_eq!(
            (entry[1].clone(), entry[2].clone()),
            (json!(ex), json!(rk)),
            "{tag}"
        );
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn visibility_timeout_restores_to_the_front_marked_redelivered() {
    let server = RedisServer::start();
    let opts = TransportOptions {
        visibility_timeout: 1.0,
        ..Default::default()
    };
    let b = broker(&server, &["celery"], opts.clone()).await;
    b.publish("celery", &envelope("late", "celery", 7))
        .await
        .unwrap();
    b.publish("celery", &envelope("other", "celery", 7))
        .await
        .unwrap();
    let taken = b.fetch(1).await.unwrap().remove(0);
    assert_eq!(task_id(&taken), "late");
    assert_eq!(
        b.restore_visible().await.unwrap(),
        0,
        "not yet past the timeout"
    );
    // The score is the delivery time rounded up to a whole second, so the
    // message is due at most 1 s after `visibility_timeout`, never before.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // A second worker starting up runs the scan (kombu does it at start-up).
    let _second = broker(&server, &["celery"], opts).await;
    let mut conn = server.conn();
    assert_eq!(conn.hlen::<_, i64>("unacked").unwrap(), 0);
    // RPUSH: it is the next to be consumed, in its priority bucket.
    let next: String = conn.rpop("celery\x06\x166", None).unwrap();
    let env: Value = serde_json::from_str(&next).unwrap();
    assert_eq!(env["headers"]["id"], json!("late"));
    assert_eq!(env["headers"]["redelivered"], json!(true));
    assert_eq!(
        env["properties"]["delivery_info"]["redelivered"],
        json!(true)
    );
}

#[tokio::test]
async fn reject_with_requeue_goes_to_the_back_and_restore_to_the_front() {
    let server = RedisServer::start();
    let b = broker(&server, &["q"], TransportOptions::default()).await;
    for id in ["one", "two", "three"] {
        b.publish("q", &envelope(id, "q", 0)).await.unwrap();
    }
    let one = b.fetch(1).await.unwrap().remove(0);
    one.settle.reject(true).await.unwrap();
    let two = b.fetch(1).await.unwrap().remove(0);
    two.settle.restore().await.unwrap();
    assert_eq!(drain_one_by_one(&b, 3).await, ["two", "three", "one"]);
    let none: i64 = server.conn().llen("q").unwrap();
    assert_eq!(none, 0);
}

/// A Python worker's leftover (captured byte-exact from kombu) is restored by us.
#[tokio::test]
async fn restores_what_a_python_worker_left_unacked() {
    let server = RedisServer::start();
    let sample: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/celery-wire/redis_unacked_entry_eta_task.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let tag = sample["field"].as_str().unwrap();
    let raw = sample["raw"].as_str().unwrap();
    let mut conn = server.conn();
    let _: () = conn.hset("unacked", tag, raw).unwrap();
    let _: () = conn.zadd("unacked_index", tag, now() - 7200.0).unwrap();
    let b = broker(&server, &["celery"], TransportOptions::default()).await;
    let d = b.fetch(1).await.unwrap().remove(0);
    assert_eq!(d.settle.tag(), tag);
    let env = d.envelope().unwrap();
    assert_eq!(env.headers["redelivered"], json!(true));
    assert_eq!(
        env.headers["id"],
        sample["decoded"]["payload"]["headers"]["id"]
    );
}

#[tokio::test]
async fn global_keyprefix_prefixes_every_key() {
    let server = RedisServer::start();
    let opts = TransportOptions {
        global_keyprefix: "app1:".into(),
        ..Default::default()
    };
    let b = broker(&server, &["celery"], opts).await;
    b.publish("celery", &envelope("p", "celery", 3))
        .await
        .unwrap();
    let mut conn = server.conn();
    assert_eq!(conn.llen::<_, i64>("app1:celery\x06\x163").unwrap(), 1);
    let d = b.fetch(1).await.unwrap().remove(0);
    assert_eq!(d.queue, "celery");
    assert_eq!(conn.hlen::<_, i64>("app1:unacked").unwrap(), 1);
    assert_eq!(conn.hlen::<_, i64>("unacked").unwrap(), 0);
    assert!(
        conn.sismember::<_, _, bool>("app1:_kombu.binding.celery", "celery\x06\x16\x06\x16celery")
            .unwrap()
    );
}

#[tokio::test]
async fn garbage_in_a_queue_is_delivered_as_an_error_not_a_crash() {
    let server = RedisServer::start();
    let b = broker(&server, &["celery"], TransportOptions::default()).await;
    let mut conn = server.conn();
    let _: () = conn.lpush("celery", "this is not json").unwrap();
    let _: () = conn.lpush("celery", "also garbage").unwrap();
    let batch = b.fetch(5).await.unwrap();
    assert_eq!(batch.len(), 2);
    assert!(
        batch
            .iter()
            .all(|d| d.envelope().is_err() && d.settle.tag().is_empty())
    );
    let single = {
        let _: () = conn.lpush("celery", "{\"x\": 1").unwrap();
        b.fetch(1).await.unwrap()
    };
    assert!(single[0].envelope().is_err());
    assert_eq!(conn.hlen::<_, i64>("unacked").unwrap(), 0);
}

#[tokio::test]
async fn backend_writes_setex_and_publish_and_never_overwrites_success() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(
        &server.url(),
        Some(Duration::from_secs(600)),
        "",
        &Default::default(),
    )
    .await
    .unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut pubsub = client.get_connection().unwrap();
    let mut pubsub = pubsub.as_pubsub();
    pubsub.subscribe("celery-task-meta-t1").unwrap();
    pubsub
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();

    assert!(
        backend
            .store(&ResultMeta::new("t1", "SUCCESS", json!(9)))
            .await
            .unwrap()
    );
    let msg = pubsub.get_message().unwrap();
    let published: String = msg.get_payload().unwrap();
    let mut conn = server.conn();
    let stored: String = conn.get("celery-task-meta-t1").unwrap();
    assert_eq!(published, stored, "PUBLISH carries exactly the stored JSON");
    let ttl: i64 = conn.ttl("celery-task-meta-t1").unwrap();
    assert!((590..=600).contains(&ttl), "ttl {ttl}");
    let v: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(v["result"], json!(9));
    assert!(v["date_done"].as_str().unwrap().ends_with("+00:00"));

    // A duplicate execution's FAILURE must not replace the SUCCESS.
    let failure = ResultMeta::new(
        "t1",
        "FAILURE",
        json!({"exc_type": "ValueError", "exc_message": [], "exc_module": "builtins"}),
    );
    assert!(!backend.store(&failure).await.unwrap());
    let still: Value =
        serde_json::from_str(&conn.get::<_, String>("celery-task-meta-t1").unwrap()).unwrap();
    assert_eq!(still["status"], json!("SUCCESS"));

    // A Python-written SUCCESS (spaced JSON) is protected too.
    let _: () = conn.set("celery-task-meta-t2", r#"{"status": "SUCCESS", "result": 1, "traceback": null, "children": [], "date_done": "2026-01-01T00:00:00+00:00", "task_id": "t2"}"#).unwrap();
    assert!(
        !backend
            .store(&ResultMeta::new("t2", "STARTED", json!({})))
            .await
            .unwrap()
    );
    // Other states are overwritten in order.
    assert!(
        backend
            .store(&ResultMeta::new("t3", "PROGRESS", json!({"current": 1})))
            .await
            .unwrap()
    );
    assert!(
        backend
            .store(&ResultMeta::new("t3", "SUCCESS", json!(1)))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn backend_key_prefix_follows_celery() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url(), None, "tenant", &Default::default())
        .await
        .unwrap();
    backend
        .store(&ResultMeta::new("t9", "SUCCESS", json!(null)))
        .await
        .unwrap();
    let mut conn = server.conn();
    assert!(
        conn.exists::<_, bool>("tenant_celery-task-meta-t9")
            .unwrap()
    );
    assert_eq!(
        conn.ttl::<_, i64>("tenant_celery-task-meta-t9").unwrap(),
        -1,
        "no expiry configured"
    );
}

#[tokio::test]
async fn rediss_urls_speak_tls() {
    let server = RedisServer::start_tls();
    let url = format!("rediss://127.0.0.1:{}/0?ssl_cert_reqs=none", server.port);
    let queues = vec!["celery".to_string()];
    let b = RedisBroker::connect(&url, &queues, TransportOptions::default())
        .await
        .unwrap();
    b.start().await.unwrap();
    b.publish("celery", &envelope("over-tls", "celery", 0))
        .await
        .unwrap();
    let d = b.fetch(1).await.unwrap().remove(0);
    assert_eq!(task_id(&d), "over-tls");
    d.settle.ack().await.unwrap();
    let backend = RedisBackend::connect(&url, None, "", &Default::default())
        .await
        .unwrap();
    assert!(
        backend
            .store(&ResultMeta::new("over-tls", "SUCCESS", json!(1)))
            .await
            .unwrap()
    );
    // Plain TCP to a TLS port must fail rather than hang or succeed.
    let plain = format!("redis://127.0.0.1:{}/0", server.port);
    assert!(
        RedisBroker::connect(&plain, &queues, TransportOptions::default())
            .await
            .is_err()
    );
}

// ---- broadcast and remote control ----

#[tokio::test]
async fn fanout_reaches_subscribers_on_kombus_topic_with_the_key_prefix() {
    let server = RedisServer::start();
    let opts = TransportOptions {
        global_keyprefix: "pfx:".into(),
        ..Default::default()
    };
    let b = broker(&server, &["celery"], opts).await;
    let mut rx = b
        .subscribe_fanout("celery.pidbox", "w1@h.celery.pidbox")
        .await
        .unwrap();
    // The binding a Python worker declares for its pidbox queue.
    let mut c = server.conn();
    let members: Vec<String> = c.smembers("pfx:_kombu.binding.celery.pidbox").unwrap();
    assert_eq!(members, ["\x06\x16\x06\x16w1@h.celery.pidbox"]);
    // A raw PUBLISH on the prefixed topic, as kombu sends it.
    let env = envelope("f-1", "celery", 0);
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg("pfx:/0.celery.pidbox")
        .arg(env.to_json())
        .query(&mut c)
        .unwrap();
    assert_eq!(receivers, 1);
    let raw = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Envelope::parse(&raw).unwrap(), env);
    // Our own fanout publish lands on the same topic.
    b.publish_fanout("celery.pidbox", "", &env).await.unwrap();
    let raw = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Envelope::parse(&raw).unwrap(), env);
}

#[tokio::test]
async fn direct_publish_follows_the_binding_table_and_drops_unrouted() {
    let server = RedisServer::start();
    let b = broker(&server, &["celery"], TransportOptions::default()).await;
    let mut c = server.conn();
    let _: () = c
        .sadd(
            "_kombu.binding.reply.celery.pidbox",
            "oid-1\x06\x16\x06\x16oid-1.reply.celery.pidbox",
        )
        .unwrap();
    let env = envelope("r-1", "x", 0);
    b.publish_to("reply.celery.pidbox", "oid-1", &env)
        .await
        .unwrap();
    b.publish_to("reply.celery.pidbox", "nobody", &env)
        .await
        .unwrap();
    let raw: Vec<u8> = c.rpop("oid-1.reply.celery.pidbox", None).unwrap();
    assert_eq!(Envelope::parse(&raw).unwrap(), env);
    let keys: Vec<String> = c.keys("*nobody*").unwrap();
    assert!(keys.is_empty(), "unrouted reply was stored: {keys:?}");
}

#[tokio::test]
async fn collect_replies_gathers_until_the_timeout_and_cleans_up() {
    let server = RedisServer::start();
    let b = std::sync::Arc::new(broker(&server, &["celery"], TransportOptions::default()).await);
    // A neighbour answering every broadcast on the reply queue it names.
    let mut rx = b
        .subscribe_fanout("celery.pidbox", "n@h.celery.pidbox")
        .await
        .unwrap();
    let answering = std::sync::Arc::clone(&b);
    tokio::spawn(async move {
        while let Some(raw) = rx.recv().await {
            let req = rust_celery_worker::protocol::pidbox::ControlRequest::from_envelope(
                &Envelope::parse(&raw).unwrap(),
            )
            .unwrap();
            let reply_to = req.reply_to.unwrap();
            let env = rust_celery_worker::protocol::pidbox::reply_envelope(
                "n@h",
                json!({"revoked": ["a"], "clock": 5}),
                &reply_to,
                req.ticket.as_deref().unwrap(),
                6,
            );
            answering
                .publish_to(&reply_to.exchange, &reply_to.routing_key, &env)
                .await
                .unwrap();
        }
    });
    let reply_to = rust_celery_worker::protocol::pidbox::ReplyTo {
        exchange: "reply.celery.pidbox".into(),
        routing_key: "oid-9".into(),
    };
    let req = rust_celery_worker::protocol::pidbox::request_envelope(
        "hello",
        json!({"from_node": "me@h", "revoked": []}),
        Some(&reply_to),
        Some("t-1"),
        1,
        0.0,
    );
    let started = std::time::Instant::now();
    let replies = b
        .collect_replies(
            "reply.celery.pidbox",
            "oid-9",
            &req,
            "celery.pidbox",
            Duration::from_millis(700),
        )
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(650));
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].headers["ticket"], "t-1");
    let mut c = server.conn();
    let left: Vec<String> = c.smembers("_kombu.binding.reply.celery.pidbox").unwrap();
    assert!(left.is_empty(), "reply binding left behind: {left:?}");
}

#[tokio::test]
async fn consumed_queues_change_live() {
    let server = RedisServer::start();
    let b = broker(&server, &["celery"], TransportOptions::default()).await;
    assert!(b.add_queue("extra").await.unwrap());
    assert!(!b.add_queue("extra").await.unwrap());
    assert_eq!(b.queues(), ["celery", "extra"]);
    let mut c = server.conn();
    let bound: bool = c
        .sismember("_kombu.binding.extra", "extra\x06\x16\x06\x16extra")
        .unwrap();
    assert!(bound);
    b.publish("extra", &envelope("q-1", "extra", 0))
        .await
        .unwrap();
    let got = b.fetch(1).await.unwrap();
    assert_eq!(task_id(&got[0]), "q-1");
    assert!(b.cancel_queue("extra"));
    assert!(!b.cancel_queue("extra"));
    b.publish("extra", &envelope("q-2", "extra", 0))
        .await
        .unwrap();
    assert!(b.fetch(4).await.unwrap().is_empty());
    let waiting: i64 = c.llen("extra").unwrap();
    assert_eq!(waiting, 1);
}

/// An idle fetch sleeps until a message lands on any of its keys: the
/// first key, a second queue, or a priority bucket. The block is 5 s here,
/// so only the wake-up can deliver within the deadline.
#[tokio::test]
async fn idle_fetch_wakes_for_any_key() {
    let server = RedisServer::start();
    let opts = TransportOptions {
        brpop_timeout: 5.0,
        ..TransportOptions::default()
    };
    let b = std::sync::Arc::new(broker(&server, &["a", "b"], opts).await);
    let quick = Duration::from_millis(2500);
    for (id, queue, priority) in [
        ("first", "a", 0),
        ("second-queue", "b", 0),
        ("bucket", "a", 9),
    ] {
        let waiting = tokio::spawn({
            let b = std::sync::Arc::clone(&b);
            // An empty return (a stale wake-up) is fine: the consumer fetches again.
            async move {
                loop {
                    let got = b.fetch(4).await.unwrap();
                    if !got.is_empty() {
                        return got;
                    }
                }
            }
        });
        // Let the fetch find nothing and go to sleep first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.publish(queue, &envelope(id, queue, priority))
            .await
            .unwrap();
        let got = tokio::time::timeout(quick, waiting)
            .await
            .unwrap_or_else(|_| panic!("{id}: not delivered within {quick:?}"))
            .unwrap();
        assert_eq!(got.iter().map(task_id).collect::<Vec<_>>(), [id]);
        got[0].settle.ack().await.unwrap();
    }
}
