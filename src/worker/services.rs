//! The services that run beside the consumer for the worker's life:
//! `/metrics` + `/healthz`, the SIGUSR1 dump, the autoscaler and embedded
//! beat. Each is optional and stops with the worker.

use super::Shared;
use crate::metrics::Gauges;
use crate::metrics::http::Scrape;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The running services.
pub(crate) struct Services {
    tasks: Vec<JoinHandle<()>>,
    beat: Option<JoinHandle<()>>,
}

pub(crate) async fn start(
    shared: &Arc<Shared>,
    metrics: Option<tokio::net::TcpListener>,
    beat: Option<Arc<dyn crate::beat::BeatHost>>,
) -> anyhow::Result<Services> {
    let mut tasks = Vec::new();
    if let Some(listener) = metrics {
        tracing::info!(
            "metrics: serving /metrics and /healthz on {}",
            listener.local_addr()?
        );
        let source = Arc::clone(shared) as Arc<dyn Scrape>;
        tasks.push(tokio::spawn(crate::metrics::http::serve(listener, source)));
    }
    tasks.push(tokio::spawn(dump_on_usr1(Arc::clone(shared))?));
    if shared.autoscale.is_some() && shared.pool.is_some() {
        tasks.push(tokio::spawn(autoscale(Arc::clone(shared))));
    }
    let beat = match beat.filter(|_| shared.config.embedded_beat) {
        Some(host) => Some(
            crate::beat::start(host, &shared.config, shared.shutdown.clone())
                .await
                .map_err(|e| anyhow::anyhow!("beat: {e:#}"))?,
        ),
        None => None,
    };
    Ok(Services { tasks, beat })
}

impl Services {
    /// Beat stops first: its last schedule save is the state worth keeping.
    pub async fn stop_beat(&mut self) {
        if let Some(b) = self.beat.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), b).await;
        }
    }

    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

#[async_trait::async_trait]
impl Scrape for Shared {
    async fn metrics(&self) -> String {
        let mut queue_lengths = Vec::new();
        for q in self.broker.queues() {
            let n = tokio::time::timeout(Duration::from_secs(2), self.broker.queue_len(&q)).await;
            if let Ok(Ok(n)) = n {
                queue_lengths.push((q, n));
            }
        }
        let gauges = Gauges {
            up: self.consuming.load(Ordering::Relaxed),
            active: self.state.active_count(),
            queue_lengths,
        };
        match &self.metrics {
            Some(m) => m.render(&gauges),
            None => String::new(),
        }
    }

    /// Alive while the consumer loop runs, its last fetch worked and the
    /// broker answers a PING now (within a second).
    async fn health(&self) -> (bool, String) {
        let consuming = self.consuming.load(Ordering::Relaxed);
        let fetching = !self.fetch_failing.load(Ordering::Relaxed);
        let ping = tokio::time::timeout(Duration::from_secs(1), self.broker.ping()).await;
        let broker = match ping {
            Ok(Ok(())) => "ok".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 1 s".to_string(),
        };
        let ok = consuming && fetching && broker == "ok";
        let body = serde_json::json!({
            "status": if ok { "ok" } else { "unavailable" },
            "hostname": self.config.hostname,
            "broker": broker,
            "consumer": if !consuming { "stopped" } else if fetching { "running" } else { "reconnecting" },
            "active": self.state.active_count(),
            "processed": self.processed.load(Ordering::Relaxed),
        });
        (ok, body.to_string())
    }
}

/// SIGUSR1: logs what runs now — each active task and the process's
/// threads — and, with an app, every Python thread's stack (Celery's `cry`).
fn dump_on_usr1(
    shared: Arc<Shared>,
) -> std::io::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr1 = signal(SignalKind::user_defined1())?;
    Ok(async move {
        while usr1.recv().await.is_some() {
            let shared = Arc::clone(&shared);
            // The Python part takes the GIL: not on the runtime thread.
            let _ = tokio::task::spawn_blocking(move || tracing::warn!("{}", dump(&shared))).await;
        }
    })
}

