//! Rust-native tasks of the example app (`app.workers.tasks.*`), registered
//! under the Celery names producers already use.

pub mod example;
pub mod ingest;
pub mod ingestion;
pub mod testing;

use crate::registry::Registry;

/// What the example tasks need from the outside world.
#[derive(Debug, Clone)]
pub struct TaskEnv {
    /// Redis where ingested chunks are stored (the result backend's).
    pub storage_url: Option<String>,
    /// Also register the `rcw.testing.*` tasks the interop suite drives.
    pub testing: bool,
    /// Register the example app's Rust handlers (off: its Python bodies run —
    /// how the interop suite checks Python execution against the same tests).
    pub native: bool,
}

/// Registers every Rust-native task of the example app.
pub fn register_all(registry: &mut Registry, env: &TaskEnv) {
    if env.native {
        example::register(registry);
        ingestion::register(registry, env.storage_url.clone());
    }
    if env.testing {
        testing::register(registry);
    }
}
