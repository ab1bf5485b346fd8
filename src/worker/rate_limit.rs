//! Per-task rate limits as Celery applies them: per worker, per task name, a
//! token bucket of capacity one (`kombu.utils.limits.TokenBucket`), so
//! `"10/s"` spaces starts 100 ms apart and never bursts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Parses `"10/s"`, `"100/m"`, `"1000/h"` or a bare number (per second) into
/// tasks per second. `"0"` means no limit (`None`).
pub fn parse(spec: &str) -> Result<Option<f64>, String> {
    let spec = spec.trim();
    let (n, unit) = spec.split_once('/').unwrap_or((spec, "s"));
    let n: f64 = n
        .trim()
        .parse()
        .map_err(|_| format!("invalid rate limit {spec:?}: expected e.g. 10/s, 100/m, 1000/h"))?;
    let per = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "invalid rate limit unit {other:?} in {spec:?}: use s, m or h"
            ));
        }
    };
    Ok((n > 0.0).then(|| n / per))
}

/// One task's bucket: the earliest instant the next start may happen.
pub struct Bucket {
    /// As given (`"10/s"`), for `inspect registered`.
    pub spec: String,
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl Bucket {
    pub fn new(per_second: f64) -> Bucket {
        Bucket {
            spec: format!("{per_second}/s"),
            interval: crate::protocol::duration_secs(1.0 / per_second),
            next: Mutex::new(None),
        }
    }

    /// Takes the next start slot and waits for it. Reservations are handed out
    /// in call order, so waiting requests keep their turn.
    pub async fn acquire(&self) {
        let at = {
            let mut next = self.next.lock().expect("bucket lock");
            let now = Instant::now();
            let at = next.map_or(now, |n| n.max(now));
            *next = Some(at + self.interval);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// Buckets for every rate-limited task, built at start-up and changed live
/// by the `rate_limit` remote-control command.
#[derive(Default)]
pub struct Limits {
    buckets: std::sync::RwLock<HashMap<String, std::sync::Arc<Bucket>>>,
}

impl Limits {
    pub fn new(
        registry: &crate::registry::Registry,
        default: Option<&str>,
    ) -> Result<Limits, String> {
        let mut buckets = HashMap::new();
        for name in registry.names() {
            let def = registry.get(name).expect("listed names exist");
            if let Some(spec) = def.options.rate_limit.as_deref().or(default)
                && let Some(rate) = parse(spec)?
            {
                let bucket = Bucket {
                    spec: spec.to_string(),
                    ..Bucket::new(rate)
                };
                buckets.insert(name.to_string(), std::sync::Arc::new(bucket));
            }
        }
        Ok(Limits {
            buckets: std::sync::RwLock::new(buckets),
        })
    }

    pub fn get(&self, task: &str) -> Option<std::sync::Arc<Bucket>> {
        let buckets = self.buckets.read().expect("limits lock");
        if buckets.is_empty() {
            return None;
        }
        buckets.get(task).cloned()
    }

    /// Sets (or with `None`, removes) the limit of `task`, as Celery's
    /// `reset_rate_limits` does after the `rate_limit` command.
    pub fn set(&self, task: &str, limit: Option<(f64, String)>) {
        let mut buckets = self.buckets.write().expect("limits lock");
        match limit {
            Some((rate, spec)) => {
                let bucket = Bucket {
                    spec,
                    ..Bucket::new(rate)
                };
                buckets.insert(task.to_string(), std::sync::Arc::new(bucket));
            }
            None => {
                buckets.remove(task);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_celery_rate_strings() {
        assert_eq!(parse("10/s"), Ok(Some(10.0)));
        assert_eq!(parse("120/m"), Ok(Some(2.0)));
        assert_eq!(parse("3600/h"), Ok(Some(1.0)));
        assert_eq!(parse("5"), Ok(Some(5.0)));
        assert_eq!(parse("0"), Ok(None));
        assert!(parse("fast").is_err());
        assert!(parse("1/d").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn spaces_starts_without_bursting() {
        let b = Bucket::new(5.0);
        let t0 = Instant::now();
        for _ in 0..5 {
            b.acquire().await;
        }
        let spent = t0.elapsed();
        assert!(
            spent >= Duration::from_millis(800) && spent < Duration::from_millis(850),
            "{spent:?}"
        );
    }
}
