"""Fixtures of the interop suite.

* A private ``redis-server`` per session on a free port (no persistence, no unix
  socket, data dir in a tmp dir), FLUSHALL before every test. The broker is db 0
  and the result backend db 1 of that server, so a worker that mixes them up fails.
* ``INTEROP_BROKER=amqp``: the broker is RabbitMQ instead (:class:`helpers.RabbitMQ`:
  the one at 127.0.0.1:5672, or a private ``rabbitmq-server`` with
  ``INTEROP_RABBITMQ=private`` or when none runs), in a vhost of the session's own;
  results stay on the private Redis (db 1). Before every test the queues and
  exchanges the previous one left are deleted (``RabbitMQ.reset``).
* ``transport``: the broker-neutral view of the broker's queues (lengths, unacked,
  peek, raw publish); ``broker`` is the raw Redis broker client (db 0), for tests
  marked ``redis_only``.
* ``celery_client``: the example app ``app.workers.celery_app`` bound to that broker
  (``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND`` are set before it is imported).
* ``worker``: a factory starting a worker and waiting for ``ready.`` in its log:
  our binary (default; built with ``cargo build`` unless ``RCW_BIN`` names one) or,
  with ``INTEROP_WORKER=python``, a real ``celery worker -P threads`` running the same
  app plus the ``rcw.testing.*`` twins of ``pyworker_tasks.py``. Workers are stopped
  with SIGTERM at teardown (SIGKILL after 30 s).
* ``event_recorder``: every event on the ``celeryev`` exchange (worker-*, task-*),
  subscribed before the test starts its workers.
* Tests marked ``rust_only`` check behaviour where Celery's own worker legitimately
  differs; they are skipped with ``INTEROP_WORKER=python``. ``redis_only`` /
  ``amqp_only`` tests need that broker; skipped on the other.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

sys.path[:0] = [p for p in (str(Path(__file__).resolve().parent.parent / "python"),
                            str(Path(__file__).resolve().parent)) if p not in sys.path]

import helpers  # noqa: E402
from helpers import (BROKER_KIND, ROOT, WORKER_KIND, RabbitMQ, RedisServer,  # noqa: E402
                     WorkerProcess, free_port, rust_binary_path, worker_argv, worker_env)

REDIS_PORT = free_port()
#: amqp mode: the session's RabbitMQ (ports, node and vhost decided now, started by
#: the ``amqp_server`` fixture).
RABBIT = RabbitMQ() if BROKER_KIND == "amqp" else None
BROKER_URL = RABBIT.url if RABBIT else f"redis://127.0.0.1:{REDIS_PORT}/0"
BACKEND_URL = f"redis://127.0.0.1:{REDIS_PORT}/1"
if RABBIT:
    helpers.forget_kombu_declarations()  # install the resettable declaration cache

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
    config.addinivalue_line(
        "markers",
        "redis_only(reason): needs Redis as the broker (its internals, or restarts of "
        "a broker of the test's own); skipped when INTEROP_BROKER=amqp")
    config.addinivalue_line(
        "markers",
        "amqp_only(reason): the RabbitMQ variant of a redis_only test; skipped unless "
        "INTEROP_BROKER=amqp")


def _broker_skip(item, marker: str):
    """Skip for a ``redis_only`` / ``amqp_only`` test, with the marker's own reason."""
    mark = item.get_closest_marker(marker)
    why = (mark.args[0] if mark.args else mark.kwargs.get("reason")) or "needs that broker"
    other = "amqp" if marker == "redis_only" else "redis"
    return pytest.mark.skip(reason=f"{marker} (broker is {other}): {why}")


def pytest_collection_modifyitems(config, items):
    wrong_broker = "redis_only" if BROKER_KIND == "amqp" else "amqp_only"
    for item in items:
        if wrong_broker in item.keywords:
            item.add_marker(_broker_skip(item, wrong_broker))
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
    broker = (f"amqp, vhost {RABBIT.vhost} on the {RABBIT.where}" if RABBIT
              else f"redis, private redis-server port {REDIS_PORT} db 0")
    return (f"interop worker: {WORKER_KIND} ({where}); broker: {broker}; "
            f"results: private redis port {REDIS_PORT} db 1")


