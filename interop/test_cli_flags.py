"""Command-line options of ``celery worker`` with Celery's meaning: pidfile, logfile,
detach, queue exclusion, purge, autoscale, embedded beat (``-B``), no orphaned pool
processes, signals (HUP, USR1, QUIT) and the spellings of the common options.

Tests that need the prefork pool use ``cliapp.py`` (Python-only tasks; Celery's worker
runs with ``-P prefork``, ours with its default prefork pool); the beat tests use
``beatapp.py``.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import types
import uuid
from pathlib import Path

import pytest

import helpers

# Each test runs its own app (or flags that don't depend on the task
# implementation): the rust-python pass of `make test` would repeat it.
pytestmark = pytest.mark.one_mode
from helpers import WORKER_KIND, WorkerProcess, wait_for_pidbox, wait_until, worker_argv

GET_TIMEOUT = 15
READY_RE = re.compile(r"\bready\.")
EX_CANTCREAT = 73


# --------------------------------------------------------------------------- helpers


def _proc_stat(pid: int):
    """(state, ppid) of ``pid`` from /proc, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
    except OSError:
        return None
    # comm may contain spaces/parens: split after the last ')'.
    rest = data[data.rindex(")") + 2:].split()
    return rest[0], int(rest[1])


def _alive(pid: int) -> bool:
    """Running (exists and is not a zombie)."""
    st = _proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _descendants(root: int) -> set:
    """Live descendants of ``root`` (by PPID)."""
    children: dict = {}
    for pid in _all_pids():
        st = _proc_stat(pid)
        if st is not None and st[0] not in ("Z", "X"):
            children.setdefault(st[1], []).append(pid)
    out, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _worker_processes(w: WorkerProcess) -> set:
    """Pool processes (etc.) of worker ``w``: its live descendants (Celery's
    ForkPoolWorkers, our ``--pool-child`` processes), plus any live process naming its
    (unique) node name on its command line."""
    found = _descendants(w.pid)
    for pid in _all_pids():
        if pid != w.pid and _alive(pid) and w.name in _cmdline(pid):
            found.add(pid)
    found.discard(w.pid)
    return found


def _leftovers(w: WorkerProcess, known: set) -> set:
    """Processes of ``w`` still running: those seen before plus any new ones."""
    alive = {pid for pid in known if _alive(pid)}
    for pid in _all_pids():
        if pid != w.pid and _alive(pid):
            st = _proc_stat(pid)
            if w.name in _cmdline(pid) or (st and st[1] == w.pid):
                alive.add(pid)
    return alive


def _pool_size(app, node: str) -> int:
    """Number of pool processes ``node`` reports (``stats()['pool']['processes']``, a
    list of pids; ``max-concurrency`` if the pool lists none)."""
    stats = app.control.inspect([node], timeout=1.0).stats() or {}
    pool = stats.get(node, {}).get("pool", {})
    if "processes" in pool:
        return len(pool["processes"])
    return int(pool.get("max-concurrency") or 0)


def _wait_gone(pid: int, timeout: float, what: str) -> None:
    wait_until(lambda: not _alive(pid), timeout=timeout, what=what)


def _kill_tree(pid: int) -> None:
    """Best-effort SIGKILL of ``pid``, its process group and its descendants."""
    for p in _descendants(pid) | {pid}:
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not _alive(proc.pid)
    return proc.pid


def _env_for(urls, kind: str, extra: dict | None = None) -> dict:
    """The environment the ``worker`` fixture gives a worker of ``kind``."""
    extra_env = dict(extra or {})
    if kind in ("rust", "rust-python"):
        extra_env.setdefault("RUST_BACKTRACE", "1")
        if kind == "rust":
            extra_env.setdefault("RCW_TEST_TASKS", "1")
        else:
            extra_env.setdefault("RCW_NATIVE_TASKS", "0")
            extra_env.setdefault("RCW_PY_SETTINGS", "{}")
    else:
        extra_env.setdefault("RCW_PY_SETTINGS", "{}")
    return helpers.worker_env(*urls, extra_env)


