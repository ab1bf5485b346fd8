//! `revoke`, `terminate`, `revoke_by_stamped_headers` (Celery's `_revoke`).

use super::{Args, CommandError, Outcome, ok};
use crate::protocol::pyrepr;
use crate::worker::Shared;
use serde_json::{Map, Value};
use std::sync::Arc;

pub(crate) async fn revoke(shared: &Arc<Shared>, args: &Map<String, Value>) -> Outcome {
    let a = Args(args);
    let ids = unique(a.list("task_id"));
    revoke_ids(shared, ids, a.flag("terminate"), a.text("signal")).await
}

pub(crate) async fn terminate(shared: &Arc<Shared>, args: &Map<String, Value>) -> Outcome {
    let a = Args(args);
    let ids = unique(a.list("task_id"));
    revoke_ids(shared, ids, true, a.text("signal")).await
}

/// Order kept, duplicates dropped (Celery builds a set).
fn unique(ids: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    ids.into_iter().filter(|i| seen.insert(i.clone())).collect()
}

async fn revoke_ids(
    shared: &Arc<Shared>,
    ids: Vec<String>,
    terminate: bool,
    signal: Option<String>,
) -> Outcome {
    let signum = signum(signal.as_deref().unwrap_or("SIGTERM"))?;
    let active = shared.state.revoke(&ids);
    // Not running here: REVOKED now, unless it has a result or another
    // worker has started it (Celery leaves those states alone).
    if let Some(backend) = &shared.backend {
        for id in ids.iter().filter(|id| !active.contains(id)) {
            match backend.get_state(id).await {
                Ok(s) if matches!(s.as_str(), "PENDING" | "RECEIVED" | "RETRY" | "REJECTED") => {
                    shared
                        .store_state(&crate::worker::revoked_meta(id, "revoked"))
                        .await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("Failed to mark task {id} as revoked in backend: {e}")
                }
            }
        }
    }
    if terminate {
        let mut terminated = Vec::new();
        for id in &ids {
            if shared.state.terminate(id, signum) {
                tracing::info!("Terminating {id} ({signum})");
                terminated.push(id.clone());
            }
        }
        shared.persist_revoked();
        if terminated.is_empty() {
            return Ok(ok("terminate: tasks unknown"));
        }
        return Ok(ok(format!("terminate: {}", terminated.join(", "))));
    }
    shared.persist_revoked();
    tracing::info!("Tasks flagged as revoked: {}", ids.join(", "));
    Ok(ok(format!("tasks {} flagged as revoked", set_repr(&ids))))
}

/// Python's repr of a set of strings (`set()` when empty).
fn set_repr(items: &[String]) -> String {
    if items.is_empty() {
        return "set()".into();
    }
    let inner: Vec<String> = items.iter().map(|s| pyrepr::repr_str(s)).collect();
    format!("{{{}}}", inner.join(", "))
}

/// Celery's `signals.signum`: `SIGTERM`, `TERM`, `term`, `15` → 15.
pub(crate) fn signum(name: &str) -> Result<i32, CommandError> {
    let n = name.trim();
    if let Ok(num) = n.parse::<i32>() {
        return Ok(num);
    }
    let upper = n.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let num = match bare {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "ALRM" => libc::SIGALRM,
        "ABRT" => libc::SIGABRT,
        _ => {
            return Err(CommandError::raised(
                "TypeError",
                &format!(
                    "signal name must be uppercase string, not {}",
                    pyrepr::repr_str(n)
                ),
            ));
        }
    };
    Ok(num)
}

/// `revoke_by_stamped_headers`: requests whose stamps match are discarded on
/// receipt; with `terminate`, matching active ones are terminated.
pub(crate) fn by_stamped_headers(shared: &Arc<Shared>, args: &Map<String, Value>) -> Outcome {
    let a = Args(args);
    let signum = signum(a.text("signal").as_deref().unwrap_or("SIGTERM"))?;
    let headers: Map<String, Value> = match a.get("headers") {
        Some(Value::Object(m)) => m.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|h| h.split_once('='))
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect(),
        _ => Map::new(),
    };
    shared.state.revoke_stamps(&headers);
    let shown = pyrepr::repr(&Value::Object(headers.clone()));
    if !a.flag("terminate") {
        return Ok(ok(format!(
            "headers {shown} flagged as revoked, but not terminated"
        )));
    }
    let matched = shared.state.terminate_stamped(&headers, signum);
    if matched.is_empty() {
        return Ok(ok(format!("headers {shown} were not terminated")));
    }
    let entries: Vec<String> = matched
        .iter()
        .map(|(k, vs)| format!("{}: {}", pyrepr::repr_str(k), set_repr(vs)))
        .collect();
    Ok(ok(format!(
        "headers defaultdict(<class 'set'>, {{{}}}) revoked",
        entries.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_as_celery_names_them() {
        assert_eq!(signum("SIGTERM"), Ok(libc::SIGTERM));
        assert_eq!(signum("kill"), Ok(libc::SIGKILL));
        assert_eq!(signum("USR1"), Ok(libc::SIGUSR1));
        assert_eq!(signum("9"), Ok(9));
        assert!(signum("SIGNOPE").unwrap_err().0.starts_with("TypeError("));
    }

    #[test]
    fn revoke_replies_show_a_python_set() {
        assert_eq!(set_repr(&["a".into()]), "{'a'}");
        assert_eq!(set_repr(&["a".into(), "b".into()]), "{'a', 'b'}");
        assert_eq!(set_repr(&[]), "set()");
        assert_eq!(unique(vec!["x".into(), "y".into(), "x".into()]), ["x", "y"]);
    }
}
