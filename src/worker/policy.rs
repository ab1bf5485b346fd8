//! Each task's policy, resolved once per definition when the worker starts:
//! the task's own options (its decorator, annotations) over the worker's
//! settings (CLI > env > app conf > Celery's defaults). Request handling and
//! tracing read it from here and nowhere else.

use crate::config::Config;
use crate::registry::TaskOptions;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub acks_late: bool,
    pub reject_on_worker_lost: bool,
    pub acks_on_failure_or_timeout: bool,
    /// The task's default; a message's `ignore_result` header overrides it.
    pub ignore_result: bool,
    pub store_errors_even_if_ignored: bool,
    pub track_started: bool,
}

impl Policy {
    pub fn resolve(o: &TaskOptions, cfg: &Config) -> Policy {
        Policy {
            acks_late: o.acks_late.unwrap_or(cfg.task_acks_late),
            reject_on_worker_lost: o
                .reject_on_worker_lost
                .unwrap_or(cfg.task_reject_on_worker_lost),
            acks_on_failure_or_timeout: o
                .acks_on_failure_or_timeout
                .unwrap_or(cfg.task_acks_on_failure_or_timeout),
            ignore_result: o.ignore_result.unwrap_or(cfg.task_ignore_result),
            store_errors_even_if_ignored: o
                .store_errors_even_if_ignored
                .unwrap_or(cfg.task_store_errors_even_if_ignored),
            track_started: o.track_started.unwrap_or(cfg.task_track_started),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_options_win_over_the_config() {
        let cfg = Config {
            task_acks_late: true,
            task_track_started: true,
            ..Default::default()
        };
        let own = TaskOptions {
            acks_late: Some(false),
            ..Default::default()
        };
        let p = Policy::resolve(&own, &cfg);
        assert!(!p.acks_late, "the task's own option");
        assert!(p.track_started, "the worker's setting");
        assert!(p.acks_on_failure_or_timeout, "Celery's default");
    }
}
