"""A Celery app whose conf and tasks exercise what `-A` must honour: conf as
config, annotations, per-task options, bound requests, Task hooks and signals.
Hooks and signals record themselves in the result backend's Redis
(`confapp:events`) so tests can check their order from outside the worker."""
import json
import os
import time

import redis
from celery import Celery, Task, signals

app = Celery("confapp", broker=os.environ.get("CELERY_BROKER_URL"),
             backend=os.environ.get("CELERY_RESULT_BACKEND"))
app.conf.update(
    task_default_queue="confq",
    task_track_started=True,
    result_extended=True,
    result_expires=120,
    task_annotations={"confapp.annotated": {"rate_limit": "2/s"}},
)

EVENTS = "confapp:events"


def _log(event, **fields):
    r = redis.Redis.from_url(app.conf.result_backend)
    r.rpush(EVENTS, json.dumps({"event": event, **fields}))


class ConfError(Exception):
    """Raised by confapp.hooked(fail=True); clients re-raise this very class."""


class Recording(Task):
    def before_start(self, task_id, args, kwargs):
        _log("before_start", id=task_id)

    def on_success(self, retval, task_id, args, kwargs):
        _log("on_success", id=task_id)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        _log("on_failure", id=task_id, exc=type(exc).__name__)

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        _log("after_return", id=task_id, status=status)

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        _log("on_retry", id=task_id, exc=type(exc).__name__)


@signals.task_prerun.connect
def _prerun(sender=None, task_id=None, **kw):
    _log("task_prerun", id=task_id)


@signals.task_postrun.connect
def _postrun(sender=None, task_id=None, state=None, **kw):
    _log("task_postrun", id=task_id, state=state)


@signals.task_retry.connect
def _retry(sender=None, request=None, reason=None, **kw):
    _log("task_retry", id=request.id, reason=str(reason))


@signals.task_success.connect
def _success(sender=None, result=None, **kw):
    _log("task_success", id=sender.request.id)


@signals.task_failure.connect
def _failure(sender=None, task_id=None, exception=None, **kw):
    _log("task_failure", id=task_id, exc=type(exception).__name__)


@app.task(name="confapp.hooked", base=Recording, bind=True)
def hooked(self, x, fail=False):
    if fail:
        raise ConfError(f"bad {x}")
    return {"x": x, "id": self.request.id, "retries": self.request.retries,
            "routing_key": self.request.delivery_info.get("routing_key"),
            "hostname": self.request.hostname}


@app.task(name="confapp.annotated")
def annotated(i):
    return i


@app.task(name="confapp.limited", time_limit=1)
def limited(seconds):
    time.sleep(seconds)
    return "done"


@app.task(name="confapp.soft", soft_time_limit=1)
def soft(seconds):
    """Catches the soft limit (a loop of short sleeps, so it can be interrupted)."""
    from celery.exceptions import SoftTimeLimitExceeded

    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            time.sleep(0.05)
        return "done"
    except SoftTimeLimitExceeded:
        return "caught soft limit"


@app.task(name="confapp.soft_uncaught", soft_time_limit=1)
def soft_uncaught(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
    return "done"


@signals.worker_process_init.connect
def _process_init(**kw):
    _log("worker_process_init", id="worker")


@signals.worker_ready.connect
def _ready(**kw):
    _log("worker_ready", id="worker")


@signals.worker_shutdown.connect
def _shutdown(**kw):
    _log("worker_shutdown", id="worker")


@app.task(name="confapp.pid", bind=True)
def pid(self, seconds=0.0):
    """Records and returns the pid of the process running it (then sleeps)."""
    redis.Redis.from_url(app.conf.result_backend).set(f"confapp:pid:{self.request.id}",
                                                      os.getpid())
    time.sleep(seconds)
    return os.getpid()


@app.task(name="confapp.retry_once", base=Recording, bind=True)
def retry_once(self):
    if self.request.retries == 0:
        raise self.retry(exc=ConnectionError("first try"), countdown=0.1)
    return self.request.retries


@app.task(name="app.workers.tasks.example_task", rate_limit="2/s")
def example_task(x, y):
    """Same name as a Rust-native task: Rust runs it, this rate limit applies."""
    return x + y


@app.task(name="confapp.always_retry", base=Recording, bind=True, max_retries=1)
def always_retry(self):
    raise self.retry(exc=ConnectionError(f"attempt {self.request.retries}"), countdown=0.1)


_ballast = []


@app.task(name="confapp.grow", bind=True)
def grow(self, mib=0):
    """Keeps `mib` MiB alive in this process; returns its pid."""
    if mib:
        _ballast.append(bytearray(mib * 1024 * 1024))
    return os.getpid()
