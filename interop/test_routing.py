"""Where the worker sends what it publishes (chain steps here), as Celery's router
decides: the signature's own options, then the task's own ``queue``, then
``task_routes`` (names and globs), then ``task_default_queue``. The client never
routes these messages: the worker does, so a worker consuming only the default
queue must leave a routed step in its queue for the worker that serves it."""
from __future__ import annotations

import pytest
from celery import chain, signature

from helpers import wait_until

GET_TIMEOUT = 20


def _sig(app, name, *args, **options):
    return signature(name, args=args, app=app, **options)


@pytest.mark.timeout(60)
def test_chain_step_follows_task_routes(celery_client, worker, transport):
    routes = {"rcw.testing.mul": {"queue": "math"}, "rcw.testing.ts*": "sums"}
    worker(settings={"task_routes": routes})
    res = chain(_sig(celery_client, "rcw.testing.echo", 2),
                _sig(celery_client, "rcw.testing.mul", 5))()
    wait_until(lambda: transport.waiting_tasks("math") == ["rcw.testing.mul"], timeout=10,
               what="the mul step waiting in 'math'")
    glob = chain(_sig(celery_client, "rcw.testing.echo", [1, 2]),
                 _sig(celery_client, "rcw.testing.tsum"))()
    wait_until(lambda: transport.waiting_tasks("sums") == ["rcw.testing.tsum"], timeout=10,
               what="the tsum step waiting in 'sums' (glob route)")
    # An explicit queue on the signature wins over the routes.
    explicit = chain(_sig(celery_client, "rcw.testing.echo", 3),
                     _sig(celery_client, "rcw.testing.mul", 2, queue="celery"))()
    assert explicit.get(timeout=GET_TIMEOUT) == 6
    worker(queues=["math", "sums"])
    assert res.get(timeout=GET_TIMEOUT) == 10
    assert glob.get(timeout=GET_TIMEOUT) == 3


@pytest.mark.timeout(60)
def test_chain_step_goes_to_the_queue_its_task_names(celery_client, worker, transport):
    """Seed 003's pattern: ``@app.task(queue='high-priority')`` as a later chain step."""
    worker()
    res = chain(_sig(celery_client, "rcw.testing.echo", "x"),
                _sig(celery_client, "rcw.testing.routed_echo"))()
    wait_until(lambda: transport.waiting_tasks("routed") == ["rcw.testing.routed_echo"],
               timeout=10, what="the step waiting in its task's queue 'routed'")
    assert transport.queue_length("celery") == 0
    worker(queues=["routed"])
    assert res.get(timeout=GET_TIMEOUT) == "x"


@pytest.mark.timeout(60)
def test_seed_high_priority_chain_steps_land_on_their_queue(celery_client, worker, transport):
    """Seed 003: ``@app.task(queue='high-priority')`` as a chain step; a worker
    on ``default`` leaves it in ``high-priority`` for the
    ``--queues=high-priority,default`` worker."""
    import seedapp

    worker(app="seedapp", queues=["default"], concurrency=1, pool="prefork")
    # The first step's priority is not inherited by the next one
    # (task_inherit_parent_priority is off): it waits at priority 0.
    res = chain(seedapp.prepare.s(1), seedapp.urgent_task.s()).apply_async(priority=5)
    wait_until(lambda: transport.waiting_tasks("high-priority") == ["seedapp.urgent_task"],
               timeout=15, what="the urgent step waiting in 'high-priority'")
    worker(app="seedapp", queues=["high-priority", "default"], concurrency=2, pool="prefork")
    assert res.get(timeout=GET_TIMEOUT) == {
        "x": 1, "prepared_on": "default", "urgent_on": "high-priority"}
