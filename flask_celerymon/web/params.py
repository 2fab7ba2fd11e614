"""Every HTTP parameter of the monitor, declared once: parsing, validation and the OpenAPI text.

A view declares what it reads with :func:`use_params` (a `webargs`_ parser over a
`marshmallow`_ schema built once, at import of the view's module, never per request)::

    @use_params(limit=Int(TASKS_LIMIT), sort_by=Choice(SORT_CHOICES))
    def list_tasks(limit: int | None, sort_by: str | None) -> Response: ...

The same declaration

* parses the request (query string, then a form body, then a JSON object body, as Flower's
  ``get_argument`` plus JSON) and hands the values to the view as keyword arguments;
* refuses bad input with :class:`BadParameter` (a :class:`ValueError`), whose message names
  the parameter, the accepted values and the value given (``"limit must be an integer from 0
  to 1000000, not 'x'"``); the API answers it with ``400 {"error": message}``, the pages with
  their 400 page;
* is turned into the OpenAPI parameters of the view by :mod:`.openapi` (through apispec's
  marshmallow plugin, which asks each field for :meth:`Param.openapi`).

The parameter names are Flower 2.2's (``workername``, ``taskname``, ``received_start``,
``sort_by``...), and so are its lenient forms: ``strtobool`` words for booleans, ``All`` for
"no filter", ``%Y-%m-%d %H:%M`` dates. An empty value means "not given" (an empty form
field), except where a text is required.

.. _webargs: https://webargs.readthedocs.io/
.. _marshmallow: https://marshmallow.readthedocs.io/
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast, overload

import marshmallow as ma
from flask import request
from webargs.flaskparser import FlaskParser

from ..errors import InvalidInput
from ..monitor.control import SIGNAL_HINT, SIGNALS, signal_name
from ..monitor.query import SORT_KEYS
from .hardening import JSONTooDeep, load_json

F = TypeVar("F", bound=Callable[..., Any])

#: Flower's date formats: ``received_start``/``received_end`` and apply's ``eta``/``expires``.
LIST_DATE_FORMAT = "%Y-%m-%d %H:%M"
APPLY_DATE_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

#: Longest wait of ``/api/task/apply`` and ``/api/task/result`` (seconds).
MAX_WAIT = 3600.0
#: Default and largest number of tasks a bulk action handles in one request.
BULK_LIMIT = 1000
BULK_MAX = 10_000
#: Largest ``n`` of pool grow/shrink and ``max`` of autoscale.
MAX_POOL_STEP = 1000
#: Longest countdown, expiry and time limit accepted (seconds: ten years).
MAX_SECONDS = 10 * 365 * 86400
#: Latest Unix time accepted by the time filters (9999-12-31 23:59:59 UTC).
MAX_UNIX_TIME = 253_402_300_799


class BadParameter(InvalidInput):
    """A request parameter is missing or not valid; the message names it and says what fits.

    ``status`` is always 400. An :class:`~flask_celerymon.errors.InvalidInput`, so the one
    error handler (:mod:`.errors`) answers it: ``{"error": message}`` on the API, the 400
    page on a page.
    """

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Range:
    """The documented range of a number parameter, inclusive at both ends.

    The one declaration of each bound: :class:`Int`/:class:`Float`/:class:`JsonNumber` refuse a
    value outside it naming the parameter and the range, and the OpenAPI document carries it
    (``minimum``/``maximum``). Every bound fits SQLite's 64-bit integers.
    """

    minimum: float
    maximum: float
    integer: bool = True

    def schema(self) -> dict[str, Any]:
        """The OpenAPI schema of a value in this range."""
        kind = "integer" if self.integer else "number"
        return {"type": kind, "minimum": self.minimum, "maximum": self.maximum}

    def text(self) -> str:
        """``"an integer from 0 to 10000"``, for error messages and the docs."""
        kind = "an integer" if self.integer else "a number"
        return f"{kind} from {_plain(self.minimum)} to {_plain(self.maximum)}"


def _plain(x: float) -> str:
    """``1000000`` rather than ``1e+06``."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


