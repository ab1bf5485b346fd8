"""Bad messages are logged and dropped (or stored as FAILURE when the id is known);
they never stop the worker."""
from __future__ import annotations

import json
import pickle
import time

import pytest

from helpers import capture_envelope, reidentify, result_meta, set_body

GET_TIMEOUT = 20


def _normal_task_still_works(celery_client, w):
    res = celery_client.send_task("app.workers.tasks.example_task", args=[20, 22])
    assert res.get(timeout=GET_TIMEOUT) == 42
    assert w.alive(), "worker died"


# Celery 5.7's own worker dies on this ("Unrecoverable error: JSONDecodeError" from
# kombu's _brpop_read); ours must log it, drop it and go on.
@pytest.mark.rust_only
def test_raw_garbage_on_queue(celery_client, worker, broker):
    w = worker()
    broker.lpush("celery", b"\x00\xffthis is not json{{{")
    broker.lpush("celery", b'["a", "json", "array", "not", "an", "envelope"]')
    broker.lpush("celery", b'{"body": "%%%not base64%%%", "headers": {}, "properties": {}}')
    time.sleep(1.0)
    _normal_task_still_works(celery_client, w)
    assert broker.llen("celery") == 0


def test_valid_envelope_body_not_json(celery_client, worker, broker, backend):
    w = worker()
    env = capture_envelope(celery_client, broker, "app.workers.tasks.example_task", args=[1, 2])
    bad_id = reidentify(env)
    set_body(env, b"this is {not json")
    broker.lpush("celery", json.dumps(env))
    time.sleep(1.0)
    _normal_task_still_works(celery_client, w)
    # Never executed; not left in the queue or in the unacked bookkeeping.
    meta = result_meta(backend, bad_id)
    assert meta is None or meta["status"] == "FAILURE", meta
    assert broker.llen("celery") == 0
    assert broker.hlen("unacked") == 0


# Celery 5.7's own worker dies on this one ("Unrecoverable error: ValueError('not
# enough values to unpack (expected 3, got 1)')" in Request.__init__) and then
# restores the message, so it would crash again on restart; ours must survive it.
@pytest.mark.rust_only
def test_valid_envelope_body_wrong_shape(celery_client, worker, broker, backend):
    w = worker()
    ids = []
    for body in ({"not": "a list"}, [1, 2], "just a string", [[1, 2], {}, {}, "extra"]):
        env = capture_envelope(celery_client, broker, "app.workers.tasks.example_task",
                               args=[1, 2])
        ids.append(reidentify(env))
        set_body(env, json.dumps(body).encode())
        broker.lpush("celery", json.dumps(env))
    time.sleep(1.0)
    _normal_task_still_works(celery_client, w)
    for tid in ids:
        meta = result_meta(backend, tid)
        assert meta is None or meta["status"] == "FAILURE", meta
    assert broker.llen("celery") == 0
    assert broker.hlen("unacked") == 0


def test_pickle_message_refused(celery_client, worker, broker, backend):
    w = worker()
    env = capture_envelope(celery_client, broker, "app.workers.tasks.example_task", args=[1, 2])
    bad_id = reidentify(env)
    body = pickle.dumps(((1, 2), {}, {"callbacks": None, "errbacks": None,
                                      "chain": None, "chord": None}), protocol=2)
    set_body(env, body, content_type="application/x-python-serialize",
             content_encoding="binary")
    broker.lpush("celery", json.dumps(env))
    w.wait_for_log("application/x-python-serialize", timeout=10,
                   what="log line naming the refused content type")
    _normal_task_still_works(celery_client, w)
    assert broker.llen("celery") == 0
    assert broker.hlen("unacked") == 0
    meta = result_meta(backend, bad_id)
    # Never executed: no SUCCESS for it, whatever else.
    assert meta is None or meta["status"] != "SUCCESS"


@pytest.mark.rust_only  # Celery's worker only rejects the message; ours also stores FAILURE
def test_pickle_message_stored_as_content_disallowed(celery_client, worker, broker, backend):
    from kombu.exceptions import ContentDisallowed
    from celery.result import AsyncResult

    worker()
    env = capture_envelope(celery_client, broker, "app.workers.tasks.example_task", args=[1, 2])
    bad_id = reidentify(env)
    set_body(env, pickle.dumps(((1, 2), {}, {}), protocol=2),
             content_type="application/x-python-serialize", content_encoding="binary")
    broker.lpush("celery", json.dumps(env))
    res = AsyncResult(bad_id, app=celery_client)
    with pytest.raises(ContentDisallowed):
        res.get(timeout=GET_TIMEOUT)
    meta = result_meta(backend, bad_id)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "ContentDisallowed"
    assert meta["result"]["exc_module"] == "kombu.exceptions"