@pytest.fixture
def spawn(request, tmp_path, urls):
    """Start a worker from an explicit argv (``spawn(argv, name)`` → WorkerProcess,
    not waited for); stopped (SIGTERM, then SIGKILL of its group) at teardown."""
    started = []

    def start(argv, name, env=None, kind=None):
        kind = kind or WORKER_KIND
        if kind in ("rust", "rust-python"):
            request.getfixturevalue("rust_bin")
        proc = WorkerProcess(kind, [str(a) for a in argv],
                             env or _env_for(urls, kind),
                             helpers.PYTHON_DIR, tmp_path / f"spawn-{name}.log", name)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        rc = proc.stop(timeout=15)
        print(f"--- spawned {proc.name} exit={rc} log={proc.log_path}")
        print(proc.log_tail(4000))


#: Options of the harness's argv that take a separate value word (``-c 2``).
_VALUE_OPTS = {"-A", "-b", "--result-backend", "-c", "-l", "-n", "-P", "-Q",
               "--prefetch-multiplier"}
_SAME = {"--app": "-A", "--broker": "-b", "--concurrency": "-c", "--loglevel": "-l",
         "--hostname": "-n", "--pool": "-P", "--queues": "-Q"}


def _opt_of(arg: str):
    """The canonical option an argv word sets (``-linfo`` → ``-l``,
    ``--concurrency=2`` → ``-c``), or None for a non-option word."""
    if arg.startswith("--"):
        opt = arg.split("=", 1)[0]
        return _SAME.get(opt, opt)
    if arg.startswith("-") and len(arg) >= 2:
        return arg[:2]
    return None


def _argv(urls, name: str, extra=(), kind: str | None = None, **kwargs) -> list:
    """``helpers.worker_argv`` + ``extra``, minus the harness's own occurrence of any
    option ``extra`` sets: click takes the last of a repeated option, a clap parser
    refuses the repeat, so each option appears once (``-c``, ``-l``, ``-E``...)."""
    broker_url, backend_url = urls
    base = worker_argv(kind or WORKER_KIND, broker_url=broker_url, backend_url=backend_url,
                       name=name, **kwargs)
    given = {_opt_of(a) for a in extra} - {None}
    out, i = [base[0]], 1
    while i < len(base):
        arg = base[i]
        if _opt_of(arg) in given:
            i += 2 if arg in _VALUE_OPTS else 1
            continue
        out.append(arg)
        i += 1
    return out + list(extra)


def _name() -> str:
    return f"cli-{uuid.uuid4().hex[:8]}"


def _roundtrip(celery_client, i: int = 0) -> None:
    res = celery_client.send_task("app.workers.tasks.example_task", args=[i, 100])
    assert res.get(timeout=GET_TIMEOUT) == i + 100


def _add(celery_client, x: int = 1, y: int = 2):
    res = celery_client.send_task("cliapp.add", args=[x, y])
    assert res.get(timeout=GET_TIMEOUT) == x + y
    return res


def _while_alive(w: WorkerProcess, predicate, timeout: float, what: str,
                 interval: float = 0.05):
    """Poll ``predicate`` like ``wait_until``, but fail at once if the worker exits."""
    deadline = time.monotonic() + timeout
    while True:
        if not w.alive():
            raise AssertionError(f"worker {w.name} exited (rc={w.proc.returncode}) before "
                                 f"{what}; log tail:\n{w.log_tail()}")
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                 f"log tail:\n{w.log_tail()}")
        time.sleep(interval)


def _banner(w: WorkerProcess) -> str:
    """The worker's log without the harness's ``$ argv`` first line."""
    return w.log().split("\n", 1)[-1]


@pytest.fixture
def daemons():
    """Detached workers to clean up: append their pid (``.pids``) and/or their unique
    name (``.names``: any live process whose command line contains it is killed)."""
    reg = types.SimpleNamespace(pids=[], names=[])
    yield reg
    targets = set(p for p in reg.pids if _alive(p))
    for pid in _all_pids():
        if _alive(pid) and any(n in _cmdline(pid) for n in reg.names):
            targets.add(pid)
    targets.discard(os.getpid())
    for pid in targets:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in targets) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in targets:
        if _alive(pid):
            _kill_tree(pid)


# --------------------------------------------------------------------------- pidfile


