//! kombu's Redis envelope: the JSON object stored in a queue list
//! (`body`, `content-encoding`, `content-type`, `headers`, `properties`).

use super::message::DecodeError;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

/// One kombu message as the Redis transport stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The body after `body_encoding` (base64) is undone; still compressed if
    /// `headers.compression` is set.
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub headers: Map<String, Value>,
    pub properties: Map<String, Value>,
}

impl Envelope {
    /// Parses the stored JSON. Errors say why the bytes are not an envelope.
    pub fn parse(raw: &[u8]) -> Result<Envelope, DecodeError> {
        let value: Value = serde_json::from_slice(raw)
            .map_err(|e| DecodeError::Envelope(format!("not JSON: {e}")))?;
        let Value::Object(mut obj) = value else {
            return Err(DecodeError::Envelope("not a JSON object".into()));
        };
        let headers = match obj.remove("headers") {
            Some(Value::Object(h)) => h,
            None | Some(Value::Null) => Map::new(),
            Some(_) => return Err(DecodeError::Envelope("headers is not an object".into())),
        };
        let properties = match obj.remove("properties") {
            Some(Value::Object(p)) => p,
            None | Some(Value::Null) => Map::new(),
            Some(_) => return Err(DecodeError::Envelope("properties is not an object".into())),
        };
        let body_text = match obj.remove("body") {
            Some(Value::String(s)) => s,
            None | Some(Value::Null) => String::new(),
            Some(_) => return Err(DecodeError::Envelope("body is not a string".into())),
        };
        let body = match properties.get("body_encoding").and_then(Value::as_str) {
            Some("base64") => {
                STANDARD
                    .decode(body_text.as_bytes())
                    .map_err(|e| DecodeError::Body {
                        reason: format!("body is not valid base64: {e}"),
                        id: header_str(&headers, "id"),
                        task: header_str(&headers, "task"),
                    })?
            }
            _ => body_text.into_bytes(),
        };
        let text = |v: Option<Value>| v.and_then(|v| v.as_str().map(str::to_string));
        Ok(Envelope {
            body,
            content_type: text(obj.remove("content-type")),
            content_encoding: text(obj.remove("content-encoding")),
            headers,
            properties,
        })
    }

    /// Serialises as kombu does on publish (base64 body).
    pub fn to_json(&self) -> String {
        let mut props = self.properties.clone();
        props.insert("body_encoding".into(), json!("base64"));
        let obj = json!({
            "body": STANDARD.encode(&self.body),
            "content-encoding": self.content_encoding,
            "content-type": self.content_type,
            "headers": self.headers,
            "properties": props,
        });
        obj.to_string()
    }

    /// `properties.delivery_tag`: the key of this message in `unacked`.
    pub fn delivery_tag(&self) -> Option<&str> {
        self.properties.get("delivery_tag").and_then(Value::as_str)
    }

    /// `properties.priority` as kombu reads it: an int, else 0.
    pub fn priority(&self) -> i64 {
        self.properties
            .get("priority")
            .and_then(Value::as_i64)
            .unwrap_or(0)
    }

    /// `(exchange, routing_key)` from `properties.delivery_info`.
    pub fn delivery_info(&self) -> (String, String) {
        let di = self.properties.get("delivery_info");
        let get = |k: &str| {
            di.and_then(|d| d.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        (get("exchange"), get("routing_key"))
    }

    pub fn redelivered(&self) -> bool {
        let flag = |v: Option<&Value>| v.and_then(Value::as_bool).unwrap_or(false);
        flag(self.headers.get("redelivered"))
            || flag(
                self.properties
                    .get("delivery_info")
                    .and_then(|d| d.get("redelivered")),
            )
    }
}

fn header_str(headers: &Map<String, Value>, key: &str) -> Option<String> {
    headers.get(key).and_then(Value::as_str).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_base64_body() {
        let raw = br#"{"body": "W1sxLCAyXSwge30sIHt9XQ==", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"task": "t"}, "properties": {"body_encoding": "base64", "delivery_tag": "abc", "priority": 3, "delivery_info": {"exchange": "", "routing_key": "celery"}}}"#;
        let env = Envelope::parse(raw).unwrap();
        assert_eq!(env.body, b"[[1, 2], {}, {}]");
        assert_eq!(env.delivery_tag(), Some("abc"));
        assert_eq!(env.priority(), 3);
        assert_eq!(env.delivery_info(), ("".into(), "celery".into()));
        assert_eq!(Envelope::parse(env.to_json().as_bytes()).unwrap(), env);
    }

    #[test]
    fn rejects_non_envelopes() {
        assert!(matches!(
            Envelope::parse(b"garbage"),
            Err(DecodeError::Envelope(_))
        ));
        assert!(matches!(
            Envelope::parse(b"[1]"),
            Err(DecodeError::Envelope(_))
        ));
    }
}
