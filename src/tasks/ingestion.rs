//! `app.workers.tasks.task_file_ingestion(file_paths, source_name="documents")`.
//!
//! Reads each file, splits it into overlapping chunks ([`super::ingest`]) and
//! stores them in the result backend's Redis, where a user reads them back:
//!
//! * `ingest:<source_name>:files` — set of ingested file paths;
//! * `ingest:<source_name>:chunks:<file_path>` — list of JSON objects
//!   `{"file", "index", "text", "source"}` in order. Re-ingesting a file
//!   replaces its list atomically.
//!
//! Progress is reported as `PROGRESS` with `{"current", "total", "file", "chunks"}`.

use super::ingest;
use crate::registry::Registry;
use crate::task::{TaskContext, TaskError};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Mutex;

pub const NAME: &str = "app.workers.tasks.task_file_ingestion";

/// Where chunks of `source` for `file` are stored.
pub fn chunks_key(source: &str, file: &str) -> String {
    format!("ingest:{source}:chunks:{file}")
}

pub fn files_key(source: &str) -> String {
    format!("ingest:{source}:files")
}

/// A lazily opened, reused blocking connection (ingestion runs on blocking threads).
struct Store {
    url: Option<String>,
    conn: Mutex<Option<redis::Connection>>,
}

impl Store {
    fn save(&self, source: &str, file: &str, chunks: &[ingest::Chunk]) -> Result<(), TaskError> {
        let url = self.url.as_deref().ok_or_else(|| {
            TaskError::runtime_error("no Redis to store chunks in: configure a result backend")
        })?;
        let mut pipe = redis::pipe();
        pipe.atomic().del(chunks_key(source, file)).ignore();
        let items: Vec<String> = chunks
            .iter()
            .map(|c| {
                json!({"file": c.file, "index": c.index, "text": c.text, "source": source})
                    .to_string()
            })
            .collect();
        if !items.is_empty() {
            pipe.rpush(chunks_key(source, file), items).ignore();
        }
        pipe.sadd(files_key(source), file).ignore();
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        // One reconnect attempt: the cached connection may predate a Redis restart.
        for attempt in 0..2 {
            if guard.is_none() {
                let client = crate::broker::redis_url::client(url).map_err(|e| {
                    TaskError::new(
                        "ConnectionError",
                        "redis.exceptions",
                        vec![e.to_string().into()],
                    )
                })?;
                *guard = Some(client.get_connection().map_err(redis_error)?);
            }
            let conn = guard.as_mut().expect("connection just set");
            match pipe.query::<()>(conn) {
                Ok(()) => return Ok(()),
                Err(e) if attempt == 0 && (e.is_io_error() || e.is_connection_dropped()) => {
                    *guard = None
                }
                Err(e) => return Err(redis_error(e)),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }
}

fn redis_error(e: redis::RedisError) -> TaskError {
    TaskError::new(
        "ConnectionError",
        "redis.exceptions",
        vec![Value::String(e.to_string())],
    )
}

pub fn register(registry: &mut Registry, storage_url: Option<String>) {
    let store = Store {
        url: storage_url,
        conn: Mutex::new(None),
    };
    registry.blocking(
        NAME,
        &["file_paths", "source_name=\"documents\""],
        move |ctx: &TaskContext, args| {
            let paths: Vec<String> = match args.value(0) {
                Value::String(s) => vec![s.clone()],
                _ => args.get(0)?,
            };
            let source: String = args.get(1)?;
            let total = paths.len();
            for (i, path) in paths.iter().enumerate() {
                let chunks = ingest::ingest_file(Path::new(path))?;
                store.save(&source, path, &chunks)?;
                ctx.update_state(
                    "PROGRESS",
                    json!({"current": i + 1, "total": total, "file": path, "chunks": chunks.len()}),
                )?;
            }
            Ok(Value::Bool(true))
        },
    );
}
