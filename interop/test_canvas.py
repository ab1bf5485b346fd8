"""Canvas on the worker side (SPEC §6.7, §7.8, §7.10): link / link_error callbacks,
chains, groups, chords (Redis ``on_chord_part_return``), including a chord whose
header runs across a Python and a Rust worker."""
from __future__ import annotations

import time
from collections import Counter

import pytest
from celery import chain, chord, group, signature
from celery.exceptions import ChordError

from helpers import log_count, result_meta, wait_until

GET_TIMEOUT = 20




def _child(task_id):
    """A plain task result as listed in ``children``: ``[[id, parent], None]``."""
    return [[task_id, None], None]


def _sig(app, name, *args, **options):
    return signature(name, args=args, app=app, **options)


# --------------------------------------------------------------------------- link


def test_link_callback_gets_the_result(celery_client, worker, backend):
    from app.workers.tasks import example_task

    w = worker()
    callback = _sig(celery_client, "rcw.testing.mul", 10)
    callback.freeze()
    first = example_task.apply_async((1, 1), link=callback)
    assert first.get(timeout=GET_TIMEOUT) == 2
    # mul(2, 10): the parent's return value is prepended to the callback's args.
    assert celery_client.AsyncResult(callback.id).get(timeout=GET_TIMEOUT) == 20
    cb_meta = result_meta(backend, callback.id)
    assert cb_meta["status"] == "SUCCESS" and cb_meta["result"] == 20
    assert cb_meta["parent_id"] == first.id
    first_meta = result_meta(backend, first.id)
    assert first_meta["children"] == [_child(callback.id)]
    assert "parent_id" not in first_meta
    w.wait_for_log(f"Task rcw.testing.mul[{callback.id}] succeeded", timeout=5)


def test_link_error_errback_gets_the_failed_id(celery_client, worker, backend):
    worker()
    errback = _sig(celery_client, "rcw.testing.echo")
    errback.freeze()
    failed = celery_client.send_task("rcw.testing.fail", args=["kaboom"], link_error=errback)
    with pytest.raises(ValueError, match="^kaboom$"):
        failed.get(timeout=GET_TIMEOUT)
    # A one-argument errback is published with [failed_task_id] as its args.
    assert celery_client.AsyncResult(errback.id).get(timeout=GET_TIMEOUT) == failed.id
    eb_meta = result_meta(backend, errback.id)
    assert eb_meta["parent_id"] == failed.id
    assert result_meta(backend, failed.id)["status"] == "FAILURE"


def test_link_not_called_on_failure_and_link_error_not_on_success(celery_client, worker,
                                                                     backend):
    from app.workers.tasks import example_task

    w = worker()
    on_success = _sig(celery_client, "rcw.testing.echo")
    on_success.freeze()
    on_error = _sig(celery_client, "rcw.testing.echo")
    on_error.freeze()
    ok = example_task.apply_async((2, 3), link_error=on_error)
    bad = celery_client.send_task("rcw.testing.fail", link=on_success)
    assert ok.get(timeout=GET_TIMEOUT) == 5
    bad.get(timeout=GET_TIMEOUT, propagate=False)
    time.sleep(1.0)
    assert result_meta(backend, on_success.id) is None
    assert result_meta(backend, on_error.id) is None
    assert on_success.id not in w.log() and on_error.id not in w.log()


# --------------------------------------------------------------------------- chain


def test_chain_passes_results_and_links_metas(celery_client, worker, backend):
    from app.workers.tasks import example_task

    worker()
    res = chain(example_task.s(2, 2), example_task.s(3), example_task.s(5))()
    assert res.get(timeout=GET_TIMEOUT) == 12
    third, second, first = res, res.parent, res.parent.parent
    # Celery's worker publishes a chain's next step before it stores the step's own
    # result, so the last step can finish first.
    def stored():
        found = [result_meta(backend, r.id) for r in (first, second, third)]
        return found if all(found) else None
    metas = wait_until(stored, timeout=5, what="the three steps' metas")
    assert [m["result"] for m in metas] == [4, 7, 12]
    assert "parent_id" not in metas[0]
    assert metas[1]["parent_id"] == first.id
    assert metas[2]["parent_id"] == second.id
    # samples/result_meta_chain.json: each step lists the next one in `children`.
    assert metas[0]["children"] == [_child(second.id)]
    assert metas[1]["children"] == [_child(third.id)]
    assert metas[2]["children"] == []


