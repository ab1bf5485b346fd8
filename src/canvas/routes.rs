//! Where the worker sends what it publishes, as Celery's `Router` decides
//! (`celery/app/routes.py`): explicit options, then the task's own `queue`,
//! then `task_routes`, then `task_default_queue`. Pure: tables in, queue out.

use serde_json::Value;
use std::collections::HashMap;

/// One `task_routes` mapping (Celery's `MapRoute`): exact names first, then
/// glob patterns in the order given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MapRoute {
    exact: HashMap<String, String>,
    globs: Vec<(String, String)>,
}

impl MapRoute {
    fn lookup(&self, task: &str) -> Option<&str> {
        if let Some(q) = self.exact.get(task) {
            return Some(q);
        }
        self.globs
            .iter()
            .find(|(pattern, _)| glob_match(pattern.as_bytes(), task.as_bytes()))
            .map(|(_, q)| q.as_str())
    }
}

/// Celery's `glob_to_re` + `re.match`: `*` is any run of characters and the
/// match is anchored at the start only.
fn glob_match(pat: &[u8], text: &[u8]) -> bool {
    match pat.split_first() {
        None => true,
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob_match(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && glob_match(rest, &text[1..]),
    }
}

/// The routing tables of one worker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Router {
    pub default_queue: String,
    /// Tasks whose definition names a queue (`@app.task(queue=…)`).
    task_queues: HashMap<String, String>,
    /// Tasks whose definition sets a priority (`@app.task(priority=…)`).
    task_priorities: HashMap<String, u8>,
    /// `task_inherit_parent_priority`: follow-ups take the sender's priority.
    pub inherit_parent_priority: bool,
    tables: Vec<MapRoute>,
}

impl Router {
    pub fn new(default_queue: &str) -> Router {
        Router {
            default_queue: default_queue.to_string(),
            ..Default::default()
        }
    }

    /// Records a task's own `queue` option.
    pub fn task_queue(&mut self, task: &str, queue: &str) {
        self.task_queues.insert(task.to_string(), queue.to_string());
    }

    /// Records a task's own `priority` option.
    pub fn task_priority(&mut self, task: &str, priority: u8) {
        self.task_priorities.insert(task.to_string(), priority);
    }

    /// The priority for a message of `task` that sets none itself: the
    /// task's own, else (with `task_inherit_parent_priority`) the sender's.
    pub fn priority(&self, task: &str, parent: u8) -> Option<u8> {
        self.task_priorities
            .get(task)
            .copied()
            .or(self.inherit_parent_priority.then_some(parent))
    }

    /// The queue for a message of `task` that names none itself.
    pub fn route(&self, task: &str) -> &str {
        if let Some(q) = self.task_queues.get(task) {
            return q;
        }
        self.tables
            .iter()
            .find_map(|t| t.lookup(task))
            .unwrap_or(&self.default_queue)
    }

    /// Reads `task_routes` in any form Celery takes that is data: a mapping
    /// or a list of mappings, each `name-or-glob → queue name or {"queue": …}`.
    /// Returns what it had to leave out (regex keys, router functions,
    /// routes naming only an exchange), for one warning at start.
    pub fn add_task_routes(&mut self, routes: &Value) -> Vec<String> {
        let mut skipped = Vec::new();
        let tables: Vec<&Value> = match routes {
            Value::Array(items) => items.iter().collect(),
            Value::Null => Vec::new(),
            one => vec![one],
        };
        for table in tables {
            let Value::Object(map) = table else {
                skipped.push(format!("router {table}"));
                continue;
            };
            // Marker the Python side sends for what is not data.
            if let Some(what) = map.get("__unsupported__").and_then(Value::as_str) {
                skipped.push(what.to_string());
                continue;
            }
            let mut t = MapRoute::default();
            for (pattern, route) in map {
                let queue = match route {
                    Value::String(q) => Some(q.clone()),
                    Value::Object(r) => match r.get("queue") {
                        Some(Value::String(q)) => Some(q.clone()),
                        Some(Value::Object(q)) => {
                            q.get("name").and_then(Value::as_str).map(str::to_string)
                        }
                        _ => None,
                    },
                    _ => None,
                };
                let Some(queue) = queue else {
                    skipped.push(format!("route {pattern:?} → {route} (no queue name)"));
                    continue;
                };
                if pattern.contains('*') {
                    t.globs.push((pattern.clone(), queue));
                } else {
                    t.exact.insert(pattern.clone(), queue);
                }
            }
            self.tables.push(t);
        }
        skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn celerys_order_task_option_then_routes_then_default() {
        let mut r = Router::new("celery");
        let skipped = r.add_task_routes(&json!([
            {"feed.tasks.import_feed": "feeds", "feed.*": {"queue": "feed-glob"}},
            {"video.*": {"queue": {"name": "video"}}, "web.*": {"exchange": "x"}},
        ]));
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        r.task_queue("video.encode", "gpu");
        assert_eq!(r.route("feed.tasks.import_feed"), "feeds");
        assert_eq!(r.route("feed.tasks.other"), "feed-glob");
        assert_eq!(r.route("video.thumb"), "video");
        assert_eq!(r.route("video.encode"), "gpu");
        assert_eq!(r.route("web.page"), "celery");
        assert_eq!(r.route("other"), "celery");
    }

    #[test]
    fn priority_is_the_tasks_own_else_inherited_only_when_asked() {
        let mut r = Router::new("celery");
        r.task_priority("urgent", 9);
        assert_eq!(r.priority("urgent", 3), Some(9));
        assert_eq!(r.priority("plain", 3), None);
        r.inherit_parent_priority = true;
        assert_eq!(r.priority("plain", 3), Some(3));
    }

    #[test]
    fn globs_match_from_the_start_like_re_match() {
        assert!(glob_match(b"a.*", b"a.b.c"));
        assert!(glob_match(b"*.add", b"tasks.add"));
        assert!(
            glob_match(b"tasks.a", b"tasks.add"),
            "re.match is not anchored at the end"
        );
        assert!(!glob_match(b"tasks.b*", b"tasks.add"));
    }

    #[test]
    fn a_single_mapping_and_unsupported_markers() {
        let mut r = Router::new("d");
        let skipped = r.add_task_routes(&json!({"t.x": "qx"}));
        assert!(skipped.is_empty());
        assert_eq!(r.route("t.x"), "qx");
        let skipped = r.add_task_routes(&json!([{"__unsupported__": "router function f"}]));
        assert_eq!(skipped, ["router function f"]);
    }
}
