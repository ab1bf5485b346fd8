"""ETA / countdown (SPEC §7.2), expiry (§7.4) and rate limits."""
from __future__ import annotations

import datetime as dt
import json
import signal
import time

import pytest
from celery.exceptions import TaskRevokedError

from helpers import log_count, result_meta, wait_until

GET_TIMEOUT = 20




def _now():
    return dt.datetime.now(dt.timezone.utc)


# --------------------------------------------------------------------------- ETA


def test_countdown_and_eta_wait_unacked(celery_client, worker, transport, backend):
    from app.workers.tasks import example_task

    w = worker()
    sent = _now()
    # 4 s: the broker checks below can take a second each (rabbitmqctl under load).
    by_countdown = example_task.apply_async((1, 2), countdown=4)
    by_eta = example_task.apply_async((3, 4), eta=sent + dt.timedelta(seconds=4))
    for res in (by_countdown, by_eta):
        w.wait_for_log(f"[{res.id}] received", timeout=5)
    # Received, held by the worker, and still unacked (kombu's ack emulation keeps
    # them in `unacked` until they run). The cheap checks first, while surely early.
    time.sleep(0.5)
    assert (by_countdown.state, by_eta.state) == ("PENDING", "PENDING")
    assert result_meta(backend, by_countdown.id) is None
    assert transport.holds_unacked([by_countdown.id, by_eta.id])
    assert transport.queue_length("celery") == 0
    assert by_countdown.get(timeout=8) == 3  # ready by ~5 s after sending
    assert by_eta.get(timeout=5) == 7
    for res in (by_countdown, by_eta):
        done = result_meta(backend, res.id)["date_done"]
        assert dt.datetime.fromisoformat(done) >= sent + dt.timedelta(seconds=4), (
            f"{res.id} ran at {done}, before its ETA {sent + dt.timedelta(seconds=4)}")
    wait_until(lambda: transport.unacked_count() == 0, timeout=5, what="ETA messages acked")


def test_held_eta_does_not_block_the_queue(celery_client, worker, transport):
    from app.workers.tasks import example_task

    # One slot, prefetch 1: a held ETA task must not use up the prefetch window.
    w = worker(concurrency=1, prefetch=1)
    later = example_task.apply_async((100, 1), countdown=3)
    w.wait_for_log(f"[{later.id}] received", timeout=5)
    started = time.monotonic()
    quick = [example_task.delay(i, i) for i in range(5)]
    for i, res in enumerate(quick):
        assert res.get(timeout=GET_TIMEOUT) == 2 * i
    assert time.monotonic() - started < 2.0, "tasks waited behind a held ETA task"
    assert not later.ready()
    assert transport.unacked_count() == 1
    assert later.get(timeout=GET_TIMEOUT) == 101


def test_warm_shutdown_while_eta_held_returns_it(celery_client, worker, transport, backend):
    from app.workers.tasks import example_task

    w1 = worker()
    sent = _now()
    res = example_task.apply_async((5, 6), countdown=3)
    w1.wait_for_log(f"[{res.id}] received", timeout=5)
    w1.send_signal(signal.SIGTERM)
    w1.proc.wait(timeout=30)
    assert w1.proc.returncode == 0
    assert res.state == "PENDING"
    # The held message went back to its queue, flagged redelivered, ETA intact.
    assert transport.unacked_count() == 0
    [held] = transport.peek("celery")
    assert held.task_id == res.id
    assert held.redelivered
    assert held.headers["eta"] is not None
    w2 = worker()
    assert res.get(timeout=GET_TIMEOUT) == 11
    done = dt.datetime.fromisoformat(result_meta(backend, res.id)["date_done"])
    assert done >= sent + dt.timedelta(seconds=3)
    ran = w1.succeeded_ids() + w2.succeeded_ids()
    assert ran.count(res.id) == 1


# --------------------------------------------------------------------------- expiry


EXPIRED_RESULT = {"exc_type": "TaskRevokedError", "exc_message": ["expired"],
                  "exc_module": "celery.exceptions"}


