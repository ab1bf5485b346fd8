//! Result backends: where task states go so `AsyncResult` can read them.

pub mod redis;

use crate::protocol::result_meta::ResultMeta;
use async_trait::async_trait;

/// Why a state could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Connection lost: retrying after a reconnect can succeed.
    #[error("result backend connection lost: {0}")]
    Connection(String),
    #[error("result backend error: {0}")]
    Command(String),
}

impl BackendError {
    pub fn is_connection(&self) -> bool {
        matches!(self, BackendError::Connection(_))
    }
}

/// Stores task states in Celery's format.
#[async_trait]
pub trait ResultBackend: Send + Sync {
    /// Stores and announces a state. Never overwrites a stored SUCCESS
    /// (returns `Ok(false)` then).
    async fn store(&self, meta: &ResultMeta) -> Result<bool, BackendError>;
    /// The backend URL with the password masked.
    fn url(&self) -> String;
}
