"""Task retries (SPEC §7.7): ``self.retry(...)``, ``autoretry_for``, ``max_retries``,
exponential backoff; the RETRY state, the republished attempts and Celery's log lines.

Test tasks (Rust: ``RCW_TEST_TASKS=1``; Python twins in ``pyworker_tasks.py``):
``rcw.testing.flaky``, ``retry_plain``, ``autoretry``, ``autoretry_backoff``.
"""
from __future__ import annotations

import time
import uuid

import pytest
from celery.exceptions import MaxRetriesExceededError

from helpers import MetaRecorder, log_count, result_meta, wait_until

GET_TIMEOUT = 20


def _retry_line(name: str, task_id: str, text: str) -> str:
    """Celery's LOG_RETRY (celery/app/trace.py): ``Task %(name)s[%(id)s] retry: %(exc)s``
    where exc is ``str(Retry)`` = ``Retry in <countdown>s: <repr(exc)>`` (or just
    ``Retry in <countdown>s`` when retry() got no exc)."""
    return f"Task {name}[{task_id}] retry: {text}"


def test_flaky_retries_then_succeeds(celery_client, worker, backend):
    w = worker(settings={"result_extended": True})
    task_id = str(uuid.uuid4())
    rec = MetaRecorder(backend, [task_id])
    try:
        started = time.monotonic()
        res = celery_client.send_task("rcw.testing.flaky", args=[3], task_id=task_id)
        # Poll the state the way a client would; RETRY must be visible at some point.
        polled = []
        deadline = time.monotonic() + GET_TIMEOUT
        while time.monotonic() < deadline:
            state = res.state
            if not polled or polled[-1] != state:
                polled.append(state)
            if state == "SUCCESS":
                break
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        assert "RETRY" in polled, f"never observed RETRY while polling: {polled}"
        assert res.get(timeout=GET_TIMEOUT) == {"attempts": 4}
        # 3 retries with countdown 0.2 s each.
        assert elapsed >= 0.55, f"3 retries with countdown=0.2 took only {elapsed:.2f}s"

        wait_until(lambda: len(rec.metas(task_id)) >= 4, timeout=5, what="4 published metas")
        metas = rec.metas(task_id)
        assert [m["status"] for m in metas] == ["RETRY", "RETRY", "RETRY", "SUCCESS"], metas
        for n, meta in enumerate(metas[:3]):
            assert meta["result"] == {"exc_type": "ConnectionError",
                                      "exc_message": [f"attempt {n}"],
                                      "exc_module": "builtins"}, meta
            assert meta["date_done"] is None
            assert isinstance(meta["traceback"], str) and "ConnectionError" in meta["traceback"]
            assert meta["task_id"] == task_id
            # result_extended: the request that asked for the retry had `retries` = n.
            assert meta["retries"] == n, meta
    finally:
        rec.close()

    final = result_meta(backend, task_id)
    assert final["status"] == "SUCCESS" and final["result"] == {"attempts": 4}
    assert final["date_done"] is not None
    # The 4th attempt came from the 3rd republished message: retries == 3, and a
    # retried message has parent_id = the task's own id (signature_from_request).
    assert final["retries"] == 3
    assert final["parent_id"] == task_id
    assert final["name"] == "rcw.testing.flaky" and final["args"] == [3]

    for n in range(3):
        w.wait_for_log(_retry_line("rcw.testing.flaky", task_id,
                                   f"Retry in 0.2s: ConnectionError('attempt {n}')"),
                       timeout=5)
    # Every attempt is a new message, received (and logged) like any other.
    w.wait_for_log(f"Task rcw.testing.flaky[{task_id}] succeeded in ", timeout=5)
    assert log_count(w, f"Task rcw.testing.flaky[{task_id}] received") == 4
    assert log_count(w, f"Task rcw.testing.flaky[{task_id}] succeeded in ") == 1


