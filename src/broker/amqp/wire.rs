//! The envelope ⇄ AMQP 0-9-1 mapping (SPEC §5.3), free of I/O.
//!
//! On RabbitMQ the envelope's parts are basic properties and the raw body
//! (no base64); the header table carries the v2 headers with py-amqp's field
//! types, so a Python consumer reads back exactly what Celery wrote.

use crate::protocol::Envelope;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Number, Value, json};

/// Where a delivery came from, as `basic.deliver` says.
pub struct Arrival<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub redelivered: bool,
}

/// A delivered message as the transport-neutral envelope the pipeline reads.
/// `properties` gets what kombu's `Message` exposes: `correlation_id`,
/// `reply_to`, `delivery_mode`, `priority` (0 when absent), `expiration`, and
/// `delivery_info`.
pub fn envelope(props: &BasicProperties, body: Vec<u8>, arrival: &Arrival<'_>) -> Envelope {
    let mut properties = Map::new();
    let text = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_str().to_string());
    if let Some(id) = text(props.correlation_id()) {
        properties.insert("correlation_id".into(), Value::String(id));
    }
    if let Some(to) = text(props.reply_to()) {
        properties.insert("reply_to".into(), Value::String(to));
    }
    if let Some(mode) = props.delivery_mode() {
        properties.insert("delivery_mode".into(), json!(mode));
    }
    properties.insert("priority".into(), json!(props.priority().unwrap_or(0)));
    for (key, value) in [
        ("expiration", props.expiration()),
        ("app_id", props.app_id()),
        ("message_id", props.message_id()),
        ("type", props.kind()),
        ("user_id", props.user_id()),
        ("cluster_id", props.cluster_id()),
    ] {
        if let Some(v) = text(value) {
            properties.insert(key.into(), Value::String(v));
        }
    }
    if let Some(t) = props.timestamp() {
        properties.insert("timestamp".into(), json!(t));
    }
    properties.insert(
        "delivery_info".into(),
        json!({
            "exchange": arrival.exchange,
            "routing_key": arrival.routing_key,
            "redelivered": arrival.redelivered,
        }),
    );
    let headers = match props.headers() {
        Some(table) => table_to_json(table),
        None => Map::new(),
    };
    // py-amqp's `message.properties` carries the header table too, and
    // Celery's `request.properties` shows it.
    properties.insert("application_headers".into(), Value::Object(headers.clone()));
    Envelope {
        body,
        content_type: text(props.content_type()),
        content_encoding: text(props.content_encoding()),
        headers,
        properties,
    }
}

/// Basic properties for publishing `env` as Celery does: content type and
/// encoding, the header table, `delivery_mode` (2 unless the envelope says
/// otherwise), `priority` (always sent), `correlation_id`, `reply_to`, and
/// `expiration` in ms until the `expires` header (kombu's `expiration` from
/// `expires`), computed against `now`.
pub fn properties(env: &Envelope, now: chrono::DateTime<chrono::Utc>) -> BasicProperties {
    let p = &env.properties;
    let mut props = BasicProperties::default()
        .with_content_type(
            env.content_type
                .as_deref()
                .unwrap_or("application/json")
                .into(),
        )
        .with_content_encoding(env.content_encoding.as_deref().unwrap_or("utf-8").into())
        .with_headers(json_to_table(&env.headers))
        .with_delivery_mode(
            p.get("delivery_mode")
                .and_then(Value::as_u64)
                .map_or(2, |m| m.min(255) as u8),
        )
        .with_priority(env.priority().clamp(0, 255) as u8);
    let text = |k: &str| p.get(k).and_then(Value::as_str);
    if let Some(id) = text("correlation_id").or_else(|| env.headers.get("id")?.as_str()) {
        props = props.with_correlation_id(id.into());
    }
    if let Some(to) = text("reply_to") {
        props = props.with_reply_to(to.into());
    }
    let expiration = text("expiration").map(str::to_string).or_else(|| {
        let expires = env.headers.get("expires")?.as_str()?;
        let at = chrono::DateTime::parse_from_rfc3339(expires).ok()?;
        let ms = (at.with_timezone(&chrono::Utc) - now)
            .num_milliseconds()
            .max(0);
        Some(ms.to_string())
    });
    if let Some(exp) = expiration {
        props = props.with_expiration(exp.into());
    }
    // The other basic properties a producer may set (`user_id` is left out:
    // RabbitMQ refuses one that isn't the connection's user).
    if let Some(v) = text("app_id") {
        props = props.with_app_id(v.into());
    }
    if let Some(v) = text("message_id") {
        props = props.with_message_id(v.into());
    }
    if let Some(v) = text("type") {
        props = props.with_type(v.into());
    }
    if let Some(t) = p.get("timestamp").and_then(Value::as_u64) {
        props = props.with_timestamp(t);
    }
    props
}

