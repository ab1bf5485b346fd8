//! The start-up banner, laid out like `celery worker`'s so operators find
//! app, transport, results, concurrency, queues and tasks where they expect.

use crate::config::{Config, mask_url};
use crate::registry::Registry;
use std::fmt::Write;

pub fn render(cfg: &Config, registry: &Registry) -> String {
    let version = env!("CARGO_PKG_VERSION");
    let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
    let app = cfg.app.as_deref().unwrap_or("default");
    let results = cfg
        .result_backend
        .as_deref()
        .map_or("disabled://".into(), mask_url);
    let prefetch = match cfg.prefetch_count() {
        0 => "unlimited".to_string(),
        n => n.to_string(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        " \n -------------- {} v{version} (rust-celery-worker)",
        cfg.hostname
    );
    let _ = writeln!(out, "--- ***** ----- ");
    let _ = writeln!(
        out,
        "-- ******* ---- {}-{} {now}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    let _ = writeln!(out, "- *** --- * --- ");
    let _ = writeln!(out, "- ** ---------- [config]");
    let _ = writeln!(out, "- ** ---------- .> app:         {app}");
    if let Some(src) = &cfg.app_source {
        let _ = writeln!(out, "- ** ---------- .>              {src}");
    }
    let _ = writeln!(
        out,
        "- ** ---------- .> transport:   {}",
        mask_url(&cfg.broker_url)
    );
    let _ = writeln!(out, "- ** ---------- .> results:     {results}");
    // Python bodies run in the -P pool (prefork unless told); Rust ones on our threads.
    let pool = match (&cfg.pool, &cfg.app_source) {
        (Some(p), _) => p.as_str(),
        (None, Some(_)) => "prefork",
        (None, None) => "rust",
    };
    let concurrency = match cfg.autoscale {
        Some((max, min)) => format!("{{min={min}, max={max}}}"),
        None => cfg.concurrency.to_string(),
    };
    let _ = writeln!(
        out,
        "- *** --- * --- .> concurrency: {concurrency} ({pool}), prefetch {prefetch}"
    );
    if let Some(note) = &cfg.pool_note {
        let _ = writeln!(out, "- *** --- * --- .> pool:        {note}");
    }
    if cfg.embedded_beat {
        let beat = &cfg.beat;
        let _ = writeln!(
            out,
            "- *** --- * --- .> beat:        {} ({}), one leader per broker",
            beat.scheduler, beat.schedule_filename
        );
    }
    if let Some(port) = cfg.metrics_port {
        let _ = writeln!(
            out,
            "- *** --- * --- .> metrics:     http://0.0.0.0:{port}/metrics, /healthz"
        );
    }
    let events = if cfg.task_events {
        "ON"
    } else {
        "OFF (enable -E to monitor tasks in this worker)"
    };
    let _ = writeln!(out, "-- ******* ---- .> task events: {events}");
    let _ = writeln!(out, "--- ***** ----- ");
    let _ = writeln!(out, " -------------- [queues]");
    for q in &cfg.queues {
        let d = cfg.queue_decl(q);
        let _ = writeln!(
            out,
            "                .> {q:<16} exchange={}(direct) key={}",
            d.exchange, d.routing_key
        );
    }
    let _ = writeln!(out, "\n[tasks]");
    // As Celery's banner: the app's tasks, not the built-in `celery.*` ones.
    for name in registry
        .names()
        .into_iter()
        .filter(|n| !n.starts_with("celery."))
    {
        let _ = writeln!(out, "  . {name}");
    }
    out
}
