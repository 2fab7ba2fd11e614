"""Error fingerprints: which failures are "the same error".

A failure is identified by its task name, its exception type and its message with the parts
that change from one occurrence to the next folded away: UUIDs, hex strings, numbers and
quoted values. ``ValueError("order 1234 of 'alice' failed")`` and ``ValueError("order 98 of
'bob' failed")`` are one group, ``order <n> of '<str>' failed``.

Pure functions; no I/O.
"""

from __future__ import annotations

import ast
import hashlib
import re
from typing import Any

__all__ = ["fingerprint", "normalise_message", "split_exception"]

#: Longest normalised message kept (the rest is cut: it rarely tells groups apart).
MAX_MESSAGE = 300

_REPR = re.compile(r"^\s*([A-Za-z_][\w.]*)\((.*)\)\s*$", re.S)
_TYPE_PREFIX = re.compile(
    r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning))\s*:\s*(.*)$", re.S
)
_FOLDS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"'(?:[^'\\\n]|\\.)*'"), "'<str>'"),
    (re.compile(r'"(?:[^"\\\n]|\\.)*"'), '"<str>"'),
    (
        re.compile(
            r"\b[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\b"
        ),
        "<uuid>",
    ),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<hex>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*[0-9])(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b"), "<hex>"),
    (re.compile(r"(?<![\w.])[-+]?\d+(?:[.,:]\d+)*(?:[eE][-+]?\d+)?"), "<n>"),
    (re.compile(r"(?<=[A-Za-z_])\d+(?:[.:]\d+)*\b"), "<n>"),
    (re.compile(r"\s+"), " "),
)


def split_exception(exception: str | None) -> tuple[str, str]:
    """``(type, message)`` of an exception as events carry it.

    ``"ValueError('boom 42')"`` (a repr, as in ``task-failed``) gives ``("ValueError",
    "boom 42")``; ``"KeyError: 'x'"`` gives ``("KeyError", "'x'")``; anything else gives
    ``("", text)``. Never raises.
    """
    if not isinstance(exception, str):  # events carry what the sender put there
        exception = "" if exception is None else str(exception)
    text = exception.strip()
    m = _REPR.match(text)
    if m:
        etype, inner = m.group(1), m.group(2)
        try:
            value: tuple[Any, ...] = ast.literal_eval(f"({inner},)") if inner.strip() else ()
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            return etype, inner.strip()
        if len(value) == 1 and isinstance(value[0], str):
            return etype, value[0]
        return etype, ", ".join(repr(v) for v in value)
    m = _TYPE_PREFIX.match(text)
    if m:
        return m.group(1), m.group(2).strip()
    return "", text


def normalise_message(message: str) -> str:
    """``message`` with UUIDs, hex, numbers and quoted values folded to placeholders."""
    out = message
    for pattern, repl in _FOLDS:
        out = pattern.sub(repl, out)
    out = out.strip()
    return out[:MAX_MESSAGE]


def fingerprint(task_name: str, exception: str | None) -> tuple[str, str, str]:
    """``(group id, exception type, normalised message)`` of one failure.

    The id is 16 hex digits of a SHA-256 over the three parts: stable across processes and
    restarts.
    """
    etype, message = split_exception(exception)
    norm = normalise_message(message)
    digest = hashlib.sha256("\x00".join((task_name or "", etype, norm)).encode()).hexdigest()
    return digest[:16], etype, norm
