"""Submit plain functions by import reference, checked against an allowlist on both ends.

A function travels as ``"package.module:name"`` inside a JSON message, never as pickle.

The one rule, applied by :meth:`Allowlist.resolve` on the submitting side *and* in the worker:

- the reference is well formed: a dotted module path of identifiers, none of them a dunder
  name (so no ``pkg.__main__``: importing an entry point runs it, and its ``main()`` would
  parse the worker's command line), a colon, and one identifier that is not a dunder name
  (module-level objects only; no dotted path after the colon);
- the module is on the allowlist (checked before anything is imported);
- the name is *defined* in that module: the object found in the module's own namespace (never
  through ``getattr``, a module ``__getattr__`` or any other object) has ``__module__`` equal to
  the module and ``__qualname__`` equal to the name. ``myapp:os`` (a module), ``myapp:popen``
  after ``from os import popen``, or ``myapp:os.popen`` are refused;
- the object is a plain Python function (``type(obj) is types.FunctionType``; functions wrapped
  with :func:`functools.wraps` qualify, as the wrapper is a function carrying the wrapped one's
  name) or one of the app's own registered Celery tasks. Modules, classes, builtins, bound
  methods, :func:`functools.partial` objects, proxies and objects with a ``run`` attribute are
  refused.

Anything else raises :class:`~flask_celerymon.errors.DispatchRefused`; a worker fails that one
task with it and goes on.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .errors import DispatchRefused, SubmitError

DISPATCH_TASK_NAME = "flask_celerymon.dispatch"

_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: class attribute that marks the objects ``@celery.task`` returns (read on the type, never
#: through the instance, so a proxy cannot pretend)
TASK_MARKER = "__celerymon_task__"


def reference_of(fn: Callable[..., Any]) -> str:
    """The ``"module:name"`` reference of a plain module-level function.

    Raises :class:`SubmitError` for lambdas, closures, methods, ``__main__`` functions and
    anything that is not a plain function. Does not check the allowlist.
    """
    target = inspect.unwrap(fn) if hasattr(fn, "__wrapped__") else fn
    if not inspect.isfunction(target):
        raise SubmitError(
            f"submit() takes a plain module-level function, not {type(fn).__name__} {fn!r}"
        )
    module, qualname = target.__module__, target.__qualname__
    if qualname == "<lambda>" or "<lambda>" in qualname:
        raise SubmitError(
            f"submit() cannot send a lambda ({module}:{qualname}); define a module-level "
            "function and submit that"
        )
    if "<locals>" in qualname:
        raise SubmitError(
            f"submit() cannot send a closure or nested function ({module}:{qualname}); "
            "define it at module level so a worker can import it"
        )
    if module in (None, "__main__", "__mp_main__"):
        raise SubmitError(
            f"submit() cannot send {qualname} from __main__: a worker cannot import it; "
            "move it into a module of your app"
        )
    if "." in qualname:
        raise SubmitError(
            f"submit() cannot send {module}:{qualname}: only module-level functions can be "
            "sent by reference; wrap the method in a module-level function"
        )
    ref = f"{module}:{qualname}"
    try:
        resolved = defined_object(ref)
    except DispatchRefused as exc:
        raise SubmitError(f"{ref} cannot be sent by reference: {exc}") from None
    if resolved is not fn and inspect.unwrap(resolved) is not target:
        raise SubmitError(
            f"{ref} does not resolve to the function given (it is shadowed or decorated "
            "without functools.wraps); submit the module-level name"
        )
    return ref


def parse_reference(ref: Any) -> tuple[str, str]:
    """``(module, name)`` of a well-formed reference; :class:`DispatchRefused` otherwise."""
    if not isinstance(ref, str):
        raise DispatchRefused(f"malformed function reference {ref!r}; expected 'module:name'")
    module, sep, name = ref.partition(":")
    if (
        not sep
        or not _MODULE_RE.fullmatch(module)
        or not _NAME_RE.fullmatch(name)
        or any(_is_dunder(part) for part in (*module.split("."), name))
    ):
        raise DispatchRefused(
            f"malformed function reference {ref!r}; expected 'package.module:function' "
            "naming a module-level function"
        )
    return module, name


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def defined_object(ref: str, tasks: Mapping[str, Any] | None = None) -> Any:
    """Import the module of ``ref`` and return the function or task *defined* there.

    ``tasks`` is the Celery app's task registry; without it, registered tasks are refused.
    Does no allowlist check (see :meth:`Allowlist.resolve`). Raises :class:`DispatchRefused`.
    """
    module_name, name = parse_reference(ref)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure means the same thing
        raise DispatchRefused(f"{ref}: module {module_name} cannot be imported: {exc}") from None
    namespace = vars(module)
    if name not in namespace:
        raise DispatchRefused(f"{ref}: {module_name} defines no {name}")
    obj = namespace[name]
    kind = type(obj)
    if kind is types.FunctionType:
        defined_in, qualname = obj.__module__, obj.__qualname__
    elif getattr(kind, TASK_MARKER, False) or _is_celery_task_type(kind):
        defined_in = vars(obj).get("__module__", getattr(kind, "__module__", None))
        qualname = vars(obj).get("__qualname__", getattr(kind, "__qualname__", None))
        if not _registered(obj, tasks):
            raise DispatchRefused(f"{ref} is not a task registered with this app")
    else:
        raise DispatchRefused(
            f"{ref} is a {kind.__name__}, not a plain function; only module-level functions "
            "and the app's own tasks can be run by reference"
        )
    if defined_in != module_name or qualname != name:
        raise DispatchRefused(
            f"{ref} is not defined in {module_name} (it is {defined_in}:{qualname}, imported "
            "there); refer to functions where they are defined"
        )
    return obj


def _is_celery_task_type(kind: type) -> bool:
    from celery.app.task import Task

    return issubclass(kind, Task)


def _registered(obj: Any, tasks: Mapping[str, Any] | None) -> bool:
    if tasks is None:
        return False
    name = vars(obj).get("name") if hasattr(obj, "__dict__") else None
    if _is_celery_task_type(type(obj)):
        name = type(obj).name
        return isinstance(name, str) and tasks.get(name) is obj
    if not isinstance(name, str) or name not in tasks:
        return False
    run = tasks[name].run
    return getattr(run, "__func__", run) is vars(obj).get("__wrapped__")


class Allowlist:
    """Module prefixes and exact references that a worker may run through submit()."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self._prefixes: set[str] = set()
        self._refs: set[str] = set()
        for entry in entries:
            self.add(entry)

    def add(self, entry: str) -> None:
        """Allow a module prefix (``"myapp.jobs"``) or one reference (``"mod:func"``).

        Raises :class:`ValueError` for anything else.
        """
        if not isinstance(entry, str) or not entry:
            raise ValueError(f"allowlist entry {entry!r} must be 'package.module' or 'module:name'")
        if ":" in entry:
            try:
                parse_reference(entry)
            except DispatchRefused:
                raise ValueError(
                    f"allowlist entry {entry!r} must be 'package.module' or 'module:name'"
                ) from None
            self._refs.add(entry)
        elif _MODULE_RE.fullmatch(entry):
            self._prefixes.add(entry)
        else:
            raise ValueError(f"allowlist entry {entry!r} must be 'package.module' or 'module:name'")

    def allows(self, ref: str) -> bool:
        """Whether the module of ``ref`` (or ``ref`` itself) is listed; imports nothing."""
        if ref in self._refs:
            return True
        module = ref.partition(":")[0]
        return any(module == p or module.startswith(p + ".") for p in self._prefixes)

    def resolve(self, ref: Any, tasks: Mapping[str, Any] | None = None) -> Any:
        """The function or task ``ref`` names, after every check of the module docstring.

        Raises :class:`DispatchRefused` naming the reason.
        """
        parse_reference(ref)
        if not self.allows(ref):
            raise DispatchRefused(
                f"{ref} is not on this worker's submit allowlist {self!r}; add its module "
                "to CELERY_SUBMIT_ALLOWLIST or call celery.allow() for it"
            )
        return defined_object(ref, tasks)

    def __repr__(self) -> str:
        return f"Allowlist({sorted(self._prefixes | self._refs)!r})"


def run_reference(
    allowlist: Allowlist, ref: Any, args: Any, kwargs: Any, tasks: Mapping[str, Any] | None = None
) -> Any:
    """Worker side of submit(): check, import, call.

    Raises :class:`DispatchRefused` for a refused reference or malformed arguments.
    """
    fn = allowlist.resolve(ref, tasks)
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        raise DispatchRefused(f"malformed arguments for {ref}: args must be a list, kwargs a dict")
    if type(fn) is not types.FunctionType and tasks is not None:
        fn = tasks[vars(fn).get("name") or type(fn).name]
    return fn(*args, **kwargs)
