"""``--metrics-port``: ``/metrics`` in Prometheus text with celery-exporter's names,
parsed by ``prometheus_client``'s own parser, and ``/healthz`` as a liveness probe.

Celery's worker has no such endpoint (teams run celery-exporter beside it), so these
are ``rust_only``.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from celery import Celery

from helpers import RedisServer, free_port, wait_until

pytestmark = pytest.mark.rust_only

prometheus_parser = pytest.importorskip("prometheus_client.parser")


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _samples(port: int) -> dict:
    """{(metric sample name, frozenset(labels)): value} from a scrape."""
    status, text = _get(port, "/metrics")
    assert status == 200
    out = {}
    for family in prometheus_parser.text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(samples: dict, metric: str, **labels) -> float:
    want = set(labels.items())
    hits = [v for (n, ls), v in samples.items() if n == metric and want <= set(ls)]
    assert len(hits) == 1, f"{metric}{labels}: {len(hits)} samples"
    return hits[0]


def test_metrics_count_a_burst_exactly(celery_client, worker, queue_name):
    port = free_port()
    w = worker(queues=[queue_name], extra_args=["--metrics-port", str(port)])
    host = w.node.split("@", 1)[1]
    add = "app.workers.tasks.example_task"
    n = 40
    results = [celery_client.send_task(add, args=[i, 1], queue=queue_name) for i in range(n)]
    failing = [celery_client.send_task("rcw.testing.fail", args=["boom"], queue=queue_name)
               for _ in range(3)]
    assert [r.get(timeout=30) for r in results] == [i + 1 for i in range(n)]
    for r in failing:
        with pytest.raises(Exception):
            r.get(timeout=30)
    labels = {"name": add, "hostname": host, "queue_name": queue_name}
    wait_until(lambda: _value(_samples(port), "celery_task_succeeded_total", **labels) == n,
               timeout=10, what="succeeded counter")
    s = _samples(port)
    assert _value(s, "celery_task_received_total", **labels) == n
    assert _value(s, "celery_task_started_total", **labels) == n
    assert _value(s, "celery_task_failed_total", exception="", **labels) == 0
    assert _value(s, "celery_task_runtime_count", **labels) == n
    assert _value(s, "celery_task_runtime_bucket", le="+Inf", **labels) == n
    fail = {"name": "rcw.testing.fail", "hostname": host, "queue_name": queue_name}
    failed = {k: v for k, v in s.items() if k[0] == "celery_task_failed_total"
              and set(fail.items()) <= set(k[1])}
    assert sum(failed.values()) == 3, failed
    assert _value(s, "celery_worker_up", hostname=host) == 1
    assert _value(s, "celery_worker_tasks_active", hostname=host) == 0
    assert _value(s, "celery_queue_length", queue_name=queue_name) == 0
    assert _value(s, "process_resident_memory_bytes") > 1e6


def test_metrics_queue_length_counts_waiting_messages(celery_client, worker, queue_name,
                                                       transport):
    port = free_port()
    other = queue_name + "-b"
    worker(queues=[queue_name, other], concurrency=1, prefetch=1,
           extra_args=["--metrics-port", str(port)])
    # One slot, a window of one: while the sleeper runs, nothing else is fetched.
    sleeper = celery_client.send_task("rcw.testing.sleep", args=[3], queue=queue_name)
    wait_until(lambda: transport.queue_length(queue_name) == 0, timeout=10,
               what="sleeper fetched")
    for i in range(5):
        celery_client.send_task("app.workers.tasks.example_task", args=[i, 0], queue=other)
    # Early ack frees the window when the sleeper starts, so one more message is
    # held (reserved), as with Celery; the other four wait in the broker.
    wait_until(lambda: transport.queue_length(other) == 4, timeout=5, what="4 waiting")
    s = _samples(port)
    assert _value(s, "celery_queue_length", queue_name=other) == 4
    assert _value(s, "celery_queue_length", queue_name=queue_name) == 0
    assert _value(s, "celery_worker_tasks_active") == 1
    sleeper.get(timeout=30)
    wait_until(lambda: _value(_samples(port), "celery_queue_length", queue_name=other) == 0,
               timeout=15, what="queue drained")


@pytest.mark.redis_only("stops and restarts a Redis broker of its own")
def test_healthz_follows_the_broker(worker, tmp_path, monkeypatch):
    server = RedisServer(tmp_path / "redis-health").start()
    port = free_port()
    try:
        url0, url1 = f"{server.url}/0", f"{server.url}/1"
        monkeypatch.setenv("CELERY_BROKER_URL", url0)
        monkeypatch.setenv("CELERY_RESULT_BACKEND", url1)
        worker(broker_url=url0, backend_url=url1,
               extra_args=["--metrics-port", str(port)])
        status, body = _get(port, "/healthz")
        assert status == 200, body
        assert json.loads(body)["status"] == "ok"
        server.shutdown_via_cli()
        wait_until(lambda: _get(port, "/healthz")[0] == 503, timeout=10,
                   what="/healthz 503 while Redis is down")
        down = json.loads(_get(port, "/healthz")[1])
        assert down["status"] == "unavailable"
        server.start()
        wait_until(lambda: _get(port, "/healthz")[0] == 200, timeout=30,
                   what="/healthz 200 once Redis is back")
        client = Celery("health-client", broker=url0, backend=url1, set_as_current=False)
        client.conf.update(task_serializer="json", result_serializer="json",
                           accept_content=["json"])
        assert client.send_task("app.workers.tasks.example_task", args=[2, 3]).get(timeout=30) == 5
        client.close()
        assert _get(port, "/nothing")[0] == 404
    finally:
        server.stop()


def test_metrics_port_in_use_stops_the_start(worker):
    import socket
    sock = socket.socket()
    sock.bind(("0.0.0.0", 0))
    sock.listen(1)
    port = sock.getsockname()[1]
    try:
        w = worker(extra_args=["--metrics-port", str(port)], wait_ready=False)
        w.proc.wait(timeout=30)
        assert w.proc.returncode != 0
        assert f"--metrics-port {port}" in w.log()
    finally:
        sock.close()
