"""The task record: the one owner of its states, its field names, the record of each
transition, and the completion codec.

A record is a hash per task (``keys.record``), written with the message at enqueue
and at every state change; each write refreshes its TTL. The Lua scripts never
spell a field or a state: they get ``LUA_PRELUDE``, built here from the same names.

States::

    PENDING ──> STARTED ──> SUCCESS
    SCHEDULED ─┘   │  └───> FAILURE (then dead-lettered)
                   ├──────> RETRY ──> (SCHEDULED again, by the delayed set)
                   └──────> DEAD (rejected, undecodable, unknown task, max_deliveries)
    UNKNOWN: no record (never enqueued, forgotten or expired)

Completion payload (what ``AsyncResult.get`` wakes up with): ``S<ct>\\n<ce>\\n<result>``
for a success, ``F`` for a failure or a dead letter (the waiter then reads the
record for the error).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Status(StrEnum):
    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    STARTED = "STARTED"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    DEAD = "DEAD"
    UNKNOWN = "UNKNOWN"


FINAL = frozenset({Status.SUCCESS, Status.FAILURE, Status.DEAD})

# -- field names ---------------------------------------------------------------------------
STATUS = "status"
TASK = "task"
QUEUE = "queue"
RETRIES = "retries"
DELIVERIES = "deliveries"
ENQUEUED_MS = "enqueued_ms"
ETA_MS = "eta_ms"
STARTED_MS = "started_ms"
FINISHED_MS = "finished_ms"
RUNTIME_MS = "runtime_ms"
DEAD_AT_MS = "dead_at_ms"
WORKER = "worker"
RESULT = "result"
RESULT_CT = "result_ct"
RESULT_CE = "result_ce"
"""Content encoding of the result; absent means utf-8."""
EXC_TYPE = "exc_type"
EXC_MESSAGE = "exc_message"
TRACEBACK = "traceback"
REASON = "reason"
WAITING = "waiting"
"""Set by a waiter (``wait.lua``): the worker then pushes the completion."""
FORWARDED = "forwarded"
"""Set once on a canvas step's record when it is enqueued (or failed) by a forward:
a second forward of the same step finds it and does nothing (``forward.lua``)."""

INT_FIELDS = frozenset({RETRIES, DELIVERIES, ENQUEUED_MS, ETA_MS, STARTED_MS, FINISHED_MS,
                        DEAD_AT_MS, RUNTIME_MS})
OUTCOME_FIELDS = (EXC_TYPE, EXC_MESSAGE, TRACEBACK, REASON, RESULT, RESULT_CT, RESULT_CE,
                  FINISHED_MS, DEAD_AT_MS, RUNTIME_MS)
"""Fields of an earlier outcome, cleared when a dead letter is requeued."""

DONE_TTL_S = 10
"""How long a completion list lives: it only has to outlast the moment between a
waiter's mark and its blocking read (``wait.lua`` pushes a new one for a record
that was final before anyone waited). Short, because it costs ~200 bytes a task."""


# -- the record of each transition ----------------------------------------------------------
# Each returns field/value pairs; None values are left out.
def _pairs(fields: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for k, v in fields.items():
        if v is not None:
            out += (k, v)
    return out


def enqueued(task: str, queue: str, enqueued_ms: int, due_ms: int | None) -> list[Any]:
    record: list[Any] = [STATUS, Status.SCHEDULED.value if due_ms else Status.PENDING.value,
                         TASK, task, QUEUE, queue, RETRIES, 0, ENQUEUED_MS, enqueued_ms]
    if due_ms:
        record += [ETA_MS, due_ms]
    return record


def started(worker: str, deliveries: int) -> list[Any]:
    return [STATUS, Status.STARTED.value, WORKER, worker, DELIVERIES, deliveries]


def retry(*, retries: int, deliveries: int, exc_type: str, exc_message: str, traceback: str,
          eta_ms: int, started_ms: int, worker: str) -> list[Any]:
    return _pairs({STATUS: Status.RETRY.value, RETRIES: retries, DELIVERIES: deliveries,
                   EXC_TYPE: exc_type, EXC_MESSAGE: exc_message, TRACEBACK: traceback,
                   ETA_MS: eta_ms, STARTED_MS: started_ms, WORKER: worker})


def failure(*, exc_type: str, exc_message: str, traceback: str, retries: int,
            deliveries: int, started_ms: int | None, finished_ms: int, worker: str
            ) -> list[Any]:
    return _pairs({STATUS: Status.FAILURE.value, EXC_TYPE: exc_type,
                   EXC_MESSAGE: exc_message, TRACEBACK: traceback, RETRIES: retries,
                   DELIVERIES: deliveries, STARTED_MS: started_ms, FINISHED_MS: finished_ms,
                   WORKER: worker})


def dead(*, reason: str, task: str, deliveries: int, dead_at_ms: int, worker: str
         ) -> list[Any]:
    return [STATUS, Status.DEAD.value, REASON, reason, TASK, task, DELIVERIES, deliveries,
            DEAD_AT_MS, dead_at_ms, WORKER, worker]


def requeued(task: str, queue: str, enqueued_ms: int) -> list[Any]:
    """A dead letter moved back to its queue: retries start over."""
    return [STATUS, Status.PENDING.value, RETRIES, 0, TASK, task, QUEUE, queue,
            ENQUEUED_MS, enqueued_ms]


# -- reading -------------------------------------------------------------------------------
def decode(raw: dict[bytes, bytes]) -> dict[str, Any]:
    """A stored record as a dict: numbers as ints, ``result`` left as bytes."""
    rec: dict[str, Any] = {}
    for k, v in raw.items():
        name = k.decode()
        if name in (WAITING, FORWARDED):  # marks, not part of the task's record
            continue
        if name == RESULT:
            rec[name] = v
            continue
        text = v.decode("utf-8", "replace")
        rec[name] = int(text) if name in INT_FIELDS and text.lstrip("-").isdigit() else text
    return rec


def decode_completion(payload: bytes) -> tuple[str, str, bytes] | None:
    """(content type, content encoding, result) of a success's completion; None for
    a failure's (``F``)."""
    if payload[:1] != b"S":
        return None
    ct, ce, result = payload[1:].split(b"\n", 2)
    return ct.decode(), ce.decode(), result


