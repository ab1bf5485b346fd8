"""Fixtures of the interop suite.

* A private ``redis-server`` per session on a free port (no persistence, no unix
  socket, data dir in a tmp dir), FLUSHALL before every test. The broker is db 0
  and the result backend db 1 of that server, so a worker that mixes them up fails.
* ``celery_client``: the example app ``app.workers.celery_app`` bound to that Redis
  (``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND`` are set before it is imported).
* ``worker``: a factory starting a worker and waiting for ``ready.`` in its log:
  our binary (default; built with ``cargo build`` unless ``RCW_BIN`` names one) or,
  with ``INTEROP_WORKER=python``, a real ``celery worker -P threads`` running the same
  app plus the ``rcw.testing.*`` twins of ``pyworker_tasks.py``. Workers are stopped
  with SIGTERM at teardown (SIGKILL after 30 s).
* ``event_recorder``: every event on the ``celeryev`` exchange (worker-*, task-*),
  subscribed before the test starts its workers.
* Tests marked ``rust_only`` check behaviour where Celery's own worker legitimately
  differs; they are skipped with ``INTEROP_WORKER=python``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

sys.path[:0] = [p for p in (str(Path(__file__).resolve().parent.parent / "python"),
                            str(Path(__file__).resolve().parent)) if p not in sys.path]

import helpers  # noqa: E402
from helpers import (ROOT, WORKER_KIND, RedisServer, WorkerProcess, free_port,  # noqa: E402
                     rust_binary_path, worker_argv, worker_env)

REDIS_PORT = free_port()
BROKER_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"
BACKEND_URL = f"redis://127.0.0.1:{REDIS_PORT}/1"

# Set before anything imports app.workers.celery_app (it reads them at import time).
os.environ["CELERY_BROKER_URL"] = BROKER_URL
os.environ["CELERY_RESULT_BACKEND"] = BACKEND_URL


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "rust_only: checks behaviour of rust-celery-worker that Celery's own worker "
        "legitimately lacks; skipped when INTEROP_WORKER=python")
    config.addinivalue_line(
        "markers",
        "rust_native: needs a task's Rust implementation (its Python twin differs); "
        "skipped when INTEROP_WORKER=rust-python")
    config.addinivalue_line(
        "markers",
        "one_mode: runs its own Python app, so both of our modes run the same thing; "
        "skipped when INTEROP_WORKER=rust-python to keep CI's second pass short")


def pytest_collection_modifyitems(config, items):
    if WORKER_KIND == "python":
        skip = pytest.mark.skip(reason="rust_only: the Python worker legitimately differs here")
        marker = "rust_only"
    elif WORKER_KIND == "rust-python":
        skip = pytest.mark.skip(reason="rust_native: needs the Rust implementation of the task")
        marker = "rust_native"
        once = pytest.mark.skip(reason="one_mode: same run as in rust mode")
        for item in items:
            if "one_mode" in item.keywords:
                item.add_marker(once)
    else:
        return
    for item in items:
        if marker in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    where = ("celery worker -P threads" if WORKER_KIND == "python"
             else str(rust_binary_path()))
    return f"interop worker: {WORKER_KIND} ({where}); private redis port {REDIS_PORT}"


# --------------------------------------------------------------------------- redis


@pytest.fixture(autouse=True)
def _client_app_is_current():
    """``@shared_task`` proxies bind to Celery's *current* app; a test that builds its
    own ``Celery(...)`` without ``set_as_current=False`` must not leak into the next."""
    from app.workers.celery_app import celery_app
    celery_app.set_current()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"), port=REDIS_PORT).start()
    yield server
    server.stop()


@pytest.fixture
def broker(redis_server):
    """Raw client on the broker database (db 0)."""
    client = redis_server.client(0)
    yield client
    client.close()


@pytest.fixture
def backend(redis_server):
    """Raw client on the result-backend database (db 1)."""
    client = redis_server.client(1)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _isolate(request):
    """FLUSHALL before each test that uses the session Redis."""
    if "redis_server" in request.fixturenames or "celery_client" in request.fixturenames:
        server = request.getfixturevalue("redis_server")
        client = server.client(0)
        client.flushall()
        client.close()
    yield


# --------------------------------------------------------------------------- client


@pytest.fixture(scope="session")
def celery_client(redis_server):
    """The example app as a producer/client, bound to the private Redis."""
    from app.workers.celery_app import celery_app
    from app.workers import tasks  # noqa: F401  (registers tasks; IngestionError importable)

    assert celery_app.conf.broker_url == BROKER_URL, (
        "app.workers.celery_app was imported before conftest set CELERY_BROKER_URL")
    assert celery_app.conf.result_backend == BACKEND_URL
    yield celery_app
    try:
        celery_app.close()
    except Exception:
        pass


@pytest.fixture
def event_recorder(celery_client):
    """A started :class:`helpers.EventRecorder` (subscribed to ``celeryev``); start
    workers *after* requesting it so their ``worker-online`` is seen."""
    recorder = helpers.EventRecorder(celery_client).start()
    yield recorder
    recorder.stop()


@pytest.fixture
def queue_name():
    return f"q-{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------- workers


@pytest.fixture(scope="session")
def rust_bin():
    """Path of our binary: ``RCW_BIN`` if set, else ``cargo build`` (incremental;
    a no-op when up to date) and ``target/debug/rust-celery-worker``."""
    if os.environ.get("RCW_BIN"):
        path = rust_binary_path()
        if not path.is_file():
            pytest.fail(f"RCW_BIN={path} does not exist")
        return path
    proc = subprocess.run(["cargo", "build", "--quiet"], cwd=str(ROOT),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        pytest.fail(f"cargo build failed:\n{proc.stdout[-6000:]}", pytrace=False)
    path = rust_binary_path()
    if not path.is_file():
        pytest.fail(f"cargo build succeeded but {path} is missing", pytrace=False)
    return path


@pytest.fixture
def worker(request, tmp_path, redis_server):
    """Factory: ``worker(name=..., queues=[...], concurrency=2, prefetch=None,
    settings={...}, kind=None, broker_url=None, backend_url=None, pool='threads',
    wait_ready=True, app=None, events=False, heartbeat=None)`` → a started, ready
    :class:`helpers.WorkerProcess`. ``app`` is the ``-A`` argument (default
    ``app.workers`` for ours, ``pyworker_app`` for Celery's). ``events=True`` adds
    ``-E`` and turns worker heartbeats on; ``heartbeat=True/False`` forces heartbeats
    on/off (``None``: Celery's worker runs ``--without-heartbeat``, ours its default);
    see :func:`helpers.worker_argv`.

    ``kind`` defaults to the suite's worker (``INTEROP_WORKER``); ``kind='python'``
    always gives a real Celery worker (used by the mixed-fleet test).
    ``settings`` become ``--setting NAME=<json>`` for our binary and the same conf
    values (env ``RCW_PY_SETTINGS``) for the Python worker.
    """
    started: list[WorkerProcess] = []
    counter = iter(range(1, 1000))

    def start(*, name=None, queues=None, concurrency=2, prefetch=None, settings=None,
              kind=None, broker_url=None, backend_url=None, pool="threads", loglevel="info",
              extra_args=(), env=None, wait_ready=True, ready_timeout=30.0, app=None,
              events=False, heartbeat=None, mingle=False):
        kind = kind or WORKER_KIND
        name = name or f"w{next(counter)}-{uuid.uuid4().hex[:6]}"
        broker_url = broker_url or BROKER_URL
        backend_url = backend_url or BACKEND_URL
        extra_env = dict(env or {})
        if kind in ("rust", "rust-python"):
            request.getfixturevalue("rust_bin")
            extra_env.setdefault("RUST_BACKTRACE", "1")
            if kind == "rust":
                extra_env.setdefault("RCW_TEST_TASKS", "1")
            else:
                extra_env.setdefault("RCW_NATIVE_TASKS", "0")
                import json
                extra_env["RCW_PY_SETTINGS"] = json.dumps(settings or {})
        else:
            import json
            extra_env["RCW_PY_SETTINGS"] = json.dumps(settings or {})
        argv = worker_argv(kind, broker_url=broker_url, backend_url=backend_url, name=name,
                           queues=queues, concurrency=concurrency, prefetch=prefetch,
                           loglevel=loglevel, settings=settings, pool=pool,
                           extra_args=extra_args, app=app, events=events, mingle=mingle,
                           heartbeat=heartbeat)
        envd = worker_env(broker_url, backend_url, extra_env)
        if kind == "python":
            envd["RCW_PY_SETTINGS"] = extra_env["RCW_PY_SETTINGS"]
        proc = WorkerProcess(kind, argv, envd, helpers.PYTHON_DIR,
                             tmp_path / f"worker-{name}.log", name)
        started.append(proc)
        if wait_ready:
            proc.wait_ready(ready_timeout)
        return proc

    yield start

    for proc in started:
        rc = proc.stop()
        print(f"--- worker {proc.name} ({proc.kind}) exit={rc} log={proc.log_path}")
        print(proc.log_tail(6000))
