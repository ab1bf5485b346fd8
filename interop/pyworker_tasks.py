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
"""
import time

from celery import shared_task

from app.workers.tasks import IngestionError


@shared_task(name="rcw.testing.sleep")
def sleep(seconds, result=None):
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


@shared_task(name="rcw.testing.spin")
def spin(seconds):
    """Busy-loops for ``seconds`` (CPU-bound, never sleeps)."""
    import time
    until = time.monotonic() + seconds
    n = 0
    while time.monotonic() < until:
        n = (n * 6364136223846793005 + 1) % (1 << 64)
    return True
