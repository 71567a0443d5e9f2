"""The Lua scripts of ``lua/``, each loaded with the record's prelude, run by SHA.

Every script opens with ``#!lua``: on Redis 7+ and Valkey a script with a shebang
may touch only keys of one slot, so a cluster-mode server refuses any script that
would cross slots instead of running it; and a full server refuses it whole, before
it writes anything (see ``_FLAGS`` for the two that run anyway). The prelude
(``streamq.data.record``) names the record's fields and states and builds its
completion payload, so no script spells a field name of its own.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

from ..data import record

NAMES = ("outcomes", "enqueue_many", "wait", "requeue_dead", "heartbeat", "promote",
         "schedule", "alive", "renew", "forward", "chord", "outbox", "periodic",
         "enqueue_keyed", "gate")

_FLAGS = {"outcomes": "allow-oom", "heartbeat": "allow-oom", "alive": "allow-oom",
          "renew": "allow-oom", "outbox": "allow-oom"}
"""A full server (maxmemory, noeviction) refuses every other script. These run:
acknowledging deletes entries, which is what frees memory, and heartbeats keep a live
worker's running tasks from being reclaimed; all of them write little."""


def _source(name: str) -> str:
    body = resources.files(__package__).joinpath(f"lua/{name}.lua").read_text("utf-8")
    flags = f" flags={_FLAGS[name]}" if name in _FLAGS else ""
    return f"#!lua{flags}\n{record.LUA_PRELUDE}\n{body}"


SOURCE = {name: _source(name) for name in NAMES}
SHA = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in SOURCE.items()}


def load(client: Any) -> None:
    """Load every script into ``client``'s server (on a cluster: one node's own cache)
    in one pipelined round trip."""
    pipe = client.pipeline(transaction=False)
    for name in NAMES:
        pipe.script_load(SOURCE[name])
    pipe.execute()