def _assert_expired(backend, res, w):
    with pytest.raises(TaskRevokedError):
        res.get(timeout=GET_TIMEOUT)
    assert res.state == "REVOKED"
    assert isinstance(res.result, TaskRevokedError)
    meta = result_meta(backend, res.id)
    # samples/result_meta_revoked_expired.json
    assert meta["status"] == "REVOKED"
    assert meta["result"] == EXPIRED_RESULT
    assert meta["traceback"] is None
    assert meta["children"] == []
    assert meta["date_done"] is not None
    assert meta["task_id"] == res.id
    w.wait_for_log(f"Discarding revoked task: app.workers.tasks.example_task[{res.id}]",
                   timeout=5)
    assert log_count(w, f"app.workers.tasks.example_task[{res.id}] succeeded") == 0


@pytest.mark.redis_only("RabbitMQ drops the expired message itself (AMQP expiration "
                        "property): no worker sees it; the variant is below")
def test_expired_before_a_worker_sees_it(celery_client, worker, backend, transport):
    from app.workers.tasks import example_task

    res = example_task.apply_async((1, 1), expires=1)
    alive = example_task.apply_async((2, 2), expires=60)
    time.sleep(1.5)
    w = worker()
    _assert_expired(backend, res, w)
    assert alive.get(timeout=GET_TIMEOUT) == 4
    # Expired messages are acked, not left behind.
    wait_until(lambda: transport.unacked_count() == 0, timeout=5, what="unacked empty")
    assert transport.queue_length("celery") == 0


@pytest.mark.amqp_only("RabbitMQ expires messages in the queue")
def test_expired_in_the_queue_is_dropped_by_rabbitmq(celery_client, worker, backend,
                                                     transport):
    """Celery's producer turns ``expires`` into the AMQP ``expiration`` property (ms),
    so RabbitMQ drops a message that expires while it waits: no worker sees it, nothing
    is stored, the state stays PENDING."""
    from app.workers.tasks import example_task

    res = example_task.apply_async((1, 1), expires=1)
    alive = example_task.apply_async((2, 2), expires=60)
    assert [m.properties.get("expiration") for m in transport.peek("celery")] == [
        "1000", "60000"]
    time.sleep(1.5)
    w = worker()
    assert alive.get(timeout=GET_TIMEOUT) == 4
    time.sleep(0.5)
    assert res.state == "PENDING" and result_meta(backend, res.id) is None
    assert res.id not in w.log()
    assert transport.queue_length("celery") == 0 and transport.unacked_count() == 0


def test_expires_before_its_eta(celery_client, worker, backend, transport):
    from app.workers.tasks import example_task

    w = worker()
    res = example_task.apply_async((1, 1), countdown=2, expires=1)
    time.sleep(0.5)
    assert res.state == "PENDING"  # not revoked before it expired
    _assert_expired(backend, res, w)
    wait_until(lambda: transport.unacked_count() == 0, timeout=5, what="unacked empty")


# --------------------------------------------------------------------------- rate limits


def test_rate_limit_spreads_starts_without_blocking_others(celery_client, worker, backend):
    from app.workers.tasks import example_task

    worker(concurrency=4)
    limited = [celery_client.send_task("rcw.testing.rate_limited", args=[i]) for i in range(10)]
    quick = [example_task.delay(i, 1) for i in range(10)]
    for i, res in enumerate(quick):
        assert res.get(timeout=GET_TIMEOUT) == i + 1
    for i, res in enumerate(limited):
        assert res.get(timeout=GET_TIMEOUT) == i

    def done_at(res):
        return dt.datetime.fromisoformat(result_meta(backend, res.id)["date_done"])

    limited_done = sorted(done_at(r) for r in limited)
    spread = (limited_done[-1] - limited_done[0]).total_seconds()
    # "5/s": one token every 0.2 s → 9 gaps ≈ 1.8 s.
    assert spread >= 1.6, f"10 tasks at 5/s ran within {spread:.2f}s"
    assert spread <= 4.0, f"10 tasks at 5/s took {spread:.2f}s"
    gaps = [(b - a).total_seconds() for a, b in zip(limited_done, limited_done[1:])]
    assert min(gaps) >= 0.1, f"two rate-limited tasks ran {min(gaps):.3f}s apart: {gaps}"
    # The unlimited tasks sent after the batch did not queue behind it.
    quick_last = max(done_at(r) for r in quick)
    assert quick_last < limited_done[-1], "plain tasks waited for the rate-limited batch"
