"""Producer/client round trips: delay/get, queues, AsyncResult accessors, failures,
the stored result format, and the ``--setting`` options."""
from __future__ import annotations

import datetime as dt
import json
import re
import socket
import time
import uuid

import pytest
from celery.exceptions import NotRegistered
from celery.result import AsyncResult

from helpers import result_meta, wait_until

GET_TIMEOUT = 20


def test_example_task_ints(celery_client, worker):
    from app.workers.tasks import example_task

    worker()
    res = example_task.delay(4, 5)
    assert res.get(timeout=GET_TIMEOUT) == 9
    value = example_task.delay(-7, 3).get(timeout=GET_TIMEOUT)
    assert value == -4 and type(value) is int


def test_example_task_floats_and_strings(celery_client, worker):
    from app.workers.tasks import example_task

    worker()
    value = example_task.delay(1.5, 3.0).get(timeout=GET_TIMEOUT)
    assert value == 4.5 and type(value) is float
    assert example_task.delay("a", "b").get(timeout=GET_TIMEOUT) == "ab"
    # Mixed int/float follows Python: 2 + 0.5 == 2.5
    assert example_task.delay(2, 0.5).get(timeout=GET_TIMEOUT) == 2.5
    # Keyword arguments bind by name.
    assert example_task.apply_async(kwargs={"x": 10, "y": 20}).get(timeout=GET_TIMEOUT) == 30
    assert example_task.apply_async(args=(1,), kwargs={"y": 2}).get(timeout=GET_TIMEOUT) == 3


def test_named_queue(celery_client, worker, transport, queue_name):
    from app.workers.tasks import example_task

    other = f"{queue_name}-other"
    worker(queues=[other, queue_name])
    res = example_task.apply_async((20, 22), queue=queue_name)
    assert res.get(timeout=GET_TIMEOUT) == 42
    res2 = celery_client.send_task("app.workers.tasks.example_task", args=[1, 1], queue=other)
    assert res2.get(timeout=GET_TIMEOUT) == 2
    # The worker consumes only its -Q queues: a task on the default queue waits.
    stray = example_task.delay(1, 2)
    time.sleep(1.5)
    assert stray.state == "PENDING"
    assert transport.queue_length("celery") == 1


def test_async_result_accessors_success(celery_client, worker, backend):
    from app.workers.tasks import example_task

    worker()
    before = dt.datetime.now(dt.timezone.utc)
    res = example_task.delay(2, 3)
    assert res.get(timeout=GET_TIMEOUT) == 5
    assert res.status == "SUCCESS"
    assert res.state == "SUCCESS"
    assert res.info == 5
    assert res.result == 5
    assert res.ready() is True
    assert res.successful() is True
    assert res.failed() is False
    assert res.traceback is None
    done = res.date_done
    assert isinstance(done, dt.datetime) and done.tzinfo is not None
    assert before - dt.timedelta(seconds=5) <= done <= dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5)

    # A fresh AsyncResult (another process looking the id up) sees the same.
    fresh = AsyncResult(res.id, app=celery_client)
    assert (fresh.status, fresh.result, fresh.ready(), fresh.successful()) == ("SUCCESS", 5, True, True)

    # Unknown ids are PENDING (no key written).
    ghost = AsyncResult(str(uuid.uuid4()), app=celery_client)
    assert ghost.status == "PENDING" and ghost.ready() is False


def test_stored_success_meta_is_celery_format(celery_client, worker, backend):
    """The raw JSON under celery-task-meta-<id>: key order, values, default TTL 1 day,
    and the identical JSON PUBLISHed on the channel of the same name."""
    worker()
    task_id = str(uuid.uuid4())
    pubsub = backend.pubsub()
    pubsub.subscribe(f"celery-task-meta-{task_id}")
    pubsub.get_message(timeout=1)  # subscribe confirmation
    res = celery_client.send_task("app.workers.tasks.example_task", args=[40, 2], task_id=task_id)
    assert res.get(timeout=GET_TIMEOUT) == 42

    raw = backend.get(f"celery-task-meta-{task_id}")
    meta = json.loads(raw)
    assert list(meta) == ["status", "result", "traceback", "children", "date_done", "task_id"]
    assert meta["status"] == "SUCCESS" and meta["result"] == 42
    assert meta["traceback"] is None and meta["children"] == [] and meta["task_id"] == task_id
    parsed = dt.datetime.fromisoformat(meta["date_done"])
    assert parsed.utcoffset() == dt.timedelta(0)
    ttl = backend.ttl(f"celery-task-meta-{task_id}")
    assert 86400 - 60 <= ttl <= 86400

    published = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not published:
        msg = pubsub.get_message(timeout=0.5)
        if msg and msg["type"] == "message":
            published.append(msg["data"])
    pubsub.close()
    assert published, "no PUBLISH on celery-task-meta-<id>"
    assert json.loads(published[-1]) == meta


