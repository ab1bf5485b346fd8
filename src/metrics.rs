//! `/metrics` (Prometheus text) and `/healthz` on `--metrics-port`.
//!
//! The names and labels are celery-exporter's (`celery_task_sent_total`,
//! …, `celery_task_runtime`, `celery_worker_up`, `celery_worker_tasks_active`,
//! `celery_queue_length`), so dashboards built on it work unchanged; the
//! counts come from the same typed [`Event`]s the logs and Flower see
//! ([`crate::events::dispatcher::Events`] hands each one to [`Metrics`]),
//! whether or not task events are being sent.

pub mod http;

use crate::events::Event;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::{Arc, Mutex};

/// prometheus_client's `Histogram.DEFAULT_BUCKETS` (celery-exporter's default).
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Tasks remembered between their `received` and their end, at most; a
/// message given back at shutdown never ends here, so the map is bounded.
const MAX_IN_FLIGHT: usize = 1 << 16;

/// The counters of one `(task name, queue)`.
#[derive(Debug, Default, Clone)]
struct Counts {
    sent: u64,
    received: u64,
    started: u64,
    succeeded: u64,
    /// By exception class name (celery-exporter's `exception` label).
    failed: BTreeMap<String, u64>,
    retried: u64,
    rejected: u64,
    revoked: u64,
    runtime: Histogram,
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        for (b, le) in self.buckets.iter_mut().zip(BUCKETS) {
            if v <= le {
                *b += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }
}

type Key = (Arc<str>, Arc<str>);

/// A counter family: name, help, and its value in a task's counts.
type Family = (&'static str, &'static str, fn(&Counts) -> u64);

#[derive(Default)]
struct Inner {
    /// uuid → (name, queue) for events that carry only the uuid.
    in_flight: HashMap<String, Key>,
    tasks: BTreeMap<Key, Counts>,
}

/// The worker's task counters.
pub struct Metrics {
    /// celery-exporter's `hostname` label: the node name's host part.
    hostname: String,
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn new(nodename: &str) -> Arc<Metrics> {
        let hostname = nodename
            .split_once('@')
            .map_or(nodename, |(_, h)| h)
            .to_string();
        Arc::new(Metrics {
            hostname,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// Counts one event.
    pub fn observe(&self, event: &Event) {
        let mut inner = self.inner.lock().expect("metrics lock");
        let inner = &mut *inner;
        let key = |inner: &mut Inner, uuid: &str, end: bool| -> Key {
            let found = if end {
                inner.in_flight.remove(uuid)
            } else {
                inner.in_flight.get(uuid).cloned()
            };
            found.unwrap_or_else(|| ("unknown".into(), "celery".into()))
        };
        match event {
            Event::TaskSent { name, queue, .. } => {
                let k = (Arc::from(name.as_str()), Arc::from(queue.as_str()));
                inner.tasks.entry(k).or_default().sent += 1;
            }
            Event::TaskReceived {
                uuid, name, queue, ..
            } => {
                let k: Key = (Arc::from(name.as_str()), Arc::from(queue.as_str()));
                if inner.in_flight.len() >= MAX_IN_FLIGHT {
                    inner.in_flight.clear();
                }
                inner.in_flight.insert(uuid.clone(), k.clone());
                inner.tasks.entry(k).or_default().received += 1;
            }
            Event::TaskStarted { uuid } => {
                let k = key(inner, uuid, false);
                inner.tasks.entry(k).or_default().started += 1;
            }
            Event::TaskSucceeded { uuid, runtime, .. } => {
                let k = key(inner, uuid, true);
                let c = inner.tasks.entry(k).or_default();
                c.succeeded += 1;
                c.runtime.observe(*runtime);
            }
            Event::TaskFailed {
                uuid, exception, ..
            }
            | Event::TaskRefused { uuid, exception } => {
                let k = key(inner, uuid, true);
                let class = exception_class(exception);
                *inner
                    .tasks
                    .entry(k)
                    .or_default()
                    .failed
                    .entry(class)
                    .or_default() += 1;
            }
            Event::TaskRetried { uuid, .. } => {
                let k = key(inner, uuid, true);
                inner.tasks.entry(k).or_default().retried += 1;
            }
            Event::TaskRejected { uuid, .. } => {
                let k = key(inner, uuid, true);
                inner.tasks.entry(k).or_default().rejected += 1;
            }
            Event::TaskRevoked { uuid, .. } => {
                let k = key(inner, uuid, true);
                inner.tasks.entry(k).or_default().revoked += 1;
            }
            Event::WorkerOnline(_) | Event::WorkerHeartbeat(_) | Event::WorkerOffline(_) => {}
        }
    }

    /// The exposition text, with the gauges read now.
    pub fn render(&self, gauges: &Gauges) -> String {
        let tasks = self.inner.lock().expect("metrics lock").tasks.clone();
        let host = escape(&self.hostname);
        // celery-exporter's label order: name, hostname[, exception], queue_name.
        let labels = |task: &str, exception: Option<&str>, queue: &str| {
            let exc = exception.map_or(String::new(), |e| format!(",exception=\"{}\"", escape(e)));
            format!(
                "name=\"{}\",hostname=\"{host}\"{exc},queue_name=\"{}\"",
                escape(task),
                escape(queue)
            )
        };
        let mut out = String::with_capacity(4096);
        let counters: [Family; 7] = [
            ("task_sent", "Sent when a task message is published.", |c| {
                c.sent
            }),
            (
                "task_received",
                "Sent when the worker receives a task.",
                |c| c.received,
            ),
            (
                "task_started",
                "Sent just before the worker executes the task.",
                |c| c.started,
            ),
            (
                "task_succeeded",
                "Sent if the task executed successfully.",
                |c| c.succeeded,
            ),
            (
                "task_rejected",
                "The task was rejected by the worker, possibly to be re-queued or moved to a dead letter queue.",
                |c| c.rejected,
            ),
            ("task_revoked", "Sent if the task has been revoked.", |c| {
                c.revoked
            }),
            (
                "task_retried",
                "Sent if the task failed, but will be retried in the future.",
                |c| c.retried,
            ),
        ];
        for (name, help, get) in counters {
            family(&mut out, &format!("celery_{name}_total"), "counter", help);
            for ((task, queue), c) in &tasks {
                let l = labels(task, None, queue);
                let _ = writeln!(out, "celery_{name}_total{{{l}}} {}.0", get(c));
            }
        }
        let help = "Sent if the execution of the task failed.";
        family(&mut out, "celery_task_failed_total", "counter", help);
        for ((task, queue), c) in &tasks {
            // As celery-exporter: a task seen but never failed shows a zero
            // with an empty exception, so the series exists.
            let none = [(String::new(), 0)];
            let failed: Vec<(&String, &u64)> = if c.failed.is_empty() {
                none.iter().map(|(e, n)| (e, n)).collect()
            } else {
                c.failed.iter().collect()
            };
            for (exc, n) in failed {
                let l = labels(task, Some(exc), queue);
                let _ = writeln!(out, "celery_task_failed_total{{{l}}} {n}.0");
            }
        }
        let help = "Histogram of task runtime measurements.";
        family(&mut out, "celery_task_runtime", "histogram", help);
        for ((task, queue), c) in &tasks {
            let l = labels(task, None, queue);
            for (le, n) in BUCKETS.iter().zip(c.runtime.buckets) {
                let _ = writeln!(
                    out,
                    "celery_task_runtime_bucket{{{l},le=\"{}\"}} {n}.0",
                    float(*le)
                );
            }
            let n = c.runtime.count;
            let _ = writeln!(out, "celery_task_runtime_bucket{{{l},le=\"+Inf\"}} {n}.0");
            let _ = writeln!(out, "celery_task_runtime_count{{{l}}} {n}.0");
            let _ = writeln!(
                out,
                "celery_task_runtime_sum{{{l}}} {}",
                float(c.runtime.sum)
            );
        }
        let worker = format!("hostname=\"{host}\"");
        let up = if gauges.up { 1.0 } else { 0.0 };
        gauge(
            &mut out,
            "celery_worker_up",
            "Indicates if a worker has recently sent a heartbeat.",
            &[(worker.clone(), up)],
        );
        let help = "The number of tasks the worker is currently processing";
        gauge(
            &mut out,
            "celery_worker_tasks_active",
            help,
            &[(worker, gauges.active as f64)],
        );
        let queues: Vec<(String, f64)> = gauges
            .queue_lengths
            .iter()
            .map(|(q, n)| (format!("queue_name=\"{}\"", escape(q)), *n as f64))
            .collect();
        gauge(
            &mut out,
            "celery_queue_length",
            "The number of message in broker queue.",
            &queues,
        );
        process_metrics(&mut out);
        out
    }
}

/// The `# HELP` and `# TYPE` lines of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// What `/metrics` reads at scrape time.
#[derive(Debug, Default)]
pub struct Gauges {
    pub up: bool,
    pub active: usize,
    pub queue_lengths: Vec<(String, u64)>,
}

fn gauge(out: &mut String, name: &str, help: &str, samples: &[(String, f64)]) {
    family(out, name, "gauge", help);
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{{{labels}}} {}", float(*v));
    }
}

/// prometheus_client's process collector, from `/proc/self`.
fn process_metrics(out: &mut String) {
    let ticks = 100.0; // USER_HZ on Linux
    let page = 4096.0;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)`, which may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // rest[0] is field 3 (state): utime=14, stime=15, starttime=22, vsize=23, rss=24.
    let cpu = (num(11) + num(12)) / ticks;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("btime ")
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
        })
        .unwrap_or(0.0);
    let start = boot + num(19) / ticks;
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()) as f64;
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(3)
                        .and_then(|v| v.parse::<f64>().ok())
                })
        })
        .unwrap_or(0.0);
    let rows = [
        (
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            "gauge",
            num(20),
        ),
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            "gauge",
            num(21) * page,
        ),
        (
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            "gauge",
            start,
        ),
        (
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            "counter",
            cpu,
        ),
        (
            "process_open_fds",
            "Number of open file descriptors.",
            "gauge",
            fds,
        ),
        (
            "process_max_fds",
            "Maximum number of open file descriptors.",
            "gauge",
            max_fds,
        ),
    ];
    for (name, help, kind, v) in rows {
        family(out, name, kind, help);
        let _ = writeln!(out, "{name} {}", float(v));
    }
}

/// Python's float repr, as prometheus_client prints values.
fn float(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let s = format!("{v:?}");
    if s.contains(['.', 'e', 'N']) {
        s
    } else {
        format!("{s}.0")
    }
}

/// Label values: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `ValueError('boom')` → `ValueError` (celery-exporter's exception label).
fn exception_class(exception: &str) -> String {
    exception
        .split(['(', ':'])
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(uuid: &str, name: &str) -> Event {
        Event::TaskReceived {
            uuid: uuid.into(),
            name: name.into(),
            queue: "q1".into(),
            args: "()".into(),
            kwargs: "{}".into(),
            root_id: None,
            parent_id: None,
            retries: 0,
            eta: None,
            expires: None,
        }
    }

    #[test]
    fn counts_follow_events_and_render_with_exporter_names() {
        let m = Metrics::new("w1@box");
        m.observe(&received("a", "t.add"));
        m.observe(&Event::TaskStarted { uuid: "a".into() });
        m.observe(&Event::TaskSucceeded {
            uuid: "a".into(),
            result: "3".into(),
            runtime: 0.02,
        });
        m.observe(&received("b", "t.add"));
        m.observe(&Event::TaskFailed {
            uuid: "b".into(),
            exception: "ValueError('no')".into(),
            traceback: String::new(),
        });
        let text = m.render(&Gauges {
            up: true,
            active: 0,
            queue_lengths: vec![("q1".into(), 7)],
        });
        let labels = "name=\"t.add\",hostname=\"box\",queue_name=\"q1\"";
        assert!(
            text.contains(&format!("celery_task_received_total{{{labels}}} 2.0")),
            "{text}"
        );
        assert!(text.contains(&format!("celery_task_succeeded_total{{{labels}}} 1.0")));
        assert!(text.contains(
            "celery_task_failed_total{name=\"t.add\",hostname=\"box\",exception=\"ValueError\",queue_name=\"q1\"} 1.0"
        ));
        assert!(text.contains(&format!(
            "celery_task_runtime_bucket{{{labels},le=\"0.025\"}} 1.0"
        )));
        assert!(text.contains(&format!(
            "celery_task_runtime_bucket{{{labels},le=\"0.01\"}} 0.0"
        )));
        assert!(text.contains("celery_queue_length{queue_name=\"q1\"} 7.0"));
        assert!(text.contains("celery_worker_up{hostname=\"box\"} 1.0"));
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge"));
        assert!(m.inner.lock().unwrap().in_flight.is_empty());
    }

    #[test]
    fn values_print_as_python_floats() {
        assert_eq!(float(1.0), "1.0");
        assert_eq!(float(0.005), "0.005");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
        assert_eq!(exception_class("KeyError: 'x'"), "KeyError");
    }
}
