"""No task lost when the worker is SIGKILLed, or Redis SIGKILLed and restarted on its AOF,
under load (issue 10): a short run of ``faults/lossless.py`` (the long one, 10,000 tasks
and 20+ kills, is documented there and in the README).

``rust_only``: Celery's worker pops with ``BRPOP`` and records ``unacked`` in a second
step, so a kill between the two loses that message (seen: 1 of 3,000); ours pops and
records in one atomic script. ``one_mode``: Rust tasks without an app, the same run in
both of our modes.
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "faults"))

import lossless  # noqa: E402

pytestmark = [pytest.mark.rust_only, pytest.mark.one_mode,
              pytest.mark.redis_only("faults/lossless.py runs and SIGKILLs Redis brokers "
                                     "of its own")]


@pytest.mark.timeout(120)
def test_sigkilled_workers_and_a_redis_restart_lose_nothing(rust_bin, tmp_path):
    report = lossless.run(tasks=2000, kills=6, redis_restarts=1, kind="rust", rate=250,
                          visibility=3, workdir=tmp_path, seed=None, log=print)
    print(report.summary())
    assert report.kills == 6 and report.redis_restarts == 1
    assert not report.lost, f"lost {len(report.lost)} task(s): {report.lost[:5]} — {report.summary()}"
    assert not report.wrong, report.wrong[:5]
    assert report.leftover_queue == 0 and report.leftover_unacked == 0, report.summary()