/// A header table as JSON, every AMQP field type decoded as py-amqp does
/// (`Decimal` and timestamps become numbers; byte arrays text).
pub fn table_to_json(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), value_to_json(v)))
        .collect()
}

fn value_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Float(f) => float(f64::from(*f)),
        AMQPValue::Double(f) => float(*f),
        AMQPValue::DecimalValue(d) => float(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(t) => Value::Object(table_to_json(t)),
        AMQPValue::ByteArray(b) => Value::String(String::from_utf8_lossy(b.as_slice()).into()),
        AMQPValue::Void => Value::Null,
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// JSON headers as a field table with py-amqp's `_write_item` types:
/// `S` strings, `t` bools, `I`/`L` ints (32-bit when they fit), `d` floats,
/// `F` objects, `A` arrays, `V` null (never omitted).
pub fn json_to_table(map: &Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in map {
        table.insert(k.as_str().into(), json_to_value(v));
    }
    table
}

fn json_to_value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                match i32::try_from(i) {
                    Ok(small) => AMQPValue::LongInt(small),
                    Err(_) => AMQPValue::LongLongInt(i),
                }
            } else if let Some(u) = n.as_u64() {
                // Beyond i64: py-amqp can't write it either; keep the magnitude.
                AMQPValue::Double(u as f64)
            } else {
                AMQPValue::Double(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(json_to_value).collect::<Vec<_>>(),
        )),
        Value::Object(m) => AMQPValue::FieldTable(json_to_table(m)),
    }
}

/// The one-letter py-amqp type code of a value (for golden tests and logs).
pub fn type_code(v: &AMQPValue) -> char {
    match v {
        AMQPValue::Boolean(_) => 't',
        AMQPValue::ShortShortInt(_) => 'b',
        AMQPValue::ShortShortUInt(_) => 'B',
        AMQPValue::ShortInt(_) => 's',
        AMQPValue::ShortUInt(_) => 'u',
        AMQPValue::LongInt(_) => 'I',
        AMQPValue::LongUInt(_) => 'i',
        AMQPValue::LongLongInt(_) => 'L',
        AMQPValue::Float(_) => 'f',
        AMQPValue::Double(_) => 'd',
        AMQPValue::DecimalValue(_) => 'D',
        AMQPValue::ShortString(_) => 's',
        AMQPValue::LongString(_) => 'S',
        AMQPValue::FieldArray(_) => 'A',
        AMQPValue::Timestamp(_) => 'T',
        AMQPValue::FieldTable(_) => 'F',
        AMQPValue::ByteArray(_) => 'x',
        AMQPValue::Void => 'V',
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_take_the_narrowest_py_amqp_type() {
        assert_eq!(type_code(&json_to_value(&json!(0))), 'I');
        assert_eq!(type_code(&json_to_value(&json!(2147483647))), 'I');
        assert_eq!(type_code(&json_to_value(&json!(2147483648i64))), 'L');
        assert_eq!(type_code(&json_to_value(&json!(-2147483649i64))), 'L');
        assert_eq!(type_code(&json_to_value(&json!(1.5))), 'd');
        assert_eq!(type_code(&json_to_value(&Value::Null)), 'V');
    }

    #[test]
    fn envelope_round_trips_through_properties() {
        let mut headers = Map::new();
        headers.insert("id".into(), json!("abc"));
        headers.insert("timelimit".into(), json!([null, 3]));
        headers.insert("stamps".into(), json!({}));
        let mut props_in = Map::new();
        props_in.insert("reply_to".into(), json!("oid"));
        props_in.insert("priority".into(), json!(7));
        let env = Envelope {
            body: b"[[1], {}, {}]".to_vec(),
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            headers: headers.clone(),
            properties: props_in,
        };
        let props = super::properties(&env, chrono::Utc::now());
        assert_eq!(props.correlation_id().as_ref().unwrap().as_str(), "abc");
        assert_eq!(*props.delivery_mode(), Some(2));
        assert_eq!(props.expiration(), &None);
        let back = envelope(
            &props,
            env.body.clone(),
            &Arrival {
                exchange: "",
                routing_key: "celery",
                redelivered: true,
            },
        );
        assert_eq!(back.headers, headers);
        assert_eq!(back.priority(), 7);
        assert!(back.redelivered());
        assert_eq!(back.delivery_info(), (String::new(), "celery".into()));
        assert_eq!(back.body, env.body);
    }

    #[test]
    fn expiration_counts_down_to_expires() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-21T05:04:35.112316+00:00")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let mut headers = Map::new();
        headers.insert("expires".into(), json!("2026-11-21T05:05:35.112316+00:00"));
        let env = Envelope {
            body: vec![],
            content_type: None,
            content_encoding: None,
            headers,
            properties: Map::new(),
        };
        let props = super::properties(&env, now);
        assert_eq!(props.expiration().as_ref().unwrap().as_str(), "60000");
    }
}
