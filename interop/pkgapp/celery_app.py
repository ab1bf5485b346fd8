import os

from celery import Celery

app = Celery("pkgapp", broker=os.environ.get("CELERY_BROKER_URL"),
             backend=os.environ.get("CELERY_RESULT_BACKEND"))


@app.task(name="pkgapp.hello")
def hello(who):
    return f"hello {who}"
