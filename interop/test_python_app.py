"""`-A` loads the Python app: its conf is the config, its Python tasks run with
Celery's semantics (bound request, retries, PROGRESS, child tasks, hooks,
signals, the app's own exception classes)."""
from __future__ import annotations

import json
import time

import pytest

from helpers import result_meta, wait_until

import confapp


def events(backend, task_id):
    return [e for e in (json.loads(x) for x in backend.lrange(confapp.EVENTS, 0, -1))
            if e.get("id") == task_id]


def test_app_conf_is_the_config(celery_client, worker, backend):
    w = worker(app="confapp")
    # task_default_queue from the conf: consumed without -Q.
    r = confapp.hooked.apply_async((7,), queue="confq")
    out = r.get(timeout=20)
    assert out["x"] == 7 and out["id"] == r.id and out["retries"] == 0
    assert out["routing_key"] == "confq"
    assert out["hostname"] == f"{w.name}@" + out["hostname"].split("@", 1)[1]
    meta = result_meta(backend, r.id)
    # result_extended and result_expires from the conf.
    assert meta["name"] == "confapp.hooked" and meta["queue"] == "confq"
    assert 0 < backend.ttl(f"celery-task-meta-{r.id}") <= 120


def test_cli_queues_beat_the_app_conf(celery_client, worker, backend, transport, queue_name):
    worker(app="confapp", queues=[queue_name])
    r = confapp.hooked.apply_async((1,), queue=queue_name)
    assert r.get(timeout=20)["routing_key"] == queue_name
    lost = confapp.hooked.apply_async((2,), queue="confq")
    time.sleep(1.0)
    assert not lost.ready(), "-Q replaced the conf's default queue"
    assert transport.queue_length("confq") == 1


def test_hooks_and_signals_fire_in_celerys_order(celery_client, worker, backend):
    worker(app="confapp")
    ok = confapp.hooked.apply_async((3,), queue="confq")
    ok.get(timeout=20)
    wait_until(lambda: len(events(backend, ok.id)) >= 6, timeout=5, what="six events")
    assert [e["event"] for e in events(backend, ok.id)] == [
        "task_prerun", "before_start", "on_success", "task_success", "after_return",
        "task_postrun"]
    bad = confapp.hooked.apply_async((4,), {"fail": True}, queue="confq")
    with pytest.raises(confapp.ConfError, match="bad 4"):
        bad.get(timeout=20)
    wait_until(lambda: len(events(backend, bad.id)) >= 6, timeout=5, what="six events")
    got = events(backend, bad.id)
    assert [e["event"] for e in got] == [
        "task_prerun", "before_start", "on_failure", "task_failure", "after_return",
        "task_postrun"]
    assert got[2]["exc"] == "ConfError" and got[-1]["state"] == "FAILURE"
    meta = result_meta(backend, bad.id)
    assert meta["result"]["exc_module"] == "confapp"
    assert "ConfError: bad 4" in meta["traceback"] and "confapp.py" in meta["traceback"]


def test_annotations_and_python_task_options_apply(celery_client, worker, backend):
    worker(app="confapp", concurrency=2, pool="prefork")
    started = time.monotonic()
    rs = [confapp.annotated.apply_async((i,), queue="confq") for i in range(5)]
    assert [r.get(timeout=20) for r in rs] == list(range(5))
    assert time.monotonic() - started >= 1.8, "task_annotations rate_limit 2/s ignored"
    slow = confapp.limited.apply_async((10,), queue="confq")
    with pytest.raises(Exception) as exc:
        slow.get(timeout=15)
    assert type(exc.value).__name__ == "TimeLimitExceeded"


def test_example_app_python_tasks(celery_client, worker, backend):
    from app.workers.tasks import (batch_process_task, cleanup_old_sessions_task,
                                   flaky_api_task, parent_task, send_email_task)
    worker()
    r = send_email_task.delay("ops@example.com", "disk full")
    out = r.get(timeout=20)
    assert out["to"] == "ops@example.com" and out["message_id"] == f"<{r.id}@example>"
    with pytest.raises(ValueError, match="invalid recipient 'nobody'"):
        send_email_task.delay("nobody", "x").get(timeout=20)
    assert cleanup_old_sessions_task.delay(days=7).get(timeout=20) == {
        "deleted": 93, "older_than_days": 7}

    batch = batch_process_task.delay(["a", "b", "c", "d", "e"], 0.2)
    wait_until(lambda: batch.state == "PROGRESS", timeout=10, what="PROGRESS")
    assert batch.info["total"] == 5 and 1 <= batch.info["current"] <= 5
    assert batch.get(timeout=20) == {"processed": 5, "items": ["A", "B", "C", "D", "E"]}

    flaky = flaky_api_task.delay(2)
    assert flaky.get(timeout=20) == {"attempts": 3}
    meta = result_meta(backend, flaky.id)
    assert meta.get("parent_id") == flaky.id, "retries are republished with parent_id = self"

    parent = parent_task.delay(5)
    child_id = parent.get(timeout=20)
    child = celery_client.AsyncResult(child_id)
    assert child.get(timeout=20) == 6
    assert result_meta(backend, child_id)["parent_id"] == parent.id


