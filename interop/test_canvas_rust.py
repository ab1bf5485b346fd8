"""The Rust canvas on a worker without any Python app (``rust-celery-worker``
with Rust tasks only, no ``-A``): nested canvases and Celery's built-in
``celery.map`` / ``starmap`` / ``chunks`` / ``accumulate`` / ``group`` /
``chord`` tasks give the results Celery's canvas gives. Celery's worker always
has an app (these same shapes run through it in ``test_task_api.py``), so these
tests are ``rust_only``; they need the Rust test tasks (``rust_native``)."""
from __future__ import annotations

import pytest
from celery import chain, chord, group, signature
from celery.canvas import chunks, xmap, xstarmap

GET = 20

pytestmark = [pytest.mark.rust_only, pytest.mark.rust_native]


def _s(app, name, *args, **options):
    return signature(name, args=args, app=app, **options)


@pytest.fixture
def bare_worker(worker):
    return worker(app="")


def test_nested_canvases_without_an_app(celery_client, bare_worker):
    app = celery_client
    upgraded = chain(_s(app, "rcw.testing.echo", 2),
                     group(_s(app, "rcw.testing.mul", 3), _s(app, "rcw.testing.mul", 4)),
                     _s(app, "rcw.testing.tsum"))
    assert upgraded.delay().get(timeout=GET) == 14
    nested = chord([chain(_s(app, "rcw.testing.echo", 1), _s(app, "rcw.testing.mul", 2)),
                    _s(app, "rcw.testing.echo", 5)],
                   chain(_s(app, "rcw.testing.tsum"), _s(app, "rcw.testing.mul", 10)))
    assert nested.delay().get(timeout=GET) == 70
    res = chain(_s(app, "rcw.testing.echo", 3),
                group(chain(_s(app, "rcw.testing.mul", 2), _s(app, "rcw.testing.mul", 2)),
                      _s(app, "rcw.testing.mul", 5)))()
    assert res.get(timeout=GET) == [12, 15]
    # A chord whose header holds a chord: the inner body counts for the outer.
    outer = chord([chord([_s(app, "rcw.testing.echo", 1), _s(app, "rcw.testing.echo", 2)],
                         _s(app, "rcw.testing.tsum")),
                   _s(app, "rcw.testing.echo", 4)],
                  _s(app, "rcw.testing.tsum"))
    assert outer.delay().get(timeout=GET) == 7


def test_builtin_canvas_tasks_without_an_app(celery_client, bare_worker):
    app = celery_client
    mul = app.signature("rcw.testing.mul")
    echo = app.signature("rcw.testing.echo")
    assert xmap(echo, [1, 2, 3], app=app).delay().get(timeout=GET) == [1, 2, 3]
    assert xstarmap(mul, [(2, 3), (4, 5)], app=app).delay().get(timeout=GET) == [6, 20]
    res = chunks(mul, [(1, 2), (3, 4), (5, 6)], 2, app=app).delay()
    assert res.get(timeout=GET) == [[2, 12], [30]]
    # `celery.chunks` sent as a task returns its group's result tuple.
    sent = app.send_task("celery.chunks", args=(dict(mul), [(1, 2), (3, 4), (5, 6)], 2))
    from celery.result import result_from_tuple
    assert result_from_tuple(sent.get(timeout=GET), app).get(timeout=GET) == [[2, 12], [30]]
    acc = app.signature("celery.accumulate", args=(1, 2, 3), kwargs={"index": 1})
    assert acc.delay().get(timeout=GET) == 2
    whole = app.signature("celery.accumulate", args=(1, 2))
    assert whole.delay().get(timeout=GET) == [1, 2]
    # `celery.chord` sent as a task (a plain Signature naming it).
    ch = app.send_task("celery.chord", kwargs={
        "header": [dict(_s(app, "rcw.testing.echo", 1)), dict(_s(app, "rcw.testing.echo", 2))],
        "body": dict(_s(app, "rcw.testing.tsum", task_id="body-of-the-sent-chord"))})
    ch.get(timeout=GET)
    assert app.AsyncResult("body-of-the-sent-chord").get(timeout=GET) == 3
