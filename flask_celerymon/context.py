"""Where a task's Flask app context begins and ends.

A task runs inside its Flask app's context for its whole execution as Celery defines it: the
context is pushed before ``task_prerun`` and popped after ``task_postrun``, so the signal
handlers, ``before_start``, the body, ``on_success``/``on_failure``/``on_retry``/``after_return``,
the result store and the ``task_failure``/``task_success``/``task_retry`` signals all see it.

Celery runs each execution through a *tracer* built by ``celery.app.trace.build_tracer``: the
worker assigns one to every task (``task.__trace__ = build_tracer(...)``, in each prefork child,
and in the consumer for the solo and threads pools) and calls it once per message; eager
``Task.apply`` builds one and calls it once. The tracer sends the signals, calls the handlers and
calls the body (``task.run`` directly when the class does not override ``__call__``). So the
context goes around the tracer:

* on a worker, :func:`traced_in_app_context` wraps the tracer the worker assigns (see
  ``AppContextTask.__trace__``): one fresh app context per execution, a fresh ``g``;
* in eager mode, :func:`run_like_a_worker` runs ``Task.apply`` in an empty
  :class:`contextvars.Context` with a fresh app context pushed: no request context and no ``g``
  of the caller, as on a worker. ``CELERY_EAGER_CALLER_CONTEXT = True`` restores the older
  behaviour (the caller's app and request context are reused when they belong to the same app).

:func:`combine_base` makes ``@celery.task(base=MyTask)`` keep this behaviour: the task class
derives from ``MyTask`` *and* the app's task class.

This module keeps no state; every function works on the objects passed in.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import celery as celery_pkg
from celery.app.task import Task as CeleryTask

from .errors import ConfigurationError

if TYPE_CHECKING:
    from flask import Flask


def traced_in_app_context(flask_app: Flask, tracer: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Celery tracer so each call runs inside a new app context of ``flask_app``.

    ``tracer`` is what ``build_tracer`` returns: ``tracer(uuid, args, kwargs, request)``. The
    wrapper takes and returns the same.
    """

    @functools.wraps(tracer)
    def trace_in_app_context(*args: Any, **kwargs: Any) -> Any:
        with flask_app.app_context():
            return tracer(*args, **kwargs)

    trace_in_app_context.__celerymon_wrapped__ = True  # type: ignore[attr-defined]
    return trace_in_app_context


def run_like_a_worker(flask_app: Flask, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn(*args, **kwargs)`` as a worker would: a fresh app context and nothing else.

    The call runs in an empty :class:`contextvars.Context`, so the caller's request context,
    its ``g`` and any other context variable it set are not visible, and nothing ``fn`` sets
    leaks back. Exceptions propagate unchanged.
    """

    def run() -> Any:
        with flask_app.app_context():
            return fn(*args, **kwargs)

    return contextvars.Context().run(run)


def combine_base(task_cls: type[CeleryTask], base: Any, what: str = "base") -> type[CeleryTask]:
    """The class a task given ``base=`` derives from: ``base`` first, the app's task class after.

    The new class is named ``<base>InAppContext``.

    ``base`` keeps precedence for every method it defines (``on_failure``, ``apply_async`` ...);
    its ``super()`` calls reach the app's task class, which runs the task in the app context and
    records it as PENDING on send. A ``base`` that already derives from ``task_cls`` is returned
    as it is. Raises :class:`ConfigurationError` when ``base`` is not a ``celery.Task`` subclass
    or when the two classes cannot be combined (a conflicting metaclass, ``__slots__`` layout or
    method resolution order).
    """
    if not (isinstance(base, type) and issubclass(base, CeleryTask)):
        raise ConfigurationError(f"{what}={base!r} must be a subclass of celery.Task")
    if issubclass(base, task_cls):
        return base
    name = f"{base.__name__}InAppContext"
    namespace = {
        "abstract": True,
        "__module__": base.__module__,
        "__qualname__": f"{base.__qualname__}InAppContext",
        "__doc__": base.__doc__,
    }
    try:
        return type(name, (base, task_cls), namespace)
    except TypeError as exc:
        chain = " -> ".join(c.__qualname__ for c in task_cls.__mro__[:-1])
        reason = " ".join(str(exc).split())
        raise ConfigurationError(
            f"{what}={base.__module__}.{base.__qualname__} cannot be combined with the app's "
            f"task class ({chain}): {reason}; its tasks could not run in the app context; "
            f"derive {base.__name__} from celery.Task alone (no conflicting metaclass or "
            "__slots__), or from celery.get_app(app).Task"
        ) from None


class AppContextCelery(celery_pkg.Celery):
    """The ``celery.Celery`` class of every app: tasks of every origin get the app's task class.

    Tasks made by ``@celery.task``, ``celery.app.task``, ``@shared_task`` (all through
    ``_task_from_fun``) and ``register_task`` derive from the app's task class even when they
    name their own ``base``, which is combined with it by :func:`combine_base`.
    ``_task_from_fun`` is Celery's one private method every decorator and ``shared_task`` go
    through; only its ``base`` argument is touched.
    """

    def _task_from_fun(self, fun: Any, name: Any = None, base: Any = None, **options: Any) -> Any:
        if base is not None:
            base = combine_base(self.Task, base)
        return super()._task_from_fun(fun, name=name, base=base, **options)

    def register_task(self, task: Any, **options: Any) -> Any:
        task_cls = self.Task
        cls = task if isinstance(task, type) else type(task)
        if not issubclass(cls, task_cls):
            combined = combine_base(task_cls, cls, what="register_task")
            if isinstance(task, type):
                task = combined()
            else:  # a Task subclass always has a __dict__, so the layouts agree
                task.__class__ = combined
            if not task.name:  # named after the class it was given, as Celery names it
                task.name = self.gen_task_name(cls.__name__, cls.__module__)
        return super().register_task(task, **options)
