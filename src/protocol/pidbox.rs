//! kombu's pidbox messages (SPEC §8): remote-control requests a client
//! broadcasts on `celery.pidbox` and the replies a node sends back through
//! `reply.celery.pidbox`. Bytes ⇄ values only; no I/O.

use super::envelope::Envelope;
use serde_json::{Map, Value, json};

/// The fanout exchange requests are broadcast on (`<control_exchange>.pidbox`).
pub const EXCHANGE: &str = "celery.pidbox";
/// The direct exchange replies are routed through.
pub const REPLY_EXCHANGE: &str = "reply.celery.pidbox";

/// Where a reply goes: the caller's reply exchange and routing key (its oid).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyTo {
    pub exchange: String,
    pub routing_key: String,
}

/// One remote-control request, as `Mailbox._broadcast` sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlRequest {
    pub method: String,
    pub arguments: Map<String, Value>,
    /// Node names the request is for; `None` means every node.
    pub destination: Option<Vec<String>>,
    pub pattern: Option<String>,
    pub matcher: Option<String>,
    /// Present (with `reply_to`) only when the caller waits for replies.
    pub ticket: Option<String>,
    pub reply_to: Option<ReplyTo>,
    /// The sender's Lamport clock (header `clock`).
    pub clock: u64,
    /// Absolute unix deadline (header `expires`); 0 when none.
    pub expires: f64,
}

impl ControlRequest {
    /// Decodes the envelope of a pidbox request; the error says why it isn't one.
    pub fn from_envelope(env: &Envelope) -> Result<ControlRequest, String> {
        if let Some(ct) = env.content_type.as_deref()
            && ct != "application/json"
        {
            return Err(format!("content type {ct:?} is not accepted (json only)"));
        }
        let body = match env.headers.get("compression").and_then(Value::as_str) {
            Some(c) => super::compression::decompress(c, &env.body)
                .map_err(|e| format!("cannot decompress: {e}"))?,
            None => env.body.clone(),
        };
        let value: Value =
            serde_json::from_slice(&body).map_err(|e| format!("body is not JSON: {e}"))?;
        let Value::Object(mut obj) = value else {
            return Err("body is not a JSON object".into());
        };
        let method = match obj.remove("method") {
            Some(Value::String(m)) => m,
            _ => return Err("body has no method".into()),
        };
        let arguments = match obj.remove("arguments") {
            Some(Value::Object(a)) => a,
            None | Some(Value::Null) => Map::new(),
            Some(_) => return Err("arguments is not an object".into()),
        };
        let text = |v: Option<Value>| v.and_then(|v| v.as_str().map(str::to_string));
        let destination = match obj.remove("destination") {
            Some(Value::Array(names)) => Some(
                names
                    .into_iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect(),
            ),
            Some(Value::String(one)) => Some(vec![one]),
            _ => None,
        };
        let reply_to = match obj.remove("reply_to") {
            Some(Value::Object(r)) => Some(ReplyTo {
                exchange: r
                    .get("exchange")
                    .and_then(Value::as_str)
                    .unwrap_or(REPLY_EXCHANGE)
                    .to_string(),
                routing_key: r
                    .get("routing_key")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            }),
            _ => None,
        };
        Ok(ControlRequest {
            method,
            arguments,
            destination,
            pattern: text(obj.remove("pattern")),
            matcher: text(obj.remove("matcher")),
            ticket: text(obj.remove("ticket")),
            reply_to,
            clock: env
                .headers
                .get("clock")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            expires: env
                .headers
                .get("expires")
                .and_then(Value::as_f64)
                .unwrap_or(0.0),
        })
    }

    /// kombu's `Node.handle_message` selection: by destination list, else by
    /// pattern + matcher, else everyone.
    pub fn is_for(&self, hostname: &str) -> bool {
        if let Some(dest) = self.destination.as_ref().filter(|d| !d.is_empty()) {
            return dest.iter().any(|d| d == hostname);
        }
        match (&self.pattern, &self.matcher) {
            (Some(p), Some(m)) if !p.is_empty() => matches(hostname, p, m),
            _ => true,
        }
    }

    /// A reply is wanted (kombu: `reply_to and handle_call or handle_cast`).
    pub fn wants_reply(&self) -> bool {
        self.reply_to.is_some()
    }
}

/// kombu's `matcher.match`: `glob` (fnmatch) or `pcre` (a regex, which we
/// support in its common glob-like subset: literal text, `.`, `.*`, anchors).
fn matches(hostname: &str, pattern: &str, matcher: &str) -> bool {
    match matcher {
        "glob" => glob(hostname.as_bytes(), pattern.as_bytes()),
        "pcre" => {
            let p = pattern.trim_start_matches('^').trim_end_matches('$');
            let g = p.replace(".*", "*").replace('.', "?");
            glob(hostname.as_bytes(), g.as_bytes())
        }
        _ => false,
    }
}

