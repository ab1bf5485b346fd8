"""Shared helpers for the interop suite: private redis-server processes, worker
processes (our Rust binary or a real Python ``celery worker``), log parsing, polling.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, List, Optional

import redis

ROOT = Path(__file__).resolve().parent.parent
PYTHON_DIR = ROOT / "python"
INTEROP_DIR = ROOT / "interop"
INGEST_FIXTURES = ROOT / "tests" / "fixtures" / "ingest"

#: "rust" (default): run our binary; "python": run a real `celery worker` instead,
#: to prove the suite checks genuine Celery behaviour.
WORKER_KIND = os.environ.get("INTEROP_WORKER", "rust").strip().lower() or "rust"
# rust-python: our binary, but every task a Python body in its prefork pool
# (-A pyworker_app, Rust-native tasks switched off) — the suite then checks
# our execution of Python tasks against the same expectations.
if WORKER_KIND not in ("rust", "python", "rust-python"):
    raise RuntimeError(
        f"INTEROP_WORKER must be 'rust', 'python' or 'rust-python', not {WORKER_KIND!r}")

SUCCEEDED_RE = re.compile(r"Task (\S+)\[([0-9a-fA-F-]{36})\] succeeded in ")
RECEIVED_RE = re.compile(r"Task (\S+)\[([0-9a-fA-F-]{36})\] received")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05,
               what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; return that value.
    Raises AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # e.g. redis down for a moment
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


# --------------------------------------------------------------------------- redis


class RedisServer:
    """A private redis-server on 127.0.0.1:<port>, data dir ``workdir``, no unix socket."""

    def __init__(self, workdir: Path, port: Optional[int] = None, persistent: bool = False):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persistent = persistent
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.workdir / f"redis-{self.port}.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def args(self) -> List[str]:
        exe = shutil.which("redis-server")
        if not exe:
            raise RuntimeError("redis-server not found on PATH (apt-get install redis-server)")
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.workdir), "--daemonize", "no", "--save", "",
                "--protected-mode", "no", "--logfile", str(self.log_path)]
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        return args

    def start(self, timeout: float = 10.0) -> "RedisServer":
        self.proc = subprocess.Popen(self.args(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            def up():
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited: {self.log_tail()}")
                return client.ping()
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if up():
                        break
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on {self.port} did not start: {self.log_tail()}")
                time.sleep(0.05)
        finally:
            client.close()
        return self

    def shutdown_via_cli(self) -> None:
        """`redis-cli -p PORT shutdown`, then wait for the process to exit."""
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db)


# --------------------------------------------------------------------------- workers


def rust_binary_path() -> Path:
    return Path(os.environ.get("RCW_BIN") or ROOT / "target" / "debug" / "rust-celery-worker")


def worker_env(broker_url: str, backend_url: str, extra: Optional[dict] = None) -> dict:
    env = dict(os.environ)
    paths = [str(PYTHON_DIR), str(INTEROP_DIR)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env["CELERY_BROKER_URL"] = broker_url
    env["CELERY_RESULT_BACKEND"] = backend_url
    # Our worker imports the -A app in its embedded interpreter: point it at
    # the venv that has celery, as an activated venv would.
    if sys.prefix != sys.base_prefix:
        env.setdefault("VIRTUAL_ENV", sys.prefix)
    env.pop("RCW_PY_SETTINGS", None)
    if extra:
        env.update(extra)
    return env


class WorkerProcess:
    """One running worker (ours or Celery's) with its log file."""

    def __init__(self, kind: str, argv: List[str], env: dict, cwd: Path, log_path: Path,
                 name: str):
        self.kind = kind
        self.argv = argv
        self.name = name
        self.log_path = log_path
        self._log_fh = open(log_path, "ab")
        self._log_fh.write(f"$ {' '.join(argv)}\n".encode())
        self._log_fh.flush()
        self.proc = subprocess.Popen(argv, env=env, cwd=str(cwd), stdin=subprocess.DEVNULL,
                                     stdout=self._log_fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def node(self) -> str:
        """Full node name (``-n NAME@%h``), the key of its remote-control replies."""
        return node_name(self.name)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, n: int = 4000) -> str:
        return self.log()[-n:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for_log(self, needle, timeout: float = 30.0, what: Optional[str] = None):
        """Wait until the log contains ``needle`` (str, or compiled regex → match)."""
        def found():
            text = self.log()
            if isinstance(needle, str):
                return needle in text
            return needle.search(text)
        deadline = time.monotonic() + timeout
        while True:
            hit = found()
            if hit:
                return hit
            if not self.alive():
                hit = found()
                if hit:
                    return hit
                raise AssertionError(
                    f"worker {self.name} exited (rc={self.proc.returncode}) before "
                    f"{what or needle!r} appeared; log tail:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what or needle!r} in the log of "
                    f"worker {self.name}; log tail:\n{self.log_tail()}")
            time.sleep(0.05)

    def wait_ready(self, timeout: float = 30.0) -> None:
        self.wait_for_log(re.compile(r"\bready\."), timeout=timeout, what="ready.")

    def succeeded_ids(self) -> List[str]:
        return [m.group(2) for m in SUCCEEDED_RE.finditer(self.log())]

    def received_ids(self) -> List[str]:
        return [m.group(2) for m in RECEIVED_RE.finditer(self.log())]

    def send_signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def kill9(self) -> None:
        """SIGKILL the worker and everything in its process group (prefork children)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        """Warm shutdown (SIGTERM); SIGKILL the process group if it does not exit."""
        if self.alive():
            self.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        # Children (e.g. prefork pool) left behind by a crash or a killed parent.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if not self._log_fh.closed:
            self._log_fh.close()
        return self.proc.returncode


def worker_argv(kind: str, *, broker_url: str, backend_url: str, name: str,
                queues: Optional[Iterable[str]] = None, concurrency: int = 2,
                prefetch: Optional[int] = None, loglevel: str = "info",
                settings: Optional[dict] = None, pool: str = "threads",
                extra_args: Iterable[str] = (), app: Optional[str] = None,
                events: bool = False, heartbeat: Optional[bool] = None,
                mingle: bool = False) -> List[str]:
    """Command line of a worker of ``kind``.

    ``events=True`` adds ``-E`` (task events) and, unless ``heartbeat=False``, turns
    worker heartbeats on. ``heartbeat``: None = the kind's default (Celery's worker
    gets ``--without-heartbeat``; ours its own default), True = heartbeats on (no
    ``--without-heartbeat``), False = ``--without-heartbeat`` for both kinds.
    ``mingle=True`` lets Celery's worker mingle at start (ours always does, unless
    ``--without-mingle`` is in ``extra_args``).
    """
    if heartbeat is None and events:
        heartbeat = True
    if kind in ("rust", "rust-python"):
        default_app = "app.workers" if kind == "rust" else "pyworker_app"
        # app="" starts our worker without any Python app (Rust tasks only).
        app_args = [] if app == "" else ["-A", app or default_app]
        argv = [str(rust_binary_path()), *app_args, "-b", broker_url,
                "--result-backend", backend_url, "-l", loglevel, "-n", f"{name}@%h",
                "-c", str(concurrency)]
        if queues:
            argv += ["-Q", ",".join(queues)]
        if prefetch is not None:
            argv += ["--prefetch-multiplier", str(prefetch)]
        for key, value in (settings or {}).items():
            argv += ["--setting", f"{key}={json.dumps(value)}"]
        if events:
            argv += ["-E"]
        if heartbeat is False:
            argv += ["--without-heartbeat"]
    else:
        argv = [sys.executable, "-m", "celery", "-A", app or "pyworker_app", "worker",
                "-P", pool, "-c", str(concurrency), "-l", loglevel, "-n", f"{name}@%h",
                "--without-gossip"] + ([] if mingle else ["--without-mingle"])
        if not heartbeat:
            argv += ["--without-heartbeat"]
        if events:
            argv += ["-E"]
        if queues:
            argv += ["-Q", ",".join(queues)]
        if prefetch is not None:
            argv += ["--prefetch-multiplier", str(prefetch)]
    return argv + list(extra_args)


# --------------------------------------------------------------------------- messages


def capture_envelope(celery_client, broker: redis.Redis, task_name: str, args=(), kwargs=None,
                     **options) -> dict:
    """Publish a task with the real Celery producer to a throw-away queue nobody
    consumes and pop the raw kombu envelope back (as a dict)."""
    queue = f"capture-{uuid.uuid4()}"
    celery_client.send_task(task_name, args=list(args), kwargs=kwargs or {}, queue=queue,
                            **options)
    raw = broker.rpop(queue)
    assert raw is not None, "producer did not LPUSH the envelope"
    broker.delete(f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    return json.loads(raw)


def set_body(envelope: dict, body: bytes, content_type: Optional[str] = None,
             content_encoding: Optional[str] = None) -> dict:
    envelope["body"] = base64.b64encode(body).decode()
    envelope["properties"]["body_encoding"] = "base64"
    if content_type is not None:
        envelope["content-type"] = content_type
    if content_encoding is not None:
        envelope["content-encoding"] = content_encoding
    return envelope


def reidentify(envelope: dict, task_id: Optional[str] = None) -> str:
    """Give a captured envelope a fresh task id and delivery tag; returns the id."""
    task_id = task_id or str(uuid.uuid4())
    envelope["headers"]["id"] = task_id
    envelope["headers"]["root_id"] = task_id
    envelope["properties"]["correlation_id"] = task_id
    envelope["properties"]["delivery_tag"] = str(uuid.uuid4())
    return task_id


def result_meta(backend: redis.Redis, task_id: str) -> Optional[dict]:
    raw = backend.get(f"celery-task-meta-{task_id}")
    return None if raw is None else json.loads(raw)


class MetaRecorder:
    """Records every result meta PUBLISHed on ``celery-task-meta-<id>`` for the given
    task ids (subscribe *before* sending). ``states(id)`` → list of statuses in order."""

    def __init__(self, backend: redis.Redis, task_ids: Iterable[str]):
        import threading
        self.task_ids = list(task_ids)
        self._pubsub = backend.pubsub()
        self._pubsub.subscribe(*[f"celery-task-meta-{t}" for t in self.task_ids])
        self._lock = threading.Lock()
        self._metas: dict = {t: [] for t in self.task_ids}
        self._stop = threading.Event()
        # Wait for the subscriptions to be confirmed before anything is published.
        confirmed = 0
        deadline = time.monotonic() + 5
        while confirmed < len(self.task_ids) and time.monotonic() < deadline:
            msg = self._pubsub.get_message(timeout=0.5)
            if msg and msg["type"] == "subscribe":
                confirmed += 1
        if confirmed < len(self.task_ids):
            raise RuntimeError("pub/sub subscriptions not confirmed")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self._pubsub.get_message(timeout=0.1)
            except Exception:
                return
            if msg and msg["type"] == "message":
                channel = msg["channel"].decode()
                task_id = channel[len("celery-task-meta-"):]
                with self._lock:
                    self._metas.setdefault(task_id, []).append(json.loads(msg["data"]))

    def metas(self, task_id: str) -> List[dict]:
        with self._lock:
            return list(self._metas.get(task_id, []))

    def states(self, task_id: str) -> List[str]:
        return [m["status"] for m in self.metas(task_id)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        try:
            self._pubsub.close()
        except Exception:
            pass


def log_count(worker_or_text, needle: str) -> int:
    """Occurrences of ``needle`` in a worker's log (or in a text)."""
    text = worker_or_text if isinstance(worker_or_text, str) else worker_or_text.log()
    return text.count(needle)


