"""A mixed fleet: a real Python `celery worker` and ours consume one queue."""
from __future__ import annotations

from collections import Counter


def test_mixed_fleet_shares_queue(celery_client, worker, queue_name):
    from app.workers.tasks import example_task

    ours = worker(name="ours", queues=[queue_name], concurrency=2)
    theirs = worker(name="theirs", kind="python", pool="prefork", queues=[queue_name],
                    concurrency=2)
    results = [example_task.apply_async((i, i), queue=queue_name) for i in range(200)]
    for i, res in enumerate(results):
        assert res.get(timeout=60) == 2 * i
    ids = {r.id for r in results}

    # Every task id succeeded in exactly one of the two workers' logs, exactly once.
    import time
    deadline = time.monotonic() + 10
    while True:
        ours_ids, theirs_ids = ours.succeeded_ids(), theirs.succeeded_ids()
        counts = Counter(i for i in ours_ids + theirs_ids if i in ids)
        if len(counts) == len(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert set(counts) == ids, f"{len(ids - set(counts))} ids missing from the logs"
    dupes = [i for i, n in counts.items() if n != 1]
    assert not dupes, f"{len(dupes)} tasks ran more than once, e.g. {dupes[:3]}"
    n_ours = len(ids & set(ours_ids))
    n_theirs = len(ids & set(theirs_ids))
    assert n_ours + n_theirs == 200
    assert n_ours > 0, "our worker ran none of the tasks"
    assert n_theirs > 0, "the Python worker ran none of the tasks"
    print(f"ours ran {n_ours}, celery ran {n_theirs}")
