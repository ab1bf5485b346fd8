//! Property tests: no input makes the decoder panic — arbitrary bytes,
//! envelopes with arbitrary bodies and headers, and mutated real captures.

use base64::Engine;
use proptest::prelude::*;
use rust_celery_worker::protocol::{Envelope, TaskMessage};
use serde_json::{Map, Value, json};

fn decode_all(raw: &[u8]) {
    if let Ok(env) = Envelope::parse(raw) {
        let _ = TaskMessage::decode(env.content_type.as_deref(), &env.headers, &env.body);
        let _ = env.delivery_tag();
        let _ = env.delivery_info();
        let _ = env.priority();
    }
}

fn captured_raw() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/celery-wire/task_message_chord.json"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["messages"][0]["raw"]
        .as_str()
        .unwrap()
        .as_bytes()
        .to_vec()
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        Just(json!({"__type__": "datetime", "__value__": "garbage"})),
        Just(json!({"__type__": "uuid", "__value__": {"hex": 5}})),
        Just(json!({"__type__": "nope", "__value__": 1})),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((".{0,6}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&raw);
    }

    #[test]
    fn envelopes_with_arbitrary_parts_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..256),
        body_json in json_value(),
        headers in json_value(),
        task_header in prop::option::of(json_value()),
        eta in json_value(),
        compressed in any::<bool>(),
        content_type in prop_oneof![Just("application/json"), Just("application/x-python-serialize"), Just("text/plain")],
    ) {
        let mut h = match headers { Value::Object(m) => m, _ => Map::new() };
        if let Some(t) = task_header { h.insert("task".into(), t); }
        h.insert("eta".into(), eta);
        if compressed { h.insert("compression".into(), json!("application/x-gzip")); }
        for b in [body.clone(), serde_json::to_vec(&body_json).unwrap()] {
            let env = json!({
                "body": base64::engine::general_purpose::STANDARD.encode(&b),
                "content-type": content_type,
                "headers": h,
                "properties": {"body_encoding": "base64", "delivery_tag": "t", "priority": "high"},
            });
            decode_all(env.to_string().as_bytes());
        }
    }

    #[test]
    fn mutated_captures_never_panic(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut raw = captured_raw();
        for (i, b) in flips {
            let at = i.index(raw.len());
            raw[at] = b;
        }
        decode_all(&raw);
    }
}
