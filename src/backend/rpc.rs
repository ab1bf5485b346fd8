//! Celery's RPC result backend (`rpc://`): each state goes as a message to
//! the caller's own reply queue (`reply_to` of the task message) through the
//! default exchange, tagged with the correlation id, where `AsyncResult.get()`
//! consumes it. Nothing is stored, so there are no chords (Celery refuses
//! them on this backend too) and `get_state` knows nothing.

use super::{BackendError, ChordJoin, ChordPart, ResultBackend};
use crate::broker::{Broker, BrokerError};
use crate::protocol::Envelope;
use crate::protocol::result_meta::ResultMeta;
use async_trait::async_trait;
use serde_json::{Map, json};
use std::sync::Arc;

/// Celery's `E_NO_CHORD_SUPPORT`, first line.
const NO_CHORDS: &str = "The \"rpc\" result backend does not support chords!";

pub struct RpcBackend {
    broker: Arc<dyn Broker>,
    /// `result_persistent`: delivery mode 2 instead of 1.
    persistent: bool,
}

impl RpcBackend {
    pub fn new(broker: Arc<dyn Broker>, persistent: bool) -> Self {
        RpcBackend { broker, persistent }
    }

    /// The reply message as Celery's `RPCBackend.store_result` publishes it.
    pub fn message(&self, meta: &ResultMeta, correlation_id: &str) -> Envelope {
        let mut properties = Map::new();
        properties.insert("correlation_id".into(), json!(correlation_id));
        properties.insert(
            "delivery_mode".into(),
            json!(if self.persistent { 2 } else { 1 }),
        );
        properties.insert("priority".into(), json!(0));
        Envelope {
            body: meta.to_json(chrono::Utc::now()).into_bytes(),
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            headers: Map::new(),
            properties,
        }
    }
}

fn from_broker(e: BrokerError) -> BackendError {
    match e {
        BrokerError::Connection(m) => BackendError::Connection(m),
        other => BackendError::Command(other.to_string()),
    }
}

#[async_trait]
impl ResultBackend for RpcBackend {
    async fn store(&self, meta: &ResultMeta) -> Result<bool, BackendError> {
        // No reply queue (sent with ignore_result, or by a non-Celery
        // producer): Celery's backend sends nothing either.
        let Some((to, correlation_id)) = &meta.reply else {
            return Ok(true);
        };
        let env = self.message(meta, correlation_id);
        self.broker
            .publish_to("", to, &env)
            .await
            .map_err(from_broker)?;
        Ok(true)
    }

    async fn chord_part_return(&self, _: &ChordPart) -> Result<Option<ChordJoin>, BackendError> {
        Err(BackendError::Command(NO_CHORDS.into()))
    }

    async fn set_chord_size(&self, _: &str, _: usize) -> Result<(), BackendError> {
        Err(BackendError::Command(NO_CHORDS.into()))
    }

    async fn has_group_result(&self, _: &str) -> Result<bool, BackendError> {
        Ok(false)
    }

    async fn chord_done(&self, _: &str, _: &str) -> Result<(), BackendError> {
        Ok(())
    }

    async fn get_state(&self, _: &str) -> Result<String, BackendError> {
        Ok("PENDING".into())
    }

    fn url(&self) -> String {
        "rpc://".into()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reply_body_is_celerys_meta_with_the_task_id() {
        let mut m = super::ResultMeta::new("t1", "SUCCESS", serde_json::json!(3));
        m.reply = Some(("oid".into(), "t1".into()));
        let v: serde_json::Value = serde_json::from_str(&m.to_json(chrono::Utc::now())).unwrap();
        assert_eq!(v["task_id"], "t1");
        assert_eq!(v["status"], "SUCCESS");
        assert_eq!(v["result"], 3);
        assert!(v["date_done"].is_string());
    }
}
