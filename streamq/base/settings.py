"""Settings: one frozen dataclass, read from the environment in exactly one place.

Durations carry their unit in the name: ``_ms`` for values handed to Redis,
``_s`` elsewhere. The public, Celery-style ``result_ttl`` is in seconds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from . import clusterurl, sentinelurl
from .errors import ConfigurationError

_SCHEMES = ("redis", "rediss", "unix", sentinelurl.SCHEME, *clusterurl.SCHEMES)


_PASSWORD = re.compile(r"^([a-z+]+://[^:/?#@]*):(.*)@(?=[^@]*$)", re.IGNORECASE)
_PASSWORD_PARAM = re.compile(r"(password=)[^&]*")


def mask_url(url: str | None) -> str:
    """The URL with any password replaced by ``***`` (for logs, errors and reprs).

    Masked before the URL is parsed: a generated password may hold ``/``, ``#`` or
    ``?``, which a URL parser takes for the start of the path."""
    if not url:
        return "<embedded>"
    return _PASSWORD_PARAM.sub(r"\1***", _PASSWORD.sub(r"\1:***@", url, count=1))


def scrub(text: str, url: str | None) -> str:
    """``text`` (say, a parser's complaint about ``url``) without any piece of the
    URL's password."""
    found = _PASSWORD.match(url or "")
    if found:
        for piece in re.split(r"[/#?@:&=]", found.group(2)):
            if piece:
                text = text.replace(piece, "***")
    return text


# The query parameters streamq passes on to redis-py (anything else is refused: redis-py
# would hand an unknown one to the connection class, which fails with a TypeError on
# first use, and its own socket options would override the timeouts streamq sets).
_TLS_FILES = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile")
_TLS_PARAMS = (*_TLS_FILES, "ssl_cert_reqs", "ssl_check_hostname", "ssl_password",
               "ssl_ciphers")
_URL_PARAMS = ("db", "client_name", *_TLS_PARAMS)
_CERT_REQS = ("none", "optional", "required")
_BOOLEANS = ("true", "false", "yes", "no", "1", "0")


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with each of ``secrets`` (see ``Settings.secrets``) replaced by ``***``:
    for what streamq stores or prints of a task's own error, which may quote them."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def validate_url(url: str) -> str:
    """``url`` if streamq can use it, else a ``ConfigurationError`` saying what is wrong:
    the scheme, and the query parameters (``db``, ``client_name`` and, with
    ``rediss://``, the TLS options of ``_TLS_PARAMS``). Files are checked when a
    connection is made, in the process that makes it."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in _SCHEMES:
        raise ConfigurationError(
            f"invalid server URL {mask_url(url)!r}: expected redis://, rediss://, unix://, "
            f"redis+sentinel:// or redis+cluster://")
    if scheme == sentinelurl.SCHEME:
        sentinelurl.parse(url, mask_url(url))
        return url
    if scheme in clusterurl.SCHEMES:  # its query reads as the plain URL's
        validate_url(clusterurl.split(url, mask_url(url))[0])
        return url
    # Split by hand, after any password: a password may hold '?' (see mask_url).
    found = _PASSWORD.match(url)
    tail = url[found.end():] if found else url
    query = tail.split("?", 1)[1].split("#", 1)[0] if "?" in tail else ""
    for name, values in parse_qs(query, keep_blank_values=True).items():
        # Without the query: a misspelt parameter's value (say, a password) stays hidden.
        where = f"in server URL {mask_url(url).split('?', 1)[0]!r}"
        if name not in _URL_PARAMS:
            raise ConfigurationError(
                f"unknown parameter {name!r} {where}; streamq reads {', '.join(_URL_PARAMS)}"
                f" (timeouts are settings: socket_timeout_s, connect_timeout_s)")
        if len(values) > 1 or not values[0]:
            raise ConfigurationError(f"parameter {name!r} {where} needs exactly one value")
        value = values[0]
        if name in _TLS_PARAMS and scheme != "rediss":
            raise ConfigurationError(
                f"{name} {where} is a TLS option: use a rediss:// URL for TLS")
        if name == "ssl_cert_reqs" and value not in _CERT_REQS:
            raise ConfigurationError(
                f"ssl_cert_reqs={value!r} {where}: expected one of {', '.join(_CERT_REQS)}")
        if name == "ssl_check_hostname" and value.lower() not in _BOOLEANS:
            raise ConfigurationError(
                f"ssl_check_hostname={value!r} {where}: expected true or false")
        if name == "db" and not value.isdigit():
            raise ConfigurationError(f"db={value!r} {where}: expected a number")
    return url


@dataclass(frozen=True)
class Settings:
    """Everything an app, a producer and a worker need to agree on."""

    url: str | None = None
    """Server URL (``STREAMQ_URL``); None means the embedded server of the project: the
    nearest directory, from the working directory up, that holds ``.streamq/``,
    ``pyproject.toml`` or ``.git`` (else the working directory itself)."""
    namespace: str = "streamq"
    """Prefix of every key; two apps with different namespaces never meet."""
    default_queue: str = "default"
    serializer: str = "json"
    """kombu serializer name for arguments and results ("json", "cloudpickle", ...)."""
    accept: tuple[str, ...] = ()
    """Serializers a worker accepts; empty means json plus ``serializer``."""
    result_ttl: int = 86400
    """Seconds a task record (and its result) is kept after its last change."""
    claim_after_s: float = 60.0
    """A message pending this long without a heartbeat is reclaimed from a dead host."""
    heartbeat_s: float = 5.0
    """How often a worker refreshes its in-flight messages and its registration."""
    block_ms: int = 1000
    """How long one blocking XREADGROUP waits; bounds shutdown latency when idle."""
    prefetch: int = 100
    """Most messages one process reads at once."""
    release_after_s: float = 0.5
    """Prefetched messages stuck behind a task running this long are handed back."""
    promote_interval_s: float = 0.05
    """How often each worker process moves due delayed messages into the stream."""
    socket_timeout_s: float = 10.0
    """Client socket timeout; blocking reads add their BLOCK time on top."""
    connect_timeout_s: float = 5.0
    grace_s: float = 30.0
    """On SIGTERM, how long in-flight tasks may run before processes are killed."""
    max_tasks_per_child: int = 0
    """A worker process that handled this many messages is replaced (0: never)."""
    max_memory_per_child: int = 0
    """A worker process whose resident memory grew above this many MB (MiB) is
    replaced after its current task (0: never). Celery's is in KiB."""
    threads: int = 1
    """Tasks each worker process runs at once, in threads (``--threads``)."""
    async_concurrency: int = 100
    """``async def`` tasks each worker process runs at once on its event loop."""
    signing_key: str | bytes | tuple[str | bytes, ...] | None = field(default=None,
                                                                       repr=False)
    """HMAC-SHA256 key(s) (``STREAMQ_SIGNING_KEY``, comma-separated): messages are
    signed with the first, and any of them verifies one; a worker with a key refuses
    an unsigned or badly signed message before decoding it. Never shown."""
    max_message_bytes: int = 1024 * 1024
    """Largest encoded message ``delay()`` sends and a worker decodes (0: no limit
    but the server's own)."""
    max_result_bytes: int = 1024 * 1024
    """Largest encoded result a worker stores; a larger one fails its task (0: no
    limit but the server's own)."""
    durable: bool = False
    """Enqueue returns only once the server has the write in its AOF on disk."""
    durable_replicas: int = 0
    """With ``durable``: replicas that must also have the write."""
    durable_timeout_s: float = 1.0
    """How long a durable enqueue waits for the disk (and replicas)."""
    eager: bool = False
    """Run each call here and now, in the caller, instead of enqueueing it: for unit
    tests (``STREAMQ_EAGER=1``; see ``streamq.api.eager``). Nothing connects."""

    def __post_init__(self) -> None:
        if self.url is not None:
            validate_url(self.url)
        if not self.namespace or any(c in self.namespace for c in "{} "):
            raise ConfigurationError(
                f"invalid namespace {self.namespace!r}: use letters, digits, '-', '_' or ':'"
            )
        check_queue_name(self.default_queue)
        if self.claim_after_s < 0.05 or self.heartbeat_s < 0.05:
            raise ConfigurationError(
                f"claim_after_s and heartbeat_s must be at least 0.05 seconds, got "
                f"{self.claim_after_s} and {self.heartbeat_s}")
        if 3 * self.heartbeat_s > self.claim_after_s + 1e-9:
            raise ConfigurationError(
                f"claim_after_s ({self.claim_after_s:g}) must be at least three heartbeats "
                f"(heartbeat_s={self.heartbeat_s:g}): an idle entry is only reclaimed once "
                f"its worker has missed three")
        if self.max_tasks_per_child < 0 or self.max_memory_per_child < 0:
            raise ConfigurationError(
                f"max_tasks_per_child and max_memory_per_child must be 0 (no limit) or "
                f"more, got {self.max_tasks_per_child} and {self.max_memory_per_child}")
        if not 1 <= self.async_concurrency <= 100_000:
            raise ConfigurationError(f"async_concurrency must be 1 to 100000 per process, "
                                     f"got {self.async_concurrency}")
        if not 1 <= self.threads <= 1024:
            raise ConfigurationError(f"threads must be 1 to 1024 per process, got "
                                     f"{self.threads}")
        if self.max_message_bytes < 0 or self.max_result_bytes < 0:
            raise ConfigurationError(
                f"max_message_bytes and max_result_bytes must be 0 (no limit) or more "
                f"bytes, got {self.max_message_bytes} and {self.max_result_bytes}")
        if self.durable_replicas < 0 or self.durable_timeout_s <= 0:
            raise ConfigurationError(
                f"durable_replicas must be 0 or more and durable_timeout_s positive "
                f"seconds, got {self.durable_replicas} and {self.durable_timeout_s}")
        if self.signing_key is not None and not self.signing_keys:
            raise ConfigurationError(
                "signing_key is empty: give a secret of at least 16 characters, or None")
        if any(len(k) < 16 for k in self.signing_keys):
            raise ConfigurationError(
                "a signing key must be at least 16 characters long (make one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        if self.result_ttl <= 0:
            raise ConfigurationError(f"result_ttl must be positive seconds, got {self.result_ttl}")

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={mask_url(self.url) if f.name == 'url' else getattr(self, f.name)!r}"
            for f in fields(self)
            if f.repr
        )
        return f"Settings({shown})"

    @property
    def secrets(self) -> tuple[str, ...]:
        """The URL's password (as written, decoded and encoded) and the signing keys,
        longest first; passwords under 4 characters are left out, as replacing them
        would garble any text without hiding anything worth hiding."""
        found = _PASSWORD.match(self.url or "")
        written = found.group(2) if found else ""
        forms = {written, unquote(written), quote(unquote(written), safe=""),
                 *(k.decode(errors="replace") for k in self.signing_keys)}
        return tuple(sorted((f for f in forms if len(f) >= 4), key=len, reverse=True))

    @property
    def signing_keys(self) -> tuple[bytes, ...]:
        """The signing keys as bytes, the one that signs first (empty: no signing)."""
        key = self.signing_key
        if key is None:
            return ()
        listed = (key,) if isinstance(key, str | bytes) else tuple(key)
        return tuple(k.encode() if isinstance(k, str) else bytes(k) for k in listed if k)

    @property
    def accepted(self) -> tuple[str, ...]:
        return self.accept or tuple(dict.fromkeys(("json", self.serializer)))

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (not None) applied; unknown names are refused."""
        _check_names(changes)
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``STREAMQ_*`` environment variables, with ``overrides`` (not
        None) winning; the only place streamq reads its environment. Unknown option
        names are a ``ConfigurationError``."""
        env = os.environ if env is None else env
        _check_names(overrides)
        values: dict[str, Any] = {}
        for name, conv in _FROM_ENV.items():
            raw = env.get(f"STREAMQ_{name.upper()}")
            if raw:
                try:
                    values[name] = conv(raw)
                except ValueError:
                    raise ConfigurationError(
                        f"STREAMQ_{name.upper()}={raw!r} is not a valid {conv.__name__}"
                    ) from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _boolean(raw: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case)."""
    text = raw.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


_boolean.__name__ = "boolean (1/0, true/false)"


_FROM_ENV: dict[str, Callable[[str], Any]] = {
    "url": str, "namespace": str, "claim_after_s": float, "grace_s": float,
    "heartbeat_s": float, "prefetch": int, "max_tasks_per_child": int,
    "max_memory_per_child": int, "threads": int,
    "async_concurrency": int, "signing_key": lambda raw: tuple(
        k.strip() for k in raw.split(",") if k.strip()),
    "max_message_bytes": int, "max_result_bytes": int, "durable": _boolean,
    "durable_replicas": int, "durable_timeout_s": float, "eager": _boolean,
}
"""Settings that ``STREAMQ_<NAME>`` sets (``STREAMQ_URL``, ``STREAMQ_NAMESPACE``, ...)."""


def user_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """streamq's per-user cache directory: ``$XDG_CACHE_HOME/streamq``, else
    ``~/.cache/streamq`` (where the list of running embedded servers is kept)."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME")
    return (Path(base) if base and os.path.isabs(base) else Path.home() / ".cache") / "streamq"


def _check_names(options: Mapping[str, Any]) -> None:
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(map(repr, unknown))}; "
            f"known options: {', '.join(sorted(known))}")


def check_queue_name(queue: str) -> str:
    if not isinstance(queue, str) or not queue or any(c in queue for c in "{}\n\r "):
        raise ConfigurationError(
            f"invalid queue name {queue!r}: use a non-empty name without spaces or braces"
        )
    return queue
