//! Golden vectors: every task message Celery 5.7 / kombu 5.7 really put on
//! Redis (tests/fixtures/celery-wire, copied from shared/celery-wire/samples)
//! decodes to what Python meant, and what we encode reads back the same.

use rust_celery_worker::protocol::result_meta::ResultMeta;
use rust_celery_worker::protocol::{Envelope, TaskMessage};
use serde_json::{Map, Value, json};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/celery-wire")
}

fn load(name: &str) -> Value {
    let text =
        std::fs::read_to_string(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// Every `(file, message)` of the task-message captures.
fn task_messages() -> Vec<(String, Value)> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("task_message_") && n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(
        names.len() >= 25,
        "expected the captured task messages, found {names:?}"
    );
    names
        .into_iter()
        .flat_map(|n| {
            let doc = load(&n);
            // One list of messages, or several scenarios each with its own.
            let lists: Vec<Value> = match doc["scenarios"].as_object() {
                Some(scenarios) => scenarios.values().map(|s| s["messages"].clone()).collect(),
                None => vec![doc["messages"].clone()],
            };
            lists
                .iter()
                .flat_map(|l| {
                    l.as_array()
                        .unwrap_or_else(|| panic!("{n} has no messages"))
                        .clone()
                })
                .map(|m| (n.clone(), m))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn decode(raw: &str) -> (Envelope, TaskMessage) {
    let env = Envelope::parse(raw.as_bytes()).expect("captured envelope parses");
    let msg = TaskMessage::decode(env.content_type.as_deref(), &env.headers, &env.body)
        .expect("captured task decodes");
    (env, msg)
}

#[test]
fn every_captured_task_message_decodes_to_what_python_sent() {
    let mut checked = 0;
    for (file, m) in task_messages() {
        let raw = m["raw"].as_str().unwrap();
        let (env, msg) = decode(raw);
        let body = &m["body_decoded"];
        let headers = m["envelope"]["headers"].as_object().unwrap();
        if headers.contains_key("task") {
            // Protocol v2: body is [args, kwargs, embed].
            assert_eq!(msg.protocol, 2, "{file}");
            assert_eq!(Value::Array(msg.args.clone()), body[0], "{file} args");
            assert_eq!(Value::Object(msg.kwargs.clone()), body[1], "{file} kwargs");
            assert_eq!(msg.embed.to_value(), body[2], "{file} embed");
            assert_eq!(msg.id(), headers["id"].as_str().unwrap(), "{file} id");
            assert_eq!(msg.task(), headers["task"].as_str().unwrap(), "{file} task");
            // All headers but `compression` are kept, unknown ones included.
            for (k, v) in headers {
                if k != "compression" {
                    assert_eq!(msg.headers.get(k), Some(v), "{file} header {k}");
                }
            }
        } else {
            assert_eq!(msg.protocol, 1, "{file}");
            assert_eq!(
                Value::Array(msg.args.clone()),
                body["args"],
                "{file} v1 args"
            );
            assert_eq!(msg.id(), body["id"].as_str().unwrap());
            assert_eq!(msg.task(), body["task"].as_str().unwrap());
            assert_eq!(msg.retries(), 0);
            assert!(msg.eta().is_some(), "{file}: the v1 capture has an eta");
        }
        // The body bytes are byte-exact before decompression is undone.
        let expected_body = match m.get("body_compressed_base64") {
            Some(Value::String(b64)) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap()
            }
            _ => m["body_raw_text"].as_str().unwrap().as_bytes().to_vec(),
        };
        assert_eq!(env.body, expected_body, "{file} body bytes");
        checked += 1;
    }
    assert!(checked >= 30, "decoded only {checked} messages");
}

#[test]
fn captured_details_come_through() {
    let get = |file: &str| decode(load(file)["messages"][0]["raw"].as_str().unwrap());

    let (_, m) = get("task_message_time_limits_shadow.json");
    assert_eq!(m.timelimit(), (Some(30.0), Some(20.0)), "[hard, soft]");
    assert_eq!(m.headers["x-custom"], json!("hello"));
    assert_ne!(
        m.display_name(),
        m.task(),
        "shadow names the request in logs"
    );

    let (env, m) = get("task_message_priority_7.json");
    assert_eq!(env.priority(), 7);
    assert_eq!(m.retries(), 0);

    let (_, m) = get("task_message_expires.json");
    assert!(m.expires().is_some());

    let (_, m) = get("task_message_datetime_arg.json");
    assert_eq!(
        m.args[0],
        json!({"__type__": "datetime", "__value__": "2024-05-06T07:08:09+00:00"})
    );

    let (_, m) = get("task_message_chain.json");
    let chain = m.embed.chain.as_ref().unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(
        chain[1]["task"],
        json!("tasks.add"),
        "the next step is the last element"
    );

    let (_, m) = get("task_message_gzip_compressed.json");
    assert!(!m.headers.contains_key("compression"));

    let (_, m) = get("task_message_ignore_result.json");
    assert_eq!(m.ignore_result(), Some(true));
}

#[test]
fn what_we_encode_reads_back_identically() {
    for (file, m) in task_messages() {
        let (env, msg) = decode(m["raw"].as_str().unwrap());
        let again = Envelope::parse(env.to_json().as_bytes()).unwrap();
        assert_eq!(again, env, "{file} envelope round trip");
        if msg.protocol == 2 && !msg.headers.contains_key("compression") {
            let body = msg.encode_body();
            let back = TaskMessage::decode(Some("application/json"), &msg.headers, &body).unwrap();
            assert_eq!(back, msg, "{file} body round trip");
        }
    }
}

/// Our result metas equal Celery's captured ones, key order included.
#[test]
fn result_metas_match_celery_captures() {
    for file in [
        "result_meta_success.json",
        "result_meta_success_dict.json",
        "result_meta_failure.json",
        "result_meta_failure_custom_exception.json",
        "result_meta_progress.json",
        "result_meta_started.json",
        "result_meta_retry.json",
        "result_meta_revoked.json",
        "result_meta_revoked_expired.json",
        "result_meta_chain.json",
        "extended_result_meta_success.json",
    ] {
        let doc = load(file);
        let raws: Vec<&str> = match doc["raw"].as_str() {
            Some(raw) => vec![raw],
            None => doc["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["raw"].as_str().unwrap())
                .collect(),
        };
        for raw in raws {
            check_meta(file, raw);
        }
    }
}

fn check_meta(file: &str, raw: &str) {
    {
        let want: Map<String, Value> = serde_json::from_str(raw).unwrap();
        let s = |k: &str| want.get(k).and_then(Value::as_str).map(str::to_string);
        let mut meta = ResultMeta::new(
            want["task_id"].as_str().unwrap(),
            want["status"].as_str().unwrap(),
            want["result"].clone(),
        );
        meta.traceback = s("traceback");
        meta.children = want["children"].as_array().cloned();
        meta.group_id = s("group_id");
        meta.parent_id = s("parent_id");
        if want.contains_key("worker") {
            meta.extended = Some(rust_celery_worker::protocol::result_meta::Extended {
                name: s("name").unwrap(),
                args: want["args"].as_array().unwrap().clone(),
                kwargs: want["kwargs"].as_object().unwrap().clone(),
                worker: s("worker").unwrap(),
                retries: want["retries"].as_u64().unwrap() as u32,
                queue: s("queue").unwrap(),
            });
        }
        let now = match want["date_done"].as_str() {
            Some(d) => chrono::DateTime::parse_from_rfc3339(d)
                .unwrap()
                .with_timezone(&chrono::Utc),
            None => chrono::Utc::now(),
        };
        let got: Map<String, Value> = serde_json::from_str(&meta.to_json(now)).unwrap();
        assert_eq!(got, want, "{file}");
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{file} key order"
        );
    }
}
