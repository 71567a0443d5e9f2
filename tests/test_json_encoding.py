"""The JSON serializer's encoder, built once (``streamq.data.serialization``): the same
text as ``json.JSONEncoder`` with kombu's types for every value, and the same errors;
what ``delay()`` stores is that text."""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamq
from streamq import StreamQ
from streamq.base import keys
from streamq.data import serialization
from streamq.data.message import Message
from tests import tasks

_reference = json.JSONEncoder(default=serialization._json_encoder.default).encode

_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text()
            | st.datetimes() | st.decimals(allow_nan=False) | st.uuids())
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                       max_leaves=20)


@settings(max_examples=400, derandomize=True, deadline=None)
@given(args=st.lists(_values, max_size=4), kwargs=st.dictionaries(st.text(max_size=8), _values,
                                                                   max_size=3))
def test_calls_encode_as_the_json_module_does(args: list[Any], kwargs: dict[str, Any]
                                              ) -> None:
    ct, ce, body = serialization.dumps([args, kwargs], "json", "the arguments", "t")
    assert (ct, ce) == ("application/json", "utf-8")
    assert body == _reference([args, kwargs])


@pytest.mark.parametrize("value", [
    "text", 3, 2.5, None, True, [1, [2, [3]]], {"k": {"é": "\u2603"}},
    datetime.datetime(2026, 12, 3, 14, 5, tzinfo=datetime.UTC), decimal.Decimal("1.10"),
    uuid.UUID(int=7), float("nan"), float("-inf")])
def test_results_encode_as_the_json_module_does(value: Any) -> None:
    assert serialization.dumps(value, "json", "the result", "t")[2] == _reference(value)


def test_a_value_json_has_no_type_for_says_so_in_one_line() -> None:
    with pytest.raises(streamq.EncodeError) as info:
        serialization.dumps([[object()], {}], "json", "the arguments", "tests.tasks.echo")
    text = str(info.value)
    assert "the arguments of task tests.tasks.echo" in text and "object" in text, text
    assert "\n" not in text


def test_delay_stores_the_encoded_arguments(vapp: StreamQ) -> None:
    value = [1, "a", {"b": None, "when": datetime.date(2026, 12, 3)}]
    handle = tasks.echo.apply_async(kwargs={"value": value})
    client = vapp.server.connection.client
    ((_, fields),) = client.xrange(keys.stream(vapp.settings.namespace, "default"))
    message = Message.decode(fields[b"m"])
    assert message.id == handle.id
    assert message.body == _reference([[], {"value": value}])
