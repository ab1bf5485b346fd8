//! Golden vectors for the AMQP mapping (SPEC §5.3): the content-header
//! property bytes Celery 5.7 really sent over py-amqp decode to the envelope
//! the pipeline reads, and an envelope published by us carries the same
//! properties and the same py-amqp field type for every header.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use lapin::types::{AMQPValue, FieldTable};
use rust_celery_worker::broker::amqp::wire;
use rust_celery_worker::protocol::Envelope;
use serde_json::{Map, Value};
use std::path::PathBuf;

fn samples() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/celery-wire");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("amqp_task_message_") && n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(names.len() >= 3, "captures missing: {names:?}");
    names
        .into_iter()
        .map(|n| {
            let text = std::fs::read_to_string(dir.join(&n)).unwrap();
            (n, serde_json::from_str(&text).unwrap())
        })
        .collect()
}

/// The properties py-amqp wrote, parsed from the captured bytes.
fn captured_properties(doc: &Value) -> lapin::BasicProperties {
    let raw = STANDARD
        .decode(
            doc["content_header_property_bytes_base64"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let (_, props) = lapin::protocol::basic::parse_properties(raw.as_slice())
        .unwrap_or_else(|e| panic!("unparsable property bytes: {e:?}"));
    props
}

fn body(doc: &Value) -> Vec<u8> {
    STANDARD
        .decode(doc["body_base64"].as_str().unwrap())
        .unwrap()
}

/// `[type, value]` pairs of the capture vs ours, recursively.
fn assert_types(what: &str, ours: &AMQPValue, theirs: &Value) {
    let code = theirs[0].as_str().unwrap();
    assert_eq!(
        wire::type_code(ours).to_string(),
        code,
        "{what}: type of {ours:?}"
    );
    match (ours, &theirs[1]) {
        (AMQPValue::FieldArray(a), Value::Array(items)) => {
            assert_eq!(a.as_slice().len(), items.len(), "{what}: array length");
            for (i, (o, t)) in a.as_slice().iter().zip(items).enumerate() {
                assert_types(&format!("{what}[{i}]"), o, t);
            }
        }
        (AMQPValue::FieldTable(t), Value::Object(m)) => assert_table(what, t, m),
        _ => {}
    }
}

fn assert_table(what: &str, ours: &FieldTable, theirs: &Map<String, Value>) {
    let keys: Vec<&str> = ours.inner().keys().map(|k| k.as_str()).collect();
    let mut expected: Vec<&str> = theirs.keys().map(String::as_str).collect();
    expected.sort();
    assert_eq!(
        keys, expected,
        "{what}: header names (none omitted, nulls too)"
    );
    for (k, v) in ours.inner() {
        assert_types(&format!("{what}.{}", k.as_str()), v, &theirs[k.as_str()]);
    }
}

#[test]
fn captured_messages_decode_to_the_envelope() {
    for (name, doc) in samples() {
        let props = captured_properties(&doc);
        let info = &doc["amqp_basic_get_delivery_info"];
        let env = wire::envelope(
            &props,
            body(&doc),
            &wire::Arrival {
                exchange: info["exchange"].as_str().unwrap(),
                routing_key: info["routing_key"].as_str().unwrap(),
                redelivered: info["redelivered"].as_bool().unwrap(),
            },
        );
        assert_eq!(
            Value::Object(env.headers.clone()),
            doc["application_headers"],
            "{name}: headers"
        );
        let bp = &doc["basic_properties"];
        assert_eq!(env.content_type.as_deref(), bp["content_type"].as_str());
        assert_eq!(
            env.content_encoding.as_deref(),
            bp["content_encoding"].as_str()
        );
        for key in [
            "correlation_id",
            "reply_to",
            "delivery_mode",
            "priority",
            "expiration",
        ] {
            assert_eq!(
                env.properties.get(key),
                bp.get(key),
                "{name}: property {key}"
            );
        }
        assert_eq!(
            env.delivery_info(),
            (String::new(), info["routing_key"].as_str().unwrap().into()),
            "{name}"
        );
        // The body is the raw JSON, and the task message decodes.
        assert_eq!(env.body, doc["body_raw_text"].as_str().unwrap().as_bytes());
        let msg = rust_celery_worker::protocol::TaskMessage::decode(
            env.content_type.as_deref(),
            &env.headers,
            &env.body,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(msg.args, doc["body_decoded"][0].as_array().unwrap().clone());
    }
}

#[test]
fn what_we_publish_carries_celerys_properties_and_field_types() {
    for (name, doc) in samples() {
        let headers = doc["application_headers"].as_object().unwrap().clone();
        let bp = doc["basic_properties"].as_object().unwrap();
        let mut properties = Map::new();
        for key in ["correlation_id", "reply_to", "delivery_mode", "priority"] {
            if let Some(v) = bp.get(key) {
                properties.insert(key.into(), v.clone());
            }
        }
        // Celery publishes `expires` seconds ahead; the property counts them.
        let now = match headers.get("expires").and_then(Value::as_str) {
            Some(at) => {
                let at = chrono::DateTime::parse_from_rfc3339(at).unwrap();
                let ttl: i64 = bp["expiration"].as_str().unwrap().parse().unwrap();
                (at - chrono::Duration::milliseconds(ttl)).with_timezone(&chrono::Utc)
            }
            None => chrono::Utc::now(),
        };
        let env = Envelope {
            body: body(&doc),
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            headers,
            properties,
        };
        let ours = wire::properties(&env, now);
        let theirs = captured_properties(&doc);
        assert_eq!(ours.content_type(), theirs.content_type(), "{name}");
        assert_eq!(ours.content_encoding(), theirs.content_encoding(), "{name}");
        assert_eq!(ours.delivery_mode(), theirs.delivery_mode(), "{name}");
        assert_eq!(ours.priority(), theirs.priority(), "{name}");
        assert_eq!(ours.correlation_id(), theirs.correlation_id(), "{name}");
        assert_eq!(ours.reply_to(), theirs.reply_to(), "{name}");
        assert_eq!(ours.expiration(), theirs.expiration(), "{name}");
        let typed = doc["application_headers_with_amqp_field_types"]
            .as_object()
            .unwrap();
        assert_table(&name, ours.headers().as_ref().unwrap(), typed);
        // And the header table as py-amqp parsed it equals ours.
        assert_eq!(
            wire::table_to_json(ours.headers().as_ref().unwrap()),
            wire::table_to_json(theirs.headers().as_ref().unwrap()),
            "{name}"
        );
    }
}
