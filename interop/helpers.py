"""Shared helpers for the interop suite: private redis-server processes, the session's
RabbitMQ (``INTEROP_BROKER=amqp``), broker-neutral views of the broker's queues
(:class:`RedisTransport` / :class:`AmqpTransport`), worker processes (our Rust binary or
a real Python ``celery worker``), log parsing, polling.
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
from typing import Callable, Iterable, List, Optional, Sequence

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

#: The session's broker: "redis" (default; the private redis-server, db 0) or "amqp"
#: (RabbitMQ, one vhost per session; results stay on the private Redis, db 1). The only
#: place that decides it: fixtures and the transports below read it from here.
BROKER_KIND = os.environ.get("INTEROP_BROKER", "redis").strip().lower() or "redis"
if BROKER_KIND not in ("redis", "amqp"):
    raise RuntimeError(f"INTEROP_BROKER must be 'redis' or 'amqp', not {BROKER_KIND!r}")

#: Which RabbitMQ an amqp session uses: "auto" (default: the one at 127.0.0.1:5672 if it
#: accepts guest/guest, else a private rabbitmq-server), "shared" or "private".
RABBITMQ_MODE = os.environ.get("INTEROP_RABBITMQ", "auto").strip().lower() or "auto"
if RABBITMQ_MODE not in ("auto", "shared", "private"):
    raise RuntimeError(
        f"INTEROP_RABBITMQ must be 'auto', 'shared' or 'private', not {RABBITMQ_MODE!r}")

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

    def __init__(self, workdir: Path, port: Optional[int] = None, persistent: bool = False,
                 extra_args: Sequence[str] = ()):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persistent = persistent
        self.extra_args = list(extra_args)
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
        return args + self.extra_args

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


# --------------------------------------------------------------------------- rabbitmq


def amqp_accepts(port: int, vhost: str = "/", timeout: float = 1.0) -> bool:
    """Whether 127.0.0.1:``port`` takes an AMQP login as guest/guest on ``vhost``."""
    import amqp
    conn = amqp.Connection(f"127.0.0.1:{port}", userid="guest", password="guest",
                           virtual_host=vhost, connect_timeout=timeout)
    try:
        conn.connect()
        return True
    except Exception:
        return False
    finally:
        try:
            conn.collect()
        except Exception:
            pass


class _DeclaredEntities:
    """Replaces ``kombu.Connection.declared_entities`` (kombu's "already declared"
    cache, one set per connection) with a per-connection set that
    :func:`forget_kombu_declarations` empties for every connection of this process.

    The per-test reset deletes the queues and exchanges a test made; a connection
    pooled by the session's client app would otherwise skip declaring them again, and
    RabbitMQ drops a message published to a queue that does not exist."""
    epoch = 0

    def __get__(self, conn, owner=None):
        if conn is None:
            return self
        slot = conn.__dict__.get("_interop_declared")
        if slot is None or slot[0] != _DeclaredEntities.epoch:
            slot = (_DeclaredEntities.epoch, set())
            conn.__dict__["_interop_declared"] = slot
        return slot[1]

    def __set__(self, conn, value):
        conn.__dict__["_interop_declared"] = (_DeclaredEntities.epoch, value)


def forget_kombu_declarations() -> None:
    import kombu.connection
    if not isinstance(kombu.connection.Connection.__dict__.get("declared_entities"),
                      _DeclaredEntities):
        kombu.connection.Connection.declared_entities = _DeclaredEntities()
    _DeclaredEntities.epoch += 1


class RabbitMQ:
    """The session's AMQP broker and its own vhost ``rcw-interop-<uuid>``.

    ``INTEROP_RABBITMQ`` picks the server (see :data:`RABBITMQ_MODE`): the RabbitMQ at
    127.0.0.1:5672 (administered with ``rabbitmqctl``), or a private
    ``rabbitmq-server`` on free ports with everything (mnesia, logs, pid file, config,
    an empty plugins file) in a tmp dir, stopped with ``rabbitmqctl -n <node> stop``.
    Ports and names are decided at construction (conftest needs the URL at import
    time); :meth:`start` starts the server if private, creates the vhost, grants guest
    and turns the vhost's firehose on; :meth:`stop` deletes the vhost.

    Isolation between tests (:meth:`reset`, the FLUSHALL of amqp mode): the firehose
    (``rabbitmqctl trace_on``) copies every message published in the vhost to
    ``amq.rabbitmq.trace`` with the queues it was routed to, so the admin connection
    knows every queue that received a message and every exchange published to;
    ``reset`` deletes them (plus the queue names the fixtures registered with
    :meth:`forget`) over AMQP, a few ms, where listing the vhost's queues with
    ``rabbitmqctl`` costs 0.5-1.4 s per test."""

    SHARED_PORT = 5672

    def __init__(self, mode: str = RABBITMQ_MODE):
        if mode == "auto":
            mode = "shared" if amqp_accepts(self.SHARED_PORT) else "private"
        self.private = mode == "private"
        tag = uuid.uuid4().hex
        self.vhost = f"rcw-interop-{uuid.UUID(tag)}"
        if self.private:
            self.port = free_port()
            self.dist_port = free_port()
            self.node: Optional[str] = f"rcw-interop-{tag[:12]}@localhost"
        else:
            self.port = self.SHARED_PORT
            self.dist_port = None
            self.node = None
        self.workdir: Optional[Path] = None
        self.proc: Optional[subprocess.Popen] = None
        self._admin = None            # amqp.Connection, main thread only
        self._ops = None              # its channel for deletes / gets / publishes
        self._trace_queue: Optional[str] = None
        self._routed: set = set()     # queues that received a message since the last reset
        self._exchanges: set = set()  # exchanges published to since the last reset
        self._named: set = set()      # queue names the fixtures registered (forget())
        self._sentinels: set = set()
        self.resets: List[float] = []  # seconds per reset (reported at the end)
        self.deleted = 0

    # ------------------------------------------------------------ plumbing

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{self.vhost}"

    @property
    def where(self) -> str:
        return (f"private rabbitmq-server {self.node} on port {self.port}" if self.private
                else f"RabbitMQ at 127.0.0.1:{self.port}")

    @staticmethod
    def _exe(name: str) -> str:
        found = shutil.which(name) or (f"/usr/sbin/{name}"
                                       if os.path.exists(f"/usr/sbin/{name}") else None)
        if not found:
            raise RuntimeError(f"{name} not found on PATH or in /usr/sbin "
                               "(apt-get install rabbitmq-server)")
        return found

    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """``rabbitmqctl [-n node] -q ARGS`` → stdout (0.5-1.4 s a call: Erlang boots)."""
        argv = [self._exe("rabbitmqctl")] + (["-n", self.node] if self.node else [])
        proc = subprocess.run(argv + ["-q", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({proc.returncode}): "
                               f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def log_tail(self, n: int = 3000) -> str:
        if self.workdir is None:
            return "(shared server: see its own log)"
        logs = sorted((self.workdir / "log").glob("*.log")) + [self.workdir / "stdout"]
        return "\n".join(p.read_text(errors="replace")[-n:] for p in logs if p.exists())

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 90.0) -> "RabbitMQ":
        if self.private:
            self._start_private(timeout)
        elif not amqp_accepts(self.port, timeout=3.0):
            raise RuntimeError(f"no RabbitMQ accepts guest/guest on 127.0.0.1:{self.port} "
                               "(INTEROP_RABBITMQ=private starts one of the session's own)")
        self.ctl("add_vhost", self.vhost)
        try:
            self.ctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
            self.ctl("trace_on", "-p", self.vhost)
            self._open_admin()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_private(self, timeout: float) -> None:
        import pwd
        import tempfile
        # Not under pytest's tmp dir: that is mode 0700, and the Debian wrapper
        # /usr/sbin/rabbitmq-server runs the server as the rabbitmq user (`su`).
        self.workdir = Path(tempfile.mkdtemp(prefix="rcw-interop-rabbitmq-"))
        for sub in ("mnesia", "log"):
            (self.workdir / sub).mkdir()
        (self.workdir / "enabled_plugins").write_text("")
        (self.workdir / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's
        (self.workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "disk_free_limit.absolute = 50MB\n")
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("rabbitmq")
            except KeyError:
                user = None
            if user is not None:
                for path in [self.workdir, *self.workdir.rglob("*")]:
                    os.chown(path, user.pw_uid, user.pw_gid)
        env = dict(os.environ,
                   RABBITMQ_NODENAME=self.node,
                   RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
                   RABBITMQ_NODE_PORT=str(self.port),
                   RABBITMQ_DIST_PORT=str(self.dist_port),
                   RABBITMQ_MNESIA_BASE=str(self.workdir / "mnesia"),
                   RABBITMQ_LOG_BASE=str(self.workdir / "log"),
                   RABBITMQ_PID_FILE=str(self.workdir / "rabbitmq.pid"),
                   RABBITMQ_ENABLED_PLUGINS_FILE=str(self.workdir / "enabled_plugins"),
                   RABBITMQ_CONFIG_FILE=str(self.workdir / "rabbitmq.conf"),
                   RABBITMQ_ADVANCED_CONFIG_FILE=str(self.workdir / "advanced.config"),
                   RABBITMQ_CONF_ENV_FILE=str(self.workdir / "rabbitmq-env.conf"),
                   RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=(
                       "-kernel inet_dist_use_interface {127,0,0,1}"))
        with open(self.workdir / "stdout", "ab") as out:
            self.proc = subprocess.Popen([self._exe("rabbitmq-server")], env=env,
                                         cwd=str(self.workdir), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not amqp_accepts(self.port, timeout=1.0):
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited ({self.proc.returncode}):\n"
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                self._stop_private()
                raise RuntimeError(f"rabbitmq-server did not accept AMQP on {self.port} "
                                   f"within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.3)

    def stop(self) -> None:
        self._close_admin()
        try:
            self.ctl("delete_vhost", self.vhost, check=False)
        finally:
            if self.private:
                self._stop_private()

    def _stop_private(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.ctl("stop", check=False)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    self.proc.wait(timeout=10)
            self.proc = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    # ------------------------------------------------------------ admin connection

    def connection(self):
        """A new py-amqp connection to the session's vhost (caller closes it)."""
        import amqp
        conn = amqp.Connection(f"127.0.0.1:{self.port}", userid="guest", password="guest",
                               virtual_host=self.vhost, connect_timeout=5)
        conn.connect()
        return conn

    def _open_admin(self) -> None:
        self._admin = self.connection()
        tracer = self._admin.channel()
        self._trace_queue, _, _ = tracer.queue_declare("", exclusive=True, auto_delete=True)
        tracer.queue_bind(self._trace_queue, "amq.rabbitmq.trace", "publish.#")
        tracer.basic_consume(self._trace_queue, callback=self._on_trace, no_ack=True)

    def _close_admin(self) -> None:
        if self._admin is not None:
            try:
                self._admin.close()
            except Exception:
                pass
            self._admin = self._ops = None

    def _on_trace(self, message) -> None:
        headers = message.headers or {}
        self._routed.update(headers.get("routed_queues") or ())
        exchange = headers.get("exchange_name") or ""
        if exchange and not exchange.startswith("amq."):
            self._exchanges.add(exchange)
        self._sentinels.update(k for k in headers.get("routing_keys") or ()
                               if k.startswith("interop-sentinel-"))

    def ops(self):
        """The admin connection's channel for deletes, gets and publishes (reopened after
        a channel error such as a passive declare of a missing queue)."""
        if self._ops is None or not self._ops.is_open:
            self._ops = self._admin.channel()
        return self._ops

    def channel(self):
        """A new channel on the admin connection (caller closes it)."""
        return self._admin.channel()

    def passive_declare(self, queue: str):
        """``queue.declare(passive)`` → (name, message_count, consumer_count), or None
        when the queue does not exist."""
        import amqp
        try:
            return self.ops().queue_declare(queue, passive=True)
        except amqp.exceptions.NotFound:
            self._ops = None  # RabbitMQ closed the channel
            return None

    def sync_trace(self, timeout: float = 10.0) -> None:
        """Wait until the firehose has delivered everything published so far: publish a
        message routed nowhere and wait for its trace."""
        import amqp
        key = f"interop-sentinel-{uuid.uuid4().hex}"
        self.ops().basic_publish(amqp.Message(b""), exchange="", routing_key=key)
        deadline = time.monotonic() + timeout
        while key not in self._sentinels:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("the firehose trace of the sentinel never arrived")
            try:
                self._admin.drain_events(timeout=min(left, 0.5))
            except socket.timeout:
                pass
        self._sentinels.clear()

    def forget(self, names: Iterable[str]) -> None:
        """Queue names the next :meth:`reset` deletes even if no message reached them."""
        self._named.update(n for n in names if n)

    def reset(self) -> None:
        """Delete every queue and exchange the previous test left (see the class doc)."""
        started = time.monotonic()
        self.sync_trace()
        queues = (self._routed | self._named | {"celery"}) - {self._trace_queue}
        exchanges = self._exchanges | (self._named | {"celery"})
        for name in sorted(queues):
            self._delete("queue", name)
        for name in sorted(exchanges):
            self._delete("exchange", name)
        self.deleted += len(queues) + len(exchanges)
        self._routed.clear()
        self._exchanges.clear()
        self._named.clear()
        forget_kombu_declarations()
        self.resets.append(time.monotonic() - started)

    def _delete(self, kind: str, name: str) -> None:
        import amqp
        try:
            if kind == "queue":
                self.ops().queue_delete(name)
            else:
                self.ops().exchange_delete(name)
        except amqp.exceptions.ChannelError:
            # e.g. RESOURCE_LOCKED: an exclusive queue of a live connection. The
            # channel is closed; ops() opens a new one.
            self._ops = None


