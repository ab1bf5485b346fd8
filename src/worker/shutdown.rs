//! Warm and cold shutdown, as `celery worker` does them.
//!
//! First SIGTERM/SIGINT: warm — stop fetching, give prefetched-but-unstarted
//! messages back to their queues, let running tasks finish. A second signal,
//! or SIGQUIT: cold — stop now.

use tokio_util::sync::CancellationToken;

/// Shared view of the shutdown state.
#[derive(Clone, Default)]
pub struct Shutdown {
    warm: CancellationToken,
    cold: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Begins a warm shutdown.
    pub fn warm_now(&self) {
        self.warm.cancel();
    }

    /// Begins a cold shutdown (implies warm).
    pub fn cold_now(&self) {
        self.warm.cancel();
        self.cold.cancel();
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

    pub async fn cold(&self) {
        self.cold.cancelled().await
    }

    /// Listens for SIGTERM/SIGINT/SIGQUIT for the life of the process.
    pub fn listen_for_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut quit = signal(SignalKind::quit())?;
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                    _ = quit.recv() => {
                        tracing::warn!("worker: Cold shutdown (MainProcess)");
                        this.cold_now();
                        continue;
                    }
                };
                if this.is_warm() {
                    tracing::warn!("worker: Cold shutdown (MainProcess) on second {name}");
                    this.cold_now();
                } else {
                    tracing::warn!("worker: Warm shutdown (MainProcess) on {name}");
                    this.warm_now();
                }
            }
        });
        Ok(())
    }
}
