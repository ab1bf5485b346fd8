//! Mingle: at start-up a worker asks the nodes already running for their
//! revoked ids (`hello`), and answers the same question for newcomers.

use crate::protocol::pidbox::{self, ReplyTo};
use crate::worker::Shared;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;

/// How long start-up waits for neighbours' replies (Celery: 1 s).
const HELLO_TIMEOUT: Duration = Duration::from_secs(1);

/// The `hello` command: take the sender's revokes, send ours (ids only,
/// oldest first) with our clock. A node ignores its own hello.
pub(crate) fn hello(shared: &Arc<Shared>, args: &Map<String, Value>) -> Value {
    let from = args.get("from_node").and_then(Value::as_str).unwrap_or("");
    if from == shared.config.hostname {
        return Value::Null;
    }
    tracing::info!("sync with {from}");
    if let Some(revoked) = args.get("revoked") {
        shared.state.merge_revoked(&revoked_ids(revoked));
    }
    json!({"revoked": shared.state.revoked_ids(), "clock": shared.state.clock_forward()})
}

/// Ids from a `revoked` value: a list of ids, or a mapping keyed by id
/// (a `LimitedSet`'s `_data`); stamps are dropped (Celery's `merge_revoked`).
fn revoked_ids(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        Value::Object(m) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// The start-up step: broadcast `hello`, merge what the neighbours answer.
pub(crate) async fn sync(shared: &Arc<Shared>) {
    tracing::info!("mingle: searching for neighbors");
    let oid = uuid::Uuid::new_v4().to_string();
    let ticket = uuid::Uuid::new_v4().to_string();
    let reply_to = ReplyTo {
        exchange: pidbox::REPLY_EXCHANGE.into(),
        routing_key: oid.clone(),
    };
    let clock = shared.state.clock_forward();
    let expires = crate::events::unix_now() + HELLO_TIMEOUT.as_secs_f64();
    let request = pidbox::request_envelope(
        "hello",
        json!({"from_node": shared.config.hostname, "revoked": shared.state.revoked_ids()}),
        Some(&reply_to),
        Some(&ticket),
        clock,
        expires,
    );
    let asked = async {
        crate::broker::fanout_of(&*shared.broker)?
            .collect_replies(
                pidbox::REPLY_EXCHANGE,
                &oid,
                &request,
                pidbox::EXCHANGE,
                HELLO_TIMEOUT,
            )
            .await
    };
    let replies = match asked.await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("mingle: cannot reach the neighbours: {e}");
            return;
        }
    };
    let mut nodes = Vec::new();
    for env in replies {
        if env.headers.get("ticket").and_then(Value::as_str) != Some(ticket.as_str()) {
            continue;
        }
        for (node, reply) in pidbox::reply_body(&env) {
            if node == shared.config.hostname || reply.is_null() {
                continue;
            }
            if let Some(revoked) = reply.get("revoked") {
                shared.state.merge_revoked(&revoked_ids(revoked));
            }
            if let Some(c) = reply.get("clock").and_then(Value::as_u64) {
                shared.state.clock_adjust(c);
            }
            nodes.push(node);
        }
    }
    if nodes.is_empty() {
        tracing::info!("mingle: all alone");
    } else {
        tracing::info!("mingle: sync with {} nodes", nodes.len());
        for n in &nodes {
            tracing::info!("mingle: processing reply from {n}");
        }
        tracing::info!("mingle: sync complete");
        shared.persist_revoked();
    }
}
