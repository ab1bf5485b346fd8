//! Embedded beat (`-B`): Celery's own `beat.Service` and scheduler class
//! (`PersistentScheduler` by default, or `--scheduler` such as
//! django-celery-beat's or RedBeat's) run inside the worker's interpreter,
//! ticked from here, so `beat_schedule` entries (numbers, `timedelta`,
//! `crontab`, `solar`, with their args, kwargs and options) fire exactly as
//! under `celery worker -B`.
//!
//! Beyond Celery: only one `-B` worker per broker and app ticks. Each holds
//! for a lease a lock in the broker's Redis (`SET NX PX`, renewed every
//! third of the lease); when its holder dies the lock expires and another
//! `-B` worker takes over. Celery's `-B` workers would each fire every entry.

use crate::config::{BeatConfig, Config};
use crate::worker::shutdown::Shutdown;
use std::sync::Arc;
use std::time::Duration;

/// Celery's scheduler, in the app's interpreter.
pub trait BeatHost: Send + Sync {
    /// Creates the service and its scheduler (reads the schedule) and
    /// fires `beat_init`/`beat_embedded_init`; returns the app's main name.
    fn beat_start(&self, cfg: &BeatConfig, loglevel: &str) -> anyhow::Result<String>;
    /// One scheduler pass (sends what is due); seconds until the next one.
    fn beat_tick(&self) -> anyhow::Result<f64>;
    /// Saves the schedule and closes the scheduler.
    fn beat_stop(&self);
    /// Called first on the beat thread: makes its interpreter thread state
    /// last for the thread's life, so `threading.local` survives between calls.
    fn beat_thread_start(&self) {}
}

/// One OS thread for every call into the scheduler, as Celery's beat runs
/// in one thread: schedulers keep thread-local state (RedBeat's lock token
/// is a `threading.local`), so calls hopping between blocking-pool threads
/// would break them.
struct BeatThread {
    calls: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl BeatThread {
    fn start(host: Arc<dyn BeatHost>) -> std::io::Result<BeatThread> {
        let (calls, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("rcw-beat".into())
            .spawn(move || {
                host.beat_thread_start();
                while let Ok(call) = rx.recv() {
                    call();
                }
            })?;
        Ok(BeatThread { calls })
    }

    /// Runs `f` on the beat thread and waits for its result.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.calls.send(Box::new(move || {
            let _ = tx.send(f());
        }));
        assert!(sent.is_ok(), "the beat thread lives as long as beat");
        rx.await.expect("the beat thread answers every call")
    }
}

/// Takes the lock for `ARGV[1]`, or renews it if already ours.
const ACQUIRE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"#;

const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// The lock key of an app's beat on a broker.
pub fn lock_key(keyprefix: &str, app: &str) -> String {
    format!("{keyprefix}_rcw.beat.leader.{app}")
}

/// Runs beat until shutdown. Start-up errors (an unknown scheduler class, a
/// schedule that won't load) are returned before anything is scheduled.
pub async fn start(
    host: Arc<dyn BeatHost>,
    config: &Config,
    shutdown: Shutdown,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let cfg = config.beat.clone();
    let thread = BeatThread::start(Arc::clone(&host))?;
    let app = {
        let (host, cfg, loglevel) = (Arc::clone(&host), cfg.clone(), config.loglevel.clone());
        thread.run(move || host.beat_start(&cfg, &loglevel)).await?
    };
    // The lock lives in the broker's Redis, else (an AMQP broker) in the
    // result backend's; with neither there is no lock, as in Celery.
    let lock_at = std::iter::once((&config.broker_url, &config.transport.sentinel))
        .chain(
            config
                .result_backend
                .iter()
                .map(|u| (u, &config.result_sentinel)),
        )
        .find(|(u, _)| crate::broker::redis_url::is_redis(u));
    let conn = match lock_at {
        Some((url, sentinel)) => Some(
            crate::broker::redis_endpoint::Endpoint::new(url, sentinel)?
                .manager(Duration::from_secs(5))
                .await?,
        ),
        None => {
            tracing::warn!(
                "beat: no Redis for the beat lock (broker and results are not Redis): \
                 two workers started with -B will both send each entry, as Celery's do"
            );
            None
        }
    };
    let key = lock_key(&config.transport.global_keyprefix, &app);
    let token = format!(
        "{} pid:{} {}",
        config.hostname,
        std::process::id(),
        uuid::Uuid::new_v4()
    );
    Ok(tokio::spawn(run(
        thread, host, cfg, conn, key, token, shutdown,
    )))
}

async fn run(
    thread: BeatThread,
    host: Arc<dyn BeatHost>,
    cfg: BeatConfig,
    mut conn: Option<crate::broker::redis_endpoint::Conn>,
    key: String,
    token: String,
    shutdown: Shutdown,
) {
    // A lease under a second would expire between renewals.
    let lease = Duration::from_secs_f64(cfg.lock_timeout.max(1.0));
    let renew = lease / 3;
    let acquire = redis::Script::new(ACQUIRE_LUA);
    // None until the first answer, so the start is logged either way.
    let mut leader: Option<bool> = None;
    while !shutdown.is_warm() {
        let held: Result<i64, _> = match conn.as_mut() {
            Some(c) => {
                acquire
                    .key(&key)
                    .arg(&token)
                    .arg(lease.as_millis() as u64)
                    .invoke_async(c)
                    .await
            }
            None => Ok(1),
        };
        let now_leader = match held {
            Ok(n) => n == 1,
            Err(e) => {
                // Can't tell: stop ticking rather than risk a second leader.
                tracing::warn!("beat: cannot reach Redis for the beat lock: {e}");
                false
            }
        };
        if leader != Some(now_leader) {
            if now_leader {
                tracing::info!("beat: this worker schedules now (lock {key})");
            } else {
                tracing::warn!("beat: another worker holds the beat lock {key}; standing by");
            }
            leader = Some(now_leader);
        }
        let mut wait = renew;
        if now_leader {
            let h = Arc::clone(&host);
            match thread.run(move || h.beat_tick()).await {
                Ok(next) if next.is_finite() && next > 0.0 => {
                    wait = wait.min(Duration::from_secs_f64(next));
                }
                Ok(_) => wait = Duration::from_millis(50),
                Err(e) => tracing::error!("beat: tick failed: {e:#}"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
            _ = shutdown.warm() => {}
        }
    }
    tracing::info!("beat: Shutting down...");
    let h = Arc::clone(&host);
    thread.run(move || h.beat_stop()).await;
    if leader == Some(true)
        && let Some(c) = conn.as_mut()
    {
        let released: Result<i64, _> = redis::Script::new(RELEASE_LUA)
            .key(&key)
            .arg(&token)
            .invoke_async(c)
            .await;
        if let Err(e) = released {
            tracing::warn!("beat: releasing the beat lock: {e}");
        }
    }
}
