"""Remote control (the pidbox): ``app.control`` / ``app.control.inspect()`` and the
``celery inspect`` / ``celery control`` / ``celery status`` commands against a worker
with a unique node name, plus revoke semantics (queued, ETA-held, terminate).

Replies are keyed by node name (``NAME@%h``). Every test first waits for the worker to
answer a ping (:func:`helpers.wait_for_pidbox`): "ready." is logged before the worker
subscribes to the broadcast fanout, and Redis drops fanout messages nobody hears.

Expected shapes are those of Celery 5.7's own worker (``celery/worker/control.py``).
"""
from __future__ import annotations

import ast
import datetime as dt
import json
import re
import subprocess
import sys
import time

import pytest
from celery.exceptions import TaskRevokedError

import helpers
from helpers import log_count, result_meta, wait_for_pidbox, wait_until

GET_TIMEOUT = 20
REVOKED_RESULT = {"exc_type": "TaskRevokedError", "exc_message": ["revoked"],
                  "exc_module": "celery.exceptions"}
TERMINATED_RESULT = {"exc_type": "TaskRevokedError", "exc_message": ["terminated"],
                     "exc_module": "celery.exceptions"}
#: ``delivery_info`` of a request taken from the default queue (``Request.info()``).
DEFAULT_DELIVERY_INFO = {"exchange": "", "routing_key": "celery", "priority": 0,
                         "redelivered": False}


def _ready(worker, client, **kwargs):
    w = worker(**kwargs)
    wait_for_pidbox(client, w.node)
    return w


def _inspect(client, w, timeout=5.0):
    return client.control.inspect(destination=[w.node], timeout=timeout)


def _only(reply, w):
    """The body of the single reply (inspect: ``{node: body}``)."""
    assert reply is not None, f"no reply from {w.node}"
    assert set(reply) == {w.node}, reply
    return reply[w.node]


def _control_reply(replies, w):
    """The body of the single reply of a broadcast (``[{node: body}]``)."""
    assert isinstance(replies, list) and len(replies) == 1, replies
    return _only(replies[0], w)


def _wait_active(client, w, task_id, timeout=10.0):
    def active():
        reply = _inspect(client, w, timeout=2).active() or {}
        return [r for r in reply.get(w.node, []) if r["id"] == task_id]
    return wait_until(active, timeout=timeout, interval=0.2, what=f"{task_id} active")[0]


def _assert_request_info(info, w, task_id, name, args, kwargs, *, acknowledged,
                         started, delivery_info=DEFAULT_DELIVERY_INFO):
    """``Request.info()``: the entries of active/reserved/scheduled/query_task."""
    assert set(info) == {"id", "name", "args", "kwargs", "type", "hostname", "time_start",
                         "acknowledged", "delivery_info", "worker_pid"}, info
    assert info["id"] == task_id
    assert info["name"] == info["type"] == name
    assert info["args"] == args
    assert info["kwargs"] == kwargs
    assert info["hostname"] == w.node
    assert info["acknowledged"] is acknowledged
    assert info["delivery_info"] == delivery_info
    if started:
        assert isinstance(info["time_start"], float)
        assert abs(info["time_start"] - time.time()) < 60, info["time_start"]
        assert isinstance(info["worker_pid"], int) and info["worker_pid"] > 0
    else:
        assert info["time_start"] is None
        assert info["worker_pid"] is None


def _celery_cli(client, *args, timeout=60):
    """``celery -A app.workers.celery_app ARGS`` against the private Redis."""
    env = helpers.worker_env(client.conf.broker_url, client.conf.result_backend)
    return subprocess.run([sys.executable, "-m", "celery", "-A", "app.workers.celery_app",
                           *args], cwd=str(helpers.PYTHON_DIR), env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)


def _revoked_ids(text):
    """The ids in ``tasks {'a', 'b'} flagged as revoked`` (a Python set repr)."""
    m = re.fullmatch(r"tasks (\{.*\}) flagged as revoked", text)
    assert m, text
    return ast.literal_eval(m.group(1))


# --------------------------------------------------------------------------- inspect


@pytest.mark.timeout(60)
def test_ping(celery_client, worker):
    w = _ready(worker, celery_client)
    assert celery_client.control.ping(destination=[w.node], timeout=5) == [
        {w.node: {"ok": "pong"}}]
    assert _inspect(celery_client, w).ping() == {w.node: {"ok": "pong"}}