def test_pidfile_written_locked_and_removed(worker, tmp_path):
    """``--pidfile=<dir>/%n.pid``: ``<pid>\\n`` in ``<dir>/<name>.pid``; a second worker
    with the same pidfile refuses to start (exit 73, EX_CANTCREAT); warm shutdown
    removes the file."""
    name = _name()
    w = worker(name=name, extra_args=[f"--pidfile={tmp_path}/%n.pid"])
    pidfile = tmp_path / f"{name}.pid"
    wait_until(pidfile.exists, timeout=5, what=f"{pidfile}")
    assert pidfile.read_text() == f"{w.pid}\n"

    second = worker(wait_ready=False, extra_args=[f"--pidfile={pidfile}"])
    second.proc.wait(timeout=20)
    log = _banner(second)
    assert second.proc.returncode == EX_CANTCREAT, log
    assert f"ERROR: Pidfile ({pidfile}) already exists." in log
    assert not READY_RE.search(log)
    assert pidfile.read_text() == f"{w.pid}\n", "the refused worker touched the pidfile"
    assert w.alive()

    w.send_signal(signal.SIGTERM)
    w.proc.wait(timeout=20)
    assert w.proc.returncode == 0
    assert not pidfile.exists(), "warm shutdown left the pidfile behind"


def test_stale_pidfile_is_removed(worker, celery_client, tmp_path):
    """A pidfile naming a dead process is stale: removed, and the worker starts."""
    pidfile = tmp_path / "stale.pid"
    pidfile.write_text(f"{_dead_pid()}\n")
    w = worker(extra_args=[f"--pidfile={pidfile}"])
    wait_until(lambda: pidfile.exists() and pidfile.read_text() == f"{w.pid}\n", timeout=5,
               what="the pidfile rewritten with the new pid")
    _roundtrip(celery_client)


# --------------------------------------------------------------------------- logfile


@pytest.mark.parametrize("spelling", ["-f", "--logfile="])
def test_logfile_gets_the_log(worker, celery_client, tmp_path, spelling):
    """``-f/--logfile=<dir>/%n.log``: the worker's log lines go to that file."""
    name = _name()
    template = f"{tmp_path}/%n.log"
    args = ["-f", template] if spelling == "-f" else [f"--logfile={template}"]
    w = worker(name=name, wait_ready=False, extra_args=args)
    logfile = tmp_path / f"{name}.log"

    _while_alive(w, lambda: READY_RE.search(logfile.read_text(errors="replace")), timeout=30,
                 what=f"'ready.' in {logfile}")
    res = celery_client.send_task("app.workers.tasks.example_task", args=[1, 2])
    assert res.get(timeout=GET_TIMEOUT) == 3
    wait_until(lambda: f"[{res.id}] succeeded" in logfile.read_text(errors="replace"),
               timeout=5, what="the task's 'succeeded' line in the logfile")


# --------------------------------------------------------------------------- detach


@pytest.mark.timeout(60)
def test_detach_daemonizes(worker, celery_client, tmp_path, daemons):
    """``-D --pidfile --logfile``: the launched command exits 0 at once; the daemon
    (pid from the pidfile, another process) serves tasks; SIGTERM stops it and
    removes the pidfile."""
    name = _name()
    daemons.names.append(name)
    pidfile, logfile = tmp_path / "detached.pid", tmp_path / "detached.log"
    launcher = worker(name=name, wait_ready=False,
                      extra_args=["-D", f"--pidfile={pidfile}", f"--logfile={logfile}"])
    launcher.proc.wait(timeout=15)
    elapsed = time.monotonic() - launcher.started_at
    assert launcher.proc.returncode == 0, launcher.log_tail()
    assert elapsed < 10, f"the launcher took {elapsed:.1f}s to return"

    wait_until(lambda: pidfile.exists() and pidfile.read_text().endswith("\n"), timeout=15,
               what="the daemon's pidfile")
    pid = int(pidfile.read_text())
    daemons.pids.append(pid)
    assert pid != launcher.pid
    assert _alive(pid)
    wait_until(lambda: logfile.exists() and READY_RE.search(logfile.read_text(errors="replace")),
               timeout=30, what=f"'ready.' in {logfile}")
    _roundtrip(celery_client, 7)

    os.kill(pid, signal.SIGTERM)
    _wait_gone(pid, timeout=20, what="the daemon to exit after SIGTERM")
    wait_until(lambda: not pidfile.exists(), timeout=5, what="the pidfile to be removed")


