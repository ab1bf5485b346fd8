"""A Celery app for the task API corners and the conf a real app carries:
``update_state`` + ``Ignore``, ``Reject(requeue=True)``, ``retry(args=…)``,
``replace()`` with a chain (``replaced_task_nesting``), children published from
a body, returned ``AsyncResult`` / ``GroupResult``, new-style errbacks, nested
canvases, and a conf holding sets, tuples, timedeltas, crontabs, Queue objects
and a router function."""
import os
from datetime import timedelta

from celery import Celery, chain, group
from celery.exceptions import Ignore, Reject
from celery.schedules import crontab
from kombu import Exchange, Queue

def route_steps(name, args, kwargs, options, task=None, **kw):
    """A router function, as real apps write them."""
    if name == "apiapp.routed_step":
        return {"queue": "hp"}
    return None


app = Celery("apiapp", broker=os.environ.get("CELERY_BROKER_URL"),
             backend=os.environ.get("CELERY_RESULT_BACKEND"))
app.conf.update(
    accept_content={"json"},
    result_extended=True,
    result_expires=timedelta(minutes=10),
    worker_max_tasks_per_child=3,
    task_queues=(
        Queue("apiq", Exchange("apiq"), routing_key="apiq"),
        Queue("hp", Exchange("hpx", type="direct"), routing_key="hp.key",
              queue_arguments={"x-max-priority": 10}),
    ),
    task_default_queue="apiq",
    beat_schedule={"tick": {"task": "apiapp.add", "schedule": crontab(minute="*/5"),
                            "args": (1, 2)}},
    worker_disable_rate_limits=True,
    task_routes=(route_steps,),
    task_create_missing_queues=os.environ.get("APIAPP_STRICT_QUEUES") != "1",
)


@app.task(name="apiapp.add")
def add(x, y):
    return x + y


@app.task(name="apiapp.routed_step")
def routed_step(value):
    return ["routed", value]


@app.task(name="apiapp.tsum")
def tsum(values):
    return sum(values)


@app.task(name="apiapp.pid")
def pid():
    return os.getpid()


@app.task(name="apiapp.custom_failure", bind=True)
def custom_failure(self):
    self.update_state(state="FAILURE", meta={"exc_type": "KeyError", "exc_message": ["mine"],
                                             "exc_module": "builtins", "custom": 1})
    raise Ignore()


@app.task(name="apiapp.reject_once", bind=True, acks_late=True)
def reject_once(self):
    if not self.request.delivery_info.get("redelivered"):
        raise Reject("first delivery", requeue=True)
    return "second delivery"


@app.task(name="apiapp.retry_with_args", bind=True, max_retries=1)
def retry_with_args(self, x, y=0):
    if not self.request.retries:
        raise self.retry(args=(x * 10,), countdown=0)
    return [x, y, self.request.retries]


@app.task(name="apiapp.spawn", bind=True)
def spawn(self, n):
    """Publishes `n` children from the body; returns the first one's result."""
    results = [add.delay(i, i) for i in range(n)]
    return results[0]


@app.task(name="apiapp.spawn_group")
def spawn_group():
    return group(add.s(1, 1), add.s(2, 2)).delay()


@app.task(name="apiapp.replace_with_chain", bind=True)
def replace_with_chain(self, x):
    return self.replace(chain(add.s(x, 1), nesting.s()))


@app.task(name="apiapp.replace_with_task", bind=True)
def replace_with_task(self, x):
    return self.replace(nesting.s(x))


@app.task(name="apiapp.replace_twice", bind=True)
def replace_twice(self, x):
    return self.replace(replace_with_task.s(x))


@app.task(name="apiapp.nesting", bind=True)
def nesting(self, value):
    return [value, self.request.replaced_task_nesting]


@app.task(name="apiapp.properties", bind=True)
def properties(self):
    return {"app_id": self.request.properties.get("app_id"),
            "custom": (self.request.headers or {}).get("x-custom")}


@app.task(name="apiapp.fail")
def fail(msg):
    raise ValueError(msg)


@app.task(name="apiapp.record_errback")
def record_errback(request, exc, traceback):
    """A new-style errback: Celery calls it in the worker with the request."""
    import redis
    redis.Redis.from_url(app.conf.result_backend).rpush(
        "apiapp:errbacks", f"{request.id}:{type(exc).__name__}:{exc}")