@pytest.mark.timeout(90)
def test_cli_inspect_status_and_control(celery_client, worker):
    w = _ready(worker, celery_client)
    ping = _celery_cli(celery_client, "inspect", "ping", "-d", w.node, "-t", "5")
    assert ping.returncode == 0, ping.stderr
    assert f"->  {w.node}: OK" in ping.stdout
    assert "pong" in ping.stdout
    assert "1 node online." in ping.stdout

    ping_json = _celery_cli(celery_client, "inspect", "ping", "-d", w.node, "-t", "5",
                            "--json")
    assert json.loads(ping_json.stdout) == {w.node: {"ok": "pong"}}

    stats = _celery_cli(celery_client, "inspect", "stats", "-d", w.node, "-t", "5", "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)[w.node]["pid"] == w.pid

    registered = _celery_cli(celery_client, "inspect", "registered", "-d", w.node, "-t", "5")
    assert "    * app.workers.tasks.example_task\n" in registered.stdout

    status = _celery_cli(celery_client, "status", "-t", "5")
    assert status.returncode == 0, status.stderr
    assert f"->  {w.node}: OK" in status.stdout
    assert re.search(r"\b\d+ nodes? online\.", status.stdout), status.stdout

    rate = _celery_cli(celery_client, "control", "rate_limit", "rcw.testing.echo", "10/m",
                       "-d", w.node, "-t", "5")
    assert rate.returncode == 0, rate.stderr
    assert f"->  {w.node}: OK" in rate.stdout
    assert "new rate limit set successfully" in rate.stdout

    revoke = _celery_cli(celery_client, "control", "revoke", "cli-revoked-id", "-d", w.node,
                         "-t", "5", "--json")
    # `celery control --json` prints the list of replies, `inspect --json` one dict.
    assert json.loads(revoke.stdout) == [
        {w.node: {"ok": "tasks {'cli-revoked-id'} flagged as revoked"}}]
    revoked = _celery_cli(celery_client, "inspect", "revoked", "-d", w.node, "-t", "5",
                          "--json")
    assert json.loads(revoked.stdout) == {w.node: ["cli-revoked-id"]}

    nobody = _celery_cli(celery_client, "inspect", "ping", "-d", "nobody@nowhere", "-t", "1")
    assert nobody.returncode != 0
    assert "No nodes replied within time constraint" in nobody.stderr


@pytest.mark.timeout(60)
def test_stats(celery_client, worker, transport):
    w = _ready(worker, celery_client, concurrency=2)
    for res in [celery_client.send_task("rcw.testing.echo", args=[i]) for i in range(3)]:
        res.get(timeout=GET_TIMEOUT)
    assert celery_client.send_task("rcw.testing.mul", args=[6, 7]).get(timeout=GET_TIMEOUT) == 42
    # uptime is whole seconds since start.
    time.sleep(max(0.0, 1.2 - (time.monotonic() - w.started_at)))
    stats = _only(_inspect(celery_client, w).stats(), w)

    assert stats["total"] == {"rcw.testing.echo": 3, "rcw.testing.mul": 1}
    assert stats["pid"] == w.pid
    # Celery sends the logical clock of `stats` as a string (str(app.clock)).
    assert isinstance(stats["clock"], str) and int(stats["clock"]) > 0, stats["clock"]
    assert isinstance(stats["uptime"], int) and stats["uptime"] >= 1, stats["uptime"]
    assert stats["pool"]["max-concurrency"] == 2
    assert isinstance(stats["pool"]["implementation"], str)
    broker = stats["broker"]
    assert broker["hostname"] == "127.0.0.1"
    assert broker["port"] == transport.port
    assert broker["transport"] == transport.kombu_transport
    assert broker["virtual_host"] == transport.virtual_host
    # worker_prefetch_multiplier (4) x concurrency.
    assert stats["prefetch_count"] == 8
    assert {"utime", "stime", "maxrss"} <= set(stats["rusage"]), stats["rusage"]
    assert isinstance(stats["rusage"]["maxrss"], int) and stats["rusage"]["maxrss"] > 0


@pytest.mark.timeout(60)
def test_active_and_query_task(celery_client, worker):
    w = _ready(worker, celery_client, concurrency=2)
    res = celery_client.send_task("rcw.testing.sleep", args=[4], kwargs={"result": "slept"})
    info = _wait_active(celery_client, w, res.id)
    _assert_request_info(info, w, res.id, "rcw.testing.sleep", [4], {"result": "slept"},
                         acknowledged=True, started=True)

    safe = _only(_inspect(celery_client, w).active(safe=True), w)
    assert [r["id"] for r in safe] == [res.id]
    # safe=True: args/kwargs as their repr (strings), the rest unchanged.
    assert safe[0]["args"] == "[4]"
    assert safe[0]["kwargs"] == "{'result': 'slept'}"
    assert safe[0]["delivery_info"] == DEFAULT_DELIVERY_INFO

    query = _only(_inspect(celery_client, w).query_task(res.id), w)
    assert list(query) == [res.id]
    state, qinfo = query[res.id]
    assert state == "active"
    _assert_request_info(qinfo, w, res.id, "rcw.testing.sleep", [4], {"result": "slept"},
                         acknowledged=True, started=True)
    assert _only(_inspect(celery_client, w).query_task("no-such-task-id"), w) == {}
    assert res.get(timeout=GET_TIMEOUT) == "slept"
    wait_until(lambda: _only(_inspect(celery_client, w, timeout=2).active(), w) == [],
               timeout=5, what="no active task")


@pytest.mark.timeout(60)
def test_reserved_behind_a_busy_worker(celery_client, worker):
    w = _ready(worker, celery_client, concurrency=1)
    busy = celery_client.send_task("rcw.testing.sleep", args=[3])
    _wait_active(celery_client, w, busy.id)
    queued = [celery_client.send_task("rcw.testing.echo", args=[i]) for i in range(2)]
    ids = {r.id for r in queued}

    def reserved():
        got = _only(_inspect(celery_client, w, timeout=2).reserved(), w)
        return got if {r["id"] for r in got} == ids else None
    got = wait_until(reserved, timeout=10, interval=0.2, what="both tasks reserved")
    for info in got:
        i = next(k for k, r in enumerate(queued) if r.id == info["id"])
        _assert_request_info(info, w, info["id"], "rcw.testing.echo", [i], {},
                             acknowledged=False, started=False)
    state, _ = _only(_inspect(celery_client, w).query_task(queued[0].id), w)[queued[0].id]
    assert state == "reserved"
    assert [r.get(timeout=GET_TIMEOUT) for r in queued] == [0, 1]
    wait_until(lambda: _only(_inspect(celery_client, w, timeout=2).reserved(), w) == [],
               timeout=5, what="nothing reserved")


@pytest.mark.timeout(60)
def test_scheduled_eta_task(celery_client, worker):
    w = _ready(worker, celery_client)
    sent = dt.datetime.now(dt.timezone.utc)
    res = celery_client.send_task("rcw.testing.echo", args=["later"], countdown=30)
    w.wait_for_log(f"[{res.id}] received", timeout=10)

    def scheduled():
        return _only(_inspect(celery_client, w, timeout=2).scheduled(), w)
    entries = wait_until(scheduled, timeout=10, interval=0.2, what="scheduled entry")
    assert len(entries) == 1, entries
    entry = entries[0]
    assert set(entry) == {"eta", "priority", "request"}
    eta = dt.datetime.fromisoformat(entry["eta"])
    assert eta.utcoffset() == dt.timedelta(0), entry["eta"]
    assert abs((eta - (sent + dt.timedelta(seconds=30))).total_seconds()) < 2, entry["eta"]
    # The priority of Celery's timer entry for ETA tasks (a constant, not the message's).
    assert entry["priority"] == 6
    _assert_request_info(entry["request"], w, res.id, "rcw.testing.echo", ["later"], {},
                         acknowledged=False, started=False)
    state, _ = _only(_inspect(celery_client, w).query_task(res.id), w)[res.id]
    assert state == "scheduled"
    # Cleanup: revoked, so warm shutdown does not wait for anything.
    celery_client.control.revoke(res.id, destination=[w.node])


@pytest.mark.timeout(60)
def test_registered(celery_client, worker):
    w = _ready(worker, celery_client)
    names = _only(_inspect(celery_client, w).registered(), w)
    app_tasks = {n for n in celery_client.tasks if n.startswith("app.workers.tasks.")}
    assert app_tasks, "the client app has no app.workers tasks registered"
    plain = {n.split(" [")[0] for n in names}
    assert app_tasks <= plain, app_tasks - plain
    assert "rcw.testing.echo" in names
    assert not [n for n in plain if n.startswith("celery.")], "builtins listed"
    assert names == sorted(names)
    # Default info items (exchange, routing_key, rate_limit) are listed when set.
    assert "rcw.testing.rate_limited [rate_limit=5/s]" in names
    assert "app.workers.tasks.send_email_task [rate_limit=100/m]" in names
    assert "app.workers.tasks.example_task" in names

    with_name = _only(_inspect(celery_client, w).registered("name"), w)
    assert "rcw.testing.echo [name=rcw.testing.echo]" in with_name
    assert {n.split(" [")[0] for n in with_name} == plain
    assert all(n == f"{n.split(' [')[0]} [name={n.split(' [')[0]}]" for n in with_name)
    assert _only(_inspect(celery_client, w).registered_tasks(), w) == names


def _queue_dict(name):
    """``kombu.Queue.as_dict(recurse=True)`` of a plain direct queue ``name``."""
    return {
        "name": name,
        "exchange": {"name": name, "type": "direct", "arguments": None, "durable": True,
                     "passive": False, "auto_delete": False, "delivery_mode": None,
                     "no_declare": False},
        "routing_key": name, "queue_arguments": None, "binding_arguments": None,
        "consumer_arguments": None, "durable": True, "exclusive": False,
        "auto_delete": False, "no_ack": False, "alias": None, "bindings": [],
        "no_declare": None, "expires": None, "message_ttl": None, "max_length": None,
        "max_length_bytes": None, "max_priority": None,
    }


@pytest.mark.timeout(60)
def test_active_queues(celery_client, worker, queue_name):
    w = _ready(worker, celery_client, queues=[queue_name, "celery"])
    queues = _only(_inspect(celery_client, w).active_queues(), w)
    by_name = {q["name"]: q for q in queues}
    assert set(by_name) == {queue_name, "celery"}
    assert by_name[queue_name] == _queue_dict(queue_name)
    assert by_name["celery"] == _queue_dict("celery")


@pytest.mark.timeout(60)
def test_conf_and_report(celery_client, worker, transport, redis_server):
    w = _ready(worker, celery_client)
    conf = _only(_inspect(celery_client, w).conf(), w)
    # Only the settings that differ from Celery's defaults.
    assert conf["task_serializer"] == "json"
    assert conf["result_serializer"] == "json"
    assert conf["accept_content"] == ["json"]
    assert conf["enable_utc"] is True
    assert conf["timezone"] == "UTC"
    # Broker URL through kombu's as_uri(mask=...): the password slot masked even when
    # there is no password (Celery: 'redis://:********@127.0.0.1:PORT/0').
    assert conf["broker_url"].startswith(f"{transport.scheme}://")
    assert conf["broker_url"].endswith(
        f"127.0.0.1:{transport.port}/{transport.virtual_host}"), conf["broker_url"]
    assert conf["result_backend"].endswith(f"127.0.0.1:{redis_server.port}/1")
    assert "worker_prefetch_multiplier" not in conf
    assert not [k for k in conf if k.startswith("__")]

    full = _only(_inspect(celery_client, w).conf(with_defaults=True), w)
    assert len(full) > len(conf) + 50, len(full)
    assert full["worker_prefetch_multiplier"] == 4
    assert full["task_default_queue"] == "celery"
    assert full["task_serializer"] == "json"

    report = _only(_inspect(celery_client, w).report(), w)
    assert set(report) == {"ok"}
    text = report["ok"]
    assert isinstance(text, str)
    # app.bugreport(): software/platform/loader/settings lines, then the changed conf.
    assert "software -> " in text
    assert "platform -> " in text
    assert f"settings -> transport:{transport.kombu_transport} results:" in text
    assert "task_serializer: 'json'" in text


@pytest.mark.timeout(60)
def test_clock_and_hello(celery_client, worker):
    w = _ready(worker, celery_client)
    clock = _only(_inspect(celery_client, w).clock(), w)
    assert set(clock) == {"clock"}
    assert isinstance(clock["clock"], int) and clock["clock"] > 0
    later = _only(_inspect(celery_client, w).clock(), w)["clock"]
    assert later >= clock["clock"]

    # hello = mingle's sync: merges the peer's revoked ids, answers its own + its clock.
    celery_client.control.revoke("revoked-before-hello", destination=[w.node], reply=True)
    hello = _only(_inspect(celery_client, w).hello("other@peer", revoked=["from-peer-id"]), w)
    assert set(hello) == {"revoked", "clock"}
    assert isinstance(hello["clock"], int) and hello["clock"] > 0
    assert isinstance(hello["revoked"], list)
    assert {"revoked-before-hello", "from-peer-id"} <= set(hello["revoked"])
    assert "from-peer-id" in _only(_inspect(celery_client, w).revoked(), w)


# --------------------------------------------------------------------------- control


@pytest.mark.timeout(60)
def test_revoke_replies_and_revoked_list(celery_client, worker):
    w = _ready(worker, celery_client)
    assert _only(_inspect(celery_client, w).revoked(), w) == []
    reply = _control_reply(celery_client.control.revoke(
        "id-one", destination=[w.node], reply=True), w)
    assert reply == {"ok": "tasks {'id-one'} flagged as revoked"}
    reply = _control_reply(celery_client.control.revoke(
        ["id-two", "id-three"], destination=[w.node], reply=True), w)
    assert set(reply) == {"ok"}
    assert _revoked_ids(reply["ok"]) == {"id-two", "id-three"}
    assert set(_only(_inspect(celery_client, w).revoked(), w)) == {"id-one", "id-two",
                                                                  "id-three"}
    # terminate=True replies with what it terminated, here nothing.
    reply = _control_reply(celery_client.control.revoke(
        "id-four", terminate=True, destination=[w.node], reply=True), w)
    assert reply == {"ok": "terminate: tasks unknown"}
    assert "id-four" in _only(_inspect(celery_client, w).revoked(), w)
    w.wait_for_log("Tasks flagged as revoked: id-one", timeout=5)


@pytest.mark.timeout(60)
def test_revoke_queued_task_never_runs(celery_client, worker, backend, transport):
    """Celery's ``-P threads`` hands prefetched tasks to its executor at once (a revoke
    then comes too late), so the Python worker runs ``-P prefork`` here."""
    w = _ready(worker, celery_client, concurrency=1, pool="prefork")
    busy = celery_client.send_task("rcw.testing.sleep", args=[3])
    _wait_active(celery_client, w, busy.id)
    victim = celery_client.send_task("rcw.testing.echo", args=["never"])
    after = celery_client.send_task("rcw.testing.echo", args=["after"])
    reply = _control_reply(celery_client.control.revoke(
        victim.id, destination=[w.node], reply=True), w)
    assert reply == {"ok": f"tasks {{'{victim.id}'}} flagged as revoked"}
    # Celery 5.7 marks a not-yet-started task REVOKED in the backend at once.
    wait_until(lambda: victim.state == "REVOKED", timeout=5, what="REVOKED state")
    assert busy.get(timeout=GET_TIMEOUT) == 3
    assert after.get(timeout=GET_TIMEOUT) == "after"
    with pytest.raises(TaskRevokedError):
        victim.get(timeout=GET_TIMEOUT)
    meta = result_meta(backend, victim.id)
    assert meta["status"] == "REVOKED"
    assert meta["result"] == REVOKED_RESULT
    w.wait_for_log(f"Discarding revoked task: rcw.testing.echo[{victim.id}]", timeout=10)
    assert log_count(w, f"rcw.testing.echo[{victim.id}] succeeded") == 0
    wait_until(lambda: transport.unacked_count() == 0, timeout=5, what="unacked empty")
    assert transport.queue_length("celery") == 0


@pytest.mark.timeout(60)
def test_revoke_eta_task_is_acked_and_never_runs(celery_client, worker, backend, transport):
    w = _ready(worker, celery_client)
    res = celery_client.send_task("rcw.testing.echo", args=["eta"], countdown=4)
    w.wait_for_log(f"[{res.id}] received", timeout=10)
    assert transport.unacked_count() == 1  # held by the worker
    reply = _control_reply(celery_client.control.revoke(
        res.id, destination=[w.node], reply=True), w)
    assert reply == {"ok": f"tasks {{'{res.id}'}} flagged as revoked"}
    wait_until(lambda: res.state == "REVOKED", timeout=5, what="REVOKED state")
    assert result_meta(backend, res.id)["result"] == REVOKED_RESULT
    # Discarded at the latest when its ETA comes; the held message is acked then.
    w.wait_for_log(f"Discarding revoked task: rcw.testing.echo[{res.id}]", timeout=15)
    wait_until(lambda: transport.unacked_count() == 0, timeout=5, what="ETA message acked")
    assert transport.queue_length("celery") == 0
    time.sleep(0.5)
    assert log_count(w, f"rcw.testing.echo[{res.id}] succeeded") == 0
    assert res.state == "REVOKED"
    # The worker still runs tasks.
    assert celery_client.send_task("rcw.testing.echo", args=[1]).get(timeout=GET_TIMEOUT) == 1


def _assert_terminated(celery_client, w, backend, res, name, started):
    reply = _control_reply(celery_client.control.revoke(
        res.id, terminate=True, destination=[w.node], reply=True), w)
    assert reply == {"ok": f"terminate: {res.id}"}
    wait_until(lambda: res.state == "REVOKED", timeout=5, what="REVOKED after terminate")
    with pytest.raises(TaskRevokedError):
        res.get(timeout=GET_TIMEOUT)
    meta = result_meta(backend, res.id)
    assert meta["status"] == "REVOKED"
    assert meta["result"] == TERMINATED_RESULT
    assert time.monotonic() - started < 10, "terminated task ran to its end"
    assert log_count(w, f"{name}[{res.id}] succeeded") == 0


@pytest.mark.timeout(90)
def test_terminate_running_python_body(celery_client, worker, backend):
    """A Python body (``confapp.pid``) in a prefork pool process is killed."""
    w = _ready(worker, celery_client, app="confapp", pool="prefork", concurrency=1)
    started = time.monotonic()
    res = celery_client.send_task("confapp.pid", args=[30], queue="confq")
    info = _wait_active(celery_client, w, res.id)
    pid = wait_until(lambda: backend.get(f"confapp:pid:{res.id}"), timeout=10,
                     what="task recorded its pid")
    # The pool process running it, not the worker itself.
    assert info["worker_pid"] == int(pid) != w.pid
    _assert_terminated(celery_client, w, backend, res, "confapp.pid", started)
    w.wait_for_log(f"Terminating {res.id}", timeout=5)
    # The pool slot comes back (Celery's prefork replaces the killed child).
    nxt = celery_client.send_task("confapp.pid", args=[0], queue="confq")
    assert nxt.get(timeout=GET_TIMEOUT) != int(pid)


@pytest.mark.timeout(90)
def test_terminate_running_async_task(celery_client, worker, backend):
    """``rcw.testing.async_sleep``: an abortable async body in our binary (a plain
    sleeping Python body, killed with its pool process, in Celery's prefork)."""
    w = _ready(worker, celery_client, pool="prefork", concurrency=1)
    started = time.monotonic()
    res = celery_client.send_task("rcw.testing.async_sleep", args=[30])
    _wait_active(celery_client, w, res.id)
    _assert_terminated(celery_client, w, backend, res, "rcw.testing.async_sleep", started)
    nxt = celery_client.send_task("rcw.testing.echo", args=["next"])
    assert nxt.get(timeout=GET_TIMEOUT) == "next"
    wait_until(lambda: _only(_inspect(celery_client, w, timeout=2).active(), w) == [],
               timeout=5, what="no active task")


@pytest.mark.timeout(60)
def test_rate_limit(celery_client, worker, backend):
    w = _ready(worker, celery_client, concurrency=4)
    reply = _control_reply(celery_client.control.rate_limit(
        "rcw.testing.echo", "2/s", destination=[w.node], reply=True), w)
    assert reply == {"ok": "new rate limit set successfully"}
    w.wait_for_log("New rate limit for tasks of type rcw.testing.echo: 2/s.", timeout=5)
    unknown = _control_reply(celery_client.control.rate_limit(
        "no.such.task", "2/s", destination=[w.node], reply=True), w)
    assert unknown == {"error": "unknown task"}
    bad = _control_reply(celery_client.control.rate_limit(
        "rcw.testing.echo", "fast", destination=[w.node], reply=True), w)
    assert set(bad) == {"error"} and bad["error"].startswith("Invalid rate limit string")

    results = [celery_client.send_task("rcw.testing.echo", args=[i]) for i in range(5)]
    assert [r.get(timeout=GET_TIMEOUT) for r in results] == list(range(5))
    done = sorted(dt.datetime.fromisoformat(result_meta(backend, r.id)["date_done"])
                  for r in results)
    spread = (done[-1] - done[0]).total_seconds()
    # 2/s: one every 0.5 s → 4 gaps ≈ 2 s (unlimited, 5 echoes take milliseconds).
    assert spread >= 1.5, f"5 tasks at 2/s done within {spread:.2f}s"
    assert _only(_inspect(celery_client, w).registered(), w).count(
        "rcw.testing.echo [rate_limit=2/s]") == 1

    off = _control_reply(celery_client.control.rate_limit(
        "rcw.testing.echo", None, destination=[w.node], reply=True), w)
    assert off == {"ok": "rate limit disabled successfully"}
    started = time.monotonic()
    results = [celery_client.send_task("rcw.testing.echo", args=[i]) for i in range(5)]
    assert [r.get(timeout=GET_TIMEOUT) for r in results] == list(range(5))
    assert time.monotonic() - started < 1.5, "rate limit still applied after disabling it"


@pytest.mark.timeout(60)
def test_time_limit_replies(celery_client, worker):
    w = _ready(worker, celery_client)
    reply = _control_reply(celery_client.control.time_limit(
        "rcw.testing.sleep", soft=5, hard=10, destination=[w.node], reply=True), w)
    assert reply == {"ok": "time limits set successfully"}
    w.wait_for_log("New time limits for tasks of type rcw.testing.sleep: soft=5 hard=10",
                   timeout=5)
    unknown = _control_reply(celery_client.control.time_limit(
        "no.such.task", soft=1, hard=2, destination=[w.node], reply=True), w)
    assert unknown == {"error": "unknown task"}


@pytest.mark.rust_only
@pytest.mark.timeout(60)
def test_time_limit_applies_to_the_next_tasks(celery_client, worker, backend):
    """Celery 5.7's worker replies "time limits set successfully" but keeps using the
    limits it captured when it built the task's request class at start-up
    (``create_request_cls``: ``default_time_limit = task.time_limit``), so a new limit
    never applies to a task it already knows. Ours applies it."""
    from billiard.exceptions import TimeLimitExceeded

    w = _ready(worker, celery_client, pool="prefork", concurrency=1)
    reply = _control_reply(celery_client.control.time_limit(
        "rcw.testing.sleep", hard=1, destination=[w.node], reply=True), w)
    assert reply == {"ok": "time limits set successfully"}
    started = time.monotonic()
    res = celery_client.send_task("rcw.testing.sleep", args=[10])
    with pytest.raises(TimeLimitExceeded):
        res.get(timeout=GET_TIMEOUT)
    assert time.monotonic() - started < 5
    assert result_meta(backend, res.id)["result"]["exc_type"] == "TimeLimitExceeded"
    # Other tasks are not limited.
    assert celery_client.send_task("rcw.testing.async_sleep", args=[1.5]).get(
        timeout=GET_TIMEOUT) == 1.5


@pytest.mark.timeout(60)
def test_add_and_cancel_consumer(celery_client, worker, transport, queue_name):
    w = _ready(worker, celery_client)
    reply = _control_reply(celery_client.control.add_consumer(
        queue_name, destination=[w.node], reply=True), w)
    assert reply == {"ok": f"add consumer {queue_name}"}
    res = celery_client.send_task("rcw.testing.echo", args=["new queue"], queue=queue_name)
    assert res.get(timeout=GET_TIMEOUT) == "new queue"
    w.wait_for_log(f"Started consuming from {queue_name}", timeout=5)

    def queue_names():
        return {q["name"] for q in _only(_inspect(celery_client, w, timeout=2).active_queues(), w)}
    assert queue_names() == {"celery", queue_name}
    assert [q for q in _only(_inspect(celery_client, w).active_queues(), w)
            if q["name"] == queue_name] == [_queue_dict(queue_name)]

    reply = _control_reply(celery_client.control.cancel_consumer(
        queue_name, destination=[w.node], reply=True), w)
    assert reply == {"ok": f"no longer consuming from {queue_name}"}
    wait_until(lambda: queue_names() == {"celery"}, timeout=10, interval=0.2,
               what="queue no longer active")
    left = celery_client.send_task("rcw.testing.echo", args=["stays"], queue=queue_name)
    time.sleep(1.5)
    assert transport.queue_length(queue_name) == 1, "the cancelled queue was still consumed"
    assert [m.task_id for m in transport.peek(queue_name)] == [left.id]
    assert left.state == "PENDING"
    # The default queue is still consumed.
    assert celery_client.send_task("rcw.testing.echo", args=[2]).get(timeout=GET_TIMEOUT) == 2


@pytest.mark.timeout(60)
def test_pool_grow_and_shrink_replies(celery_client, worker):
    w = _ready(worker, celery_client, pool="prefork", concurrency=2)
    grow = _control_reply(celery_client.control.pool_grow(
        1, destination=[w.node], reply=True), w)
    assert grow == {"ok": "pool will grow"}
    shrink = _control_reply(celery_client.control.pool_shrink(
        1, destination=[w.node], reply=True), w)
    assert shrink == {"ok": "pool will shrink"}
    assert celery_client.send_task("rcw.testing.echo", args=[3]).get(timeout=GET_TIMEOUT) == 3


@pytest.mark.timeout(60)
def test_unknown_command_replies_an_error(celery_client, worker):
    w = _ready(worker, celery_client)
    replies = celery_client.control.broadcast("no_such_cmd", reply=True,
                                              destination=[w.node], timeout=5)
    body = _control_reply(replies, w)
    # Celery (kombu's Node.dispatch): {'error': "KeyError('no_such_cmd')"}.
    assert set(body) == {"error"}, body
    assert "no_such_cmd" in body["error"]
    assert _inspect(celery_client, w).ping() == {w.node: {"ok": "pong"}}


@pytest.mark.timeout(60)
def test_commands_for_another_node_are_ignored(celery_client, worker):
    w = _ready(worker, celery_client)
    other = "nobody@elsewhere"
    assert celery_client.control.ping(destination=[other], timeout=1) == []
    assert celery_client.control.revoke("not-for-us", destination=[other], reply=True,
                                        timeout=1) == []
    assert celery_client.control.rate_limit("rcw.testing.echo", "1/m", destination=[other],
                                            reply=True, timeout=1) == []
    assert celery_client.control.shutdown(destination=[other], reply=True, timeout=1) == []
    assert "not-for-us" not in _only(_inspect(celery_client, w).revoked(), w)
    assert "rcw.testing.echo" in _only(_inspect(celery_client, w).registered(), w)
    assert w.alive()


@pytest.mark.timeout(60)
def test_shutdown(celery_client, worker):
    w = _ready(worker, celery_client)
    # Celery raises WorkerShutdown in the handler: no reply is sent.
    replies = celery_client.control.shutdown(destination=[w.node], reply=True, timeout=2)
    assert replies == []
    w.proc.wait(timeout=30)
    assert w.proc.returncode == 0
    assert "Got shutdown from remote" in w.log()
    assert celery_client.control.ping(destination=[w.node], timeout=1) == []


@pytest.mark.timeout(90)
def test_mixed_fleet_broadcast_ping(celery_client, worker):
    ours = _ready(worker, celery_client)
    theirs = _ready(worker, celery_client, kind="python")
    replies = celery_client.control.ping(timeout=3)
    nodes = [node for reply in replies for node in reply]
    assert sorted(nodes) == sorted([ours.node, theirs.node]), replies
    for reply in replies:
        assert list(reply.values()) == [{"ok": "pong"}]
    # Inspect across both: one stats reply each, with its own pid.
    stats = celery_client.control.inspect(timeout=3).stats()
    assert {n: s["pid"] for n, s in stats.items()} == {ours.node: ours.pid,
                                                       theirs.node: theirs.pid}


@pytest.mark.timeout(90)
def test_mingle_takes_revokes_from_a_running_python_worker(celery_client, worker, backend,
                                                           queue_name):
    """A worker starting up asks the running nodes for their revoked ids (mingle's
    ``hello``): an id revoked before it started is discarded when it arrives."""
    elder = _ready(worker, celery_client, kind="python")
    revoked_id = f"mingle-{queue_name}"
    reply = _control_reply(celery_client.control.revoke(
        revoked_id, destination=[elder.node], reply=True), elder)
    assert "flagged as revoked" in reply["ok"]
    newcomer = _ready(worker, celery_client, queues=[queue_name], mingle=True)
    newcomer.wait_for_log("sync with", timeout=10)
    assert revoked_id in _only(_inspect(celery_client, newcomer).revoked(), newcomer)
    res = celery_client.send_task("rcw.testing.echo", args=["x"], task_id=revoked_id,
                                  queue=queue_name)
    with pytest.raises(TaskRevokedError):
        res.get(timeout=GET_TIMEOUT)
    newcomer.wait_for_log(f"Discarding revoked task: rcw.testing.echo[{revoked_id}]",
                          timeout=10)


@pytest.mark.timeout(90)
def test_statedb_keeps_revokes_across_restarts(celery_client, worker, tmp_path, queue_name):
    """``-S FILE``: revokes survive a restart (mingle off, so the file is the only source)."""
    state = tmp_path / "worker.state"
    args = ["-S", str(state), "--without-mingle"]
    first = _ready(worker, celery_client, queues=[queue_name], extra_args=args)
    revoked_id = f"statedb-{queue_name}"
    _control_reply(celery_client.control.revoke(
        revoked_id, destination=[first.node], reply=True), first)
    assert first.stop() == 0
    second = _ready(worker, celery_client, queues=[queue_name], extra_args=args)
    assert revoked_id in _only(_inspect(celery_client, second).revoked(), second)
    res = celery_client.send_task("rcw.testing.echo", args=["x"], task_id=revoked_id,
                                  queue=queue_name)
    with pytest.raises(TaskRevokedError):
        res.get(timeout=GET_TIMEOUT)
    second.wait_for_log(f"Discarding revoked task: rcw.testing.echo[{revoked_id}]",
                        timeout=10)
