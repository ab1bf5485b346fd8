//! The read-only commands: `stats`, `active`, `reserved`, `scheduled`,
//! `registered`, `active_queues`, `query_task`, `conf`, `report`.

use super::{CommandError, Outcome};
use crate::config::mask_url;
use crate::protocol::pyrepr;
use crate::worker::Shared;
use crate::worker::state::{Held, Phase};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Celery's `Request.info(safe)`.
pub(crate) fn request_info(shared: &Shared, h: &Held, safe: bool) -> Value {
    let r = &h.request;
    let (time_start, worker_pid) = match h.phase {
        Phase::Active { time_start } => {
            (json!(time_start), json!(h.worker_pid(shared.state.pid())))
        }
        _ => (Value::Null, Value::Null),
    };
    let name = r
        .headers
        .get("shadow")
        .and_then(Value::as_str)
        .unwrap_or(&r.task);
    let (args, kwargs) = if safe {
        let text = |k: &str, fallback: String| {
            r.headers
                .get(k)
                .and_then(Value::as_str)
                .map_or(fallback, str::to_string)
        };
        (
            json!(text("argsrepr", pyrepr::repr_args(&r.args))),
            json!(text(
                "kwargsrepr",
                pyrepr::repr(&Value::Object(r.kwargs.clone()))
            )),
        )
    } else {
        (json!(r.args), Value::Object(r.kwargs.clone()))
    };
    json!({
        "id": r.id,
        "name": name,
        "args": args,
        "kwargs": kwargs,
        "type": r.task,
        "hostname": shared.config.hostname,
        "time_start": time_start,
        "acknowledged": h.acknowledged,
        "delivery_info": {
            "exchange": r.delivery_info.exchange,
            "routing_key": r.delivery_info.routing_key,
            "priority": r.delivery_info.priority,
            "redelivered": r.delivery_info.redelivered,
        },
        "worker_pid": worker_pid,
    })
}

fn is_active(p: &Phase) -> bool {
    matches!(p, Phase::Active { .. })
}

pub(crate) fn active(shared: &Shared, safe: bool) -> Value {
    let held = shared.state.in_phase(is_active);
    Value::Array(held.iter().map(|h| request_info(shared, h, safe)).collect())
}

pub(crate) fn reserved(shared: &Shared) -> Value {
    let held = shared.state.in_phase(|p| *p == Phase::Reserved);
    Value::Array(
        held.iter()
            .map(|h| request_info(shared, h, false))
            .collect(),
    )
}

/// ETA-held requests; Celery's timer entries carry priority 6.
pub(crate) fn scheduled(shared: &Shared) -> Value {
    let held = shared.state.in_phase(|p| *p == Phase::Scheduled);
    Value::Array(
        held.iter()
            .map(|h| {
                json!({
                    "eta": h.eta,
                    "priority": 6,
                    "request": request_info(shared, h, false),
                })
            })
            .collect(),
    )
}

/// Celery's `DEFAULT_TASK_INFO_ITEMS`.
const DEFAULT_TASK_INFO_ITEMS: [&str; 3] = ["exchange", "routing_key", "rate_limit"];

pub(crate) fn registered(shared: &Shared, items: Vec<String>, builtins: bool) -> Value {
    let items: Vec<String> = if items.is_empty() {
        DEFAULT_TASK_INFO_ITEMS
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        items.into_iter().filter(|i| !i.starts_with('_')).collect()
    };
    let mut names: Vec<&str> = shared
        .registry
        .names()
        .into_iter()
        .filter(|n| builtins || !n.starts_with("celery."))
        .collect();
    names.sort_unstable();
    let listed = names
        .into_iter()
        .map(|name| {
            let def = shared.registry.get(name).expect("listed names exist");
            let fields: Vec<String> = items
                .iter()
                .filter_map(|item| {
                    let live = (item == "rate_limit")
                        .then(|| shared.limits.get(name).map(|b| b.spec.clone()));
                    match live {
                        Some(spec) => spec,
                        None => task_attr(def, item),
                    }
                    .map(|v| format!("{item}={v}"))
                })
                .collect();
            Value::String(if fields.is_empty() {
                name.to_string()
            } else {
                format!("{name} [{}]", fields.join(" "))
            })
        })
        .collect();
    Value::Array(listed)
}

