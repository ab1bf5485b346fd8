//! The worker's state, one place (as `celery/worker/state.py`): the requests
//! it holds (reserved, scheduled for an ETA, active), the revoked ids, counts
//! per task name, and the Lamport clock its events and replies carry.
//! `request` and `trace` update it; the pidbox commands read it.

use crate::task::Request;
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Celery's `REVOKES_MAX` and `REVOKE_EXPIRES` (env `CELERY_WORKER_REVOKES_MAX`,
/// `CELERY_WORKER_REVOKE_EXPIRES` override them, as in Celery).
pub const REVOKES_MAX: usize = 50_000;
pub const REVOKE_EXPIRES: Duration = Duration::from_secs(10_800);

/// A task's (soft, hard) time limits in seconds, as `time_limit` sets them.
pub type SoftHard = (Option<f64>, Option<f64>);

/// Where a held request is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// Prefetched, waiting for a slot (or a rate-limit token).
    Reserved,
    /// Waiting for its ETA.
    Scheduled,
    /// Running since `time_start` (unix seconds).
    Active { time_start: f64 },
}

/// Stops a held request: before it runs (revoke) or while it runs (terminate).
#[derive(Debug, Default)]
pub struct Stop {
    token: CancellationToken,
    /// The signal a terminate asked for; 0 when the stop is a plain revoke.
    signal: AtomicI32,
}

impl Held {
    /// The pid running the body (Celery's `worker_pid`).
    pub fn worker_pid(&self, own: u32) -> u32 {
        match self.process.as_ref().map(|p| p.load(Ordering::Acquire)) {
            Some(pid) if pid != 0 => pid,
            _ => own,
        }
    }
}

impl Stop {
    /// Resolves once the request is revoked or terminated.
    pub async fn stopped(&self) {
        self.token.cancelled().await
    }

    pub fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The terminate signal, if this stop is a terminate.
    pub fn signal(&self) -> Option<i32> {
        match self.signal.load(Ordering::Acquire) {
            0 => None,
            s => Some(s),
        }
    }

    fn fire(&self, signal: Option<i32>) {
        if let Some(s) = signal {
            self.signal.store(s, Ordering::Release);
        }
        self.token.cancel();
    }
}

/// One request the worker holds.
#[derive(Debug, Clone)]
pub struct Held {
    pub request: Arc<Request>,
    pub phase: Phase,
    pub acknowledged: bool,
    /// The process running the body: a pool process once it reports in
    /// (non-zero), else this one.
    pub process: Option<Arc<AtomicU32>>,
    /// The ETA as Celery prints it (`isoformat()`), for `scheduled`.
    pub eta: Option<String>,
    pub stop: Arc<Stop>,
}

