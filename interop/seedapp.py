"""Seed 003's shape (utils.workers.celery_app): a `default` queue, and
`@app.task(bind=True, queue='high-priority')` tasks served by workers started
with `--queues=high-priority,default`."""
import os

from celery import Celery

app = Celery("seedapp", broker=os.environ.get("CELERY_BROKER_URL"),
             backend=os.environ.get("CELERY_RESULT_BACKEND"))
app.conf.update(task_default_queue="default", task_track_started=True)


@app.task(bind=True)
def prepare(self, x):
    return {"x": x, "prepared_on": self.request.delivery_info["routing_key"]}


@app.task(bind=True, queue="high-priority")
def urgent_task(self, prepared):
    return dict(prepared, urgent_on=self.request.delivery_info["routing_key"])
