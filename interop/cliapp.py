"""A tiny Python-only Celery app for ``test_cli_flags.py`` (pool processes, autoscale,
orphans, cold shutdown, gevent): every task body is Python, so with our binary too it
runs in the worker's Python pool (prefork children by default), never as a Rust task.

* ``cliapp.add(x, y)`` → ``x + y``.
* ``cliapp.sleep(seconds, result=None)``: sleeps, returns ``result`` if not None, else
  ``seconds``.
* ``cliapp.sleep_then_mark(seconds, key)``: ``SET <key>:started <pid>`` on the broker's
  Redis (``INTEROP_SIDE_REDIS``: the result backend's with an AMQP broker), sleeps
  ``seconds``, then ``SET <key> done`` (the marker a cold shutdown must keep from ever
  being written).
* ``cliapp.pid()`` → the pid of the process running the body.

Broker and backend come from ``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND``.
"""
import os
import time

from celery import Celery

app = Celery("cliapp", broker=os.environ.get("CELERY_BROKER_URL"),
             backend=os.environ.get("CELERY_RESULT_BACKEND"))
app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json",
                enable_utc=True, timezone="UTC")


def _redis():
    import redis
    return redis.Redis.from_url(os.environ.get("INTEROP_SIDE_REDIS")
                                or os.environ["CELERY_BROKER_URL"])


@app.task(name="cliapp.add")
def add(x, y):
    return x + y


@app.task(name="cliapp.sleep")
def sleep(seconds, result=None):
    time.sleep(seconds)
    return seconds if result is None else result


@app.task(name="cliapp.sleep_then_mark")
def sleep_then_mark(seconds, key):
    r = _redis()
    r.set(f"{key}:started", os.getpid())
    time.sleep(seconds)
    r.set(key, "done")
    r.close()
    return "done"


@app.task(name="cliapp.pid")
def pid():
    return os.getpid()
