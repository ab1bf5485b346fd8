"""Celery app used when the interop suite runs against the real Python worker.

``celery -A pyworker_app worker ...`` loads the example app (``app.workers``),
applies the ``--setting NAME=VALUE`` options the suite would give the Rust worker
(passed as a JSON object in env ``RCW_PY_SETTINGS``) and registers the
``rcw.testing.*`` twins from ``pyworker_tasks``.
"""
import json
import os

from app.workers.celery_app import celery_app

_settings = json.loads(os.environ.get("RCW_PY_SETTINGS") or "{}")
if _settings:
    celery_app.conf.update(_settings)

from app.workers import tasks as _app_tasks  # noqa: E402,F401  (example_task, task_file_ingestion)
import pyworker_tasks as _twins  # noqa: E402,F401  (rcw.testing.*)

app = celery_app
