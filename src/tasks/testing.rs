//! Tasks the interop suite drives (registered with `RCW_TEST_TASKS=1`):
//! a slow one, a CPU-bound one, failing ones, one reporting progress, an echo.

use crate::registry::Registry;
use crate::task::TaskError;
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

pub fn register(registry: &mut Registry) {
    registry.blocking(
        "rcw.testing.sleep",
        &["seconds", "result=null"],
        |_ctx, args| {
            std::thread::sleep(seconds(args.value(0))?);
            Ok(match args.value(1) {
                Value::Null => args.value(0).clone(),
                r => r.clone(),
            })
        },
    );
    registry.blocking("rcw.testing.fail", &["message=\"boom\""], |_ctx, args| {
        Err(TaskError::value_error(args.get::<String>(0)?))
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
    registry.asynchronous("rcw.testing.echo", &["value"], |_ctx, args| {
        let v = args.value(0).clone();
        async move { Ok(v) }
    });
}
