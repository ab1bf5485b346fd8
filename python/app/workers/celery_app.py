"""The Celery application of the example service (seed 000, AgentHub `app.workers`).

Broker and result backend default to a local Redis and can be overridden with the
environment variables ``CELERY_BROKER_URL`` and ``CELERY_RESULT_BACKEND``.
"""
import os

from celery import Celery

DEFAULT_REDIS_URL = "redis://localhost:6379/0"

broker_url = os.environ.get("CELERY_BROKER_URL", DEFAULT_REDIS_URL)
result_backend = os.environ.get("CELERY_RESULT_BACKEND", DEFAULT_REDIS_URL)

celery_app = Celery(
    "app.workers",
    broker=broker_url,
    backend=result_backend,
    include=["app.workers.tasks"],
)

celery_app.conf.update(
    broker_url=broker_url,
    result_backend=result_backend,
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    enable_utc=True,
    timezone="UTC",
)
