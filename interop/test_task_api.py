"""Celery's task API corners through ``-A``, as Celery's worker settles them:
``Ignore`` after ``update_state`` keeps what the task stored, ``Reject(requeue=True)``
redelivers, ``retry(args=…)`` changes the arguments, children published from a
body are recorded, returned results are stored as tuples, ``replace()`` counts
``replaced_task_nesting``, the request carries the message properties and custom
headers, new-style errbacks are called with the request, nested canvases run as
Celery's canvas runs them — and a conf holding every kind of value loads, its
worker settings apply and what is not supported is named."""
from __future__ import annotations

import os
import time

import pytest
from celery import chain, chord, group

from helpers import result_meta, wait_until

import apiapp

GET = 20


@pytest.fixture
def api_worker(worker):
    return worker(app="apiapp", queues=["apiq"], concurrency=1, pool="prefork")


def test_ignore_keeps_the_state_the_task_stored(celery_client, api_worker, backend):
    r = apiapp.custom_failure.delay()
    wait_until(lambda: (result_meta(backend, r.id) or {}).get("status") == "FAILURE",
               timeout=10, what="the custom FAILURE")
    time.sleep(0.5)
    meta = result_meta(backend, r.id)
    assert meta["result"]["custom"] == 1 and meta["result"]["exc_message"] == ["mine"]


def test_reject_with_requeue_redelivers(celery_client, api_worker):
    assert apiapp.reject_once.delay().get(timeout=GET) == "second delivery"


def test_retry_with_new_args(celery_client, api_worker):
    assert apiapp.retry_with_args.delay(2, y=5).get(timeout=GET) == [20, 5, 1]


def test_children_published_from_the_body_are_recorded(celery_client, api_worker, backend):
    r = apiapp.spawn.delay(3)
    first = r.get(timeout=GET)
    # A returned AsyncResult is stored as its result tuple.
    assert first == [[first[0][0], None], None]
    meta = result_meta(backend, r.id)
    assert len(meta["children"]) == 3
    assert meta["children"][0] == [[first[0][0], None], None]
    g = apiapp.spawn_group.delay().get(timeout=GET)
    (gid, _), members = g
    assert len(members) == 2 and gid


def test_replace_with_a_chain_counts_nesting(celery_client, api_worker):
    assert apiapp.replace_with_task.delay(4).get(timeout=GET) == [4, 1]
    assert apiapp.replace_twice.delay(4).get(timeout=GET) == [4, 2]
    # A chain replacing a task keeps its id for its last step, which the
    # worker publishes as a chain step: the count travels with it.
    r = apiapp.replace_with_chain.delay(4)
    assert r.get(timeout=GET) == [5, 1]


def test_request_properties_and_custom_headers(celery_client, api_worker):
    r = apiapp.properties.apply_async(app_id="app-7", headers={"x-custom": "yes"})
    assert r.get(timeout=GET) == {"app_id": "app-7", "custom": "yes"}


@pytest.mark.skipif(os.environ.get("RCW_CANVAS") == "rust",
                    reason="new-style errbacks are called by the app's own code")
def test_new_style_errback_is_called_with_the_request(celery_client, api_worker, backend):
    r = apiapp.fail.apply_async(("boom",), link_error=apiapp.record_errback.s())
    with pytest.raises(ValueError):
        r.get(timeout=GET)
    wait_until(lambda: backend.llen("apiapp:errbacks") == 1, timeout=10,
               what="the errback's record")
    assert backend.lrange("apiapp:errbacks", 0, -1) == [f"{r.id}:ValueError:boom".encode()]


def test_nested_canvases(celery_client, api_worker):
    # A group followed by a task (upgraded to a chord), then a chord whose
    # header holds a chain and whose body is a chain.
    c = chain(apiapp.add.s(1, 1),
              group(apiapp.add.s(10), apiapp.add.s(20)),
              apiapp.tsum.s())
    assert c.delay().get(timeout=GET) == 34
    inner = chord([chain(apiapp.add.s(1, 1), apiapp.add.s(1)), apiapp.add.s(2, 2)],
                  chain(apiapp.tsum.s(), apiapp.add.s(100)))
    assert inner.delay().get(timeout=GET) == 107
    # A group of chains inside a chain.
    res = chain(apiapp.add.s(1, 2),
                group(chain(apiapp.add.s(1), apiapp.add.s(1)), apiapp.add.s(5)))()
    assert res.get(timeout=GET) == [5, 8]