#: ``ratelimit`` of ``/api/task/rate-limit``: Celery's syntax (tasks per second, or per
#: ``/s``, ``/m``, ``/h``); matched with ``re.search`` as JSON Schema's ``pattern`` is.
RATE_PATTERN = r"^[0-9]{1,9}(\.[0-9]{1,6})?(/[smh])?$"
#: Every value of ``sort_by`` (``-`` for descending).
SORT_CHOICES = tuple(f"{d}{k}" for k in SORT_KEYS for d in ("", "-"))

#: ``limit`` and ``offset`` of ``GET /api/tasks``.
TASKS_LIMIT = Range(0, 1_000_000)
TASKS_OFFSET = Range(0, 1_000_000_000)
#: ``limit`` of the bulk actions and of ``GET /api/queues/messages``.
BULK_RANGE = Range(1, BULK_MAX)
MESSAGES_LIMIT = Range(0, BULK_MAX)
#: ``n`` of pool grow/shrink, ``min``/``max`` of autoscale.
POOL_STEP = Range(1, MAX_POOL_STEP)
POOL_MIN = Range(0, MAX_POOL_STEP)
POOL_MAX = Range(1, MAX_POOL_STEP)
#: ``timeout`` of result and apply (seconds).
WAIT = Range(0, MAX_WAIT, integer=False)
#: ``soft``/``hard`` time limits, ``countdown``, ``expires``, ``(soft_)time_limit`` (seconds).
SECONDS = Range(0, MAX_SECONDS, integer=False)
#: apply's ``priority`` (AMQP's 0-255; Redis uses 0-9) and ``retries``.
PRIORITY = Range(0, 255)
RETRIES = Range(0, 1_000_000)
#: The time filters given as Unix seconds.
UNIX_TIME = Range(0, MAX_UNIX_TIME, integer=False)

TRUE = frozenset({"y", "yes", "t", "true", "on", "1"})
FALSE = frozenset({"n", "no", "f", "false", "off", "0", ""})


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c}]" if c.isalpha() else c for c in word)


#: The texts a boolean parameter takes (Flower's ``strtobool`` words in any case, or empty for
#: the default), as a JSON Schema ``pattern`` matched with ``re.search`` (as JSON Schema is).
BOOL_PATTERN = "^(" + "|".join(_any_case(w) for w in sorted(TRUE | FALSE) if w) + ")?$"


_STR: dict[str, Any] = {"type": "string"}
#: A required text: at least one character that is not white space.
_TEXT: dict[str, Any] = {"type": "string", "minLength": 1, "pattern": "\\S"}
_EMPTY: dict[str, Any] = {"type": "string", "maxLength": 0}
#: A queue, exchange or routing key name: no control character (see
#: :func:`~flask_celerymon.monitor.queues.check_queue_name`).
QUEUE_NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"


# -- the fields --------------------------------------------------------------------------------