# --------------------------------------------------------------------------- queues


@pytest.mark.parametrize("spelling", ["-X", "--exclude-queues="])
def test_exclude_queues(worker, celery_client, transport, backend, spelling):
    """``-Q a,b -X b``: a is consumed, b is not."""
    suffix = uuid.uuid4().hex[:8]
    a, b = f"qa-{suffix}", f"qb-{suffix}"
    exclude = ["-X", b] if spelling == "-X" else [f"--exclude-queues={b}"]
    worker(queues=[a, b], extra_args=exclude)
    left = celery_client.send_task("rcw.testing.echo", args=["b"], queue=b)
    ran = celery_client.send_task("rcw.testing.echo", args=["a"], queue=a)
    assert ran.get(timeout=GET_TIMEOUT) == "a"
    time.sleep(1.5)
    assert transport.queue_length(b) == 1
    assert helpers.result_meta(backend, left.id) is None


@pytest.mark.parametrize("flag", ["--purge", "--discard"])
def test_purge_discards_waiting_messages(worker, celery_client, transport, backend,
                                         queue_name, flag):
    """``--purge``/``--discard``: messages waiting in the consumed queues are deleted
    at start; tasks sent afterwards run."""
    stale = [celery_client.send_task("app.workers.tasks.example_task", args=[i, 0],
                                     queue=queue_name) for i in range(3)]
    assert transport.queue_length(queue_name) == 3
    w = worker(queues=[queue_name], extra_args=[flag])
    fresh = celery_client.send_task("app.workers.tasks.example_task", args=[5, 5],
                                    queue=queue_name)
    assert fresh.get(timeout=GET_TIMEOUT) == 10
    time.sleep(0.5)
    assert transport.queue_length(queue_name) == 0
    assert [helpers.result_meta(backend, r.id) for r in stale] == [None] * 3
    assert not any(r.id in w.log() for r in stale), "a purged message was received"


# --------------------------------------------------------------------------- autoscale


@pytest.mark.timeout(90)
def test_autoscale_grows_under_load_and_shrinks_back(worker, celery_client):
    """``--autoscale=3,1`` on the prefork pool: a burst of sleeping tasks grows the pool
    to 3 processes; idle again (``AUTOSCALE_KEEPALIVE=1``) it shrinks back to 1."""
    w = worker(app="cliapp", pool="prefork", extra_args=["--autoscale=3,1"],
               env={"AUTOSCALE_KEEPALIVE": "1"})
    wait_for_pidbox(celery_client, w.node)
    wait_until(lambda: _pool_size(celery_client, w.node) == 1, timeout=10,
               what="1 pool process at start")
    burst = [celery_client.send_task("cliapp.sleep", args=[3, i]) for i in range(6)]
    seen = []

    def size() -> int:
        seen.append(_pool_size(celery_client, w.node))
        return seen[-1]

    wait_until(lambda: size() == 3, timeout=10, interval=0.2,
               what="the pool to grow to 3 processes")
    deadline = time.monotonic() + 30
    while not all(res.ready() for res in burst) and time.monotonic() < deadline:
        size()
        time.sleep(0.2)
    for i, res in enumerate(burst):
        assert res.get(timeout=30) == i
    assert max(seen) == 3, f"the pool went beyond --autoscale's max of 3: {seen}"
    wait_until(lambda: _pool_size(celery_client, w.node) == 1, timeout=15,
               interval=0.5, what="the pool to shrink back to 1 process")
    _add(celery_client)
    # The `autoscale` remote command changes the bounds; a higher min grows at once.
    reply = celery_client.control.autoscale(4, 2, destination=[w.node], reply=True,
                                            timeout=5)
    assert reply == [{w.node: {"ok": "autoscale now max=4 min=2"}}], reply
    wait_until(lambda: _pool_size(celery_client, w.node) == 2, timeout=15,
               interval=0.5, what="the pool to grow to the new minimum of 2")


# --------------------------------------------------------------------------- beat


def _runs(side_redis, entry: str) -> list:
    return [json.loads(raw) for raw in side_redis.lrange(f"beat:{entry}", 0, -1)]