def test_chain_middle_failure_fails_the_rest(celery_client, worker, backend):
    from app.workers.tasks import example_task

    w = worker()
    res = chain(example_task.s(1, 1), _sig(celery_client, "rcw.testing.fail"),
                example_task.s(3))()
    last, middle, first = res, res.parent, res.parent.parent
    with pytest.raises(ValueError) as excinfo:
        res.get(timeout=GET_TIMEOUT)
    assert excinfo.value.args == (2,)  # fail(2): the first step's result as message
    assert first.get(timeout=GET_TIMEOUT) == 2
    expected = {"exc_type": "ValueError", "exc_message": [2], "exc_module": "builtins"}
    mid_meta = result_meta(backend, middle.id)
    assert mid_meta["status"] == "FAILURE" and mid_meta["result"] == expected
    assert mid_meta["parent_id"] == first.id
    # Celery marks the remaining chain steps failed with the same exception ...
    wait_until(lambda: result_meta(backend, last.id), timeout=5, what="last step meta")
    last_meta = result_meta(backend, last.id)
    assert last_meta["status"] == "FAILURE" and last_meta["result"] == expected
    assert last_meta["date_done"] is not None
    # ... without ever running them.
    time.sleep(0.5)
    assert last.id not in w.log()
    # A fresh AsyncResult of the chain's end raises the same error.
    with pytest.raises(ValueError):
        celery_client.AsyncResult(last.id).get(timeout=GET_TIMEOUT)


# --------------------------------------------------------------------------- group


def test_group_members_carry_group_id(celery_client, worker, backend):
    from app.workers.tasks import example_task

    worker(concurrency=4)
    gres = group(example_task.s(i, i) for i in range(5))()
    assert gres.get(timeout=GET_TIMEOUT) == [0, 2, 4, 6, 8]
    for r in gres.results:
        meta = result_meta(backend, r.id)
        assert meta["group_id"] == gres.id, meta
        assert meta["status"] == "SUCCESS"
        assert "parent_id" not in meta
    # The worker never saves a plain group's result (only GroupResult.save() does).
    assert backend.get(f"celery-taskset-meta-{gres.id}") is None


# --------------------------------------------------------------------------- chord


def _chord_keys(backend, gid):
    return {suffix: backend.exists(f"celery-taskset-meta-{gid}.{suffix}")
            for suffix in ("j", "s", "d", "t")}


def test_chord_callback_once_and_keys_cleaned(celery_client, worker, backend):
    from app.workers.tasks import example_task

    w = worker(concurrency=4)
    res = chord(group(example_task.s(i, i) for i in range(4)),
                _sig(celery_client, "rcw.testing.tsum"))()
    gid = res.parent.id
    assert res.get(timeout=GET_TIMEOUT) == 12
    wait_until(lambda: backend.get(f"celery-taskset-meta-{gid}.c") == b"done", timeout=5,
               what="chord claim key set to 'done'")
    assert _chord_keys(backend, gid) == {"j": 0, "s": 0, "d": 0, "t": 0}
    cb_meta = result_meta(backend, res.id)
    assert cb_meta["status"] == "SUCCESS" and cb_meta["result"] == 12
    # The callback message carries the header's group id; its parent is the header
    # task that completed the chord.
    assert cb_meta["group_id"] == gid
    header_ids = [r.id for r in res.parent.results]
    assert cb_meta["parent_id"] in header_ids
    for r in res.parent.results:
        assert result_meta(backend, r.id)["group_id"] == gid
    w.wait_for_log(f"Task rcw.testing.tsum[{res.id}] succeeded", timeout=5)
    time.sleep(0.5)
    assert log_count(w, f"Task rcw.testing.tsum[{res.id}] received") == 1
    assert log_count(w, f"Task rcw.testing.tsum[{res.id}] succeeded") == 1


def test_chord_header_failure_fails_callback_with_chord_error(celery_client, worker,
                                                             backend):
    from app.workers.tasks import example_task

    w = worker(concurrency=4)
    res = chord([example_task.s(1, 1),
                 _sig(celery_client, "rcw.testing.fail", "header broke"),
                 example_task.s(2, 2)],
                _sig(celery_client, "rcw.testing.tsum"))()
    failed_id = res.parent.results[1].id
    callback = celery_client.AsyncResult(res.id)  # without the header as parent
    with pytest.raises(ChordError) as excinfo:
        callback.get(timeout=GET_TIMEOUT)
    message = f"Dependency {failed_id} raised ValueError('header broke')"
    assert str(excinfo.value) == message
    meta = result_meta(backend, res.id)
    assert meta["status"] == "FAILURE"
    assert meta["result"] == {"exc_type": "ChordError", "exc_message": [message],
                              "exc_module": "celery.exceptions"}
    # The callback never ran.
    time.sleep(0.5)
    assert f"rcw.testing.tsum[{res.id}]" not in w.log()
    # Chord size key dropped so a late duplicate can't fail it again.
    assert not backend.exists(f"celery-taskset-meta-{res.parent.id}.s")