# -- the Lua side --------------------------------------------------------------------------
def _lua_table(items: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}='{v}'" for k, v in items.items()) + "}"


FIELDS = (STATUS, TASK, QUEUE, RETRIES, DELIVERIES, ENQUEUED_MS, ETA_MS, STARTED_MS,
          FINISHED_MS, RUNTIME_MS, DEAD_AT_MS, WORKER, RESULT, RESULT_CT, RESULT_CE, EXC_TYPE,
          EXC_MESSAGE, TRACEBACK, REASON, WAITING, FORWARDED)

LUA_PRELUDE = f"""\
-- Prelude from streamq/data/record.py: the record's field names and states.
local F = {_lua_table({f: f for f in FIELDS})}
local S = {_lua_table({s.name: s.value for s in Status})}
local FINAL = {{[S.SUCCESS]=true, [S.FAILURE]=true, [S.DEAD]=true}}
-- The completion payload (decoded by record.decode_completion).
local function completion(status, result, ct, ce)
  if status ~= S.SUCCESS then return 'F' end
  return 'S' .. (ct or '') .. '\\n' .. (ce or 'utf-8') .. '\\n' .. (result or '')
end
-- Push a final record's completion when a waiter marked it (only the newest counts:
-- a requeued task can finish twice).
local function complete(record, done, payload, done_ttl)
  if redis.call('HEXISTS', record, F.waiting) == 1 then
    if redis.call('RPUSH', done, payload) > 1 then redis.call('LTRIM', done, -1, -1) end
    redis.call('EXPIRE', done, done_ttl)
  end
end
"""