# --------------------------------------------------------------------------- transports


class Waiting:
    """A message waiting in a queue, as :meth:`RedisTransport.peek` /
    :meth:`AmqpTransport.peek` see it."""

    def __init__(self, headers: dict, properties: dict, redelivered: bool, body: bytes):
        self.headers = headers
        self.properties = properties
        self.redelivered = redelivered
        self.body = body

    @property
    def task_id(self) -> Optional[str]:
        return self.headers.get("id")

    def __repr__(self) -> str:
        return (f"Waiting({self.headers.get('task')}[{self.task_id}], "
                f"redelivered={self.redelivered})")


class Transport:
    """The broker-neutral view of the session broker's queues (the ``transport``
    fixture): what tests may ask of either broker. ``kind``, ``scheme``,
    ``kombu_transport``, ``port`` and ``virtual_host`` are what a worker reports."""

    kind = scheme = kombu_transport = virtual_host = ""
    port = 0

    def unacked_count(self) -> int:
        """Messages delivered to a consumer and not acked yet (all queues)."""
        raise NotImplementedError

    def unacked_ids(self) -> Optional[List[str]]:
        """Task ids of the unacked messages; ``None`` where the broker cannot tell."""
        raise NotImplementedError

    def peek(self, queue: str = "celery") -> List[Waiting]:
        """The messages waiting in ``queue``, next to be delivered first; left in place."""
        raise NotImplementedError

    def holds_unacked(self, ids: Iterable[str]) -> bool:
        """The unacked messages are exactly ``ids`` (by id where the broker shows them,
        else by count)."""
        ids = sorted(ids)
        seen = self.unacked_ids()
        return sorted(seen) == ids if seen is not None else self.unacked_count() == len(ids)

    def waiting_tasks(self, queue: str) -> List[str]:
        """Task names of the messages waiting in ``queue``."""
        return [w.headers.get("task") for w in self.peek(queue)]

    def close(self) -> None:
        pass