@pytest.mark.timeout(60)
def test_embedded_beat_runs_the_schedule(worker, side_redis, tmp_path):
    """``-B -s <file>``: the app's ``beat_schedule`` runs inside the worker: a float
    1.0 s entry (args/kwargs arrive), a ``timedelta(seconds=1)`` entry and a daily
    ``crontab(minute=, hour=)`` entry whose ``nowfun`` puts its minute ~3 s ahead (it
    fires once). The schedule file lands where ``-s`` says."""
    schedule = tmp_path / "celerybeat-schedule"
    w = worker(app="beatapp", extra_args=["-B", "-s", str(schedule)],
               env={"BEATAPP_CRON_LEAD": "3"})
    deadline = w.started_at + 10.0
    wait_until(lambda: _runs(side_redis, "cron"), timeout=max(1.0, deadline - time.monotonic()),
               interval=0.1, what="the crontab entry to fire within 10 s of the start")
    wait_until(lambda: len(_runs(side_redis, "every-second")) >= 4
               and len(_runs(side_redis, "every-td")) >= 4, timeout=10, interval=0.1,
               what="4 runs of each 1 s entry")
    time.sleep(1.0)

    every = _runs(side_redis, "every-second")
    assert all(r["args"] == [1, "two"] and r["kwargs"] == {"flag": True, "n": 3}
               for r in every), every
    assert all(r["args"] == [] and r["kwargs"] == {} for r in _runs(side_redis, "every-td"))
    cron = _runs(side_redis, "cron")
    assert len(cron) == 1, cron
    assert cron[0]["args"] == [] and cron[0]["kwargs"] == {"at": "minute"}
    # About once per second: over the span of the runs seen, not a burst.
    for entry in ("every-second", "every-td"):
        times = sorted(r["t"] for r in _runs(side_redis, entry))
        span = times[-1] - times[0]
        assert len(times) - 1 <= span + 1.5, f"{entry}: {len(times)} runs in {span:.1f}s"
        assert len(times) - 1 >= span - 1.5, f"{entry}: {len(times)} runs in {span:.1f}s"
    w.stop()
    assert list(tmp_path.glob("celerybeat-schedule*")), "no schedule file in -s's place"


@pytest.mark.timeout(60)
def test_embedded_beat_with_a_third_party_scheduler(worker, side_redis, tmp_path):
    """``-B --scheduler redbeat.RedBeatScheduler``: RedBeat's scheduler (schedule and
    lock in the broker's Redis -- the result backend's with an AMQP broker --, lock
    token in a thread-local) runs the entries."""
    pytest.importorskip("redbeat")
    worker(app="redbeatapp", extra_args=["-B", "--scheduler", "redbeat.RedBeatScheduler",
                                         "-s", str(tmp_path / "unused")])
    wait_until(lambda: side_redis.llen("redbeat-runs") >= 3, timeout=15, interval=0.2,
               what="3 runs of the RedBeat entry")
    assert side_redis.exists("redbeat:tick"), "RedBeat did not store its entry"
    assert side_redis.exists("redbeat::lock"), "RedBeat's own lock is not held"


@pytest.mark.rust_only
@pytest.mark.timeout(60)
def test_two_embedded_beats_fire_once_per_period(worker, side_redis, tmp_path):
    """Two ``-B`` workers on one broker, each with its own ``-s`` file: each entry
    fires once per period across both. Celery's embedded beat has no cross-worker
    lock (each ``-B`` worker runs its own scheduler), so it fires twice: rust_only."""
    # No cron entry: Celery's beat would sleep until it is due, starving the 1 s
    # entry for a few seconds and hiding the doubling (measured with Celery: 12 runs
    # in the 6 s window without it, 8 with it).
    env = {"BEATAPP_CRON": "0"}
    worker(app="beatapp", extra_args=["-B", "-s", str(tmp_path / "s1")], env=env)
    worker(app="beatapp", extra_args=["-B", "-s", str(tmp_path / "s2")], env=env)
    side_redis.delete("beat:every-second")
    t0 = time.time()
    time.sleep(6.0)
    runs = [r for r in _runs(side_redis, "every-second") if t0 <= r["t"] <= t0 + 6.0]
    assert 3 <= len(runs) <= 8, f"{len(runs)} runs of the 1 s entry in 6 s"


