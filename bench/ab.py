"""A/B of worker builds on the plain workload, for changes too small for `make bench`.

    python bench/ab.py [--tasks N] [--pairs K] [--port P] BIN_A BIN_B [-- worker args]

Starts a private redis-server on --port (default 6399, no persistence), preloads N
captured `example_task` envelopes once, then runs BIN_A and BIN_B in turn, K times each
(default 5), on a fresh copy of them. For each run it prints the steady rate (10 % to
90 % of the results stored), the worker's and Redis's CPU µs per task, and the CPU
steal in that span; at the end the median of each build over the runs with at most 5 %
steal (the bench VM has bursts of 40-80 %, which halve every figure).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "python"))
import bench  # noqa: E402

MAX_STEAL = 0.05


def ticks(pid: int) -> int:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


def one_run(binary: str, extra: list, r0, r1, rpid: int, n: int, url: str) -> dict:
    r0.delete("celery", "unacked", "unacked_index")
    r1.flushdb()
    r0.copy("ab-template", "celery")
    env = dict(os.environ, CELERY_BROKER_URL=f"{url}/0", CELERY_RESULT_BACKEND=f"{url}/1",
               PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}")
    with tempfile.TemporaryFile() as log:
        p = subprocess.Popen([binary, "-c", "2", "--loglevel=warning", *extra], env=env,
                             cwd=ROOT / "python", stdout=subprocess.DEVNULL, stderr=log)
        marks = {}
        t_end = time.monotonic() + 300
        try:
            while "b" not in marks:
                done, now = r1.dbsize(), time.perf_counter()
                for name, share in (("a", 0.1), ("b", 0.9)):
                    if done >= n * share and name not in marks:
                        marks[name] = (now, done, ticks(p.pid), ticks(rpid), bench.steal_ticks())
                if p.poll() is not None or time.monotonic() > t_end:
                    log.seek(0)
                    raise RuntimeError(f"{binary}: {done}/{n} results\n{log.read()[-2000:]}")
                time.sleep(0.005)
        finally:
            p.terminate()
            p.wait()
    (ta, na, wa, ra, sa), (tb, nb, wb, rb, sb) = marks["a"], marks["b"]
    tasks, hz = nb - na, bench.CLK_TCK
    return {"tasks_per_s": tasks / (tb - ta), "worker_us": (wb - wa) / hz / tasks * 1e6,
            "redis_us": (rb - ra) / hz / tasks * 1e6,
            "steal": (sb - sa) / hz / ((tb - ta) * (os.cpu_count() or 1))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=40000)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--port", type=int, default=6399)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("worker_args", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    args.a, args.b = os.path.abspath(args.a), os.path.abspath(args.b)  # run from python/
    extra = [a for a in args.worker_args if a != "--"]
    workdir = Path(tempfile.mkdtemp(prefix="rcw-ab-"))
    server = subprocess.Popen(["redis-server", "--port", str(args.port), "--save", "",
                               "--appendonly", "no", "--dir", str(workdir)],
                              stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{args.port}"
    try:
        r0 = redis.Redis(port=args.port, db=0)
        r1 = redis.Redis(port=args.port, db=1)
        for _ in range(100):
            try:
                r0.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        template = bench.capture_template(f"{url}/0", f"{url}/1")
        bench.preload(r0, template, args.tasks)
        r0.rename("celery", "ab-template")
        rpid = int(r0.info("server")["process_id"])
        runs: dict = {args.a: [], args.b: []}
        for _ in range(args.pairs):
            for binary in (args.a, args.b):
                r = one_run(binary, extra, r0, r1, rpid, args.tasks, url)
                runs[binary].append(r)
                print(f"{binary}: {r['tasks_per_s']:,.0f} tasks/s, worker {r['worker_us']:.1f} "
                      f"µs/task, redis {r['redis_us']:.1f} µs/task, steal "
                      f"{100 * r['steal']:.0f} %", flush=True)
        for binary, rs in runs.items():
            kept = [r["tasks_per_s"] for r in rs if r["steal"] <= MAX_STEAL]
            med = f"{statistics.median(kept):,.0f} tasks/s" if kept else "-"
            print(f"median {binary}: {med} over {len(kept)} of {len(rs)} runs "
                  f"(steal <= {100 * MAX_STEAL:.0f} %)")
    finally:
        server.terminate()
        server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
