//! Golden vectors for remote control and events: every pidbox request Celery
//! 5.7 really broadcast decodes to what the client meant; our replies and
//! events carry exactly the headers, properties and fields the captured
//! Celery worker sent (ids, times and clocks aside).

use rust_celery_worker::events::dispatcher;
use rust_celery_worker::events::{Common, Event, WorkerStatus};
use rust_celery_worker::protocol::Envelope;
use rust_celery_worker::protocol::pidbox::{self, ControlRequest};
use serde_json::{Value, json};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/celery-wire")
}

fn load(name: &str) -> Value {
    let text =
        std::fs::read_to_string(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn samples(prefix: &str) -> Vec<(String, Value)> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix) && n.ends_with(".json"))
        .collect();
    names.sort();
    names.into_iter().map(|n| (n.clone(), load(&n))).collect()
}

fn envelope_of(capture: &Value) -> Envelope {
    Envelope::parse(capture["raw"].as_str().unwrap().as_bytes()).unwrap()
}

/// Properties without the per-message delivery tag.
fn stable_properties(env: &Envelope) -> Value {
    let mut p = env.properties.clone();
    assert!(p.remove("delivery_tag").is_some_and(|t| t.is_string()));
    Value::Object(p)
}

#[test]
fn every_captured_request_decodes() {
    let all = samples("pidbox_");
    assert!(
        all.len() >= 10,
        "expected the pidbox captures, found {}",
        all.len()
    );
    for (name, doc) in &all {
        for req in doc["request"].as_array().unwrap() {
            let env = envelope_of(req);
            let r = ControlRequest::from_envelope(&env).unwrap_or_else(|e| panic!("{name}: {e}"));
            let body = &req["body_decoded"];
            assert_eq!(r.method, body["method"], "{name}");
            assert_eq!(
                Value::Object(r.arguments.clone()),
                body["arguments"],
                "{name}"
            );
            assert_eq!(r.ticket.as_deref(), body["ticket"].as_str(), "{name}");
            assert_eq!(
                r.reply_to.as_ref().map(|t| t.routing_key.as_str()),
                body["reply_to"]["routing_key"].as_str(),
                "{name}"
            );
            assert_eq!(r.clock, env.headers["clock"].as_u64().unwrap(), "{name}");
            assert!(r.is_for("sample-worker@vm"), "{name}: broadcast to all");
            assert_eq!(r.wants_reply(), body.get("reply_to").is_some(), "{name}");
        }
    }
}