@pytest.mark.rust_only
@pytest.mark.timeout(60)
def test_beat_lock_is_taken_over_when_its_holder_dies(worker, side_redis, tmp_path):
    """The ``-B`` leader is killed with SIGKILL (it cannot release the lock): once its
    lease expires (``beat_lock_timeout=2``) the other ``-B`` worker schedules."""
    env = {"BEATAPP_CRON": "0"}
    settings = {"beat_lock_timeout": 2}
    first = worker(app="beatapp", extra_args=["-B", "-s", str(tmp_path / "s1")], env=env,
                   settings=settings)
    first.wait_for_log("beat: this worker schedules now", timeout=10)
    second = worker(app="beatapp", extra_args=["-B", "-s", str(tmp_path / "s2")], env=env,
                    settings=settings)
    second.wait_for_log("another worker holds the beat lock", timeout=10)
    time.sleep(2.0)
    assert "Sending due task" not in second.log(), "the stand-by worker scheduled"
    assert "Sending due task every-second" in first.log()
    first.kill9()
    second.wait_for_log("beat: this worker schedules now", timeout=10)
    second.wait_for_log("Sending due task every-second", timeout=10)


def test_remap_sigterm_makes_term_cold(worker, celery_client, side_redis):
    """``REMAP_SIGTERM=SIGQUIT``: SIGTERM is a cold shutdown, so a running task is cut
    off (a warm shutdown would let it finish and set the marker)."""
    w = worker(app="cliapp", pool="prefork", concurrency=1, env={"REMAP_SIGTERM": "SIGQUIT"})
    key = f"marker-{uuid.uuid4().hex[:8]}"
    celery_client.send_task("cliapp.sleep_then_mark", args=[3, key])
    wait_until(lambda: side_redis.get(f"{key}:started"), timeout=15, what="the task to start")
    w.send_signal(signal.SIGTERM)
    w.proc.wait(timeout=10)
    assert "Cold shutdown" in w.log()
    time.sleep(4)
    assert side_redis.get(key) is None, "SIGTERM was warm despite REMAP_SIGTERM=SIGQUIT"


# --------------------------------------------------------------------------- orphans


def _prefork_worker(worker, celery_client, **kwargs):
    """A ``cliapp`` worker on the prefork pool with its 2 pool processes up (a task
    ran in one of them); returns (worker, its processes)."""
    w = worker(app="cliapp", pool="prefork", concurrency=2, **kwargs)
    child = celery_client.send_task("cliapp.pid").get(timeout=GET_TIMEOUT)
    assert child != w.pid, "the task did not run in a pool process"
    procs = wait_until(lambda: (lambda p: p if len(p) >= 2 else None)(_worker_processes(w)),
                       timeout=10, what="2 pool processes")
    assert child in procs, (child, procs)
    return w, procs


def test_kill9_of_the_group_leaves_no_process(worker, celery_client):
    """``kill -9`` of the worker's whole process group: nothing of it is left."""
    w, procs = _prefork_worker(worker, celery_client)
    w.kill9()
    wait_until(lambda: not _leftovers(w, procs), timeout=3,
               what=f"no process of the worker left (had {sorted(procs)})")


def test_kill9_of_the_worker_alone_leaves_no_pool_process(worker, celery_client):
    """SIGKILL of the worker process only (not its group): the pool children notice
    and exit. (Celery 5.7's billiard 4.3 children get ``PR_SET_PDEATHSIG`` and die
    with their parent within ~0.1 s, so Celery's worker passes this too.)"""
    w, procs = _prefork_worker(worker, celery_client)
    os.kill(w.pid, signal.SIGKILL)
    w.proc.wait(timeout=5)
    wait_until(lambda: not _leftovers(w, procs), timeout=3,
               what=f"the pool processes {sorted(procs)} to exit after their parent died")