def test_failure_reraised_as_value_error(celery_client, worker):
    worker()
    res = celery_client.send_task("rcw.testing.fail", args=["kaput"])
    with pytest.raises(ValueError) as excinfo:
        res.get(timeout=GET_TIMEOUT)
    assert type(excinfo.value) is ValueError
    assert str(excinfo.value) == "kaput"
    assert res.status == "FAILURE" and res.state == "FAILURE"
    assert res.ready() is True and res.failed() is True and res.successful() is False
    assert isinstance(res.result, ValueError) and res.result.args == ("kaput",)
    assert isinstance(res.info, ValueError)
    assert isinstance(res.traceback, str) and "kaput" in res.traceback
    assert isinstance(res.date_done, dt.datetime)


def test_failure_default_message_and_raw_meta(celery_client, worker, backend):
    worker()
    res = celery_client.send_task("rcw.testing.fail")
    with pytest.raises(ValueError, match="^boom$"):
        res.get(timeout=GET_TIMEOUT)
    meta = result_meta(backend, res.id)
    assert meta["status"] == "FAILURE"
    assert meta["result"] == {"exc_type": "ValueError", "exc_message": ["boom"],
                              "exc_module": "builtins"}
    assert meta["date_done"] is not None and meta["task_id"] == res.id


def test_get_propagate_false_returns_exception(celery_client, worker):
    worker()
    res = celery_client.send_task("rcw.testing.fail", kwargs={"message": "quiet"})
    value = res.get(timeout=GET_TIMEOUT, propagate=False)
    assert isinstance(value, ValueError) and str(value) == "quiet"
    assert res.failed()


def test_failure_custom_exception_class(celery_client, worker, backend):
    from app.workers.tasks import IngestionError

    worker()
    res = celery_client.send_task("rcw.testing.fail_custom", args=["file 42 is corrupt"])
    with pytest.raises(IngestionError) as excinfo:
        res.get(timeout=GET_TIMEOUT)
    assert type(excinfo.value) is IngestionError
    assert str(excinfo.value) == "file 42 is corrupt"
    meta = result_meta(backend, res.id)
    assert meta["result"]["exc_type"] == "IngestionError"
    assert meta["result"]["exc_module"] == "app.workers.tasks"
    # default message
    res2 = celery_client.send_task("rcw.testing.fail_custom")
    with pytest.raises(IngestionError, match="^bad file$"):
        res2.get(timeout=GET_TIMEOUT)


def test_missing_argument_is_type_error(celery_client, worker):
    worker()
    # .delay(1) would be refused client-side by Celery's argument check; send_task
    # bypasses it, as a producer without the task code would.
    res = celery_client.send_task("app.workers.tasks.example_task", args=[1])
    with pytest.raises(TypeError) as excinfo:
        res.get(timeout=GET_TIMEOUT)
    assert str(excinfo.value) == "example_task() missing 1 required positional argument: 'y'"
    assert res.status == "FAILURE"


def test_unknown_task_not_registered(celery_client, worker):
    w = worker()
    name = f"rcw.testing.does_not_exist_{uuid.uuid4().hex[:6]}"
    res = celery_client.send_task(name, args=[1, 2])
    with pytest.raises(NotRegistered) as excinfo:
        res.get(timeout=GET_TIMEOUT)
    assert name in str(excinfo.value)
    assert res.status == "FAILURE"
    w.wait_for_log("Received unregistered task of type", timeout=10)
    assert name in w.log()
    # The worker keeps going.
    assert celery_client.send_task("app.workers.tasks.example_task", args=[1, 2]).get(timeout=GET_TIMEOUT) == 3


def test_ignore_result_never_stores(celery_client, worker, backend, redis_server):
    from app.workers.tasks import example_task

    w = worker()
    res = example_task.apply_async((3, 4), ignore_result=True)
    w.wait_for_log(f"[{res.id}] succeeded", timeout=GET_TIMEOUT)
    time.sleep(0.5)
    assert backend.get(f"celery-task-meta-{res.id}") is None
    assert redis_server.client(0).get(f"celery-task-meta-{res.id}") is None  # nor in db 0
    # A normal task afterwards is stored (so the check above can fail).
    normal = example_task.delay(3, 4)
    assert normal.get(timeout=GET_TIMEOUT) == 7
    assert backend.get(f"celery-task-meta-{normal.id}") is not None


