"""The ``Celery`` Flask extension.

One ``Celery`` object may serve several Flask apps: everything that belongs to one app (its own
``celery.Celery`` instance, settings, allowlist, local processes, monitor service) lives in an
:class:`~flask_celerymon.appstate.AppState` stored in ``app.extensions["celerymon"]`` and found
with :func:`~flask_celerymon.appstate.get_state`. The extension object itself only keeps what
the decorators collected (tasks, schedules, allowlist entries) and weak references to the apps
it was initialised with.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect as pyinspect
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import celery as celery_pkg
from celery import states
from celery.app.amqp import AMQP
from celery.app.task import Task as CeleryTask
from celery.utils import uuid
from celery.utils.saferepr import saferepr
from flask import Flask, current_app, has_app_context
from kombu.exceptions import EncodeError
from werkzeug.local import LocalProxy

from . import config as config_mod
from . import network
from .appstate import EXTENSION_KEY as EXTENSION_KEY  # re-exported: the key is appstate's
from .appstate import AppState, find_state, get_state, set_state
from .context import AppContextCelery, combine_base, run_like_a_worker, traced_in_app_context
from .dispatch import DISPATCH_TASK_NAME, Allowlist, reference_of, run_reference
from .errors import (
    AlreadyRegisteredError,
    ConfigurationError,
    DispatchRefused,
    NotInitializedError,
    SubmitConnectionError,
    SubmitError,
    TaskNotFound,
    UnavailableError,
)
from .futures import Future, FuturePool
from .schedule import ScheduleEntry, make_schedule

if TYPE_CHECKING:
    from .monitor.service import MonitorService

log = logging.getLogger(__name__)

#: keywords of submit()/map() that are sending options, not arguments of the function
RESERVED_OPTIONS = ("queue", "countdown", "eta", "priority", "expires")

#: the size Celery itself cuts argument reprs in messages and events at
ARGSREPR_MAXSIZE = 1024


def _current_task() -> CeleryTask | None:
    return celery_pkg._state.get_current_task()


#: The task running in this thread (``current_task.request.id`` is its id); falsy outside a task.
current_task: CeleryTask = LocalProxy(_current_task)


class AppContextTask(CeleryTask):
    """Base of every task of an app: each execution runs inside that Flask app's context.

    On a worker, one new app context is pushed per execution, before ``task_prerun``, and
    popped after ``task_postrun``: the signal handlers, ``before_start``, the body, the
    handlers (``on_success``, ``on_failure``, ``on_retry``, ``after_return``) and the result
    store all run inside it, with one ``g`` that starts empty (see :mod:`flask_celerymon.context`).
    ``apply()`` (eager mode) does the same in an empty :class:`contextvars.Context`, so the
    caller's request context and ``g`` are not visible, unless ``CELERY_EAGER_CALLER_CONTEXT``
    is on. Calling the task object directly is a plain call: it reuses the app context that is
    pushed, or pushes one.

    ``apply_async`` records the task as PENDING (with name, arguments and queue when
    ``result_extended`` is on) before publishing, so ``celery.get(id)`` can tell a queued task
    from an id nobody sent, and the monitor can retry it with its original arguments.
    """

    abstract = True

    @property
    def __trace__(self) -> Callable[..., Any] | None:
        """The tracer the worker runs each execution through, wrapped in an app context."""
        return self.__dict__.get("_celerymon_trace")

    @__trace__.setter
    def __trace__(self, tracer: Callable[..., Any] | None) -> None:
        flask_app: Flask | None = getattr(self.app, "flask_app", None)
        if tracer is not None and flask_app is not None:
            tracer = traced_in_app_context(flask_app, tracer)
        self.__dict__["_celerymon_trace"] = tracer

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        flask_app: Flask | None = getattr(self.app, "flask_app", None)
        if flask_app is None or _in_context_of(flask_app):
            return super().__call__(*args, **kwargs)
        with flask_app.app_context():
            return super().__call__(*args, **kwargs)

    def apply(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task here and now (eager mode), in a fresh app context as on a worker."""
        flask_app: Flask | None = getattr(self.app, "flask_app", None)
        if flask_app is None:
            return super().apply(*args, **kwargs)
        state = find_state(flask_app)
        if state is not None and state.settings.eager_caller_context:
            if _in_context_of(flask_app):
                return super().apply(*args, **kwargs)
            with flask_app.app_context():
                return super().apply(*args, **kwargs)
        return run_like_a_worker(flask_app, super().apply, *args, **kwargs)

    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any
    ) -> Any:
        conf = self.app.conf
        flask_app: Flask | None = getattr(self.app, "flask_app", None)
        state = find_state(flask_app) if flask_app is not None else None
        if state is not None:
            state.sync_late_settings()
        if not conf.task_always_eager and not options.get("ignore_result", self.ignore_result):
            task_id = task_id or uuid()
            _record_pending(self, task_id, args, kwargs, options)
        return super().apply_async(args, kwargs, task_id=task_id, **options)


