//! The messages we publish after a task — retry, next chain step, link
//! callback, errback, chord callback — match what Celery 5.7's worker
//! published in the same situation (tests/fixtures/celery-wire/*_worker*.json),
//! field by field. Only values that are random or machine-specific by nature
//! are masked: fresh ids, delivery tags, etas, `origin` pids, client oids.

use rust_celery_worker::canvas::routes::Router;
use rust_celery_worker::canvas::{self, Outgoing, Sender, Signature};
use rust_celery_worker::protocol::{Envelope, TaskMessage};
use rust_celery_worker::task::Request;
use serde_json::{Value, json};

fn messages(file: &str) -> Vec<Value> {
    let path = format!(
        "{}/tests/fixtures/celery-wire/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["messages"].as_array().unwrap().clone()
}

fn request(captured: &Value) -> Request {
    let env = Envelope::parse(captured["raw"].as_str().unwrap().as_bytes()).unwrap();
    let msg = TaskMessage::decode(env.content_type.as_deref(), &env.headers, &env.body).unwrap();
    Request::from_message(msg, env, "celery", "sample-worker@vm")
}

/// Blanks the named paths in an envelope (as JSON) so two can be compared.
fn masked(mut env: Value, paths: &[&str]) -> Value {
    for path in paths {
        let mut parts: Vec<&str> = path.split('.').collect();
        let last = parts.pop().unwrap();
        let mut at = &mut env;
        for p in parts {
            at = &mut at[p];
        }
        if let Some(obj) = at.as_object_mut()
            && obj.contains_key(last)
        {
            obj.insert(last.to_string(), json!("<masked>"));
        }
    }
    env
}

/// Our outgoing message vs Celery's: headers, properties and body.
fn assert_same(ours: &Outgoing, theirs: &Value, mask: &[&str]) {
    let body: Value = serde_json::from_slice(&ours.envelope.body).unwrap();
    assert_eq!(body, theirs["body_decoded"], "body");
    let ours_env: Value = serde_json::from_str(&ours.envelope.to_json()).unwrap();
    let mut theirs_env = theirs["envelope"].clone();
    theirs_env["body"] = json!("<compared above>");
    let mut ours_env = ours_env;
    ours_env["body"] = json!("<compared above>");
    let always = [
        "properties.delivery_tag",
        "headers.origin",
        "properties.origin",
    ];
    let all: Vec<&str> = always.iter().chain(mask).copied().collect();
    assert_eq!(masked(ours_env, &all), masked(theirs_env, &all));
    assert_eq!(ours.queue, theirs["redis_key"].as_str().unwrap());
}

fn sender(request: &Request) -> Sender<'_> {
    static ROUTER: std::sync::OnceLock<Router> = std::sync::OnceLock::new();
    Sender {
        request,
        origin: "gen1@vm",
        router: ROUTER.get_or_init(|| Router::new("celery")),
    }
}

