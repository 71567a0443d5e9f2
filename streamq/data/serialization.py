"""A thin adapter over kombu's serializer registry.

kombu already knows json, pickle, yaml and msgpack with their content types and
accept lists; streamq only registers ``cloudpickle`` (opt-in) and turns kombu's
errors into streamq's, naming what could not be encoded.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from types import ModuleType
from typing import Any

from ..base.errors import ConfigurationError, DecodeError, EncodeError
from .message import kind_of

CLOUDPICKLE_CONTENT_TYPE = "application/x-cloudpickle"

JSON_CONTENT_TYPE = "application/json"

# kombu (~70 ms to import: amqp, yaml, importlib.metadata) is imported at its first
# use, not with streamq: a process that only sends and reads JSON of JSON's own
# types (a CLI command, most workers) never needs it.
_kombu_serialization: ModuleType | None = None


def _kombu() -> ModuleType:
    """``kombu.serialization``, with ``cloudpickle`` registered (the first call
    imports it)."""
    global _kombu_serialization
    if _kombu_serialization is None:
        import cloudpickle
        from kombu import serialization

        serialization.register(  # type: ignore[no-untyped-call]  # kombu is unannotated
            "cloudpickle",
            cloudpickle.dumps,
            pickle.loads,
            content_type=CLOUDPICKLE_CONTENT_TYPE,
            content_encoding="binary",
        )
        _kombu_serialization = serialization
    return _kombu_serialization


class _JSONEncoder(json.JSONEncoder):
    """kombu's JSON encoder, whose ``default`` (datetime, Decimal, UUID, bytes,
    ``__json__`` and the types registered with kombu) is imported at the first value
    that JSON has no type for: the output is identical."""

    _kombu_encoder: json.JSONEncoder | None = None

    def default(self, o: Any) -> Any:
        if _JSONEncoder._kombu_encoder is None:
            from kombu.utils.json import JSONEncoder

            _JSONEncoder._kombu_encoder = JSONEncoder()
        return _JSONEncoder._kombu_encoder.default(o)


def _object_hook(o: dict[str, Any]) -> Any:
    """kombu's JSON decoding hook, imported at the first object that has its
    ``{"__type__": ..., "__value__": ...}`` form."""
    if len(o) == 2 and "__type__" in o and "__value__" in o:
        from kombu.utils.json import object_hook

        return object_hook(o)
    return o


# The JSON codec, built once: calling kombu.serialization for each message builds a
# new encoder or decoder every time, which costs more than the encoding itself.
_json_encoder = _JSONEncoder()
_json_decoder = json.JSONDecoder(object_hook=_object_hook)
# The C encoder that JSONEncoder.encode builds anew for every value, built once (a
# third of a small call's encoding): the same output, but without check_circular's
# markers, so that threads share no state. A value that contains itself fails here
# with RecursionError, and dumps' kombu path reports it as it always did.
_c_encoder = None if c_make_encoder is None else c_make_encoder(
    None, _json_encoder.default, encode_basestring_ascii, None, ": ", ", ", False, False,
    True)


def _encode_json(value: Any) -> str:
    if _c_encoder is None:
        return _json_encoder.encode(value)
    return "".join(_c_encoder(value, 0))


class ContentTypeNotAcceptedError(DecodeError):
    """A message's content type is not in this app's accept list."""


def content_type_of(serializer: str) -> str:
    if serializer == "json":  # kombu's, without importing kombu
        return JSON_CONTENT_TYPE
    registry = _kombu().registry
    try:
        content_type: str = registry.name_to_type[serializer]
        return content_type
    except KeyError:
        known = ", ".join(sorted(registry.name_to_type))
        raise ConfigurationError(
            f"unknown serializer {serializer!r}; known serializers: {known}"
        ) from None


def accept_content_types(serializers: Iterable[str]) -> set[str]:
    return {content_type_of(s) for s in serializers}


def _offending_type(value: Any, limit: int = 100_000) -> str | None:
    """Find the first value kombu's JSON encoder refused, for a precise message (the
    error path only; each container is visited once, so a cycle ends the walk)."""
    from kombu.utils.json import dumps as kombu_json_dumps

    stack = [value]
    seen: set[int] = set()
    while stack and limit > 0:
        limit -= 1
        item = stack.pop()
        if isinstance(item, dict | list | tuple | set | frozenset):
            if id(item) in seen:
                continue
            seen.add(id(item))
            if isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            else:
                stack.extend(item)
        else:
            try:
                kombu_json_dumps(item)  # type: ignore[no-untyped-call]
            except Exception:
                return type(item).__qualname__
    return None


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost cause of an error kombu wrapped (kombu wraps every error)."""
    seen = {id(exc)}
    while True:
        inner = exc.__cause__ or exc.__context__
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def _one_line(exc: BaseException, limit: int = 300) -> str:
    try:
        text = " ".join(str(exc).split())
    except Exception:
        text = "<str() of the error raised>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def dumps(value: Any, serializer: str, what: str, task: str) -> tuple[str, str, bytes | str]:
    """Serialize ``value`` (``what`` of ``task``, for the error message: built only
    on error, since this runs twice per task); returns (content_type,
    content_encoding, payload). Any failure, a value nested too deeply or one that
    contains itself included, raises ``EncodeError``."""
    if serializer == "json":
        if value is None:  # most tasks return nothing
            return JSON_CONTENT_TYPE, "utf-8", "null"
        try:
            return JSON_CONTENT_TYPE, "utf-8", _encode_json(value)
        except Exception:  # kombu's own path below raises it with its message
            pass
    content_type_of(serializer)
    try:
        encoded: tuple[str, str, bytes | str] = _kombu().dumps(value, serializer=serializer)
        return encoded
    except Exception as exc:
        cause = _root_cause(exc)
        if isinstance(cause, RecursionError):
            raise EncodeError(
                f"cannot serialize {what} of task {task} with the {serializer!r} "
                f"serializer: it is nested too deeply ({_one_line(cause)}); "
                f"pass flatter values") from exc
        try:
            offending = _offending_type(value) if serializer == "json" else None
        except Exception:
            offending = None
        named = f" (a value of type {offending})" if offending else ""
        raise EncodeError(
            f"cannot serialize {what} of task {task} with the {serializer!r} "
            f"serializer{named}: {_one_line(cause)}; "
            f"pass JSON-compatible values or use serializer='cloudpickle'"
        ) from exc


