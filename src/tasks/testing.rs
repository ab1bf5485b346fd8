//! Tasks the interop suite drives (registered with `RCW_TEST_TASKS=1`):
//! a slow one, a CPU-bound one, failing ones, one reporting progress, an echo.

use crate::registry::Registry;
use crate::task::{TaskContext, TaskError};
use serde_json::{Value, json};
use std::time::Duration;

fn seconds(v: &Value) -> Result<Duration, TaskError> {
    v.as_f64()
        .filter(|s| *s >= 0.0 && s.is_finite())
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            TaskError::type_error(format!("seconds must be a non-negative number, not {v}"))
        })
}

/// Sleeps `seconds`, then returns `result` (or the seconds when it is null).
fn sleep_then_return(_ctx: &TaskContext, args: crate::task::Args) -> crate::task::TaskResult {
    std::thread::sleep(seconds(args.value(0))?);
    Ok(match args.value(1) {
        Value::Null => args.value(0).clone(),
        r => r.clone(),
    })
}

pub fn register(registry: &mut Registry) {
    registry.blocking(
        "rcw.testing.sleep",
        &["seconds", "result=null"],
        sleep_then_return,
    );
    // Like Python's ValueError(message): any value is accepted as the argument.
    registry.blocking("rcw.testing.fail", &["message=\"boom\""], |_ctx, args| {
        Err(TaskError::new(
            "ValueError",
            "builtins",
            vec![args.value(0).clone()],
        ))
    });
    registry.blocking(
        "rcw.testing.fail_custom",
        &["message=\"bad file\""],
        |_ctx, args| {
            Err(TaskError::new(
                "IngestionError",
                "app.workers.tasks",
                vec![args.value(0).clone()],
            ))
        },
    );
    registry.blocking(
        "rcw.testing.progress",
        &["steps", "delay=0.05"],
        |ctx, args| {
            let steps: u64 = args.get(0)?;
            let delay = seconds(args.value(1))?;
            for i in 1..=steps {
                ctx.update_state("PROGRESS", json!({"current": i, "total": steps}))?;
                std::thread::sleep(delay);
            }
            Ok(json!({"done": steps}))
        },
    );
    // Burns CPU (no sleeping, no yielding) to show a busy task can't stall the pipeline.
    registry.blocking("rcw.testing.spin", &["seconds"], |_ctx, args| {
        let until = std::time::Instant::now() + seconds(args.value(0))?;
        let mut n: u64 = 0;
        while std::time::Instant::now() < until {
            n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        std::hint::black_box(n);
        Ok(Value::Bool(true))
    });
    register_issue3(registry);
    registry.asynchronous("rcw.testing.echo", &["value"], |_ctx, args| {
        let v = args.value(0).clone();
        async move { Ok(v) }
    });
    // `echo` whose definition names its queue, as `@app.task(queue="routed")`.
    registry.add(
        Registry::async_def("rcw.testing.routed_echo", &["value"], |_ctx, args| {
            let v = args.value(0).clone();
            async move { Ok(v) }
        })
        .with(|o| o.queue = Some("routed".into())),
    );
    // An async sleep: a terminate aborts it at once (a blocking sleep can't be).
    registry.asynchronous(
        "rcw.testing.async_sleep",
        &["seconds", "result=null"],
        |_ctx, args| {
            let wait = seconds(args.value(0));
            let out = match args.value(1) {
                Value::Null => args.value(0).clone(),
                r => r.clone(),
            };
            async move {
                tokio::time::sleep(wait?).await;
                Ok(out)
            }
        },
    );
}

/// ConnectionError(f"attempt {retries}"), as the Python twins raise it.
fn attempt_error(ctx: &TaskContext) -> TaskError {
    TaskError::builtin(
        "ConnectionError",
        format!("attempt {}", ctx.request().retries),
    )
}

/// Retries, canvas helpers, rate limits, acks_late and time limits.
fn register_issue3(registry: &mut Registry) {
    registry.add(
        Registry::blocking_def(
            "rcw.testing.flaky",
            &["failures", "countdown=0.2"],
            |ctx, args| {
                let failures: u32 = args.get(0)?;
                let countdown: f64 = args.get(1)?;
                if ctx.request().retries < failures {
                    return Err(ctx
                        .retry()
                        .exc(attempt_error(ctx))
                        .countdown(countdown)
                        .into());
                }
                Ok(json!({"attempts": ctx.request().retries + 1}))
            },
        )
        .with(|o| o.max_retries = Some(Some(3))),
    );
    registry.add(
        Registry::blocking_def("rcw.testing.retry_plain", &["failures"], |ctx, args| {
            let failures: u32 = args.get(0)?;
            if ctx.request().retries < failures {
                return Err(ctx.retry().into());
            }
            Ok(json!(ctx.request().retries))
        })
        .with(|o| {
            o.max_retries = Some(Some(2));
            o.default_retry_delay = Some(0.2);
        }),
    );
    let failing_until = |ctx: &TaskContext, args: crate::task::Args| {
        let failures: u32 = args.get(0)?;
        if ctx.request().retries < failures {
            return Err(attempt_error(ctx));
        }
        Ok(json!(ctx.request().retries))
    };
    registry.add(
        Registry::blocking_def("rcw.testing.autoretry", &["failures"], failing_until).with(|o| {
            o.autoretry_for = vec!["ConnectionError".into()];
            o.max_retries = Some(Some(3));
            o.default_retry_delay = Some(0.2);
        }),
    );
    registry.add(
        Registry::blocking_def(
            "rcw.testing.autoretry_backoff",
            &["failures"],
            failing_until,
        )
        .with(|o| {
            o.autoretry_for = vec!["ConnectionError".into()];
            o.retry_backoff = Some(1.0);
            o.retry_backoff_max = Some(4.0);
            o.retry_jitter = Some(false);
            o.max_retries = Some(Some(5));
        }),
    );
    registry.asynchronous("rcw.testing.tsum", &["numbers"], |_ctx, args| {
        let r = args.get::<Vec<Value>>(0).and_then(|nums| {
            nums.iter()
                .try_fold(json!(0), |acc, n| super::example::py_add(&acc, n))
        });
        async move { r }
    });
    registry.asynchronous("rcw.testing.mul", &["x", "y"], |_ctx, args| {
        let r = match (args.value(0).as_i64(), args.value(1).as_i64()) {
            (Some(x), Some(y)) => Ok(json!(x * y)),
            _ => match (args.value(0).as_f64(), args.value(1).as_f64()) {
                (Some(x), Some(y)) => Ok(json!(x * y)),
                _ => Err(TaskError::type_error("can't multiply non-numbers")),
            },
        };
        async move { r }
    });
    registry.add(
        Registry::async_def("rcw.testing.rate_limited", &["i"], |_ctx, args| {
            let v = args.value(0).clone();
            async move { Ok(v) }
        })
        .with(|o| o.rate_limit = Some("5/s".into())),
    );
    registry.add(
        Registry::blocking_def(
            "rcw.testing.late_sleep",
            &["seconds", "result=null"],
            sleep_then_return,
        )
        .with(|o| o.acks_late = Some(true)),
    );
    registry.add(
        Registry::blocking_def("rcw.testing.soft_limited", &["seconds"], |ctx, args| {
            let until = std::time::Instant::now() + seconds(args.value(0))?;
            while std::time::Instant::now() < until {
                if ctx.soft_time_limit_exceeded() {
                    return Ok(json!("soft limit observed"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(json!("done"))
        })
        .with(|o| {
            o.soft_time_limit = Some(1.0);
            o.time_limit = Some(3.0);
        }),
    );
    registry.add(
        Registry::blocking_def("rcw.testing.ignores_soft", &["seconds"], |_ctx, args| {
            std::thread::sleep(seconds(args.value(0))?);
            Ok(json!("done"))
        })
        .with(|o| o.soft_time_limit = Some(1.0)),
    );
}