class RedisTransport(Transport):
    """On Redis: kombu's virtual transport, a list per queue and the ``unacked`` hash
    of delivered messages."""

    kind = "redis"
    scheme = "redis"
    kombu_transport = "redis"

    def __init__(self, client: redis.Redis, port: int, db: int = 0):
        self.client = client
        self.port = port
        self.virtual_host = str(db)

    def queue_length(self, queue: str = "celery") -> int:
        """Messages waiting (not delivered) in ``queue``."""
        return self.client.llen(queue)

    def unacked_count(self) -> int:
        return self.client.hlen("unacked")

    def unacked_ids(self) -> Optional[List[str]]:
        return [json.loads(v)[0]["headers"]["id"] for v in self.client.hvals("unacked")]

    def nothing_unacked(self) -> bool:
        """No unacked message, and no trace of one left in kombu's bookkeeping (the
        ``unacked`` hash and its ``unacked_index``)."""
        return self.unacked_count() == 0 and self.client.zcard("unacked_index") == 0

    def peek(self, queue: str = "celery") -> List[Waiting]:
        out = []
        for raw in reversed(self.client.lrange(queue, 0, -1)):
            env = json.loads(raw)
            props = env.get("properties", {})
            redelivered = (env.get("headers", {}).get("redelivered") is True
                           and props.get("delivery_info", {}).get("redelivered") is True)
            out.append(Waiting(env.get("headers", {}), props, redelivered, raw))
        return out

    def surviving_ids(self, queue: str = "celery") -> List[str]:
        """After a worker's crash: ids of the messages a next worker will get (waiting in
        ``queue``, or unacked, to be restored after the visibility timeout)."""
        return sorted(self.unacked_ids() + [w.task_id for w in self.peek(queue)])

    def push_raw(self, queue: str, data: bytes) -> None:
        """Put ``data`` on ``queue`` as the whole message (no envelope around it)."""
        self.client.lpush(queue, data)

    def capture_envelope(self, celery_client, task_name: str, args=(), kwargs=None,
                         **options) -> dict:
        return capture_envelope(celery_client, self.client, task_name, args, kwargs,
                                **options)

    def push_envelope(self, queue: str, envelope: dict) -> None:
        """Publish a (captured, edited) kombu envelope to ``queue`` as it stands."""
        self.client.lpush(queue, json.dumps(envelope))

    def bound(self, exchange: str, routing_key: str, queue: str) -> bool:
        """``queue`` is bound to ``exchange`` with ``routing_key``."""
        member = f"{routing_key}\x06\x16\x06\x16{queue}".encode()
        return member in self.client.smembers(f"_kombu.binding.{exchange}")

    def close(self) -> None:
        self.client.close()