def pytest_terminal_summary(terminalreporter):
    if RABBIT and RABBIT.resets:
        n, total = len(RABBIT.resets), sum(RABBIT.resets)
        terminalreporter.write_line(
            f"amqp isolation: {n} resets, {1000 * total / n:.1f} ms each on average "
            f"(max {1000 * max(RABBIT.resets):.0f} ms), {RABBIT.deleted} deletes")


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
    """Raw client on the Redis broker database (db 0): Redis internals, so only for
    tests marked ``redis_only``; broker-neutral tests use ``transport``."""
    if RABBIT:
        pytest.fail("the `broker` fixture is the Redis broker (db 0); with "
                    "INTEROP_BROKER=amqp use `transport`, or mark the test redis_only",
                    pytrace=False)
    client = redis_server.client(0)
    yield client
    client.close()


@pytest.fixture(scope="session")
def amqp_server():
    """The session's RabbitMQ with its vhost (amqp mode only); deleted at the end."""
    if RABBIT is None:
        pytest.skip("needs INTEROP_BROKER=amqp")
    RABBIT.start()
    yield RABBIT
    RABBIT.stop()


@pytest.fixture(scope="session")
def broker_server(request, redis_server):
    """The session broker's server: the private Redis, or the RabbitMQ (amqp mode)."""
    return request.getfixturevalue("amqp_server") if RABBIT else redis_server


@pytest.fixture(scope="session")
def urls(broker_server):
    """``(broker_url, backend_url)`` of the session, its servers up."""
    return BROKER_URL, BACKEND_URL


@pytest.fixture
def transport(broker_server, redis_server):
    """Broker-neutral view of the session broker's queues
    (:class:`helpers.RedisTransport` / :class:`helpers.AmqpTransport`)."""
    view = (helpers.AmqpTransport(broker_server) if RABBIT
            else helpers.RedisTransport(redis_server.client(0), redis_server.port))
    yield view
    view.close()


@pytest.fixture
def side_redis(redis_server):
    """Raw client on the Redis where the interop apps keep their own records
    (``INTEROP_SIDE_REDIS``: the broker's db 0, or db 1 when the broker is RabbitMQ)."""
    client = redis.Redis.from_url(helpers.side_redis_url(BROKER_URL, BACKEND_URL))
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
    """FLUSHALL before each test that uses the session Redis; in amqp mode also
    delete what the previous test left in the vhost (``RabbitMQ.reset``)."""
    if "redis_server" in request.fixturenames or "celery_client" in request.fixturenames:
        server = request.getfixturevalue("redis_server")
        client = server.client(0)
        client.flushall()
        client.close()
        if RABBIT:
            request.getfixturevalue("amqp_server").reset()
    yield


# --------------------------------------------------------------------------- client


@pytest.fixture(scope="session")
def celery_client(broker_server, redis_server):
    """The example app as a producer/client, bound to the session broker."""
    from app.workers.celery_app import celery_app
    from app.workers import tasks  # noqa: F401  (registers tasks; IngestionError importable)

    assert celery_app.conf.broker_url == BROKER_URL, (
        "app.workers.celery_app was imported before conftest set CELERY_BROKER_URL")
    assert celery_app.conf.result_backend == BACKEND_URL
    if RABBIT:
        # Publisher confirms: a message is in its queue when send_task returns (as
        # after Redis' LPUSH), so a test may count it at once from another connection.
        celery_app.conf.broker_transport_options = {
            **(celery_app.conf.broker_transport_options or {}), "confirm_publish": True}
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
    name = f"q-{uuid.uuid4().hex[:12]}"
    if RABBIT:
        RABBIT.forget([name])
    return name


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
def worker(request, tmp_path, broker_server, redis_server):
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
        if RABBIT and not broker_url:
            RABBIT.forget(queues or ())
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