/// Celery's `LimitedSet`: at most `maxlen` ids, each forgotten `expires`
/// after it was added; iteration is oldest first.
#[derive(Debug)]
pub struct LimitedSet {
    maxlen: usize,
    expires: Duration,
    added: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl LimitedSet {
    pub fn new(maxlen: usize, expires: Duration) -> LimitedSet {
        LimitedSet {
            maxlen,
            expires,
            added: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn add(&mut self, id: &str) {
        let now = Instant::now();
        self.added.insert(id.to_string(), now);
        self.order.push_back((now, id.to_string()));
        self.purge(now);
    }

    pub fn contains(&self, id: &str) -> bool {
        self.added
            .get(id)
            .is_some_and(|t| t.elapsed() < self.expires)
    }

    pub fn discard(&mut self, id: &str) {
        self.added.remove(id);
    }

    pub fn len(&self) -> usize {
        self.added.len()
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
    }

    /// Drops expired ids and, past `maxlen`, the oldest ones.
    pub fn purge(&mut self, now: Instant) {
        while let Some((at, id)) = self.order.front() {
            let current = self.added.get(id) == Some(at);
            let expired = now.duration_since(*at) >= self.expires;
            if !current {
                // Re-added or discarded since: this entry is stale.
                self.order.pop_front();
            } else if expired || self.added.len() > self.maxlen {
                let (_, id) = self.order.pop_front().expect("front exists");
                self.added.remove(&id);
            } else {
                break;
            }
        }
    }

    /// The live ids, oldest first.
    pub fn ids(&self) -> Vec<String> {
        self.order
            .iter()
            .filter(|(at, id)| self.added.get(id) == Some(at) && at.elapsed() < self.expires)
            .map(|(_, id)| id.clone())
            .collect()
    }
}

/// Everything the worker knows about its own work.
pub struct WorkerState {
    held: Mutex<HashMap<String, Held>>,
    revoked: Mutex<LimitedSet>,
    total: Mutex<HashMap<String, u64>>,
    clock: AtomicU64,
    started: Instant,
    /// Live changes made by `time_limit`: task → (soft, hard).
    time_limits: Mutex<HashMap<String, SoftHard>>,
    /// `revoke_by_stamped_headers`: stamp name → revoked values.
    revoked_stamps: Mutex<HashMap<String, Vec<Value>>>,
    pid: AtomicU32,
}

impl Default for WorkerState {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerState {
    pub fn new() -> WorkerState {
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
        let maxlen = env("CELERY_WORKER_REVOKES_MAX").map_or(REVOKES_MAX, |v| v as usize);
        let expires = env("CELERY_WORKER_REVOKE_EXPIRES")
            .map_or(REVOKE_EXPIRES, crate::protocol::duration_secs);
        WorkerState {
            held: Mutex::new(HashMap::new()),
            revoked: Mutex::new(LimitedSet::new(maxlen, expires)),
            total: Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
            started: Instant::now(),
            time_limits: Mutex::new(HashMap::new()),
            revoked_stamps: Mutex::new(HashMap::new()),
            pid: AtomicU32::new(std::process::id()),
        }
    }

    // ---- the Lamport clock (kombu's LamportClock) ----

    /// Ticks and returns the new value (an event or a reply is sent).
    pub fn clock_forward(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Takes in a clock seen on a message: `max(ours, theirs) + 1`.
    pub fn clock_adjust(&self, other: u64) -> u64 {
        let mut cur = self.clock.load(Ordering::Acquire);
        loop {
            let next = cur.max(other) + 1;
            match self
                .clock
                .compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return next,
                Err(seen) => cur = seen,
            }
        }
    }

    pub fn clock(&self) -> u64 {
        self.clock.load(Ordering::Acquire)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    // ---- held requests ----

    /// A request was received: reserved, or scheduled when it has an ETA to wait for.
    pub fn hold(&self, request: Arc<Request>, eta: Option<String>) -> Arc<Stop> {
        let stop = Arc::new(Stop::default());
        let phase = if eta.is_some() {
            Phase::Scheduled
        } else {
            Phase::Reserved
        };
        let held = Held {
            request: Arc::clone(&request),
            phase,
            acknowledged: false,
            process: None,
            eta,
            stop: Arc::clone(&stop),
        };
        self.held
            .lock()
            .expect("state lock")
            .insert(request.id.clone(), held);
        stop
    }

    /// Its ETA passed: reserved now.
    pub fn reserve(&self, id: &str) {
        if let Some(h) = self.held.lock().expect("state lock").get_mut(id) {
            h.phase = Phase::Reserved;
            h.eta = None;
        }
    }

    pub fn acknowledged(&self, id: &str) {
        if let Some(h) = self.held.lock().expect("state lock").get_mut(id) {
            h.acknowledged = true;
        }
    }

    /// Execution begins (Celery's `task_accepted`): counted per task name.
    /// `process` is where the body reports the pool process it runs in.
    pub fn start(&self, id: &str, task: &str, process: Option<Arc<AtomicU32>>) {
        if let Some(h) = self.held.lock().expect("state lock").get_mut(id) {
            h.phase = Phase::Active {
                time_start: crate::events::unix_now(),
            };
            h.process = process;
        }
        let mut total = self.total.lock().expect("state lock");
        match total.get_mut(task) {
            Some(n) => *n += 1,
            None => {
                total.insert(task.to_string(), 1);
            }
        }
    }

    /// The request is settled: no longer held.
    pub fn release(&self, id: &str) {
        self.held.lock().expect("state lock").remove(id);
    }

    pub fn get(&self, id: &str) -> Option<Held> {
        self.held.lock().expect("state lock").get(id).cloned()
    }

    /// Held requests in `phase` (any `Active` matches `Active`), oldest start first.
    pub fn in_phase(&self, want: fn(&Phase) -> bool) -> Vec<Held> {
        let held = self.held.lock().expect("state lock");
        let mut out: Vec<Held> = held.values().filter(|h| want(&h.phase)).cloned().collect();
        out.sort_by(|a, b| a.request.id.cmp(&b.request.id));
        out
    }

    pub fn active_count(&self) -> usize {
        self.held
            .lock()
            .expect("state lock")
            .values()
            .filter(|h| matches!(h.phase, Phase::Active { .. }))
            .count()
    }

    /// Tasks run so far, per name (`stats.total`).
    pub fn totals(&self) -> Vec<(String, u64)> {
        let total = self.total.lock().expect("state lock");
        let mut v: Vec<(String, u64)> = total.iter().map(|(k, n)| (k.clone(), *n)).collect();
        v.sort();
        v
    }

    // ---- revokes ----

    /// Flags ids as revoked; a held request that has not started is stopped
    /// now. Returns the ids of held requests that are active.
    pub fn revoke(&self, ids: &[String]) -> Vec<String> {
        {
            let mut revoked = self.revoked.lock().expect("state lock");
            for id in ids {
                revoked.add(id);
            }
        }
        let held = self.held.lock().expect("state lock");
        let mut active = Vec::new();
        for id in ids {
            if let Some(h) = held.get(id) {
                if matches!(h.phase, Phase::Active { .. }) {
                    active.push(id.clone());
                } else {
                    h.stop.fire(None);
                }
            }
        }
        active
    }

    /// Terminates a held request with `signal`: a running body is stopped, a
    /// waiting one discarded. Returns whether this worker held it.
    pub fn terminate(&self, id: &str, signal: i32) -> bool {
        match self.held.lock().expect("state lock").get(id) {
            Some(h) => {
                h.stop.fire(Some(signal));
                true
            }
            None => false,
        }
    }

    pub fn is_revoked(&self, id: &str) -> bool {
        self.revoked.lock().expect("state lock").contains(id)
    }

    /// The revoked ids, oldest first (expired ones purged).
    pub fn revoked_ids(&self) -> Vec<String> {
        let mut revoked = self.revoked.lock().expect("state lock");
        revoked.purge(Instant::now());
        revoked.ids()
    }

    /// Celery's `merge_revoked`: ids revoked elsewhere, stamped with our clock.
    pub fn merge_revoked(&self, ids: &[String]) {
        let mut revoked = self.revoked.lock().expect("state lock");
        for id in ids {
            revoked.add(id);
        }
    }

    pub fn discard_revoked(&self, id: &str) {
        self.revoked.lock().expect("state lock").discard(id);
    }

    /// Adds revoked stamps (`{"stamp": value or [values]}`).
    pub fn revoke_stamps(&self, headers: &Map<String, Value>) {
        let mut stamps = self.revoked_stamps.lock().expect("state lock");
        for (k, v) in headers {
            let entry = stamps.entry(k.clone()).or_default();
            match v {
                Value::Array(items) => entry.extend(items.iter().cloned()),
                one => entry.push(one.clone()),
            }
        }
    }

    /// Does a message with these headers carry a revoked stamp?
    pub fn revoked_by_stamps(&self, headers: &Map<String, Value>) -> bool {
        let revoked = self.revoked_stamps.lock().expect("state lock");
        if revoked.is_empty() {
            return false;
        }
        !stamp_matches(&revoked, headers).is_empty()
    }

    /// Terminates active requests stamped with any of `headers`' values;
    /// returns stamp → matched values.
    pub fn terminate_stamped(
        &self,
        headers: &Map<String, Value>,
        signal: i32,
    ) -> Vec<(String, Vec<String>)> {
        let wanted: HashMap<String, Vec<Value>> = headers
            .iter()
            .map(|(k, v)| match v {
                Value::Array(items) => (k.clone(), items.clone()),
                one => (k.clone(), vec![one.clone()]),
            })
            .collect();
        let mut matched: Vec<(String, Vec<String>)> = Vec::new();
        let held = self.held.lock().expect("state lock");
        for h in held.values() {
            if !matches!(h.phase, Phase::Active { .. }) {
                continue;
            }
            let hits = stamp_matches(&wanted, &h.request.headers);
            if hits.is_empty() {
                continue;
            }
            h.stop.fire(Some(signal));
            for (k, v) in hits {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                match matched.iter_mut().find(|(mk, _)| *mk == k) {
                    Some((_, vs)) if !vs.contains(&text) => vs.push(text),
                    Some(_) => {}
                    None => matched.push((k, vec![text])),
                }
            }
        }
        matched
    }

    // ---- live task settings ----

    /// `time_limit` command: new (soft, hard) limits for a task name.
    pub fn set_time_limits(&self, task: &str, soft: Option<f64>, hard: Option<f64>) {
        self.time_limits
            .lock()
            .expect("state lock")
            .insert(task.to_string(), (soft, hard));
    }

    /// Limits set by `time_limit` for `task`, if any: (soft, hard).
    pub fn time_limits(&self, task: &str) -> Option<(Option<f64>, Option<f64>)> {
        let limits = self.time_limits.lock().expect("state lock");
        if limits.is_empty() {
            return None;
        }
        limits.get(task).copied()
    }
}

/// Celery's `Request.revoked` stamp check: `(stamp, value)` pairs of the
/// message (headers `stamped_headers` + `stamps`) found among `revoked`.
fn stamp_matches(
    revoked: &HashMap<String, Vec<Value>>,
    headers: &Map<String, Value>,
) -> Vec<(String, Value)> {
    let Some(stamped) = headers.get("stamped_headers").and_then(Value::as_array) else {
        return Vec::new();
    };
    let stamps = headers.get("stamps").and_then(Value::as_object);
    let mut hits = Vec::new();
    for name in stamped.iter().filter_map(Value::as_str) {
        let Some(values) = revoked.get(name) else {
            continue;
        };
        let Some(v) = stamps
            .and_then(|s| s.get(name))
            .or_else(|| headers.get(name))
        else {
            continue;
        };
        let carried: Vec<&Value> = match v {
            Value::Array(items) => items.iter().collect(),
            one => vec![one],
        };
        for c in carried {
            if values.contains(c) {
                hits.push((name.to_string(), c.clone()));
            }
        }
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str) -> Arc<Request> {
        Arc::new(Request {
            id: id.into(),
            task: "t".into(),
            ..Default::default()
        })
    }

    #[test]
    fn limited_set_keeps_the_newest_maxlen_ids_oldest_first() {
        let mut s = LimitedSet::new(3, Duration::from_secs(60));
        for id in ["a", "b", "c", "d"] {
            s.add(id);
        }
        assert_eq!(s.ids(), ["b", "c", "d"]);
        assert!(!s.contains("a") && s.contains("d"));
        s.add("b");
        assert_eq!(s.ids(), ["c", "d", "b"]);
        s.discard("c");
        assert_eq!(s.ids(), ["d", "b"]);
    }

    #[test]
    fn limited_set_forgets_expired_ids() {
        let mut s = LimitedSet::new(10, Duration::from_millis(20));
        s.add("a");
        std::thread::sleep(Duration::from_millis(30));
        assert!(!s.contains("a"));
        s.add("b");
        assert_eq!(s.ids(), ["b"]);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn revoke_stops_waiting_requests_and_reports_active_ones() {
        let st = WorkerState::new();
        let waiting = st.hold(req("w"), Some("2030-01-01T00:00:00+00:00".into()));
        let running = st.hold(req("r"), None);
        st.start("r", "t", None);
        let active = st.revoke(&["w".into(), "r".into(), "x".into()]);
        assert_eq!(active, ["r"]);
        assert!(waiting.is_stopped() && !running.is_stopped());
        assert!(st.is_revoked("x"));
        assert!(st.terminate("r", 15));
        assert_eq!(running.signal(), Some(15));
        assert_eq!(st.totals(), [("t".to_string(), 1)]);
    }

    #[test]
    fn lamport_clock_moves_past_what_it_sees() {
        let st = WorkerState::new();
        assert_eq!(st.clock_forward(), 1);
        assert_eq!(st.clock_adjust(9), 10);
        assert_eq!(st.clock_adjust(3), 11);
    }
}