def test_flaky_exhausts_max_retries_and_reraises_exc(celery_client, worker, backend):
    w = worker()
    res = celery_client.send_task("rcw.testing.flaky", args=[5], kwargs={"countdown": 0.1})
    # max_retries=3: attempts with retries 0,1,2 retry; the 4th calls retry() with
    # retries 3 → 4 > 3, and Celery re-raises the exc it was given.
    with pytest.raises(ConnectionError) as excinfo:
        res.get(timeout=GET_TIMEOUT)
    assert type(excinfo.value) is ConnectionError
    assert str(excinfo.value) == "attempt 3"
    assert res.state == "FAILURE"
    meta = result_meta(backend, res.id)
    assert meta["status"] == "FAILURE"
    assert meta["result"] == {"exc_type": "ConnectionError", "exc_message": ["attempt 3"],
                              "exc_module": "builtins"}
    assert meta["date_done"] is not None
    assert meta["parent_id"] == res.id
    for n in range(3):
        assert _retry_line("rcw.testing.flaky", res.id,
                           f"Retry in 0.1s: ConnectionError('attempt {n}')") in w.log()
    assert _retry_line("rcw.testing.flaky", res.id,
                       "Retry in 0.1s: ConnectionError('attempt 3')") not in w.log()
    w.wait_for_log(f"Task rcw.testing.flaky[{res.id}] raised unexpected: "
                   f"ConnectionError('attempt 3')", timeout=5)
    assert log_count(w, f"Task rcw.testing.flaky[{res.id}] received") == 4


def test_retry_without_exc_raises_max_retries_exceeded(celery_client, worker, backend):
    w = worker()
    ok = celery_client.send_task("rcw.testing.retry_plain", args=[1])
    res = celery_client.send_task("rcw.testing.retry_plain", args=[5])
    assert ok.get(timeout=GET_TIMEOUT) == 1
    with pytest.raises(MaxRetriesExceededError) as excinfo:
        res.get(timeout=GET_TIMEOUT)
    assert type(excinfo.value) is MaxRetriesExceededError
    # "Can't retry <name>[<id>] args:<args> kwargs:<kwargs>"; the repr of args/kwargs
    # is Python's and not asserted here.
    assert str(excinfo.value).startswith(f"Can't retry rcw.testing.retry_plain[{res.id}]")
    meta = result_meta(backend, res.id)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "MaxRetriesExceededError"
    assert meta["result"]["exc_module"] == "celery.exceptions"
    # max_retries=2: two retries (default_retry_delay 0.2 s), then the third attempt fails.
    line = _retry_line("rcw.testing.retry_plain", res.id, "Retry in 0.2s")
    assert log_count(w, line + "\n") == 2, w.log_tail()
    assert log_count(w, f"Task rcw.testing.retry_plain[{res.id}] received") == 3


def test_autoretry_for(celery_client, worker, backend):
    w = worker()
    ok = celery_client.send_task("rcw.testing.autoretry", args=[2])
    bad = celery_client.send_task("rcw.testing.autoretry", args=[5])
    assert ok.get(timeout=GET_TIMEOUT) == 2
    for n in range(2):
        assert _retry_line("rcw.testing.autoretry", ok.id,
                           f"Retry in 0.2s: ConnectionError('attempt {n}')") in w.log()
    assert log_count(w, f"Task rcw.testing.autoretry[{ok.id}] received") == 3
    assert result_meta(backend, ok.id)["parent_id"] == ok.id
    # max_retries=3 exhausted → the ConnectionError itself is the FAILURE.
    with pytest.raises(ConnectionError, match="^attempt 3$"):
        bad.get(timeout=GET_TIMEOUT)
    assert result_meta(backend, bad.id)["result"] == {
        "exc_type": "ConnectionError", "exc_message": ["attempt 3"], "exc_module": "builtins"}


def test_autoretry_exponential_backoff(celery_client, worker):
    w = worker()
    started = time.monotonic()
    res = celery_client.send_task("rcw.testing.autoretry_backoff", args=[3])
    assert res.get(timeout=GET_TIMEOUT) == 3
    elapsed = time.monotonic() - started
    # retry_backoff=1, retry_jitter=False: countdowns min(4, 1 * 2**retries) = 1, 2, 4 s.
    assert elapsed >= 6.5, f"backoff 1+2+4 s took only {elapsed:.2f}s"
    assert elapsed < 12, f"backoff 1+2+4 s took {elapsed:.2f}s"
    for n, countdown in enumerate([1, 2, 4]):
        assert _retry_line("rcw.testing.autoretry_backoff", res.id,
                           f"Retry in {countdown}s: ConnectionError('attempt {n}')") in w.log(), \
            w.log_tail()
