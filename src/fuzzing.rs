//! Fuzz targets: everything that turns bytes from the wire into values, run
//! the way the worker runs it, so a panic or a hang here is one the worker
//! would have. One entry point for libFuzzer (`fuzz/`, the long run) and for
//! the stable mutation run in `cargo test` (`tests/wire_fuzz.rs`).
//!
//! The first byte of an input picks the parser; the rest is its bytes.

use crate::broker::amqp::wire::{self, Arrival};
use crate::protocol::json_tags;
use crate::protocol::message::TaskMessage;
use crate::protocol::pidbox::{ControlRequest, reply_body};
use crate::protocol::{Envelope, duration_secs, pyrepr, result_meta};
use serde_json::{Map, Value, json};

/// What the first byte of an input selects.
pub const KINDS: [&str; 6] = [
    "redis envelope (kombu JSON, base64 body)",
    "task body under v2 headers (json, by content type)",
    "compressed task body (zlib)",
    "AMQP content header properties + body",
    "pidbox request body",
    "stored result meta / header time / rate limit text",
];

/// Runs the parser `data[0]` selects on `data[1..]`.
pub fn wire(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind as usize % KINDS.len() {
        0 => redis_envelope(rest),
        1 => task_body(rest, None),
        2 => task_body(rest, Some("zlib")),
        3 => amqp_delivery(rest),
        4 => pidbox_request(rest),
        _ => text_fields(rest),
    }
}

fn redis_envelope(raw: &[u8]) {
    let parsed = Envelope::parse(raw);
    // The direct reading and the one through a `Value` agree, except where
    // a top-level field neither keeps holds what only a `Value` refuses
    // (`1e400`, which json.loads reads as inf): then only the direct one
    // takes the message, as kombu would.
    match Envelope::parse_value(raw) {
        Ok(v) => assert_eq!(
            parsed.as_ref().ok(),
            Some(&v),
            "parse and parse_value disagree"
        ),
        Err(e) => {
            if let Err(d) = &parsed {
                assert_eq!(
                    d.to_string(),
                    e.to_string(),
                    "parse and parse_value disagree"
                );
            }
        }
    }
    let Ok(env) = parsed else {
        return;
    };
    let _ = (env.delivery_tag(), env.delivery_info(), env.priority());
    let _ = env.redelivered();
    decode_task(&env);
    // The same envelope may be a pidbox request (they share the format).
    control(&env);
}

/// `data` is a task body; the headers are Celery's v2 set, or none (v1),
/// chosen by the first byte, with content types the worker meets.
fn task_body(data: &[u8], compression: Option<&str>) {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let mut headers = Map::new();
    if flags & 1 == 0 {
        headers.insert("task".into(), json!("app.workers.tasks.example_task"));
        headers.insert("id".into(), json!("9d759219-7b47-49ba-ab04-002a1baa2b62"));
    }
    if let Some(c) = compression {
        headers.insert("compression".into(), json!(c));
    }
    let content_type = match (flags >> 1) % 4 {
        0 | 1 => Some("application/json"),
        2 => Some("application/x-python-serialize"),
        _ => None,
    };
    decode_task(&envelope(body, content_type, headers));
}

/// An envelope as a transport hands it over (body already unwrapped).
fn envelope(body: &[u8], content_type: Option<&str>, headers: Map<String, Value>) -> Envelope {
    Envelope {
        body: body.to_vec(),
        content_type: content_type.map(str::to_string),
        content_encoding: Some("utf-8".into()),
        headers,
        properties: Map::new(),
    }
}

fn amqp_delivery(data: &[u8]) {
    let Ok((body, props)) = lapin::protocol::basic::parse_properties(data) else {
        return;
    };
    let arrival = Arrival {
        exchange: "",
        routing_key: "celery",
        redelivered: false,
    };
    let env = wire::envelope(&props, body.to_vec(), &arrival);
    decode_task(&env);
    control(&env);
    // What the worker publishes back from it (a retry, a reply).
    let _ = wire::properties(&env, chrono::Utc::now());
}

fn pidbox_request(body: &[u8]) {
    let env = envelope(body, Some("application/json"), Map::new());
    control(&env);
    // Mingle and `celery inspect` replies are read with the same parser.
    let _ = reply_body(&env);
}

fn text_fields(data: &[u8]) {
    let _ = result_meta::stored_status(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = json_tags::parse_header_time(text);
    rate_limit(text);
}

/// What the worker reads of a task message before and while running it.
fn decode_task(env: &Envelope) {
    let Ok(msg) = TaskMessage::decode(env.content_type.as_deref(), &env.headers, &env.body) else {
        return;
    };
    let _ = (msg.id(), msg.task(), msg.display_name(), msg.retries());
    let _ = (
        msg.root_id(),
        msg.parent_id(),
        msg.group(),
        msg.group_index(),
    );
    let _ = (msg.eta(), msg.expires(), msg.ignore_result());
    let (hard, soft) = msg.timelimit_numbers();
    for n in [hard, soft].into_iter().flatten() {
        let _ = duration_secs(n.as_f64().unwrap_or(0.0));
        let _ = pyrepr::repr(&Value::Number(n));
    }
    let _ = (msg.argsrepr(), msg.kwargsrepr());
    let _ = msg.embed.to_value();
    // A retry republishes it.
    let _ = msg.encode_body();
}

/// A pidbox request and the arguments commands convert.
fn control(env: &Envelope) {
    let Ok(req) = ControlRequest::from_envelope(env) else {
        return;
    };
    let _ = (req.is_for("celery@host"), req.wants_reply());
    for (_, v) in &req.arguments {
        match v {
            Value::String(s) => rate_limit(s),
            Value::Number(n) => {
                let _ = duration_secs(n.as_f64().unwrap_or(0.0));
            }
            _ => {}
        }
        let _ = pyrepr::repr(v);
    }
}

fn rate_limit(spec: &str) {
    if let Ok(Some(per_second)) = crate::worker::rate_limit::parse(spec) {
        let _ = crate::worker::rate_limit::Bucket::new(per_second);
    }
}

/// Seed inputs from Celery's captured samples (`*.json` under `dir`): every
/// raw Redis envelope, every AMQP property block with its body, every body
/// and pidbox request, each prefixed with the byte that selects its parser.
pub fn seeds(dir: &std::path::Path) -> Vec<Vec<u8>> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).ok();
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    entries.sort();
    for path in entries {
        let Ok(doc) = std::fs::read(&path) else {
            continue;
        };
        let Ok(doc) = serde_json::from_slice::<Value>(&doc) else {
            continue;
        };
        let mut strings = Vec::new();
        collect_strings(&doc, &mut strings);
        for s in strings {
            let trimmed = s.trim_start();
            if trimmed.starts_with('{') && trimmed.contains("\"body\"") {
                out.push([&[0u8][..], s.as_bytes()].concat());
                if let Ok(env) = Envelope::parse(s.as_bytes()) {
                    out.push([&[1u8, 0][..], &env.body].concat());
                    out.push([&[4u8][..], &env.body].concat());
                }
            }
        }
        if let (Some(props), Some(body)) = (
            doc["content_header_property_bytes_base64"]
                .as_str()
                .and_then(b64),
            doc["body_base64"].as_str().and_then(b64),
        ) {
            out.push([&[3u8][..], &props, &body].concat());
        }
        if doc.get("status").is_some() || doc.get("result").is_some() {
            out.push([&[5u8][..], doc.to_string().as_bytes()].concat());
        }
    }
    out.push(b"\x052026-11-21T05:01:13.897554+00:00".to_vec());
    out.push(b"\x0510/s".to_vec());
    out
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(m) => m.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}