/// fnmatch with `*` and `?` (no character classes).
fn glob(text: &[u8], pat: &[u8]) -> bool {
    match (pat.first(), text.first()) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some(b'*'), _) => glob(text, &pat[1..]) || (!text.is_empty() && glob(&text[1..], pat)),
        (Some(b'?'), Some(_)) => glob(&text[1..], &pat[1..]),
        (Some(p), Some(t)) if p == t => glob(&text[1..], &pat[1..]),
        _ => false,
    }
}

/// A kombu JSON envelope with the given routing and headers.
pub fn envelope(
    body: Vec<u8>,
    headers: Map<String, Value>,
    exchange: &str,
    routing_key: &str,
    delivery_mode: u8,
) -> Envelope {
    let mut properties = Map::new();
    properties.insert("delivery_mode".into(), json!(delivery_mode));
    properties.insert(
        "delivery_info".into(),
        json!({"exchange": exchange, "routing_key": routing_key}),
    );
    properties.insert("priority".into(), json!(0));
    properties.insert("body_encoding".into(), json!("base64"));
    properties.insert(
        "delivery_tag".into(),
        json!(uuid::Uuid::new_v4().to_string()),
    );
    Envelope {
        body,
        content_type: Some("application/json".into()),
        content_encoding: Some("utf-8".into()),
        headers,
        properties,
    }
}

/// The reply envelope: body `{"<nodename>": reply}`, headers `ticket` and `clock`.
pub fn reply_envelope(
    hostname: &str,
    reply: Value,
    reply_to: &ReplyTo,
    ticket: &str,
    clock: u64,
) -> Envelope {
    let mut body = Map::new();
    body.insert(hostname.to_string(), reply);
    let mut headers = Map::new();
    headers.insert("ticket".into(), json!(ticket));
    headers.insert("clock".into(), json!(clock));
    envelope(
        Value::Object(body).to_string().into_bytes(),
        headers,
        &reply_to.exchange,
        &reply_to.routing_key,
        1,
    )
}

/// A request envelope, as `Mailbox._broadcast` publishes it (used by mingle).
pub fn request_envelope(
    method: &str,
    arguments: Value,
    reply_to: Option<&ReplyTo>,
    ticket: Option<&str>,
    clock: u64,
    expires: f64,
) -> Envelope {
    let mut body = json!({
        "method": method, "arguments": arguments,
        "destination": null, "pattern": null, "matcher": null,
    });
    if let (Some(r), Some(t)) = (reply_to, ticket) {
        body["ticket"] = json!(t);
        body["reply_to"] = json!({"exchange": r.exchange, "routing_key": r.routing_key});
    }
    let mut headers = Map::new();
    headers.insert("clock".into(), json!(clock));
    headers.insert("expires".into(), json!(expires));
    envelope(body.to_string().into_bytes(), headers, EXCHANGE, "", 2)
}

/// The node replies in a reply envelope: `(nodename, reply)` pairs.
pub fn reply_body(env: &Envelope) -> Vec<(String, Value)> {
    match serde_json::from_slice::<Value>(&env.body) {
        Ok(Value::Object(m)) => m.into_iter().collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> ControlRequest {
        let env = request_envelope("x", json!({}), None, None, 1, 0.0);
        let env = Envelope {
            body: body.to_string().into_bytes(),
            ..env
        };
        ControlRequest::from_envelope(&env).unwrap()
    }

    #[test]
    fn destination_and_pattern_select_nodes() {
        let r = request(json!({"method": "ping", "destination": ["a@h"]}));
        assert!(r.is_for("a@h") && !r.is_for("b@h"));
        let r = request(json!({"method": "ping", "destination": null}));
        assert!(r.is_for("anyone@h"));
        let r = request(json!({"method": "ping", "pattern": "w*@h", "matcher": "glob"}));
        assert!(r.is_for("w1@h") && !r.is_for("x@h"));
        let r = request(json!({"method": "ping", "pattern": "^w.*@h$", "matcher": "pcre"}));
        assert!(r.is_for("w1@h") && !r.is_for("x@h"));
    }

    #[test]
    fn refuses_non_requests() {
        let env = request_envelope("ping", json!({}), None, None, 1, 0.0);
        let bad = Envelope {
            body: b"[1]".to_vec(),
            ..env.clone()
        };
        assert!(ControlRequest::from_envelope(&bad).is_err());
        let pickled = Envelope {
            content_type: Some("application/x-python-serialize".into()),
            ..env
        };
        assert!(
            ControlRequest::from_envelope(&pickled)
                .unwrap_err()
                .contains("not accepted")
        );
    }
}
