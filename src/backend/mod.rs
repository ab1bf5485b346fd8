//! Result backends: where task states go so `AsyncResult` can read them.

mod chord_lua;
pub mod redis;
pub mod rpc;

use crate::protocol::result_meta::ResultMeta;
use async_trait::async_trait;

/// Why a state could not be stored.
#[derive(Debug, Clone, thiserror::Error)]
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

/// One finished header task of a chord.
#[derive(Debug, Clone)]
pub struct ChordPart {
    pub group_id: String,
    pub task_id: String,
    pub group_index: Option<i64>,
    pub state: String,
    pub result: serde_json::Value,
    /// `options.chord_size` of the chord body, when the client sent one.
    pub chord_size: Option<u64>,
}

/// All header results of a chord, handed to the worker that won the claim.
#[derive(Debug, Clone)]
pub struct ChordJoin {
    pub token: String,
    /// `(task_id, state, result)` in header order.
    pub results: Vec<(String, String, serde_json::Value)>,
}

/// Stores task states in Celery's format.
#[async_trait]
pub trait ResultBackend: Send + Sync {
    /// Stores and announces a state. Never overwrites a stored SUCCESS
    /// (returns `Ok(false)` then).
    async fn store(&self, meta: &ResultMeta) -> Result<bool, BackendError>;
    /// Records a chord header part (Celery's `on_chord_part_return`); returns
    /// the joined results if this part completed the chord and we won the claim.
    async fn chord_part_return(&self, part: &ChordPart) -> Result<Option<ChordJoin>, BackendError>;
    /// Celery's `set_chord_size`: a new run of chord `group_id` with `size`
    /// parts (its claim cleared).
    async fn set_chord_size(&self, group_id: &str, size: usize) -> Result<(), BackendError>;
    /// Whether a `GroupResult` is saved for `group_id` (a chord header with
    /// groups in it: its results keep their structure).
    async fn has_group_result(&self, group_id: &str) -> Result<bool, BackendError>;
    /// After the callback was sent: clear the join state, mark the chord done.
    async fn chord_done(&self, group_id: &str, token: &str) -> Result<(), BackendError>;
    /// The stored state of a task (`PENDING` when nothing is stored), as
    /// `backend.get_state` reads it.
    async fn get_state(&self, task_id: &str) -> Result<String, BackendError>;
    /// The backend URL with the password masked.
    fn url(&self) -> String;
}