@pytest.mark.rust_only  # --setting is our flag; Celery's CLI has no equivalent
def test_setting_flag_beats_the_app_conf(celery_client, worker, backend):
    worker(app="confapp", settings={"result_extended": False, "result_expires": 30})
    r = confapp.hooked.apply_async((1,), queue="confq")
    r.get(timeout=20)
    assert "name" not in result_meta(backend, r.id), "--setting beat the conf's result_extended"
    assert 0 < backend.ttl(f"celery-task-meta-{r.id}") <= 30


def test_soft_time_limit_is_raised_inside_python_tasks(celery_client, worker, backend):
    worker(app="confapp", pool="prefork")
    started = time.monotonic()
    assert confapp.soft.apply_async((10,), queue="confq").get(timeout=15) == "caught soft limit"
    assert time.monotonic() - started < 5
    bad = confapp.soft_uncaught.apply_async((10,), queue="confq")
    with pytest.raises(Exception) as exc:
        bad.get(timeout=15)
    assert type(exc.value).__name__ == "SoftTimeLimitExceeded"
    assert result_meta(backend, bad.id)["result"]["exc_module"] == "billiard.exceptions"


def test_worker_lifecycle_signals(celery_client, worker, backend):
    w = worker(app="confapp", pool="prefork", concurrency=1)
    wait_until(lambda: {"worker_process_init", "worker_ready"}
               <= {e["event"] for e in events(backend, "worker")}, timeout=10,
               what="worker_process_init and worker_ready")
    assert "worker_shutdown" not in {e["event"] for e in events(backend, "worker")}
    w.stop()
    assert "worker_shutdown" in {e["event"] for e in events(backend, "worker")}


def test_python_tasks_run_in_separate_pool_processes(celery_client, worker, backend):
    w = worker(app="confapp", pool="prefork", concurrency=2)
    rs = [confapp.pid.apply_async((1.0,), queue="confq") for _ in range(2)]
    pids = {r.get(timeout=15) for r in rs}
    assert len(pids) == 2, "two tasks at once ran in two processes"
    assert w.proc.pid not in pids, "Python bodies don't run in the main worker process"


def test_max_tasks_per_child_recycles(celery_client, worker):
    worker(app="confapp", pool="prefork", concurrency=1,
           extra_args=["--max-tasks-per-child", "1"])
    first = confapp.pid.apply_async(queue="confq").get(timeout=15)
    second = confapp.pid.apply_async(queue="confq").get(timeout=15)
    assert first != second, "a fresh process after each task"


def test_killed_pool_process_is_worker_lost_and_replaced(celery_client, worker, backend):
    import os
    import signal
    worker(app="confapp", pool="prefork", concurrency=1)
    victim = confapp.pid.apply_async((30,), queue="confq")
    key = f"confapp:pid:{victim.id}"
    wait_until(lambda: backend.get(key) is not None, timeout=15, what="the task's pid")
    os.kill(int(backend.get(key)), signal.SIGKILL)
    with pytest.raises(Exception) as exc:
        victim.get(timeout=15)
    assert type(exc.value).__name__ == "WorkerLostError"
    assert "Worker exited prematurely: signal 9" in str(exc.value)
    # A new process took its place.
    assert confapp.pid.apply_async(queue="confq").get(timeout=20) != int(backend.get(key))


def test_pool_process_killed_while_idle_loses_no_task(celery_client, worker):
    """Found by the bench's soak: a process that died between jobs was handed
    the next one, which failed with WorkerLostError. Celery's pool replaces it."""
    import os
    import signal
    worker(app="confapp", pool="prefork", concurrency=1)
    idle_pid = confapp.pid.apply_async(queue="confq").get(timeout=15)
    os.kill(idle_pid, signal.SIGTERM)
    time.sleep(0.5)
    after = confapp.pid.apply_async(queue="confq").get(timeout=20)
    assert after != idle_pid, "a fresh process ran it"


