//! Celery's events (SPEC §9): typed here, serialised once by the
//! [`dispatcher`] on their way to the `celeryev` exchange.
//!
//! Worker events (`worker-online`, `-heartbeat`, `-offline`) go out whenever
//! heartbeats are on; task events only while task events are enabled
//! (`-E`, `worker_send_task_events`, or the `enable_events` command), and the
//! check costs one atomic load, so a disabled event never allocates.

pub mod dispatcher;

use serde_json::Value;

/// What the worker reports about itself in every worker event.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerStatus {
    /// Heartbeat interval in seconds (`freq`).
    pub freq: f64,
    pub active: usize,
    pub processed: u64,
    pub loadavg: [f64; 3],
}

/// One event, before the common fields (hostname, clock, …) are added.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    WorkerOnline(WorkerStatus),
    WorkerHeartbeat(WorkerStatus),
    WorkerOffline(WorkerStatus),
    /// A task message the worker published (chain steps, callbacks, …):
    /// counted for `/metrics`, sent as an event only with `task_send_sent_event`.
    TaskSent {
        uuid: String,
        name: String,
        queue: String,
    },
    TaskReceived {
        uuid: String,
        name: String,
        /// The queue it was consumed from (for `/metrics`; not in the event).
        queue: String,
        /// `argsrepr` / `kwargsrepr`.
        args: String,
        kwargs: String,
        root_id: Option<String>,
        parent_id: Option<String>,
        retries: u32,
        eta: Option<String>,
        expires: Option<String>,
    },
    TaskStarted {
        uuid: String,
    },
    TaskSucceeded {
        uuid: String,
        /// Python repr of the return value.
        result: String,
        runtime: f64,
    },
    TaskFailed {
        uuid: String,
        exception: String,
        traceback: String,
    },
    TaskRetried {
        uuid: String,
        exception: String,
        traceback: String,
    },
    TaskRejected {
        uuid: String,
        requeue: bool,
    },
    /// `task-failed` without a traceback: the consumer refused the message
    /// (an unregistered task), as Celery's `on_unknown_task` reports it.
    TaskRefused {
        uuid: String,
        exception: String,
    },
    TaskRevoked {
        uuid: String,
        terminated: bool,
        signum: Option<i32>,
        expired: bool,
    },
}

/// The fields every event carries, in Celery's order around the specific ones.
#[derive(Debug, Clone)]
pub struct Common<'a> {
    pub hostname: &'a str,
    pub pid: u32,
    pub clock: u64,
    pub timestamp: f64,
}

impl Event {
    /// `worker-heartbeat`, `task-succeeded`, …
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::WorkerOnline(_) => "worker-online",
            Event::WorkerHeartbeat(_) => "worker-heartbeat",
            Event::WorkerOffline(_) => "worker-offline",
            Event::TaskSent { .. } => "task-sent",
            Event::TaskReceived { .. } => "task-received",
            Event::TaskStarted { .. } => "task-started",
            Event::TaskSucceeded { .. } => "task-succeeded",
            Event::TaskFailed { .. } | Event::TaskRefused { .. } => "task-failed",
            Event::TaskRetried { .. } => "task-retried",
            Event::TaskRejected { .. } => "task-rejected",
            Event::TaskRevoked { .. } => "task-revoked",
        }
    }

    /// Task events belong to the `task` group that `-E` switches on.
    pub fn is_task_event(&self) -> bool {
        !matches!(
            self,
            Event::WorkerOnline(_) | Event::WorkerHeartbeat(_) | Event::WorkerOffline(_)
        )
    }

    /// The routing key: the type with `-` as `.` (`worker.heartbeat`).
    pub fn routing_key(&self) -> String {
        self.type_name().replace('-', ".")
    }

    /// The event body as Celery's `event()` + dispatcher build it.
    pub fn to_json(&self, c: &Common<'_>) -> Value {
        let mut out = Vec::with_capacity(256);
        self.write_json(c, &mut out);
        serde_json::from_slice(&out).expect("events serialise to valid JSON")
    }

    /// Writes the event body as Python's `json.dumps` does (`", "` and
    /// `": "` separators, Celery's field order), straight into `out`: the
    /// dispatcher's hot path builds no intermediate JSON tree.
    pub fn write_json(&self, c: &Common<'_>, out: &mut Vec<u8>) {
        let mut o = Obj::start(out);
        o.field("hostname", c.hostname);
        o.field("utcoffset", &utcoffset_hours());
        o.field("pid", &c.pid);
        o.field("clock", &c.clock);
        match self {
            Event::WorkerOnline(s) | Event::WorkerHeartbeat(s) | Event::WorkerOffline(s) => {
                o.field("freq", &s.freq);
                o.field("active", &s.active);
                o.field("processed", &s.processed);
                o.field("loadavg", &s.loadavg);
                o.field("sw_ident", SW_IDENT);
                o.field("sw_ver", env!("CARGO_PKG_VERSION"));
                o.field("sw_sys", sw_sys());
            }
            Event::TaskSent { uuid, name, queue } => {
                o.field("uuid", uuid);
                o.field("name", name);
                o.field("queue", queue);
            }
            Event::TaskReceived {
                uuid,
                name,
                queue: _,
                args,
                kwargs,
                root_id,
                parent_id,
                retries,
                eta,
                expires,
            } => {
                o.field("uuid", uuid);
                o.field("name", name);
                o.field("args", args);
                o.field("kwargs", kwargs);
                o.field("root_id", root_id);
                o.field("parent_id", parent_id);
                o.field("retries", retries);
                o.field("eta", eta);
                o.field("expires", expires);
            }
            Event::TaskStarted { uuid } => o.field("uuid", uuid),
            Event::TaskSucceeded {
                uuid,
                result,
                runtime,
            } => {
                o.field("uuid", uuid);
                o.field("result", result);
                o.field("runtime", runtime);
            }
            Event::TaskFailed {
                uuid,
                exception,
                traceback,
            }
            | Event::TaskRetried {
                uuid,
                exception,
                traceback,
            } => {
                o.field("uuid", uuid);
                o.field("exception", exception);
                o.field("traceback", traceback);
            }
            Event::TaskRefused { uuid, exception } => {
                o.field("uuid", uuid);
                o.field("exception", exception);
            }
            Event::TaskRejected { uuid, requeue } => {
                o.field("uuid", uuid);
                o.field("requeue", requeue);
            }
            Event::TaskRevoked {
                uuid,
                terminated,
                signum,
                expired,
            } => {
                o.field("uuid", uuid);
                o.field("terminated", terminated);
                o.field("signum", signum);
                o.field("expired", expired);
            }
        }
        o.field("timestamp", &c.timestamp);
        o.field("type", self.type_name());
        o.end();
    }
}