class AmqpTransport(Transport):
    """On RabbitMQ: py-amqp on the session's admin connection; unacked counts and
    bindings through ``rabbitmqctl`` (0.5-1.4 s a call), since AMQP does not show them."""

    kind = "amqp"
    scheme = "amqp"
    kombu_transport = "amqp"

    def __init__(self, server: RabbitMQ):
        self.server = server
        self.port = server.port
        self.virtual_host = server.vhost

    def queue_length(self, queue: str = "celery") -> int:
        ok = self.server.passive_declare(queue)
        return 0 if ok is None else ok.message_count

    def consumer_count(self, queue: str = "celery") -> int:
        ok = self.server.passive_declare(queue)
        return 0 if ok is None else ok.consumer_count

    def unacked_count(self) -> int:
        out = self.server.ctl("list_queues", "-p", self.server.vhost,
                              "messages_unacknowledged", "--no-table-headers")
        return sum(int(x) for x in out.split())

    def unacked_ids(self) -> Optional[List[str]]:
        return None  # RabbitMQ does not show the messages a consumer holds

    def nothing_unacked(self) -> bool:
        return self.unacked_count() == 0

    def peek(self, queue: str = "celery") -> List[Waiting]:
        if self.server.passive_declare(queue) is None:
            return []
        ch = self.server.channel()
        out, tags = [], []
        try:
            while True:
                msg = ch.basic_get(queue, no_ack=False)
                if msg is None:
                    break
                tags.append(msg.delivery_tag)
                out.append(Waiting(dict(msg.headers or {}), dict(msg.properties),
                                   bool(msg.delivery_info.get("redelivered")), msg.body))
            for tag in tags:  # back where they were, in order
                ch.basic_reject(tag, requeue=True)
        finally:
            ch.close()
        return out

    def surviving_ids(self, queue: str = "celery") -> List[str]:
        # A dead worker's unacked messages return to the queue once RabbitMQ has
        # closed its connection (no visibility timeout).
        wait_until(lambda: self.consumer_count(queue) == 0, timeout=10,
                   what=f"no consumer left on {queue}")
        return sorted(w.task_id for w in self.peek(queue))

    def _declare(self, queue: str) -> None:
        # As Celery declares a queue (durable, no arguments).
        self.server.ops().queue_declare(queue, durable=True, auto_delete=False)

    def push_raw(self, queue: str, data: bytes) -> None:
        import amqp
        self._declare(queue)
        self.server.ops().basic_publish(amqp.Message(data), exchange="", routing_key=queue)

    def capture_envelope(self, celery_client, task_name: str, args=(), kwargs=None,
                         **options) -> dict:
        """Publish with the real Celery producer to a throw-away queue and read the
        message back as the kombu envelope the Redis transport would have stored (body
        base64), so tests edit it the same way on both brokers."""
        queue = f"capture-{uuid.uuid4()}"
        celery_client.send_task(task_name, args=list(args), kwargs=kwargs or {},
                                queue=queue, **options)
        ops = self.server.ops()
        msg = wait_until(lambda: ops.basic_get(queue, no_ack=True), timeout=5,
                         what="the captured message")
        ops.queue_delete(queue)
        ops.exchange_delete(queue)
        props = {k: msg.properties[k] for k in ("correlation_id", "reply_to",
                                                "delivery_mode", "priority")
                 if k in msg.properties}
        props.update(body_encoding="base64", delivery_tag=str(uuid.uuid4()),
                     delivery_info={"exchange": msg.delivery_info.get("exchange", ""),
                                    "routing_key": msg.delivery_info.get("routing_key")})
        body = msg.body if isinstance(msg.body, bytes) else msg.body.encode()
        return {"body": base64.b64encode(body).decode(),
                "content-encoding": msg.properties.get("content_encoding"),
                "content-type": msg.properties.get("content_type"),
                "headers": dict(msg.headers or {}), "properties": props}

    def push_envelope(self, queue: str, envelope: dict) -> None:
        """Publish the envelope's body with its content type/encoding, headers and
        properties as AMQP message properties (what Celery's producer sets)."""
        import amqp
        props = envelope.get("properties", {})
        body = envelope["body"]
        body = (base64.b64decode(body) if props.get("body_encoding") == "base64"
                else body.encode() if isinstance(body, str) else body)
        fields = {k: props[k] for k in ("correlation_id", "reply_to", "delivery_mode",
                                        "priority") if props.get(k) is not None}
        fields.setdefault("delivery_mode", 2)
        msg = amqp.Message(body, content_type=envelope.get("content-type"),
                           content_encoding=envelope.get("content-encoding"),
                           application_headers=envelope.get("headers") or {}, **fields)
        self._declare(queue)
        self.server.ops().basic_publish(msg, exchange="", routing_key=queue)

    def bound(self, exchange: str, routing_key: str, queue: str) -> bool:
        out = self.server.ctl("list_bindings", "-p", self.server.vhost, "source_name",
                              "routing_key", "destination_name", "--no-table-headers")
        return [exchange, routing_key, queue] in [line.split("\t")
                                                  for line in out.splitlines()]


def side_redis_url(broker_url: str, backend_url: str) -> str:
    """Where the interop apps (beatapp, cliapp, redbeatapp) keep their own records: the
    broker's Redis when the broker is Redis, else the result backend's. Workers get it
    as env ``INTEROP_SIDE_REDIS``."""
    return broker_url if broker_url.startswith("redis") else backend_url



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
    env["INTEROP_SIDE_REDIS"] = side_redis_url(broker_url, backend_url)
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
        if broker_url.startswith("amqp"):
            argv += ["--include=pywake"]  # see pywake.py
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
