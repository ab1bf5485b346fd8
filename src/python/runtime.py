"""rust-celery-worker's side of a Python Celery app, run inside the worker's
embedded interpreter: find the app as `celery -A` does, read its conf and task
options, and run task bodies with Celery's request context, hooks and signals.

Results, retries, acks and canvas stay with the Rust worker: this module only
reports what the body did. Exchanges with Rust are JSON text (kombu's dialect,
so datetimes, Decimals and UUIDs survive).
"""
import os
import site
import sys
import traceback

_app = None


class RcwRetry(Exception):
    """Raised by the patched ``Task.retry``: Rust republishes, not Python."""

    def __init__(self, exc, countdown, eta, max_retries, has_max, args, kwargs):
        super().__init__(exc, countdown, eta)
        self.exc, self.countdown, self.eta = exc, countdown, eta
        self.max_retries, self.has_max = max_retries, has_max
        self.args_, self.kwargs_ = args, kwargs


def prepare(cwd):
    """The current directory first on sys.path (as `celery` does), and an
    active virtualenv's site-packages ahead of the system ones."""
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:
        ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
        sp = os.path.join(venv, "lib", ver, "site-packages")
        if os.path.isdir(sp):
            before = list(sys.path)
            site.addsitedir(sp)
            added = [p for p in sys.path if p not in before]
            sys.path[:] = [p for p in sys.path if p not in added]
            sys.path[1:1] = added


def load(name):
    """Finds the app by Celery's rules, plus a package's `celery_app` submodule."""
    global _app
    from celery.app.utils import find_app

    try:
        app = find_app(name)
    except (ImportError, AttributeError) as first:
        if ":" in name:
            raise
        try:
            app = find_app(name + ".celery_app")
        except Exception:
            raise first from None
    app.loader.import_default_modules()
    # -I/--include, as Celery's worker `setup_includes`: added to the app's
    # `include` and imported, so their tasks are registered.
    extra = [m for m in os.environ.get("RCW_INCLUDE", "").split(",") if m]
    if extra:
        app.conf.include = tuple(app.conf.include or ()) + tuple(
            m for m in extra if m not in (app.conf.include or ()))
        for module in extra:
            app.loader.import_task_module(module)
    # As in Celery's worker (prefork, threads and solo pools): a task that
    # sends another doesn't subscribe to its result (`on_task_call`), and
    # joining a result inside a task is refused unless allowed.
    from celery._state import _set_task_join_will_block
    _set_task_join_will_block(True)
    app.set_current()
    app.set_default()
    _patch_retry(app)
    _app = app
    return f"{app.main!r} from {_defining_file(app, name)}"


def _defining_file(app, name):
    """The file of the module that holds the app (for the banner)."""
    base = name.split(":")[0]
    candidates = [m for n, m in list(sys.modules.items()) if n == base or n.startswith(base + ".")]
    for module in candidates:
        if any(v is app for v in vars(module).values()):
            return getattr(module, "__file__", None) or module.__name__
    return base


def _seconds(v):
    if v is None:
        return None
    if hasattr(v, "total_seconds"):
        return v.total_seconds()
    return v




def _routes_json(routes):
    """``task_routes`` as data the worker can route by: mappings keyed by task
    name or glob; what is not data (regex keys, router functions or their
    import paths, routes without a queue name) becomes an ``__unsupported__``
    marker the worker names in its start-up warning."""
    if isinstance(routes, (dict, str)) or callable(routes):
        routes = [routes]
    out = []
    for router in routes:
        if not isinstance(router, dict):
            out.append({"__unsupported__": f"router {router!r}"})
            continue
        table = {}
        for key, route in router.items():
            if not isinstance(key, str):
                out.append({"__unsupported__": f"route {getattr(key, 'pattern', key)!r}"})
                continue
            queue = getattr(route, "name", None) if not isinstance(route, (str, dict)) else None
            if queue is not None:  # a kombu Queue object
                route = {"queue": queue}
            elif isinstance(route, dict) and not isinstance(route.get("queue"), (str, type(None))):
                route = dict(route, queue=getattr(route["queue"], "name", None))
            table[key] = _jsonable(route)
        out.append(table)
    if any("__unsupported__" in t for t in out):
        # Router functions and regex routes run here, once per task of the
        # app, through Celery's own router (in the order task_routes gives):
        # its answers come first; other task names go by the data routes.
        out.insert(0, _resolved_routes())
    return out


