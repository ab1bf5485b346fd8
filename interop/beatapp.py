"""A Celery app with a ``beat_schedule``, for the embedded-beat (``-B``) tests of
``test_cli_flags.py``.

Entries (all call ``beatapp.record``, which ``RPUSH``es one JSON object
``{"t": <time.time()>, "args": [...], "kwargs": {...}, "pid": <pid>}`` per run to the
list ``beat:<entry name>`` on the broker's Redis (``INTEROP_SIDE_REDIS``: the result
backend's with an AMQP broker):

* ``every-second``: ``schedule: 1.0`` (a float number of seconds), with ``args`` and
  ``kwargs`` that the task records (the test checks they arrive).
* ``every-td``: ``schedule: timedelta(seconds=1)``.
* ``cron``: a ``crontab(minute=, hour=)`` (once a day) whose ``nowfun`` is a shifted
  clock: at import ``now`` is moved so that the next minute boundary, the one the
  crontab names, is ``BEATAPP_CRON_LEAD`` seconds (default 3) away, so it fires once a
  few seconds after the worker starts. Left out with ``BEATAPP_CRON=0``. (Celery's beat sleeps until this entry is due first, so
  the 1 s entries start up to ``BEATAPP_CRON_LEAD`` s late.)

Broker and backend come from ``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND``.
"""
import json
import os
import time
from datetime import datetime, timedelta, timezone

from celery import Celery
from celery.schedules import crontab

app = Celery("beatapp", broker=os.environ.get("CELERY_BROKER_URL"),
             backend=os.environ.get("CELERY_RESULT_BACKEND"))

_LEAD = float(os.environ.get("BEATAPP_CRON_LEAD", "3"))
_real = datetime.now(timezone.utc)
# 'now' as the cron entry sees it is hh:mm:(60 - lead) at import time. The clock is
# moved *back* (offset in (-60 s, 0]): Celery's beat orders its heap by each entry's
# own clock (``entry.default_now()`` = ``nowfun()``), so a clock ahead of real time
# would keep the cron entry behind the 1 s entries until real time caught up.
_into_minute = _real.second + _real.microsecond / 1e6
_CLOCK_OFFSET = -timedelta(seconds=(_into_minute - (60 - _LEAD)) % 60)


def shifted_now():
    """The cron entry's clock: real UTC time + a constant offset (module level so
    the persistent scheduler can pickle the schedule)."""
    return datetime.now(timezone.utc) + _CLOCK_OFFSET


ENTRY_ARGS = ("every-second", 1, "two")
ENTRY_KWARGS = {"flag": True, "n": 3}

app.conf.update(
    task_serializer="json", accept_content=["json"], result_serializer="json",
    enable_utc=True, timezone="UTC",
    beat_schedule={
        "every-second": {"task": "beatapp.record", "schedule": 1.0,
                         "args": ENTRY_ARGS, "kwargs": ENTRY_KWARGS},
        "every-td": {"task": "beatapp.record", "schedule": timedelta(seconds=1),
                     "args": ("every-td",)},
    },
)
# The minute boundary LEAD s ahead on the shifted clock, as a once-a-day crontab: after
# it fires, an every-minute crontab would be due again at real time + offset + 60 s,
# which for a start in the last few seconds before hh:mm:(60 - LEAD) is a moment away,
# and Celery's scheduler then returns that entry's ~60 s wait on every tick (its heap
# top, by the entry's own clock), starving the 1 s entries (the scheduler alone, no
# worker: 2 runs of ``every-second`` in 12 s when started at :55, 10 at :30).
_CRON_AT = _real + _CLOCK_OFFSET + timedelta(seconds=_LEAD + 1)
if os.environ.get("BEATAPP_CRON", "1") != "0":
    app.conf.beat_schedule["cron"] = {
        "task": "beatapp.record",
        "schedule": crontab(minute=_CRON_AT.minute, hour=_CRON_AT.hour, nowfun=shifted_now),
        "args": ("cron",), "kwargs": {"at": "minute"}}


@app.task(name="beatapp.record")
def record(entry, *args, **kwargs):
    import redis
    r = redis.Redis.from_url(os.environ.get("INTEROP_SIDE_REDIS")
                             or os.environ["CELERY_BROKER_URL"])
    r.rpush(f"beat:{entry}", json.dumps({"t": time.time(), "args": list(args),
                                         "kwargs": kwargs, "pid": os.getpid()}))
    r.close()
    return entry
