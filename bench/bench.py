#!/usr/bin/env python3
"""Throughput and memory: rust-celery-worker vs the real `celery worker` (prefork).

For each worker:

1. idle phase: start it on an empty queue, wait until it is blocked in BRPOP,
   let it settle, sample the RSS of its whole process tree (parent + children,
   from /proc/<pid>/status VmRSS), stop it;
2. loaded phase: FLUSHALL, preload N `app.workers.tasks.example_task(i, i)` messages
   (one envelope captured from the real Celery producer, copied with fresh ids and
   delivery tags, LPUSHed in pipelines), start the worker and poll every 100 ms
   until all N `celery-task-meta-*` results are stored (results live alone in db 1,
   so DBSIZE counts them), sampling the process-tree RSS for the peak; then check
   the stored results.

Everything runs against a private redis-server on a free port; no process is left
behind (workers are stopped with SIGTERM, their process groups SIGKILLed if needed).

    python bench/bench.py [--tasks 20000] [--concurrency N] [--skip-rust] [--skip-celery]
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "interop")]

import redis  # noqa: E402

from helpers import RedisServer  # noqa: E402

TASK = "app.workers.tasks.example_task"


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


def tree_rss_kib(pid: int) -> tuple[int, int]:
    pids = tree_pids(pid)
    return sum(rss_kib(p) for p in pids), len(pids)


class Worker:
    def __init__(self, label: str, argv: list[str], env: dict, log_path: Path):
        self.label = label
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, env=env, cwd=str(ROOT / "python"),
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever is left of the process group (prefork children)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


# --------------------------------------------------------------------------- messages


def capture_template(broker_url: str, backend_url: str) -> dict:
    """One real envelope from Celery's producer (`example_task.apply_async((0, 0))`)."""
    os.environ["CELERY_BROKER_URL"] = broker_url
    os.environ["CELERY_RESULT_BACKEND"] = backend_url
    from app.workers.celery_app import celery_app
    from app.workers.tasks import example_task

    queue = f"bench-capture-{uuid.uuid4().hex[:8]}"
    example_task.apply_async((0, 0), queue=queue)
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


def preload(r: redis.Redis, template: dict, n: int) -> None:
    body0 = json.loads(base64.b64decode(template["body"]))
    embed = body0[2]
    headers0 = template["headers"]
    props0 = template["properties"]
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        tid = str(uuid.uuid4())
        headers = dict(headers0, id=tid, root_id=tid, argsrepr=f"({i}, {i})", kwargsrepr="{}")
        props = dict(props0, correlation_id=tid, delivery_tag=str(uuid.uuid4()))
        body = json.dumps([[i, i], {}, embed]).encode()
        env = dict(template, headers=headers, properties=props,
                   body=base64.b64encode(body).decode())
        pipe.lpush("celery", json.dumps(env))
        if (i + 1) % 2000 == 0:
            pipe.execute()
    pipe.execute()
    have = r.llen("celery")
    if have != n:
        raise RuntimeError(f"preloaded {have} messages, wanted {n}")


# --------------------------------------------------------------------------- measuring