fn dump(shared: &Shared) -> String {
    use std::fmt::Write;
    let mut out = String::from("SIGUSR1: what this worker runs now\n");
    let active = shared
        .state
        .in_phase(|p| matches!(p, super::state::Phase::Active { .. }));
    let _ = writeln!(out, "Active tasks ({}):", active.len());
    for h in &active {
        let pid = h
            .process
            .as_ref()
            .map(|p| p.load(Ordering::Relaxed))
            .filter(|p| *p != 0)
            .unwrap_or_else(std::process::id);
        let _ = writeln!(
            out,
            "  {}[{}] args={} pid:{pid}",
            h.request.task,
            h.request.id,
            super::request::request_repr(&h.request, "argsrepr")
        );
    }
    let _ = writeln!(out, "Threads:");
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next())
                .unwrap_or("?");
            let _ = writeln!(
                out,
                "  Thread {} {} state={state}",
                t.file_name().to_string_lossy(),
                comm.trim()
            );
        }
    }
    if let Some(stacks) = shared.app.as_ref().and_then(|a| a.thread_stacks()) {
        out.push_str(&stacks);
    }
    out
}

/// `--autoscale` bounds, changed live by the `autoscale` command.
pub(crate) struct Bounds {
    max: AtomicUsize,
    min: AtomicUsize,
}

impl Bounds {
    pub fn new(max: usize, min: usize) -> Bounds {
        Bounds {
            max: AtomicUsize::new(max),
            min: AtomicUsize::new(min),
        }
    }

    pub fn get(&self) -> (usize, usize) {
        (
            self.max.load(Ordering::Relaxed),
            self.min.load(Ordering::Relaxed),
        )
    }
}

/// The `autoscale` command, as Celery's `Autoscaler.update`: a lower max
/// shrinks the pool now, a higher min grows it now; returns (max, min).
pub(crate) async fn update_autoscale(
    shared: &Shared,
    max: Option<usize>,
    min: Option<usize>,
) -> Option<(usize, usize)> {
    let bounds = shared.autoscale.as_ref()?;
    let pool = shared.pool.as_ref()?;
    if let Some(max) = max.filter(|m| *m >= 1) {
        let old = bounds.max.swap(max, Ordering::Relaxed);
        if max > old {
            // Room for that many Python tasks at once (admission before the ack).
            shared.pooled.add_permits(max - old);
        } else {
            shared.pooled.forget_permits(old - max);
        }
        if pool.size() > max {
            pool.shrink(pool.size() - max).await;
        }
    }
    if let Some(min) = min {
        bounds.min.store(min, Ordering::Relaxed);
        if min > pool.size() {
            pool.grow(min - pool.size());
        }
    }
    Some(bounds.get())
}

/// `--autoscale MAX,MIN`, as Celery's `Autoscaler`: grow to the Python
/// tasks waiting for a process (at most MAX), shrink back towards MIN once
/// no scale-up happened for `AUTOSCALE_KEEPALIVE` seconds (default 30).
async fn autoscale(shared: Arc<Shared>) {
    let (Some(pool), Some(bounds)) = (shared.pool.clone(), shared.autoscale.as_ref()) else {
        return;
    };
    let keepalive = std::env::var("AUTOSCALE_KEEPALIVE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|k| k.is_finite() && *k >= 0.0)
        .unwrap_or(30.0);
    let keepalive = Duration::from_secs_f64(keepalive);
    let mut last_up = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while !shared.shutdown.is_warm() {
        tick.tick().await;
        let (max, min) = bounds.get();
        let min = min.max(1);
        // Python tasks admitted (running or waiting for a process).
        let wanted = max.saturating_sub(shared.pooled.available_permits());
        let current = pool.size();
        if wanted > current && current < max {
            let n = wanted.min(max) - current;
            tracing::info!("Scaling up {n} processes.");
            pool.grow(n);
            last_up = Instant::now();
        } else if wanted < current && current > min && last_up.elapsed() >= keepalive {
            let n = current - wanted.max(min);
            let taken = pool.shrink(n).await;
            if taken > 0 {
                tracing::info!("Scaling down {taken} processes.");
            }
        }
    }
}
