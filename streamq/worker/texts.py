"""How the executor words what went wrong: texts that never raise, sizes, shapes."""

from __future__ import annotations

import traceback
from typing import Any

from ..data.message import kind_of, short_repr


def text_of(value: object) -> str:
    """``str(value)``, even when that raises (an error of the task's own making)."""
    try:
        return str(value)
    except Exception as exc:
        try:
            why = f"{type(exc).__name__}: {exc}"
        except Exception:
            why = type(exc).__name__
        return f"<str() of this {type(value).__name__} raised {why}>"


def size_over(value: bytes | str, limit: int) -> int | None:
    """The size in bytes of ``value`` as sent, when it exceeds ``limit``; else None."""
    if isinstance(value, str):
        if len(value) * 4 <= limit:
            return None
        size = len(value.encode("utf-8", "surrogatepass"))
    else:
        size = len(value)
    return size if size > limit else None


def one_line(exc: BaseException, limit: int = 500) -> str:
    """An error as one line of at most ``limit`` characters, for a reason."""
    text = " ".join(text_of(exc).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def format_traceback() -> str:
    try:
        return traceback.format_exc()
    except Exception as exc:
        return f"(the traceback could not be formatted: {type(exc).__name__})"


def shape_of(value: Any) -> str:
    """What decoded arguments look like: their kind (and their elements' for a pair)
    and a short repr."""
    if isinstance(value, list | tuple) and len(value) == 2:
        return (f"{kind_of(value)} of {kind_of(value[0])} and {kind_of(value[1])} "
                f"({short_repr(value)})")
    return f"{kind_of(value)} ({short_repr(value)})"


def type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else \
        f"{cls.__module__}.{cls.__qualname__}"