class Param(ma.fields.Field):
    """A request parameter: the base of every field here.

    A value that :meth:`empty` calls empty (None, ``""``) counts as not given: the view gets
    ``default``, or :class:`BadParameter` ``"missing parameter 'name'"`` when ``required``.
    Subclasses parse in :meth:`parse` and describe themselves in :meth:`openapi`.
    """

    def __init__(
        self, *, default: Any = None, required: bool = False, description: str = "", **kw: Any
    ) -> None:
        metadata = {"description": description} if description else {}
        super().__init__(required=required, metadata=metadata, **kw)
        self.default = default

    @property
    def param(self) -> str:
        """The parameter's name in the request."""
        return self.data_key or self.name or "?"

    def empty(self, value: Any) -> bool:
        """Whether ``value`` counts as not given."""
        return value is None or value == ""

    def deserialize(self, value: Any, attr: Any = None, data: Any = None, **kw: Any) -> Any:
        if value is ma.missing or self.empty(value):
            if self.required:
                raise BadParameter(f"missing parameter {self.param!r}")
            return self.default
        return self.parse(value)

    def parse(self, value: Any) -> Any:
        """The value the view gets for the given ``value``; raises :class:`BadParameter`."""
        return value

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI 3.0 schema of the parameter."""
        return dict(_STR)

    def bad(self, what: str, value: Any) -> BadParameter:
        return BadParameter(f"{self.param} must be {what}, not {value!r}")


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and value.strip() == "")


class Text(Param):
    """A text; white space alone counts as not given. Stripped unless ``strip=False``."""

    def __init__(self, *, strip: bool = True, **kw: Any) -> None:
        super().__init__(**kw)
        self.strip = strip

    def empty(self, value: Any) -> bool:
        return not _present(value)

    def parse(self, value: Any) -> str:
        if not isinstance(value, str):
            raise BadParameter(f"{self.param} must be a string, not {value!r}")
        return value.strip() if self.strip else value

    def openapi(self) -> dict[str, Any]:
        return dict(_TEXT if self.required else _STR)


class Pattern(Text):
    """A required text matching ``pattern`` (``re.search``, as JSON Schema), stripped."""

    def __init__(self, pattern: str, example: str, **kw: Any) -> None:
        super().__init__(required=True, **kw)
        self.pattern = pattern
        self.example = example

    def parse(self, value: Any) -> str:
        if not isinstance(value, str) or not re.search(self.pattern, value):
            raise self.bad(f"like {self.example}", value)
        return value.strip()

    def openapi(self) -> dict[str, Any]:
        return {"type": "string", "pattern": self.pattern}


class QueueName(Text):
    """A required queue name: a non-blank text without control characters anywhere (checked
    before the surrounding white space is stripped; see
    :func:`~flask_celerymon.monitor.queues.check_queue_name`)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(required=True, **kw)

    def parse(self, value: Any) -> str:
        from ..monitor.queues import check_queue_name

        if isinstance(value, str):
            try:
                check_queue_name(value, self.param)
            except InvalidInput as exc:
                raise BadParameter(str(exc)) from None
        return super().parse(value)

    def openapi(self) -> dict[str, Any]:
        # a non-blank text (as Text requires) of the characters QUEUE_NAME_PATTERN allows
        blank_free = r"^(?=[\s\S]*\S)" + QUEUE_NAME_PATTERN[1:]
        return {"type": "string", "minLength": 1, "pattern": blank_free}


class Choice(Param):
    """One of ``choices``, exactly as given (stripped first when ``strip``).

    The message says ``shown``, or ``one of a, b, c``.
    """

    def __init__(
        self, choices: tuple[str, ...], *, shown: str | None = None, strip: bool = False,
        **kw: Any,
    ) -> None:  # fmt: skip
        super().__init__(**kw)
        self.choices = tuple(choices)
        self.shown = shown or "one of " + ", ".join(self.choices)
        self.strip = strip

    def empty(self, value: Any) -> bool:
        return (not _present(value)) if self.strip else (value is None or value == "")

    def parse(self, value: Any) -> str:
        if self.strip:
            if not isinstance(value, str):
                raise BadParameter(f"{self.param} must be a string, not {value!r}")
            value = value.strip()
        if value not in self.choices:
            raise self.bad(self.shown, value)
        return value

    def openapi(self) -> dict[str, Any]:
        return {"type": "string", "enum": ["", *self.choices]}