def test_retry_fires_on_retry_and_task_retry(celery_client, worker, backend):
    worker(app="confapp", pool="prefork")
    r = confapp.retry_once.apply_async(queue="confq")
    assert r.get(timeout=20) == 1
    wait_until(lambda: "task_postrun" in [e["event"] for e in events(backend, r.id)][6:],
               timeout=5, what="second run's events")
    names = [e["event"] for e in events(backend, r.id)]
    assert names[:3] == ["task_prerun", "before_start", "on_retry"]
    assert "task_retry" in names[:5]
    retry = next(e for e in events(backend, r.id) if e["event"] == "task_retry")
    assert retry["reason"] == "Retry in 0.1s: ConnectionError('first try')"


@pytest.mark.rust_only  # Celery's one prefork pool runs every task; a busy pool blocks all
@pytest.mark.rust_native  # needs example_task's Rust handler
def test_rust_tasks_never_wait_behind_python_ones(celery_client, worker):
    worker(app="confapp", concurrency=1)
    busy = confapp.pid.apply_async((4,), queue="confq")
    time.sleep(1.0)  # the only pool process is busy now
    started = time.monotonic()
    quick = celery_client.send_task("app.workers.tasks.example_task", args=[2, 3], queue="confq")
    assert quick.get(timeout=10) == 5
    assert time.monotonic() - started < 1.5
    assert not busy.ready()


def test_python_task_options_apply_to_the_rust_handler(celery_client, worker):
    worker(app="confapp", concurrency=4)
    started = time.monotonic()
    rs = [confapp.example_task.apply_async((i, i), queue="confq") for i in range(5)]
    assert [r.get(timeout=20) for r in rs] == [0, 2, 4, 6, 8]
    assert time.monotonic() - started >= 1.8, "the Python declaration's rate_limit 2/s applies"


def test_python_backlog_stays_in_the_broker_under_prefetch(celery_client, worker, transport):
    """Python bodies wait for a pool process *before* being acked, so the prefetch
    window bounds what the worker holds: a backlog stays in the broker (and survives
    a crash), as with Celery."""
    worker(app="confapp", pool="prefork", concurrency=1, prefetch=1)
    rs = [confapp.pid.apply_async((0.2,), queue="confq") for _ in range(20)]
    time.sleep(1.5)
    assert transport.queue_length("confq") >= 10, "the worker drained the queue into memory"
    assert transport.unacked_count() <= 2
    assert len({r.get(timeout=30) for r in rs}) >= 1


def test_exhausted_retries_fire_the_failure_hooks(celery_client, worker, backend):
    worker(app="confapp", pool="prefork")
    r = confapp.always_retry.apply_async(queue="confq")
    with pytest.raises(ConnectionError, match="attempt 1"):
        r.get(timeout=20)
    wait_until(lambda: "task_failure" in [e["event"] for e in events(backend, r.id)],
               timeout=5, what="task_failure")
    names = [e["event"] for e in events(backend, r.id)]
    assert names.count("on_retry") == 1 and names.count("task_retry") == 1
    assert names.count("on_failure") == 1 and names.count("task_failure") == 1


def test_app_given_as_module_colon_attribute(celery_client, worker):
    w = worker(app="confapp:app")
    r = confapp.hooked.apply_async((9,), queue="confq")
    assert r.get(timeout=20)["x"] == 9
    assert "confapp.hooked" in w.log()


@pytest.mark.rust_only  # Celery's find_app doesn't look in a `celery_app` submodule
def test_package_with_celery_app_submodule(celery_client, worker):
    worker(app="pkgapp")
    r = celery_client.send_task("pkgapp.hello", args=["rust"])
    assert r.get(timeout=20) == "hello rust"


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_threads_and_solo_pools_run_python_in_the_worker_process(celery_client, worker, pool):
    w = worker(app="confapp", pool=pool, extra_args=["-P", pool])
    assert confapp.pid.apply_async(queue="confq").get(timeout=20) == w.proc.pid
    if w.kind != "python":  # Celery's threads/solo pools don't enforce time limits; ours do
        assert confapp.soft.apply_async((10,), queue="confq").get(timeout=20) == (
            "caught soft limit")


def test_max_memory_per_child_recycles(celery_client, worker):
    # 150 MiB limit, well above a fresh pool process (~60 MiB for a debug
    # build, ~45 MiB for Celery's): one that grew by 200 MiB is replaced
    # after its task.
    worker(app="confapp", pool="prefork", concurrency=1,
           extra_args=["--max-memory-per-child", str(150 * 1024)])
    before = confapp.grow.apply_async((0,), queue="confq").get(timeout=20)
    same = confapp.grow.apply_async((0,), queue="confq").get(timeout=20)
    assert same == before, "a small process is kept"
    grown = confapp.grow.apply_async((200,), queue="confq").get(timeout=20)
    assert grown == before
    after = confapp.grow.apply_async((0,), queue="confq").get(timeout=20)
    assert after != grown, "the process over --max-memory-per-child was recycled"
