"""A/B of worker builds on the plain workload, for changes too small for `make bench`.

    python bench/ab.py [--tasks N] [--pairs K] BIN_A BIN_B [-- worker args]

Starts a private redis-server, preloads N captured `example_task` envelopes once, then
runs BIN_A and BIN_B in turn, K times each (default 5), on a fresh copy of them. For each
run it prints the steady rate (10 % to 90 % of the results stored), the worker's and
Redis's CPU µs per task, and the CPU steal in that span; at the end the median of each
build over the runs with at most 5 % steal (the bench VM has bursts of 40-80 %, which
halve every figure).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (puts python/ and interop/ on sys.path too)
from bench import ROOT, STEAL_NOISY, RedisServer, cpu_ticks, steal_share, steal_ticks  # noqa: E402


def one_run(binary: str, extra: list, server: RedisServer, rpid: int, n: int) -> dict:
    r0, r1 = server.client(0), server.client(1)
    r0.delete("celery", "unacked", "unacked_index")
    r1.flushdb()
    r0.copy("ab-template", "celery")
    env = dict(os.environ, CELERY_BROKER_URL=f"{server.url}/0",
               CELERY_RESULT_BACKEND=f"{server.url}/1",
               PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}")
    with tempfile.TemporaryFile() as log:
        p = subprocess.Popen([binary, "-c", "2", "--loglevel=warning", *extra], env=env,
                             cwd=ROOT / "python", stdout=subprocess.DEVNULL, stderr=log)
        marks = {}  # 10 % / 90 % stored: (time, stored, worker ticks, redis ticks, steal)
        t_end = time.monotonic() + 300
        try:
            while "b" not in marks:
                done, now = r1.dbsize(), time.perf_counter()
                for name, share in (("a", 0.1), ("b", 0.9)):
                    if done >= n * share and name not in marks:
                        marks[name] = (now, done, cpu_ticks(p.pid)[1], cpu_ticks(rpid)[1],
                                       steal_ticks())
                if p.poll() is not None or time.monotonic() > t_end:
                    log.seek(0)
                    raise RuntimeError(f"{binary}: {done}/{n} results\n{log.read()[-2000:]}")
                time.sleep(0.005)
        finally:
            p.terminate()
            p.wait()
            r0.close()
            r1.close()
    (ta, na, wa, ra, sa), (tb, nb, wb, rb, _) = marks["a"], marks["b"]
    tasks, hz = nb - na, bench.CLK_TCK
    return {"tasks_per_s": tasks / (tb - ta), "worker_us": (wb - wa) / hz / tasks * 1e6,
            "redis_us": (rb - ra) / hz / tasks * 1e6, "steal": steal_share(sa, tb - ta)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=40000)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("worker_args", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    binaries = [os.path.abspath(args.a), os.path.abspath(args.b)]  # the worker runs in python/
    extra = [a for a in args.worker_args if a != "--"]
    server = RedisServer(Path(tempfile.mkdtemp(prefix="rcw-ab-"))).start()
    try:
        r0 = server.client(0)
        template = bench.capture_template(f"{server.url}/0", f"{server.url}/1")
        bench.preload(r0, template, args.tasks)
        r0.rename("celery", "ab-template")
        rpid = int(r0.info("server")["process_id"])
        r0.close()
        runs: dict = {b: [] for b in binaries}
        for _ in range(args.pairs):
            for binary in binaries:
                r = one_run(binary, extra, server, rpid, args.tasks)
                runs[binary].append(r)
                print(f"{binary}: {r['tasks_per_s']:,.0f} tasks/s, worker {r['worker_us']:.1f} "
                      f"µs/task, redis {r['redis_us']:.1f} µs/task, steal "
                      f"{bench.fmt_steal(r['steal'])}", flush=True)
        for binary, rs in runs.items():
            kept = [r["tasks_per_s"] for r in rs if (r["steal"] or 0) <= STEAL_NOISY]
            med = f"{statistics.median(kept):,.0f} tasks/s" if kept else "-"
            print(f"median {binary}: {med} over {len(kept)} of {len(rs)} runs "
                  f"(steal <= {100 * STEAL_NOISY:.0f} %)")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
