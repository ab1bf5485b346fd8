"""A Celery app on Redis Sentinel for test_sentinel.py: broker and results both
named by ``sentinel://`` lists, the master by the ``master_name`` transport
option, as kombu and Celery read them. URLs and name come from the environment."""

import os

from celery import Celery

app = Celery("sentinelapp")
app.conf.update(
    broker_url=os.environ["SENTINEL_BROKER"],
    result_backend=os.environ["SENTINEL_BACKEND"],
    broker_transport_options={"master_name": os.environ["SENTINEL_MASTER"]},
    result_backend_transport_options={"master_name": os.environ["SENTINEL_MASTER"]},
    task_acks_late=True,
)


@app.task(name="sentinelapp.add")
def add(x, y):
    return x + y