def _in_context_of(flask_app: Flask) -> bool:
    """True when an app context of ``flask_app`` is pushed in this context."""
    return has_app_context() and current_app._get_current_object() is flask_app  # type: ignore[attr-defined]


def _record_pending(
    task: CeleryTask, task_id: str, args: Any, kwargs: Any, options: dict[str, Any]
) -> None:
    """The PENDING record of a send (:func:`.monitor.send.record_pending`), under the name
    and queue the message gets; an unreachable backend fails the send with
    :class:`~.network.BackendUnreachable`."""
    # imported here: importing the monitor package loads the service's modules, which an
    # app that only sends tasks never needs
    from .monitor.send import record_pending

    try:
        record_pending(
            task.backend,
            task_id,
            options.get("shadow") or task.name,
            args,
            kwargs,
            queue=options.get("queue") or getattr(task, "queue", None),
            parent_id=options.get("parent_id"),
            group_id=options.get("group_id"),
        )
    except UnavailableError as exc:  # the send fails: the caller gets the error
        reason = exc.__cause__ or exc
        text = network.message(task.app, "apply_async()", network.BACKEND, reason)
        raise network.BackendUnreachable(text, reason) from None


class ShadowAwareAMQP(AMQP):
    """Celery's message builder, with the ``task-sent`` event named like the other events.

    Celery names ``task-sent`` after the real task even when the message has a ``shadow`` name,
    while the worker's events use the shadow. For ``submit()`` that would show a task first as
    ``flask_celerymon.dispatch`` and then as the function reference; this keeps one name.
    """

    def as_task_v2(self, *args: Any, **kwargs: Any) -> Any:
        message = super().as_task_v2(*args, **kwargs)
        shadow = message.headers.get("shadow")
        if shadow and message.sent_event is not None:
            message.sent_event["name"] = shadow
        return message


class TaskProxy:
    """What ``@celery.task`` returns: the function, plus Celery's task API for the current app.

    Calling it runs the function directly. ``delay``, ``apply_async``, ``s`` and every other
    attribute of a Celery task resolve against the app in the current app context (or the only
    app the extension serves), so the decorator works before ``init_app`` (factory pattern).
    """

    #: marks these objects for :func:`flask_celerymon.dispatch.defined_object`
    __celerymon_task__ = True

    def __init__(self, extension: Celery, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        functools.update_wrapper(self, fn)
        self._extension = extension
        self._fn = fn
        self._options = options
        self.name: str = options.get("name") or f"{fn.__module__}.{fn.__qualname__}"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)

    def bound(self, state: AppState | None = None) -> CeleryTask:
        """The Celery task object of this function in the given (or current) app."""
        state = state or self._extension._state()
        return state.celery_app.tasks[self.name]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.bound(), name)

    def __repr__(self) -> str:
        return f"<task {self.name}>"