def wait_brpop(r: redis.Redis, worker: Worker, timeout: float = 60.0) -> float:
    """Wait until some client of this Redis (the worker) is blocked in BRPOP."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not worker.alive():
            raise RuntimeError(f"{worker.label} exited early:\n{worker.log_tail()}")
        if any(c.get("cmd") == "brpop" for c in r.client_list()):
            return time.monotonic() - t0
        time.sleep(0.05)
    raise RuntimeError(f"{worker.label} never started consuming (no BRPOP in {timeout}s):\n"
                       f"{worker.log_tail()}")


def measure(label: str, argv: list[str], env: dict, server: RedisServer, template: dict,
            n: int, workdir: Path, timeout: float) -> dict:
    r0, r1 = server.client(0), server.client(1)
    out: dict = {"worker": label, "argv": argv, "tasks": n}

    # Idle phase.
    r0.flushall()
    w = Worker(label, argv, env, workdir / f"{label}-idle.log")
    try:
        out["startup_s"] = wait_brpop(r0, w)
        time.sleep(2.0)
        out["idle_rss_kib"], out["idle_processes"] = tree_rss_kib(w.proc.pid)
    finally:
        w.stop()

    # Loaded phase.
    r0.flushall()
    t_pre = time.monotonic()
    preload(r0, template, n)
    out["preload_s"] = time.monotonic() - t_pre

    peak = 0
    first = None
    t0 = time.monotonic()
    w = Worker(label, argv, env, workdir / f"{label}-run.log")
    try:
        while True:
            done = r1.dbsize()
            now = time.monotonic()
            rss, _ = tree_rss_kib(w.proc.pid)
            peak = max(peak, rss)
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
            time.sleep(0.1)
        t1 = time.monotonic()
    finally:
        w.stop()

    out["wall_s"] = t1 - t0
    out["tasks_per_s"] = n / out["wall_s"]
    t_first, done_first = first
    span = t1 - t_first
    out["steady_tasks_per_s"] = (n - done_first) / span if span > 0 else float("nan")
    out["peak_rss_kib"] = peak

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
    r0.close()
    r1.close()
    return out


# --------------------------------------------------------------------------- main


def fmt_mib(kib) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--bin", default=os.environ.get("RCW_RELEASE_BIN")
                    or str(ROOT / "target" / "release" / "rust-celery-worker"))
    ap.add_argument("--skip-rust", action="store_true")
    ap.add_argument("--skip-celery", action="store_true")
    ap.add_argument("--timeout", type=float, default=900.0, help="per worker run, seconds")
    ap.add_argument("--json", help="also write the results to this file "
                    "(default bench/results/<timestamp>.json)")
    args = ap.parse_args()

    # Turn SIGTERM into an exception so the finally blocks clean up.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    import celery
    workdir = Path(tempfile.mkdtemp(prefix="rcw-bench-"))
    server = RedisServer(workdir / "redis").start()
    broker_url, backend_url = f"{server.url}/0", f"{server.url}/1"
    n, c = args.tasks, args.concurrency
    print(f"bench: {n} x {TASK}, concurrency {c}, redis {server.url}, logs in {workdir}",
          flush=True)

    env = dict(os.environ)
    env.pop("RCW_TEST_TASKS", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "python")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["CELERY_BROKER_URL"] = broker_url
    env["CELERY_RESULT_BACKEND"] = backend_url

    results = []
    failures = []
    try:
        template = capture_template(broker_url, backend_url)
        runs = []
        if args.skip_rust:
            print("rust-celery-worker: skipped (--skip-rust)")
        elif not Path(args.bin).is_file():
            print(f"rust-celery-worker: SKIPPED, binary {args.bin} not found "
                  f"(build it with `make release` / `cargo build --release`)")
        else:
            runs.append(("rust-celery-worker", [
                args.bin, "-A", "app.workers", "-b", broker_url, "--result-backend", backend_url,
                "-c", str(c), "-l", "warning", "-n", "bench-rust@%h"]))
        if args.skip_celery:
            print("celery: skipped (--skip-celery)")
        else:
            runs.append((f"celery-{celery.__version__}-prefork", [
                sys.executable, "-m", "celery", "-A", "app.workers", "worker", "-P", "prefork",
                "-c", str(c), "--without-gossip", "--without-mingle", "--without-heartbeat",
                "-l", "warning", "-n", "bench-celery@%h"]))
        for label, argv in runs:
            print(f"-- {label}: measuring ...", flush=True)
            try:
                res = measure(label, argv, env, server, template, n, workdir, args.timeout)
            except RuntimeError as exc:
                print(f"-- {label}: FAILED: {exc}", flush=True)
                failures.append(label)
                continue
            results.append(res)
            print(f"   {res['tasks_per_s']:.0f} tasks/s over {res['wall_s']:.2f}s "
                  f"(preload {res['preload_s']:.1f}s, startup {res['startup_s']:.2f}s), "
                  f"idle RSS {fmt_mib(res['idle_rss_kib'])} MiB, peak {fmt_mib(res['peak_rss_kib'])} MiB",
                  flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        server.stop()

    if results:
        print()
        head = (f"{'worker':<28} {'tasks':>7} {'wall s':>8} {'tasks/s':>9} {'steady/s':>9} "
                f"{'idle RSS MiB':>13} {'peak RSS MiB':>13} {'procs':>6} {'stored':>7}")
        print(head)
        print("-" * len(head))
        for r in results:
            print(f"{r['worker']:<28} {r['tasks']:>7} {r['wall_s']:>8.2f} {r['tasks_per_s']:>9.0f} "
                  f"{r['steady_tasks_per_s']:>9.0f} {fmt_mib(r['idle_rss_kib']):>13} "
                  f"{fmt_mib(r['peak_rss_kib']):>13} {r['idle_processes']:>6} "
                  f"{r['results_stored']:>7}")
        print("(wall = from worker start until the last result is stored; steady = from the "
              "first stored result to the last)")
        if len(results) == 2:
            ours, theirs = results
            print(f"\nrust / celery: throughput x{ours['tasks_per_s'] / theirs['tasks_per_s']:.2f} "
                  f"(steady x{ours['steady_tasks_per_s'] / theirs['steady_tasks_per_s']:.2f}), "
                  f"idle RSS x{ours['idle_rss_kib'] / max(theirs['idle_rss_kib'], 1):.3f}, "
                  f"peak RSS x{ours['peak_rss_kib'] / max(theirs['peak_rss_kib'], 1):.3f}")
        for r in results:
            if r["results_stored"] != n or r["bad_results_in_sample"]:
                print(f"WARNING: {r['worker']}: {r['results_stored']} results stored, "
                      f"{r['bad_results_in_sample']} wrong in a sample of 200")
                failures.append(r["worker"])
        out_path = Path(args.json) if args.json else \
            ROOT / "bench" / "results" / f"{dt.datetime.now():%Y%m%d-%H%M%S}.json"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps({"tasks": n, "concurrency": c, "results": results},
                                       indent=2))
        print(f"results written to {out_path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
