"""Bad messages are logged and dropped (or stored as FAILURE when the id is known);
they never stop the worker."""
from __future__ import annotations

import json
import pickle
import time

import pytest

from helpers import reidentify, result_meta, set_body

GET_TIMEOUT = 20


def _normal_task_still_works(celery_client, w):
    res = celery_client.send_task("app.workers.tasks.example_task", args=[20, 22])
    assert res.get(timeout=GET_TIMEOUT) == 42
    assert w.alive(), "worker died"


# Celery 5.7's own worker dies on this on Redis ("Unrecoverable error: JSONDecodeError"
# from kombu's _brpop_read); ours must log it, drop it and go on. On AMQP the same bytes
# arrive as bodies without content type or Celery headers.
@pytest.mark.rust_only
def test_raw_garbage_on_queue(celery_client, worker, transport):
    w = worker()
    transport.push_raw("celery", b"\x00\xffthis is not json{{{")
    transport.push_raw("celery", b'["a", "json", "array", "not", "an", "envelope"]')
    transport.push_raw("celery", b'{"body": "%%%not base64%%%", "headers": {}, "properties": {}}')
    time.sleep(1.0)
    _normal_task_still_works(celery_client, w)
    assert transport.queue_length("celery") == 0
    assert transport.unacked_count() == 0


def test_valid_envelope_body_not_json(celery_client, worker, transport, backend):
    w = worker()
    env = transport.capture_envelope(celery_client, "app.workers.tasks.example_task", args=[1, 2])
    bad_id = reidentify(env)
    set_body(env, b"this is {not json")
    transport.push_envelope("celery", env)
    time.sleep(1.0)
    _normal_task_still_works(celery_client, w)
    # Never executed; not left in the queue or in the unacked bookkeeping.
    meta = result_meta(backend, bad_id)
    assert meta is None or meta["status"] == "FAILURE", meta
    assert transport.queue_length("celery") == 0
    assert transport.unacked_count() == 0


# Celery 5.7's own worker dies on this one ("Unrecoverable error: ValueError('not
# enough values to unpack (expected 3, got 1)')" in Request.__init__) and then
# restores the message, so it would crash again on restart; ours must survive it.
@pytest.mark.rust_only
def test_valid_envelope_body_wrong_shape(celery_client, worker, transport, backend):
    w = worker()
    ids = []
    for body in ({"not": "a list"}, [1, 2], "just a string", [[1, 2], {}, {}, "extra"]):
        env = transport.capture_envelope(celery_client, "app.workers.tasks.example_task",
                               args=[1, 2])
        ids.append(reidentify(env))
        set_body(env, json.dumps(body).encode())
        transport.push_envelope("celery", env)
    time.sleep(1.0)
    _normal_task_still_works(celery_client, w)
    for tid in ids:
        meta = result_meta(backend, tid)
        assert meta is None or meta["status"] == "FAILURE", meta
    assert transport.queue_length("celery") == 0
    assert transport.unacked_count() == 0


def test_pickle_message_refused(celery_client, worker, transport, backend):
    w = worker()
    env = transport.capture_envelope(celery_client, "app.workers.tasks.example_task", args=[1, 2])
    bad_id = reidentify(env)
    body = pickle.dumps(((1, 2), {}, {"callbacks": None, "errbacks": None,
                                      "chain": None, "chord": None}), protocol=2)
    set_body(env, body, content_type="application/x-python-serialize",
             content_encoding="binary")
    transport.push_envelope("celery", env)
    w.wait_for_log("application/x-python-serialize", timeout=10,
                   what="log line naming the refused content type")
    _normal_task_still_works(celery_client, w)
    assert transport.queue_length("celery") == 0
    assert transport.unacked_count() == 0
    meta = result_meta(backend, bad_id)
    # Never executed: no SUCCESS for it, whatever else.
    assert meta is None or meta["status"] != "SUCCESS"


@pytest.mark.rust_only  # Celery's worker only rejects the message; ours also stores FAILURE
def test_pickle_message_stored_as_content_disallowed(celery_client, worker, transport, backend):
    from kombu.exceptions import ContentDisallowed
    from celery.result import AsyncResult

    worker()
    env = transport.capture_envelope(celery_client, "app.workers.tasks.example_task", args=[1, 2])
    bad_id = reidentify(env)
    set_body(env, pickle.dumps(((1, 2), {}, {}), protocol=2),
             content_type="application/x-python-serialize", content_encoding="binary")
    transport.push_envelope("celery", env)
    res = AsyncResult(bad_id, app=celery_client)
    with pytest.raises(ContentDisallowed):
        res.get(timeout=GET_TIMEOUT)
    meta = result_meta(backend, bad_id)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "ContentDisallowed"
    assert meta["result"]["exc_module"] == "kombu.exceptions"
