"""Python twins of the Rust worker's test-only tasks (``RCW_TEST_TASKS=1``).

They let the interop suite run against a real Python ``celery worker``
(``INTEROP_WORKER=python``), which proves the tests check real Celery behaviour.
Names and semantics must match the Rust implementations exactly:

* ``rcw.testing.sleep(seconds, result=None)``: sleeps, returns ``result`` if it is
  not None, else ``seconds``.
* ``rcw.testing.fail(message="boom")``: raises ``ValueError(message)``.
* ``rcw.testing.fail_custom(message="bad file")``: raises
  ``app.workers.tasks.IngestionError(message)``.
* ``rcw.testing.progress(steps, delay=0.05)``: for i in 1..=steps stores state
  ``PROGRESS`` with meta ``{"current": i, "total": steps}`` then sleeps ``delay``;
  returns ``{"done": steps}``.
* ``rcw.testing.echo(value)``: returns ``value`` unchanged.
* ``rcw.testing.routed_echo(value)``: ``echo`` defined with ``queue="routed"``.
* ``rcw.testing.async_sleep(seconds, result=None)``: as ``sleep``; the Rust one is an
  async (abortable) body, so ``revoke(terminate=True)`` cancels it mid-sleep.
"""
import time

from celery import shared_task

from app.workers.tasks import IngestionError


@shared_task(name="rcw.testing.sleep")
def sleep(seconds, result=None):
    time.sleep(seconds)
    return seconds if result is None else result


@shared_task(name="rcw.testing.async_sleep")
def async_sleep(seconds, result=None):
    time.sleep(seconds)
    return seconds if result is None else result


@shared_task(name="rcw.testing.fail")
def fail(message="boom"):
    raise ValueError(message)


@shared_task(name="rcw.testing.fail_custom")
def fail_custom(message="bad file"):
    raise IngestionError(message)


@shared_task(name="rcw.testing.progress", bind=True)
def progress(self, steps, delay=0.05):
    for i in range(1, steps + 1):
        self.update_state(state="PROGRESS", meta={"current": i, "total": steps})
        time.sleep(delay)
    return {"done": steps}


@shared_task(name="rcw.testing.echo")
def echo(value):
    return value


@shared_task(name="rcw.testing.routed_echo", queue="routed")
def routed_echo(value):
    """``echo`` whose definition names its queue (``@app.task(queue=...)``)."""
    return value


@shared_task(name="rcw.testing.spin")
def spin(seconds):
    """Busy-loops for ``seconds`` (CPU-bound, never sleeps)."""
    import time
    until = time.monotonic() + seconds
    n = 0
    while time.monotonic() < until:
        n = (n * 6364136223846793005 + 1) % (1 << 64)
    return True


# --------------------------------------------------------------------------
# Retries, time limits, acks_late, rate limits, canvas helpers.
#
# * ``rcw.testing.flaky(failures, countdown=0.2)``: bind, max_retries=3; while
#   ``retries < failures`` raises ``self.retry(exc=ConnectionError("attempt N"),
#   countdown=countdown)``; returns ``{"attempts": retries + 1}``.
# * ``rcw.testing.retry_plain(failures)``: bind, max_retries=2,
#   default_retry_delay=0.2; ``raise self.retry()`` (no exc); returns retries.
# * ``rcw.testing.autoretry(failures)``: autoretry_for=(ConnectionError,),
#   max_retries=3, default_retry_delay=0.2; returns retries.
# * ``rcw.testing.autoretry_backoff(failures)``: autoretry_for=(ConnectionError,),
#   retry_backoff=1, retry_backoff_max=4, retry_jitter=False, max_retries=5.
# * ``rcw.testing.tsum(numbers)`` → sum; ``rcw.testing.mul(x, y)`` → x * y.
# * ``rcw.testing.rate_limited(i)``: rate_limit="5/s"; returns i.
# * ``rcw.testing.late_sleep(seconds, result=None)``: acks_late=True; as sleep.
# * ``rcw.testing.soft_limited(seconds)``: soft_time_limit=1, time_limit=3;
#   "soft limit observed" if the soft limit hits, else "done".
# * ``rcw.testing.ignores_soft(seconds)``: soft_time_limit=1; just sleeps
#   (the soft limit fails it with SoftTimeLimitExceeded).
# --------------------------------------------------------------------------

from celery.exceptions import SoftTimeLimitExceeded  # noqa: E402


@shared_task(name="rcw.testing.flaky", bind=True, max_retries=3)
def flaky(self, failures, countdown=0.2):
    if self.request.retries < failures:
        raise self.retry(exc=ConnectionError(f"attempt {self.request.retries}"),
                         countdown=countdown)
    return {"attempts": self.request.retries + 1}


@shared_task(name="rcw.testing.retry_plain", bind=True, max_retries=2,
             default_retry_delay=0.2)
def retry_plain(self, failures):
    if self.request.retries < failures:
        raise self.retry()
    return self.request.retries


@shared_task(name="rcw.testing.autoretry", bind=True, autoretry_for=(ConnectionError,),
             max_retries=3, default_retry_delay=0.2)
def autoretry(self, failures):
    if self.request.retries < failures:
        raise ConnectionError(f"attempt {self.request.retries}")
    return self.request.retries


@shared_task(name="rcw.testing.autoretry_backoff", bind=True,
             autoretry_for=(ConnectionError,), retry_backoff=1, retry_backoff_max=4,
             retry_jitter=False, max_retries=5)
def autoretry_backoff(self, failures):
    if self.request.retries < failures:
        raise ConnectionError(f"attempt {self.request.retries}")
    return self.request.retries


@shared_task(name="rcw.testing.tsum")
def tsum(numbers):
    return sum(numbers)


@shared_task(name="rcw.testing.mul")
def mul(x, y):
    return x * y


@shared_task(name="rcw.testing.rate_limited", rate_limit="5/s")
def rate_limited(i):
    return i


@shared_task(name="rcw.testing.late_sleep", acks_late=True)
def late_sleep(seconds, result=None):
    time.sleep(seconds)
    return seconds if result is None else result


@shared_task(name="rcw.testing.soft_limited", soft_time_limit=1, time_limit=3)
def soft_limited(seconds):
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            time.sleep(0.05)
    except SoftTimeLimitExceeded:
        return "soft limit observed"
    return "done"


@shared_task(name="rcw.testing.ignores_soft", soft_time_limit=1)
def ignores_soft(seconds):
    time.sleep(seconds)
    return seconds