/// `str(getattr(task, item))` for the task attributes we know; `None` for
/// the rest, which Celery leaves out as it does attributes set to None.
fn task_attr(def: &crate::registry::TaskDef, item: &str) -> Option<String> {
    let o = &def.options;
    let num = |f: f64| pyrepr::repr_float(f);
    let boolean = |b: bool| if b { "True" } else { "False" }.to_string();
    match item {
        "name" => Some(def.name.clone()),
        "time_limit" => o.time_limit.map(num),
        "soft_time_limit" => o.soft_time_limit.map(num),
        "acks_late" => o.acks_late.map(boolean),
        "ignore_result" => o.ignore_result.map(boolean),
        "track_started" => o.track_started.map(boolean),
        "default_retry_delay" => o.default_retry_delay.map(num),
        "max_retries" => match o.max_retries {
            Some(Some(n)) => Some(n.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// `Queue.as_dict(recurse=True)` for each consumed queue (automatic queues:
/// a direct exchange and routing key named after the queue).
pub(crate) fn active_queues(shared: &Shared) -> Value {
    Value::Array(
        shared
            .broker
            .queues()
            .iter()
            .map(|q| {
                json!({
                    "name": q,
                    "exchange": {
                        "name": q, "type": "direct", "arguments": null, "durable": true,
                        "passive": false, "auto_delete": false, "delivery_mode": null,
                        "no_declare": false,
                    },
                    "routing_key": q,
                    "queue_arguments": null, "binding_arguments": null,
                    "consumer_arguments": null, "durable": true, "exclusive": false,
                    "auto_delete": false, "no_ack": false, "alias": null, "bindings": [],
                    "no_declare": null, "expires": null, "message_ttl": null,
                    "max_length": null, "max_length_bytes": null, "max_priority": null,
                })
            })
            .collect(),
    )
}

pub(crate) fn query_task(shared: &Shared, ids: &[String]) -> Value {
    let mut out = Map::new();
    for id in ids {
        if let Some(h) = shared.state.get(id) {
            let state = match h.phase {
                Phase::Active { .. } => "active",
                Phase::Reserved => "reserved",
                Phase::Scheduled => "scheduled",
            };
            out.insert(id.clone(), json!([state, request_info(shared, &h, false)]));
        }
    }
    Value::Object(out)
}

/// `inspect stats`, in the shape of Celery's `WorkController.stats()`.
pub(crate) fn stats(shared: &Arc<Shared>) -> Value {
    let cfg = &shared.config;
    let mut total = Map::new();
    for (name, n) in shared.state.totals() {
        total.insert(name, json!(n));
    }
    let timeouts =
        |n: &Option<serde_json::Number>| n.as_ref().map_or(json!(0), |n| Value::Number(n.clone()));
    let pool = match &shared.pool {
        Some(p) => json!({
            "implementation": "rust_celery_worker.pool:PreforkPool",
            "max-concurrency": p.size(),
            "processes": p.pids(),
            "max-tasks-per-child": p.max_tasks_per_child().map_or(json!("N/A"), |n| json!(n)),
            "put-guarded-by-semaphore": false,
            "timeouts": [timeouts(&cfg.task_soft_time_limit), timeouts(&cfg.task_time_limit)],
        }),
        None => json!({
            "implementation": "rust_celery_worker.pool:RuntimePool",
            "max-concurrency": shared.slots_size(),
            "processes": [shared.state.pid()],
            "max-tasks-per-child": "N/A",
            "put-guarded-by-semaphore": false,
            "timeouts": [timeouts(&cfg.task_soft_time_limit), timeouts(&cfg.task_time_limit)],
        }),
    };
    json!({
        "total": total,
        "pid": shared.state.pid(),
        "clock": shared.state.clock().to_string(),
        "uptime": shared.state.uptime().as_secs(),
        "pool": pool,
        "broker": shared.broker.info(),
        "prefetch_count": cfg.prefetch_count(),
        "rusage": rusage(),
    })
}

/// `resource.getrusage(RUSAGE_SELF)` as Celery reports it.
fn rusage() -> Value {
    // SAFETY: getrusage fills the struct we own; RUSAGE_SELF is always valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    json!({
        "utime": secs(ru.ru_utime), "stime": secs(ru.ru_stime),
        "maxrss": ru.ru_maxrss, "ixrss": ru.ru_ixrss, "idrss": ru.ru_idrss,
        "isrss": ru.ru_isrss, "minflt": ru.ru_minflt, "majflt": ru.ru_majflt,
        "nswap": ru.ru_nswap, "inblock": ru.ru_inblock, "oublock": ru.ru_oublock,
        "msgsnd": ru.ru_msgsnd, "msgrcv": ru.ru_msgrcv, "nsignals": ru.ru_nsignals,
        "nvcsw": ru.ru_nvcsw, "nivcsw": ru.ru_nivcsw,
    })
}

/// `inspect conf`: the app's own table when there is an app, else ours.
pub(crate) async fn conf(shared: &Arc<Shared>, with_defaults: bool) -> Outcome {
    if let Some(app) = shared.app.clone() {
        let table = tokio::task::spawn_blocking(move || app.conf(with_defaults))
            .await
            .ok()
            .flatten();
        if let Some(t) = table {
            return Ok(t);
        }
    }
    Ok(own_conf(shared, with_defaults))
}

/// The settings this worker runs with, by their Celery names.
fn own_conf(shared: &Shared, with_defaults: bool) -> Value {
    let c = &shared.config;
    let d = crate::config::Config::default();
    let mut m = Map::new();
    let mut put = |k: &str, v: Value, default: Value| {
        if with_defaults || v != default {
            m.insert(k.into(), v);
        }
    };
    put("broker_url", json!(mask_url(&c.broker_url)), Value::Null);
    put(
        "result_backend",
        json!(c.result_backend.as_deref().map(mask_url)),
        Value::Null,
    );
    put(
        "task_default_queue",
        json!(c.task_default_queue),
        json!(d.task_default_queue),
    );
    put("worker_concurrency", json!(c.concurrency), Value::Null);
    put(
        "worker_prefetch_multiplier",
        json!(c.prefetch_multiplier),
        json!(d.prefetch_multiplier),
    );
    put("task_acks_late", json!(c.task_acks_late), json!(false));
    put(
        "task_track_started",
        json!(c.task_track_started),
        json!(false),
    );
    put(
        "task_ignore_result",
        json!(c.task_ignore_result),
        json!(false),
    );
    put("result_extended", json!(c.result_extended), json!(false));
    put(
        "result_expires",
        json!(c.result_expires.map(|e| e.as_secs_f64())),
        json!(d.result_expires.map(|e| e.as_secs_f64())),
    );
    put("task_time_limit", json!(c.task_time_limit), Value::Null);
    put(
        "task_soft_time_limit",
        json!(c.task_soft_time_limit),
        Value::Null,
    );
    put(
        "task_default_rate_limit",
        json!(c.task_default_rate_limit),
        Value::Null,
    );
    put(
        "worker_send_task_events",
        json!(c.task_events),
        json!(false),
    );
    put("accept_content", json!(["json"]), json!(["json"]));
    put("enable_utc", json!(true), json!(true));
    put("timezone", Value::Null, Value::Null);
    Value::Object(m)
}

/// `inspect report`: the app's bug report (or ours, without an app).
pub(crate) async fn report(shared: &Arc<Shared>) -> Outcome {
    let ours = format!(
        "worker   -> rust-celery-worker:{} transport:redis results:{}",
        env!("CARGO_PKG_VERSION"),
        shared
            .config
            .result_backend
            .as_deref()
            .map_or("disabled".to_string(), mask_url)
    );
    if let Some(app) = shared.app.clone() {
        let text = tokio::task::spawn_blocking(move || app.bugreport())
            .await
            .map_err(|e| CommandError::raised("RuntimeError", &e.to_string()))?;
        if let Some(t) = text {
            return Ok(super::ok(format!("{}\n{ours}\n", t.trim_end())));
        }
    }
    Ok(super::ok(format!(
        "software -> rust-celery-worker:{} \nplatform -> system:{} arch:{}\n{ours}\n",
        env!("CARGO_PKG_VERSION"),
        crate::events::sw_sys(),
        std::env::consts::ARCH
    )))
}
