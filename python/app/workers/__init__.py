"""Background workers: the Celery app and its tasks.

`celery -A app.workers worker` and `rust-celery-worker -A app.workers` both load
this package; Celery's CLI finds the app under the name `app` or `celery_app`.
"""
from app.workers.celery_app import celery_app

app = celery_app

__all__ = ["celery_app", "app"]
