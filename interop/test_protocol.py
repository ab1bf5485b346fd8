"""Wire variants a Python producer can send: protocol v1, compressed bodies,
kombu's JSON type tags, and the result_extended meta."""
from __future__ import annotations

import datetime
import decimal
import uuid

from celery import Celery

from helpers import result_meta


def test_protocol_v1_producer(celery_client, worker):
    """A producer still on `task_protocol=1` (Celery 3 style messages)."""
    worker()
    # set_as_current=False: @shared_task proxies must keep using the suite's app.
    old = Celery("legacy", broker=celery_client.conf.broker_url,
                 backend=celery_client.conf.result_backend, set_as_current=False)
    old.conf.task_protocol = 1
    try:
        r = old.send_task("app.workers.tasks.example_task", args=[20, 22])
        assert r.get(timeout=20) == 42
        r = old.send_task("app.workers.tasks.example_task", args=[1], kwargs={"y": 2})
        assert r.get(timeout=20) == 3
    finally:
        old.close()


def test_gzip_compressed_message(celery_client, worker):
    from app.workers.tasks import example_task
    worker()
    r = example_task.apply_async((2, 3), compression="gzip")
    assert r.get(timeout=20) == 5
    r = celery_client.send_task("rcw.testing.echo", args=["x" * 5000], compression="zlib")
    assert r.get(timeout=20) == "x" * 5000


def test_kombu_type_tags_round_trip(celery_client, worker):
    """datetime, Decimal, UUID and bytes arguments come back as the same Python types."""
    worker()
    values = [
        datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc),
        datetime.date(2024, 5, 6),
        decimal.Decimal("3.14159265358979323846"),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        b"raw bytes",
    ]
    for v in values:
        r = celery_client.send_task("rcw.testing.echo", args=[v])
        got = r.get(timeout=20)
        assert got == v and type(got) is type(v), f"{v!r} came back as {got!r}"


def test_result_extended_meta(celery_client, worker, backend, queue_name):
    worker(queues=[queue_name], settings={"result_extended": True}, name="ext")
    r = celery_client.send_task("app.workers.tasks.example_task", args=[2], kwargs={"y": 3},
                                queue=queue_name)
    assert r.get(timeout=20) == 5
    meta = result_meta(backend, r.id)
    assert meta["name"] == "app.workers.tasks.example_task"
    assert meta["args"] == [2] and meta["kwargs"] == {"y": 3}
    assert meta["queue"] == queue_name
    assert meta["retries"] == 0
    assert meta["worker"].startswith("ext@")
    assert list(meta)[-1] == "task_id"
    # Python's client exposes them on the result, as with a Python worker.
    fresh = celery_client.AsyncResult(r.id)
    assert fresh.name == "app.workers.tasks.example_task"
    assert fresh.args == [2] and fresh.kwargs == {"y": 3}
