"""Acknowledgement policies (SPEC §7.3): early ack (default), ``acks_late`` (task
option and ``task_acks_late``), ``task_acks_on_failure_or_timeout``."""
from __future__ import annotations

import time

from helpers import log_count, result_meta, wait_until

GET_TIMEOUT = 20


def test_early_ack_by_default(celery_client, worker, transport):
    w = worker(concurrency=1, settings={"task_track_started": True})
    res = celery_client.send_task("rcw.testing.sleep", args=[2, "early"])
    wait_until(lambda: res.state == "STARTED", timeout=10, what="STARTED")
    # Acked when it started: nothing unacked while it runs.
    wait_until(lambda: transport.unacked_count() == 0, timeout=2, what="ack before running")
    assert transport.queue_length("celery") == 0
    assert not res.ready()
    # So a crash now loses it (nothing left to restore) -- Celery's documented
    # trade-off; acks_late is the cure (below).
    w.kill9()
    assert transport.surviving_ids("celery") == []
    assert res.state == "STARTED"


def test_task_acks_late_setting_acks_after_result(celery_client, worker, transport, backend):
    worker(concurrency=1, settings={"task_acks_late": True, "task_track_started": True})
    # Long enough to outlast slow `rabbitmqctl` calls under CI's parallel passes.
    res = celery_client.send_task("rcw.testing.sleep", args=[6, "late"])
    wait_until(lambda: res.state == "STARTED", timeout=10, what="STARTED")
    time.sleep(0.5)
    assert not res.ready()
    assert transport.holds_unacked([res.id]), "acks_late task not unacked while running"
    assert res.get(timeout=GET_TIMEOUT) == "late"
    wait_until(lambda: transport.unacked_count() == 0, timeout=5, what="ack after SUCCESS")
    assert transport.queue_length("celery") == 0
    assert transport.nothing_unacked()


def test_acks_late_task_survives_kill9(celery_client, worker, transport, backend):
    # visibility_timeout: how long kombu's Redis transport waits before restoring an
    # unacked message (RabbitMQ requeues it when the connection drops).
    settings = {"broker_transport_options": {"visibility_timeout": 1},
                "task_track_started": True}
    w1 = worker(concurrency=1, settings=settings)
    # rcw.testing.late_sleep has acks_late=True as a task option.
    res = celery_client.send_task("rcw.testing.late_sleep", args=[6, "survived"])
    wait_until(lambda: res.state == "STARTED", timeout=10, what="STARTED")
    assert transport.holds_unacked([res.id])
    w1.kill9()
    assert transport.surviving_ids("celery") == [res.id]
    time.sleep(1.5)  # older than visibility_timeout → restored by the next worker
    w2 = worker(concurrency=1, settings=settings)
    assert res.get(timeout=GET_TIMEOUT) == "survived"
    w2.wait_for_log(f"Task rcw.testing.late_sleep[{res.id}] succeeded", timeout=5)
    assert log_count(w2, f"Task rcw.testing.late_sleep[{res.id}] succeeded") == 1
    wait_until(lambda: transport.unacked_count() == 0, timeout=5, what="unacked empty")
    assert transport.queue_length("celery") == 0


def test_acks_late_failure_not_requeued(celery_client, worker, transport, backend):
    """acks_late + task_acks_on_failure_or_timeout=False: a failed task is rejected
    without requeue -- FAILURE stored, the message neither acked-and-rerun nor back in
    the queue."""
    w = worker(concurrency=1, settings={"task_acks_late": True,
                                        "task_acks_on_failure_or_timeout": False})
    res = celery_client.send_task("rcw.testing.fail", args=["late failure"])
    res.get(timeout=GET_TIMEOUT, propagate=False)
    meta = result_meta(backend, res.id)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_message"] == ["late failure"]
    wait_until(lambda: transport.unacked_count() == 0, timeout=5, what="unacked empty")
    time.sleep(1.0)
    assert transport.queue_length("celery") == 0 and transport.unacked_count() == 0
    assert log_count(w, f"Task rcw.testing.fail[{res.id}] received") == 1
    # The worker carries on.
    assert celery_client.send_task("app.workers.tasks.example_task", args=[1, 2]).get(
        timeout=GET_TIMEOUT) == 3


def test_prefetch_window_stays_full_while_tasks_wait_for_a_slot(celery_client, worker,
                                                                 transport):
    """-c 1 with a window of 4 (multiplier 4): one task runs (acked early) and 4 wait
    reserved. Each time the running one ends and the next starts, its one freed place
    is fetched again at once: a fetch does not hold out for several free places while
    the held messages wait for the busy slot."""
    worker(concurrency=1, prefetch=4)
    rs = [celery_client.send_task("rcw.testing.sleep", args=[4, i]) for i in range(7)]
    # One running, four reserved, two still in the queue.
    wait_until(lambda: transport.unacked_count() == 4
               and transport.queue_length("celery") == 2, timeout=3.5,
               what="1 running + 4 reserved")
    assert rs[0].get(timeout=GET_TIMEOUT) == 0
    # The next one started and freed one place: it is refilled from the queue.
    wait_until(lambda: transport.unacked_count() == 4
               and transport.queue_length("celery") == 1, timeout=3.5,
               what="the freed place refilled")
