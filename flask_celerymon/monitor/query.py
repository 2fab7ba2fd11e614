"""The task search language and the filters of a task query.

The language is Flower's (``docs/tasks_filter.rst`` and its datatable search box)::

    add                       substring of name, worker, state, args, kwargs or result,
                              or a prefix of the uuid
    "two words"               a quoted phrase is one term
    name:add  worker:w1       substring of the task name / worker hostname
    state:failure             exact state, any case
    args:42  result:ok        substring of args / result repr
    kwargs:user=7             exact keyword value (``'user': 7`` or ``'user': '7'``)
    kwargs:user               substring of the kwargs repr
    a b                       implicit AND
    a AND b, a OR b, ( )      explicit operators (upper case), AND binds tighter than OR

Substring terms (bare, ``args:``, ``result:``, ``kwargs:`` without ``=``) need at least
3 characters, as in Flower, so the SQLite store can answer them from a trigram index. Matching
is case-sensitive except for ``state:``. There is no negation.

:func:`parse` turns a string into a tree of :class:`Term`, :class:`And` and :class:`Or` and
raises :class:`SearchError` (a ``ValueError``) with a message fit for the user when the string
is not valid. :func:`compile_python` and :func:`compile_sql` turn a tree into a predicate over
in-memory tasks or an SQL condition over the history store.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Union

from ..errors import InvalidInput

MIN_TERM = 3

#: Qualifiers and what they match.
QUALIFIERS = ("name", "state", "worker", "args", "kwargs", "result")

#: Columns ``sort_by`` accepts (a leading ``-`` sorts descending).
SORT_KEYS = ("name", "state", "received", "started", "runtime", "timestamp", "succeeded", "sent")

STATES = (
    "PENDING",
    "RECEIVED",
    "STARTED",
    "SUCCESS",
    "FAILURE",
    "RETRY",
    "REVOKED",
    "REJECTED",
    "IGNORED",
    "LOST",
)


class SearchError(InvalidInput):
    """A search string or a filter value is not valid; the message says what to fix."""


@dataclass(frozen=True)
class Term:
    """One search term. ``field`` is ``any``, a qualifier, or ``kwarg`` (then ``key`` is set)."""

    field: str
    value: str
    key: str | None = None


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


Node = Union[Term, And, Or]

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<lp>\()
  | (?P<rp>\))
  | (?P<word>(?:[^\s()"]|"(?:\\.|[^"\\])*")+)
  | (?P<bad>")
    """,
    re.VERBOSE,
)


def _unquote(text: str) -> str:
    """Remove the quotes of quoted parts and their backslash escapes."""
    if '"' not in text:
        return text
    out = []
    for m in re.finditer(r'"((?:\\.|[^"\\])*)"|([^"]+)', text):
        if m.group(1) is not None:
            out.append(re.sub(r"\\(.)", r"\1", m.group(1)))
        else:
            out.append(m.group(2))
    return "".join(out)


