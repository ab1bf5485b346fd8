"""Message priorities: kombu's Redis transport (buckets, lower number consumed first)
and RabbitMQ (a queue declared with ``x-max-priority``, higher number first)."""
from __future__ import annotations

import datetime as dt
import uuid

import pytest
from celery.result import AsyncResult
from kombu import Exchange, Queue

from helpers import SUCCEEDED_RE


def _run_in_order(celery_client, worker, sent, **worker_options):
    """Start a one-slot worker with a window of one; the values of ``sent``
    ({task id: priority}) in the order the tasks finished, checked against its log."""
    w = worker(concurrency=1, prefetch=1, **worker_options)
    results = {tid: AsyncResult(tid, app=celery_client) for tid in sent}
    for tid, res in results.items():
        assert res.get(timeout=30) == sent[tid]
    by_done = sorted(results, key=lambda tid: results[tid].date_done)
    order = [sent[tid] for tid in by_done]
    # The worker's own log agrees.
    log_order = [sent[m.group(2)] for m in SUCCEEDED_RE.finditer(w.log()) if m.group(2) in sent]
    assert log_order == order
    dates = [results[tid].date_done for tid in by_done]
    assert all(isinstance(d, dt.datetime) for d in dates)
    return order


@pytest.mark.redis_only("kombu's Redis priority buckets (celery\\x06\\x16N lists, lower "
                        "number first); the RabbitMQ variant is below")
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

    order = _run_in_order(celery_client, worker, sent)
    assert order[0] == 0, order
    assert order[-1] == 9, order
    assert set(order[1:3]) == {3, 5}, order
    # Within a bucket kombu is FIFO: 5 was sent before 3.
    assert order == [0, 5, 3, 9], order


@pytest.mark.amqp_only("RabbitMQ priority queue (x-max-priority)")
def test_priority_order_on_amqp(celery_client, worker, transport):
    """A queue declared with ``x-max-priority`` (by the producer here, and by the
    worker from ``task_queues`` with the same arguments, or RabbitMQ refuses the
    redeclaration): RabbitMQ delivers the HIGHER number first."""
    name = f"prio-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name), routing_key=name,
                  queue_arguments={"x-max-priority": 10})
    sent = {}
    for prio in (0, 5, 9, 3):
        res = celery_client.send_task("rcw.testing.sleep", args=[0.2, prio], priority=prio,
                                      queue=queue)
        sent[res.id] = prio
    assert transport.queue_length(name) == 4
    assert sorted(w.properties.get("priority") for w in transport.peek(name)) == [0, 3, 5, 9]

    order = _run_in_order(celery_client, worker, sent, settings={"task_queues": [
        {"name": name, "exchange": name, "routing_key": name,
         "queue_arguments": {"x-max-priority": 10}}]})
    assert order == [9, 5, 3, 0], order
