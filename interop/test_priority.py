"""kombu's Redis transport: priority buckets, lower number consumed first."""
from __future__ import annotations

import datetime as dt

from celery.result import AsyncResult

from helpers import SUCCEEDED_RE


def test_priority_order_on_redis(celery_client, worker, broker):
    # Enqueue while no worker runs. kombu buckets: 0-2 -> "celery", 3-5 -> "celery\x06\x163",
    # 6-8 -> "...6", 9 -> "...9"; BRPOP lists bucket 0 first, so LOWER numbers run first.
    sent = {}
    for prio in (9, 0, 5, 3):
        res = celery_client.send_task("rcw.testing.sleep", args=[0.2, prio], priority=prio)
        sent[res.id] = prio
    assert broker.llen("celery") == 1
    assert broker.llen("celery\x06\x163") == 2
    assert broker.llen("celery\x06\x169") == 1

    w = worker(concurrency=1, prefetch=1)
    results = {tid: AsyncResult(tid, app=celery_client) for tid in sent}
    for tid, res in results.items():
        assert res.get(timeout=30) == sent[tid]

    by_done = sorted(results, key=lambda tid: results[tid].date_done)
    order = [sent[tid] for tid in by_done]
    assert order[0] == 0, order
    assert order[-1] == 9, order
    assert set(order[1:3]) == {3, 5}, order
    # Within a bucket kombu is FIFO: 5 was sent before 3.
    assert order == [0, 5, 3, 9], order

    # The worker's own log agrees.
    log_order = [sent[m.group(2)] for m in SUCCEEDED_RE.finditer(w.log()) if m.group(2) in sent]
    assert log_order == order
    dates = [results[tid].date_done for tid in by_done]
    assert all(isinstance(d, dt.datetime) for d in dates)
