//! Celery's built-in tasks (`celery.*`), registered in every worker as
//! Celery's app registers them. Issue 8 brings the canvas ones
//! (`celery.group`, `celery.chord`, …); `celery.ping` is here because
//! tooling (Celery's own test fixtures among them) probes readiness with it.

use crate::registry::Registry;
use serde_json::Value;

pub fn register(registry: &mut Registry) {
    // `celery.ping`: `return 'pong'` (celery/app/builtins.py).
    registry.asynchronous("celery.ping", &[], |_ctx, _args| async {
        Ok(Value::String("pong".into()))
    });
}