#[test]
fn retry_republish_matches_celery() {
    let msgs = messages("task_message_retry_republished.json");
    for pair in msgs.windows(2) {
        let req = request(&pair[0]);
        let ours = canvas::retry_message(&req, 4.0, None, None, "celery");
        assert_eq!(ours.id, req.id, "same task id");
        assert_same(&ours, &pair[1], &["headers.eta"]);
        // The eta is a real ISO time about 4 s away.
        let eta = ours.envelope.headers["eta"].as_str().unwrap();
        let at = chrono::DateTime::parse_from_rfc3339(eta).unwrap();
        let ahead = (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds();
        assert!(
            (3000..=4100).contains(&ahead),
            "eta {eta} is {ahead} ms ahead"
        );
        // Celery repeats the sender's origin in the properties on republish.
        assert_eq!(
            ours.envelope.properties["origin"],
            pair[0]["envelope"]["headers"]["origin"]
        );
    }
}

#[test]
fn chain_steps_match_celery() {
    let msgs = messages("task_message_chain_worker_steps.json");
    // add(1, 2) = 3 → add(3, 10) = 13 → mul(13, 3)
    for (pair, retval) in msgs.windows(2).zip([json!(3), json!(13)]) {
        let req = request(&pair[0]);
        let (out, children) = canvas::on_success(&retval, &sender(&req));
        assert_eq!(out.len(), 1);
        assert_same(&out[0], &pair[1], &["properties.reply_to"]);
        assert_eq!(children, vec![json!([[out[0].id, null], null])]);
    }
}

#[test]
fn link_callback_matches_celery() {
    let msgs = messages("task_message_link_callback_worker.json");
    let req = request(&msgs[0]);
    let (out, children) = canvas::on_success(&json!(3), &sender(&req));
    assert_eq!(out.len(), 1);
    // Fresh id and the worker's own reply oid: masked. Args, parent, root: exact.
    assert_same(
        &out[0],
        &msgs[1],
        &[
            "headers.id",
            "properties.correlation_id",
            "properties.reply_to",
        ],
    );
    assert_eq!(children.len(), 1);
}

#[test]
fn published_errback_matches_celery() {
    let msgs = messages("task_message_errback_published_worker.json");
    let req = request(&msgs[0]);
    let errbacks = req.embed.errbacks.clone().unwrap();
    let out = canvas::on_failure(&req.id, &errbacks, &sender(&req));
    assert_eq!(out.len(), 1);
    assert_same(
        &out[0],
        &msgs[1],
        &[
            "headers.id",
            "properties.correlation_id",
            "properties.reply_to",
            "headers.group",
        ],
    );
    assert_eq!(
        out[0].envelope.headers["group_index"],
        json!(0),
        "wrapped in a one-element group"
    );
    assert!(out[0].envelope.headers["group"].is_string());
}

#[test]
fn chord_callback_matches_celery() {
    let msgs = messages("task_message_chord_worker.json");
    // The second header part (tasks.sleep) completed the chord.
    let req = request(&msgs[1]);
    let body = Signature::from_value(req.embed.chord.as_ref().unwrap()).unwrap();
    let group = body.options["group_id"].as_str().unwrap().to_string();
    let out = canvas::message(
        &body,
        &[json!([2, 2])],
        &sender(&req),
        Some((&group, None)),
        None,
    );
    assert_same(&out, &msgs[2], &[]);
}

/// One scenario of `task_message_nested_canvas_worker.json`.
fn scenario(name: &str) -> Vec<Value> {
    let path = format!(
        "{}/tests/fixtures/celery-wire/task_message_nested_canvas_worker.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["scenarios"][name]["messages"]
        .as_array()
        .unwrap()
        .clone()
}

/// Our messages for a finished step, in Celery's LPUSH order.
fn follow_ups(step: &Value, retval: Value) -> Vec<Outgoing> {
    let req = request(step);
    canvas::on_success(&retval, &sender(&req)).0
}

#[test]
fn group_as_chain_step_matches_celery() {
    let msgs = scenario("chain_group");
    let out = follow_ups(&msgs[0], json!(2));
    assert_eq!(out.len(), 2);
    for (ours, theirs) in out.iter().zip(&msgs[1..]) {
        assert_same(ours, theirs, &["properties.reply_to"]);
    }
}

#[test]
fn chord_as_chain_step_matches_celery() {
    let msgs = scenario("chain_chord");
    let out = follow_ups(&msgs[0], json!(2));
    assert_eq!(out.len(), 2, "the header parts");
    for (ours, theirs) in out.iter().zip(&msgs[1..3]) {
        assert_same(ours, theirs, &["properties.reply_to"]);
    }
    // Celery's client-side `set_chord_size`: stored before the first part.
    let gid = msgs[1]["envelope"]["headers"]["group"].as_str().unwrap();
    assert_eq!(out[0].chord_size, Some((gid.to_string(), 2)));
    assert_eq!(out[1].chord_size, None);
}

#[test]
fn group_of_chains_as_chain_step_matches_celery() {
    let msgs = scenario("chain_group_of_chains");
    let out = follow_ups(&msgs[0], json!(2));
    assert_eq!(out.len(), 2);
    // The chain member starts with its first task carrying the rest, whose
    // last task holds the group membership.
    for (ours, theirs) in out.iter().zip(&msgs[1..3]) {
        assert_same(ours, theirs, &["properties.reply_to"]);
    }
    // Its next step, published when add(2, 1) = 3 finishes.
    let next = follow_ups(&msgs[1], json!(3));
    assert_eq!(next.len(), 1);
    assert_same(&next[0], &msgs[3], &["properties.reply_to"]);
}