class TaskRegistry:
    """``celery.task``: a decorator, and a lookup of registered tasks by short or full name."""

    def __init__(self, extension: Celery) -> None:
        self._extension = extension
        self._tasks: dict[str, TaskProxy] = {}

    def __call__(self, fn: Callable[..., Any] | None = None, **options: Any) -> Any:
        if fn is not None and not callable(fn):
            raise TypeError(f"@celery.task takes a function, not {fn!r}")

        if options.get("base") is not None:  # refuse a base that can never be combined, now
            combine_base(AppContextTask, options["base"], what="@celery.task(base)")

        def decorate(func: Callable[..., Any]) -> TaskProxy:
            proxy = TaskProxy(self._extension, func, options)
            if proxy.name in self._tasks and self._tasks[proxy.name]._fn is not func:
                log.warning("task %s registered twice; the later definition wins", proxy.name)
            self._tasks[proxy.name] = proxy
            for state in self._extension._states():
                self._extension._register_task(state, proxy)
            return proxy

        return decorate(fn) if fn is not None else decorate

    def __getattr__(self, name: str) -> TaskProxy:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no task named {name!r} is registered with celery.task") from None

    def __getitem__(self, name: str) -> TaskProxy:
        if name in self._tasks:
            return self._tasks[name]
        matches = [p for p in self._tasks.values() if p.__name__ == name]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise KeyError(f"{name!r} is ambiguous: {sorted(p.name for p in matches)}")
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        try:
            self[name]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[TaskProxy]:
        return iter(list(self._tasks.values()))

    def __len__(self) -> int:
        return len(self._tasks)


class _Commands:
    """``celery.inspect`` / ``celery.control``: Celery's remote-control API returning dicts."""

    def __init__(self, extension: Celery, kind: str) -> None:
        self._extension = extension
        self._kind = kind

    def __getattr__(self, method: str) -> Callable[..., dict[str, Any]]:
        if method.startswith("_"):
            raise AttributeError(method)
        probe = self._target(None, 1.0)
        fn = getattr(probe, method, None)
        if fn is None or not callable(fn) or method in _NOT_COMMANDS:
            raise AttributeError(f"celery.{self._kind} has no method {method!r}")

        def call(
            *args: Any, destination: Any = None, timeout: float = 1.0, **kwargs: Any
        ) -> dict[str, Any]:
            target = self._target(destination, timeout)
            bound = getattr(target, method)
            if self._kind == "control":
                params = pyinspect.signature(bound).parameters
                open_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
                if ("reply" in params or open_kw) and method not in _REPLIES_ALWAYS:
                    kwargs.setdefault("reply", True)
                if "timeout" in params or open_kw:
                    kwargs.setdefault("timeout", timeout)
                if destination is not None and ("destination" in params or open_kw):
                    kwargs.setdefault("destination", _destination(destination))
            capp = self._extension._state().celery_app
            with network.translated(capp, f"celery.{self._kind}.{method}()"):
                return _merge(bound(*args, **kwargs))

        call.__name__ = method
        call.__doc__ = fn.__doc__
        return call

    def _target(self, destination: Any, timeout: float) -> Any:
        capp = self._extension._state().celery_app
        if self._kind == "inspect":
            return capp.control.inspect(destination=_destination(destination), timeout=timeout)
        return capp.control


_NOT_COMMANDS = frozenset({"app", "mailbox", "inspect", "Mailbox", "election"})
#: control methods that pass ``reply=True`` to ``broadcast`` themselves (a second one is a
#: TypeError)
_REPLIES_ALWAYS = frozenset({"ping"})


def _destination(destination: Any) -> list[str] | None:
    if destination is None:
        return None
    return [destination] if isinstance(destination, str) else list(destination)


def _merge(reply: Any) -> dict[str, Any]:
    """Celery answers with a dict, a list of one-key dicts, or None: always give a dict."""
    if reply is None:
        return {}
    if isinstance(reply, dict):
        return reply
    merged: dict[str, Any] = {}
    if isinstance(reply, list):
        for item in reply:
            if isinstance(item, dict):
                merged.update(item)
    return merged