class Signal(Choice):
    """A signal name (``SIGTERM``, ``TERM``, ``kill``...), given to the view as ``SIGTERM``."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(SIGNALS, shown=SIGNAL_HINT, default="SIGTERM", **kw)

    def parse(self, value: Any) -> str:
        return signal_name(super().parse(value))


class Bool(Param):
    """A boolean: a text matching :data:`BOOL_PATTERN` (empty: ``default``), or a JSON
    boolean, 0 or 1. Anything else is refused, unless ``lenient`` (then it is False, as the
    pages' ``?refresh=`` and ``?json=`` always were)."""

    def __init__(self, *, default: bool = False, lenient: bool = False, **kw: Any) -> None:
        super().__init__(default=default, **kw)
        self.lenient = lenient

    def empty(self, value: Any) -> bool:
        return value is None

    def parse(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if self.lenient:
            return str(value).strip().lower() in TRUE
        if isinstance(value, str) and re.search(BOOL_PATTERN, value):
            text = value.strip().lower()
            return True if text in TRUE else (False if text else self.default)
        raise self.bad("a boolean (1/0, true/false, yes/no)", value)

    def openapi(self) -> dict[str, Any]:
        return {"type": "string", "pattern": BOOL_PATTERN}


#: Number texts: ASCII digits only (Python's int() and float() also take other scripts' digits,
#: ``_`` separators, white space, ``inf`` and ``nan``).
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


class Int(Param):
    """An integer within ``bounds`` (a text of ASCII digits, or a JSON integer)."""

    def __init__(self, bounds: Range, **kw: Any) -> None:
        super().__init__(**kw)
        self.bounds = bounds

    def parse(self, value: Any) -> int:
        if isinstance(value, str) and _INT_TEXT.fullmatch(value):
            n = int(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            n = value
        else:
            raise self.bad(self.bounds.text(), value)
        if not self.bounds.minimum <= n <= self.bounds.maximum:
            raise self.bad(self.bounds.text(), value)
        return n

    def openapi(self) -> dict[str, Any]:
        schema = self.bounds.schema()
        # an empty value (an empty form field) means the default
        return schema if self.required else {"anyOf": [schema, dict(_EMPTY)]}


class Float(Int):
    """A finite number within ``bounds`` (a number text, or a JSON number)."""

    def parse(self, value: Any) -> float:  # type: ignore[override]
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value):
            f = float(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                f = float(value)
            except OverflowError:
                raise self.bad(self.bounds.text(), value) from None
        else:
            raise self.bad(self.bounds.text(), value)
        if not (math.isfinite(f) and self.bounds.minimum <= f <= self.bounds.maximum):
            raise self.bad(self.bounds.text(), value)
        return f


def _parse_date(text: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(text, LIST_DATE_FORMAT)
    except ValueError:
        return dt.datetime.fromisoformat(text)


class Time(Text):
    """Flower's ``%Y-%m-%d %H:%M`` (local time), ISO 8601, or Unix seconds; given to the view
    as Unix seconds within :data:`UNIX_TIME` (1970 to 9999)."""

    def parse(self, value: Any) -> float:  # type: ignore[override]
        bad = BadParameter(
            f"{self.param} must be a date like '2024-01-31 13:45' (local time), ISO 8601 or "
            f"Unix seconds from 0 to {MAX_UNIX_TIME}, not {value!r}"
        )
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad
        try:
            if isinstance(value, str):
                text = value.strip()
                digits = text.replace(".", "", 1)
                if digits.isascii() and digits.isdigit():
                    seconds = float(text)
                else:
                    seconds = _parse_date(text).timestamp()
            else:
                seconds = float(value)
        except (ValueError, OverflowError, OSError):
            raise bad from None
        if not (math.isfinite(seconds) and UNIX_TIME.minimum <= seconds <= UNIX_TIME.maximum):
            raise bad
        return seconds


class Names(Text):
    """One value, or several separated by commas (or a JSON array of texts); ``All`` means no
    filter, as in Flower. Given to the view as a tuple, or None."""

    def empty(self, value: Any) -> bool:
        return not _present(value) or value == "All"

    def parse(self, value: Any) -> tuple[str, ...] | None:  # type: ignore[override]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            items = [v.strip() for v in value]
        elif isinstance(value, str):
            items = [v.strip() for v in value.split(",")]
        else:
            raise BadParameter(f"{self.param} must be a string, not {value!r}")
        return tuple(v for v in items if v and v != "All") or None


class UtcTime(Text):
    """A UTC time like ``2026-01-31 13:45`` (seconds and ``T`` allowed) for the pages; given to
    the view as the text, stripped (the page keeps it in its links)."""

    FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M")

    def __init__(self, **kw: Any) -> None:
        super().__init__(default="", **kw)

    def parse(self, value: Any) -> str:
        text = super().parse(value)
        utc_seconds(self.param, text)
        return text

    def openapi(self) -> dict[str, Any]:
        return {"type": "string", "format": "date-time"}


def utc_seconds(name: str, value: str) -> float:
    """``value`` (a :class:`UtcTime` text) as Unix seconds; :class:`BadParameter` otherwise."""
    for pattern in UtcTime.FORMATS:
        try:
            d = dt.datetime.strptime(value.strip(), pattern)
        except ValueError:
            continue
        return d.replace(tzinfo=dt.timezone.utc).timestamp()
    raise BadParameter(f"{name} must be a UTC time like 2026-01-31 13:45, not {value!r}")


# -- fields of a JSON body (typed: "5" is not a number there) ---------------------------------


class JsonNumber(Param):
    """A JSON number within ``bounds`` (an integer when the range is); null means not given."""

    def __init__(self, bounds: Range, **kw: Any) -> None:
        super().__init__(**kw)
        self.bounds = bounds

    def empty(self, value: Any) -> bool:
        return value is None

    def parse(self, value: Any) -> Any:
        integer_ok = isinstance(value, int) and not isinstance(value, bool)
        if not (integer_ok or (not self.bounds.integer and isinstance(value, float))):
            raise self.bad(self.bounds.text(), value)
        if not (math.isfinite(value) and self.bounds.minimum <= value <= self.bounds.maximum):
            raise self.bad(self.bounds.text(), value)
        return value

    def openapi(self) -> dict[str, Any]:
        return {**self.bounds.schema(), "nullable": True}


class JsonText(Param):
    """A JSON string, non-empty unless ``allow_empty``; null means not given."""

    def __init__(self, *, allow_empty: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.allow_empty = allow_empty

    def empty(self, value: Any) -> bool:
        return value is None

    def parse(self, value: Any) -> str:
        if not isinstance(value, str) or (not self.allow_empty and not value):
            raise self.bad("a non-empty string", value)
        return value

    def openapi(self) -> dict[str, Any]:
        if self.allow_empty:
            return {"type": "string", "nullable": True}
        return {"type": "string", "minLength": 1, "nullable": True}


class JsonName(JsonText):
    """A JSON string naming a queue, an exchange or a routing key: no control characters
    (:func:`~flask_celerymon.monitor.queues.check_queue_name`); null means not given."""

    def parse(self, value: Any) -> str:
        from ..monitor.queues import check_queue_name

        text = super().parse(value)
        try:
            return check_queue_name(text, self.param)
        except InvalidInput as exc:
            raise BadParameter(str(exc)) from None

    def openapi(self) -> dict[str, Any]:
        return {**super().openapi(), "pattern": QUEUE_NAME_PATTERN}


class JsonBool(Param):
    """A JSON boolean; null means not given."""

    def empty(self, value: Any) -> bool:
        return value is None

    def parse(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.bad("true or false", value)
        return value

    def openapi(self) -> dict[str, Any]:
        return {"type": "boolean", "nullable": True}


class JsonArray(Param):
    """A JSON array (``args``); null or absent is ``[]``."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)

    def empty(self, value: Any) -> bool:
        return value is None

    def deserialize(self, value: Any, attr: Any = None, data: Any = None, **kw: Any) -> Any:
        value = super().deserialize(value, attr, data, **kw)
        return [] if value is None else value

    def parse(self, value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise self.bad("an array", value)
        return value

    def openapi(self) -> dict[str, Any]:
        return {"type": "array", "nullable": True}


class JsonObject(JsonArray):
    """A JSON object (``kwargs``); null or absent is ``{}``."""

    def deserialize(self, value: Any, attr: Any = None, data: Any = None, **kw: Any) -> Any:
        value = Param.deserialize(self, value, attr, data, **kw)
        return {} if value is None else value

    def parse(self, value: Any) -> dict[str, Any]:  # type: ignore[override]
        if not isinstance(value, dict):
            raise self.bad("an object", value)
        return value

    def openapi(self) -> dict[str, Any]:
        return {"type": "object", "nullable": True}


#: Dates apply accepts for ``eta`` and ``expires``: years 1970 to 9998, so that Celery's time
#: zone conversions cannot overflow.
_DATE_RANGE = (dt.datetime(1970, 1, 2), dt.datetime(9998, 12, 31))


class JsonDate(Param):
    """Flower's ``%Y-%m-%d %H:%M:%S.%f`` or ISO 8601, years 1970 to 9998, as a datetime; with
    ``seconds`` a JSON number within it is taken too (``expires``)."""

    def __init__(self, *, seconds: Range | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.seconds = seconds

    def empty(self, value: Any) -> bool:
        return value is None

    def parse(self, value: Any) -> Any:
        if self.seconds is not None and not isinstance(value, str):
            return JsonNumber.parse(self, value)  # type: ignore[arg-type]
        if isinstance(value, str):
            for parse in (
                lambda s: dt.datetime.strptime(s, APPLY_DATE_FORMAT),
                dt.datetime.fromisoformat,
            ):
                try:
                    date = parse(value.strip())
                except ValueError:
                    continue
                if _DATE_RANGE[0] <= date.replace(tzinfo=None) <= _DATE_RANGE[1]:
                    return date
        raise BadParameter(
            f"{self.param} must be a date like '2024-01-31 13:45:00.000000' or ISO 8601 between "
            f"1970 and 9998, not {value!r}"
        )

    @property
    def bounds(self) -> Range:  # JsonNumber.parse reads it
        assert self.seconds is not None
        return self.seconds

    def openapi(self) -> dict[str, Any]:
        date = {"type": "string", "description": "%Y-%m-%d %H:%M:%S.%f or ISO 8601"}
        if self.seconds is None:
            return {**date, "nullable": True}
        return {"nullable": True, "description": "seconds, or a date like eta",
                "oneOf": [self.seconds.schema(), {"type": "string"}]}  # fmt: skip


# -- schemas, the parser and the decorator -----------------------------------------------------


class Params(ma.Schema):
    """The parameters of one view (made by :func:`schema`); unknown names are ignored."""

    class Meta:
        unknown = ma.EXCLUDE


def schema(**fields: Param) -> Params:
    """A schema instance of ``fields`` (name -> field; the name is the request's)."""
    for key, field in fields.items():
        if not isinstance(field, Param):
            raise TypeError(f"parameter {key!r} must be declared with a params field")
    # from_dict makes a subclass of Params (typed as returning a plain Schema class)
    return cast(Params, Params.from_dict(dict(fields), name="Params")())


def parse_json(raw: bytes, max_depth: int) -> Any:
    """Request JSON nested at most ``max_depth`` deep; :class:`BadParameter` otherwise."""
    try:
        return load_json(raw, max_depth)
    except JSONTooDeep as exc:
        raise BadParameter(str(exc)) from None
    except (ValueError, RecursionError) as exc:
        raise BadParameter(f"the request body is not valid JSON: {exc}") from None


def _max_depth() -> int:
    from ..appstate import get_state

    return int(get_state().limits.max_json_depth)


def request_params(req: Any = None) -> dict[str, Any]:
    """The request's parameters: query string, then form body, then a JSON object body.

    Raises :class:`BadParameter` for a JSON body that does not parse or is nested too deep.
    """
    req = req or request
    out: dict[str, Any] = dict(req.args.items())
    if req.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        out.update(req.form.items())
    raw = req.get_data(cache=True)
    if raw and req.is_json:
        body = parse_json(raw, _max_depth())
        if isinstance(body, dict):
            out.update(body)
    return out


def request_body(req: Any = None) -> Any:
    """The request's JSON body (``{}`` when empty); :class:`BadParameter` when malformed."""
    raw = (req or request).get_data(cache=True)
    return parse_json(raw, _max_depth()) if raw.strip() else {}


class Parser(FlaskParser):
    """webargs' Flask parser with our locations and our errors.

    Locations: ``params`` (:func:`request_params`, the API's), ``body`` (the JSON body as it
    is, :func:`request_body`), ``args`` (the query string alone, the pages') and ``values``
    (query string and form, Flower's ``/tasks/datatable``). Every error becomes one
    :class:`BadParameter` with the first message (the fields are tried in declaration order).
    """

    __location_map__ = {
        **FlaskParser.__location_map__,
        "params": "load_params",
        "body": "load_body",
        "args": "load_args",
        "values": "load_values",
    }
    DEFAULT_LOCATION = "params"

    def load_params(self, req: Any, schema: Any) -> Any:
        return request_params(req)

    def load_body(self, req: Any, schema: Any) -> Any:
        body = request_body(req)
        if not isinstance(body, dict):
            raise BadParameter('the request body must be a JSON object like {"args": [1, 2]}')
        return body

    def load_args(self, req: Any, schema: Any) -> Any:
        return dict(req.args.items())

    def load_values(self, req: Any, schema: Any) -> Any:
        return dict(req.values.items())

    def handle_error(self, error: Any, req: Any, schema: Any, **kw: Any) -> Any:
        raise BadParameter(_first_message(error.messages)) from None


def _first_message(messages: Any) -> str:
    while isinstance(messages, (dict, list)) and messages:
        messages = next(iter(messages.values())) if isinstance(messages, dict) else messages[0]
    return str(messages)


#: The one parser (webargs parsers keep no per-request state).
parser = Parser()

PARAMS_ATTRIBUTE = "_celerymon_params"


@overload
def use_params(
    _location: str = "params", /, *, first: Callable[..., Any], **fields: Param
) -> Callable[[F], F]: ...


@overload
def use_params(_location: str = "params", /, **fields: Param) -> Callable[[F], F]: ...


# two overloads so that a view may spread a dict of fields (``**FILTER_PARAMS``): with ``first``
# in one signature, mypy checks every value of the dict against it (and ``_location``, so that
# is positional-only); ``first`` is Any here because the second overload's ``**fields`` could
# name it (the overloads are what callers see)
def use_params(
    _location: str = "params", /, *, first: Any = None, **fields: Param
) -> Callable[[F], F]:
    """Declare the parameters of a view: they are parsed from ``_location`` before it runs
    and passed to it as keyword arguments; :mod:`.openapi` documents them.

    ``first`` (called with the route's path values) runs before the parameters are parsed:
    a lookup whose 404 must come before a bad parameter's 400 (an unknown worker).
    Raises :class:`BadParameter` (from the wrapped view) for a bad or missing parameter.
    """
    sch = schema(**fields)

    def decorate(view: F) -> F:
        parsed = parser.use_kwargs(sch, location=_location)(view)
        if first is None:
            wrapped = parsed
        else:

            @functools.wraps(parsed)
            def wrapped(*args: Any, **path: Any) -> Any:
                first(**path)
                return parsed(*args, **path)

        setattr(wrapped, PARAMS_ATTRIBUTE, (_location, sch))
        return cast(F, wrapped)  # the view, wrapped: called as the route calls ``view``

    return decorate


def declared(view: Any) -> tuple[str, Params] | None:
    """(location, schema) a view declares with :func:`use_params`, or None."""
    return getattr(view, PARAMS_ATTRIBUTE, None)


def parse_args(sch: Params, args: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` (a mapping of texts, e.g. a page's query string) parsed by ``sch``. A field
    whose ``repeat`` is true gets every value of a repeated parameter, joined by commas.

    Raises :class:`BadParameter` naming the first bad parameter.
    """
    data = dict(args.items())
    if hasattr(args, "getlist"):  # a query string: a field with ``repeat`` takes every value
        for key, field in sch.fields.items():
            if getattr(field, "repeat", False) and args.getlist(key):
                data[key] = ",".join(args.getlist(key))
    try:
        return sch.load(data)
    except ma.ValidationError as exc:
        raise BadParameter(_first_message(exc.messages)) from None


# -- the apply endpoints' JSON body ------------------------------------------------------------


#: ``apply_async`` options the apply endpoints accept, besides ``args``/``kwargs``/``timeout``
#: (the fields of :class:`ApplyBody`, in the order its error message lists them).
APPLY_OPTIONS = (
    "queue",
    "routing_key",
    "exchange",
    "priority",
    "countdown",
    "eta",
    "expires",
    "time_limit",
    "soft_time_limit",
    "task_id",
    "ignore_result",
    "retries",
)


class ApplyBody(ma.Schema):
    """The JSON body of ``/api/task/apply``, ``async-apply`` and ``send-task``: ``args``,
    ``kwargs``, ``timeout`` (apply only) and the ``apply_async`` options we pass on (Flower
    passes any key through; we refuse the rest, e.g. ``serializer``). Null, or leaving a key
    out, means the default."""

    class Meta:
        unknown = ma.RAISE

    args = JsonArray()
    kwargs = JsonObject()
    timeout = JsonNumber(WAIT)
    queue = JsonName()
    routing_key = JsonName()
    exchange = JsonName(allow_empty=True)
    task_id = JsonText()
    priority = JsonNumber(PRIORITY)
    retries = JsonNumber(RETRIES)
    countdown = JsonNumber(SECONDS)
    time_limit = JsonNumber(SECONDS)
    soft_time_limit = JsonNumber(SECONDS)
    ignore_result = JsonBool()
    eta = JsonDate()
    expires = JsonDate(seconds=SECONDS)

    @ma.pre_load
    def _known_keys(self, data: Any, **kw: Any) -> Any:
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise BadParameter(
                f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(APPLY_OPTIONS)}"
            )
        return data

    @ma.validates_schema
    def _limits_in_order(self, data: dict[str, Any], **kw: Any) -> None:
        soft, hard = data.get("soft_time_limit"), data.get("time_limit")
        if soft and hard and soft > hard:
            raise BadParameter(
                f"soft_time_limit ({soft:g}) must be <= time_limit ({hard:g}), as Celery requires"
            )




def use_body(sch: ma.Schema) -> Callable[[F], F]:
    """Declare a view's JSON body: parsed by ``sch`` (keys it does not name are refused) and
    passed to the view as keyword arguments (None for each key not given)."""

    def decorate(view: F) -> F:
        wrapped = parser.use_kwargs(sch, location="body")(view)
        setattr(wrapped, PARAMS_ATTRIBUTE, ("body", sch))
        return cast(F, wrapped)  # the view, wrapped: called as the route calls ``view``

    return decorate


# -- what the OpenAPI document says besides the parameters ------------------------------------

DOC_ATTRIBUTE = "_celerymon_doc"


@dataclass(frozen=True)
class Doc:
    """The OpenAPI facts of one view: what it is, what it answers and with which codes.

    ``ok`` names the schema of the 200 answer (a component of :mod:`.openapi`); ``errors``
    are the other status codes; ``body`` names the request body's component; ``mutation``
    adds 403 (read-only, cross-site) and 413 (body too large); ``tags`` group the operation.
    """

    summary: str
    ok: str
    errors: tuple[int, ...] = ()
    body: str | None = None
    mutation: bool = False
    tags: tuple[str, ...] = ()


def doc(
    summary: str, ok: str, *errors: int, body: str | None = None, mutation: bool = False,
    tags: tuple[str, ...] = (),
) -> Callable[[F], F]:  # fmt: skip
    """Declare a view's OpenAPI facts (see :class:`Doc`), beside it."""
    facts = Doc(summary, ok, tuple(errors), body, mutation, tags)

    def decorate(view: F) -> F:
        setattr(view, DOC_ATTRIBUTE, facts)
        return view

    return decorate


def documented(view: Any) -> Doc | None:
    """The :class:`Doc` a view declares with :func:`doc`, or None."""
    return getattr(view, DOC_ATTRIBUTE, None)
