"""Durable enqueue's wait: WAITAOF (or WAIT) behind a write, on its connection.

``wait`` decides which command, asking the server once; ``not_durable`` reads its
reply. The broker appends the command to the enqueue's own write (see ``broker``).
"""

from __future__ import annotations

import logging
from typing import Any

from ..base.errors import ConfigurationError
from .connection import translate
from .translate import as_str
from .transport import Packed, Transport, pack

log = logging.getLogger(__name__)


class Durability:
    """What durable writes of one connection wait with (see the module docstring)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.connection = transport.connection
        self._waits: dict[tuple[int, float], bytes] = {}
        self._fsync: str | None = None

    def wait(self, replicas: int, timeout_s: float, socket_timeout_s: float
                     ) -> bytes:
        """The packed command that makes a write durable: WAITAOF, or WAIT for
        ``replicas`` on a server without it. Asks the server once (one round trip);
        raises ``ConfigurationError`` before anything is written when the server
        cannot promise it."""
        wait = self._waits.get((replicas, timeout_s))
        if wait is not None:
            return wait
        if timeout_s >= socket_timeout_s:
            # The read would time out first, and a retried write is enqueued twice.
            raise ConfigurationError(
                f"durable_timeout_s ({timeout_s:g}) must be shorter than socket_timeout_s "
                f"({socket_timeout_s:g}); lower the one or raise the other")
        has_waitaof, server = self._probe()
        ms = max(1, round(timeout_s * 1000))
        if has_waitaof:
            wait = pack("WAITAOF", 1, replicas, ms)
        elif replicas:
            log.warning("The server at %s (%s) has no WAITAOF: a durable enqueue waits "
                        "for %d replica(s) to receive each write (WAIT), not for a disk.",
                        self.connection.masked_url, server, replicas)
            wait = pack("WAIT", replicas, ms)
        else:
            raise ConfigurationError(
                f"durable enqueue needs WAITAOF, which the server at "
                f"{self.connection.masked_url} ({server}) lacks; nothing was sent. Use "
                f"Redis >= 7.2 or Valkey, or set durable_replicas=N to wait for N replicas "
                f"instead (WAIT)")
        self._waits[(replicas, timeout_s)] = wait
        return wait

    def _probe(self) -> tuple[bool, str]:
        """(has WAITAOF, "name version") of the server; notes its appendfsync."""
        pipe = Packed()
        pipe.best_effort("COMMAND", "INFO", "WAITAOF")  # refused by some ACL users
        pipe.best_effort("CONFIG", "GET", "appendfsync")  # refused by managed servers
        pipe.command("INFO", "server")
        pipe.command("INFO", "persistence")
        info_cmd, fsync, info, persistence = self.transport.run(pipe)
        fields = dict(line.split(":", 1) for line in as_str(info).splitlines()
                      if ":" in line)
        version = fields.get("redis_version", "0")
        name = "valkey" if "valkey_version" in fields else "redis"
        server = f"{name} {fields.get('valkey_version', version)}"
        if isinstance(fsync, dict):  # RESP3 answers a map, RESP2 a list of pairs
            fsync = [x for pair in fsync.items() for x in pair]
        if isinstance(fsync, list) and len(fsync) == 2:
            self._fsync = as_str(fsync[1])
        if isinstance(info_cmd, list):
            has_waitaof = bool(info_cmd) and info_cmd[0] is not None
        else:
            major, _, minor = version.partition(".")
            has_waitaof = (int(major), int(minor.partition(".")[0] or 0)) >= (7, 2)
        if has_waitaof and self._fsync == "everysec" and "aof_enabled:1" in as_str(persistence):
            # redis/redis#13793: seen live on Valkey 9.1.2, WAITAOF answered "on disk"
            # up to a second before the fsync (a process crash loses nothing; the OS's can).
            log.warning("The server at %s (%s) fsyncs its AOF once a second (appendfsync "
                        "everysec): some servers confirm a durable enqueue before that "
                        "fsync (redis/redis#13793); set appendfsync always for a per-write "
                        "disk guarantee.", self.connection.masked_url, server)
        return has_waitaof, server

    def not_durable(self, reply: Any, replicas: int, timeout_s: float) -> str | None:
        """None when the wait's ``reply`` confirms the write; else why not, as a
        clause for the caller's error ("... was enqueued but <clause>")."""
        if isinstance(reply, Exception):
            if "appendonly" in str(reply):
                return (f"the server at {self.connection.masked_url} has appendonly off, so "
                        f"it cannot be durable; the task may still run. Turn on appendonly "
                        f"yes in its config (or CONFIG SET appendonly yes), or enqueue "
                        f"without durable")
            error = translate(reply, self.connection.url) or reply
            return f"its durability was not confirmed ({error}); the task may still run"
        if not isinstance(reply, list):  # WAIT (no WAITAOF): replicas that got it
            if int(reply) >= replicas:
                return None
            return (f"only {int(reply)} of {replicas} replica(s) acknowledged the write "
                    f"within {timeout_s:g}s (WAIT); the task may still run. Check the "
                    f"replicas (INFO replication) or raise durable_timeout_s")
        local, copies = (int(x) for x in reply)  # WAITAOF: [fsynced here 0|1, replicas]
        if local >= 1 and copies >= replicas:
            return None
        hint = "set appendfsync always (or everysec)" if not local and self._fsync == "no" \
            else "raise durable_timeout_s" if not local else \
            "check its replicas (INFO replication; they need appendonly yes)"
        also = f" and on {replicas} replica(s)" if replicas else ""
        return (f"the server did not confirm within {timeout_s:g}s that it has the write "
                f"on disk{also} (WAITAOF answered: on disk {'yes' if local else 'no'}, "
                f"replicas {copies}); the task may still run. To fix it: {hint}")
