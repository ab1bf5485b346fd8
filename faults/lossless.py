"""Fault test: no task is lost when the worker is SIGKILLed, or Redis restarted, under load.

A private ``redis-server`` (AOF on, ``appendfsync always``) on a free port; a publisher
thread sends ``--tasks`` ``example_task(i, i)`` at a steady rate while workers
(``task_acks_late``, ``visibility_timeout=--visibility``) are started and SIGKILLed at
random moments, ``--kills`` times; ``--redis-restarts`` times Redis itself is SIGKILLed
and started again on its AOF. Then one worker runs until every result is in. At the end:

* every task must have its result (``SUCCESS``, ``2*i``): a missing one is **lost**;
* the queue and ``unacked`` must be empty;
* **duplicates** (at-least-once allows them) are counted from the workers' logs: runs
  of a task id beyond the first.

Usage (from the checkout; ``make release`` and ``make venv`` first)::

    .venv/bin/python faults/lossless.py                      # 10,000 tasks, 20 kills
    .venv/bin/python faults/lossless.py --redis-restarts 3   # and Redis SIGKILLed 3 times
    .venv/bin/python faults/lossless.py --worker python      # the same with Celery's worker

Exit status 0 when nothing was lost, 1 otherwise. ``interop/test_faults.py`` runs a
short version in ``make test``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "interop"))

import redis  # noqa: E402
from celery import Celery  # noqa: E402

import helpers  # noqa: E402

TASK = "app.workers.tasks.example_task"
SUCCEEDED = re.compile(rb"\[([0-9a-f-]{36})\] succeeded")


@dataclass
class Report:
    tasks: int
    kills: int = 0
    redis_restarts: int = 0
    lost: list = field(default_factory=list)
    wrong: list = field(default_factory=list)
    duplicates: int = 0
    leftover_queue: int = 0
    leftover_unacked: int = 0
    seconds: float = 0.0

    def ok(self) -> bool:
        return not self.lost and not self.wrong and not self.leftover_queue \
            and not self.leftover_unacked

    def summary(self) -> str:
        return (f"tasks {self.tasks}, worker kills {self.kills}, redis restarts "
                f"{self.redis_restarts}: lost {len(self.lost)}, wrong results {len(self.wrong)}, "
                f"duplicates {self.duplicates}, left in queue {self.leftover_queue}, "
                f"left in unacked {self.leftover_unacked} ({self.seconds:.0f} s)")


def run(*, tasks: int = 10_000, kills: int = 20, redis_restarts: int = 0, kind: str = "rust",
        rate: float = 300.0, visibility: float = 5.0, life: tuple = (0.4, 2.5),
        concurrency: int = 2, workdir: Path | None = None, seed: int | None = None,
        drain_timeout: float = 120.0, log=print) -> Report:
    """Runs the whole fault test; returns the report (doesn't raise on loss)."""
    rng = random.Random(seed)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="rcw-faults-"))
    server = helpers.RedisServer(workdir / "redis", persistent=True).start()
    broker_url, backend_url = f"{server.url}/0", f"{server.url}/1"
    settings = {"task_acks_late": True,
                "broker_transport_options": {"visibility_timeout": visibility}}
    client = Celery("faults", broker=broker_url)
    client.conf.update(task_serializer="json", result_serializer="json",
                       broker_transport_options={"visibility_timeout": visibility})
    report = Report(tasks=tasks)
    started = time.monotonic()
    ids = [str(uuid.uuid4()) for _ in range(tasks)]
    published = threading.Event()
    errors: list[str] = []

    def publish():
        interval = 1.0 / rate
        # A connection of our own: Celery's settings prefer CELERY_BROKER_URL from the
        # environment over the app's broker argument.
        producer = None
        for i, task_id in enumerate(ids):
            while True:
                try:
                    if producer is None:
                        conn = client.connection_for_write(url=broker_url)
                        producer = client.amqp.Producer(conn)
                    # send_task without its result-consumer subscription, which gives
                    # up for good after a Redis restart; the workers store the results.
                    message = client.amqp.create_task_message(task_id, TASK, [i, i], {})
                    client.amqp.send_task_message(producer, TASK, message, retry=False,
                                                  queue="celery")
                    break
                except Exception as exc:  # Redis restarting: same id again (a duplicate, not a loss)
                    errors.append(repr(exc))
                    producer = None
                    time.sleep(0.2)
            time.sleep(interval)
        published.set()

    logs: list[Path] = []

    def start_worker(n: int) -> helpers.WorkerProcess:
        name = f"fault{n}-{uuid.uuid4().hex[:4]}"
        extra = {"RCW_PY_SETTINGS": json.dumps(settings)} if kind == "python" else {}
        argv = helpers.worker_argv(kind, broker_url=broker_url, backend_url=backend_url,
                                   name=name, concurrency=concurrency, settings=settings,
                                   app="" if kind == "rust" else None,
                                   extra_args=["--without-mingle", "--without-gossip"]
                                   if kind == "rust" else [])
        path = workdir / f"worker-{n}.log"
        logs.append(path)
        return helpers.WorkerProcess(kind, argv, helpers.worker_env(broker_url, backend_url, extra),
                                     helpers.PYTHON_DIR, path, name)

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    restarts_at = set(rng.sample(range(1, max(kills, 1) + 1), min(redis_restarts, max(kills, 1))))
    try:
        for n in range(kills):
            w = start_worker(n)
            time.sleep(rng.uniform(*life))
            if n + 1 in restarts_at:
                server.proc.send_signal(signal.SIGKILL)
                server.proc.wait()
                time.sleep(rng.uniform(0.1, 1.0))
                server.start()
                report.redis_restarts += 1
                time.sleep(rng.uniform(0.2, 1.0))
            os.killpg(w.pid, signal.SIGKILL)
            w.proc.wait()
            report.kills += 1
            log(f"kill {report.kills}/{kills} after {time.monotonic() - w.started_at:.1f} s")
        w = start_worker(kills)
        published.wait(timeout=tasks / rate + drain_timeout)
        if errors:
            log(f"publish errors: {len(errors)}, first: {errors[0]}")
        backend = redis.Redis.from_url(backend_url)
        keys = [f"celery-task-meta-{i}" for i in ids]
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline:
            present = sum(backend.exists(*keys[k:k + 1000]) for k in range(0, len(keys), 1000))
            if present == tasks:
                break
            time.sleep(1.0)
        time.sleep(visibility + 2)  # anything still to be restored would run now
        w.proc.send_signal(signal.SIGTERM)
        w.proc.wait(timeout=30)
        for i, key in enumerate(keys):
            raw = backend.get(key)
            if raw is None:
                report.lost.append(ids[i])
                continue
            meta = json.loads(raw)
            if meta.get("status") != "SUCCESS" or meta.get("result") != 2 * i:
                report.wrong.append((ids[i], meta.get("status"), meta.get("result")))
        broker = redis.Redis.from_url(broker_url)
        report.leftover_queue = sum(broker.llen(k) for k in broker.keys("celery*")
                                    if broker.type(k) == b"list")
        report.leftover_unacked = broker.hlen("unacked")
        runs: dict[bytes, int] = {}
        for path in logs:
            for m in SUCCEEDED.finditer(path.read_bytes()):
                runs[m.group(1)] = runs.get(m.group(1), 0) + 1
        report.duplicates = sum(n - 1 for n in runs.values() if n > 1)
    finally:
        server.stop()
    report.seconds = time.monotonic() - started
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--redis-restarts", type=int, default=0)
    ap.add_argument("--worker", choices=["rust", "python"], default="rust",
                    help="ours (Rust tasks, no app) or Celery's (celery -A pyworker_app worker)")
    ap.add_argument("--rate", type=float, default=None,
                    help="tasks published per second (default: spread over the kills)")
    ap.add_argument("--visibility", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--workdir", type=Path, default=None, help="keep logs and AOF here")
    args = ap.parse_args()
    # Publishing lasts about as long as the kills, so every kill lands under load.
    rate = args.rate or max(args.tasks / max(args.kills * 1.45, 1.0), 50.0)
    report = run(tasks=args.tasks, kills=args.kills, redis_restarts=args.redis_restarts,
                 kind=args.worker, rate=rate, visibility=args.visibility, seed=args.seed,
                 workdir=args.workdir)
    print(report.summary())
    for task_id in report.lost[:20]:
        print(f"lost: {task_id}")
    for wrong in report.wrong[:20]:
        print(f"wrong result: {wrong}")
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