def _tokens(text: str) -> list[tuple[str, str]]:
    toks: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.lastgroup == "bad":
            raise SearchError(f"unterminated quote at position {pos + 1} in search {text!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "ws":
            toks.append((kind, m.group()))
    return toks


def _term(raw: str) -> Term:
    if raw in ("AND", "OR"):
        raise SearchError(f"{raw} needs a term on both sides")
    qualifier, sep, rest = raw.partition(":")
    if sep and qualifier in QUALIFIERS:
        value = _unquote(rest)
        if not value:
            raise SearchError(f"{qualifier}: needs a value, e.g. {qualifier}:something")
        if qualifier == "state":
            return Term("state", value.upper())
        if qualifier == "kwargs" and "=" in value:
            key, _, kval = (p.strip() for p in value.partition("="))
            if not key:
                raise SearchError(f"kwargs:{value} needs a keyword name before '='")
            return Term("kwarg", kval, key)
        if qualifier in ("args", "kwargs", "result") and len(value) < MIN_TERM:
            raise SearchError(
                f"{qualifier}:{value} is too short: substring terms need at least "
                f"{MIN_TERM} characters"
            )
        return Term(qualifier, value)
    value = _unquote(raw)
    if len(value) < MIN_TERM:
        raise SearchError(
            f"search term {value!r} is too short: terms need at least {MIN_TERM} characters"
        )
    return Term("any", value)


def parse(text: str | None) -> Node | None:
    """Parse a search string; None for an empty one. Raises :class:`SearchError`."""
    if text is None or not text.strip():
        return None
    if len(text) > 1000:
        raise SearchError("search is too long: at most 1000 characters")
    toks = _tokens(text)
    pos = 0

    def peek() -> tuple[str, str] | None:
        return toks[pos] if pos < len(toks) else None

    def parse_or(depth: int) -> Node:
        nonlocal pos
        items = [parse_and(depth)]
        while (t := peek()) is not None and t == ("word", "OR"):
            pos += 1
            if peek() is None or peek()[0] == "rp":  # type: ignore[index]
                raise SearchError("OR needs a term on both sides")
            items.append(parse_and(depth))
        return items[0] if len(items) == 1 else Or(tuple(items))

    def parse_and(depth: int) -> Node:
        nonlocal pos
        items = [parse_unary(depth)]
        while (t := peek()) is not None and t[0] != "rp" and t != ("word", "OR"):
            if t == ("word", "AND"):
                pos += 1
                nxt = peek()
                if nxt is None or nxt[0] == "rp" or nxt == ("word", "OR"):
                    raise SearchError("AND needs a term on both sides")
            items.append(parse_unary(depth))
        return items[0] if len(items) == 1 else And(tuple(items))

    def parse_unary(depth: int) -> Node:
        nonlocal pos
        t = peek()
        if t is None:
            raise SearchError("search ends where a term was expected")
        kind, raw = t
        if kind == "lp":
            if depth >= 20:
                raise SearchError("search nests parentheses too deeply (20 levels at most)")
            pos += 1
            if peek() is not None and peek()[0] == "rp":  # type: ignore[index]
                raise SearchError("empty parentheses in search")
            node = parse_or(depth + 1)
            if peek() is None or peek()[0] != "rp":  # type: ignore[index]
                raise SearchError("missing ')' in search")
            pos += 1
            return node
        if kind == "rp":
            raise SearchError("unbalanced ')' in search")
        pos += 1
        return _term(raw)

    node = parse_or(0)
    if pos != len(toks):
        raise SearchError("unbalanced ')' in search")
    return node


# -- evaluation over in-memory tasks --------------------------------------------------------


def kwarg_pattern(key: str, value: str) -> re.Pattern[str]:
    """A regex finding ``key=value`` in a kwargs repr (``{'key': value}`` or quoted value)."""
    k = re.escape(key)
    v = re.escape(value)
    return re.compile(rf"""['"]{k}['"]: (?:'{v}'|"{v}"|{v})(?=,|\}}|$)""")


def compile_python(
    node: Node | None, values: Callable[[str], Iterable[str]] | None = None
) -> Callable[[Iterable[Any]], list[Any]]:
    """A function filtering task records by the tree ``node``.

    Records need ``uuid name state worker`` strings, ``text`` (args, kwargs and result joined
    by NUL) and ``args``/``kwargs``/``result`` (``""`` when unknown). The filter is generated
    code, one list comprehension with the search terms bound as constants. ``values(field)``
    lists the distinct names/workers/states so a bare term tests them once per query instead
    of once per task; checks that cannot match are left out of the generated code.
    """
    if node is None:
        return list
    consts: dict[str, Any] = {}

    def const(value: Any) -> str:
        name = f"_c{len(consts)}"
        consts[name] = value
        return name

    def gen(n: Node) -> str:
        if isinstance(n, And):
            return "(" + " and ".join(gen(i) for i in n.items) + ")"
        if isinstance(n, Or):
            return "(" + " or ".join(gen(i) for i in n.items) + ")"
        v = n.value.replace("\x00", "")
        c = const(v)
        if n.field == "any":
            checks = [f"{c} in t.text"]
            for attr in ("name", "worker", "state"):
                if values is None:
                    checks.append(f"{c} in t.{attr}")
                else:
                    hits = frozenset(x for x in values(attr) if v in x)
                    if hits:
                        checks.append(f"t.{attr} in {const(hits)}")
            if _HEX.fullmatch(v):
                checks.append(f"t.uuid.startswith({c})")
            return "(" + " or ".join(checks) + ")"
        if n.field == "state":
            return f"t.state == {c}"
        if n.field in ("name", "worker") and values is not None:
            return f"t.{n.field} in {const(frozenset(x for x in values(n.field) if v in x))}"
        if n.field == "kwarg":
            r = const(kwarg_pattern(n.key or "", n.value).search)
            lits = [f": {n.value}", f": '{n.value}'", f': "{n.value}"']
            pre = " or ".join(f"{const(x)} in t.text" for x in lits)
            return f"(({pre}) and {r}(t.kwargs) is not None)"
        # the NUL-separated parts of t.text: args | kwargs | result
        if n.field == "args":
            return f"({c} in t.text and t.text.find({c}, 0, t.text.index(_S)) != -1)"
        if n.field == "kwargs":
            return (
                f"({c} in t.text and t.text.find({c}, t.text.index(_S), t.text.rindex(_S)) != -1)"
            )
        if n.field == "result":
            return f"({c} in t.text and t.text.find({c}, t.text.rindex(_S)) != -1)"
        return f"{c} in t.{n.field}"

    def cost(n: Node) -> int:
        """Cheap checks first so AND short-circuits early."""
        if isinstance(n, Term):
            return {"state": 0, "name": 1, "worker": 1}.get(n.field, 5)
        return 9

    def order(n: Node) -> Node:
        if isinstance(n, And):
            return And(tuple(sorted((order(i) for i in n.items), key=cost)))
        if isinstance(n, Or):
            return Or(tuple(order(i) for i in n.items))
        return n

    node = order(node)
    consts["_S"] = "\x00"

    src = f"lambda seq: [t for t in seq if {gen(node)}]"
    fn: Callable[[Iterable[Any]], list[Any]] = eval(  # noqa: S307 - constants only
        compile(src, "<search>", "eval"), consts
    )
    return fn


_HEX = re.compile(r"[0-9a-fA-F-]+")


# -- SQL ------------------------------------------------------------------------------------


def _fts_phrase(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def kwarg_literals(key: str, value: str) -> list[str]:
    """The texts ``kwargs:key=value`` can appear as in a kwargs repr (for the index).

    Celery's ``kwargsrepr`` is a Python repr, so the key is written as ``repr(key)`` and the
    value either bare (numbers, ``True``...) before ``,`` or ``}``, or as a string repr.
    """
    k = f"{key!r}: "
    return [f"{k}{value},", f"{k}{value}}}", f"{k}{value!r}"]


#: text_match(columns, phrases, params) -> SQL condition true when a column contains a phrase.
TextMatch = Callable[[tuple[str, ...], list[str], list[Any]], str]


def fts_match_expr(columns: tuple[str, ...], phrases: list[str]) -> str:
    """The FTS5 MATCH expression finding any of ``phrases`` in ``columns``."""
    return f"{{{' '.join(columns)}}} : ({' OR '.join(_fts_phrase(p) for p in phrases)})"


def instr_sql(columns: tuple[str, ...], phrases: list[str], params: list[Any]) -> str:
    """A scan condition: one of ``columns`` contains one of ``phrases`` (case-sensitive)."""
    params.extend(p for _ in columns for p in phrases)
    return "(" + " OR ".join(f"instr({c}, ?) > 0" for c in columns for _ in phrases) + ")"


#: The condition of a term that matches nothing (a name no task has).
_FALSE = "1 = 0"


def compile_sql(
    node: Node | None,
    text_match: TextMatch | None = None,
    values: Callable[[str, str], list[str]] | None = None,
    values_in_or_only: bool = False,
) -> tuple[str, list[Any]]:
    """An SQL condition over the store's ``tasks`` table and its parameters.

    Substring terms over args/kwargs/result use the FTS5 trigram index ``tasks_fts`` for
    rows up to ``fts_state.upto`` (the store indexes in the background) and ``instr`` for
    newer rows; a case-sensitive trigram phrase matches exactly what :func:`compile_python`
    matches. Names, workers and states are matched against the small ``task_names`` /
    ``task_workers`` tables and then looked up through their indexes. ``kwargs:k=v`` finds
    candidates through the index and confirms with ``kwarg_match(kwargs, key, value)``, an SQL
    function the store registers. ``text_match`` replaces how substring conditions are
    written (the store uses it to pick the index or a scan per term). ``values(field, v)``,
    when given, lists the distinct names (``field`` ``"name"``) or workers containing ``v``:
    the condition then names them (``name IN (...)``, an index lookup that can join an
    ``OR`` of index scans) instead of a subquery over ``task_names`` / ``task_workers``;
    with ``values_in_or_only`` only for terms inside an ``OR`` (a bare term is one).
    """
    if node is None:
        return "1", []
    node = _distribute(node)
    params: list[Any] = []

    def default_text_match(columns: tuple[str, ...], phrases: list[str], ps: list[Any]) -> str:
        ps.append(fts_match_expr(columns, phrases))
        tail = instr_sql(columns, phrases, ps)
        return (
            "(id IN (SELECT rowid FROM tasks_fts WHERE tasks_fts MATCH ?) "
            f"OR (id > (SELECT upto FROM fts_state) AND {tail}))"
        )

    matcher = text_match or default_text_match

    def text_match_(columns: tuple[str, ...], phrases: list[str]) -> str:
        return matcher(columns, phrases, params)

    def distinct_match(field: str, v: str, in_or: bool) -> str:
        if values is not None and (in_or or not values_in_or_only):
            hits = values(field, v)
            params.extend(hits)
            return f"{field} IN ({', '.join('?' for _ in hits)})" if hits else _FALSE
        params.append(v)
        if field == "name":
            return "name IN (SELECT name FROM task_names WHERE instr(name, ?) > 0)"
        return "worker IN (SELECT worker FROM task_workers WHERE instr(worker, ?) > 0)"

    def any_of(conds: list[str]) -> str:
        # A branch known false (no name or worker contains the text) is left out: SQLite
        # answers an OR from its indexes only when every branch has one, and "1 = 0" has
        # none (a full scan, 5.6 s at a million tasks, for a term no name contains).
        kept = [c for c in conds if c != _FALSE]
        return "(" + " OR ".join(kept) + ")" if kept else _FALSE

    def gen(n: Node, in_or: bool = False) -> str:
        if isinstance(n, And):
            return "(" + " AND ".join(gen(i, in_or) for i in n.items) + ")"
        if isinstance(n, Or):
            return any_of([gen(i, True) for i in n.items])
        v = n.value.replace("\x00", "")
        if n.field == "state":
            params.append(v)
            return "state = ?"
        if n.field in ("name", "worker"):
            return distinct_match(n.field, v, in_or)
        if n.field == "kwarg":
            key = n.key or ""
            cond = text_match_(("kwargs",), kwarg_literals(key, v))
            params.extend([key, v])
            return f"({cond} AND kwarg_match(kwargs, ?, ?))"
        if n.field == "any":
            conds = [
                text_match_(("args", "kwargs", "result"), [v]),
                distinct_match("name", v, True),
                distinct_match("worker", v, True),
            ]
            states = [s for s in STATES if v in s]
            if states:
                conds.append(f"state IN ({', '.join('?' for _ in states)})")
                params.extend(states)
            if _HEX.fullmatch(v):
                conds.append("(uuid >= ? AND uuid < ?)")
                params.extend([v, v + "\uffff"])
            return any_of(conds)
        return text_match_((n.field,), [v])

    return gen(node), params


def _distribute(node: Node, budget: int = 8) -> Node:
    """Rewrite ``a AND (b OR c)`` as ``(a AND b) OR (a AND c)`` (same matches).

    SQLite answers an OR whose branches each have an indexed condition by a union of index
    lookups; an AND of an indexed filter with an OR that mixes index and text conditions
    would otherwise read every row of the filter. Stops when the result would have more than
    ``budget`` branches.
    """
    if isinstance(node, Or):
        return Or(tuple(_distribute(i, budget) for i in node.items))
    if not isinstance(node, And):
        return node
    items = [_distribute(i, budget) for i in node.items]
    ors = [i for i in items if isinstance(i, Or)]
    if not ors:
        return And(tuple(items))
    first = ors[0]
    if len(first.items) > budget:
        return And(tuple(items))
    rest = [i for i in items if i is not first]
    return Or(tuple(_distribute(And((*rest, b)), budget // len(first.items)) for b in first.items))


def parse_sort(sort_by: str | None) -> tuple[str, bool]:
    """``'-received'`` -> ``('received', True)``. None sorts newest received first.

    Raises :class:`SearchError` naming the valid keys for an unknown one.
    """
    if not sort_by:
        return "received", True
    desc = sort_by.startswith("-")
    key = sort_by[1:] if desc else sort_by
    if key not in SORT_KEYS:
        raise SearchError(f"cannot sort by {sort_by!r}; use one of {', '.join(SORT_KEYS)}")
    return key, desc
