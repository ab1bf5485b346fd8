//! Warm and cold shutdown, and a restart, as `celery worker` does them.
//!
//! * SIGTERM: warm — stop fetching, give prefetched-but-unstarted messages
//!   back to their queues, let running tasks finish. Further SIGTERMs only
//!   repeat the message (`REMAP_SIGTERM=SIGQUIT` makes SIGTERM cold instead).
//! * SIGINT: warm; a second one is cold.
//! * SIGQUIT: cold — running tasks are cut off. With
//!   `worker_soft_shutdown_timeout` they first get that many seconds (soft
//!   shutdown); one more SIGINT/SIGQUIT during that wait ends it at once.
//! * SIGHUP (only when stdout is not a terminal, as Celery): warm, then the
//!   program re-executes itself in place.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Shared view of the shutdown state.
#[derive(Clone, Default)]
pub struct Shutdown {
    warm: CancellationToken,
    soft: CancellationToken,
    cold: CancellationToken,
    restart: Arc<AtomicBool>,
    /// Seconds a cold shutdown waits for running tasks first (0: none).
    soft_timeout: f64,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// With Celery's soft shutdown: cold shutdowns wait `secs` first.
    pub fn with_soft_timeout(secs: f64) -> Self {
        Shutdown {
            soft_timeout: secs.max(0.0),
            ..Self::default()
        }
    }

    /// Begins a warm shutdown.
    pub fn warm_now(&self) {
        self.warm.cancel();
    }

    /// Begins a cold shutdown (implies warm), now.
    pub fn cold_now(&self) {
        self.warm.cancel();
        self.soft.cancel();
        self.cold.cancel();
    }

    /// A cold shutdown as the signal asks it: through the soft wait when
    /// one is configured and not already under way.
    pub fn request_cold(&self) {
        if self.soft_timeout <= 0.0 || self.soft.is_cancelled() {
            self.cold_now();
            return;
        }
        self.warm.cancel();
        self.soft.cancel();
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(this.soft_timeout)) => {}
                _ = this.cold.cancelled() => {}
            }
            this.cold_now();
        });
    }

    /// Warm shutdown, then the program runs again in place (SIGHUP).
    pub fn restart_now(&self) {
        self.restart.store(true, Ordering::Relaxed);
        self.warm.cancel();
    }

    pub fn restart_requested(&self) -> bool {
        self.restart.load(Ordering::Relaxed)
    }

    pub fn soft_timeout(&self) -> f64 {
        self.soft_timeout
    }

    pub fn is_warm(&self) -> bool {
        self.warm.is_cancelled()
    }

    pub fn is_cold(&self) -> bool {
        self.cold.is_cancelled()
    }

    /// Resolves when a (warm or cold) shutdown begins.
    pub async fn warm(&self) {
        self.warm.cancelled().await
    }

    /// Resolves when a soft shutdown's wait begins (or a cold shutdown).
    pub async fn soft(&self) {
        self.soft.cancelled().await
    }

    pub async fn cold(&self) {
        self.cold.cancelled().await
    }

    /// Listens for SIGTERM/SIGINT/SIGQUIT/SIGHUP for the life of the process.
    pub fn listen_for_signals(&self) -> std::io::Result<()> {
        use std::io::IsTerminal;
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut quit = signal(SignalKind::quit())?;
        // Celery restarts on SIGHUP only when detached from a terminal, so
        // closing a terminal window doesn't restart a worker into the background.
        let mut hup = if std::io::stdout().is_terminal() {
            None
        } else {
            Some(signal(SignalKind::hangup())?)
        };
        let remap_term = std::env::var("REMAP_SIGTERM").is_ok_and(|v| v == "SIGQUIT");
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let hup_recv = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                    _ = quit.recv() => "SIGQUIT",
                    _ = hup_recv => "SIGHUP",
                };
                this.on_signal(name, remap_term);
            }
        });
        Ok(())
    }

    fn on_signal(&self, name: &str, remap_term: bool) {
        let cold = match name {
            "SIGQUIT" => true,
            "SIGTERM" => remap_term,
            "SIGINT" => self.is_warm(),
            "SIGHUP" => {
                tracing::warn!("worker: Restarting (MainProcess) on SIGHUP");
                self.restart_now();
                return;
            }
            _ => false,
        };
        if !cold {
            tracing::warn!("worker: Warm shutdown (MainProcess) on {name}");
            self.warm_now();
            return;
        }
        let how = if self.soft_timeout <= 0.0 {
            String::new()
        } else if self.soft.is_cancelled() {
            ": cutting the soft shutdown short".into()
        } else {
            format!(
                ": soft shutdown, running tasks get {:.1} s",
                self.soft_timeout
            )
        };
        tracing::warn!("worker: Cold shutdown (MainProcess) on {name}{how}");
        self.request_cold();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn soft_shutdown_waits_then_goes_cold() {
        let s = Shutdown::with_soft_timeout(5.0);
        s.on_signal("SIGQUIT", false);
        assert!(s.is_warm() && !s.is_cold());
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(s.is_cold());
    }

    #[tokio::test]
    async fn second_signal_cuts_the_soft_wait_short() {
        let s = Shutdown::with_soft_timeout(60.0);
        s.on_signal("SIGINT", false);
        assert!(s.is_warm() && !s.is_cold());
        s.on_signal("SIGINT", false);
        assert!(!s.is_cold(), "the second SIGINT starts the soft wait");
        s.on_signal("SIGQUIT", false);
        assert!(s.is_cold());
    }

    #[tokio::test]
    async fn term_is_warm_unless_remapped_and_hup_restarts() {
        let s = Shutdown::new();
        s.on_signal("SIGTERM", false);
        s.on_signal("SIGTERM", false);
        assert!(s.is_warm() && !s.is_cold());
        let r = Shutdown::new();
        r.on_signal("SIGTERM", true);
        assert!(r.is_cold());
        let h = Shutdown::new();
        h.on_signal("SIGHUP", false);
        assert!(h.is_warm() && h.restart_requested() && !h.is_cold());
    }
}
