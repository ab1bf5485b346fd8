"""Events (the ``celeryev`` fanout exchange) as an ``app.events.Receiver`` sees them:
worker-online / worker-heartbeat / worker-offline, and with ``-E`` the task-* events,
each with Celery's fields. ``event_recorder`` (conftest) subscribes before the worker
starts, since Redis drops fanout messages nobody is subscribed to.

Expected shapes are those of Celery 5.7's worker.
"""
from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from helpers import wait_for_pidbox, wait_until

GET_TIMEOUT = 20
COMMON_FIELDS = {"hostname", "pid", "clock", "timestamp", "utcoffset", "type"}
WORKER_FIELDS = COMMON_FIELDS | {"freq", "sw_ident", "sw_ver", "sw_sys", "active",
                                 "processed", "loadavg"}


def _assert_common(event, w):
    assert COMMON_FIELDS <= set(event), event
    assert event["hostname"] == w.node
    assert event["pid"] == w.pid
    assert isinstance(event["clock"], int) and event["clock"] > 0, event
    assert isinstance(event["timestamp"], float), event
    assert abs(event["timestamp"] - time.time()) < 60, event
    assert isinstance(event["utcoffset"], (int, float)), event


def _assert_worker_event(event, w):
    _assert_common(event, w)
    assert WORKER_FIELDS <= set(event), event
    assert isinstance(event["freq"], float), event
    for key in ("sw_ident", "sw_ver", "sw_sys"):
        assert isinstance(event[key], str) and event[key], event
    assert isinstance(event["active"], int)
    assert isinstance(event["processed"], int)
    assert isinstance(event["loadavg"], list) and len(event["loadavg"]) == 3, event


def _task_types(recorder, w, task_id=None):
    return [e["type"] for e in recorder.events(hostname=w.node)
            if e["type"].startswith("task-") and (task_id is None or e.get("uuid") == task_id)]


@pytest.mark.timeout(60)
def test_worker_online_heartbeat_offline(celery_client, worker, event_recorder):
    w = worker(events=True)
    online = event_recorder.wait_for("worker-online", hostname=w.node, timeout=10)
    _assert_worker_event(online, w)
    assert online["freq"] == 2.0  # worker_heartbeat interval (--heartbeat-interval)
    assert online["processed"] == 0

    # Heartbeats every 2 s carry the number of tasks processed and running.
    res = celery_client.send_task("rcw.testing.sleep", args=[4.5])
    busy = event_recorder.wait_for("worker-heartbeat", hostname=w.node, active=1, timeout=8)
    _assert_worker_event(busy, w)
    assert res.get(timeout=GET_TIMEOUT) == 4.5
    assert celery_client.send_task("rcw.testing.echo", args=[1]).get(timeout=GET_TIMEOUT) == 1
    idle = wait_until(lambda: [e for e in event_recorder.events("worker-heartbeat", w.node)
                               if e["processed"] >= 2 and e["active"] == 0],
                      timeout=8, what="heartbeat with processed=2")[0]
    _assert_worker_event(idle, w)
    beats = event_recorder.events("worker-heartbeat", w.node)
    assert all(b["freq"] == 2.0 for b in beats)
    stamps = [b["timestamp"] for b in beats]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert gaps and all(1.0 <= g <= 4.0 for g in gaps), gaps

    w.send_signal(signal.SIGTERM)
    w.proc.wait(timeout=30)
    offline = event_recorder.wait_for("worker-offline", hostname=w.node, timeout=10)
    _assert_worker_event(offline, w)
    assert offline["clock"] > online["clock"]
    assert offline["processed"] >= 2


@pytest.mark.timeout(60)
def test_task_received_started_succeeded(celery_client, worker, event_recorder):
    w = worker(events=True)
    value = {"x": [1, "two"], "y": None}
    res = celery_client.send_task("rcw.testing.echo", args=[value])
    assert res.get(timeout=GET_TIMEOUT) == value
    ok = event_recorder.wait_for("task-succeeded", hostname=w.node, uuid=res.id, timeout=10)
    received = event_recorder.wait_for("task-received", hostname=w.node, uuid=res.id)
    started = event_recorder.wait_for("task-started", hostname=w.node, uuid=res.id)
    for event in (received, started, ok):
        _assert_common(event, w)
    assert _task_types(event_recorder, w, res.id) == [
        "task-received", "task-started", "task-succeeded"]
    assert received["clock"] < started["clock"] < ok["clock"]
    assert received["timestamp"] <= started["timestamp"] <= ok["timestamp"]

    # task-received: args/kwargs as the producer's argsrepr/kwargsrepr.
    assert received["name"] == "rcw.testing.echo"
    assert received["args"] == "[{'x': [1, 'two'], 'y': None}]"
    assert received["kwargs"] == "{}"
    assert received["retries"] == 0
    assert received["eta"] is None
    assert received["expires"] is None
    assert received["root_id"] == res.id
    assert received["parent_id"] is None
    assert set(started) - COMMON_FIELDS - {"local_received"} == {"uuid"}
    # task-succeeded: the result's repr and the runtime in seconds.
    assert ok["result"] == "{'x': [1, 'two'], 'y': None}"
    assert isinstance(ok["runtime"], float) and 0 <= ok["runtime"] < 5, ok


