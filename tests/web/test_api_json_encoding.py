"""The API's response encoding: orjson where it encodes as the standard library would, the
standard library (with the API's ``default``) for the rest; the JSON value is the same."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections import OrderedDict, namedtuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_celerymon.web.api.common import _default, _finite, encode_json


def _stdlib(data):
    """The encoding before orjson: exactly the old ``json_response`` body."""
    try:
        return json.dumps(data, default=_default, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(data), default=_default, allow_nan=False)


def _same_value(a: str, b: str) -> bool:
    x, y = json.loads(a), json.loads(b)
    # key order is part of the API's promise (the task map's order)
    return json.dumps(x) == json.dumps(y)


@dataclasses.dataclass
class _Point:
    x: int


class _Str(str):
    pass


class _Int(int):
    pass


_Pair = namedtuple("_Pair", "a b")

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),  # past 64 bits: orjson refuses
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.binary(max_size=8),
    st.datetimes(),
    st.datetimes(timezones=st.just(dt.timezone.utc)),
    st.dates(),
    st.times(),
    st.builds(_Point, st.integers(-5, 5)),
    st.builds(_Str, st.text(max_size=5)),
    st.builds(_Int, st.integers(-5, 5)),
    st.frozensets(st.integers(-5, 5), max_size=3),
)
_keys = st.one_of(
    st.text(max_size=6),
    st.integers(-(2**65), 2**65),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)
_payloads = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=3).map(tuple),
        st.tuples(inner, inner).map(lambda t: _Pair(*t)),
        st.dictionaries(st.text(max_size=6), inner, max_size=4),
        st.dictionaries(_keys, inner, max_size=3),
        st.dictionaries(st.text(max_size=4), inner, max_size=3).map(OrderedDict),
    ),
    max_leaves=20,
)


@settings(max_examples=600, deadline=None)
@given(_payloads)
def test_encode_json_gives_the_json_value_of_the_standard_library_path(data):
    assert _same_value(encode_json(data).decode(), _stdlib(data))


def test_encode_json_special_values():
    data = {
        "nan": math.nan, "inf": [math.inf, -math.inf], "big": 2**64, "when": dt.datetime(
            2026, 11, 30, 7, 1, 2, 345678, tzinfo=dt.timezone.utc), "day": dt.date(2026, 1, 2),
        "set": {3}, "raw": b"\xff", "obj": object, 1: "int key", 1.5: "float key",
        None: "none key", "lone": "\ud800",
    }  # fmt: skip
    assert _same_value(encode_json(data).decode(), _stdlib(data))
    assert json.loads(encode_json({"nan": math.nan})) == {"nan": None}
    assert json.loads(encode_json({"when": data["when"]})) == {
        "when": "2026-11-30T07:01:02.345678+00:00"
    }


def test_encode_json_keeps_key_order():
    data = {f"k{i}": i for i in (5, 3, 9, 1)}
    assert list(json.loads(encode_json(data))) == ["k5", "k3", "k9", "k1"]


def test_encode_json_raises_for_what_the_standard_library_refuses():
    with pytest.raises(TypeError):
        encode_json({(1, 2): "tuple key"})
