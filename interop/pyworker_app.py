"""Celery app used when the interop suite runs against the real Python worker.

``celery -A pyworker_app worker ...`` loads the example app (``app.workers``),
applies the ``--setting NAME=VALUE`` options the suite would give the Rust worker
(passed as a JSON object in env ``RCW_PY_SETTINGS``; ``task_queues`` entries become
kombu ``Queue``s) and registers the
``rcw.testing.*`` twins from ``pyworker_tasks``.
"""
import json
import os

from app.workers.celery_app import celery_app

_settings = json.loads(os.environ.get("RCW_PY_SETTINGS") or "{}")
if isinstance(_settings.get("task_queues"), list):
    # JSON can't hold kombu Queues: names or {name, exchange, routing_key,
    # queue_arguments} objects, as our binary's --setting task_queues=... takes them.
    from kombu import Exchange, Queue

    def _queue(q):
        q = {"name": q} if isinstance(q, str) else q
        name = q["name"]
        return Queue(name, Exchange(q.get("exchange") or name),
                     routing_key=q.get("routing_key") or name,
                     queue_arguments=q.get("queue_arguments"))
    _settings["task_queues"] = [_queue(q) for q in _settings["task_queues"]]
if _settings:
    celery_app.conf.update(_settings)

from app.workers import tasks as _app_tasks  # noqa: E402,F401  (example_task, task_file_ingestion)
import pyworker_tasks as _twins  # noqa: E402,F401  (rcw.testing.*)

app = celery_app