def test_chord_across_python_and_rust_workers(celery_client, worker, backend, queue_name):
    """Header tasks spread over a real Celery worker and ours; whichever completes the
    chord publishes the callback, exactly once, with every header result in order."""
    ours = worker(name="ours", queues=[queue_name], concurrency=2)
    theirs = worker(name="theirs", kind="python", pool="prefork", queues=[queue_name],
                    concurrency=2)
    n = 20
    header = group(_sig(celery_client, "rcw.testing.sleep", 0.1, i, queue=queue_name)
                   for i in range(n))
    callback = _sig(celery_client, "rcw.testing.echo", queue=queue_name)
    res = chord(header, callback)()
    assert res.get(timeout=GET_TIMEOUT * 2) == list(range(n))
    header_ids = {r.id for r in res.parent.results}

    def ran(w):
        return [i for i in w.succeeded_ids() if i in header_ids]
    wait_until(lambda: len(ran(ours)) + len(ran(theirs)) == n, timeout=5,
               what="every header task in a log")
    counts = Counter(ran(ours) + ran(theirs))
    assert set(counts) == header_ids and set(counts.values()) == {1}
    assert ran(ours), "our worker ran no header task"
    assert ran(theirs), "the Python worker ran no header task"
    time.sleep(0.5)
    line = f"Task rcw.testing.echo[{res.id}] succeeded"
    assert log_count(ours, line) + log_count(theirs, line) == 1
    gid = res.parent.id
    wait_until(lambda: backend.get(f"celery-taskset-meta-{gid}.c") == b"done", timeout=5,
               what="chord claim key 'done'")
    assert _chord_keys(backend, gid) == {"j": 0, "s": 0, "d": 0, "t": 0}


# --------------------------------------------------------------------------- nested canvas


@pytest.mark.timeout(60)
def test_chain_runs_a_chord_step_and_continues(celery_client, worker):
    """A chord reached as a chain step: the worker runs ``chord.run`` itself (the
    header gets the previous result, the body carries the rest of the chain)."""
    worker()
    c = chain(_sig(celery_client, "rcw.testing.echo", 2),
              chord([_sig(celery_client, "rcw.testing.mul", 2),
                     _sig(celery_client, "rcw.testing.mul", 3)],
                    _sig(celery_client, "rcw.testing.tsum")),
              _sig(celery_client, "rcw.testing.mul", 10))
    assert c.apply_async().get(timeout=GET_TIMEOUT) == 100


@pytest.mark.timeout(60)
def test_chain_ending_in_a_group_and_chords_in_a_row(celery_client, worker):
    worker()
    ends_in_group = chain(_sig(celery_client, "rcw.testing.echo", 3),
                          group(_sig(celery_client, "rcw.testing.mul", 2),
                                _sig(celery_client, "rcw.testing.mul", 5)))
    assert ends_in_group.apply_async().get(timeout=GET_TIMEOUT) == [6, 15]
    two_chords = chain(
        chord([_sig(celery_client, "rcw.testing.echo", 1),
               _sig(celery_client, "rcw.testing.echo", 2)],
              _sig(celery_client, "rcw.testing.tsum")),
        chord([_sig(celery_client, "rcw.testing.mul", 10),
               _sig(celery_client, "rcw.testing.mul", 20)],
              _sig(celery_client, "rcw.testing.tsum")))
    # (1 + 2) → 3 → [30, 60] → 90
    assert two_chords.apply_async().get(timeout=GET_TIMEOUT) == 90


@pytest.mark.timeout(60)
def test_chord_whose_body_is_a_chain_then_more_steps(celery_client, worker):
    worker()
    c = chain(chord([_sig(celery_client, "rcw.testing.echo", 1),
                     _sig(celery_client, "rcw.testing.echo", 2)],
                    chain(_sig(celery_client, "rcw.testing.tsum"),
                          _sig(celery_client, "rcw.testing.mul", 2))),
              _sig(celery_client, "rcw.testing.mul", 10))
    # (1 + 2) * 2 * 10
    assert c.apply_async().get(timeout=GET_TIMEOUT) == 60


@pytest.mark.timeout(60)
def test_chord_of_chords_keeps_header_order(celery_client, worker):
    """An outer chord whose header parts are chords: its results come in header
    order, not in the order the inner chords finish (the inner bodies keep their
    ``group_index`` in the outer chord, as Celery's ``test_nested_chord`` checks).
    The second inner chord finishes first."""
    worker(concurrency=3)
    slow = chord([_sig(celery_client, "rcw.testing.sleep", 1.0, 1),
                  _sig(celery_client, "rcw.testing.sleep", 1.0, 2)],
                 _sig(celery_client, "rcw.testing.tsum"))
    fast = chord([_sig(celery_client, "rcw.testing.echo", 10)],
                 _sig(celery_client, "rcw.testing.tsum"))
    outer = chord([slow, fast], _sig(celery_client, "rcw.testing.echo"))
    assert outer.apply_async().get(timeout=GET_TIMEOUT) == [3, 10]