def test_setting_task_ignore_result(celery_client, worker, backend):
    w = worker(settings={"task_ignore_result": True})
    res = celery_client.send_task("app.workers.tasks.example_task", args=[5, 5])
    w.wait_for_log(f"[{res.id}] succeeded", timeout=GET_TIMEOUT)
    time.sleep(0.5)
    assert backend.get(f"celery-task-meta-{res.id}") is None


def test_setting_result_expires(celery_client, worker, backend):
    worker(settings={"result_expires": 60})
    res = celery_client.send_task("app.workers.tasks.example_task", args=[5, 6])
    assert res.get(timeout=GET_TIMEOUT) == 11
    ttl = backend.ttl(f"celery-task-meta-{res.id}")
    assert 0 < ttl <= 60


def test_setting_track_started(celery_client, worker, backend):
    name = f"tracker-{uuid.uuid4().hex[:6]}"
    worker(name=name, settings={"task_track_started": True})
    res = celery_client.send_task("rcw.testing.sleep", args=[2.0])
    wait_until(lambda: res.state == "STARTED", timeout=10, what="state STARTED")
    meta = result_meta(backend, res.id)
    assert meta["status"] == "STARTED" and meta["date_done"] is None
    info = res.info
    assert isinstance(info, dict) and isinstance(info.get("pid"), int)
    assert info.get("hostname") == f"{name}@{socket.gethostname()}"
    assert res.ready() is False
    assert res.get(timeout=GET_TIMEOUT) == 2.0
    assert res.state == "SUCCESS"


def test_progress_visible_while_running(celery_client, worker, backend):
    worker()
    steps = 8
    res = celery_client.send_task("rcw.testing.progress", args=[steps], kwargs={"delay": 0.4})
    seen = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        state = res.state
        if state == "PROGRESS":
            info = res.info
            seen.append(info["current"])
            assert info["total"] == steps
        if state == "SUCCESS":
            break
        time.sleep(0.05)
    assert seen, "never observed state PROGRESS"
    assert seen == sorted(seen) and 1 <= seen[0] and seen[-1] <= steps
    assert len(set(seen)) >= 3, f"progress did not advance visibly: {sorted(set(seen))}"
    assert res.get(timeout=GET_TIMEOUT) == {"done": steps}


def test_progress_raw_meta(celery_client, worker, backend):
    worker()
    res = celery_client.send_task("rcw.testing.progress", args=[3], kwargs={"delay": 1.0})
    wait_until(lambda: (result_meta(backend, res.id) or {}).get("status") == "PROGRESS",
               timeout=10, what="PROGRESS meta")
    meta = result_meta(backend, res.id)
    assert meta["result"]["total"] == 3 and meta["result"]["current"] in (1, 2, 3)
    assert meta["date_done"] is None and meta["traceback"] is None
    assert meta["task_id"] == res.id
    assert res.get(timeout=GET_TIMEOUT) == {"done": 3}


def test_echo_round_trips_json_values(celery_client, worker):
    worker()
    value = {"a": [1, 2.5, "x", None, True], "nested": {"k": "v\u00e9\U0001f980"}, "n": -3}
    assert celery_client.send_task("rcw.testing.echo", args=[value]).get(timeout=GET_TIMEOUT) == value
    assert celery_client.send_task("rcw.testing.echo", kwargs={"value": None}).get(timeout=GET_TIMEOUT) is None


def test_log_lines_in_celery_format(celery_client, worker):
    w = worker()
    ok = celery_client.send_task("app.workers.tasks.example_task", args=[4, 5])
    assert ok.get(timeout=GET_TIMEOUT) == 9
    bad = celery_client.send_task("rcw.testing.fail")
    bad.get(timeout=GET_TIMEOUT, propagate=False)
    w.wait_for_log(f"Task rcw.testing.fail[{bad.id}] raised unexpected: ValueError('boom')",
                   timeout=10)
    log = w.log()
    stamp = r"\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}: INFO/[\w-]+\] "
    assert re.search(stamp + re.escape(f"Task app.workers.tasks.example_task[{ok.id}] received"), log)
    assert re.search(stamp + re.escape(f"Task app.workers.tasks.example_task[{ok.id}] succeeded in ")
                     + r"[0-9.e+-]+s: 9$", log, re.M)
