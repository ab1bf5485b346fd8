"""A Celery app whose ``beat_schedule`` is run by a third-party scheduler, RedBeat
(``--scheduler redbeat.RedBeatScheduler``): its schedule and lock live in the
broker's Redis (``INTEROP_SIDE_REDIS``: the result backend's with an AMQP broker).
``redbeatapp.tick`` pushes the time of each run to ``redbeat-runs``."""
import os
import time

from celery import Celery

SIDE_REDIS = os.environ.get("INTEROP_SIDE_REDIS") or os.environ.get("CELERY_BROKER_URL")

app = Celery("redbeatapp", broker=os.environ.get("CELERY_BROKER_URL"),
             backend=os.environ.get("CELERY_RESULT_BACKEND"))
app.conf.update(
    task_serializer="json", accept_content=["json"], result_serializer="json",
    redbeat_redis_url=SIDE_REDIS,
    beat_schedule={"tick": {"task": "redbeatapp.tick", "schedule": 1.0, "args": ("rb",)}},
)


@app.task(name="redbeatapp.tick")
def tick(tag):
    import redis
    r = redis.Redis.from_url(SIDE_REDIS)
    r.rpush("redbeat-runs", time.time())
    r.close()
    return tag
