//! Celery's own canvas code, when the `-A` app is loaded.
//!
//! Plain follow-ups (a task as the next chain step or as a callback) and the
//! counting of chord parts are Rust: they are the hot path (a chord part
//! through the interpreter cost about 5 ms: 192 against 1,211 workflows/s in
//! `bench.py --scenario canvas`). Nested shapes, failures that touch a canvas
//! (errbacks, the rest of a chain, a chord) and the completion of a chord
//! (once per chord) are rare per task and full of Celery's corner rules
//! (`_fail_chain`, new-style errbacks called in-process, `GroupResult.restore`
//! of complex headers, group bodies failing member by member), so with the
//! app at hand they run through the very functions Celery's worker calls.
//! Without an app the Rust port in [`super`] does the work.

use serde_json::Value;

/// Blocking calls into the app's interpreter (run them off the async threads).
pub trait CanvasHost: Send + Sync {
    /// `_dispatch_callbacks_and_chain`: returns the sent results' tuples.
    fn dispatch(
        &self,
        retval: &Value,
        callbacks: &[Value],
        chain: &[Value],
        request: &Value,
    ) -> anyhow::Result<Vec<Value>>;
    /// `backend.mark_as_failure(…, request=…)`.
    fn mark_failure(
        &self,
        request: &Value,
        exc: &Value,
        traceback: Option<&str>,
        store_result: bool,
    ) -> anyhow::Result<()>;
    /// The end of `on_chord_part_return` once this worker counted the last
    /// part and won the claim: `values` in header order, or the first
    /// failed part as `[id, exc]`.
    fn chord_complete(
        &self,
        request: &Value,
        values: &Value,
        failure: Option<&Value>,
    ) -> anyhow::Result<()>;
}

/// Whether a finished task's callbacks or next chain step are anything but
/// plain tasks.
pub fn has_nested_follow_ups(embed: &crate::protocol::Embed) -> bool {
    embed
        .callbacks
        .iter()
        .flatten()
        .chain(embed.chain.iter().flat_map(|c| c.last()))
        .any(|s| !is_plain(s))
}

/// A signature dict that is a plain task (no chain/group/chord/map/…).
pub fn is_plain(sig: &Value) -> bool {
    match sig.get("subtask_type") {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    }
}
