//! Celery's built-in tasks (`celery.*`, celery/app/builtins.py), registered
//! as Celery's app registers them. `celery.ping` is always Rust (tooling,
//! Celery's own test fixtures among them, probes readiness with it); the
//! canvas ones are registered here only when no `-A` app is loaded: an app
//! brings Celery's own, which run its exact code.

use crate::canvas::{self, Signature, signature_value};
use crate::registry::Registry;
use crate::task::{TaskContext, TaskError, TaskResult};
use serde_json::{Map, Value, json};

pub fn register(registry: &mut Registry) {
    // `celery.ping`: `return 'pong'`.
    registry.asynchronous("celery.ping", &[], |_ctx, _args| async {
        Ok(Value::String("pong".into()))
    });
}

/// The canvas built-ins, for a worker without a Python app.
pub fn register_canvas(registry: &mut Registry) {
    let mut add = |name: &str, f: fn(TaskContext) -> BoxedResult| {
        let mut def = Registry::async_def(name, &[], move |ctx, _a| f(ctx));
        def.params = crate::task::Params::passthrough();
        registry.add(def);
    };
    // Results in Redis expire by themselves: `backend.cleanup()` is a no-op.
    add("celery.backend_cleanup", |_ctx| {
        Box::pin(async { Ok(Value::Null) })
    });
    // `accumulate(*args, index=None)`: the args, or the one at `index`.
    add("celery.accumulate", |ctx| {
        Box::pin(async move {
            let r = ctx.request();
            match r.kwargs.get("index").and_then(Value::as_i64) {
                Some(i) => {
                    let at = if i < 0 { r.args.len() as i64 + i } else { i };
                    r.args
                        .get(at as usize)
                        .cloned()
                        .ok_or_else(|| TaskError::builtin("IndexError", "tuple index out of range"))
                }
                None => Ok(Value::Array(r.args.clone())),
            }
        })
    });
    add("celery.chain", |_ctx| {
        Box::pin(async {
            Err(TaskError::builtin(
                "NotImplementedError",
                "chain is not a real task",
            ))
        })
    });
    add("celery.chord_unlock", |_ctx| {
        Box::pin(async {
            Err(TaskError::builtin(
                "NotImplementedError",
                "celery.chord_unlock polls backends without native chords; this \
                 worker's Redis backend joins chords itself",
            ))
        })
    });
    add("celery.map", |ctx| {
        Box::pin(async move { map(&ctx, false).await })
    });
    add("celery.starmap", |ctx| {
        Box::pin(async move { map(&ctx, true).await })
    });
    // `chunks(task, it, n)`: a group of `starmap` over `n`-sized slices.
    add("celery.chunks", |ctx| {
        Box::pin(async move {
            let a = Call(&ctx);
            let task = a.get(0, "task").cloned().unwrap_or(Value::Null);
            let it = a.list(1, "it");
            let n = a.get(2, "n").and_then(Value::as_u64).unwrap_or(1).max(1) as usize;
            let tasks = it.chunks(n).map(|c| {
                Signature::primitive("celery.starmap", "xstarmap", json!({"task": task, "it": c}))
            });
            let group = signature_value(&canvas::group_of(tasks));
            ctx.canvas()?.apply(&group, Vec::new()).await
        })
    });
    // `group(tasks, result, group_id, partial_args)`: each task sent with the
    // group id (Celery sends them without the partial args), the result returned.
    add("celery.group", |ctx| {
        Box::pin(async move {
            let a = Call(&ctx);
            let gid = a.get(2, "group_id").cloned().unwrap_or(Value::Null);
            let tasks = a.list(0, "tasks");
            for (i, t) in tasks.into_iter().enumerate() {
                let mut t = t;
                if let Some(opts) = t.get_mut("options").and_then(Value::as_object_mut) {
                    opts.insert("group_id".into(), gid.clone());
                    opts.entry("group_index").or_insert(json!(i));
                }
                ctx.canvas()?.apply(&t, Vec::new()).await?;
            }
            Ok(a.get(1, "result").cloned().unwrap_or(Value::Null))
        })
    });
    // `chord(header, body, partial_args=(), …)`: `_chord.run`.
    add("celery.chord", |ctx| {
        Box::pin(async move {
            let a = Call(&ctx);
            let header = match a.get(0, "header") {
                Some(Value::Object(g)) => g
                    .get("kwargs")
                    .and_then(|k| k.get("tasks"))
                    .cloned()
                    .unwrap_or(json!([])),
                Some(h) => h.clone(),
                None => json!([]),
            };
            let body = a.get(1, "body").cloned().unwrap_or(Value::Null);
            let partial = a.list(2, "partial_args");
            let chord = signature_value(&canvas::chord_of(header, body));
            ctx.canvas()?.apply(&chord, partial).await
        })
    });
}

type BoxedResult = std::pin::Pin<Box<dyn std::future::Future<Output = TaskResult> + Send>>;

/// The call's arguments as Python binds `def f(name0, name1, …, **kwargs)`:
/// positional `i`, else keyword `name`.
struct Call<'a>(&'a TaskContext);

impl Call<'_> {
    fn get(&self, i: usize, name: &str) -> Option<&Value> {
        let r = self.0.request();
        r.args.get(i).or_else(|| r.kwargs.get(name))
    }

    /// A list argument (empty when absent or not a list).
    fn list(&self, i: usize, name: &str) -> Vec<Value> {
        self.get(i, name)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }
}

/// `[task(item) for item in it]` (or `task(*item)` for `starmap`), each
/// call run in this worker as Celery runs `task.type(item)`.
async fn map(ctx: &TaskContext, star: bool) -> TaskResult {
    let a = Call(ctx);
    let task = a
        .get(0, "task")
        .and_then(|t| t.get("task").or(Some(t)))
        .and_then(Value::as_str)
        .ok_or_else(|| TaskError::type_error("map: task is not a signature"))?
        .to_string();
    let mut out = Vec::new();
    for item in a.list(1, "it") {
        let args = match (star, item) {
            (true, Value::Array(items)) => items,
            (_, item) => vec![item],
        };
        out.push(ctx.canvas()?.call(&task, args, Map::new()).await?);
    }
    Ok(Value::Array(out))
}