def test_conf_with_every_kind_of_value_applies(celery_client, worker, transport):
    w = worker(app="apiapp", queues=["apiq", "hp"], concurrency=1, pool="prefork")
    # worker_max_tasks_per_child=3 from the conf: a fourth task gets a new process.
    pids = [apiapp.pid.delay().get(timeout=GET) for _ in range(4)]
    assert len(set(pids[:3])) == 1 and pids[3] != pids[0]
    # Queue("hp", Exchange("hpx"), routing_key="hp.key") is bound as declared.
    assert transport.bound("hpx", "hp.key", "hp")
    assert apiapp.add.apply_async((2, 3), queue="hp").get(timeout=GET) == 5
    if w.kind != "python":
        # What the worker does not support is named, in one line.
        warned = [line for line in w.log().splitlines()
                  if "not supported by this worker" in line]
        assert len(warned) == 1 and "worker_disable_rate_limits" in warned[0]


def test_router_function_routes_chain_steps(celery_client, worker, transport):
    """A ``task_routes`` router function decides where the worker sends a
    chain step: a worker serving only ``apiq`` leaves it in ``hp``."""
    worker(app="apiapp", queues=["apiq"], concurrency=1, pool="prefork")
    res = chain(apiapp.add.s(1, 1), apiapp.routed_step.s()).apply_async(queue="apiq")
    wait_until(lambda: transport.queue_length("hp") == 1, timeout=15,
               what="the step waiting in 'hp'")
    worker(app="apiapp", queues=["hp"], concurrency=1, pool="prefork")
    assert res.get(timeout=GET) == ["routed", 2]


def test_unknown_queue_with_create_missing_queues_off(celery_client, worker):
    """``task_create_missing_queues=False``: ``-Q`` naming a queue
    ``task_queues`` lacks stops the start with Celery's message."""
    w = worker(app="apiapp", queues=["nosuch"], concurrency=1, pool="prefork",
               env={"APIAPP_STRICT_QUEUES": "1"}, wait_ready=False)
    w.proc.wait(timeout=30)
    assert w.proc.returncode != 0
    assert ("Trying to select queue subset of ['nosuch'], but queue 'nosuch' isn't"
            in " ".join(w.log().split()))


def test_revoked_header_part_fails_the_chord_once(celery_client, worker, backend):
    """A chord header part revoked while it waits for its ETA fails the chord:
    the body gets ``ChordError`` and its (new-style) errback runs once."""
    from celery.exceptions import TaskRevokedError

    w = worker(app="apiapp", queues=["apiq"], concurrency=1, pool="prefork")
    late = apiapp.add.s(2, 2).set(countdown=4)
    c = chord([apiapp.add.s(1, 1), late], apiapp.tsum.s().on_error(apiapp.record_errback.s()))
    res = c.freeze()
    first_id, late_id = (t.id for t in c.tasks.tasks)
    c.apply_async()
    wait_until(lambda: (result_meta(backend, first_id) or {}).get("status") == "SUCCESS",
               timeout=10, what="the first header part")
    time.sleep(0.5)
    celery_client.control.revoke(late_id)
    with pytest.raises(TaskRevokedError):  # the failed parent is raised first
        res.get(timeout=GET)
    wait_until(lambda: (result_meta(backend, res.id) or {}).get("status") == "FAILURE",
               timeout=10, what="the body failed")
    assert result_meta(backend, res.id)["result"]["exc_type"] == "ChordError"
    wait_until(lambda: backend.llen("apiapp:errbacks") >= 1, timeout=10, what="the errback")
    time.sleep(1.0)
    assert backend.llen("apiapp:errbacks") == 1
    if w.kind != "python":
        assert "complete the chord for" not in w.log()