def loads(
    payload: bytes | str, content_type: str, content_encoding: str, accept: set[str]
) -> Any:
    """Deserialize a payload, refusing content types outside ``accept`` (kombu's
    "trusted" ``application/data`` and ``application/text`` included: kombu would hand
    those back undecoded). Any failure raises ``DecodeError``, saying in one line
    what was wrong."""
    if content_type == JSON_CONTENT_TYPE and content_type in accept:
        try:
            return _json_decoder.decode(payload if isinstance(payload, str)
                                        else payload.decode("utf-8"))
        except Exception as exc:
            raise DecodeError(f"cannot decode {content_type} payload: "
                              f"{_load_problem(payload, exc)}", _raw(payload)) from exc
    if content_type not in accept:
        raise ContentTypeNotAcceptedError(
            f"content type {str(content_type)[:100]!r} is not accepted "
            f"(accepted: {sorted(accept)})", _raw(payload))
    kombu = _kombu()
    try:
        return kombu.loads(payload, content_type, content_encoding, accept=accept)
    except kombu.ContentDisallowed as exc:
        raise ContentTypeNotAcceptedError(
            f"content type {content_type!r} is not accepted (accepted: {sorted(accept)})",
            _raw(payload),
        ) from exc
    except Exception as exc:
        raise DecodeError(f"cannot decode {content_type} payload: "
                          f"{_load_problem(payload, exc)}", _raw(payload)) from exc


def _raw(payload: Any) -> bytes | str | None:
    return payload if isinstance(payload, bytes | str) else None


def _load_problem(payload: Any, exc: Exception) -> str:
    """What was wrong with a payload that did not decode, in one line."""
    if not isinstance(payload, bytes | str):
        return f"the message's field 'body' is {kind_of(payload)}, not a string"
    cause = _root_cause(exc)
    if isinstance(cause, RecursionError):
        return f"nested too deeply ({_one_line(cause)})"
    return f"{type(cause).__name__}: {_one_line(cause)}"
