//! The result meta JSON Celery's Redis backend stores under
//! `celery-task-meta-<id>`, keys in Celery's order (§6.2 of the wire spec).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// States that complete `AsyncResult.get()`.
pub const READY_STATES: [&str; 3] = ["SUCCESS", "FAILURE", "REVOKED"];

/// `result_extended=True` fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Extended {
    pub name: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub worker: String,
    pub retries: u32,
    pub queue: String,
}

/// One stored state of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultMeta {
    pub task_id: String,
    pub status: String,
    pub result: Value,
    pub traceback: Option<String>,
    /// `[]` from inside a task, `null` when written from outside (revoke).
    pub children: Option<Vec<Value>>,
    pub group_id: Option<String>,
    pub parent_id: Option<String>,
    pub extended: Option<Extended>,
    /// `(reply_to, correlation_id)` of the request: where the RPC backend
    /// sends the state (not part of the stored JSON).
    pub reply: Option<(String, String)>,
}

impl ResultMeta {
    pub fn new(task_id: &str, status: &str, result: Value) -> Self {
        ResultMeta {
            task_id: task_id.to_string(),
            status: status.to_string(),
            result,
            traceback: None,
            children: Some(Vec::new()),
            group_id: None,
            parent_id: None,
            extended: None,
            reply: None,
        }
    }

    pub fn is_ready(&self) -> bool {
        READY_STATES.contains(&self.status.as_str())
    }

    /// Serialises with `date_done` set for ready states, as Celery does.
    pub fn to_json(&self, now: DateTime<Utc>) -> String {
        let mut m = Map::with_capacity(14);
        m.insert("status".into(), Value::String(self.status.clone()));
        m.insert("result".into(), self.result.clone());
        m.insert(
            "traceback".into(),
            self.traceback.clone().map_or(Value::Null, Value::String),
        );
        m.insert(
            "children".into(),
            self.children.clone().map_or(Value::Null, Value::Array),
        );
        let date_done = self.is_ready().then(|| format_date_done(now));
        m.insert(
            "date_done".into(),
            date_done.map_or(Value::Null, Value::String),
        );
        if let Some(g) = &self.group_id {
            m.insert("group_id".into(), Value::String(g.clone()));
        }
        if let Some(p) = &self.parent_id {
            m.insert("parent_id".into(), Value::String(p.clone()));
        }
        if let Some(x) = &self.extended {
            m.insert("name".into(), Value::String(x.name.clone()));
            m.insert("args".into(), Value::Array(x.args.clone()));
            m.insert("kwargs".into(), Value::Object(x.kwargs.clone()));
            m.insert("worker".into(), Value::String(x.worker.clone()));
            m.insert("retries".into(), Value::from(x.retries));
            m.insert("queue".into(), Value::String(x.queue.clone()));
        }
        m.insert("task_id".into(), Value::String(self.task_id.clone()));
        Value::Object(m).to_string()
    }
}

/// Python's `datetime.isoformat()` of an aware UTC datetime:
/// `2026-11-21T05:01:13.897554+00:00` (microseconds omitted when zero).
pub fn format_date_done(t: DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    use std::fmt::Write;
    // Written field by field: `format()` parses its pattern on every call,
    // once per stored result.
    let mut out = String::with_capacity(32);
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let micros = t.timestamp_subsec_micros();
    if micros != 0 {
        let _ = write!(out, ".{:06}", micros.min(999_999));
    }
    out.push_str("+00:00");
    out
}

/// The stored `status` of a meta JSON, if it parses.
pub fn stored_status(raw: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(raw).ok()?;
    v.get("status")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    /// Python's `datetime.isoformat()`: microseconds only when non-zero.
    #[test]
    fn date_done_is_isoformat() {
        let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(format_date_done(t), "2026-01-02T03:04:05+00:00");
        let t = t + chrono::Duration::microseconds(70);
        assert_eq!(format_date_done(t), "2026-01-02T03:04:05.000070+00:00");
        let t = Utc.with_ymd_and_hms(999, 12, 31, 23, 59, 59).unwrap()
            + chrono::Duration::microseconds(999_999);
        assert_eq!(format_date_done(t), "0999-12-31T23:59:59.999999+00:00");
    }

    #[test]
    fn success_meta_has_celery_shape() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 5, 1, 13).unwrap()
            + chrono::Duration::microseconds(897554);
        let meta = ResultMeta::new("848c8248-2b30-4f25-a112-6b4dad4d4aa0", "SUCCESS", json!(5));
        let text = meta.to_json(now);
        let expected = json!({"status": "SUCCESS", "result": 5, "traceback": null, "children": [],
            "date_done": "2026-11-21T05:01:13.897554+00:00",
            "task_id": "848c8248-2b30-4f25-a112-6b4dad4d4aa0"});
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), expected);
        let keys: Vec<String> = serde_json::from_str::<Map<String, Value>>(&text)
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(
            keys,
            [
                "status",
                "result",
                "traceback",
                "children",
                "date_done",
                "task_id"
            ]
        );
    }

    #[test]
    fn progress_has_no_date_done() {
        let meta = ResultMeta::new("x", "PROGRESS", json!({"current": 1}));
        let v: Value = serde_json::from_str(&meta.to_json(Utc::now())).unwrap();
        assert!(v["date_done"].is_null());
    }
}