/// A JSON object written field by field in Python's `json.dumps` format.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    fn start(out: &'a mut Vec<u8>) -> Obj<'a> {
        out.push(b'{');
        Obj { out, first: true }
    }

    fn field<T: serde::Serialize + ?Sized>(&mut self, key: &str, value: &T) {
        if !self.first {
            self.out.extend_from_slice(b", ");
        }
        self.first = false;
        // Strings, numbers, bools and options of them cannot fail to serialise.
        let _ = serde_json::to_writer(&mut *self.out, key);
        self.out.extend_from_slice(b": ");
        let _ = serde_json::to_writer(&mut *self.out, value);
    }

    fn end(self) {
        self.out.push(b'}');
    }
}

/// `sw_ident` of worker events: who is speaking, for `celery events` and Flower.
pub const SW_IDENT: &str = "rust-celery-worker";

/// `platform.system()`.
pub fn sw_sys() -> &'static str {
    match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "Darwin",
        "windows" => "Windows",
        "freebsd" => "FreeBSD",
        other => other,
    }
}

/// Celery's `utcoffset()`: hours west of UTC of the local zone (`0.0` in
/// UTC). Looked up at most once a minute (it only moves with DST).
pub fn utcoffset_hours() -> f64 {
    static CACHE: std::sync::Mutex<Option<(std::time::Instant, f64)>> = std::sync::Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    match *cache {
        Some((at, v)) if at.elapsed() < std::time::Duration::from_secs(60) => v,
        _ => {
            let secs = chrono::Local::now().offset().local_minus_utc();
            // Celery: `(timezone if not isdst else altzone) // 3600`: minus the east offset.
            let v = (-(secs as f64) / 3600.0).floor() + 0.0;
            *cache = Some((std::time::Instant::now(), v));
            v
        }
    }
}

/// The 1, 5 and 15 minute load averages, rounded as Celery's `load_average`.
pub fn loadavg() -> [f64; 3] {
    let mut out = [0.0; 3];
    if let Ok(text) = std::fs::read_to_string("/proc/loadavg") {
        for (slot, part) in out.iter_mut().zip(text.split_whitespace()) {
            *slot = part
                .parse::<f64>()
                .map(|v| (v * 100.0).round() / 100.0)
                .unwrap_or(0.0);
        }
    }
    out
}

/// Unix time now, as a float.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_received_has_celerys_fields_in_order() {
        let e = Event::TaskReceived {
            uuid: "u".into(),
            name: "tasks.add".into(),
            queue: "celery".into(),
            args: "(2, 3)".into(),
            kwargs: "{}".into(),
            root_id: Some("u".into()),
            parent_id: None,
            retries: 0,
            eta: None,
            expires: None,
        };
        let v = e.to_json(&Common {
            hostname: "w@h",
            pid: 7,
            clock: 4,
            timestamp: 1.5,
        });
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "hostname",
                "utcoffset",
                "pid",
                "clock",
                "uuid",
                "name",
                "args",
                "kwargs",
                "root_id",
                "parent_id",
                "retries",
                "eta",
                "expires",
                "timestamp",
                "type"
            ]
        );
        assert_eq!(e.routing_key(), "task.received");
    }
}
