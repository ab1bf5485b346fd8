//! Coalescing queued writes (acks, result states) into one broker command.

use tokio::sync::mpsc::UnboundedReceiver;

/// Adds to `batch` what the other runnable tasks queue next, up to `max`.
///
/// The writer is woken by the first item and would otherwise run straight
/// after its sender (tokio's LIFO slot), sending batches of one or two while
/// the handlers of the same fetch were still to run. Yielding once lets them
/// queue theirs first: batches of 4–8 again on `-c 2`, and Redis woken once
/// per batch instead of per item.
pub(crate) async fn gather_more<T>(rx: &mut UnboundedReceiver<T>, batch: &mut Vec<T>, max: usize) {
    if batch.len() >= max {
        return;
    }
    tokio::task::yield_now().await;
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
}