@pytest.mark.timeout(60)
def test_task_failed_and_retried(celery_client, worker, event_recorder):
    """Prefork for the Python worker: with ``-P threads`` Celery's task-retried event
    carries the repr of a doubly wrapped ``Retry`` instead of the cause's."""
    w = worker(events=True, pool="prefork")
    failing = celery_client.send_task("rcw.testing.fail", args=["bad input"])
    with pytest.raises(ValueError):
        failing.get(timeout=GET_TIMEOUT)
    failed = event_recorder.wait_for("task-failed", hostname=w.node, uuid=failing.id)
    _assert_common(failed, w)
    assert failed["exception"] == "ValueError('bad input')"
    assert isinstance(failed["traceback"], str)
    assert "ValueError: bad input" in failed["traceback"]
    assert _task_types(event_recorder, w, failing.id) == [
        "task-received", "task-started", "task-failed"]

    flaky = celery_client.send_task("rcw.testing.flaky", args=[1])
    assert flaky.get(timeout=GET_TIMEOUT) == {"attempts": 2}
    event_recorder.wait_for("task-succeeded", hostname=w.node, uuid=flaky.id)
    retried = event_recorder.wait_for("task-retried", hostname=w.node, uuid=flaky.id)
    _assert_common(retried, w)
    assert retried["exception"] == "ConnectionError('attempt 0')"
    assert isinstance(retried["traceback"], str)
    types = _task_types(event_recorder, w, flaky.id)
    # The retry message may come back (task-received) before task-retried is sent.
    assert Counter(types) == {"task-received": 2, "task-started": 2, "task-retried": 1,
                              "task-succeeded": 1}, types
    assert types[:2] == ["task-received", "task-started"], types
    assert types[-1] == "task-succeeded", types
    again = event_recorder.events("task-received", w.node, uuid=flaky.id)[1]
    assert again["retries"] == 1
    assert again["eta"] is not None
    assert again["root_id"] == flaky.id


@pytest.mark.timeout(60)
def test_task_revoked_events(celery_client, worker, event_recorder):
    w = worker(events=True, concurrency=1, pool="prefork")
    wait_for_pidbox(celery_client, w.node)
    busy = celery_client.send_task("rcw.testing.sleep", args=[2])
    event_recorder.wait_for("task-started", hostname=w.node, uuid=busy.id)
    queued = celery_client.send_task("rcw.testing.echo", args=["never"])
    event_recorder.wait_for("task-received", hostname=w.node, uuid=queued.id)
    celery_client.control.revoke(queued.id, destination=[w.node], reply=True)
    expired = celery_client.send_task("rcw.testing.echo", args=["late"], expires=0.5,
                                      countdown=1)
    revoked = event_recorder.wait_for("task-revoked", hostname=w.node, uuid=queued.id,
                                      timeout=15)
    _assert_common(revoked, w)
    assert revoked["terminated"] is False
    assert revoked["expired"] is False
    assert revoked["signum"] is None
    assert "task-started" not in _task_types(event_recorder, w, queued.id)

    gone = event_recorder.wait_for("task-revoked", hostname=w.node, uuid=expired.id,
                                   timeout=15)
    assert gone["expired"] is True
    assert gone["terminated"] is False
    assert "task-started" not in _task_types(event_recorder, w, expired.id)


@pytest.mark.timeout(60)
def test_terminate_sends_task_revoked(celery_client, worker, event_recorder):
    w = worker(events=True, concurrency=1, pool="prefork")
    wait_for_pidbox(celery_client, w.node)
    res = celery_client.send_task("rcw.testing.async_sleep", args=[30])
    event_recorder.wait_for("task-started", hostname=w.node, uuid=res.id)
    celery_client.control.revoke(res.id, terminate=True, destination=[w.node], reply=True)
    revoked = event_recorder.wait_for("task-revoked", hostname=w.node, uuid=res.id,
                                      timeout=10)
    _assert_common(revoked, w)
    assert revoked["terminated"] is True
    assert revoked["signum"] == signal.SIGTERM.value
    assert revoked["expired"] is False
    time.sleep(0.5)
    assert "task-succeeded" not in _task_types(event_recorder, w, res.id)


