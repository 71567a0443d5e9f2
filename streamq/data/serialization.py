"""A thin adapter over kombu's serializer registry.

kombu already knows json, pickle, yaml and msgpack with their content types and
accept lists; streamq only registers ``cloudpickle`` (opt-in) and turns kombu's
errors into streamq's, naming what could not be encoded.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable
from typing import Any

import cloudpickle
from kombu import serialization as _kombu
from kombu.exceptions import ContentDisallowed
from kombu.exceptions import DecodeError as _KombuDecodeError
from kombu.exceptions import EncodeError as _KombuEncodeError
from kombu.utils import json as _kombu_json

from ..base.errors import ConfigurationError, DecodeError, EncodeError

CLOUDPICKLE_CONTENT_TYPE = "application/x-cloudpickle"

_kombu.register(  # type: ignore[no-untyped-call]  # kombu is unannotated
    "cloudpickle",
    cloudpickle.dumps,
    pickle.loads,
    content_type=CLOUDPICKLE_CONTENT_TYPE,
    content_encoding="binary",
)


JSON_CONTENT_TYPE = "application/json"

# kombu's own JSON codec (its encoder class and decoding hook), built once: calling
# kombu.serialization for each message builds a new encoder or decoder every time,
# which costs more than the encoding itself. The output is identical.
_json_encoder = _kombu_json.JSONEncoder()
_json_decoder = json.JSONDecoder(object_hook=_kombu_json.object_hook)


class ContentTypeNotAcceptedError(DecodeError):
    """A message's content type is not in this app's accept list."""


def content_type_of(serializer: str) -> str:
    try:
        content_type: str = _kombu.registry.name_to_type[serializer]
        return content_type
    except KeyError:
        known = ", ".join(sorted(_kombu.registry.name_to_type))
        raise ConfigurationError(
            f"unknown serializer {serializer!r}; known serializers: {known}"
        ) from None


def accept_content_types(serializers: Iterable[str]) -> set[str]:
    return {content_type_of(s) for s in serializers}


def _offending_type(value: Any) -> str | None:
    """Find the first value kombu's JSON encoder refused, for a precise message."""
    from kombu.utils.json import dumps as kombu_json_dumps

    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        else:
            try:
                kombu_json_dumps(item)  # type: ignore[no-untyped-call]
            except Exception:
                return type(item).__qualname__
    return None


def dumps(value: Any, serializer: str, what: str, task: str) -> tuple[str, str, bytes | str]:
    """Serialize ``value`` (``what`` of ``task``, for the error message: built only
    on error, since this runs twice per task); returns (content_type,
    content_encoding, payload)."""
    if serializer == "json":
        if value is None:  # most tasks return nothing
            return JSON_CONTENT_TYPE, "utf-8", "null"
        try:
            return JSON_CONTENT_TYPE, "utf-8", _json_encoder.encode(value)
        except (TypeError, ValueError):
            pass  # kombu's own path below raises the error with its message
    content_type_of(serializer)
    try:
        encoded: tuple[str, str, bytes | str] = _kombu.dumps(  # type: ignore[no-untyped-call]
            value, serializer=serializer)
        return encoded
    except (_KombuEncodeError, TypeError, ValueError, pickle.PicklingError) as exc:
        cause = exc.__cause__ or exc
        offending = _offending_type(value) if serializer == "json" else None
        named = f" (a value of type {offending})" if offending else ""
        raise EncodeError(
            f"cannot serialize {what} of task {task} with the {serializer!r} "
            f"serializer{named}: {cause}; "
            f"pass JSON-compatible values or use serializer='cloudpickle'"
        ) from exc


def loads(
    payload: bytes | str, content_type: str, content_encoding: str, accept: set[str]
) -> Any:
    """Deserialize a payload, refusing content types outside ``accept``."""
    if content_type == JSON_CONTENT_TYPE and content_type in accept:
        try:
            return _json_decoder.decode(payload if isinstance(payload, str)
                                        else payload.decode("utf-8"))
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise DecodeError(f"cannot decode {content_type} payload: {exc!r}", payload) \
                from exc
    try:
        return _kombu.loads(  # type: ignore[no-untyped-call]
            payload, content_type, content_encoding, accept=accept)
    except ContentDisallowed as exc:
        raise ContentTypeNotAcceptedError(
            f"content type {content_type!r} is not accepted (accepted: {sorted(accept)})",
            payload,
        ) from exc
    except (_KombuDecodeError, ValueError, TypeError, pickle.UnpicklingError, EOFError,
            AttributeError, ImportError, KeyError) as exc:
        raise DecodeError(
            f"cannot decode {content_type} payload: {exc.__cause__ or exc!r}", payload
        ) from exc
