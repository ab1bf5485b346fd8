//! The heartbeat service: `worker-heartbeat` every `--heartbeat-interval`
//! seconds (Celery's `Heart`), so Flower and `celery events` see the node alive.

use super::Shared;
use crate::events::Event;
use std::sync::Arc;
use std::time::Duration;

pub(crate) async fn beat(shared: Arc<Shared>) {
    let every = Duration::from_secs_f64(shared.config.heartbeat_interval.max(0.1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.warm() => return,
        }
        shared.events.send(
            Event::WorkerHeartbeat(shared.worker_status()),
            shared.state.clock_forward(),
        );
    }
}