@pytest.mark.timeout(60)
def test_without_E_only_worker_events_until_enable_events(celery_client, worker,
                                                           event_recorder):
    w = worker(heartbeat=True)
    event_recorder.wait_for("worker-online", hostname=w.node, timeout=10)
    wait_for_pidbox(celery_client, w.node)
    plain = celery_client.send_task("rcw.testing.echo", args=[1])
    assert plain.get(timeout=GET_TIMEOUT) == 1
    event_recorder.wait_for("worker-heartbeat", hostname=w.node, timeout=8)
    time.sleep(0.5)
    assert _task_types(event_recorder, w) == [], "task events sent without -E"

    reply = celery_client.control.enable_events(destination=[w.node], reply=True, timeout=5)
    assert reply == [{w.node: {"ok": "task events enabled"}}]
    again = celery_client.control.enable_events(destination=[w.node], reply=True, timeout=5)
    assert again == [{w.node: {"ok": "task events already enabled"}}]
    w.wait_for_log("Events of group {task} enabled by remote.", timeout=5)
    seen = celery_client.send_task("rcw.testing.echo", args=[2])
    assert seen.get(timeout=GET_TIMEOUT) == 2
    event_recorder.wait_for("task-succeeded", hostname=w.node, uuid=seen.id, timeout=10)
    assert _task_types(event_recorder, w, seen.id) == [
        "task-received", "task-started", "task-succeeded"]

    reply = celery_client.control.disable_events(destination=[w.node], reply=True, timeout=5)
    assert reply == [{w.node: {"ok": "task events disabled"}}]
    again = celery_client.control.disable_events(destination=[w.node], reply=True, timeout=5)
    assert again == [{w.node: {"ok": "task events already disabled"}}]
    w.wait_for_log("Events of group {task} disabled by remote.", timeout=5)
    unseen = celery_client.send_task("rcw.testing.echo", args=[3])
    assert unseen.get(timeout=GET_TIMEOUT) == 3
    time.sleep(1.0)
    assert _task_types(event_recorder, w, unseen.id) == []
    # Worker events go on.
    n = len(event_recorder.events("worker-heartbeat", w.node))
    wait_until(lambda: len(event_recorder.events("worker-heartbeat", w.node)) > n,
               timeout=8, what="another heartbeat")


@pytest.mark.timeout(60)
def test_enable_events_with_E_is_already_enabled(celery_client, worker, event_recorder):
    w = worker(events=True)
    wait_for_pidbox(celery_client, w.node)
    reply = celery_client.control.enable_events(destination=[w.node], reply=True, timeout=5)
    assert reply == [{w.node: {"ok": "task events already enabled"}}]
    res = celery_client.send_task("rcw.testing.echo", args=[1])
    assert res.get(timeout=GET_TIMEOUT) == 1
    event_recorder.wait_for("task-succeeded", hostname=w.node, uuid=res.id, timeout=10)


@pytest.mark.timeout(60)
def test_heartbeat_command_sends_a_heartbeat_now(celery_client, worker, event_recorder):
    w = worker(events=True)
    event_recorder.wait_for("worker-online", hostname=w.node, timeout=10)
    wait_for_pidbox(celery_client, w.node)
    # The handler returns nothing: the reply body is None.
    reply = celery_client.control.heartbeat(destination=[w.node], reply=True, timeout=5)
    assert reply == [{w.node: None}]
    # Requested heartbeats say freq=5 (Celery's constant); the periodic ones 2.0.
    beat = event_recorder.wait_for("worker-heartbeat", hostname=w.node, freq=5, timeout=3)
    _assert_common(beat, w)
    for key in ("sw_ident", "sw_ver", "sw_sys"):
        assert isinstance(beat[key], str) and beat[key]


@pytest.mark.timeout(60)
def test_unregistered_task_is_reported_failed(celery_client, worker, event_recorder):
    """The consumer refuses an unknown task and tells monitors: ``task-failed`` with
    ``NotRegistered('<name>')`` and no traceback (Celery's ``on_unknown_task``)."""
    w = worker(events=True)
    wait_for_pidbox(celery_client, w.node)
    res = celery_client.send_task("rcw.testing.no_such_task", args=[1])
    failed = event_recorder.wait_for("task-failed", hostname=w.node, uuid=res.id, timeout=10)
    _assert_common(failed, w)
    assert failed["exception"] == "NotRegistered('rcw.testing.no_such_task')"
    assert "traceback" not in failed
    assert _task_types(event_recorder, w, res.id) == ["task-failed"]