# --------------------------------------------------------------------------- pidbox / events


def node_name(name: str) -> str:
    """The full node name a worker started with ``-n NAME@%h`` gets."""
    return f"{name}@{socket.gethostname()}"


def wait_for_pidbox(app, node: str, timeout: float = 15.0) -> list:
    """Ping ``node`` until it answers (returns the reply list).

    "ready." is logged before the worker's event loop subscribes to the broadcast
    (pidbox) fanout, and Redis drops fanout messages nobody is subscribed to, so
    a control command sent the instant a worker is ready can go unanswered."""
    return wait_until(lambda: app.control.ping(destination=[node], timeout=0.5),
                      timeout=timeout, interval=0.1, what=f"{node} to answer ping")


class EventRecorder:
    """Records every event on the ``celeryev`` exchange (an ``app.events.Receiver``
    in a thread). Start it *before* the worker: Redis fanout messages published
    while nobody is subscribed are lost. ``start()`` returns once a probe event
    sent by this process has come back, i.e. once the receiver is subscribed."""

    def __init__(self, app):
        import threading
        self.app = app
        self._lock = threading.Lock()
        self._events: List[dict] = []
        self._receiver = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._probe = f"probe-{uuid.uuid4().hex[:8]}"

    def _on_event(self, event: dict) -> None:
        with self._lock:
            self._events.append(dict(event))

    def _run(self) -> None:
        try:
            with self.app.connection_for_read() as conn:
                self._receiver = self.app.events.Receiver(conn, handlers={"*": self._on_event})
                self._receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:  # noqa: BLE001 — surfaced by events()
            if not (self._receiver is not None and self._receiver.should_stop):
                self._error = exc

    def start(self, timeout: float = 10.0) -> "EventRecorder":
        self._thread.start()
        deadline = time.monotonic() + timeout
        with self.app.connection_for_write() as conn:
            dispatcher = self.app.events.Dispatcher(conn)
            while True:
                dispatcher.send("probe-subscribed", probe=self._probe)
                if any(e.get("probe") == self._probe for e in self.events()):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"event receiver did not subscribe: {self._error!r}")
                time.sleep(0.1)
            dispatcher.close()
        return self

    def events(self, type_: Optional[str] = None, hostname: Optional[str] = None,
               **fields) -> List[dict]:
        if self._error is not None:
            raise AssertionError(f"event receiver failed: {self._error!r}")
        with self._lock:
            out = list(self._events)
        if type_ is not None:
            out = [e for e in out if e.get("type") == type_]
        if hostname is not None:
            out = [e for e in out if e.get("hostname") == hostname]
        return [e for e in out if all(e.get(k) == v for k, v in fields.items())]

    def wait_for(self, type_: str, timeout: float = 15.0, hostname: Optional[str] = None,
                 **fields) -> dict:
        """The first event of ``type_`` (matching ``hostname`` and ``fields``)."""
        found = wait_until(lambda: self.events(type_, hostname, **fields), timeout=timeout,
                           what=f"event {type_} {fields or ''} from {hostname or 'any host'}")
        return found[0]

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=5)
