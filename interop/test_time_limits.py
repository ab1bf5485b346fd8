"""Time limits (SPEC §7.5): the ``timelimit`` header, the task's own limits, the
``task_time_limit`` / ``task_soft_time_limit`` settings and the worker's
``--time-limit`` / ``--soft-time-limit`` flags.

Celery enforces time limits only in its prefork pool (``-P threads`` ignores them), so
the Python worker runs ``-P prefork`` here (``pool=`` is ignored for our binary).
"""
from __future__ import annotations

import time

import pytest
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from helpers import log_count, result_meta

GET_TIMEOUT = 20


def _assert_time_limit_meta(backend, task_id, limit):
    meta = result_meta(backend, task_id)
    assert meta["status"] == "FAILURE", meta
    assert meta["result"] == {"exc_type": "TimeLimitExceeded", "exc_message": [limit],
                              "exc_module": "billiard.exceptions"}, meta
    assert meta["date_done"] is not None
    return meta


def test_hard_time_limit_from_message_frees_the_slot(celery_client, worker, backend):
    w = worker(concurrency=1, pool="prefork")
    started = time.monotonic()
    res = celery_client.send_task("rcw.testing.sleep", args=[30], time_limit=1)
    # -c 1: this one can only run once the 30 s sleeper's slot is freed.
    quick = celery_client.send_task("app.workers.tasks.example_task", args=[20, 22])
    with pytest.raises(TimeLimitExceeded) as excinfo:
        res.get(timeout=GET_TIMEOUT)
    killed_after = time.monotonic() - started
    assert excinfo.value.args == (1,)
    assert 0.9 <= killed_after <= 3.0, f"hard limit 1 s fired after {killed_after:.2f}s"
    assert res.state == "FAILURE"
    _assert_time_limit_meta(backend, res.id, 1)
    assert quick.get(timeout=GET_TIMEOUT) == 42
    # Celery's prefork pool takes ~4 s to replace the killed child process.
    assert time.monotonic() - started < 8.0, "the killed task's slot was not freed"
    w.wait_for_log(f"Hard time limit (1s) exceeded for rcw.testing.sleep[{res.id}]", timeout=5)
    assert log_count(w, f"Task rcw.testing.sleep[{res.id}] succeeded") == 0


def test_worker_time_limit_flag(celery_client, worker, backend):
    w = worker(concurrency=2, pool="prefork", extra_args=["--time-limit", "1"])
    started = time.monotonic()
    res = celery_client.send_task("rcw.testing.sleep", args=[10])
    with pytest.raises(TimeLimitExceeded):
        res.get(timeout=GET_TIMEOUT)
    assert time.monotonic() - started <= 3.5
    meta = result_meta(backend, res.id)
    assert meta["result"]["exc_type"] == "TimeLimitExceeded"
    assert meta["result"]["exc_module"] == "billiard.exceptions"
    assert meta["result"]["exc_message"] == [1.0]  # the CLI option is a float
    w.wait_for_log(f"Hard time limit (1.0s) exceeded for rcw.testing.sleep[{res.id}]",
                   timeout=5)
    # A task that finishes inside the limit is unaffected.
    assert celery_client.send_task("rcw.testing.sleep", args=[0.2, "ok"]).get(
        timeout=GET_TIMEOUT) == "ok"


def test_setting_task_time_limit(celery_client, worker, backend):
    worker(concurrency=1, pool="prefork", settings={"task_time_limit": 1})
    res = celery_client.send_task("rcw.testing.sleep", args=[10])
    with pytest.raises(TimeLimitExceeded):
        res.get(timeout=GET_TIMEOUT)
    _assert_time_limit_meta(backend, res.id, 1)


def test_soft_limit_observed_by_task(celery_client, worker, backend):
    w = worker(pool="prefork")
    started = time.monotonic()
    res = celery_client.send_task("rcw.testing.soft_limited", args=[5])
    assert res.get(timeout=GET_TIMEOUT) == "soft limit observed"
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed <= 3.0, f"soft limit 1 s observed after {elapsed:.2f}s"
    w.wait_for_log(f"Soft time limit (1s) exceeded for rcw.testing.soft_limited[{res.id}]",
                   timeout=5)
    # Under the soft limit it just finishes.
    assert celery_client.send_task("rcw.testing.soft_limited", args=[0.3]).get(
        timeout=GET_TIMEOUT) == "done"


def test_soft_limit_ignored_by_task_fails_it(celery_client, worker, backend):
    w = worker(pool="prefork")
    res = celery_client.send_task("rcw.testing.ignores_soft", args=[2])
    with pytest.raises(SoftTimeLimitExceeded):
        res.get(timeout=GET_TIMEOUT)
    meta = result_meta(backend, res.id)
    assert meta["status"] == "FAILURE"
    assert meta["result"] == {"exc_type": "SoftTimeLimitExceeded", "exc_message": [],
                              "exc_module": "billiard.exceptions"}
    w.wait_for_log(f"Task rcw.testing.ignores_soft[{res.id}] raised unexpected: "
                   f"SoftTimeLimitExceeded()", timeout=5)


def test_setting_task_soft_time_limit(celery_client, worker, backend):
    worker(pool="prefork", settings={"task_soft_time_limit": 1})
    res = celery_client.send_task("rcw.testing.sleep", args=[2])
    quick = celery_client.send_task("rcw.testing.sleep", args=[0.1, "quick"])
    assert quick.get(timeout=GET_TIMEOUT) == "quick"
    with pytest.raises(SoftTimeLimitExceeded):
        res.get(timeout=GET_TIMEOUT)
    assert result_meta(backend, res.id)["result"]["exc_type"] == "SoftTimeLimitExceeded"
