#!/usr/bin/env python3
"""Throughput and memory: rust-celery-worker vs the real `celery worker` (prefork).

Seven scenarios, each measured for both workers in the same run, on the same private
redis-server (broker in db 0, results alone in db 1; amqp: broker on RabbitMQ); every run
ends with the issue-11 summary table (below). An eighth, soak, runs only on request and
only our worker.

Redis ceiling (plain and events, measured once per scenario before any worker): what
Redis alone does with the very same messages. The N messages are preloaded exactly as
for the workers (same template, preload()), then one Lua script (register_script, i.e.
EVALSHA) is called until the list is empty; per call, for up to 1000 messages, it RPOPs
from `celery` in db 0, takes the task id with string.match on `"correlation_id":
"([^"]+)"` and the two args from the `argsrepr` header `(i, i)`, and in db 1 (`SELECT 1`
inside the script: a Redis 7 script's SELECT does not change the caller's db; `SELECT 0`
again before the next RPOP) does `SETEX celery-task-meta-<id> 86400 <meta>` and
`PUBLISH celery-task-meta-<id> <meta>`, meta being the JSON Celery stores, same keys in
the same order: `{"status": "SUCCESS", "result": 2i, "traceback": null, "children": [],
"date_done": "<ISO UTC, one per call, passed as ARGV>", "task_id": "<id>"}`. Ceiling
tasks/s = N / wall time of the script calls (preloading excluded). DBSIZE of db 1 must
then be N, the list empty and the first and last message's results SUCCESS with 2i
(else the scenario's ceiling fails the run); FLUSHALL after. The plain table gets, per
worker, `% ceil` = tasks/s / ceiling and `steady % ceil` = steady tasks/s / ceiling;
target: steady >= 50 % of the ceiling (plain, and the -E runs of events). The plain
scenario also measures the same script doing, per message, what kombu's transport and
Celery's backend add (KOMBU_CEILING_LUA: ZADD + HSET of the delivery into
`unacked_index` / `unacked` as it is popped, the ack's ZREM + HDEL, the backend's GET
before its write): the most a worker with kombu's bookkeeping could get from this Redis
without any network; printed with each worker's steady rate as % of it, and as a
summary row without a target.

plain (the original benchmark). For each worker:

1. idle phase: start it on an empty queue, wait until it is blocked in BRPOP,
   let it settle, sample the RSS of its whole process tree (parent + children,
   from /proc/<pid>/status VmRSS) and its PSS (smaps_rollup: shared pages split
   between the processes mapping them), stop it;
2. loaded phase: FLUSHALL, preload N `app.workers.tasks.example_task(i, i)` messages
   (one envelope captured from the real Celery producer, copied with fresh ids and
   delivery tags, LPUSHed in pipelines), start the worker and poll every 10 ms
   until all N `celery-task-meta-*` results are stored (results live alone in db 1,
   so DBSIZE counts them), sampling the process-tree RSS for the peak (every
   100 ms); then check the stored results.

Then, for our worker only, the idle phase once more with `-A app.workers` left out of
its command line (and APP / CELERY_APP out of its environment): it then runs
`app.workers.tasks.example_task` natively and needs no Python (reported beside it:
whether a libpython is nevertheless mapped into it, from /proc/<pid>/maps: the binary
may link it dynamically). Targets printed: that idle RSS (process tree) <= 15 MiB;
with -A, the tree's idle RSS <= 0.5x Celery's. Beside it, without a target, both trees'
PSS: Celery's pool children are forked and share its heap, which RSS counts per process.

events: the cost of task events. For each worker, the plain scenario's loaded phase
(no idle phase) twice, back to back: as in plain, then with `-E` added to the worker's
command line. During the -E run a thread of this process holds `PSUBSCRIBE
/0.celeryev/*` on the same Redis (subscribed before the worker starts; after the worker
has exited, a sentinel published on the pattern marks the end) and keeps every message;
afterwards each kombu envelope's base64 `body` is decoded (one event, or on
`task.multi` a JSON array of them) and the events are counted by `type`. Reports
tasks/s without and with -E and their ratio (also for the steady rate, first result ->
last, which leaves out worker startup), and the task-succeeded events seen, which must
equal `--tasks` for both workers (a mismatch fails the run). Target printed: our ratio
>= 0.80; Celery's own ratio, from the same run, is printed beside it. The Redis ceiling
(above) is measured first; each worker's steady rate with -E is printed as % of it.

latency: round trips of the real Celery client, one at a time. For each worker: start
it on an empty queue (as the idle phase: wait until it is blocked waiting for a
message), wait 1 s, then a client subprocess (the real Celery app,
`app.workers.celery_app`) calls `example_task.delay(i, i).get(timeout=10)` sequentially,
`--latency-warmup` times (default 200, not measured) and then `--latency-calls` times
(default 2000), each timed with time.perf_counter from before delay() to get()
returning; every result must be 2i (else the run fails), and db 1 must then hold
warmup + calls results. The worker is stopped afterwards. Reports p50, p90, p99
(nearest rank), max, mean and min per worker, in ms, the p50 of delay() alone (the
client's own share: publish and subscribe), and ours / Celery for p50 and p99.
Targets printed: p50 <= 0.5 ms, p99 <= 2 ms (the client's own cost, the same for both
workers, is included). Also counted, per worker: the get()s that found their result
already stored and read no pub/sub reply, the most pub/sub replies one get() read (the
backlog those others leave: Celery 5.7's client reads them all on the next get() that
has to wait), and the p99 of the get()s without a backlog.

canvas: with the worker stopped, a publisher subprocess (the real Celery producer)
publishes `--chains` chains `chain(example_task.s(i, i), example_task.s(1),
example_task.s(1))` and `--chords` chords `chord(group(example_task.s(i, j) for j in
range(10)), tsum.s())`, where `tsum` is `rcw.testing.tsum(numbers)` (our worker's test
task, enabled with RCW_TEST_TASKS=1; for Celery its Python twin from
interop/pyworker_tasks.py, worker run as `celery -A pyworker_app`). Then the worker
is started and the result keys of every chain's last step and every chord callback
(ids known up front) are polled until all are stored. Checks: chain result == 2i+2,
chord result == 10i+45 (mismatches must be 0). Reports workflows/s and tasks/s
(a chain is 3 tasks, a chord 11).

eta: a publisher subprocess sends `--eta-tasks` `example_task(i, i)` with
`apply_async(eta=due)`, one explicit UTC datetime `due = publish start + --eta-delay`
for all of them; the worker is started right after publishing. Measured from the due
moment until every result is stored (drain time after due); then every result's
`date_done` is compared with the eta (tasks that ran early must be 0). Held ETA
messages stay in kombu's `unacked` hash (default visibility_timeout, 1 h, so nothing
is restored); the queue length and `unacked` size at the due moment are reported.

python: pure-Python tasks, which our worker runs (like Celery) as Python bodies in its
prefork pool of `-c` child processes (`rust-celery-worker -A app.workers -P prefork`):
`--py-noop` x `app.workers.tasks.noop_task()` (per-task overhead) and `--py-cpu` x
`app.workers.tasks.cpu_task(60000)` (~3 ms of CPython each). For each task and each
worker, as in plain: the messages (captured from the real producer, fresh ids) are
preloaded with the worker stopped, the worker is started and the results polled every
10 ms until all are stored; then EVERY result is checked (SUCCESS, None for noop,
the exact sum for cpu_task). RSS is the whole process tree (parent + pool children,
whatever their process group); the idle RSS is measured once per worker, before the
noop round. Targets printed next to the ratios: noop throughput >= 2x Celery's, cpu
throughput >= 1x, RSS < 1x.

amqp: plain on RabbitMQ. The same idle and loaded phases (measure(), with an AmqpQueue
in place of the Redis list), the broker being queue `celery` in a vhost of this run
(`rabbitmqctl add_vhost rcw-bench-<uuid>`, guest permitted, deleted at the end) on the
RabbitMQ at 127.0.0.1:5672 (guest/guest), the results in db 1 of the private Redis;
workers get `-b amqp://guest:guest@127.0.0.1:5672/<vhost>` (ours) or the same URL in
CELERY_BROKER_URL (Celery's). One envelope is captured from the real producer bound to
that URL (a publisher subprocess: `apply_async((0, 0), queue=<capture queue>)`, which
also declares Celery's default queue with Celery's own Queue object: durable, bound with
key `celery` to the durable direct exchange `celery`), read back with py-amqp
`basic_get`, and N copies with fresh ids (headers id/root_id/argsrepr, correlation_id)
are published on one py-amqp channel, without confirms, until a passive queue_declare
counts N. Startup = worker start -> the queue has a consumer (passive queue_declare);
CPU is printed per worker, and our tasks/s against the reference 9,400 tasks/s
(rusty-celery's consume rate on RabbitMQ on the bench machine, storing no results).
Skipped, with the reason, when nothing answers on 127.0.0.1:5672 (`--scenario all`
includes it then too, last).

soak (not part of `all`: it takes minutes; `--scenario soak`): our worker's memory over
time and what it leaves in Redis; our worker only (Celery is not run). Our worker is
started once, as in canvas (RCW_TEST_TASKS=1, interop on PYTHONPATH), on an empty
broker; its idle RSS is sampled 2 s after it consumes. A publisher subprocess (the real
Celery producer, results not subscribed to) then publishes `--soak-tasks` (default
1,000,000) task executions in rounds of `--soak-batch` (default 10,000), each round this
mix, shuffled: 70 % `example_task(i, i)`, 5 % `rcw.testing.flaky(1, countdown=0.05)`
(retried once: 2 executions), 5 % `example_task(i, i)` with countdown=1 (ETA), 8 % chains
of 3 example_task steps (3 executions), 7 % chords of 10 example_task + rcw.testing.tsum
(11), 5 % `rcw.testing.fail("boom")`. Every ~1000 executions it appends the result ids
of the tasks just published to a JSON-lines file; after each round it waits until LLEN
celery + HLEN unacked (db 0) is below 2 x batch; no AsyncResult outlives its round (the
client's result pubsub replies are read and dropped after each round; single tasks share
one producer). Meanwhile this process polls every 0.25 s: executions done, counted from
the results stored for every id published (EXISTS; a flaky task counts 2 once SUCCESS,
1 while RETRY), which needs nothing from the worker (tasks still being published are
counted once their line is written); and, into a time series every 1 s, the RSS of the
worker's process tree (and main process), zombies in it, LLEN celery, HLEN unacked,
DBSIZE of db 0 and db 1, Redis used_memory and the publisher's RSS. When a line's tasks
are all done, its listed checks are read: every chain's last step (2i+2), chord
callback (10i+45), failure (FAILURE, ValueError) and flaky task ({"attempts": 2}), every
50th plain task (2i) and 10th ETA task (2i, date_done not before the eta). The run ends
when every line is done (no progress for 120 s fails it); 5 s idle, the RSS once more,
then the worker is stopped and every key of both dbs listed by pattern (uuids as `*`)
with its TTL: in db 0 only kombu's `_kombu.binding*` tables and `unacked_mutex` may remain
(`celery`, `unacked`, `unacked_index` exist only when not empty: leaks); in db 1 only
`celery-task-meta-*` and Celery's chord keys `celery-taskset-meta-*` (`.j .t .s .d` state,
the `.c` done marker), each with a TTL (TTL -1 is a leak); the task results must be one
per published id, all SUCCESS but the failures. Reports the time series at every 10 %
of the executions, RSS after the first 10 % (100,000 of the default 1,000,000), at the
last execution and the maximum, end / at 10 % (target <= 1.10), the slope after 10 %,
tasks/s overall (publisher start -> last execution) and the leak census. Wrong or
missing results and leaked keys fail the run; a missed RSS target does not.

Summary: at the end of every run, one table "issue 11 summary", one row per figure
this run measured: Rust tasks/s (plain, steady), with -E (events, steady), Python noop
and cpu tasks/s (python, steady), round trip p50 and p99 and wire p50 and p99 (latency), idle
RSS Rust-only and with -A (plain), soak RSS end / at 10 % and leaked keys (soak, ours
only). Columns: ours, Celery (same run), ratio ours /
Celery, Redis ceiling (throughput rows: the ceiling and ours as % of it), target, met.
Targets: plain and -E throughput >= 50 % of the ceiling; python noop >= 5x Celery (the
python table's own verdicts are the earlier 2x / 1x); python cpu >= 1.5x Celery; p50
<= 0.5 ms; p99 <= 2 ms; Rust-only idle RSS <= 15 MiB; -A idle RSS <= 0.5x Celery's;
soak RSS end / at 10 % <= 1.10; soak leaked keys 0.
Below it: the command line of the run and the load average. A missed target is
reported, not a failure; only incorrect results (and workers that fail) fail the run.

Publishers run in a subprocess so that the Celery client's result subscriptions
(chords subscribe to their header results) never touch the measured Redis traffic.
No process is left behind: workers are stopped with SIGTERM and their process groups
SIGKILLed; their descendants (our pool children have process groups of their own) are
listed before the stop and SIGKILLed if still running 3 s after the parent exited;
redis-server is stopped in a finally block, and at the very end any process still
carrying this run's CELERY_BROKER_URL is reported and killed.

    python bench/bench.py [--scenario all|plain|events|latency|canvas|eta|python|amqp|soak]
        [--tasks 20000] [--latency-warmup 200] [--latency-calls 2000]
        [--chains 2000] [--chords 200] [--eta-tasks 10000] [--eta-delay S]
        [--py-noop 5000] [--py-cpu 2000] [--soak-tasks 1000000] [--soak-batch 10000]
        [--concurrency N] [--skip-rust] [--skip-celery]
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import math
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "interop")]

import redis  # noqa: E402

from helpers import RedisServer  # noqa: E402

TASK = "app.workers.tasks.example_task"
# scenario `python`: pure-Python tasks (no Rust handler), run in the prefork pools.
PY_NOOP = "app.workers.tasks.noop_task"
PY_CPU = "app.workers.tasks.cpu_task"
PY_CPU_N = 60000  # cpu_task(n): ~3 ms of CPython per call on the 2-core bench machine
PY_CPU_EXPECTED = sum(i * i for i in range(PY_CPU_N))


# --------------------------------------------------------------------------- processes


def tree_pids(pid: int) -> list[int]:
    """pid and all its descendants (via /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        task_dir = Path(f"/proc/{p}/task")
        try:
            tids = list(task_dir.iterdir())
        except OSError:
            continue
        for tid in tids:
            try:
                todo.extend(int(c) for c in (tid / "children").read_text().split())
            except OSError:
                pass
    return out


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size: each shared page split between the processes that map
    it (Celery's forked pool children share their parent's heap; our pool children
    are started afresh and share only file pages), 0 when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(pid: int) -> tuple[int, int]:
    pids = tree_pids(pid)
    return sum(rss_kib(p) for p in pids), len(pids)


CLK_TCK = os.sysconf("SC_CLK_TCK")
STEAL_NOISY = 0.05  # CPU steal over a run above which the summary calls it noisy


def cpu_ticks(pid: int):
    """(start time, utime + stime) of a process from /proc/<pid>/stat, None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        f = stat[stat.rindex(")") + 2:].split()
        return int(f[19]), int(f[11]) + int(f[12])
    except (OSError, ValueError, IndexError):
        return None


def steal_ticks() -> int | None:
    """CPU steal so far, all CPUs (/proc/stat): time a vCPU wanted to run while the
    hypervisor ran something else. A phase with much of it measured the host's load:
    on the bench VM it came in bursts of 40-80 % that halved every figure, the Redis
    ceiling included, and went again."""
    try:
        with open("/proc/stat") as f:
            return int(f.readline().split()[8])
    except (OSError, IndexError, ValueError):
        return None


def steal_share(since: int | None, seconds: float) -> float | None:
    """Steal from `since` (a steal_ticks() reading) to now, as a share of all CPUs'
    time over those `seconds`."""
    now = steal_ticks()
    if since is None or now is None or seconds <= 0:
        return None
    return (now - since) / CLK_TCK / (seconds * (os.cpu_count() or 1))


def fmt_steal(share) -> str:
    return "-" if share is None else f"{100 * share:.0f} %"


def start_time(pid: int):
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), None if gone; with the
    pid it identifies a process across pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def still_running(procs: list) -> list:
    """The (pid, start time) pairs whose process still exists and is not a zombie."""
    out = []
    for pid, st in procs:
        if st is None or start_time(pid) != st:
            continue
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            out.append((pid, st))
    return out


def stray_processes(marker: str) -> list:
    """Processes (other than this one) whose environment contains `marker`, e.g.
    CELERY_BROKER_URL=<this run's private Redis>: anything a bench worker left behind."""
    out = []
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            if marker.encode() in (d / "environ").read_bytes().split(b"\0"):
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                out.append((int(d.name), cmd.strip()))
        except OSError:
            pass
    return out


class Worker:
    def __init__(self, label: str, argv: list[str], env: dict, log_path: Path):
        self.label = label
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.leftovers_killed = 0  # descendants still running 3 s after the parent exited
        self.stop_timed_out = False  # SIGTERM did not stop the parent in time
        self.proc = subprocess.Popen(argv, env=env, cwd=str(ROOT / "python"),
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        # Descendants first: our worker's pool children sit in process groups of their
        # own, so the killpg below does not reach them, and once the parent is gone they
        # are re-parented and no longer found through it.
        descendants = [(p, start_time(p)) for p in tree_pids(self.proc.pid)[1:]]
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.stop_timed_out = True
        try:  # whatever is left of the process group (Celery's prefork children)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        # Pool children exit by themselves when the parent closes their stdin; give them
        # a moment, then SIGKILL (and count) whatever is still there.
        deadline = time.monotonic() + 3.0
        left = still_running(descendants)
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = still_running(descendants)
        for pid, _ in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.leftovers_killed = len(left)
        self._log.close()

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


# --------------------------------------------------------------------------- messages


def capture_template(broker_url: str, backend_url: str, task_name: str = TASK,
                     args: tuple = (0, 0)) -> dict:
    """One real envelope from Celery's producer (`example_task.apply_async((0, 0))`,
    or the given task of app.workers.tasks with the given args)."""
    os.environ["CELERY_BROKER_URL"] = broker_url
    os.environ["CELERY_RESULT_BACKEND"] = backend_url
    from app.workers.celery_app import celery_app
    import app.workers.tasks  # noqa: F401  (registers the tasks)

    queue = f"bench-capture-{uuid.uuid4().hex[:8]}"
    celery_app.tasks[task_name].apply_async(args, queue=queue)
    r = redis.Redis.from_url(broker_url)
    raw = r.rpop(queue)
    r.delete(f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    r.close()
    celery_app.close()
    if raw is None:
        raise RuntimeError("could not capture an envelope from the Celery producer")
    env = json.loads(raw)
    env["properties"]["delivery_info"]["routing_key"] = "celery"
    return env


def fresh_copy(template: dict, args: list) -> tuple[str, str]:
    """`template` with a fresh task id and delivery tag and positional `args`:
    (task id, the stored JSON)."""
    tid = str(uuid.uuid4())
    embed = json.loads(base64.b64decode(template["body"]))[2]
    headers = dict(template["headers"], id=tid, root_id=tid, argsrepr=repr(tuple(args)),
                   kwargsrepr="{}")
    props = dict(template["properties"], correlation_id=tid, delivery_tag=str(uuid.uuid4()))
    body = json.dumps([args, {}, embed]).encode()
    env = dict(template, headers=headers, properties=props,
               body=base64.b64encode(body).decode())
    return tid, json.dumps(env)


def preload(r: redis.Redis, template: dict, n: int, args_for=None) -> list[str]:
    """LPUSH n copies of `template` with fresh ids; message i gets positional args
    `args_for(i)` (default `[i, i]`). Returns the task ids in order."""
    if args_for is None:
        args_for = lambda i: [i, i]  # noqa: E731
    pipe = r.pipeline(transaction=False)
    ids = []
    for i in range(n):
        tid, raw = fresh_copy(template, args_for(i))
        ids.append(tid)
        pipe.lpush("celery", raw)
        if (i + 1) % 2000 == 0:
            pipe.execute()
    pipe.execute()
    have = r.llen("celery")
    if have != n:
        raise RuntimeError(f"preloaded {have} messages, wanted {n}")
    return ids


# --------------------------------------------------------------------------- measuring

POLL_S = 0.01  # loaded phases: results counted (DBSIZE of db 1) this often
SAMPLE_S = 0.1  # ... and the process tree's RSS and CPU read this often


def wait_brpop(r: redis.Redis, worker: Worker, timeout: float = 60.0) -> float:
    """Wait until some client of this Redis (the worker) is blocked waiting for a message:
    BRPOP (Celery's worker), or BLMOVE (ours: it waits without taking, see
    src/broker/redis/wakeup.rs)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not worker.alive():
            raise RuntimeError(f"{worker.label} exited early:\n{worker.log_tail()}")
        if any(c.get("cmd") in ("brpop", "blmove") for c in r.client_list()):
            return time.monotonic() - t0
        time.sleep(0.05)
    raise RuntimeError(f"{worker.label} never started consuming (no BRPOP in {timeout}s):\n"
                       f"{worker.log_tail()}")


_UNCHECKED = object()


class RedisQueue:
    """The broker of every scenario but amqp: kombu's list `celery` in db 0 of the
    private Redis (results in db 1)."""

    def __init__(self, server: RedisServer):
        self.r0 = server.client(0)

    def flush(self) -> None:
        """Empty queue, no results (FLUSHALL: db 0 and db 1)."""
        self.r0.flushall()

    def preload(self, template: dict, n: int, args_for=None) -> list[str]:
        return preload(self.r0, template, n, args_for)

    def wait_consuming(self, worker: "Worker") -> float:
        return wait_brpop(self.r0, worker)

    def after_run(self, out: dict) -> None:
        pass

    def close(self) -> None:
        self.r0.close()


def libpython_mapped(pid: int) -> bool | None:
    """Whether any libpython shared object is mapped into the process (None if gone)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any("libpython" in line for line in f)
    except OSError:
        return None


def idle_phase(label: str, argv: list[str], env: dict, queue, log_path: Path,
               check_python: bool = False) -> dict:
    """Start the worker on an empty queue, wait until it consumes, let it settle 2 s,
    sample the RSS of its process tree (main process first), stop it. check_python adds
    whether a libpython is mapped into any process of the tree."""
    queue.flush()
    out: dict = {}
    w = Worker(label, argv, env, log_path)
    try:
        out["startup_s"] = queue.wait_consuming(w)
        time.sleep(2.0)
        pids = tree_pids(w.proc.pid)
        by_proc = [rss_kib(p) for p in pids]  # main process first
        out["idle_rss_kib"], out["idle_processes"] = sum(by_proc), len(pids)
        out["idle_rss_by_process_kib"] = by_proc
        out["idle_pss_kib"] = sum(pss_kib(p) for p in pids)
        if check_python:
            out["libpython_mapped"] = any(libpython_mapped(p) for p in pids)
    finally:
        w.stop()
        out["leftovers_killed"] = w.leftovers_killed
        out["stop_timeouts"] = int(w.stop_timed_out)
    return out


def without_app(argv: list[str]) -> list[str]:
    """Our worker's command line without `-A <app>`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("-A", "--app"):
            skip = True
        elif not a.startswith("--app="):
            out.append(a)
    return out


RUST_ONLY_IDLE_TARGET_KIB = 15 * 1024  # issue 11: our worker without -A, idle, <= 15 MiB
WITH_APP_IDLE_TARGET = 0.5  # issue 11: with -A, idle tree RSS <= 0.5x Celery's


def measure_rust_only_idle(label: str, argv: list[str], env: dict, server: RedisServer,
                           workdir: Path) -> dict:
    """Plain scenario, our worker only: the idle phase without -A (no Python)."""
    argv = without_app(argv)
    env = {k: v for k, v in env.items() if k not in ("APP", "CELERY_APP")}
    queue = RedisQueue(server)
    try:
        out = {"worker": label, "argv": argv}
        out.update(idle_phase(label, argv, env, queue, workdir / "rust-no-app-idle.log",
                              check_python=True))
        return out
    finally:
        queue.close()


def measure(label: str, argv: list[str], env: dict, server: RedisServer, template: dict,
            n: int, workdir: Path, timeout: float, *, args_for=None, expected=_UNCHECKED,
            idle: bool = True, tag: str = "", queue=None) -> dict:
    """Idle phase (unless idle=False), then the loaded phase on n preloaded messages.
    With `expected`, every stored result must be SUCCESS with exactly that value;
    without, a sample of 200 is checked for the plain scenario's even ints.
    `queue` is the broker side (flush / preload / wait_consuming / after_run): the
    private Redis (RedisQueue, the default) or RabbitMQ (AmqpQueue, scenario amqp);
    results are always read from db 1 of the private Redis."""
    own_queue = queue is None
    if own_queue:
        queue = RedisQueue(server)
    r1 = server.client(1)
    out: dict = {"worker": label, "argv": argv, "tasks": n}
    out["leftovers_killed"] = 0
    out["stop_timeouts"] = 0
    log_prefix = f"{label}{'-' + tag if tag else ''}"

    def stopped(w: Worker) -> None:
        out["leftovers_killed"] += w.leftovers_killed
        out["stop_timeouts"] += int(w.stop_timed_out)

    # Idle phase.
    if idle:
        res = idle_phase(label, argv, env, queue, workdir / f"{log_prefix}-idle.log")
        out["leftovers_killed"] += res.pop("leftovers_killed")
        out["stop_timeouts"] += res.pop("stop_timeouts")
        out.update(res)

    # Loaded phase.
    queue.flush()
    t_pre = time.monotonic()
    ids = queue.preload(template, n, args_for)
    out["preload_s"] = time.monotonic() - t_pre

    peak = 0
    peak_procs = 0
    first = None
    ticks: dict = {}  # (pid, start time) -> last CPU ticks seen (parent and pool children)
    t0 = time.monotonic()
    steal0 = steal_ticks()
    sampled = None  # when RSS and CPU were last read
    w = Worker(label, argv, env, workdir / f"{log_prefix}-run.log")
    try:
        while True:
            done = r1.dbsize()
            now = time.monotonic()
            # DBSIZE every POLL_S (a steady span of ~1 s at 100 ms polls read up to
            # 12 % low); /proc every SAMPLE_S, which costs this process more.
            if sampled is None or now - sampled >= SAMPLE_S or done >= n:
                sampled = now
                pids = tree_pids(w.proc.pid)
                by_proc = [rss_kib(p) for p in pids]  # main process first
                rss = sum(by_proc)
                if rss > peak:
                    out["peak_rss_by_process_kib"] = by_proc
                peak = max(peak, rss)
                peak_procs = max(peak_procs, len(pids))
                for p in pids:
                    ct = cpu_ticks(p)
                    if ct is not None:
                        ticks[(p, ct[0])] = ct[1]
            if done and first is None:
                first = (now, done)
            if done >= n:
                break
            if not w.alive():
                raise RuntimeError(f"{label} exited with {w.proc.returncode} after {done}/{n} "
                                   f"results:\n{w.log_tail()}")
            if now - t0 > timeout:
                raise RuntimeError(f"{label}: only {done}/{n} results after {timeout}s:\n"
                                   f"{w.log_tail()}")
            time.sleep(POLL_S)
        t1 = time.monotonic()
        out["steal"] = steal_share(steal0, t1 - t0)
    finally:
        t_stop = time.monotonic()
        w.stop()
        out["stop_s"] = time.monotonic() - t_stop
        stopped(w)
    queue.after_run(out)

    # CPU time up to the last poll (~100 ms granularity): the worker's main process
    # versus everything below it (pool children).
    out["cpu_parent_s"] = sum(v for (p, _), v in ticks.items() if p == w.proc.pid) / CLK_TCK
    out["cpu_children_s"] = sum(v for (p, _), v in ticks.items() if p != w.proc.pid) / CLK_TCK
    out["wall_s"] = t1 - t0
    out["tasks_per_s"] = n / out["wall_s"]
    t_first, done_first = first
    span = t1 - t_first
    out["steady_tasks_per_s"] = (n - done_first) / span if span > 0 else float("nan")
    out["first_result_s"] = t_first - t0
    out["peak_rss_kib"] = peak
    out["peak_processes"] = peak_procs

    if expected is not _UNCHECKED:  # every result, exactly
        bad = missing = 0
        for meta in result_metas(r1, ids):
            if meta is None:
                missing += 1
            elif meta.get("status") != "SUCCESS" or meta.get("result") != expected \
                    or (expected is None and "result" not in meta):
                bad += 1
        out["results_stored"] = n - missing
        out["missing"] = missing
        out["bad_results"] = bad
        out["other_keys"] = r1.dbsize() - (n - missing)
        if own_queue:
            queue.close()
        r1.close()
        return out

    # Check what was stored.
    keys = 0
    for _ in r1.scan_iter(match="celery-task-meta-*", count=5000):
        keys += 1
    bad = 0
    for key in list(r1.scan_iter(match="celery-task-meta-*", count=5000))[:200]:
        meta = json.loads(r1.get(key))
        if meta.get("status") != "SUCCESS" or not isinstance(meta.get("result"), int) \
                or meta["result"] % 2:
            bad += 1
    out["results_stored"] = keys
    out["bad_results_in_sample"] = bad
    if own_queue:
        queue.close()
    r1.close()
    return out


# --------------------------------------------------------------------------- redis ceiling

CEILING_BATCH = 1000  # messages per script call
CEILING_TARGET = 0.50  # issue 11: steady tasks/s >= 50 % of the Redis ceiling

# Per message: RPOP from `celery` (db 0), task id from the envelope's correlation_id,
# args from the argsrepr header, then in db 1 SETEX + PUBLISH the result meta in the
# shape (keys, order, spacing) Celery's Redis backend stores. ARGV: batch, date_done.
CEILING_LUA = """
local done = 0
for _ = 1, tonumber(ARGV[1]) do
  redis.call('SELECT', 0)
  local msg = redis.call('RPOP', 'celery')
  if not msg then break end
  local id = string.match(msg, '"correlation_id": "([^"]+)"')
  local x, y = string.match(msg, '"argsrepr": "%((%-?%d+), (%-?%d+)%)"')
  if not id or not x then
    return redis.error_reply('no correlation_id / argsrepr in message ' .. done)
  end
  local key = 'celery-task-meta-' .. id
  local meta = '{"status": "SUCCESS", "result": ' .. string.format('%d', x + y)
    .. ', "traceback": null, "children": [], "date_done": "' .. ARGV[2]
    .. '", "task_id": "' .. id .. '"}'
  redis.call('SELECT', 1)
  redis.call('SETEX', key, 86400, meta)
  redis.call('PUBLISH', key, meta)
  done = done + 1
end
return done
"""


# CEILING_LUA plus what kombu's Redis transport and Celery's backend do per message
# besides: the delivery recorded in `unacked_index` (ZADD) and `unacked` (HSET of
# `[message, exchange, routing_key]`) as it is popped, the ack (ZREM + HDEL), and the
# backend's GET of the meta key before it writes. No worker and no network, but one
# ack and one result write per message: a reference, not a bound (a worker that
# settles a batch's acks in one ZREM + HDEL and writes results in batches can pass it).
def _before(script: str, anchor: str, lines: str) -> str:
    """`script` with `lines` inserted before its one line starting with `anchor`."""
    at = script.index("\n  " + anchor) + 1  # ValueError if CEILING_LUA changed shape
    return script[:at] + lines + script[at:]


KOMBU_CEILING_LUA = _before(_before(CEILING_LUA, "local id = ", """\
  local tag = string.match(msg, '"delivery_tag": "([^"]+)"')
  redis.call('ZADD', 'unacked_index', 1, tag)
  redis.call('HSET', 'unacked', tag, '[' .. msg .. ', "", "celery"]')
  redis.call('ZREM', 'unacked_index', tag)
  redis.call('HDEL', 'unacked', tag)
"""), "redis.call('SETEX'", "  redis.call('GET', key)\n")


def redis_ceiling(server: RedisServer, template: dict, n: int,
                  lua: str = CEILING_LUA) -> dict:
    """What Redis alone does with the plain scenario's n messages: preload them, then
    call `lua` (CEILING_LUA; EVALSHA) until the list is empty; tasks/s = n / wall time of
    the calls. Raises RuntimeError unless db 1 then holds exactly n keys, the queue is
    empty and the first and last results are right. FLUSHALL before and after."""
    queue = RedisQueue(server)
    r0, r1 = queue.r0, server.client(1)
    try:
        queue.flush()
        t_pre = time.monotonic()
        ids = queue.preload(template, n)
        out: dict = {"tasks": n, "batch": CEILING_BATCH, "preload_s": time.monotonic() - t_pre}
        script = r0.register_script(lua)
        r0.script_load(lua)  # so the first EVALSHA finds it, before the clock
        calls = done = 0
        t0 = time.perf_counter()
        steal0 = steal_ticks()
        while True:
            date = dt.datetime.now(dt.timezone.utc).isoformat()
            got = script(args=[CEILING_BATCH, date])
            calls += 1
            done += got
            if got < CEILING_BATCH:
                break
        wall = time.perf_counter() - t0
        out["steal"] = steal_share(steal0, wall)
        out.update(wall_s=wall, calls=calls, processed=done,
                   tasks_per_s=n / wall if wall > 0 else float("nan"))
        out["results_stored"] = r1.dbsize()
        out["queue_left"] = r0.llen("celery")
        checks = [(ids[0], 0), (ids[-1], 2 * (n - 1))] if ids else []
        bad = sum(1 for (_, want), meta in zip(checks, result_metas(r1, [t for t, _ in checks]))
                  if meta is None or meta.get("status") != "SUCCESS"
                  or meta.get("result") != want)
        out["bad_results_checked"] = bad
        if out["results_stored"] != n or out["queue_left"] or done != n or bad:
            raise RuntimeError(f"redis ceiling: {out['results_stored']} results in db 1, "
                               f"{done} processed, {out['queue_left']} left in the queue "
                               f"(wanted {n}, 0), {bad} wrong of the first and last")
        return out
    except redis.RedisError as exc:
        raise RuntimeError(f"redis ceiling: {exc!r}") from exc
    finally:
        try:
            r0.flushall()
        finally:
            r1.close()
            queue.close()


def median_run(runs: list, key: str) -> dict:
    """The run with the median `key` (the lower of the middle two), completed with the
    first run's keys it lacks (the idle phase runs in round 1 only); `rounds` holds every
    run's `key` in the order measured, `round_runs` the runs (each one is checked)."""
    mid = sorted(runs, key=lambda r: r[key])[(len(runs) - 1) // 2]
    return {**runs[0], **mid, "rounds": [r[key] for r in runs], "round_runs": runs}


def fmt_rounds(r: dict) -> str:
    return ", ".join(f"{v:,.0f}" for v in r.get("rounds", []))


def pct(a, b) -> str:
    try:
        return f"{100 * a / b:.1f} %"
    except (TypeError, ZeroDivisionError):
        return "-"


# --------------------------------------------------------------------------- amqp

AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672
AMQP_USER = AMQP_PASSWORD = "guest"
# rusty-celery's consume rate on RabbitMQ on the bench machine (it stores no results).
AMQP_REFERENCE_TASKS_PER_S = 9400


def rabbit_unavailable() -> str | None:
    """Why scenario amqp cannot run: None when something accepts TCP connections on
    AMQP_HOST:AMQP_PORT, py-amqp imports and rabbitmqctl is on PATH."""
    import shutil
    import socket
    try:
        import amqp  # noqa: F401  (py-amqp, a dependency of kombu)
    except ImportError as exc:
        return f"py-amqp is not importable ({exc})"
    try:
        socket.create_connection((AMQP_HOST, AMQP_PORT), timeout=3).close()
    except OSError as exc:
        return f"RabbitMQ does not answer on {AMQP_HOST}:{AMQP_PORT} ({exc})"
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl not found on PATH (needed for this run's vhost)"
    return None


def rabbitmqctl(*argv: str, timeout: float = 120.0) -> str:
    try:
        proc = subprocess.run(["rabbitmqctl", *argv], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"rabbitmqctl {' '.join(argv)}: no answer in {timeout:g}s")
    if proc.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(argv)} failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc.stdout


def amqp_errors(method):
    """AmqpQueue methods raise RuntimeError (what measure()'s callers catch) on an AMQP or
    socket error, after reopening the connection for the next worker's run."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *a, **kw):
        try:
            return method(self, *a, **kw)
        except (self._amqp.exceptions.AMQPError, OSError) as exc:
            try:
                self.reconnect()
            except (self._amqp.exceptions.AMQPError, OSError):
                pass
            raise RuntimeError(f"RabbitMQ ({method.__name__}): {exc!r}") from exc
    return wrapper


class AmqpQueue:
    """Scenario amqp's broker side, for measure(): Celery's default queue `celery`
    (durable, bound with key `celery` to the durable direct exchange `celery`) in this
    run's own vhost on RabbitMQ; results stay in db 1 of the private Redis. One py-amqp
    connection (heartbeats off: it idles while a worker runs) and one channel."""

    QUEUE = EXCHANGE = "celery"

    def __init__(self, vhost: str, server: RedisServer):
        import amqp
        self._amqp = amqp
        self.vhost = vhost
        self.url = f"amqp://{AMQP_USER}:{AMQP_PASSWORD}@{AMQP_HOST}:{AMQP_PORT}/{vhost}"
        self.r1 = server.client(1)
        self.conn = self.ch = None
        try:
            self.reconnect()
        except (amqp.exceptions.AMQPError, OSError) as exc:
            self.r1.close()
            raise RuntimeError(f"cannot open vhost {vhost} on {AMQP_HOST}:{AMQP_PORT} as "
                               f"{AMQP_USER}: {exc!r}") from exc

    def reconnect(self) -> None:
        if self.conn is not None:
            try:
                self.conn.collect()  # drop the old socket without a handshake
            except Exception:  # noqa: BLE001
                pass
        self.conn = self._amqp.Connection(f"{AMQP_HOST}:{AMQP_PORT}", userid=AMQP_USER,
                                          password=AMQP_PASSWORD, virtual_host=self.vhost,
                                          heartbeat=0, connect_timeout=10)
        self.conn.connect()
        self.ch = self.conn.channel()

    @amqp_errors
    def declare(self) -> None:
        """Exchange, queue and binding as kombu declares Celery's default
        `Queue('celery', Exchange('celery', 'direct'), routing_key='celery')`; a
        mismatch with what is already declared is a channel error (an exception)."""
        self.ch.exchange_declare(self.EXCHANGE, "direct", durable=True, auto_delete=False)
        self.ch.queue_declare(self.QUEUE, durable=True, exclusive=False, auto_delete=False)
        self.ch.queue_bind(self.QUEUE, self.EXCHANGE, routing_key=self.QUEUE)

    @amqp_errors
    def counts(self) -> tuple[int, int]:
        """(messages ready, consumers) of queue `celery` (a passive queue_declare)."""
        ok = self.ch.queue_declare(self.QUEUE, passive=True)
        return ok.message_count, ok.consumer_count

    @amqp_errors
    def capture_template(self, args, env: dict, workdir: Path) -> dict:
        """One real envelope from Celery's producer bound to this vhost: a publisher
        subprocess (env CELERY_BROKER_URL = self.url) sends `example_task.apply_async((0,
        0), queue=<capture queue>)` and declares Celery's default queue with Celery's own
        Queue object; the message is read back here with basic_get."""
        pub = run_publisher("capture", args, env, workdir, "amqp")
        queue = pub["capture_queue"]
        self.declare()  # same arguments as Celery's: a no-op, or a channel error
        msg, deadline = None, time.monotonic() + 10.0
        while msg is None:
            msg = self.ch.basic_get(queue, no_ack=True)
            if msg is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no message in capture queue {queue} after 10 s")
                time.sleep(0.05)
        self.ch.queue_delete(queue)
        props = dict(msg.properties)
        headers = props.pop("application_headers", None) or {}
        body = msg.body if isinstance(msg.body, str) else msg.body.decode()
        return {"properties": props, "headers": headers, "body": body,
                "captured_from": {"exchange": msg.delivery_info.get("exchange"),
                                  "routing_key": msg.delivery_info.get("routing_key")}}

    @amqp_errors
    def flush(self) -> None:
        """Empty queue `celery`, no results (FLUSHALL of the private Redis)."""
        self.ch.queue_purge(self.QUEUE)
        self.r1.flushall()

    @amqp_errors
    def preload(self, template: dict, n: int, args_for=None) -> list[str]:
        """Publish n copies of `template` to exchange `celery`, key `celery`, with fresh
        ids (headers id / root_id / argsrepr, property correlation_id); message i gets
        positional args `args_for(i)` (default `[i, i]`). No publisher confirms: then
        wait until the queue holds exactly n messages. Returns the task ids in order."""
        if args_for is None:
            args_for = lambda i: [i, i]  # noqa: E731
        embed = json.loads(template["body"])[2]
        headers0, props0 = template["headers"], template["properties"]
        Message, publish = self._amqp.Message, self.ch.basic_publish
        ids = []
        for i in range(n):
            tid = str(uuid.uuid4())
            ids.append(tid)
            args = args_for(i)
            headers = dict(headers0, id=tid, root_id=tid, argsrepr=repr(tuple(args)),
                           kwargsrepr="{}")
            body = json.dumps([args, {}, embed]).encode()
            publish(Message(body, **dict(props0, application_headers=headers,
                                         correlation_id=tid)),
                    exchange=self.EXCHANGE, routing_key=self.QUEUE)
        deadline = time.monotonic() + 30.0
        while True:
            have = self.counts()[0]
            if have == n:
                return ids
            if have > n or time.monotonic() > deadline:
                raise RuntimeError(f"queue {self.QUEUE} holds {have} messages, wanted {n}")
            time.sleep(0.05)

    @amqp_errors
    def wait_consuming(self, worker: "Worker", timeout: float = 60.0) -> float:
        """Wait until queue `celery` has a consumer (the worker's basic_consume)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if not worker.alive():
                raise RuntimeError(f"{worker.label} exited early:\n{worker.log_tail()}")
            if self.counts()[1] > 0:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise RuntimeError(f"{worker.label} never started consuming (no consumer on queue "
                           f"{self.QUEUE} in {timeout}s):\n{worker.log_tail()}")

    @amqp_errors
    def after_run(self, out: dict) -> None:
        """Messages still ready in `celery` once the worker is gone (0 expected)."""
        out["queue_left_after_stop"] = self.counts()[0]

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 — the vhost is deleted next anyway
            pass
        self.r1.close()


# --------------------------------------------------------------------------- canvas / eta

POLL_S = 0.05  # result polling period of the canvas and eta scenarios


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []


# --------------------------------------------------------------------------- soak

# scenario `soak`: per round of --soak-batch task executions, this share of them in
# each kind (a chain is 3 executions, a chord 10 + 1, a retried flaky 2).
SOAK_MIX = (("plain", 0.70), ("flaky", 0.05), ("eta", 0.05), ("chain", 0.08),
            ("chord", 0.07), ("fail", 0.05))
SOAK_EXECUTIONS = {"plain": 1, "flaky": 2, "eta": 1, "chain": 3, "chord": 11, "fail": 1}
SOAK_ETA_S = 1.0  # countdown of the ETA tasks
SOAK_FLAKY_COUNTDOWN = 0.05  # flaky(1, countdown): one retry after 50 ms
SOAK_RSS_TARGET = 1.10  # issue 11: RSS at the end <= 1.10 x RSS after the first 10 %
SOAK_IDLE_S = 5.0  # idle time after the last task, before the leak check
SOAK_STALL_S = 120.0  # no task done for this long (while some are due): the run fails
SOAK_POLL_S = 0.25  # progress polling; a sample of the time series every 1 s
SOAK_PLAIN_CHECK_EVERY = 50  # every 50th plain and 10th ETA task checked; the others all
SOAK_ETA_CHECK_EVERY = 10
SOAK_LINE_EXECUTIONS = 1000  # the publisher reports its ids every ~1000 executions


def soak_round_counts(batch: int) -> dict:
    """Tasks (not executions) of each kind in a round of `batch` executions."""
    counts = {k: round(share * batch / SOAK_EXECUTIONS[k]) for k, share in SOAK_MIX
              if k != "plain"}
    counts["plain"] = batch - sum(SOAK_EXECUTIONS[k] * v for k, v in counts.items())
    if counts["plain"] < 0:
        raise SystemExit(f"--soak-batch {batch} is too small for the mix")
    return counts


def soak_rounds(args) -> int:
    return max(1, round(args.soak_tasks / args.soak_batch))


def drain_result_consumer(backend) -> int:
    """Read whatever waits on the Celery client's result pubsub connection (chord
    headers subscribe to their results even with task_join_will_block; the subscribe
    and unsubscribe replies and the results published to it are otherwise never read,
    and would pile up in Redis's output buffer for that client). Returns the replies
    read."""
    rc = getattr(backend, "result_consumer", None)
    ps = getattr(rc, "_pubsub", None)
    if ps is None:
        return 0
    n = 0
    lock = getattr(rc, "_locked", None)
    with (lock() if lock else contextlib.nullcontext()):
        while ps.connection is not None and ps.connection.can_read(timeout=0):
            ps.get_message(timeout=0)
            n += 1
    return n


def soak_publish(args, celery_app, example_task, flaky, fail, tsum, chain, chord,
                 group) -> dict:
    """Publisher side of scenario soak (in the publisher subprocess, results not
    subscribed to): soak_rounds() rounds of --soak-batch executions in the SOAK_MIX
    kinds, shuffled. Every ~SOAK_LINE_EXECUTIONS executions (and at the end of a round)
    one JSON line is appended to <publish-out>.rounds.jsonl: the result ids of those
    tasks (the flaky ids apart), their executions and what to check. After each round it
    waits until the broker holds fewer than 2 x batch messages (LLEN celery + HLEN
    unacked in db 0) before the next. No AsyncResult is kept beyond its round. Single
    tasks share one producer; chains and chords are applied as an application would."""
    import gc
    import resource
    r0 = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])
    counts = soak_round_counts(args.soak_batch)
    rounds = soak_rounds(args)
    limit = 2 * args.soak_batch
    backend = celery_app.backend
    totals = Counter()
    i = ids = drained = lines = 0
    waited = 0.0
    max_backlog = 0
    # One producer for the single tasks (~20 % faster than one from the pool per call).
    with open(args.publish_out + ".rounds.jsonl", "a") as f, \
            celery_app.producer_or_acquire() as producer:
        def report(rnd, keys, flakies, checks, executions):
            f.write(json.dumps({"round": rnd, "executions": executions, "keys": keys,
                                "flaky": flakies, "checks": checks}) + "\n")
            f.flush()
            return len(keys) + len(flakies)

        for rnd in range(rounds):
            kinds = [k for k, v in counts.items() for _ in range(v)]
            random.Random(rnd).shuffle(kinds)
            keys, flakies, checks = [], [], []
            n_plain = n_eta = executions = 0
            for kind in kinds:
                if executions >= SOAK_LINE_EXECUTIONS:
                    ids += report(rnd, keys, flakies, checks, executions)
                    lines += 1
                    keys, flakies, checks = [], [], []
                    executions = 0
                i += 1
                executions += SOAK_EXECUTIONS[kind]
                if kind == "plain":
                    res = example_task.apply_async((i, i), producer=producer)
                    keys.append(res.id)
                    n_plain += 1
                    if n_plain % SOAK_PLAIN_CHECK_EVERY == 1:
                        checks.append(["plain", res.id, 2 * i])
                elif kind == "eta":
                    sent = time.time()
                    res = example_task.apply_async((i, i), countdown=SOAK_ETA_S,
                                                   producer=producer)
                    keys.append(res.id)
                    n_eta += 1
                    if n_eta % SOAK_ETA_CHECK_EVERY == 1:
                        checks.append(["eta", res.id, 2 * i, sent + SOAK_ETA_S])
                elif kind == "flaky":
                    res = flaky.apply_async((1,), {"countdown": SOAK_FLAKY_COUNTDOWN},
                                            producer=producer)
                    flakies.append(res.id)  # checked by the bench as it counts them
                elif kind == "fail":
                    res = fail.apply_async(("boom",), producer=producer)
                    keys.append(res.id)
                    checks.append(["fail", res.id, None])
                elif kind == "chain":
                    res = chain(example_task.s(i, i), example_task.s(1),
                                example_task.s(1)).apply_async()
                    keys += [res.parent.parent.id, res.parent.id, res.id]
                    checks.append(["chain", res.id, 2 * i + 2])
                elif kind == "chord":
                    res = chord(group(example_task.s(i, j) for j in range(10)),
                                tsum.s()).apply_async()
                    keys += [r.id for r in res.parent.results] + [res.id]
                    checks.append(["chord", res.id, 10 * i + 45])
                totals[kind] += 1
            res = None
            gc.collect()  # AsyncResult cycles: __del__ unsubscribes (chord headers)
            drained += drain_result_consumer(backend)
            ids += report(rnd, keys, flakies, checks, executions)
            lines += 1
            t = time.monotonic()
            while True:
                backlog = r0.llen("celery") + r0.hlen("unacked")
                max_backlog = max(max_backlog, backlog)
                if backlog < limit:
                    break
                time.sleep(0.05)
            waited += time.monotonic() - t
    r0.close()
    return {"rounds": rounds, "lines": lines, "batch": args.soak_batch, "round_counts": counts,
            "totals": dict(totals), "executions": rounds * args.soak_batch, "ids": ids,
            "waited_s": waited, "max_backlog": max_backlog, "pubsub_replies_drained": drained,
            "publisher_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def publisher_main(args) -> int:
    """Child-process entry (`bench.py --publish canvas|eta|capture|latency|soak
    --publish-out FILE`): publish with the real Celery producer, write the ids and
    expected results (latency: the measured round trips; soak: totals, its rounds go to
    FILE.rounds.jsonl as they are published) as JSON."""
    if args.publish != "latency":  # latency calls .get(), which this would forbid
        # Plain apply_async then skips subscribing to each result's pubsub channel
        # (as inside a worker); group/chord headers still subscribe, which is why this
        # runs in a throwaway process.
        from celery._state import _set_task_join_will_block
        _set_task_join_will_block(True)
    from celery import chain, chord, group
    from app.workers.celery_app import celery_app
    from app.workers.tasks import example_task
    from pyworker_tasks import tsum  # rcw.testing.tsum, same name as our test task

    keep = []  # AsyncResults stay referenced until os._exit (no __del__ unsubscribes)
    out: dict = {}
    t0 = time.monotonic()
    if args.publish == "soak":
        from pyworker_tasks import fail, flaky
        out.update(soak_publish(args, celery_app, example_task, flaky, fail, tsum,
                                chain, chord, group))
    elif args.publish == "canvas":
        chains, chords = [], []
        for i in range(args.chains):
            res = chain(example_task.s(i, i), example_task.s(1), example_task.s(1)).apply_async()
            keep.append(res)
            chains.append([res.id, 2 * i + 2])
        for i in range(args.chords):
            res = chord(group(example_task.s(i, j) for j in range(10)), tsum.s()).apply_async()
            keep.append(res)
            chords.append([res.id, sum(i + j for j in range(10))])
        out.update(chains=chains, chords=chords)
    elif args.publish == "eta":
        eta = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=args.eta_delay)
        tasks = []
        for i in range(args.eta_tasks):
            res = example_task.apply_async((i, i), eta=eta)
            keep.append(res)
            tasks.append([res.id, 2 * i])
        out.update(eta=eta.isoformat(), tasks=tasks)
    elif args.publish == "capture":
        # Scenario amqp: one message from the real producer on CELERY_BROKER_URL
        # (RabbitMQ) into a capture queue of its own (Celery declares it: direct exchange
        # of the same name); then Celery's default queue declared with Celery's own
        # Queue object, the topology both workers consume from.
        queue = f"bench-capture-{uuid.uuid4().hex[:8]}"
        celery_app.tasks[TASK].apply_async((0, 0), queue=queue)
        with celery_app.connection_for_write() as conn:
            celery_app.amqp.queues[celery_app.conf.task_default_queue](
                conn.default_channel).declare()
        out.update(capture_queue=queue)
    elif args.publish == "latency":
        # Scenario latency: sequential round trips as a client makes them (delay() then
        # get(): the result consumer subscribes to the result's channel, the worker
        # stores and publishes it); warmup calls first, not kept.
        latencies, sends, bad, clock = [], [], [], time.perf_counter
        counting = count_pubsub_reads()
        drained = counting or [0]
        replies = []
        for i in range(args.latency_warmup + args.latency_calls):
            drained[0] = 0
            t = clock()
            res = example_task.delay(i, i)
            sent = clock()
            value = res.get(timeout=10)
            elapsed = clock() - t
            if value != 2 * i:
                bad.append([i, value])
            if i >= args.latency_warmup:
                latencies.append(elapsed * 1000.0)
                sends.append((sent - t) * 1000.0)
                replies.append(drained[0])
        out.update(warmup=args.latency_warmup, calls=args.latency_calls,
                   latencies_ms=latencies, send_ms=sends, bad=bad[:20], bad_count=len(bad),
                   pubsub_replies=replies if counting else None)
        out["wire"] = wire_round_trips(args)
    else:
        raise SystemExit(f"unknown --publish {args.publish!r}")
    out["publish_s"] = time.monotonic() - t0
    Path(args.publish_out).write_text(json.dumps(out))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown (result consumers unsubscribing, pools)


REPLIES_PER_CALL = 3  # subscribe confirmation, the result, unsubscribe confirmation


def count_pubsub_reads() -> list | None:
    """[replies read]: wraps the Redis result consumer's `_drain_one` (Celery
    5.7: one pub/sub reply read per call) to count the replies each get()
    reads. A get() that finds the result already stored returns without
    reading the pub/sub connection, whose REPLIES_PER_CALL replies then wait
    for the next get() that has to listen: that one reads the whole backlog
    first. None on a Celery without `_drain_one`."""
    counter = [0]
    try:
        from celery.backends import redis as celery_redis
        orig = celery_redis.ResultConsumer._drain_one
    except (ImportError, AttributeError):
        return None

    def drain_one(*a, **kw):
        read = orig(*a, **kw)
        if read:
            counter[0] += 1
        return read

    celery_redis.ResultConsumer._drain_one = drain_one
    return counter


def wire_round_trips(args) -> dict:
    """The worker's share of a round trip, without the Celery client's own cost
    (its delay() alone: 0.5 ms p50 on the 2026-12-07 bench VM): one captured envelope,
    copied with fresh ids (`fresh_copy`, as `preload`), LPUSHed one at a time by
    redis-py, with `celery-task-meta-*` PSUBSCRIBEd beforehand; a round trip ends when the result's
    PUBLISH arrives. Warmup round trips first, not kept."""
    broker = os.environ["CELERY_BROKER_URL"]
    template = capture_template(broker, os.environ["CELERY_RESULT_BACKEND"])
    r0 = redis.Redis.from_url(broker)
    sub = r0.pubsub(ignore_subscribe_messages=True)
    sub.psubscribe("celery-task-meta-*")
    while sub.get_message(timeout=1.0) is not None:
        pass
    latencies, bad, clock = [], 0, time.perf_counter
    for i in range(args.latency_warmup + args.latency_calls):
        tid, raw = fresh_copy(template, [i, i])
        channel = f"celery-task-meta-{tid}".encode()
        t = clock()
        r0.lpush("celery", raw)
        while True:
            msg = sub.get_message(timeout=10.0)
            if msg is None:
                raise SystemExit(f"wire round trip {i}: no result published in 10 s")
            if msg["channel"] == channel:
                break
        elapsed = clock() - t
        if json.loads(msg["data"]).get("result") != 2 * i:
            bad += 1
        if i >= args.latency_warmup:
            latencies.append(elapsed * 1000.0)
    sub.close()
    r0.close()
    return {"latencies_ms": latencies, "bad_count": bad}


def start_publisher(kind: str, args, env: dict, workdir: Path, label: str):
    """The publisher subprocess (`--publish kind`): (Popen, its JSON output path, its
    log path)."""
    out_path = workdir / f"publish-{kind}-{uuid.uuid4().hex[:8]}.json"
    log_path = workdir / f"{label}-{kind}-publisher.log"
    argv = [sys.executable, str(Path(__file__).resolve()), "--publish", kind,
            "--publish-out", str(out_path), "--chains", str(args.chains),
            "--chords", str(args.chords), "--eta-tasks", str(args.eta_tasks),
            "--eta-delay", repr(args.eta_delay),
            "--latency-warmup", str(args.latency_warmup),
            "--latency-calls", str(args.latency_calls),
            "--soak-tasks", str(args.soak_tasks), "--soak-batch", str(args.soak_batch)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, env=env, cwd=str(ROOT / "python"),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, out_path, log_path


def kill_publisher(proc) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait(timeout=10)


def publisher_output(kind: str, rc, out_path: Path, log_path: Path) -> dict:
    if rc != 0 or not out_path.is_file():
        raise RuntimeError(f"{kind} publisher failed (exit {rc}):\n"
                           f"{log_path.read_text(errors='replace')[-3000:]}")
    return json.loads(out_path.read_text())


def run_publisher(kind: str, args, env: dict, workdir: Path, label: str) -> dict:
    proc, out_path, log_path = start_publisher(kind, args, env, workdir, label)
    try:
        rc = proc.wait(timeout=600)
    finally:
        kill_publisher(proc)
    return publisher_output(kind, rc, out_path, log_path)


def result_metas(r1: redis.Redis, ids: list[str], chunk: int = 1000) -> list:
    """The decoded result meta of each id (None if missing), in order."""
    out = []
    for k in range(0, len(ids), chunk):
        vals = r1.mget([f"celery-task-meta-{t}" for t in ids[k:k + chunk]])
        out.extend(None if v is None else json.loads(v) for v in vals)
    return out


def count_existing(r1: redis.Redis, keys: list[str], chunk: int = 5000) -> int:
    return sum(r1.exists(*keys[k:k + chunk]) for k in range(0, len(keys), chunk))


def backend_census(r1: redis.Redis) -> dict:
    """All task results in db 1 by status, plus any other keys (chord join leftovers)."""
    statuses: dict = {}
    keys = [k for k in r1.scan_iter(count=5000)]
    metas = [k for k in keys if k.startswith(b"celery-task-meta-")]
    other: dict = {}  # e.g. chord join keys `celery-taskset-meta-<group>.<suffix>`
    for k in keys:
        if not k.startswith(b"celery-task-meta-"):
            kind = k.decode(errors="replace").rsplit("-", 1)[-1].split(".", 1)[-1]
            other[kind] = other.get(kind, 0) + 1
    for k in range(0, len(metas), 1000):
        for v in r1.mget(metas[k:k + 1000]):
            if v is not None:
                st = json.loads(v).get("status")
                statuses[st] = statuses.get(st, 0) + 1
    return {"results_stored": len(metas), "statuses": statuses, "other_keys": other}


def measure_canvas(label: str, argv: list[str], env: dict, server: RedisServer, args,
                   workdir: Path) -> dict:
    r0, r1 = server.client(0), server.client(1)
    n_chains, n_chords = args.chains, args.chords
    n_tasks = 3 * n_chains + 11 * n_chords
    out: dict = {"worker": label, "argv": argv, "chains": n_chains, "chords": n_chords,
                 "workflows": n_chains + n_chords, "tasks": n_tasks,
                 "loadavg_before": loadavg()}
    try:
        r0.flushall()
        pub = run_publisher("canvas", args, env, workdir, label)
        out["publish_s"] = pub["publish_s"]
        queued = r0.llen("celery")
        if queued != n_chains + 10 * n_chords:
            raise RuntimeError(f"published {queued} messages, wanted {n_chains + 10 * n_chords}")
        # (db 1 already holds each chord's size key, `celery-taskset-meta-<group>.s`)
        if next(r1.scan_iter(match="celery-task-meta-*", count=5000), None) is not None:
            raise RuntimeError("results stored before the worker started")
        out["chord_keys_at_publish"] = r1.dbsize()
        finals = pub["chains"] + pub["chords"]
        keys = [f"celery-task-meta-{tid}" for tid, _ in finals]

        peak, done = 0, 0
        first = None  # when the first task result (any step) was seen
        t0 = time.monotonic()
        w = Worker(label, argv, env, workdir / f"{label}-canvas.log")
        try:
            while True:
                done = count_existing(r1, keys)
                now = time.monotonic()
                peak = max(peak, tree_rss_kib(w.proc.pid)[0])
                if first is None and r1.dbsize() > out["chord_keys_at_publish"]:
                    first = now
                if done >= len(keys):
                    t1 = now
                    break
                if not w.alive():
                    raise RuntimeError(f"{label} exited with {w.proc.returncode} after "
                                       f"{done}/{len(keys)} workflows:\n{w.log_tail()}")
                if now - t0 > args.timeout:
                    raise RuntimeError(f"{label}: only {done}/{len(keys)} workflows done after "
                                       f"{args.timeout}s:\n{w.log_tail()}")
                time.sleep(POLL_S)
        finally:
            w.stop()

        out["wall_s"] = t1 - t0
        out["workflows_per_s"] = out["workflows"] / out["wall_s"]
        out["tasks_per_s"] = n_tasks / out["wall_s"]
        out["first_result_s"] = first - t0
        # Only meaningful when the first result was seen before the last poll.
        out["steady_workflows_per_s"] = out["workflows"] / (t1 - first) if t1 > first else None
        out["peak_rss_kib"] = peak

        def mismatches(pairs):
            bad = 0
            for (tid, want), meta in zip(pairs, result_metas(r1, [t for t, _ in pairs])):
                if meta is None or meta.get("status") != "SUCCESS" or meta.get("result") != want:
                    bad += 1
            return bad

        out["chain_mismatches"] = mismatches(pub["chains"])
        out["chord_mismatches"] = mismatches(pub["chords"])
        out.update(backend_census(r1))
        out["loadavg_after"] = loadavg()
        return out
    finally:
        r0.close()
        r1.close()


def parse_date(s: str) -> dt.datetime:
    d = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    return d if d.tzinfo else d.replace(tzinfo=dt.timezone.utc)


def measure_eta(label: str, argv: list[str], env: dict, server: RedisServer, args,
                workdir: Path) -> dict:
    r0, r1 = server.client(0), server.client(1)
    n = args.eta_tasks
    out: dict = {"worker": label, "argv": argv, "tasks": n, "eta_delay_s": args.eta_delay,
                 "loadavg_before": loadavg()}
    try:
        r0.flushall()
        pub = run_publisher("eta", args, env, workdir, label)
        eta = parse_date(pub["eta"])
        # The due moment on our monotonic clock.
        t_due = time.monotonic() + (eta.timestamp() - time.time())
        out["publish_s"] = pub["publish_s"]
        out["eta"] = pub["eta"]
        queued = r0.llen("celery")
        if queued != n:
            raise RuntimeError(f"published {queued} messages, wanted {n}")
        t0 = time.monotonic()
        out["slack_s"] = t_due - t0  # worker start -> due
        if out["slack_s"] <= 0:
            raise RuntimeError(f"publishing {n} ETA tasks took {pub['publish_s']:.1f}s, past "
                               f"the due moment; raise --eta-delay")

        peak, done, done_before_due = 0, 0, 0
        at_due = None
        first = None
        fetched_all = None  # worker start -> queue empty (all ETA messages held)
        w = Worker(label, argv, env, workdir / f"{label}-eta.log")
        try:
            while True:
                now = time.monotonic()
                done = r1.dbsize()
                peak = max(peak, tree_rss_kib(w.proc.pid)[0])
                if now < t_due:
                    done_before_due = max(done_before_due, done)
                    if fetched_all is None and r0.llen("celery") == 0:
                        fetched_all = now - t0
                elif at_due is None:
                    at_due = {"queued_at_due": r0.llen("celery"),
                              "held_unacked_at_due": r0.hlen("unacked"),
                              "done_at_due": done, "sampled_after_due_s": now - t_due}
                if done and first is None and now >= t_due:
                    first = now
                if done >= n:
                    t1 = now
                    break
                if not w.alive():
                    raise RuntimeError(f"{label} exited with {w.proc.returncode} after "
                                       f"{done}/{n} results:\n{w.log_tail()}")
                if now - t0 > args.timeout:
                    raise RuntimeError(f"{label}: only {done}/{n} results after "
                                       f"{args.timeout}s:\n{w.log_tail()}")
                time.sleep(POLL_S if now >= t_due else min(0.1, t_due - now))
        finally:
            w.stop()

        if at_due is None:  # everything was stored before the due moment
            at_due = {"queued_at_due": None, "held_unacked_at_due": None, "done_at_due": n,
                      "sampled_after_due_s": None}
        out.update(at_due)
        out["done_before_due"] = done_before_due
        out["fetched_all_s"] = fetched_all
        out["drain_s"] = t1 - t_due
        out["tasks_per_s"] = n / out["drain_s"] if out["drain_s"] > 0 else float("nan")
        out["first_result_after_due_s"] = None if first is None else first - t_due
        out["peak_rss_kib"] = peak

        early = bad = missing = 0
        dones = []
        for (tid, want), meta in zip(pub["tasks"], result_metas(r1, [t for t, _ in pub["tasks"]])):
            if meta is None:
                missing += 1
                continue
            if meta.get("status") != "SUCCESS" or meta.get("result") != want:
                bad += 1
            if meta.get("date_done"):
                done_at = parse_date(meta["date_done"])
                dones.append(done_at)
                if done_at < eta:
                    early += 1
            else:
                bad += 1
        out["early"] = early
        out["mismatches"] = bad
        out["missing"] = missing
        # From the stored date_done (the worker's clock, same machine).
        out["date_done_min_after_eta_s"] = (min(dones) - eta).total_seconds() if dones else None
        out["date_done_max_after_eta_s"] = (max(dones) - eta).total_seconds() if dones else None
        out.update(backend_census(r1))
        out["loadavg_after"] = loadavg()
        return out
    finally:
        r0.close()
        r1.close()


# --------------------------------------------------------------------------- latency

LATENCY_P50_TARGET_MS = 0.5  # issue 11
LATENCY_P99_TARGET_MS = 2.0


_UUID_RE = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
                      rb"|[0-9a-f]{32}")
_STATUS_RE = re.compile(rb'"status":\s*"([A-Z_]+)"')
# db 0 after a soak: kombu's binding tables (`_kombu.binding.<exchange>`,
# `_kombu.binding_permanent.<exchange>`, `_kombu.binding_deadlines`) and its unacked
# mutex (held with an expiry)
SOAK_DB0_ALLOWED = ("_kombu.binding", "unacked_mutex")
SOAK_DB0_EMPTY = ("celery", "unacked", "unacked_index")  # present = not empty = leak
# db 1: task results and Celery's chord keys (`celery-taskset-meta-<group>` and its
# `.j .t .s .d` state, deleted when the callback is sent, and the `.c` claim / done
# marker, left with a 300 s expiry), every one with a TTL.
SOAK_DB1_ALLOWED = ("celery-task-meta-", "celery-taskset-meta-")


def key_pattern(key: bytes) -> str:
    """The key with every uuid (or 32-hex id) replaced by `*`."""
    return _UUID_RE.sub(b"*", key).decode(errors="replace")


def soak_census(r: redis.Redis, db: int, chunk: int = 5000) -> dict:
    """Every key of the db by pattern: {pattern: {keys, no_ttl, ttl_min, ttl_max}},
    the statuses of the `celery-task-meta-*` values, and for db 0 the sizes of the
    bookkeeping keys that must be empty."""
    patterns: dict = {}
    statuses = Counter()

    def flush(keys):
        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.ttl(k)
        ttls = pipe.execute()
        metas = [k for k in keys if k.startswith(b"celery-task-meta-")]
        if metas:
            for v in r.mget(metas):
                if v is not None:
                    m = _STATUS_RE.search(v)
                    statuses[m.group(1).decode() if m else "?"] += 1
        for k, ttl in zip(keys, ttls):
            p = patterns.setdefault(key_pattern(k), {"keys": 0, "no_ttl": 0,
                                                     "ttl_min": None, "ttl_max": None})
            p["keys"] += 1
            if ttl == -1:
                p["no_ttl"] += 1
            elif ttl >= 0:
                p["ttl_min"] = ttl if p["ttl_min"] is None else min(p["ttl_min"], ttl)
                p["ttl_max"] = ttl if p["ttl_max"] is None else max(p["ttl_max"], ttl)

    keys = []
    for k in r.scan_iter(count=chunk):
        keys.append(k)
        if len(keys) >= chunk:
            flush(keys)
            keys = []
    if keys:
        flush(keys)
    out = {"db": db, "keys": sum(p["keys"] for p in patterns.values()),
           "patterns": patterns, "statuses": dict(statuses)}
    if db == 0:
        pipe = r.pipeline(transaction=False)
        pipe.llen("celery")
        pipe.hlen("unacked")
        pipe.zcard("unacked_index")
        out["celery_len"], out["unacked_len"], out["unacked_index_len"] = pipe.execute()
    return out


def soak_leaks(census0: dict, census1: dict) -> dict:
    """The keys counted as leaked: db 0 keys other than kombu's bindings and mutex, or
    `celery` / `unacked` / `unacked_index` (present only when not empty); db 1 keys
    outside SOAK_DB1_ALLOWED, or without a TTL. {pattern: count} per db."""
    leaks0 = {p: v["keys"] for p, v in census0["patterns"].items()
              if not p.startswith(SOAK_DB0_ALLOWED[0]) and p != SOAK_DB0_ALLOWED[1]}
    leaks1 = {}
    for p, v in census1["patterns"].items():
        n = v["keys"] if not p.startswith(SOAK_DB1_ALLOWED) else v["no_ttl"]
        if n:
            leaks1[p] = n
    return {"db0": leaks0, "db1": leaks1,
            "total": sum(leaks0.values()) + sum(leaks1.values())}


def soak_check_round(r1: redis.Redis, rd: dict, bad: Counter, examples: list,
                     checked: Counter) -> None:
    """The checks the publisher listed in one of its lines (all chain ends, chord callbacks,
    failures, and every 50th plain / 10th ETA task; the flaky ones are checked as they
    are counted)."""
    checks = rd["checks"]
    metas = result_metas(r1, [c[1] for c in checks])
    for c, meta in zip(checks, metas):
        kind, want = c[0], c[2]
        checked[kind] += 1
        if kind == "fail":
            ok = meta is not None and meta.get("status") == "FAILURE" and \
                isinstance(meta.get("result"), dict) and \
                meta["result"].get("exc_type") == "ValueError"
        else:
            ok = meta is not None and meta.get("status") == "SUCCESS" and \
                meta.get("result") == want
            if ok and kind == "eta":
                ok = parse_date(meta["date_done"]).timestamp() >= c[3] - 0.001
        if not ok:
            bad[kind] += 1
            if len(examples) < 10:
                examples.append({"kind": kind, "id": c[1], "want": want,
                                 "got": None if meta is None else
                                 {k: meta.get(k) for k in ("status", "result", "date_done")}})


def proc_state(pid: int):
    """(state letter, start time) of a process from /proc/<pid>/stat, None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        f = stat[stat.rindex(")") + 2:].split()
        return f[0], int(f[19])
    except (OSError, ValueError, IndexError):
        return None


def soak_round_done(r1: redis.Redis, rd: dict, chunk: int = 5000) -> tuple:
    """(executions of a publisher line done so far, flaky tasks whose result is wrong):
    one per stored result (EXISTS), a flaky task two once its result is SUCCESS
    (one while it is RETRY)."""
    keys = rd["meta_keys"]
    done = sum(r1.exists(*keys[k:k + chunk]) for k in range(0, len(keys), chunk))
    bad_flaky = []
    if rd["flaky"]:
        for tid, meta in zip(rd["flaky"], result_metas(r1, rd["flaky"])):
            if meta is None:
                continue
            done += 1
            if meta.get("status") == "SUCCESS":
                done += 1
                if meta.get("result") != {"attempts": 2}:
                    bad_flaky.append((tid, meta.get("result")))
            elif meta.get("status") != "RETRY":
                bad_flaky.append((tid, meta.get("status")))
    return done, bad_flaky


def measure_soak(label: str, argv: list[str], env: dict, server: RedisServer, args,
                 workdir: Path) -> dict:
    """Scenario soak, our worker only: see the module docstring."""
    r0, r1 = server.client(0), server.client(1)
    try:
        return soak_run(label, argv, env, r0, r1, args, workdir)
    finally:
        r0.close()
        r1.close()


def soak_run(label: str, argv: list[str], env: dict, r0: redis.Redis, r1: redis.Redis,
             args, workdir: Path) -> dict:
    batch, rounds = args.soak_batch, soak_rounds(args)
    total = rounds * batch
    timeout = max(args.timeout, total / 250)
    out: dict = {"worker": label, "argv": argv, "tasks": total, "batch": batch,
                 "rounds": rounds, "round_counts": soak_round_counts(batch),
                 "loadavg_before": loadavg()}
    samples: list = []  # one per second
    marks: dict = {}  # decile (1..10) -> the first sample with done >= decile * 10 %
    bad, checked, examples = Counter(), Counter(), []
    pending: list = []  # lines (~1000 executions) read from the publisher, not all done
    publisher = None
    w = None
    try:
        r0.flushall()
        w = Worker(label, argv, env, workdir / f"{label}-soak.log")
        out["startup_s"] = wait_brpop(r0, w)
        time.sleep(2.0)
        out["idle_rss_start_kib"], out["idle_processes_start"] = tree_rss_kib(w.proc.pid)
        out["idle_rss_start_main_kib"] = rss_kib(w.proc.pid)
        publisher, pub_out, pub_log = start_publisher("soak", args, env, workdir, label)
        rounds_path = Path(str(pub_out) + ".rounds.jsonl")
        rounds_file = None
        buf = b""
        pub = None  # the publisher's final output, once it exited
        lines_read = lines_done = ids = 0
        done_full = 0  # executions of the lines all done
        done = last_done = 0
        tree_prev, tree_changes, zombies_max = None, 0, 0
        t0 = time.monotonic()
        t_progress = t0
        t_sample = t0 - 1.0
        while True:
            if rounds_file is None and rounds_path.exists():
                rounds_file = open(rounds_path, "rb")
            if rounds_file is not None:
                buf += rounds_file.read()
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    rd = json.loads(line)
                    rd["meta_keys"] = [f"celery-task-meta-{t}" for t in rd.pop("keys")]
                    ids += len(rd["meta_keys"]) + len(rd["flaky"])
                    pending.append(rd)
                    lines_read += 1
            partial = 0
            for rd in list(pending):
                d, bad_flaky = soak_round_done(r1, rd)
                if d >= rd["executions"]:
                    for tid, got in bad_flaky:
                        bad["flaky"] += 1
                        if len(examples) < 10:
                            examples.append({"kind": "flaky", "id": tid,
                                             "want": {"attempts": 2}, "got": got})
                    checked["flaky"] += len(rd["flaky"])
                    soak_check_round(r1, rd, bad, examples, checked)
                    pending.remove(rd)
                    lines_done += 1
                    done_full += rd["executions"]
                else:
                    partial += d
            done = done_full + partial
            now = time.monotonic()
            if done != last_done:
                last_done, t_progress = done, now
            pids = tree_pids(w.proc.pid)
            by_proc = [rss_kib(p) for p in pids]
            states = {p: proc_state(p) for p in pids}
            zombies = sum(1 for st in states.values() if st and st[0] in "ZX")
            zombies_max = max(zombies_max, zombies)
            tree = {(p, st[1]) for p, st in states.items() if st}
            if tree_prev is not None and tree != tree_prev:
                tree_changes += 1  # a process of the tree exited, or a new one started
            tree_prev = tree
            pipe = r0.pipeline(transaction=False)
            pipe.llen("celery")
            pipe.hlen("unacked")
            pipe.dbsize()
            queued, unacked, keys0 = pipe.execute()
            sample = {"t": round(now - t0, 3), "done": done, "rss_kib": sum(by_proc),
                      "rss_main_kib": by_proc[0] if by_proc else 0, "processes": len(pids),
                      "zombies": zombies,
                      "queued": queued, "unacked": unacked, "db0_keys": keys0,
                      "db1_keys": r1.dbsize(),
                      "redis_used_kib": r0.info("memory")["used_memory"] // 1024,
                      "publisher_rss_kib": rss_kib(publisher.pid) if pub is None else None}
            for d in range(1, 11):
                if d not in marks and done * 10 >= total * d:
                    marks[d] = sample
                    print(f"   {d * 10:>3} %: {done} executions after {sample['t']:.0f}s, RSS "
                          f"{fmt_mib(sample['rss_kib'])} MiB (main "
                          f"{fmt_mib(sample['rss_main_kib'])}), queue {queued}, unacked "
                          f"{unacked}, db 1 {sample['db1_keys']} keys", flush=True)
            if now - t_sample >= 1.0:
                samples.append(sample)
                t_sample = now
            if pub is None and publisher.poll() is not None:
                pub = publisher_output("soak", publisher.returncode, pub_out, pub_log)
                out["publish_s"] = now - t0
                continue  # read the last rounds before deciding
            if pub is not None and lines_read >= pub["lines"] and not pending:
                t_end = now
                if samples[-1] is not sample:
                    samples.append(sample)
                break
            if not w.alive():
                raise RuntimeError(f"{label} exited with {w.proc.returncode} after {done}/"
                                   f"{total} executions:\n{w.log_tail()}")
            if now - t_progress > SOAK_STALL_S and pending:
                raise RuntimeError(f"{label}: no progress for {SOAK_STALL_S:g}s at {done}/"
                                   f"{total} executions ({len(pending)} id lines pending, "
                                   f"queue {queued}, unacked {unacked}):\n{w.log_tail()}")
            if now - t0 > timeout:
                raise RuntimeError(f"{label}: only {done}/{total} executions after "
                                   f"{timeout:.0f}s:\n{w.log_tail()}")
            time.sleep(SOAK_POLL_S)
        if rounds_file is not None:
            rounds_file.close()
        out.update(pub)
        out["wall_s"] = t_end - t0
        out["tasks_per_s"] = total / out["wall_s"]
        out["tree_changes"], out["zombies_max"] = tree_changes, zombies_max
        out["ids_tracked"] = ids
        # Idle: the broker must be empty; then the RSS once more, and the worker stopped.
        time.sleep(SOAK_IDLE_S)
        pipe = r0.pipeline(transaction=False)
        pipe.llen("celery")
        pipe.hlen("unacked")
        pipe.zcard("unacked_index")
        out["idle_queued"], out["idle_unacked"], out["idle_unacked_index"] = pipe.execute()
        out["idle_rss_end_kib"], out["idle_processes_end"] = tree_rss_kib(w.proc.pid)
        out["idle_rss_end_main_kib"] = rss_kib(w.proc.pid)
    finally:
        if publisher is not None:
            kill_publisher(publisher)
        if w is not None:
            w.stop()
            out["leftovers_killed"] = w.leftovers_killed
            out["stop_timeouts"] = int(w.stop_timed_out)
    out["samples"] = samples
    out["marks"] = {str(d): s for d, s in sorted(marks.items())}
    first, last = marks[1], marks[10]
    out["rss_at_10pct_kib"] = first["rss_kib"]
    out["rss_end_kib"] = last["rss_kib"]
    out["rss_max_kib"] = max(s["rss_kib"] for s in samples)
    out["rss_main_at_10pct_kib"] = first["rss_main_kib"]
    out["rss_main_end_kib"] = last["rss_main_kib"]
    out["rss_main_max_kib"] = max(s["rss_main_kib"] for s in samples)
    out["rss_ratio"] = last["rss_kib"] / first["rss_kib"] if first["rss_kib"] else None
    out["rss_main_ratio"] = last["rss_main_kib"] / first["rss_main_kib"] \
        if first["rss_main_kib"] else None
    # After the 10 % mark: the growth per 100,000 executions (least squares).
    tail = [s for s in samples if s["done"] >= first["done"]]
    out["rss_slope_kib_per_100k"] = slope([s["done"] for s in tail],
                                          [s["rss_kib"] for s in tail], 100000)
    out["checked"] = dict(checked)
    out["bad"] = dict(bad)
    out["bad_examples"] = examples
    census0, census1 = soak_census(r0, 0), soak_census(r1, 1)
    out["census"] = {"db0": census0, "db1": census1}
    out["leaks"] = soak_leaks(census0, census1)
    fails = out["totals"].get("fail", 0)
    out["expected_results"] = {"celery-task-meta": ids, "SUCCESS": ids - fails,
                               "FAILURE": fails}
    out["loadavg_after"] = loadavg()
    return out


def slope(xs: list, ys: list, per: float):
    """Least-squares slope of ys over xs, times `per` (None with fewer than 3 points)."""
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return per * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else None


def percentile(values: list, p: float):
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def measure_latency(label: str, argv: list[str], env: dict, server: RedisServer, args,
                    workdir: Path) -> dict:
    """Worker idle on an empty queue, then a client subprocess (`--publish latency`)
    makes warmup + calls sequential `example_task.delay(i, i).get()` round trips."""
    queue = RedisQueue(server)
    r1 = server.client(1)
    out: dict = {"worker": label, "argv": argv, "warmup": args.latency_warmup,
                 "calls": args.latency_calls, "loadavg_before": loadavg()}
    try:
        queue.flush()
        w = Worker(label, argv, env, workdir / f"{label}-latency.log")
        try:
            out["startup_s"] = queue.wait_consuming(w)
            time.sleep(1.0)
            t0 = time.monotonic()
            pub = run_publisher("latency", args, env, workdir, label)
            out["client_s"] = time.monotonic() - t0
            if not w.alive():
                raise RuntimeError(f"{label} exited with {w.proc.returncode} during the "
                                   f"round trips:\n{w.log_tail()}")
            out["rss_after_kib"] = tree_rss_kib(w.proc.pid)[0]
        finally:
            w.stop()
        out["leftovers_killed"] = w.leftovers_killed
        lat = pub["latencies_ms"]
        out.update(measured=len(lat), bad=pub["bad_count"], bad_sample=pub["bad"],
                   results_stored=r1.dbsize(),
                   p50_ms=percentile(lat, 50), p90_ms=percentile(lat, 90),
                   p99_ms=percentile(lat, 99), max_ms=max(lat) if lat else None,
                   min_ms=min(lat) if lat else None,
                   mean_ms=sum(lat) / len(lat) if lat else None,
                   send_p50_ms=percentile(pub["send_ms"], 50),
                   **backlog_stats(lat, pub.get("pubsub_replies")),
                   latencies_ms=[round(x, 4) for x in lat])
        wire = pub["wire"]["latencies_ms"]
        out.update(wire_p50_ms=percentile(wire, 50), wire_p99_ms=percentile(wire, 99),
                   wire_bad=pub["wire"]["bad_count"],
                   wire_latencies_ms=[round(x, 4) for x in wire])
        out["bad"] += out["wire_bad"]
        out["loadavg_after"] = loadavg()
        return out
    finally:
        queue.flush()
        queue.close()
        r1.close()


def backlog_stats(lat: list, replies) -> dict:
    """How many get()s found their result stored without reading pub/sub, the
    most replies one get() read, and the p99 of the get()s that read no backlog
    (at most their own REPLIES_PER_CALL)."""
    if not replies or len(replies) != len(lat):
        return {}
    clean = [x for x, n in zip(lat, replies) if n <= REPLIES_PER_CALL]
    return {"by_key_pct": 100.0 * sum(1 for n in replies if n == 0) / len(replies),
            "max_backlog": max(replies), "p99_no_backlog_ms": percentile(clean, 99)}


def print_latency(results: list, failures: list) -> None:
    r0 = results[0]
    print(f"\nlatency: {r0['calls']} sequential round trips example_task.delay(i, i).get() "
          f"of the real Celery client (after {r0['warmup']} warmup calls), worker idle before")
    head = (f"{'worker':<28} {'calls':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
            f"{'max ms':>8} {'mean ms':>8} {'min ms':>8} {'delay() p50':>12} {'bad':>5} "
            f"{'stored':>7} {'wire p50':>9} {'wire p99':>9}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['worker']:<28} {r['measured']:>6} {fmt_opt(r['p50_ms'], '.3f'):>8} "
              f"{fmt_opt(r['p90_ms'], '.3f'):>8} {fmt_opt(r['p99_ms'], '.3f'):>8} "
              f"{fmt_opt(r['max_ms'], '.3f'):>8} {fmt_opt(r['mean_ms'], '.3f'):>8} "
              f"{fmt_opt(r['min_ms'], '.3f'):>8} {fmt_opt(r['send_p50_ms'], '.3f'):>12} "
              f"{r['bad']:>5} {r['results_stored']:>7} {fmt_opt(r['wire_p50_ms'], '.3f'):>9} "
              f"{fmt_opt(r['wire_p99_ms'], '.3f'):>9}")
    print("(round trip = time.perf_counter before delay() -> get() returned, in the client "
          "subprocess; percentiles by nearest rank; delay() p50 = the client's own share, "
          "before get(): publishing and subscribing to the result; bad = result != 2i; "
          "stored = results in db 1, warmup included; wire = the same round trips made with "
          "redis-py alone: LPUSH of a prepared envelope -> its result's PUBLISH received, "
          "i.e. without the Celery client's own cost)")
    for r in results:
        if "by_key_pct" in r:
            print(f"{r['worker']}: {r['by_key_pct']:.0f} % of get()s found the result "
                  f"already stored and read no pub/sub reply; the most replies one get() "
                  f"read first: {r['max_backlog']}; p99 of the get()s with no backlog "
                  f"{fmt_opt(r['p99_no_backlog_ms'], '.3f')} ms")
    print("(Celery 5.7's client: a get() whose result is already stored reads it from the "
          "key and leaves its 3 pub/sub replies -- subscribe and unsubscribe confirmations, "
          "the message -- unread; the next get() that has to wait reads every one left "
          "before its own, ~0.14 ms each. A worker that finishes before delay() returns "
          "makes most get()s of that kind, so the round trip p99 is that client's backlog, "
          "not the worker: the wire columns time the worker alone)")
    ours = [r for r in results if r["worker"].startswith("rust")]
    theirs = [r for r in results if not r["worker"].startswith("rust")]
    if ours and theirs:
        print(f"\nrust / celery (latency): p50 {ratio(ours[0]['p50_ms'], theirs[0]['p50_ms'])}, "
              f"p99 {ratio(ours[0]['p99_ms'], theirs[0]['p99_ms'])}")
    for r in ours:
        print(f"{r['worker']}: p50 {fmt_opt(r['p50_ms'], '.3f')} ms (target <= "
              f"{LATENCY_P50_TARGET_MS:g} ms: {met_text(r['p50_ms'], LATENCY_P50_TARGET_MS, less=True)}"
              f"), p99 {fmt_opt(r['p99_ms'], '.3f')} ms (target <= {LATENCY_P99_TARGET_MS:g} ms: "
              f"{met_text(r['p99_ms'], LATENCY_P99_TARGET_MS, less=True)})")
    for r in results:
        want = 2 * (r["warmup"] + r["calls"])  # Celery client + wire
        if r["bad"] or r["measured"] != r["calls"] or r["results_stored"] != want:
            print(f"WARNING: {r['worker']}: latency: {r['bad']} wrong results (e.g. "
                  f"{r['bad_sample'][:3]}), {r['measured']} round trips measured, "
                  f"{r['results_stored']} results stored (wanted {want})")
            failures.append(f"{r['worker']} (latency)")


def met_text(value, goal, less: bool = False) -> str:
    """`met` / `NOT met` for value >= goal (less: value <= goal), `-` if unknown."""
    if value is None or goal is None:
        return "-"
    return "met" if (value <= goal if less else value >= goal) else "NOT met"


# --------------------------------------------------------------------------- events

EVENTS_TARGET = 0.80  # required: our tasks/s with -E >= 0.80 x without


class EventCounter:
    """`PSUBSCRIBE /<db>.celeryev/*` on the bench Redis, in a thread that only keeps the
    raw messages; `finish()` decodes them (kombu envelopes whose base64 `body` is one
    event or, on `task.multi`, a JSON array of them) and counts. Subscribed when
    `start()` returns (PSUBSCRIBE confirmed), so start it before the worker: Redis drops
    PUB/SUB messages nobody is subscribed to. `finish()` publishes a sentinel on the
    same pattern and waits for it, so everything published before (by a worker that has
    exited) has been received."""

    def __init__(self, server: RedisServer, db: int = 0):
        self.pattern = f"/{db}.celeryev/*"
        self._client = server.client(db)
        self._pubsub = self._client.pubsub()
        self._sentinel = f"/{db}.celeryev/bench.sentinel.{uuid.uuid4().hex[:8]}".encode()
        self._raw: list = []  # (channel, data)
        self._error = None
        self._cpu_s = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, timeout: float = 10.0) -> "EventCounter":
        self._pubsub.psubscribe(self.pattern)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._pubsub.get_message(timeout=1.0)
            if msg and msg["type"] == "psubscribe":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"PSUBSCRIBE {self.pattern} not confirmed in {timeout}s")
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while True:
                msg = self._pubsub.get_message(timeout=1.0)
                if msg and msg["type"] == "pmessage":
                    if msg["channel"] == self._sentinel:
                        break
                    self._raw.append((msg["channel"], msg["data"]))
        except Exception as exc:  # noqa: BLE001 — reported by finish()
            self._error = exc
        finally:
            self._cpu_s = time.thread_time()

    def finish(self, timeout: float = 30.0) -> dict:
        try:
            self._client.publish(self._sentinel, b"{}")
            self._thread.join(timeout)
        finally:
            self._pubsub.close()
            self._client.close()
        error = repr(self._error) if self._error else \
            f"sentinel not seen in {timeout}s" if self._thread.is_alive() else None
        out: dict = {"pattern": self.pattern, "messages": len(self._raw), "channels": {},
                     "events": 0, "types": {}, "undecodable": 0,
                     "subscriber_cpu_s": self._cpu_s, "error": error}
        succeeded = set()
        for channel, data in self._raw:
            ch = channel.decode(errors="replace")
            out["channels"][ch] = out["channels"].get(ch, 0) + 1
            try:
                env = json.loads(data)
                body = env["body"]
                if env.get("properties", {}).get("body_encoding") == "base64":
                    body = base64.b64decode(body)
                payload = json.loads(body)
            except (ValueError, KeyError, TypeError):
                out["undecodable"] += 1
                continue
            for ev in payload if isinstance(payload, list) else [payload]:
                kind = ev.get("type") if isinstance(ev, dict) else None
                out["events"] += 1
                out["types"][kind] = out["types"].get(kind, 0) + 1
                if kind == "task-succeeded":
                    succeeded.add(ev.get("uuid"))
        out["task_succeeded"] = out["types"].get("task-succeeded", 0)
        out["task_succeeded_unique"] = len(succeeded)
        out["task_events"] = sum(v for k, v in out["types"].items()
                                 if isinstance(k, str) and k.startswith("task-"))
        return out


def measure_events(label: str, argv: list[str], env: dict, server: RedisServer, template: dict,
                   n: int, workdir: Path, timeout: float, with_events: bool) -> dict:
    """The plain scenario's loaded phase (`measure(idle=False)`); with_events adds `-E`
    to the worker's command line and counts what it publishes on `celeryev` (an
    EventCounter subscribed from before the worker starts until after it exited)."""
    if not with_events:
        return measure(label, argv, env, server, template, n, workdir, timeout,
                       idle=False, tag="events-off")
    counter = EventCounter(server, 0).start()
    try:
        res = measure(label, argv + ["-E"], env, server, template, n, workdir, timeout,
                      idle=False, tag="events-on")
    finally:
        seen = counter.finish()
    res["events"] = seen
    return res


# --------------------------------------------------------------------------- main


def fmt_mib(kib) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def fmt_opt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def fmt_load(la) -> str:
    return " ".join(f"{x:.2f}" for x in la) if la else "?"


def ratio(a, b) -> str:
    try:
        return f"x{a / b:.2f}"
    except (TypeError, ZeroDivisionError):
        return "-"


def print_plain(results: list, n: int, failures: list, scenario: str = "",
                extra: tuple = (), note: str = "", ceiling: dict | None = None,
                kombu_ceiling: dict | None = None) -> None:
    """The plain table and ratio line; scenario amqp reuses it with its name (in the
    ratio line and warnings) and `extra` columns (header, width, row -> text). With
    the Redis `ceiling` (plain): two more columns, tasks/s and steady tasks/s as % of
    it, and one line per worker against the target."""
    print()
    if ceiling:
        cps = ceiling["tasks_per_s"]
        print(f"Redis ceiling (plain): {cps:.0f} tasks/s ({ceiling['tasks']} messages in "
              f"{ceiling['wall_s']:.3f}s, {ceiling['calls']} script calls of up to "
              f"{ceiling['batch']}: RPOP, SETEX + PUBLISH of the result; CPU steal "
              f"{fmt_steal(ceiling.get('steal'))})")
        extra = tuple(extra) + (
            ("% ceil", 7, lambda r: pct(r["tasks_per_s"], cps)),
            ("steady % ceil", 13, lambda r: pct(r["steady_tasks_per_s"], cps)))
        note += "; % ceil = tasks/s / Redis ceiling tasks/s"
    head = (f"{'worker':<28} {'tasks':>7} {'wall s':>8} {'tasks/s':>9} {'steady/s':>9} "
            f"{'idle RSS MiB':>13} {'peak RSS MiB':>13} {'procs':>6} {'stored':>7} {'steal':>6}"
            + "".join(f" {h:>{w}}" for h, w, _ in extra))
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['worker']:<28} {r['tasks']:>7} {r['wall_s']:>8.2f} {r['tasks_per_s']:>9.0f} "
              f"{r['steady_tasks_per_s']:>9.0f} {fmt_mib(r['idle_rss_kib']):>13} "
              f"{fmt_mib(r['peak_rss_kib']):>13} {r['idle_processes']:>6} "
              f"{r['results_stored']:>7} {fmt_steal(r.get('steal')):>6}"
              + "".join(f" {fn(r):>{w}}" for _, w, fn in extra))
    print("(wall = from worker start until the last result is stored; steady = from the "
          f"first stored result to the last; steal = CPU steal during the run{note})")
    print_rounds(results, ceiling, kombu_ceiling)
    tag = f" ({scenario})" if scenario else ""
    if len(results) == 2:
        ours, theirs = results
        print(f"\nrust / celery{tag}: throughput x{ours['tasks_per_s'] / theirs['tasks_per_s']:.2f} "
              f"(steady x{ours['steady_tasks_per_s'] / theirs['steady_tasks_per_s']:.2f}), "
              f"idle RSS x{ours['idle_rss_kib'] / max(theirs['idle_rss_kib'], 1):.3f}, "
              f"peak RSS x{ours['peak_rss_kib'] / max(theirs['peak_rss_kib'], 1):.3f}")
    if ceiling:
        for r in results:
            share = r["steady_tasks_per_s"] / ceiling["tasks_per_s"]
            print(f"{r['worker']}: steady {r['steady_tasks_per_s']:.0f}/s = "
                  f"{100 * share:.1f} % of the Redis ceiling (tasks/s "
                  f"{pct(r['tasks_per_s'], ceiling['tasks_per_s'])}); target >= "
                  f"{100 * CEILING_TARGET:.0f} %: {met_text(share, CEILING_TARGET)}")
    if ceiling and kombu_ceiling:
        kps = kombu_ceiling["tasks_per_s"]
        print(f"Redis with kombu's bookkeeping (KOMBU_CEILING_LUA): {kps:.0f} tasks/s = "
              f"{pct(kps, ceiling['tasks_per_s'])} of the ceiling: this Redis doing kombu's "
              f"per-message bookkeeping one message at a time, a reference rather than a "
              f"bound (CPU steal {fmt_steal(kombu_ceiling.get('steal'))})")
        for r in results:
            print(f"{r['worker']}: steady {pct(r['steady_tasks_per_s'], kps)} of it")
    for r in results:
        for run in r.get("round_runs", [r]):
            check_stored(run, n, failures, tag)


def print_rounds(results: list, ceiling: dict | None = None,
                 kombu_ceiling: dict | None = None) -> None:
    """Each round's figure behind the medians shown, when there was more than one."""
    parts = [f"{r['worker']} {fmt_rounds(r)}" for r in results if len(r.get("rounds", ())) > 1]
    for name, c in (("ceiling", ceiling), ("kombu ceiling", kombu_ceiling)):
        if c and len(c.get("rounds", ())) > 1:
            parts.append(f"{name} {fmt_rounds(c)}")
    if parts:
        print("rounds, median shown (steady tasks/s; ceilings tasks/s): " + "; ".join(parts))


def print_rust_only(rust_only: dict, results: list) -> None:
    """The plain scenario's idle RSS of our worker without -A, and with -A vs Celery."""
    split = " + ".join(fmt_mib(k) for k in rust_only["idle_rss_by_process_kib"])
    py = {True: "a libpython is mapped", False: "no libpython mapped",
          None: "libpython mapping unknown"}[rust_only.get("libpython_mapped")]
    print(f"\n{rust_only['worker']} without -A (example_task native, no Python): idle RSS "
          f"{fmt_mib(rust_only['idle_rss_kib'])} MiB in {rust_only['idle_processes']} "
          f"process(es) ({split} MiB; {py}); target <= "
          f"{RUST_ONLY_IDLE_TARGET_KIB / 1024:g} MiB: "
          f"{met_text(rust_only['idle_rss_kib'], RUST_ONLY_IDLE_TARGET_KIB, less=True)}")
    ours = [r for r in results if r["worker"].startswith("rust")]
    theirs = [r for r in results if not r["worker"].startswith("rust")]
    if ours and theirs:
        share = ours[0]["idle_rss_kib"] / max(theirs[0]["idle_rss_kib"], 1)
        print(f"{ours[0]['worker']} with -A app.workers: idle RSS "
              f"{fmt_mib(ours[0]['idle_rss_kib'])} MiB = x{share:.3f} of Celery's "
              f"{fmt_mib(theirs[0]['idle_rss_kib'])} MiB; target <= x{WITH_APP_IDLE_TARGET:g}: "
              f"{met_text(share, WITH_APP_IDLE_TARGET, less=True)}")
        if ours[0].get("idle_pss_kib") and theirs[0].get("idle_pss_kib"):
            print(f"  (proportional set size, shared pages counted once: ours "
                  f"{fmt_mib(ours[0]['idle_pss_kib'])} MiB, Celery's "
                  f"{fmt_mib(theirs[0]['idle_pss_kib'])} MiB, "
                  f"x{ours[0]['idle_pss_kib'] / theirs[0]['idle_pss_kib']:.3f})")


def print_amqp(results: list, n: int, failures: list, vhost: str) -> None:
    print(f"\namqp: {n} x {TASK}, broker RabbitMQ {AMQP_HOST}:{AMQP_PORT} vhost {vhost} "
          f"(queue `celery`), results in the private Redis db 1")

    def cpu(r):
        return f"{r['cpu_parent_s']:.2f} + {r['cpu_children_s']:.2f}"

    print_plain(results, n, failures, "amqp",
                extra=(("startup s", 9, lambda r: f"{r['startup_s']:.2f}"),
                       ("CPU s main+pool", 16, cpu),
                       ("left", 5, lambda r: str(r.get("queue_left_after_stop", "-")))),
                note="; startup = worker start -> a consumer on `celery`; CPU = utime+stime "
                "of the main process + of its children during the loaded phase; left = "
                "messages still in `celery` after the worker stopped")
    if len(results) == 2:
        ours, theirs = results
        cpu_ours = ours["cpu_parent_s"] + ours["cpu_children_s"]
        cpu_theirs = theirs["cpu_parent_s"] + theirs["cpu_children_s"]
        print(f"    CPU {ratio(cpu_ours, cpu_theirs)} ({cpu_ours:.2f}s vs {cpu_theirs:.2f}s, "
              f"{1000 * cpu_ours / n:.3f} vs {1000 * cpu_theirs / n:.3f} ms/task)")
    for r in results:
        if r["worker"].startswith("rust"):
            print(f"{r['worker']} on RabbitMQ: {r['tasks_per_s']:.0f} tasks/s (steady "
                  f"{r['steady_tasks_per_s']:.0f}/s) = "
                  f"{ratio(r['tasks_per_s'], AMQP_REFERENCE_TASKS_PER_S)} (steady "
                  f"{ratio(r['steady_tasks_per_s'], AMQP_REFERENCE_TASKS_PER_S)}) of the "
                  f"reference {AMQP_REFERENCE_TASKS_PER_S:,} tasks/s (rusty-celery's consume "
                  f"rate on RabbitMQ on this machine, storing no results)")
        if r.get("queue_left_after_stop"):
            print(f"WARNING: {r['worker']}: amqp: {r['queue_left_after_stop']} messages left "
                  f"in queue `celery` after all {n} results were stored")
            failures.append(f"{r['worker']} (amqp: messages left)")


def check_stored(r: dict, n: int, failures: list, what: str = "") -> None:
    """Warn about (and record) a plain loaded phase that stored too few or wrong results."""
    if r["results_stored"] != n or r["bad_results_in_sample"]:
        print(f"WARNING: {r['worker']}{what}: {r['results_stored']} results stored, "
              f"{r['bad_results_in_sample']} wrong in a sample of 200")
        failures.append(f"{r['worker']}{what}")


def print_events(results: list, n: int, failures: list, ceiling: dict | None = None) -> None:
    print(f"\nevents: {n} x {TASK}, the plain loaded phase without and with -E "
          f"(PSUBSCRIBE {results[0]['with']['events']['pattern']} during the -E runs)")
    head = (f"{'worker':<28} {'tasks/s':>9} {'tasks/s -E':>11} {'ratio':>6} "
            f"{'steady/s':>9} {'steady -E':>10} {'ratio':>6} "
            f"{'task-succeeded':>15} {'task events':>12} {'messages':>9}")
    print(head)
    print("-" * len(head))
    for p in results:
        off, on, ev = p["without"], p["with"], p["with"]["events"]
        print(f"{p['worker']:<28} {off['tasks_per_s']:>9.0f} {on['tasks_per_s']:>11.0f} "
              f"{p['ratio']:>6.2f} {off['steady_tasks_per_s']:>9.0f} "
              f"{on['steady_tasks_per_s']:>10.0f} {p['steady_ratio']:>6.2f} "
              f"{ev['task_succeeded']:>15} {ev['task_events']:>12} {ev['messages']:>9}")
    print("(tasks/s = tasks / (worker start -> last result stored), polled every 10 ms, as in "
          "plain; steady = from the first stored result to the last (startup excluded, coarse "
          "when that span is short); ratio = with -E / without; task-succeeded, task events = "
          "task-* events the subscriber decoded in the -E run, from `messages` PUB/SUB "
          "messages: task.multi batches and worker events)")
    if ceiling:
        cps = ceiling["tasks_per_s"]
        print(f"\nRedis ceiling (events): {cps:.0f} tasks/s ({ceiling['tasks']} messages in "
              f"{ceiling['wall_s']:.3f}s, no events published)")
        for p in results:
            share = p["with"]["steady_tasks_per_s"] / cps
            print(f"{p['worker']}: steady with -E {p['with']['steady_tasks_per_s']:.0f}/s = "
                  f"{100 * share:.1f} % of the ceiling (without -E "
                  f"{pct(p['without']['steady_tasks_per_s'], cps)}); target >= "
                  f"{100 * CEILING_TARGET:.0f} %: {met_text(share, CEILING_TARGET)}")
    ours = [p for p in results if p["worker"].startswith("rust")]
    theirs = [p for p in results if not p["worker"].startswith("rust")]
    for p in ours:
        met = "met" if p["ratio"] >= EVENTS_TARGET else "NOT met"
        celery_cost = "".join(f"; {q['worker']}: x{q['ratio']:.2f} (steady "
                              f"x{q['steady_ratio']:.2f})" for q in theirs)
        print(f"\n{p['worker']} with -E: x{p['ratio']:.2f} of its tasks/s without "
              f"(target ≥ {EVENTS_TARGET:.2f}: {met}; steady x{p['steady_ratio']:.2f}: "
              f"{'met' if p['steady_ratio'] >= EVENTS_TARGET else 'NOT met'}){celery_cost}")
    for p in results:
        for run in p["without"].get("round_runs", [p["without"]]):
            check_stored(run, n, failures, " (events)")
        for run in p["with"].get("round_runs", [p["with"]]):
            check_stored(run, n, failures, " (events -E)")
            ev = run["events"]
            if ev["task_succeeded"] == n and ev["task_succeeded_unique"] == n \
                    and not ev["undecodable"] and not ev["error"]:
                continue
            print(f"WARNING: {p['worker']}: -E run: {ev['task_succeeded']} task-succeeded events "
                  f"seen ({ev['task_succeeded_unique']} distinct ids), wanted {n}; "
                  f"{ev['undecodable']} undecodable messages; subscriber error {ev['error']}")
            failures.append(f"{p['worker']} (events: task-succeeded count)")
    print_rounds([dict(p["with"], worker=f"{p['worker']} -E") for p in results]
                 + [p["without"] for p in results], ceiling)


def cpu_per_task(r: dict) -> str:
    n = r["tasks"]
    return (f"{1000 * r['cpu_parent_s'] / n:.2f} + {1000 * r['cpu_children_s'] / n:.2f}")


def print_python(py_results: dict, failures: list) -> None:
    targets = {"noop": ("noop_task()", 2.0), "cpu": (f"cpu_task({PY_CPU_N})", 1.0)}
    for kind, results in py_results.items():
        if not results:
            continue
        name, want = targets[kind]
        print(f"\npython/{kind}: {results[0]['tasks']} x app.workers.tasks.{name}, "
              f"pure Python in the prefork pool")
        head = (f"{'worker':<28} {'tasks':>7} {'wall s':>8} {'tasks/s':>9} {'steady/s':>9} "
                f"{'1st s':>6} {'idle RSS MiB':>13} {'peak RSS MiB':>13} {'procs':>6} "
                f"{'stored':>7} {'bad':>5} {'CPU ms/task main+pool':>22} {'stop s':>7}")
        print(head)
        print("-" * len(head))
        for r in results:
            print(f"{r['worker']:<28} {r['tasks']:>7} {r['wall_s']:>8.2f} {r['tasks_per_s']:>9.0f} "
                  f"{r['steady_tasks_per_s']:>9.0f} {r['first_result_s']:>6.2f} "
                  f"{fmt_mib(r.get('idle_rss_kib')):>13} {fmt_mib(r['peak_rss_kib']):>13} "
                  f"{r['peak_processes']:>6} {r['results_stored']:>7} {r['bad_results']:>5} "
                  f"{cpu_per_task(r):>22} {r['stop_s']:>7.2f}")
        print("(wall = from worker start until the last result is stored, polled every 10 ms; "
              "1st = worker start -> first result; RSS = parent + every pool child; idle RSS "
              "measured once per worker, in the noop round; bad = not SUCCESS or not the exact "
              "result; CPU ms/task = utime+stime of the main process + of the pool children, "
              "per task; stop = SIGTERM -> all gone)")
        if len(results) == 2:
            ours, theirs = results

            def verdict(x, goal, less=False):
                ok = x < goal if less else x >= goal
                return f"target {'<' if less else '≥'} {goal:g}x: {'met' if ok else 'NOT met'}"

            thr = ours["tasks_per_s"] / theirs["tasks_per_s"]
            steady = ours["steady_tasks_per_s"] / theirs["steady_tasks_per_s"]
            print(f"\nrust / celery (python/{kind}): throughput x{thr:.2f} ({verdict(thr, want)}; "
                  f"steady x{steady:.2f})")

            def split(r, which="idle"):
                return " + ".join(fmt_mib(k) for k in r.get(f"{which}_rss_by_process_kib", []))

            if ours.get("idle_rss_kib") and theirs.get("idle_rss_kib"):
                idle = ours["idle_rss_kib"] / theirs["idle_rss_kib"]
                print(f"    idle RSS x{idle:.3f} ({verdict(idle, 1, less=True)}; "
                      f"{fmt_mib(ours['idle_rss_kib'])} vs {fmt_mib(theirs['idle_rss_kib'])} MiB; "
                      f"main + pool: {split(ours)} vs {split(theirs)} MiB)")
            peak = ours["peak_rss_kib"] / max(theirs["peak_rss_kib"], 1)
            print(f"    peak RSS x{peak:.3f} ({verdict(peak, 1, less=True)}; "
                  f"{fmt_mib(ours['peak_rss_kib'])} vs {fmt_mib(theirs['peak_rss_kib'])} MiB; "
                  f"main + pool at the peak: {split(ours, 'peak')} vs {split(theirs, 'peak')} MiB)")
        for r in results:
            if r["missing"] or r["bad_results"]:
                print(f"WARNING: {r['worker']}: python/{kind}: {r['missing']} results missing, "
                      f"{r['bad_results']} wrong")
                failures.append(f"{r['worker']} (python/{kind})")
            if r["leftovers_killed"] or r["stop_timeouts"]:
                print(f"note: {r['worker']}: python/{kind}: {r['leftovers_killed']} pool "
                      f"process(es) still running 3 s after the worker exited (SIGKILLed), "
                      f"{r['stop_timeouts']} SIGTERM stop(s) timed out")


def print_canvas(results: list, failures: list) -> None:
    r0 = results[0]
    print(f"\ncanvas: {r0['chains']} chains (3 tasks) + {r0['chords']} chords (10 + 1 tasks) "
          f"= {r0['workflows']} workflows, {r0['tasks']} tasks")
    head = (f"{'worker':<28} {'wall s':>8} {'workflows/s':>12} {'tasks/s':>9} "
            f"{'steady wf/s':>12} {'peak RSS MiB':>13} {'chain bad':>10} {'chord bad':>10} {'stored':>7} "
            f"{'not OK':>7} {'publish s':>10}")
    print(head)
    print("-" * len(head))
    for r in results:
        not_ok = r["results_stored"] - r["statuses"].get("SUCCESS", 0)
        print(f"{r['worker']:<28} {r['wall_s']:>8.2f} {r['workflows_per_s']:>12.0f} "
              f"{r['tasks_per_s']:>9.0f} {fmt_opt(r['steady_workflows_per_s'], '.0f'):>12} "
              f"{fmt_mib(r['peak_rss_kib']):>13} {r['chain_mismatches']:>10} {r['chord_mismatches']:>10} "
              f"{r['results_stored']:>7} {not_ok:>7} {r['publish_s']:>10.1f}")
    print("(wall = from worker start until the last chain result and chord callback result "
          "are stored, polled every 50 ms; steady = from the first stored task result; bad = missing, failed or "
          "wrong final results; stored = all task results in db 1)")
    if len(results) == 2:
        ours, theirs = results
        print(f"\nrust / celery (canvas): workflows/s "
              f"{ratio(ours['workflows_per_s'], theirs['workflows_per_s'])} "
              f"(steady {ratio(ours['steady_workflows_per_s'], theirs['steady_workflows_per_s'])}), "
              f"peak RSS x{ours['peak_rss_kib'] / max(theirs['peak_rss_kib'], 1):.3f}")
    for r in results:
        bad = r["chain_mismatches"] + r["chord_mismatches"]
        if bad or r["results_stored"] != r["tasks"] or r["statuses"].get("SUCCESS", 0) != r["tasks"]:
            print(f"WARNING: {r['worker']}: canvas {r['chain_mismatches']} chain and "
                  f"{r['chord_mismatches']} chord mismatches, {r['results_stored']} task results "
                  f"stored (wanted {r['tasks']}), statuses {r['statuses']}")
            failures.append(f"{r['worker']} (canvas)")


def print_eta(results: list, failures: list) -> None:
    r0 = results[0]
    print(f"\neta: {r0['tasks']} x {TASK} with apply_async(eta=publish start + "
          f"{r0['eta_delay_s']:g}s), all due at once")
    head = (f"{'worker':<28} {'publish s':>10} {'slack s':>8} {'fetched s':>10} "
            f"{'queued@due':>11} {'held@due':>9} {'drain s':>8} {'tasks/s':>9} {'1st s':>6} {'last done s':>12} "
            f"{'peak RSS MiB':>13} {'early':>6} {'bad':>5} {'missing':>8}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['worker']:<28} {r['publish_s']:>10.1f} {r['slack_s']:>8.1f} "
              f"{fmt_opt(r['fetched_all_s'], '.2f'):>10} "
              f"{fmt_opt(r['queued_at_due'], 'd'):>11} {fmt_opt(r['held_unacked_at_due'], 'd'):>9} "
              f"{r['drain_s']:>8.2f} {r['tasks_per_s']:>9.0f} "
              f"{fmt_opt(r['first_result_after_due_s'], '.2f'):>6} "
              f"{fmt_opt(r['date_done_max_after_eta_s'], '.2f'):>12} "
              f"{fmt_mib(r['peak_rss_kib']):>13} {r['early']:>6} {r['mismatches']:>5} "
              f"{r['missing']:>8}")
    print("(slack = worker start -> due; fetched = worker start -> queue empty; "
          "queued/held@due = messages still in the queue / in kombu's unacked hash at the "
          "due moment; drain = due -> last result stored (polled every 50 ms); 1st = due -> "
          "first result seen; last done = latest stored date_done - eta; early = date_done "
          "before the eta)")
    if len(results) == 2:
        ours, theirs = results
        print(f"\nrust / celery (eta): drain tasks/s {ratio(ours['tasks_per_s'], theirs['tasks_per_s'])}"
              f" (drain {ours['drain_s']:.2f}s vs {theirs['drain_s']:.2f}s; by date_done "
              f"{fmt_opt(ours['date_done_max_after_eta_s'], '.2f')}s vs "
              f"{fmt_opt(theirs['date_done_max_after_eta_s'], '.2f')}s), "
              f"peak RSS x{ours['peak_rss_kib'] / max(theirs['peak_rss_kib'], 1):.3f}")
    for r in results:
        if r["early"] or r["mismatches"] or r["missing"] or r["done_before_due"]:
            print(f"WARNING: {r['worker']}: eta {r['early']} early, {r['mismatches']} wrong, "
                  f"{r['missing']} missing, {r['done_before_due']} results seen before the due moment")
            failures.append(f"{r['worker']} (eta)")
        if r["queued_at_due"]:
            print(f"note: {r['worker']} had not fetched {r['queued_at_due']} of the ETA messages "
                  f"by the due moment (drain includes fetching them)")


def print_soak(r: dict, failures: list) -> None:
    c = r["round_counts"]
    print(f"\nsoak: {r['tasks']:,} task executions by {r['worker']} (Celery not run: this "
          f"is about our worker's memory over time), {r['rounds']} rounds of {r['batch']:,}; "
          f"per round {c['plain']} plain, {c['flaky']} flaky (retried once: 2 executions), "
          f"{c['eta']} ETA (+{SOAK_ETA_S:g} s), {c['chain']} chains (3), {c['chord']} chords "
          f"(10 + 1), {c['fail']} failures")
    head = (f"{'point':<12} {'tasks':>9} {'t s':>7} {'tasks/s':>8} {'RSS MiB':>8} "
            f"{'main MiB':>9} {'vs 10 %':>8} {'procs':>5} {'queued':>7} {'unacked':>8} "
            f"{'db0 keys':>9} {'db1 keys':>9} {'redis MiB':>10} {'pub MiB':>8}")
    print(head)
    print("-" * len(head))
    base = r["rss_at_10pct_kib"]
    print(f"{'idle before':<12} {0:>9} {'-':>7} {'-':>8} {fmt_mib(r['idle_rss_start_kib']):>8} "
          f"{fmt_mib(r['idle_rss_start_main_kib']):>9} {'-':>8} "
          f"{r['idle_processes_start']:>5}")

    def procs(s):  # processes in the tree, zombies among them as `/nZ`
        return f"{s['processes']}" + (f"/{s['zombies']}Z" if s.get("zombies") else "")

    prev_t, prev_done = 0.0, 0
    for d, s in r["marks"].items():
        rate = (s["done"] - prev_done) / (s["t"] - prev_t) if s["t"] > prev_t else None
        prev_t, prev_done = s["t"], s["done"]
        print(f"{int(d) * 10:>3} %        {s['done']:>9} {s['t']:>7.1f} {fmt_opt(rate, '.0f'):>8} "
              f"{fmt_mib(s['rss_kib']):>8} {fmt_mib(s['rss_main_kib']):>9} "
              f"{ratio(s['rss_kib'], base):>8} {procs(s):>5} {s['queued']:>7} "
              f"{s['unacked']:>8} {s['db0_keys']:>9} {s['db1_keys']:>9} "
              f"{s['redis_used_kib'] / 1024:>10.1f} {fmt_mib(s['publisher_rss_kib']):>8}")
    print(f"{'idle after':<12} {r['tasks']:>9} {'+' + format(SOAK_IDLE_S, 'g'):>7} {'-':>8} "
          f"{fmt_mib(r['idle_rss_end_kib']):>8} {fmt_mib(r['idle_rss_end_main_kib']):>9} "
          f"{ratio(r['idle_rss_end_kib'], base):>8} {r['idle_processes_end']:>5} "
          f"{r['idle_queued']:>7} {r['idle_unacked']:>8}")
    print("(a row per 10 % of the executions: the first sample, polled every "
          f"{SOAK_POLL_S:g} s, at or past it; tasks = executions done, counted from the "
          "stored results of every id the publisher reported (a flaky task counts 2 once "
          "SUCCESS, 1 while RETRY); tasks/s since the previous row; RSS = worker process "
          "tree, main = its main process; procs = processes in the tree (/nZ: n of them "
          "zombies); vs 10 % = RSS / RSS at 10 %; queued / unacked = LLEN celery / HLEN "
          "unacked in db 0; redis = used_memory; pub = the publisher's RSS; idle after = 5 s "
          "after the last execution)")
    print(f"RSS: at 10 % {fmt_mib(r['rss_at_10pct_kib'])} MiB, at the end "
          f"{fmt_mib(r['rss_end_kib'])} MiB, max {fmt_mib(r['rss_max_kib'])} MiB; end / at "
          f"10 % = {fmt_opt(r['rss_ratio'], '.3f')} (target <= {SOAK_RSS_TARGET:.2f}: "
          f"{met_text(r['rss_ratio'], SOAK_RSS_TARGET, less=True)}); main process "
          f"{fmt_mib(r['rss_main_at_10pct_kib'])} -> {fmt_mib(r['rss_main_end_kib'])} MiB "
          f"(x{fmt_opt(r['rss_main_ratio'], '.3f')}, max {fmt_mib(r['rss_main_max_kib'])}); "
          f"slope after 10 %: {fmt_opt(r['rss_slope_kib_per_100k'], '.0f')} KiB per "
          f"100,000 executions")
    print(f"throughput: {r['tasks_per_s']:.0f} tasks/s over {r['wall_s']:.1f}s (publisher "
          f"start -> last execution seen); publisher done after {r['publish_s']:.1f}s, "
          f"{r['waited_s']:.1f}s of it waiting for the broker backlog (< 2 x batch; max "
          f"{r['max_backlog']}), publisher max RSS {fmt_mib(r['publisher_maxrss_kib'])} MiB")
    checked = ", ".join(f"{k} {v}" for k, v in sorted(r["checked"].items()))
    nbad = sum(r["bad"].values())
    print(f"results checked: {checked}; wrong or missing: {nbad}"
          + (f" {r['bad']} e.g. {r['bad_examples'][:3]}" if nbad else ""))
    db0, db1 = r["census"]["db0"], r["census"]["db1"]
    want = r["expected_results"]
    metas = db1["patterns"].get("celery-task-meta-*", {}).get("keys", 0)
    st = db1["statuses"]
    print(f"db 1 results: {metas} celery-task-meta keys (published ids: "
          f"{want['celery-task-meta']}), statuses {dict(sorted(st.items()))} (want SUCCESS "
          f"{want['SUCCESS']}, FAILURE {want['FAILURE']})")
    print("leak check (worker stopped after the idle wait):")
    for census in (db0, db1):
        print(f"  db {census['db']}: {census['keys']} keys"
              + (f"; celery {census['celery_len']}, unacked {census['unacked_len']}, "
                 f"unacked_index {census['unacked_index_len']} entries"
                 if census["db"] == 0 else ""))
        by_count = sorted(census["patterns"].items(), key=lambda kv: -kv[1]["keys"])
        for p, v in by_count[:20]:
            ttl = "-" if v["ttl_min"] is None else f"{v['ttl_min']}..{v['ttl_max']} s"
            print(f"    {p:<48} {v['keys']:>9} keys, {v['no_ttl']:>7} without TTL, TTL {ttl}")
        if len(by_count) > 20:
            print(f"    ... {len(by_count) - 20} more patterns, "
                  f"{sum(v['keys'] for _, v in by_count[20:])} keys (all in the JSON)")
    leaks = r["leaks"]
    print(f"leaked keys: {leaks['total']}"
          + (f" (db 0: {leaks['db0']}, db 1 outside the result/chord patterns or without a "
             f"TTL: {leaks['db1']})" if leaks["total"] else
             " (db 0 only kombu's binding tables / mutex; db 1 only results and chord keys, "
             "each with a TTL)"))
    state = {p: v["keys"] for p, v in db1["patterns"].items()
             if p.startswith("celery-taskset-meta-")
             and p.rsplit(".", 1)[-1] in ("j", "t", "s", "d")}
    if state:
        print(f"note: chord state left behind (expires with its TTL): {state}")
    if nbad or metas != want["celery-task-meta"] or st.get("SUCCESS", 0) != want["SUCCESS"] \
            or st.get("FAILURE", 0) != want["FAILURE"] or sum(st.values()) != metas:
        print(f"WARNING: {r['worker']}: soak results wrong or missing (see above)")
        failures.append(f"{r['worker']} (soak: results)")
    if leaks["total"]:
        print(f"WARNING: {r['worker']}: soak leaked {leaks['total']} keys")
        failures.append(f"{r['worker']} (soak: leaked keys)")
    if r["tree_changes"] or r["zombies_max"]:
        print(f"note: the worker's process tree changed {r['tree_changes']} time(s) during the "
              f"soak (a process exited or started), up to {r['zombies_max']} of its processes "
              f"were zombies (exited, not reaped): the tree RSS is then not comparable over time")
    if r["leftovers_killed"] or r["stop_timeouts"]:
        print(f"note: {r['leftovers_killed']} pool process(es) SIGKILLed after the stop, "
              f"{r['stop_timeouts']} SIGTERM stop(s) timed out")


# --------------------------------------------------------------------------- summary

PY_NOOP_TARGET = 5.0  # issue 11: python noop tasks/s >= 5x Celery's
PY_CPU_TARGET = 1.5  # issue 11: python cpu tasks/s >= 1.5x Celery's


def split_workers(results: list) -> tuple:
    """(ours, Celery's) of a scenario's per-worker results, None where absent."""
    ours = next((r for r in results if r["worker"].startswith("rust")), None)
    theirs = next((r for r in results if not r["worker"].startswith("rust")), None)
    return ours, theirs


def summary_rows(results: list, events_results: list, py_results: dict,
                 latency_results: list, rust_only: dict | None, ceilings: dict,
                 soak: dict | None = None) -> list:
    """One row per issue-11 figure this run measured: figure, unit, ours, celery, ratio
    (ours / celery), ceiling (throughput rows), share (ours / ceiling), target (text),
    met (True / False / None when it cannot be told)."""
    rows = []

    def add(figure, unit, ours, celery, target, met, ceiling=None):
        share = ours / ceiling if ours is not None and ceiling else None
        rows.append({"figure": figure, "unit": unit, "ours": ours, "celery": celery,
                     "ratio": ours / celery if ours is not None and celery else None,
                     "ceiling": ceiling, "share_of_ceiling": share, "target": target,
                     "met": met(ours, celery, share)})

    def ceiling_met(ours, celery, share):
        return None if share is None else share >= CEILING_TARGET

    def times_celery(goal, less=False):
        def met(ours, celery, share):
            if ours is None or not celery:
                return None
            return ours / celery <= goal if less else ours / celery >= goal
        return met

    def at_most(goal):
        return lambda ours, celery, share: None if ours is None else ours <= goal

    ceiling_target = f">= {100 * CEILING_TARGET:.0f} % of ceiling"
    if results:
        ours, theirs = split_workers(results)
        add("Rust tasks/s (plain, steady)", "tasks/s", ours and ours["steady_tasks_per_s"],
            theirs and theirs["steady_tasks_per_s"], ceiling_target, ceiling_met,
            ceilings.get("plain", {}).get("tasks_per_s"))
        if "kombu" in ceilings:
            add("  vs Redis doing kombu's work", "tasks/s", ours and ours["steady_tasks_per_s"],
                theirs and theirs["steady_tasks_per_s"], "-", lambda *_: None,
                ceilings["kombu"]["tasks_per_s"])
    if events_results:
        ours, theirs = split_workers(events_results)
        add("with -E (events, steady)", "tasks/s",
            ours and ours["with"]["steady_tasks_per_s"],
            theirs and theirs["with"]["steady_tasks_per_s"], ceiling_target, ceiling_met,
            ceilings.get("events", {}).get("tasks_per_s"))
    # Steady, like the rows above: both workers import the app at start-up, which at
    # a few thousand tasks weighs more than the tasks.
    for kind, name, goal in (("noop", "Python noop tasks/s (steady)", PY_NOOP_TARGET),
                             ("cpu", "Python cpu tasks/s (steady)", PY_CPU_TARGET)):
        if py_results.get(kind):
            ours, theirs = split_workers(py_results[kind])
            add(name, "tasks/s", ours and ours["steady_tasks_per_s"],
                theirs and theirs["steady_tasks_per_s"], f">= {goal:g}x Celery",
                times_celery(goal))
    if latency_results:
        ours, theirs = split_workers(latency_results)
        for key, name, goal in (("p50_ms", "round trip p50", LATENCY_P50_TARGET_MS),
                                ("p99_ms", "round trip p99", LATENCY_P99_TARGET_MS)):
            add(name, "ms", ours and ours[key], theirs and theirs[key], f"<= {goal:g} ms",
                at_most(goal))
        if (ours and "p99_no_backlog_ms" in ours) or (theirs and "p99_no_backlog_ms" in theirs):
            add("  p99 without client backlog", "ms", ours and ours.get("p99_no_backlog_ms"),
                theirs and theirs.get("p99_no_backlog_ms"), f"<= {LATENCY_P99_TARGET_MS:g} ms",
                at_most(LATENCY_P99_TARGET_MS))
        for key, name, goal in (("wire_p50_ms", "wire round trip p50", LATENCY_P50_TARGET_MS),
                                ("wire_p99_ms", "wire round trip p99", LATENCY_P99_TARGET_MS)):
            add(name, "ms", ours and ours.get(key), theirs and theirs.get(key),
                f"<= {goal:g} ms", at_most(goal))
    if results or rust_only:
        ours, theirs = split_workers(results)
        celery_idle = theirs and theirs["idle_rss_kib"] / 1024
        if rust_only:
            add("idle RSS Rust-only (no -A)", "MiB", rust_only["idle_rss_kib"] / 1024,
                celery_idle, f"<= {RUST_ONLY_IDLE_TARGET_KIB / 1024:g} MiB",
                at_most(RUST_ONLY_IDLE_TARGET_KIB / 1024))
        if results:
            add("idle RSS with -A", "MiB", ours and ours["idle_rss_kib"] / 1024, celery_idle,
                f"<= {WITH_APP_IDLE_TARGET:g}x Celery",
                times_celery(WITH_APP_IDLE_TARGET, less=True))
            # For reading the row above: Celery's children share its heap (fork),
            # which RSS counts once per process and PSS once in all. No target.
            pss = [r and r.get("idle_pss_kib") for r in (ours, theirs)]
            if all(pss):
                add("idle PSS with -A", "MiB", pss[0] / 1024, pss[1] / 1024, "-",
                    lambda *_: None)
    if soak:  # our worker only
        add("soak RSS end / at 10 %", "x", soak["rss_ratio"], None,
            f"<= {SOAK_RSS_TARGET:.2f}x", at_most(SOAK_RSS_TARGET))
        add("soak leaked keys", "keys", soak["leaks"]["total"], None, "0", at_most(0))
    return rows


def print_summary(rows: list, command: str, load: tuple, steal=None) -> None:
    def num(v, unit):
        if v is None:
            return "-"
        if unit in ("tasks/s", "keys"):
            return f"{v:,.0f}"
        return f"{v:.3f}" if unit in ("ms", "x") else f"{v:.1f}"

    print("\nissue 11 summary")
    head = (f"{'figure':<30} {'unit':<8} {'ours':>10} {'Celery':>10} {'ratio':>7} "
            f"{'Redis ceiling':>24} {'target':<22} {'met':<4}")
    print(head)
    print("-" * len(head))
    for r in rows:
        ceiling = "-" if r["ceiling"] is None else \
            f"{r['ceiling']:,.0f} (ours {pct(r['ours'], r['ceiling'])})"
        met = {True: "yes", False: "no", None: "-"}[r["met"]]
        print(f"{r['figure']:<30} {r['unit']:<8} {num(r['ours'], r['unit']):>10} "
              f"{num(r['celery'], r['unit']):>10} {ratio(r['ours'], r['celery']):>7} "
              f"{ceiling:>24} {r['target']:<22} {met:<4}")
    if not rows:
        print("(no issue-11 figure measured in this run: scenarios plain, events, latency, "
              "python, soak)")
    print("(Celery = the real celery worker in this run; ratio = ours / Celery; throughput rows "
          "are steady tasks/s (first result to last), the median of --rounds rounds "
          "interleaved with the ceilings; RSS = process tree, idle; soak: RSS of the process "
          "tree at the "
          "last execution / after the first 10 %, our worker only; a missed target is not a "
          "failure)")
    print(f"command: {command}")
    start, end = load
    print(f"load average: start {fmt_load(start)}, end {fmt_load(end)} ({os.cpu_count()} CPUs)")
    if steal is not None:
        print(f"CPU steal over the run: {fmt_steal(steal)} of all CPUs' time"
              + (" (NOISY: the host ran other work on these CPUs; compare runs without it)"
                 if steal > STEAL_NOISY else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario",
                    choices=["all", "plain", "events", "latency", "canvas", "eta", "python",
                             "amqp", "soak"],
                    default="all", help="all = every scenario but soak (default all)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="plain and events scenarios: every worker and ceiling is measured "
                         "this many times, interleaved, and the median round reported "
                         "(default 3)")
    ap.add_argument("--tasks", type=int, default=20000,
                    help="plain, events and amqp scenarios (default 20000)")
    ap.add_argument("--latency-warmup", type=int, default=200,
                    help="latency scenario: unmeasured round trips first (default 200)")
    ap.add_argument("--latency-calls", type=int, default=2000,
                    help="latency scenario: measured round trips (default 2000)")
    ap.add_argument("--chains", type=int, default=2000, help="canvas scenario (default 2000)")
    ap.add_argument("--chords", type=int, default=200, help="canvas scenario (default 200)")
    ap.add_argument("--eta-tasks", type=int, default=10000, help="eta scenario (default 10000)")
    ap.add_argument("--eta-delay", type=float, default=None,
                    help="eta scenario: seconds from publish start to the due moment "
                    "(default max(8, 4 + eta_tasks/1000))")
    ap.add_argument("--py-noop", type=int, default=5000,
                    help="python scenario: noop_task messages (default 5000, 0 skips)")
    ap.add_argument("--py-cpu", type=int, default=2000,
                    help=f"python scenario: cpu_task({PY_CPU_N}) messages (default 2000, 0 skips)")
    ap.add_argument("--soak-tasks", type=int, default=1000000,
                    help="soak scenario: task executions (default 1000000)")
    ap.add_argument("--soak-batch", type=int, default=10000,
                    help="soak scenario: executions per publishing round (default 10000)")
    ap.add_argument("--concurrency", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--bin", default=os.environ.get("RCW_RELEASE_BIN")
                    or str(ROOT / "target" / "release" / "rust-celery-worker"))
    ap.add_argument("--skip-rust", action="store_true")
    ap.add_argument("--skip-celery", action="store_true")
    ap.add_argument("--timeout", type=float, default=900.0, help="per worker run, seconds")
    ap.add_argument("--json", help="also write the results to this file "
                    "(default bench/results/<timestamp>.json)")
    ap.add_argument("--publish", choices=["canvas", "eta", "capture", "latency", "soak"],
                    help=argparse.SUPPRESS)
    ap.add_argument("--publish-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.eta_delay is None:
        args.eta_delay = max(8.0, 4.0 + args.eta_tasks / 1000)
    if args.publish:
        return publisher_main(args)

    # Turn SIGTERM into an exception so the finally blocks clean up.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    scenarios = ["plain", "events", "latency", "canvas", "eta", "python", "amqp"] \
        if args.scenario == "all" else [args.scenario]
    import celery
    workdir = Path(tempfile.mkdtemp(prefix="rcw-bench-"))
    server = RedisServer(workdir / "redis").start()
    broker_url, backend_url = f"{server.url}/0", f"{server.url}/1"
    n, c = args.tasks, args.concurrency
    load_start = loadavg()
    steal_start, t_start = steal_ticks(), time.monotonic()
    print(f"bench: {n} x {TASK}, concurrency {c}, redis {server.url}, logs in {workdir}",
          flush=True)
    print(f"scenarios: {', '.join(scenarios)}; {os.cpu_count()} CPUs, load average "
          f"{fmt_load(load_start)}", flush=True)

    env = dict(os.environ)
    env.pop("RCW_TEST_TASKS", None)
    env.pop("RCW_PY_SETTINGS", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "python")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["CELERY_BROKER_URL"] = broker_url
    env["CELERY_RESULT_BACKEND"] = backend_url
    if sys.prefix != sys.base_prefix:  # our worker imports the -A app from this venv
        env.setdefault("VIRTUAL_ENV", sys.prefix)
    # canvas: our worker with its rcw.testing.* tasks, Celery with their Python twins.
    canvas_env = dict(env, RCW_TEST_TASKS="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT / "python"), str(ROOT / "interop")]
        + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))

    def runs(app: str, run_env: dict, rust_extra: tuple = (), broker: str = "") -> list:
        out = []
        if args.skip_rust:
            print("rust-celery-worker: skipped (--skip-rust)")
        elif not Path(args.bin).is_file():
            print(f"rust-celery-worker: SKIPPED, binary {args.bin} not found "
                  f"(build it with `make release` / `cargo build --release`)")
        else:
            out.append(("rust-celery-worker", [
                args.bin, "-A", "app.workers", "-b", broker or broker_url,
                "--result-backend", backend_url,
                *rust_extra, "-c", str(c), "--without-gossip", "--without-mingle",
                "--without-heartbeat", "-l", "warning", "-n", "bench-rust@%h"], run_env))
        if args.skip_celery:
            print("celery: skipped (--skip-celery)")
        else:
            out.append((f"celery-{celery.__version__}-prefork", [
                sys.executable, "-m", "celery", "-A", app, "worker", "-P", "prefork",
                "-c", str(c), "--without-gossip", "--without-mingle", "--without-heartbeat",
                "-l", "warning", "-n", "bench-celery@%h"], run_env))
        return out

    results = []
    canvas_results = []
    eta_results = []
    py_results: dict = {}
    events_results = []  # per worker: {"worker", "without": run, "with": run, "ratio"}
    amqp_results = []
    amqp_info: dict = {}  # vhost, or why the scenario was skipped
    ceilings: dict = {}  # scenario (plain, events) -> redis_ceiling()
    rust_only = None  # plain: our worker's idle phase without -A
    latency_results = []
    soak_result = None
    stray_markers = [f"CELERY_BROKER_URL={broker_url}"]
    failures = []

    def attempt(label: str, what: str, fn):
        """fn(), or None after printing its RuntimeError and recording `what` as failed."""
        try:
            return fn()
        except RuntimeError as exc:
            print(f"-- {label}: FAILED: {exc}", flush=True)
            failures.append(what)
            return None

    try:
        ceiling_rounds: dict = {}  # scenario -> every round's redis_ceiling()

        def measure_ceiling(scenario: str, lua: str = CEILING_LUA) -> None:
            """One round of a ceiling; ceilings[scenario] is the median round so far."""
            print(f"-- redis ceiling ({scenario}): {n} messages, one Lua script per "
                  f"{CEILING_BATCH} ...", flush=True)
            res = attempt("redis ceiling", f"redis ceiling ({scenario})",
                          lambda: redis_ceiling(server, template, n, lua))
            if res is not None:
                ceiling_rounds.setdefault(scenario, []).append(res)
                ceilings[scenario] = median_run(ceiling_rounds[scenario], "tasks_per_s")
                print(f"   {res['tasks_per_s']:.0f} tasks/s over {res['wall_s']:.3f}s "
                      f"({res['calls']} calls, preload {res['preload_s']:.1f}s)", flush=True)

        if "plain" in scenarios:
            print("== plain", flush=True)
            template = capture_template(broker_url, backend_url)
            plain_runs = runs("app.workers", env)
            plain_rounds: dict = {label: [] for label, _, _ in plain_runs}

            def plain_round(k: int, label: str, argv: list, run_env: dict) -> None:
                """Round k of one worker (idle phase in round 0); a failed worker is
                not measured again."""
                if k and not plain_rounds[label]:
                    return
                print(f"-- {label}: measuring (round {k + 1} of {args.rounds}) ...", flush=True)
                res = attempt(label, label, lambda: measure(
                    label, argv, run_env, server, template, n, workdir, args.timeout,
                    idle=k == 0, tag=f"round{k + 1}"))
                if res is None:
                    plain_rounds[label].clear()
                    return
                plain_rounds[label].append(res)
                startup = f", startup {res['startup_s']:.2f}s" if "startup_s" in res else ""
                print(f"   {res['tasks_per_s']:.0f} tasks/s over {res['wall_s']:.2f}s "
                      f"(preload {res['preload_s']:.1f}s{startup}), steady "
                      f"{res['steady_tasks_per_s']:.0f}/s, peak {fmt_mib(res['peak_rss_kib'])} "
                      f"MiB, CPU steal {fmt_steal(res['steal'])}", flush=True)

            # Interleaved, so a slow spell of the host weighs on every worker and on
            # the ceilings alike; the median round is reported.
            for k in range(args.rounds):
                measure_ceiling("plain")
                measure_ceiling("kombu", KOMBU_CEILING_LUA)
                for label, argv, run_env in plain_runs:
                    plain_round(k, label, argv, run_env)
            results.extend(median_run(rs, "steady_tasks_per_s")
                           for rs in plain_rounds.values() if rs)
            for label, argv, run_env in [r for r in plain_runs if r[0].startswith("rust")]:
                print(f"-- {label} without -A: idle phase ...", flush=True)
                rust_only = attempt(f"{label} without -A", f"{label} (idle without -A)",
                                    lambda: measure_rust_only_idle(label, argv, run_env,
                                                                   server, workdir))
                if rust_only is not None:
                    print(f"   idle RSS {fmt_mib(rust_only['idle_rss_kib'])} MiB in "
                          f"{rust_only['idle_processes']} process(es), startup "
                          f"{rust_only['startup_s']:.2f}s, libpython mapped: "
                          f"{rust_only['libpython_mapped']}", flush=True)
        if "events" in scenarios:
            print(f"== events: {n} x {TASK}, loaded phase without and with -E "
                  f"(load average {fmt_load(loadavg())})", flush=True)
            template = capture_template(broker_url, backend_url)
            ev_runs = runs("app.workers", env)
            ev_rounds: dict = {(label, key): [] for label, _, _ in ev_runs
                               for key in ("without", "with")}

            def events_round(k: int, label: str, argv: list, run_env: dict) -> None:
                """Round k of one worker, without -E then with; a failed worker is not
                measured again."""
                for key, on in (("without", False), ("with", True)):
                    if k and not ev_rounds[(label, key)]:
                        return
                    name = f"events {label}{' -E' if on else ''}"
                    print(f"-- {name}: measuring (round {k + 1} of {args.rounds}) ...",
                          flush=True)
                    res = attempt(name, f"{label} (events{', -E' if on else ''})",
                                  lambda: measure_events(label, argv, run_env, server, template,
                                                         n, workdir, args.timeout, on))
                    if res is None:
                        ev_rounds[(label, key)].clear()
                        return
                    ev_rounds[(label, key)].append(res)
                    ev = res.get("events")
                    seen = f", {ev['task_succeeded']} task-succeeded events in " \
                        f"{ev['messages']} messages (subscriber CPU " \
                        f"{fmt_opt(ev['subscriber_cpu_s'], '.2f')}s)" if ev else ""
                    print(f"   {res['tasks_per_s']:.0f} tasks/s over {res['wall_s']:.2f}s, steady "
                          f"{res['steady_tasks_per_s']:.0f}/s (preload {res['preload_s']:.1f}s, "
                          f"first result after "
                          f"{res['first_result_s']:.2f}s), peak {fmt_mib(res['peak_rss_kib'])} "
                          f"MiB, CPU steal {fmt_steal(res['steal'])}{seen}", flush=True)

            for k in range(args.rounds):
                measure_ceiling("events")
                for label, argv, run_env in ev_runs:
                    events_round(k, label, argv, run_env)
            for label, _, _ in ev_runs:
                without, with_ = ev_rounds[(label, "without")], ev_rounds[(label, "with")]
                if not (without and with_):
                    continue
                pair = {"worker": label, "without": median_run(without, "steady_tasks_per_s"),
                        "with": median_run(with_, "steady_tasks_per_s")}
                pair["ratio"] = pair["with"]["tasks_per_s"] / pair["without"]["tasks_per_s"]
                pair["steady_ratio"] = (pair["with"]["steady_tasks_per_s"]
                                        / pair["without"]["steady_tasks_per_s"])
                events_results.append(pair)
        if "latency" in scenarios:
            print(f"== latency: {args.latency_warmup} + {args.latency_calls} sequential "
                  f"round trips example_task.delay(i, i).get() (load average "
                  f"{fmt_load(loadavg())})", flush=True)
            for label, argv, run_env in runs("app.workers", env):
                print(f"-- latency {label}: measuring ...", flush=True)
                res = attempt(f"latency {label}", f"{label} (latency)", lambda: measure_latency(
                    label, argv, run_env, server, args, workdir))
                if res is None:
                    continue
                latency_results.append(res)
                print(f"   p50 {fmt_opt(res['p50_ms'], '.3f')} ms, p99 "
                      f"{fmt_opt(res['p99_ms'], '.3f')} ms, max {fmt_opt(res['max_ms'], '.3f')} "
                      f"ms over {res['measured']} round trips ({res['client_s']:.1f}s), "
                      f"{res['bad']} wrong", flush=True)
        if "canvas" in scenarios:
            print(f"== canvas: {args.chains} chains + {args.chords} chords "
                  f"(load average {fmt_load(loadavg())})", flush=True)
            for label, argv, run_env in runs("pyworker_app", canvas_env):
                print(f"-- {label}: publishing, then measuring ...", flush=True)
                res = attempt(label, f"{label} (canvas)", lambda: measure_canvas(
                    label, argv, run_env, server, args, workdir))
                if res is None:
                    continue
                canvas_results.append(res)
                print(f"   {res['workflows_per_s']:.0f} workflows/s, {res['tasks_per_s']:.0f} "
                      f"tasks/s over {res['wall_s']:.2f}s (publish {res['publish_s']:.1f}s), "
                      f"mismatches {res['chain_mismatches']} chain / {res['chord_mismatches']} "
                      f"chord, peak {fmt_mib(res['peak_rss_kib'])} MiB", flush=True)
        if "eta" in scenarios:
            print(f"== eta: {args.eta_tasks} tasks due {args.eta_delay:g}s after publish start "
                  f"(load average {fmt_load(loadavg())})", flush=True)
            for label, argv, run_env in runs("app.workers", env):
                print(f"-- {label}: publishing, then measuring ...", flush=True)
                res = attempt(label, f"{label} (eta)", lambda: measure_eta(
                    label, argv, run_env, server, args, workdir))
                if res is None:
                    continue
                eta_results.append(res)
                print(f"   drained in {res['drain_s']:.2f}s after due = {res['tasks_per_s']:.0f} "
                      f"tasks/s (publish {res['publish_s']:.1f}s, slack {res['slack_s']:.1f}s, "
                      f"queued/held at due {res['queued_at_due']}/{res['held_unacked_at_due']}), "
                      f"early {res['early']}, peak {fmt_mib(res['peak_rss_kib'])} MiB", flush=True)
        if "python" in scenarios:
            print(f"== python: {args.py_noop} x noop_task, {args.py_cpu} x cpu_task({PY_CPU_N}) "
                  f"(load average {fmt_load(loadavg())})", flush=True)
            idle_of: dict = {}  # worker label -> idle figures (measured in the first round)
            rounds = [("noop", PY_NOOP, (), args.py_noop, None),
                      ("cpu", PY_CPU, (PY_CPU_N,), args.py_cpu, PY_CPU_EXPECTED)]
            for kind, task, targs, count, expected in rounds:
                if count <= 0:
                    continue
                template = capture_template(broker_url, backend_url, task, targs)
                py_results[kind] = []
                for label, argv, run_env in runs("app.workers", env, ("-P", "prefork")):
                    print(f"-- python/{kind} {label}: measuring ...", flush=True)
                    res = attempt(f"python/{kind} {label}", f"{label} (python/{kind})",
                                  lambda: measure(label, argv, run_env, server, template, count,
                                                  workdir, args.timeout,
                                                  args_for=lambda i, a=list(targs): a,
                                                  expected=expected, idle=label not in idle_of,
                                                  tag=kind))
                    if res is None:
                        continue
                    res["task"] = task
                    res["loadavg_after"] = loadavg()
                    if "idle_rss_kib" in res:
                        idle_of[label] = {k: res[k] for k in
                                          ("startup_s", "idle_rss_kib", "idle_processes",
                                           "idle_rss_by_process_kib")}
                    else:
                        res.update(idle_of.get(label, {}), idle_from="noop round")
                    py_results[kind].append(res)
                    start = f", startup {res['startup_s']:.2f}s" if "startup_s" in res else ""
                    print(f"   {res['tasks_per_s']:.0f} tasks/s over {res['wall_s']:.2f}s "
                          f"(preload {res['preload_s']:.1f}s{start}, first result after "
                          f"{res['first_result_s']:.2f}s), idle RSS "
                          f"{fmt_mib(res.get('idle_rss_kib'))} MiB, peak "
                          f"{fmt_mib(res['peak_rss_kib'])} MiB in {res['peak_processes']} "
                          f"processes, {res['missing']} missing / {res['bad_results']} wrong, "
                          f"load {fmt_load(res['loadavg_after'])}", flush=True)
        if "soak" in scenarios:
            rounds = soak_rounds(args)
            print(f"== soak: {rounds * args.soak_batch:,} task executions in {rounds} rounds "
                  f"of {args.soak_batch:,} (load average {fmt_load(loadavg())})", flush=True)
            print("celery: not run in the soak (it measures our worker's memory over time)",
                  flush=True)
            for label, argv, run_env in [r for r in runs("pyworker_app", canvas_env)
                                         if r[0].startswith("rust")]:
                print(f"-- soak {label}: running ...", flush=True)
                soak_result = attempt(f"soak {label}", f"{label} (soak)", lambda: measure_soak(
                    label, argv, run_env, server, args, workdir))
                if soak_result is not None:
                    print(f"   {soak_result['tasks_per_s']:.0f} tasks/s over "
                          f"{soak_result['wall_s']:.1f}s, RSS at 10 % "
                          f"{fmt_mib(soak_result['rss_at_10pct_kib'])} MiB, end "
                          f"{fmt_mib(soak_result['rss_end_kib'])} MiB, "
                          f"{soak_result['leaks']['total']} leaked keys", flush=True)
        if "amqp" in scenarios:
            print(f"== amqp: {n} x {TASK}, broker RabbitMQ, results in Redis db 1 "
                  f"(load average {fmt_load(loadavg())})", flush=True)
            why = rabbit_unavailable()
            vhost = f"rcw-bench-{uuid.uuid4()}"
            if why is None:
                try:
                    rabbitmqctl("add_vhost", vhost)
                except RuntimeError as exc:
                    why = str(exc)
            if why is not None:
                print(f"-- amqp: SKIPPED: {why}", flush=True)
                amqp_info["skipped"] = why
            else:
                amqp_info["vhost"] = vhost
                queue = None
                try:
                    rabbitmqctl("set_permissions", "-p", vhost, AMQP_USER, ".*", ".*", ".*")
                    queue = AmqpQueue(vhost, server)
                    stray_markers.append(f"CELERY_BROKER_URL={queue.url}")
                    amqp_env = dict(env, CELERY_BROKER_URL=queue.url)
                    template = queue.capture_template(args, amqp_env, workdir)
                    amqp_info["template"] = template
                    for label, argv, run_env in runs("app.workers", amqp_env, broker=queue.url):
                        print(f"-- amqp {label}: measuring ...", flush=True)
                        res = attempt(f"amqp {label}", f"{label} (amqp)", lambda: measure(
                            label, argv, run_env, server, template, n, workdir, args.timeout,
                            tag="amqp", queue=queue))
                        if res is None:
                            continue
                        res["loadavg_after"] = loadavg()
                        amqp_results.append(res)
                        print(f"   {res['tasks_per_s']:.0f} tasks/s over {res['wall_s']:.2f}s, "
                              f"steady {res['steady_tasks_per_s']:.0f}/s (preload "
                              f"{res['preload_s']:.1f}s, startup {res['startup_s']:.2f}s), idle "
                              f"RSS {fmt_mib(res['idle_rss_kib'])} MiB, peak "
                              f"{fmt_mib(res['peak_rss_kib'])} MiB, CPU "
                              f"{res['cpu_parent_s']:.2f} + {res['cpu_children_s']:.2f}s, "
                              f"load {fmt_load(res['loadavg_after'])}", flush=True)
                except RuntimeError as exc:  # vhost setup or capture: the scenario fails
                    print(f"-- amqp: FAILED: {exc}", flush=True)
                    failures.append("amqp")
                finally:
                    if queue is not None:
                        queue.close()
                    try:
                        rabbitmqctl("delete_vhost", vhost)
                    except RuntimeError as exc:
                        print(f"WARNING: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        server.stop()
        strays = [proc for marker in stray_markers for proc in stray_processes(marker)]
        for pid, cmd in strays:
            print(f"WARNING: process {pid} left behind ({cmd[:120]}); SIGKILL", file=sys.stderr)
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    load_end = loadavg()
    if results:
        print_plain(results, n, failures, ceiling=ceilings.get("plain"),
                    kombu_ceiling=ceilings.get("kombu"))
    elif ceilings.get("plain"):
        print(f"\nRedis ceiling (plain): {ceilings['plain']['tasks_per_s']:.0f} tasks/s")
    if rust_only:
        print_rust_only(rust_only, results)
    if events_results:
        print_events(events_results, n, failures, ceiling=ceilings.get("events"))
    if latency_results:
        print_latency(latency_results, failures)
    if canvas_results:
        print_canvas(canvas_results, failures)
    if eta_results:
        print_eta(eta_results, failures)
    if any(py_results.values()):
        print_python(py_results, failures)
    if soak_result:
        print_soak(soak_result, failures)
    if amqp_results:
        print_amqp(amqp_results, n, failures, amqp_info["vhost"])
    elif amqp_info.get("skipped"):
        print(f"\namqp: skipped ({amqp_info['skipped']})")
    if strays:
        failures.append(f"{len(strays)} process(es) left behind")
    rows = summary_rows(results, events_results, py_results, latency_results, rust_only,
                        ceilings, soak_result)
    command = shlex.join(["python", "bench/bench.py", *sys.argv[1:]])
    run_steal = steal_share(steal_start, time.monotonic() - t_start)
    print_summary(rows, command, (load_start, load_end), run_steal)
    if results or events_results or canvas_results or eta_results or any(py_results.values()) \
            or amqp_results or latency_results or rust_only or ceilings or soak_result:
        out_path = Path(args.json) if args.json else \
            ROOT / "bench" / "results" / f"{dt.datetime.now():%Y%m%d-%H%M%S}.json"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"tasks": n, "concurrency": c, "results": results, "scenarios": scenarios,
               "cpus": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": load_end,
               "steal": run_steal,
               "command": command, "redis_ceiling": ceilings,
               "summary": {"targets": {"ceiling_share": CEILING_TARGET,
                                       "python_noop_x_celery": PY_NOOP_TARGET,
                                       "python_cpu_x_celery": PY_CPU_TARGET,
                                       "p50_ms": LATENCY_P50_TARGET_MS,
                                       "p99_ms": LATENCY_P99_TARGET_MS,
                                       "rust_only_idle_rss_kib": RUST_ONLY_IDLE_TARGET_KIB,
                                       "with_app_idle_x_celery": WITH_APP_IDLE_TARGET,
                                       "soak_rss_end_x_at_10pct": SOAK_RSS_TARGET,
                                       "soak_leaked_keys": 0},
                           "rows": rows}}
        if "plain" in scenarios:
            doc["rust_only_idle"] = rust_only
        if "latency" in scenarios:
            doc["latency"] = {"warmup": args.latency_warmup, "calls": args.latency_calls,
                              "target_p50_ms": LATENCY_P50_TARGET_MS,
                              "target_p99_ms": LATENCY_P99_TARGET_MS,
                              "results": latency_results}
        if "events" in scenarios:
            ours = [p for p in events_results if p["worker"].startswith("rust")]
            doc["events"] = {"tasks": n, "target_ratio": EVENTS_TARGET,
                             "redis_ceiling": ceilings.get("events"),
                             "rust_meets_target": ours[0]["ratio"] >= EVENTS_TARGET
                             if ours else None,
                             "rust_meets_target_steady": ours[0]["steady_ratio"] >= EVENTS_TARGET
                             if ours else None,
                             "results": events_results}
        if "canvas" in scenarios:
            doc["canvas"] = {"chains": args.chains, "chords": args.chords,
                             "results": canvas_results}
        if "eta" in scenarios:
            doc["eta"] = {"tasks": args.eta_tasks, "delay_s": args.eta_delay,
                          "results": eta_results}
        if "python" in scenarios:
            doc["python"] = {"noop_tasks": args.py_noop, "cpu_tasks": args.py_cpu,
                             "cpu_n": PY_CPU_N, "results": py_results}
        if "soak" in scenarios:
            doc["soak"] = {"tasks": args.soak_tasks, "batch": args.soak_batch,
                           "mix": dict(SOAK_MIX), "target_rss_ratio": SOAK_RSS_TARGET,
                           "result": soak_result}
        if "amqp" in scenarios:
            doc["amqp"] = {"tasks": n, "broker": f"amqp://{AMQP_HOST}:{AMQP_PORT}",
                           "reference_tasks_per_s": AMQP_REFERENCE_TASKS_PER_S,
                           **amqp_info, "results": amqp_results}
        out_path.write_text(json.dumps(doc, indent=2))
        print(f"results written to {out_path}")
    if failures:
        print(f"FAILED: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
