"""Flower (``celery flower``) monitoring our worker: its inspect-based worker view
(stats, registered tasks, active queues) and its event-based task view.

Skipped when flower is not installed (``make venv`` installs it).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

import helpers
from helpers import wait_for_pidbox, wait_until

GET_TIMEOUT = 20


class Flower:
    def __init__(self, client, log_path):
        self.port = helpers.free_port()
        self.log_path = log_path
        env = helpers.worker_env(client.conf.broker_url, client.conf.result_backend,
                                 {"FLOWER_UNAUTHENTICATED_API": "true"})
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "app.workers.celery_app", "flower",
             f"--port={self.port}", "--address=127.0.0.1"],
            cwd=str(helpers.PYTHON_DIR), env=env, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def get(self, path):
        if self.proc.poll() is not None:
            raise AssertionError(f"flower exited (rc={self.proc.returncode}):\n{self.log_tail()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            assert r.status == 200
            return json.loads(r.read())

    def wait_up(self, timeout=30.0):
        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"flower exited (rc={self.proc.returncode}):\n"
                                     f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthcheck",
                                            timeout=5) as r:
                    return r.status == 200
            except (urllib.error.URLError, ConnectionError):
                return False
        deadline = time.monotonic() + timeout
        while not up():
            if time.monotonic() > deadline:
                raise AssertionError(f"flower did not listen within {timeout}s:\n"
                                     f"{self.log_tail()}")
            time.sleep(0.3)

    def post(self, path, **fields):
        data = urllib.parse.urlencode(fields).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     method="POST")
        with urllib.request.urlopen(req, timeout=15) as r:
            assert r.status == 200
            return json.loads(r.read())

    def log_tail(self, n=3000):
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture
def flower(celery_client, tmp_path):
    pytest.importorskip("flower", reason="flower is not installed")
    proc = Flower(celery_client, tmp_path / "flower.log")
    try:
        proc.wait_up()
        yield proc
    finally:
        proc.stop()
        print(f"--- flower log {proc.log_path}\n{proc.log_tail()}")


@pytest.mark.timeout(120)
def test_flower_shows_worker_and_tasks(celery_client, worker, flower, transport):
    w = worker(events=True, concurrency=2)
    wait_for_pidbox(celery_client, w.node)

    def worker_view():
        workers = flower.get("/api/workers?refresh=1")
        info = workers.get(w.node) or {}
        if info.get("stats") and info.get("registered") and info.get("active_queues"):
            return info
        return None
    info = wait_until(worker_view, timeout=40, interval=1.0, what="flower lists the worker")
    assert info["stats"]["pid"] == w.pid
    assert info["stats"]["pool"]["max-concurrency"] == 2
    assert info["stats"]["broker"]["transport"] == transport.kombu_transport
    assert "rcw.testing.echo" in info["registered"]
    assert "app.workers.tasks.example_task" in info["registered"]
    assert [q["name"] for q in info["active_queues"]] == ["celery"]

    ok = celery_client.send_task("rcw.testing.echo", args=[{"a": 1}])
    assert ok.get(timeout=GET_TIMEOUT) == {"a": 1}
    bad = celery_client.send_task("rcw.testing.fail", args=["flowery"])
    with pytest.raises(ValueError):
        bad.get(timeout=GET_TIMEOUT)

    def task_view():
        tasks = flower.get("/api/tasks")
        if (tasks.get(ok.id, {}).get("state") == "SUCCESS"
                and tasks.get(bad.id, {}).get("state") == "FAILURE"):
            return tasks
        return None
    tasks = wait_until(task_view, timeout=20, interval=0.5, what="flower sees both tasks")
    done = tasks[ok.id]
    assert done["name"] == "rcw.testing.echo"
    assert done["worker"] == w.node
    assert done["result"] == "{'a': 1}"
    assert done["args"] == "[{'a': 1}]"
    assert isinstance(done["runtime"], float) and done["runtime"] >= 0
    assert done["received"] <= done["started"] <= done["succeeded"]
    failed = tasks[bad.id]
    assert failed["exception"] == "ValueError('flowery')"
    assert "ValueError: flowery" in failed["traceback"]

    single = flower.get(f"/api/task/info/{ok.id}")
    assert single["state"] == "SUCCESS"
    assert single["uuid"] == ok.id
    assert single["result"] == "{'a': 1}"
    # Flower's worker list (without refresh) keeps the worker.
    assert w.node in flower.get("/api/workers")


@pytest.mark.timeout(120)
def test_flower_control_endpoints(celery_client, worker, flower, queue_name):
    """Flower's control endpoints are broadcasts; it relays our worker's reply text."""
    w = worker(events=True, concurrency=1, pool="prefork")
    wait_for_pidbox(celery_client, w.node)
    wait_until(lambda: w.node in flower.get("/api/workers?refresh=1"), timeout=40,
               interval=1.0, what="flower lists the worker")

    # Flower checks the task name against its own app (the example app).
    reply = flower.post("/api/task/rate-limit/app.workers.tasks.example_task",
                        workername=w.node, ratelimit="5/s")
    assert reply == {"message": "new rate limit set successfully"}
    reply = flower.post("/api/task/timeout/app.workers.tasks.example_task",
                        workername=w.node, hard="30", soft="20")
    assert reply == {"message": "time limits set successfully"}
    reply = flower.post(f"/api/worker/queue/add-consumer/{w.node}", queue=queue_name)
    assert reply == {"message": f"add consumer {queue_name}"}
    extra = celery_client.send_task("rcw.testing.echo", args=["via flower"], queue=queue_name)
    assert extra.get(timeout=GET_TIMEOUT) == "via flower"

    res = celery_client.send_task("rcw.testing.async_sleep", args=[30])
    wait_until(lambda: flower.get("/api/tasks").get(res.id, {}).get("state") == "STARTED",
               timeout=15, interval=0.3, what="flower sees the task started")
    started = time.monotonic()
    reply = flower.post(f"/api/task/revoke/{res.id}", terminate="true")
    assert reply == {"message": f"Revoked '{res.id}'"}
    wait_until(lambda: res.state == "REVOKED", timeout=10, what="REVOKED after terminate")
    assert time.monotonic() - started < 10
    wait_until(lambda: flower.get("/api/tasks").get(res.id, {}).get("state") == "REVOKED",
               timeout=15, interval=0.3, what="flower sees the task revoked")