def test_cold_shutdown_abandons_the_running_task(worker, celery_client, side_redis):
    """SIGQUIT (cold shutdown) while a 4 s task runs: the worker exits, no pool process
    remains, and the abandoned task never finishes behind the worker's back."""
    w, procs = _prefork_worker(worker, celery_client)
    key = f"marker-{uuid.uuid4().hex[:8]}"
    celery_client.send_task("cliapp.sleep_then_mark", args=[4, key])
    wait_until(lambda: side_redis.get(f"{key}:started"), timeout=10, what="the task to start")
    t0 = time.monotonic()
    w.send_signal(signal.SIGQUIT)
    w.proc.wait(timeout=10)
    wait_until(lambda: not _leftovers(w, procs), timeout=3,
               what=f"no pool process left after the cold shutdown (had {sorted(procs)})")
    time.sleep(max(0.0, t0 + 6.0 - time.monotonic()))
    assert side_redis.get(key) is None, "the abandoned task finished after the cold shutdown"


# --------------------------------------------------------------------------- signals


def test_sighup_restarts_in_place(spawn, celery_client, urls):
    """SIGHUP (stdout not a tty): the worker restarts itself with the same pid,
    logs 'ready.' again and still runs tasks.

    Celery re-execs ``sys.executable + sys.argv``; under ``python -m celery`` argv[0]
    is ``celery/__main__.py``, which fails as a script (relative import), so Celery's
    worker is started through its ``celery`` console script here."""
    name = _name()
    argv = _argv(urls, name)
    if WORKER_KIND == "python":
        assert argv[1:3] == ["-m", "celery"], argv
        argv = [str(Path(argv[0]).parent / "celery"), *argv[3:]]
    w = spawn(argv, name)
    w.wait_ready(30)
    _roundtrip(celery_client, 1)
    w.send_signal(signal.SIGHUP)

    _while_alive(w, lambda: len(READY_RE.findall(_banner(w))) >= 2, timeout=25,
                 interval=0.1, what="'ready.' a second time")
    assert "Restarting" in w.log()
    _roundtrip(celery_client, 2)
    assert w.alive()


def _usr1(worker, celery_client):
    """A worker running a 2.5 s task gets SIGUSR1; returns (worker, task, log offset
    at the signal) once something was logged after it."""
    w = worker()
    res = celery_client.send_task("rcw.testing.sleep", args=[2.5, "slept"])
    w.wait_for_log(f"[{res.id}] received", timeout=10)
    time.sleep(0.5)
    before = len(w.log())
    w.send_signal(signal.SIGUSR1)
    wait_until(lambda: w.log()[before:].strip(), timeout=5, what="output after SIGUSR1")
    return w, res, before


def test_sigusr1_dumps_and_keeps_running(worker, celery_client):
    """SIGUSR1: the worker logs what it is doing (Celery: every thread's stack) and
    carries on: the running task finishes, new ones run."""
    w, res, _ = _usr1(worker, celery_client)
    time.sleep(0.3)
    assert w.alive(), "SIGUSR1 stopped the worker"
    assert res.get(timeout=GET_TIMEOUT) == "slept"
    _roundtrip(celery_client, 3)
    assert w.alive()


@pytest.mark.rust_only
def test_sigusr1_dump_names_the_running_task(worker, celery_client):
    """Our SIGUSR1 dump lists the running tasks by id (Celery's dump is the stack of
    every thread, which names no task: rust_only)."""
    w, res, before = _usr1(worker, celery_client)

    def dumped():
        return [line for line in w.log()[before:].splitlines()
                if res.id in line and not helpers.SUCCEEDED_RE.search(line)]
    wait_until(dumped, timeout=1.5, what=f"the running task's id {res.id} in the dump")
    assert w.alive()
    assert res.get(timeout=GET_TIMEOUT) == "slept"


# --------------------------------------------------------------------------- spellings


def test_many_options_together(spawn, celery_client, urls, tmp_path):
    """All of these at once are accepted, and a task round-trips."""
    name = _name()
    extra = ["-O", "fair", "--without-gossip", "--without-mingle", "--without-heartbeat",
             "--heartbeat-interval=5", "--disable-prefetch", "--prefetch-multiplier=1", "-E",
             "--time-limit=30", "--soft-time-limit=20", "-S", str(tmp_path / "state.db"),
             "--max-tasks-per-child=5", "-c", "2"]
    w = spawn(_argv(urls, name, extra=extra), name)
    w.wait_ready(30)
    _roundtrip(celery_client, 11)


