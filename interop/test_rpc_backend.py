"""``rpc://`` results (Celery's RPCBackend): every state goes to the caller's reply
queue, and ``AsyncResult.get()`` reads it there — on RabbitMQ, and on Redis, where
kombu emulates the default exchange. The caller is a producer process of its own, as
in production (the suite's session app, loaded in this process, is not an RPC app)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

CALLER = r'''
import json, sys
from celery import Celery
app = Celery("rpc-caller", broker=sys.argv[1], backend="rpc://")
out = {}
results = [app.send_task("app.workers.tasks.example_task", args=[i, i]) for i in range(20)]
# Out of order on purpose: each get() keeps the others' states for their own result.
out["sums"] = [r.get(timeout=20) for r in reversed(results)]
out["states"] = sorted({r.state for r in results})
failed = app.send_task("rcw.testing.fail", args=["rpc boom"])
try:
    failed.get(timeout=20)
    out["failure"] = None
except Exception as e:
    out["failure"] = [type(e).__name__, str(e), failed.state]
out["progress"] = app.send_task("rcw.testing.progress", args=[3]).get(timeout=20)
out["echo"] = app.send_task("rcw.testing.echo", args=[{"a": [1, 2.5, None, "x"]}]).get(timeout=20)
print(json.dumps(out))
'''


def test_results_failures_and_states_come_back_through_the_reply_queue(
        celery_client, worker, backend):
    worker(backend_url="rpc://")
    # Celery reads these over the app's own settings.
    env = {k: v for k, v in os.environ.items()
           if k not in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")}
    proc = subprocess.run([sys.executable, "-c", CALLER, celery_client.conf.broker_url],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["sums"] == [2 * i for i in reversed(range(20))]
    assert out["states"] == ["SUCCESS"]
    assert out["failure"] == ["ValueError", "rpc boom", "FAILURE"]
    assert out["progress"] == {"done": 3}
    assert out["echo"] == {"a": [1, 2.5, None, "x"]}
    # Nothing of it went to the Redis result database.
    assert backend.keys("celery-task-meta-*") == []
