//! `pool_grow` / `pool_shrink`: the Python process pool when there is one,
//! and the worker's own concurrency slots (Rust task bodies) either way.

use super::{Outcome, ok};
use crate::worker::Shared;
use std::sync::Arc;

pub(crate) async fn grow(shared: &Arc<Shared>, n: usize) -> Outcome {
    if let Some(pool) = &shared.pool {
        pool.grow(n);
        shared.pooled.add_permits(n);
    }
    shared.resize_slots(n as isize);
    Ok(ok("pool will grow"))
}

pub(crate) async fn shrink(shared: &Arc<Shared>, n: usize) -> Outcome {
    if let Some(pool) = &shared.pool {
        let taken = pool.shrink(n).await;
        shared.pooled.forget_permits(taken);
    }
    shared.resize_slots(-(n as isize));
    Ok(ok("pool will shrink"))
}
