"""Submit plain functions by import reference, checked against an allowlist on both ends.

A function travels as ``"package.module:qualname"`` inside a JSON message, never as pickle.
The submitting side refuses what a worker could never import back (lambdas, closures,
``__main__`` functions, objects that are not plain functions). The worker side checks the
reference against the allowlist *before importing anything*, so a message published by hand
with ``"os:system"`` fails that one task with :class:`DispatchRefused` and the worker goes on.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from typing import Any

from .errors import DispatchRefused, SubmitError

DISPATCH_TASK_NAME = "flask_celerymon.dispatch"


def reference_of(fn: Callable[..., Any]) -> str:
    """The import reference of a plain module-level function; SubmitError otherwise."""
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
    ref = f"{module}:{qualname}"
    try:
        resolved = resolve(ref)
    except Exception as exc:  # noqa: BLE001 - any import failure means the same thing
        raise SubmitError(f"{ref} cannot be imported back by its reference: {exc}") from None
    if inspect.unwrap(resolved) is not target and resolved is not fn:
        raise SubmitError(
            f"{ref} does not resolve to the function given (it is shadowed or decorated "
            "without functools.wraps); submit the module-level name"
        )
    return ref


def resolve(ref: str) -> Any:
    """Import ``module:qualname`` and return the object. Does no allowlist check."""
    module_name, _, qualname = ref.partition(":")
    if not module_name or not qualname:
        raise ValueError(f"{ref!r} is not a 'module:qualname' reference")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class Allowlist:
    """Module prefixes and exact references that a worker may run through submit()."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self._prefixes: set[str] = set()
        self._refs: set[str] = set()
        for entry in entries:
            self.add(entry)

    def add(self, entry: str) -> None:
        """Allow a module prefix (``"myapp.jobs"``) or one reference (``"mod:func"``)."""
        if not isinstance(entry, str) or not entry or entry.startswith((".", ":")):
            raise ValueError(f"allowlist entry {entry!r} must be 'package.module' or 'module:name'")
        (self._refs if ":" in entry else self._prefixes).add(entry)

    def allows(self, ref: str) -> bool:
        if ref in self._refs:
            return True
        module = ref.partition(":")[0]
        return any(module == p or module.startswith(p + ".") for p in self._prefixes)

    def __repr__(self) -> str:
        return f"Allowlist({sorted(self._prefixes | self._refs)!r})"


def run_reference(allowlist: Allowlist, ref: Any, args: Any, kwargs: Any) -> Any:
    """Worker side of submit(): check, import, call. Raises DispatchRefused when not allowed."""
    if not isinstance(ref, str) or ":" not in ref:
        raise DispatchRefused(f"malformed function reference {ref!r}; expected 'module:name'")
    if not allowlist.allows(ref):
        raise DispatchRefused(
            f"{ref} is not on this worker's submit allowlist {allowlist!r}; add its module "
            "to CELERY_SUBMIT_ALLOWLIST or call celery.allow() for it"
        )
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        raise DispatchRefused(f"malformed arguments for {ref}: args must be a list, kwargs a dict")
    fn = resolve(ref)
    if not inspect.isfunction(inspect.unwrap(fn)) and not callable(getattr(fn, "run", None)):
        raise DispatchRefused(f"{ref} is not a plain function")
    return fn(*args, **kwargs)