def _resolved_routes():
    router = _app.amqp.router
    table = {}
    for name, task in sorted(_app.tasks.items()):
        try:
            route = router.lookup_route(name, (), {}, {}, task)
        except Exception:  # a router that needs the call's args
            continue
        if not route:
            continue
        queue = router.expand_destination(route).get("queue")
        queue = getattr(queue, "name", queue)
        if isinstance(queue, str) and queue:
            table[name] = {"queue": queue}
    return table


def _jsonable(value):
    """Sets and tuples as lists, so any conf value survives JSON."""
    if isinstance(value, (set, frozenset)):
        return sorted((_jsonable(v) for v in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def conf_table(with_defaults=False):
    """``inspect conf``: Celery's own reply, from the app's conf."""
    from celery.utils.serialization import jsonify
    from kombu.utils.encoding import safe_repr
    from kombu.utils.json import dumps

    table = _app.conf.table(with_defaults=bool(with_defaults))
    data = jsonify(table,
                   keyfilter=lambda k: isinstance(k, str) and not k.startswith("__"),
                   unknown_type_filter=safe_repr)
    # JSON has no inf/nan (Celery's reply carries Python's `Infinity`, which
    # strict parsers refuse): they travel as their repr, e.g. 'inf'.
    return dumps(_finite(data))


def _finite(value):
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return repr(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def bugreport():
    """``inspect report``: the app's bug report, as Celery's worker answers."""
    from kombu.utils.json import dumps

    return dumps(_app.bugreport())


def _queue_json(q):
    """A ``kombu.Queue`` (or a name) as the worker declares it."""
    if isinstance(q, str):
        return q
    exchange = getattr(q, "exchange", None)
    return {
        "name": q.name,
        "exchange": getattr(exchange, "name", exchange) or "",
        "routing_key": q.routing_key or "",
        "exchange_type": getattr(exchange, "type", None) or "direct",
        "queue_arguments": _jsonable(dict(q.queue_arguments or {})),
    }


def conf_json(settings_json):
    """The app's values of the settings the worker applies (``settings``: the
    worker's table, name → "Applied" | "ByApp"), JSON-safe (timedeltas as
    seconds, sets as lists, Queue objects as dicts, routers as data or
    markers), and ``__unsupported__``: the settings the app changed that are
    not in the table."""
    import json

    from kombu.utils.json import dumps

    settings = json.loads(settings_json)
    conf = _app.conf
    out = {}
    for key, use in settings.items():
        if use != "Applied":
            continue
        value = conf.get(key)
        if value is None:
            continue
        if key == "task_routes":
            value = _routes_json(value)
        elif key == "task_queues":
            value = [_queue_json(q) for q in value]
        out[key] = _jsonable(_seconds(value))
    conf.finalize()
    changed = [k for k in conf.without_defaults().keys() if isinstance(k, str)]
    out["__unsupported__"] = sorted(
        k for k in changed if k not in settings and k in _setting_names())
    return dumps(out)


def _setting_names():
    from celery.app.defaults import NAMESPACES, flatten

    return {name for name, _ in flatten(NAMESPACES)}


OPTION_NAMES = [
    "rate_limit", "time_limit", "soft_time_limit", "acks_late", "ignore_result",
    "max_retries", "default_retry_delay", "retry_backoff", "retry_backoff_max",
    "retry_jitter", "track_started", "reject_on_worker_lost",
    "store_errors_even_if_ignored", "acks_on_failure_or_timeout", "queue", "priority",
]


def _annotations(name):
    ann = _app.conf.get("task_annotations") or {}
    if isinstance(ann, dict):
        return dict(ann.get(name) or {}, **(ann.get("*") or {}))
    return {}


def tasks_json():
    """Every registered task with the options it sets itself. Values a task
    only inherited from the app's conf (``Task.from_config``) are left out, so
    the worker's resolved settings (CLI > env > conf) apply to them."""
    from celery.app.task import Task
    from kombu.utils.json import dumps

    from_config = dict(Task.from_config)
    conf = _app.conf
    out = {}
    for name, task in sorted(_app.tasks.items()):
        opts = {}
        for key in OPTION_NAMES:
            value = getattr(task, key, None)
            if key in from_config and value == conf.get(from_config[key]):
                continue
            if value is None and not (key == "max_retries" and key in vars(type(task))):
                continue
            opts[key] = value
        opts.update(_annotations(name))
        auto = getattr(task, "autoretry_for", ()) or ()
        opts["autoretry_for"] = [c.__name__ for c in auto]
        rb = opts.get("retry_backoff")
        opts["retry_backoff"] = (1 if rb is True else (rb or None))
        out[name] = {k: _seconds(v) for k, v in opts.items()}
    return dumps(out)


def _patch_retry(app):
    """`self.retry()` decides exhaustion and merges `args=`/`kwargs=` with the
    request exactly as Celery does (re-raising the cause or
    MaxRetriesExceededError, so the failure hooks fire), and otherwise raises
    for Rust to republish (one retry machinery)."""
    import inspect

    from celery.app.task import Task

    def retry(self, args=None, kwargs=None, exc=None, throw=True, eta=None,
              countdown=None, max_retries=None, **options):
        request = self.request
        retries = request.retries + 1
        if max_retries is not None:
            self.override_max_retries = max_retries
        limit = self.max_retries if max_retries is None else max_retries
        # Celery's own merge: positional args given for a request that came
        # with kwargs (or the other way round) replace the matching ones.
        if ((args is not None and kwargs is None and request.kwargs) or
                (kwargs is not None and args is None and request.args)):
            try:
                sig = inspect.signature(self.run)
            except (TypeError, ValueError):
                sig = None
            if sig is not None and args is not None:
                positional = [p for p in sig.parameters.values()
                              if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                            inspect.Parameter.POSITIONAL_OR_KEYWORD)]
                kwargs = dict(request.kwargs)
                for p in positional[:len(args)]:
                    if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD:
                        kwargs.pop(p.name, None)
            elif sig is not None:
                try:
                    bound = sig.bind_partial(*request.args)
                except TypeError:
                    pass
                else:
                    kwargs = dict(kwargs)
                    for name in list(kwargs):
                        if (name in bound.arguments and sig.parameters[name].kind ==
                                inspect.Parameter.POSITIONAL_OR_KEYWORD):
                            bound.arguments[name] = kwargs.pop(name)
                    args, kwargs = bound.args, {**bound.kwargs, **kwargs}
        new_args = list(request.args or ()) if args is None else list(args)
        new_kwargs = dict(request.kwargs or {}) if kwargs is None else dict(kwargs)
        if limit is not None and retries > limit:
            if exc:
                raise exc
            raise self.MaxRetriesExceededError(
                "Can't retry {}[{}] args:{} kwargs:{}".format(
                    self.name, request.id, tuple(new_args), new_kwargs),
                task_args=new_args, task_kwargs=new_kwargs)
        # No countdown: Rust applies the task's default_retry_delay.
        raise RcwRetry(exc, countdown, eta.isoformat() if eta else None, max_retries,
                       max_retries is not None, new_args, new_kwargs)

    Task.retry = retry


def _exc_payload(exc):
    """`{exc_type, exc_module, exc_message, traceback}` as Celery stores it."""
    from kombu.utils.json import dumps

    args = []
    for a in getattr(exc, "args", ()):
        try:
            dumps(a)
            args.append(a)
        except Exception:
            args.append(repr(a))
    cls = type(exc)
    return {
        "exc_type": cls.__qualname__,
        "exc_module": cls.__module__,
        "exc_message": args,
        "traceback": "".join(traceback.format_exception(cls, exc, exc.__traceback__)),
    }


_threads = {}


def install_soft_limit_handler():
    """In a pool process: SIGUSR1 raises SoftTimeLimitExceeded in the running
    task, as billiard's pool processes do."""
    import signal

    from billiard.exceptions import SoftTimeLimitExceeded

    def _soft(signum, frame):
        raise SoftTimeLimitExceeded()

    signal.signal(signal.SIGUSR1, _soft)


def run_job(line):
    """A pool job line `[task, args, kwargs, request]` → the reply line."""
    import json

    task, args, kwargs, request = json.loads(line)
    return run(task, args, kwargs, request)


def worker_signal(name):
    """Fires `worker_process_init`, `worker_ready` or `worker_shutdown` as a
    Celery worker does around its life (handlers get ``sender=None``)."""
    from celery import signals

    getattr(signals, name).send(sender=None)


def raise_soft_time_limit(task_id):
    """Raises billiard's SoftTimeLimitExceeded inside the thread running
    `task_id` (the in-process counterpart of billiard's SIGUSR1 handler)."""
    import ctypes
    from billiard.exceptions import SoftTimeLimitExceeded

    ident = _threads.get(task_id)
    if ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(ident), ctypes.py_object(SoftTimeLimitExceeded))


def _stored_value(retval):
    """A returned AsyncResult/GroupResult is stored as its result tuple, as
    Celery's ``prepare_value`` stores it for every serializer but pickle."""
    from celery.result import ResultBase

    if isinstance(retval, ResultBase):
        return retval.as_tuple()
    return retval


def _children(task):
    """Results published from the body (``add_to_parent``), as tuples."""
    return [r.as_tuple() for r in (task.request.children or [])]


def run(name, args_json, kwargs_json, request_json):
    """Runs one task body under Celery's request context, hooks and signals.
    Returns JSON `["ok", value, children]`, `["error", exc, children]`,
    `["retry", {...}, children]` or, for Celery's `Ignore` and `Reject`,
    `["error", exc, children]` without the failure hooks (Rust settles them
    as Celery's worker does)."""
    from celery import signals
    from celery._state import _task_stack
    from celery.app.trace import task_has_custom
    from celery.exceptions import Ignore, Reject
    from kombu.utils.json import dumps, loads

    task = _app.tasks[name]
    args = loads(args_json)
    kwargs = loads(kwargs_json)
    req = loads(request_json)
    task_id = req["id"]
    task.push_request(args=args, kwargs=kwargs, called_directly=False, **req)
    _task_stack.push(task)
    import threading
    _threads[task_id] = threading.get_ident()
    outcome = None
    retval = None
    state = "SUCCESS"
    try:
        signals.task_prerun.send(sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs)
        try:
            task.before_start(task_id, args, kwargs)
            fun = task if task_has_custom(task, "__call__") else task.run
            retval = fun(*args, **kwargs)
            task.on_success(retval, task_id, args, kwargs)
            signals.task_success.send(sender=task, result=retval)
            outcome = ["ok", _stored_value(retval)]
        except RcwRetry as r:
            state = "RETRY"
            from celery.exceptions import Retry
            reason = Retry(exc=r.exc, when=r.eta or r.countdown)
            try:
                task.on_retry(r.exc, task_id, args, kwargs, None)
            except Exception:
                pass
            signals.task_retry.send(sender=task, request=task.request, reason=reason, einfo=None)
            payload = {
                "exc": _exc_payload(r.exc) if isinstance(r.exc, BaseException) else None,
                "countdown": r.countdown, "eta": r.eta,
                "max_retries": r.max_retries, "has_max": r.has_max,
                "args": r.args_, "kwargs": r.kwargs_,
            }
            outcome = ["retry", payload]
        except (Ignore, Reject) as exc:
            # Celery's IGNORED / REJECTED: no failure hooks, no after_return.
            state = "REJECTED" if isinstance(exc, Reject) else "IGNORED"
            retval = exc
            outcome = ["error", _exc_payload(exc)]
            if isinstance(exc, Reject) and not exc.requeue:
                signals.task_failure.send(sender=task, task_id=task_id, exception=exc,
                                          args=args, kwargs=kwargs,
                                          traceback=exc.__traceback__, einfo=None)
        except BaseException as exc:  # noqa: B902 - report everything, SystemExit included
            if isinstance(exc, (KeyboardInterrupt,)):
                raise
            state = "FAILURE"
            retval = exc
            payload = _exc_payload(exc)
            from billiard.einfo import ExceptionInfo
            einfo = ExceptionInfo()
            try:
                task.on_failure(exc, task_id, args, kwargs, einfo)
            except Exception:
                pass
            signals.task_failure.send(sender=task, task_id=task_id, exception=exc, args=args,
                                      kwargs=kwargs, traceback=exc.__traceback__, einfo=einfo)
            outcome = ["error", payload]
        if state not in ("RETRY", "IGNORED", "REJECTED"):
            try:
                task.after_return(state, retval, task_id, args, kwargs, None)
            except Exception:
                pass
        signals.task_postrun.send(sender=task, task_id=task_id, task=task, args=args,
                                  kwargs=kwargs, retval=retval, state=state)
        outcome.append(_children(task))
    finally:
        _threads.pop(task_id, None)
        _task_stack.pop()
        task.pop_request()
    try:
        return dumps(outcome)
    except Exception as exc:  # a return value JSON can't carry
        return dumps(["error", _exc_payload(exc), outcome[2]])


# --- Canvas handed to Celery's own code (the app is loaded) -----------------
# The worker's Rust canvas handles plain steps; nested shapes, failures that
# touch a canvas and chord completion run here, in the worker's main
# interpreter, through the same functions Celery's worker calls.

def _request(request_json):
    from celery.app.task import Context
    from kombu.utils.json import loads

    return Context(loads(request_json))


class _current:
    """Runs Celery code as if inside the task ``request`` belongs to (the
    task on the stack, its request pushed), so what it sends gets the
    task as parent, as in Celery's worker."""

    def __init__(self, request):
        self.task = _app.tasks.get(request.task)
        self.request = request

    def __enter__(self):
        from celery._state import _task_stack

        if self.task is not None:
            self.request.called_directly = False
            self.task.request_stack.push(self.request)
            _task_stack.push(self.task)
        return self

    def __exit__(self, *exc):
        from celery._state import _task_stack

        if self.task is not None:
            _task_stack.pop()
            self.task.request_stack.pop()
        return False


def _backend_for(name):
    task = _app.tasks.get(name) if name else None
    return task.backend if task is not None else _app.backend


def _exception(backend, exc_json):
    from kombu.utils.json import loads

    return backend.exception_to_python(loads(exc_json))


def dispatch(retval_json, callbacks_json, chain_json, request_json):
    """Celery's ``_dispatch_callbacks_and_chain`` for a finished task; returns
    the result tuples of what was sent (the task's ``children``)."""
    from kombu.utils.json import dumps, loads

    retval = loads(retval_json)
    callbacks = loads(callbacks_json) or []
    chain = loads(chain_json) or []
    request = _request(request_json)
    parent_id = request.id
    root_id = request.root_id or request.id
    priority = None
    if _app.conf.task_inherit_parent_priority:
        priority = (request.delivery_info or {}).get("priority")
    sent = []
    publish = _app.amqp._retry_publish
    with _current(request):
        _dispatch(retval, callbacks, chain, parent_id, root_id, priority, publish, sent)
    return dumps([r.as_tuple() for r in sent if r is not None])


def _dispatch(retval, callbacks, chain, parent_id, root_id, priority, publish, sent):
    from celery.canvas import group, signature

    if len(callbacks) > 1:
        sigs, groups = [], []
        for sig in callbacks:
            sig = signature(sig, app=_app)
            (groups if isinstance(sig, group) else sigs).append(sig)
        for group_ in groups:
            sent.append(publish(group_.apply_async, (retval,), parent_id=parent_id,
                                root_id=root_id, priority=priority))
        if sigs:
            sent.append(publish(group(sigs, app=_app).apply_async, (retval,),
                                parent_id=parent_id, root_id=root_id, priority=priority))
    elif callbacks:
        sent.append(publish(signature(callbacks[0], app=_app).apply_async, (retval,),
                            parent_id=parent_id, root_id=root_id, priority=priority))
    if chain:
        step = signature(chain[-1], app=_app)
        sent.append(publish(step.apply_async, (retval,), chain=chain[:-1],
                            parent_id=parent_id, root_id=root_id, priority=priority))


def mark_failure(request_json, exc_json, traceback, store_result):
    """Celery's ``backend.mark_as_failure`` for a failed task: FAILURE stored,
    its chord told, the rest of its chain failed, errbacks called (new-style
    ones in this process, as Celery calls them) or sent."""
    request = _request(request_json)
    backend = _backend_for(request.task)
    exc = _exception(backend, exc_json)
    with _current(request):
        backend.mark_as_failure(request.id, exc, traceback or None, request=request,
                                store_result=bool(store_result), call_errbacks=True)


def chord_complete(request_json, values_json, failure_json):
    """The end of Celery's ``on_chord_part_return``, once the worker counted
    the chord's last part and won its claim: a complex header's results
    restored as ``GroupResult`` (their structure kept), the body applied
    (``callback.delay``) in whatever shape it has, or, after a failed part,
    ``chord_error_from_stack`` (the body failed, its errbacks called)."""
    from celery.canvas import maybe_signature
    from celery.result import GroupResult, allow_join_result
    from kombu.utils.json import loads

    request = _request(request_json)
    backend = _backend_for(request.task)
    callback = maybe_signature(request.chord, app=_app)
    failure = loads(failure_json)
    with _current(request):
        if failure:
            failed_id, exc = failure
            exc = backend.exception_to_python(exc)
            _chord_error(backend, callback, f"Dependency {failed_id} raised {exc!r}")
            return None
        header = GroupResult.restore(request.group, app=_app)
        if header is not None:
            header.on_ready()
            join = header.join_native if header.supports_native_join else header.join
            try:
                with allow_join_result():
                    values = join(timeout=_app.conf.result_chord_join_timeout, propagate=True)
            except Exception as exc:
                _chord_error(backend, callback, repr(exc))
                return None
        else:
            values = loads(values_json)
        try:
            _app.amqp._retry_publish(callback.delay, values)
        except Exception as exc:
            _chord_error(backend, callback, f"Callback error: {exc!r}")
    # Nothing to hand back: the worker only needs to know it is done.
    return None


def _chord_error(backend, callback, message):
    """``chord_error_from_stack`` as Celery's backend calls it: from inside
    the handler of the ChordError (it stores the current stack's traceback)."""
    from celery.exceptions import ChordError

    try:
        raise ChordError(message)
    except ChordError as exc:
        backend.chord_error_from_stack(callback, exc)


# ---- embedded beat (-B) ----

_beat = None


def beat_start(scheduler_cls, schedule_filename, max_interval, loglevel):
    """Celery's `beat.Service` with the app's schedule, as `celery worker -B`
    creates it (remote control off: the worker's node answers). Its log
    lines (`Scheduler: Sending due task …`) go to stderr in the worker's format."""
    global _beat
    import logging
    from celery import beat, signals

    log = logging.getLogger("celery.beat")
    if not any(getattr(h, "_rcw", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "[%(asctime)s: %(levelname)s/MainProcess] %(message)s"))
        handler._rcw = True
        log.addHandler(handler)
        log.setLevel(getattr(logging, loglevel.upper(), logging.WARNING))
        log.propagate = False
    service = beat.Service(_app, max_interval=max_interval or None,
                           schedule_filename=schedule_filename,
                           scheduler_cls=scheduler_cls, remote_control=False)
    scheduler = service.scheduler
    log.info("beat: Starting...")
    signals.beat_init.send(sender=service)
    signals.beat_embedded_init.send(sender=service)
    _beat = service
    return f"{_app.main or 'default'}\t{scheduler.max_interval}"


def beat_tick():
    """One scheduler pass, as the loop of `Service.start`: seconds to the next."""
    scheduler = _beat.scheduler
    if scheduler.should_sync():
        scheduler._do_sync()
    return str(float(scheduler.tick() or 0.0))


def beat_stop():
    if _beat is not None:
        _beat.sync()


def thread_stacks():
    """Celery's `cry()`: every Python thread's stack (SIGUSR1)."""
    from celery.utils.debug import cry
    return cry()