@pytest.mark.parametrize("spelling", [["--loglevel=INFO"], ["--loglevel", "info"],
                                      ["-l", "info"], ["-linfo"], ["-l", "WARNING"],
                                      ["--loglevel=warning"]], ids=" ".join)
def test_loglevel_spellings(spawn, celery_client, urls, spelling):
    """Each spelling sets the level: at INFO 'ready.' and the task's 'succeeded' line
    are logged, at WARNING neither is."""
    name = _name()
    w = spawn(_argv(urls, name, extra=spelling), name)
    info = "info" in " ".join(spelling).lower()
    if info:
        w.wait_ready(30)
    else:
        wait_for_pidbox(celery_client, w.node, timeout=30)
    res = celery_client.send_task("app.workers.tasks.example_task", args=[2, 2])
    assert res.get(timeout=GET_TIMEOUT) == 4
    if info:
        w.wait_for_log(f"[{res.id}] succeeded", timeout=5)
    else:
        time.sleep(0.5)
        log = _banner(w)
        assert not READY_RE.search(log) and f"[{res.id}] succeeded" not in log, log[-2000:]


@pytest.mark.parametrize("spelling", [["--concurrency", "3"], ["--concurrency=3"],
                                      ["-c", "3"], ["-c3"]], ids=" ".join)
def test_concurrency_spellings(spawn, celery_client, urls, spelling):
    """Each spelling sets the pool size (``stats()['pool']['max-concurrency']``)."""
    name = _name()
    w = spawn(_argv(urls, name, extra=spelling), name)
    w.wait_ready(30)
    wait_for_pidbox(celery_client, w.node)
    stats = celery_client.control.inspect([w.node], timeout=2).stats()
    assert stats[w.node]["pool"]["max-concurrency"] == 3, stats[w.node]["pool"]


# --------------------------------------------------------------------------- ours only


@pytest.mark.rust_only
@pytest.mark.parametrize("where", ["worker -A APP", "-A APP worker"])
def test_worker_subcommand_spellings(spawn, celery_client, urls, where):
    """``rust-celery-worker worker -A APP ...`` (Celery 4's ``celery worker -A app``,
    which Celery 5 refuses: rust_only) and ``rust-celery-worker -A APP worker ...``."""
    name = _name()
    argv = _argv(urls, name)
    assert argv[1] == "-A", argv
    if where == "worker -A APP":
        argv = [argv[0], "worker", *argv[1:]]
    else:
        argv = [*argv[:3], "worker", *argv[3:]]
    w = spawn(argv, name)
    w.wait_ready(30)
    _roundtrip(celery_client, 12)


@pytest.mark.rust_only
def test_autoreload_is_refused(request, urls):
    """``--autoreload`` (removed from Celery long ago; Celery 5 rejects it as an unknown
    option with a usage text): ours exits 2 with one line pointing to ``watchmedo``."""
    request.getfixturevalue("rust_bin")
    argv = _argv(urls, _name(), extra=["--autoreload"])
    proc = subprocess.run(argv, env=_env_for(urls, WORKER_KIND),
                          cwd=str(helpers.PYTHON_DIR), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=20)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stdout
    assert len(lines) == 1 and "watchmedo" in lines[0], proc.stdout


@pytest.mark.rust_only
@pytest.mark.timeout(60)
def test_gevent_pool_runs_sleeping_python_tasks_concurrently(spawn, celery_client,
                                                             urls):
    """``--pool=gevent --concurrency=10``: 10 sleeping Python tasks take about as long
    as one. (gevent is not installed for Celery's worker here: rust_only.)"""
    name = _name()
    w = spawn(_argv(urls, name, app="cliapp",
                    extra=["--pool=gevent", "--concurrency=10"]), name)
    w.wait_ready(30)
    banner = _banner(w)
    assert "gevent" in banner[:READY_RE.search(banner).start()], banner[-3000:]
    started = time.monotonic()
    results = [celery_client.send_task("cliapp.sleep", args=[2, i]) for i in range(10)]
    assert [r.get(timeout=20) for r in results] == list(range(10))
    elapsed = time.monotonic() - started
    assert elapsed < 5.0, f"10 x 2 s sleeps took {elapsed:.1f}s on --pool=gevent -c 10"