#[test]
fn our_replies_match_the_captured_ones() {
    let mut checked = 0;
    for (name, doc) in samples("pidbox_") {
        let Some(replies) = doc["replies"].as_array() else {
            continue;
        };
        let req = ControlRequest::from_envelope(&envelope_of(&doc["request"][0])).unwrap();
        for captured in replies {
            let theirs = envelope_of(captured);
            let Some((node, reply)) = pidbox::reply_body(&theirs).into_iter().next() else {
                panic!("{name}: reply body is not {{node: reply}}");
            };
            let clock = theirs.headers["clock"].as_u64().unwrap();
            let ours = pidbox::reply_envelope(
                &node,
                reply.clone(),
                req.reply_to.as_ref().unwrap(),
                req.ticket.as_deref().unwrap(),
                clock,
            );
            assert_eq!(ours.headers, theirs.headers, "{name}: headers");
            assert_eq!(
                stable_properties(&ours),
                stable_properties(&theirs),
                "{name}: properties"
            );
            assert_eq!(ours.content_type, theirs.content_type, "{name}");
            assert_eq!(ours.content_encoding, theirs.content_encoding, "{name}");
            let body: Value = serde_json::from_slice(&ours.body).unwrap();
            assert_eq!(body, captured["body_decoded"], "{name}: body");
            // And it survives our own serialisation as the client reads it.
            let back = Envelope::parse(ours.to_json().as_bytes()).unwrap();
            assert_eq!(pidbox::reply_body(&back), vec![(node.clone(), reply)]);
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} replies compared");
}

#[test]
fn the_mingle_hello_is_built_as_celery_builds_it() {
    let doc = load("pidbox_mingle_hello.json");
    let theirs = envelope_of(&doc["request"][0]);
    let req = ControlRequest::from_envelope(&theirs).unwrap();
    let ours = pidbox::request_envelope(
        "hello",
        json!({"from_node": "sample-worker@vm", "revoked": []}),
        req.reply_to.as_ref(),
        req.ticket.as_deref(),
        req.clock,
        req.expires,
    );
    assert_eq!(ours.headers, theirs.headers);
    assert_eq!(stable_properties(&ours), stable_properties(&theirs));
    let body: Value = serde_json::from_slice(&ours.body).unwrap();
    assert_eq!(body, doc["request"][0]["body_decoded"]);
}

/// Our event for a captured one, built from its own field values.
fn rebuild(e: &Value) -> Event {
    let s = |k: &str| e[k].as_str().unwrap().to_string();
    let opt = |k: &str| e[k].as_str().map(str::to_string);
    let status = || WorkerStatus {
        freq: e["freq"].as_f64().unwrap(),
        active: e["active"].as_u64().unwrap() as usize,
        processed: e["processed"].as_u64().unwrap(),
        loadavg: serde_json::from_value(e["loadavg"].clone()).unwrap(),
    };
    match e["type"].as_str().unwrap() {
        "worker-online" => Event::WorkerOnline(status()),
        "worker-heartbeat" => Event::WorkerHeartbeat(status()),
        "worker-offline" => Event::WorkerOffline(status()),
        "task-received" => Event::TaskReceived {
            uuid: s("uuid"),
            name: s("name"),
            queue: "celery".into(),
            args: s("args"),
            kwargs: s("kwargs"),
            root_id: opt("root_id"),
            parent_id: opt("parent_id"),
            retries: e["retries"].as_u64().unwrap() as u32,
            eta: opt("eta"),
            expires: opt("expires"),
        },
        "task-started" => Event::TaskStarted { uuid: s("uuid") },
        "task-succeeded" => Event::TaskSucceeded {
            uuid: s("uuid"),
            result: s("result"),
            runtime: e["runtime"].as_f64().unwrap(),
        },
        "task-failed" => Event::TaskFailed {
            uuid: s("uuid"),
            exception: s("exception"),
            traceback: s("traceback"),
        },
        "task-retried" => Event::TaskRetried {
            uuid: s("uuid"),
            exception: s("exception"),
            traceback: s("traceback"),
        },
        "task-revoked" => Event::TaskRevoked {
            uuid: s("uuid"),
            terminated: e["terminated"].as_bool().unwrap(),
            signum: e["signum"].as_i64().map(|n| n as i32),
            expired: e["expired"].as_bool().unwrap(),
        },
        other => panic!("no rebuild for {other}"),
    }
}

#[test]
fn our_events_have_celerys_fields_order_and_envelope() {
    let mut checked = 0;
    for (name, doc) in samples("event_") {
        let Some(theirs) = doc.get("event") else {
            continue;
        };
        if theirs["type"] == "task-sent" {
            continue; // sent by clients, not workers
        }
        let event = rebuild(theirs);
        let ours = event.to_json(&Common {
            hostname: theirs["hostname"].as_str().unwrap(),
            pid: theirs["pid"].as_u64().unwrap() as u32,
            clock: theirs["clock"].as_u64().unwrap(),
            timestamp: theirs["timestamp"].as_f64().unwrap(),
        });
        let mut expected = theirs.clone();
        if event.is_task_event() {
            assert_eq!(ours, expected, "{name}");
        } else {
            // Who is speaking is ours to say; everything else is Celery's.
            assert_eq!(ours["sw_ident"], "rust-celery-worker");
            expected["sw_ident"] = ours["sw_ident"].clone();
            expected["sw_ver"] = ours["sw_ver"].clone();
            assert_eq!(ours, expected, "{name}");
        }
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&ours), keys(theirs), "{name}: field order");
        // The carrier envelope: same headers, properties and routing.
        let carrier =
            Envelope::parse(doc["carrier_message"]["raw"].as_str().unwrap().as_bytes()).unwrap();
        let (_, rk) = carrier.delivery_info();
        let env = dispatcher::envelope(theirs["hostname"].as_str().unwrap(), &ours, &rk);
        assert_eq!(env.headers, carrier.headers, "{name}");
        assert_eq!(
            stable_properties(&env),
            stable_properties(&carrier),
            "{name}"
        );
        let expected_rk = if event.is_task_event() {
            "task.multi".to_string()
        } else {
            event.routing_key()
        };
        assert_eq!(rk, expected_rk, "{name}: the capture's routing key");
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} events compared");
}

#[test]
fn a_task_multi_batch_is_byte_for_byte_celerys() {
    let doc = load("event_task_multi_batch.json");
    let carrier = &doc["carrier_message"];
    let theirs = carrier["body_raw_text"].as_str().unwrap();
    let events: Vec<Value> = serde_json::from_str(theirs).unwrap();
    assert!(events.len() >= 2);
    let mut batch = Vec::new();
    for e in &events {
        let common = Common {
            hostname: e["hostname"].as_str().unwrap(),
            pid: e["pid"].as_u64().unwrap() as u32,
            clock: e["clock"].as_u64().unwrap(),
            timestamp: e["timestamp"].as_f64().unwrap(),
        };
        dispatcher::batch_push(&mut batch, &rebuild(e), &common);
    }
    dispatcher::batch_close(&mut batch);
    assert_eq!(String::from_utf8(batch).unwrap(), theirs);
}
