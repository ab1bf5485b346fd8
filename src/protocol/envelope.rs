//! kombu's Redis envelope: the JSON object stored in a queue list
//! (`body`, `content-encoding`, `content-type`, `headers`, `properties`).

use super::message::DecodeError;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

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
    ///
    /// Read straight into the five fields, without a map for the top level
    /// or a copy of the base64 body: 14 % of the worker's CPU per task went
    /// to this parse. Whatever that reading refuses (not an object, a field
    /// of another type, a key twice) is read again as a `Value`, which gives
    /// kombu's answer and the reason.
    pub fn parse(raw: &[u8]) -> Result<Envelope, DecodeError> {
        // serde would also read a struct from a JSON array, and it skips
        // the fields it doesn't keep without checking their UTF-8 (which
        // json.loads refuses): both are left to the `Value` reading.
        let text = std::str::from_utf8(raw)
            .ok()
            .filter(|t| t.trim_ascii_start().starts_with('{'));
        match text.and_then(|t| serde_json::from_str::<Wire>(t).ok()) {
            Some(w) => Envelope::finish(
                w.body.as_deref().unwrap_or_default(),
                w.content_type,
                w.content_encoding,
                w.headers.unwrap_or_default(),
                w.properties.unwrap_or_default(),
            ),
            None => Envelope::parse_value(raw),
        }
    }

    /// The reading through a `Value`: any JSON object, each field checked.
    pub(crate) fn parse_value(raw: &[u8]) -> Result<Envelope, DecodeError> {
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
        let text = |v: Option<Value>| v.and_then(|v| v.as_str().map(str::to_string));
        Envelope::finish(
            &body_text,
            text(obj.remove("content-type")),
            text(obj.remove("content-encoding")),
            headers,
            properties,
        )
    }

    /// Undoes `body_encoding`.
    fn finish(
        body_text: &str,
        content_type: Option<String>,
        content_encoding: Option<String>,
        headers: Map<String, Value>,
        properties: Map<String, Value>,
    ) -> Result<Envelope, DecodeError> {
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
            _ => body_text.as_bytes().to_vec(),
        };
        Ok(Envelope {
            body,
            content_type,
            content_encoding,
            headers,
            properties,
        })
    }

    /// Serialises as kombu does on publish (base64 body), compact.
    ///
    /// Written straight out into one buffer: building a `Value` copied the
    /// base64 body and the properties, then scanned the base64 for
    /// characters to escape (it has none). On `-E` that scan alone was 2.8 %
    /// of the worker's CPU.
    pub fn to_json(&self) -> String {
        let b64 = base64::encoded_len(self.body.len(), true).expect("body fits in memory");
        let mut out = Vec::with_capacity(b64 + 1024);
        out.extend_from_slice(b"{\"body\":\"");
        let at = out.len();
        out.resize(at + b64, 0);
        STANDARD
            .encode_slice(&self.body, &mut out[at..])
            .expect("sized by encoded_len");
        out.extend_from_slice(b"\",\"content-encoding\":");
        write_json(&mut out, &self.content_encoding);
        out.extend_from_slice(b",\"content-type\":");
        write_json(&mut out, &self.content_type);
        out.extend_from_slice(b",\"headers\":");
        write_json(&mut out, &self.headers);
        // The properties with `body_encoding` set to base64, in its place if
        // present, else last (what `insert` into the map did).
        out.extend_from_slice(b",\"properties\":{");
        for (i, (k, v)) in self.properties.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json(&mut out, k);
            out.push(b':');
            if k == "body_encoding" {
                out.extend_from_slice(b"\"base64\"");
            } else {
                write_json(&mut out, v);
            }
        }
        if !self.properties.contains_key("body_encoding") {
            if !self.properties.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(b"\"body_encoding\":\"base64\"");
        }
        out.extend_from_slice(b"}}");
        String::from_utf8(out).expect("JSON text is UTF-8")
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

/// The envelope as kombu writes it; `body` borrowed unless it has escapes.
/// A field of another type fails the whole reading (then `parse_value`).
#[derive(serde::Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    body: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "content-type", default)]
    content_type: Option<String>,
    #[serde(rename = "content-encoding", default)]
    content_encoding: Option<String>,
    #[serde(default)]
    headers: Option<Map<String, Value>>,
    #[serde(default)]
    properties: Option<Map<String, Value>>,
}

/// Appends `value` as compact JSON.
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("a string-keyed value serialises");
}

fn header_str(headers: &Map<String, Value>, key: &str) -> Option<String> {
    headers.get(key).and_then(Value::as_str).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn the_direct_reading_matches_the_value_reading() {
        let raw = br#"{"body": "W1sxLCAyXSwge30sIHt9XQ==", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"task": "t", "id": "x"}, "properties": {"body_encoding": "base64", "delivery_tag": "abc"}, "extra": [1, {"a": null}]}"#;
        assert_eq!(Envelope::parse(raw), Envelope::parse_value(raw));
        // An escaped body can't be borrowed; a number for content-type is no type.
        let odd = br#"{"body": "a\"b", "content-type": 5, "headers": null}"#;
        assert_eq!(Envelope::parse(odd).unwrap().body, b"a\"b");
        assert_eq!(Envelope::parse(odd), Envelope::parse_value(odd));
        // A struct from an array, and bad UTF-8 in a field nobody keeps: refused.
        for bad in [
            &br#"["", null, null, {}, {}]"#[..],
            b"{\"x\": \"\xff\", \"body\": \"\"}",
        ] {
            assert_eq!(
                Envelope::parse(bad).unwrap_err().to_string(),
                Envelope::parse_value(bad).unwrap_err().to_string()
            );
        }
        // json.loads reads 1e400 as inf: the message is kombu's to take.
        assert!(Envelope::parse(br#"{"x": 1e400, "body": ""}"#).is_ok());
    }

    /// The serialisation through a `Value`, as `to_json` was written before.
    fn to_json_via_value(env: &Envelope) -> String {
        let mut props = env.properties.clone();
        props.insert("body_encoding".into(), json!("base64"));
        json!({
            "body": STANDARD.encode(&env.body),
            "content-encoding": env.content_encoding,
            "content-type": env.content_type,
            "headers": env.headers,
            "properties": props,
        })
        .to_string()
    }

    #[test]
    fn to_json_writes_what_the_value_serialisation_wrote() {
        let map = |v: Value| v.as_object().unwrap().clone();
        let cases = [
            map(json!({})),
            map(json!({"delivery_tag": "t", "body_encoding": "utf-8", "priority": 0})),
            map(json!({"body_encoding": "base64"})),
            map(
                json!({"correlation_id": "x\"y\u{e9}", "delivery_info": {"exchange": "", "routing_key": "q"}, "n": 1.5e300}),
            ),
        ];
        for (i, properties) in cases.into_iter().enumerate() {
            let env = Envelope {
                body: (0..=255u8).cycle().take(i * 97).collect(),
                content_type: (i % 2 == 0).then(|| "application/json".into()),
                content_encoding: (i != 1).then(|| "utf-8".into()),
                headers: map(
                    json!({"task": "t", "args": [1, null, "\n"], "eta": null, "k\u{1f600}": {"a": [true]}}),
                ),
                properties,
            };
            assert_eq!(env.to_json(), to_json_via_value(&env));
            assert_eq!(
                Envelope::parse(env.to_json().as_bytes()).unwrap().body,
                env.body
            );
        }
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