class Celery:
    """The flask_celerymon extension.

    ``Celery(app)`` or ``celery = Celery(); celery.init_app(app)``. ``base_task`` is the class
    every task of the app derives from (it gets the app-context behaviour mixed in).
    """

    def __init__(self, app: Flask | None = None, base_task: type[CeleryTask] | None = None) -> None:
        if base_task is not None and not (
            isinstance(base_task, type) and issubclass(base_task, CeleryTask)
        ):
            raise TypeError(f"base_task must be a subclass of celery.Task, not {base_task!r}")
        self.base_task = base_task
        self.task = TaskRegistry(self)
        self.inspect = _Commands(self, "inspect")
        self.control = _Commands(self, "control")
        self._schedules: dict[str, ScheduleEntry] = {}
        self._allowed: list[str] = []
        #: the role hook set with :meth:`monitor_role` (``CELERY_MONITOR_ROLE`` wins over it)
        self.monitor_role_hook: Callable[[Any], str | None] | None = None
        self._apps: list[weakref.ref[Flask]] = []
        self._apps_lock = threading.Lock()
        if app is not None:
            self.init_app(app)

    # -- registration -------------------------------------------------------------------
    def init_app(self, app: Flask) -> None:
        """Configure a Celery app for ``app`` from its ``CELERY_*`` config keys.

        Raises :class:`ConfigurationError` for a bad value and :class:`AlreadyRegisteredError`
        when called twice for one app.
        """
        if find_state(app) is not None:
            raise AlreadyRegisteredError(
                f"flask_celerymon is already initialised on app {app.name!r}; call init_app() "
                "once per app, or create the app anew (e.g. from a factory) to re-initialise"
            )
        settings = config_mod.load(app.config, app.instance_path)
        celery_app = self._make_celery(app, settings)
        allowlist = self._make_allowlist(app, settings)
        _register_dispatch(celery_app, allowlist)
        state = AppState(app, self, settings, celery_app, allowlist)
        set_state(app, state)
        for proxy in self.task:
            self._register_task(state, proxy)
        for entry in self._schedules.values():
            celery_app.conf.beat_schedule[entry.name] = entry.as_beat_entry()
        with self._apps_lock:
            self._apps = [r for r in self._apps if r() is not None]
            self._apps.append(weakref.ref(app))
        self._init_cli(app)
        self._init_monitor(app, state)

    def _make_celery(self, app: Flask, settings: config_mod.Settings) -> celery_pkg.Celery:
        task_cls = _app_task_class(app, self.base_task)
        celery_app = AppContextCelery(
            app.import_name, task_cls=task_cls, amqp=ShadowAwareAMQP, set_as_current=False
        )
        conf: dict[str, Any] = {
            "task_serializer": "json",
            "result_serializer": "json",
            "accept_content": ["json"],
            "result_accept_content": ["json"],
            "task_track_started": True,
            "task_send_sent_event": True,
            "worker_send_task_events": True,
            "result_extended": True,
            "task_store_eager_result": True,
            "broker_connection_retry_on_startup": True,
            "worker_hijack_root_logger": False,
        }
        conf.update(settings.celery)
        if conf.get("task_always_eager"):
            conf.setdefault("result_backend", "cache+memory://")
            conf.setdefault("broker_url", "memory://")
        elif not conf.get("broker_url"):
            from .embedded import embedded_settings

            embedded = embedded_settings(settings.embedded_broker_dir)
            conf.update({k: v for k, v in embedded.items() if k not in conf})
        else:
            conf.setdefault("result_backend", _default_backend(conf["broker_url"]))
        conf["beat_schedule"] = dict(conf.get("beat_schedule") or {})
        conf.update(network.bounded_settings(conf, settings.send_timeout))
        celery_app.conf.update(conf)
        celery_app.flask_app = app  # read by AppContextTask
        celery_app.celerymon_send_timeout = settings.send_timeout  # read by network
        return celery_app

    def _make_allowlist(self, app: Flask, settings: config_mod.Settings) -> Allowlist:
        entries: Sequence[str] | None = settings.submit_allowlist
        if entries is None:
            package = app.import_name.partition(".")[0]
            entries = [] if package in ("__main__", "__mp_main__") else [package]
        try:
            allowlist = Allowlist(list(entries) + self._allowed)
        except ValueError as exc:
            raise ConfigurationError(f"CELERY_SUBMIT_ALLOWLIST: {exc}") from None
        return allowlist

    def _register_task(self, state: AppState, proxy: TaskProxy) -> None:
        options = dict(proxy._options)
        options["name"] = proxy.name
        if options.get("base") is not None:  # combined now, so a conflict is raised now
            options["base"] = combine_base(
                state.celery_app.Task, options["base"], what=f"@celery.task({proxy.name}, base)"
            )
        state.celery_app.task(shared=False, **options)(proxy._fn)

    def _init_cli(self, app: Flask) -> None:
        try:
            from .cli import celery_group
        except ImportError:  # the CLI module is optional while it is being built
            return
        if "celery" not in app.cli.commands:
            app.cli.add_command(celery_group)

    def _init_monitor(self, app: Flask, state: AppState) -> None:
        if not state.settings.monitor_blueprint:
            return
        try:
            from .web import init_monitor
        except ImportError:
            return
        init_monitor(app, state)

    def allow(self, entry: str | Callable[..., Any]) -> None:
        """Let workers run ``entry`` through submit(): a module prefix, ``"mod:func"``, or a function."""
        ref = entry if isinstance(entry, str) else reference_of(entry)
        Allowlist([ref])  # validates
        self._allowed.append(ref)
        for state in self._states():
            state.allowlist.add(ref)

    def monitor_role(self, fn: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
        """Decorator: ``fn(user)`` gives the monitor role of a logged-in user.

        ``user`` is the host's flask-login ``current_user``, or a
        :class:`~flask_celerymon.web.auth.MonitorUser` after an OAuth2/OIDC login. ``fn``
        answers ``"viewer"``, ``"operator"``, ``"admin"`` or None (no access). Applies to every
        app of this extension that does not set ``CELERY_MONITOR_ROLE``. Raises TypeError for a
        non-callable.
        """
        if not callable(fn):
            raise TypeError(f"@celery.monitor_role takes a function, not {fn!r}")
        self.monitor_role_hook = fn
        return fn

    def schedule(
        self,
        every: Any = None,
        *,
        name: str | None = None,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        **crontab_kw: Any,
    ) -> Callable[[Callable[..., Any]], TaskProxy]:
        """Run the decorated function periodically under beat.

        ``every`` is seconds, a ``timedelta``, a ``crontab`` or ``solar``; or give crontab
        keywords (``hour=0, minute=0``). Raises :class:`ConfigurationError` for both or neither.
        """
        when = make_schedule(every, **crontab_kw)

        def decorate(fn: Callable[..., Any]) -> TaskProxy:
            proxy = fn if isinstance(fn, TaskProxy) else self.task(fn)
            entry = ScheduleEntry(
                name=name or proxy.name,
                task=proxy.name,
                schedule=when,
                args=tuple(args),
                kwargs=dict(kwargs or {}),
                options=dict(options or {}),
            )
            self._schedules[entry.name] = entry
            for state in self._states():
                state.celery_app.conf.beat_schedule[entry.name] = entry.as_beat_entry()
            return proxy

        return decorate

    # -- which app ----------------------------------------------------------------------
    def _states(self) -> list[AppState]:
        with self._apps_lock:
            apps = [r() for r in self._apps]
        found = [find_state(a) for a in apps if a is not None]
        return [s for s in found if s is not None]

    def _state(self, app: Flask | None = None) -> AppState:
        if app is None and has_app_context():
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        if app is not None:
            state = get_state(app)
            if state.extension is not self:
                raise NotInitializedError(
                    f"flask_celerymon is not initialised on app {app.name!r}; call "
                    "celery.init_app(app) first"
                )
            return state
        states_ = self._states()
        if len(states_) == 1:
            return states_[0]
        if not states_:
            raise NotInitializedError(
                "flask_celerymon is not initialised on any app; call celery.init_app(app) first"
            )
        raise NotInitializedError(
            "this Celery extension serves several apps; push an app context "
            "(with app.app_context(): ...) to choose one"
        )

    def get_app(self, app: Flask | None = None) -> celery_pkg.Celery:
        """The ``celery.Celery`` instance of ``app`` (default: the current app)."""
        return self._state(app).celery_app

    @property
    def app(self) -> celery_pkg.Celery:
        """The ``celery.Celery`` instance of the current app."""
        return self._state().celery_app

    @property
    def monitor(self) -> MonitorService:
        """The monitor service of the current app."""
        return self._state().monitor

    # -- sending work -------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` on a worker; return a :class:`Future`.

        ``queue``, ``countdown``, ``eta``, ``priority`` and ``expires`` are sending options, not
        arguments. Raises :class:`SubmitError` for a lambda, closure, ``__main__`` function, a
        function that is not on the allowlist, a bad option or arguments that cannot be sent.
        """
        state = self._state()
        options = _pop_options(kwargs)
        sig = self._signature(state, fn, args, kwargs)
        state.ensure_local_processes()
        return self._send(state, sig, options, "submit()")

    def map(self, fn: Callable[..., Any], *iterables: Any, **kwargs: Any) -> FuturePool:
        """Send one call per positional argument as a single group; return a :class:`FuturePool`.

        Each positional argument holds the arguments of one call (a list/tuple is unpacked, any
        other value is the single argument); keyword arguments are passed to every call, except
        the sending options (``queue`` ...) which apply to the whole group.
        """
        state = self._state()
        options = _pop_options(kwargs)
        sigs = [
            self._signature(state, fn, tuple(a) if isinstance(a, (list, tuple)) else (a,), kwargs)
            for a in iterables
        ]
        state.ensure_local_processes()
        task_ids = [uuid() for _ in sigs]
        for sig, task_id in zip(sigs, task_ids):
            sig.set(task_id=task_id)
        try:
            with _sending(state, "map()"):
                group_result = celery_pkg.group(sigs, app=state.celery_app).apply_async(**options)
        except EncodeError as exc:
            raise _encode_error(exc) from None
        futures = [
            Future(r, state.watcher, name=s.options.get("shadow") or s.task)
            for r, s in zip(group_result.results, sigs)
        ]
        return FuturePool(futures, group_id=group_result.id)

    def get(self, task_id: str) -> Future:
        """The :class:`Future` of a task sent by this app. Raises :class:`TaskNotFound`."""
        if not isinstance(task_id, str) or not task_id:
            raise TypeError(f"get() takes a task id string, not {task_id!r}")
        state = self._state()
        result = state.celery_app.AsyncResult(task_id)
        with network.translated(state.celery_app, "get()", network.BACKEND):
            meta = result.backend.get_task_meta(task_id)
        if meta.get("status") == states.PENDING and not meta.get("task_id"):
            raise TaskNotFound(
                f"no task with id {task_id!r} is known to the result backend: it was not sent "
                "by this app, or its result has expired"
            )
        return Future(result, state.watcher, name=meta.get("name"))

    def _signature(
        self, state: AppState, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if isinstance(fn, (TaskProxy, CeleryTask)):
            task = fn.bound(state) if isinstance(fn, TaskProxy) else fn
            _check_serializable(state, task.name, args, kwargs)
            return task.s(*args, **kwargs)
        ref = reference_of(fn)
        if not state.allowlist.allows(ref):
            raise SubmitError(
                f"{ref} is not on the submit allowlist {state.allowlist!r}; add its module to "
                "CELERY_SUBMIT_ALLOWLIST or call celery.allow() for it"
            )
        try:  # the worker applies the same rule; refuse here what it would refuse there
            state.allowlist.resolve(ref, state.celery_app.tasks)
        except DispatchRefused as exc:
            raise SubmitError(str(exc)) from None
        _check_serializable(state, ref, args, kwargs)
        # Events and the monitor show the function's own name and arguments, not the wrapper's.
        return state.dispatch_task.s(ref, list(args), dict(kwargs)).set(
            shadow=ref,
            argsrepr=saferepr(tuple(args), ARGSREPR_MAXSIZE),
            kwargsrepr=saferepr(dict(kwargs), ARGSREPR_MAXSIZE),
        )

    def _send(self, state: AppState, sig: Any, options: dict[str, Any], action: str) -> Future:
        try:
            with _sending(state, action):
                result = sig.apply_async(**options)
        except EncodeError as exc:
            raise _encode_error(exc) from None
        return Future(result, state.watcher, name=sig.options.get("shadow") or sig.task)

    # -- workers ------------------------------------------------------------------------
    def status(self, timeout: float = 1.0) -> dict[str, str]:
        """``{"name@host": "OK"}`` for every worker answering a ping within ``timeout``.

        Raises :class:`~flask_celerymon.errors.ConnectionFailed` when the broker does not answer.
        """
        state = self._state()
        with network.translated(state.celery_app, "status()"):
            replies = state.celery_app.control.inspect(timeout=timeout).ping() or {}
        return {
            name: "OK" if (r or {}).get("ok") == "pong" else str(r)
            for name, r in sorted(replies.items())
        }

    def start(self, timeout: float | None = None) -> None:
        """Start the configured local workers, beat and monitor; wait until workers answer."""
        self._state().start_local_processes(timeout=timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the local processes started by :meth:`start` (or by the first submit)."""
        self._state().processes.stop(timeout=timeout)

    @property
    def processes(self) -> dict[str, Any]:
        """The local processes of the current app by name."""
        return self._state().processes.processes


def _app_task_class(app: Flask, base_task: type[CeleryTask] | None) -> type[CeleryTask]:
    """The task class of one app: :class:`AppContextTask` with ``base_task`` behind it.

    A ``base_task`` that already derives from :class:`AppContextTask` is used as it is.
    """
    if base_task is None:
        bases: tuple[type, ...] = (AppContextTask,)
    elif issubclass(base_task, AppContextTask):
        bases = (base_task,)
    else:
        bases = (AppContextTask, base_task)
    return type(f"FlaskTask[{app.name}]", bases, {"abstract": True})


def _register_dispatch(celery_app: celery_pkg.Celery, allowlist: Allowlist) -> None:
    def dispatch(ref: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        return run_reference(allowlist, ref, args, kwargs, celery_app.tasks)

    def shadow_name(task: Any, args: Any, kwargs: Any, options: Any) -> str | None:
        return args[0] if args and isinstance(args[0], str) else None

    celery_app.task(name=DISPATCH_TASK_NAME, shadow_name=shadow_name, shared=False)(dispatch)


def _default_backend(broker_url: str) -> str:
    """The result backend used when none is configured: the broker itself when it can store."""
    scheme = broker_url.partition("://")[0]
    if scheme in ("redis", "rediss", "redis+socket"):
        return broker_url
    if scheme == "memory":
        return "cache+memory://"
    return "rpc://"


def _pop_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    options = {k: kwargs.pop(k) for k in RESERVED_OPTIONS if k in kwargs}
    checks: dict[str, tuple[Callable[[Any], bool], str]] = {
        "queue": (lambda v: isinstance(v, str) and v != "", "a queue name"),
        "countdown": (lambda v: _is_number(v) and v >= 0, "a number of seconds >= 0"),
        "eta": (lambda v: isinstance(v, dt.datetime), "a datetime"),
        "priority": (
            lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255,
            "an integer 0-255",
        ),
        "expires": (
            lambda v: isinstance(v, dt.datetime) or (_is_number(v) and v > 0),
            "a datetime or a number of seconds > 0",
        ),
    }
    for key, value in options.items():
        valid, what = checks[key]
        if not valid(value):
            raise SubmitError(f"submit option {key}= must be {what}, not {value!r}")
    return options


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _sending(state: AppState, action: str) -> Any:
    """Turn a broker or backend that does not answer during a send into a SubmitError."""
    return network.translated(state.celery_app, action, network.BROKER, SubmitConnectionError)


def _check_serializable(state: AppState, ref: str, args: Any, kwargs: Any) -> None:
    """Encode the arguments as the send would, before any network call (and in eager mode).

    The message body uses ``task_serializer``; with ``result_extended`` the PENDING record
    written first carries the arguments too, in ``result_serializer``.
    """
    from kombu.serialization import dumps

    conf = state.celery_app.conf
    serializers = {conf.task_serializer}
    if conf.result_extended:
        serializers.add(conf.result_serializer)
    for serializer in sorted(serializers):
        try:
            dumps((list(args), dict(kwargs)), serializer=serializer)
        except EncodeError as exc:
            raise _encode_error(exc, ref, serializer) from None


def _encode_error(exc: Exception, ref: str | None = None, serializer: str = "json") -> SubmitError:
    what = f"the arguments of {ref}" if ref else "the task arguments"
    if serializer != "json":
        return SubmitError(f"{what} cannot be serialised with {serializer} ({exc})")
    return SubmitError(
        f"{what} cannot be serialised as JSON ({exc}); pass plain data (ids, strings, numbers, "
        "lists, dicts), or opt in to pickle with CELERY_ALLOW_PICKLE = True"
    )
