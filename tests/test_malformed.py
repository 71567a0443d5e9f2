"""Malformed entries and crashing tasks end as dead letters or clean failures; the
process that met them lives on and runs the next task (issue 10, cases 10-12).

One real worker per server kind meets every bad input at once, in front of good
tasks; the pure executor checks name each case on its own.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import pytest
import redis

import streamq
from streamq import StreamQ, TaskFailed
from streamq.api.task import Task, TaskOptions
from streamq.base import keys
from streamq.data.message import Message
from streamq.data.outcome import Dead, Delivery, Failed
from streamq.worker.executor import Call, Executor
from tests import tasks
from tests.conftest import wait_until

FAST = ("--heartbeat", "0.2", "--log-level", "INFO")
GOOD = 20


def _envelope(task_id: str, **fields: Any) -> str:
    """A streamq envelope (the layout ``Message.encode`` writes) with ``fields`` changed;
    ``json.dumps`` writes a float infinity as ``Infinity``, as a forged entry may."""
    doc: dict[str, Any] = {"v": 1, "id": task_id, "task": "tests.tasks.add",
                           "queue": "default", "ct": "application/json", "ce": "utf-8",
                           "body": "[[1, 2], {}]", "b64": False, "retries": 0, "enq_ms": 0}
    doc.update(fields)
    return json.dumps(doc, separators=(",", ":"))


def _tid(n: int) -> str:
    """A generated-looking id (32 hex digits @ queue), so that its record is found."""
    return f"{n:032x}@default"


class Case(NamedTuple):
    name: str
    raw: str
    task_id: str | None
    """The id the dead letter (and a DEAD record) must carry; None: none is readable."""
    says: tuple[str, ...]
    """What the reason must mention (lower case)."""


CASES = [
    # 10: the envelope itself cannot be decoded.
    Case("envelope-nested-50000-deep",
         _envelope(_tid(1))[:-1] + ',"x":' + "[" * 50_000 + "]" * 50_000 + "}",
         _tid(1), ("undecodable message", "nested too deeply")),
    Case("bare-array-nested-50000-deep", "[" * 50_000 + "]" * 50_000, None,
         ("undecodable message", "nested too deeply")),
    Case("retries-infinity", _envelope(_tid(2), retries=float("inf")),
         _tid(2), ("retries", "infinity")),
    Case("retries-negative", _envelope(_tid(3), retries=-3), _tid(3),
         ("retries", "-3")),
    # 11: the envelope decodes, its body does not have the shape of a call.
    Case("body-a-number", _envelope(_tid(4), body=5), _tid(4),
         ("body", "a number, not a string")),
    Case("body-null", _envelope(_tid(5), body=None), _tid(5),
         ("body", "null, not a string")),
    Case("base64-body-a-number", _envelope(_tid(6), body=7, b64=True),
         _tid(6), ("body", "a number, not a string")),
    Case("arguments-decode-to-5", _envelope(_tid(7), body="5"), _tid(7),
         ("arguments", "[list, dict]", "5")),
    Case("arguments-decode-to-1-2-3", _envelope(_tid(8), body="[1, 2, 3]"),
         _tid(8), ("arguments", "[list, dict]", "[1, 2, 3]")),
    Case("positional-arguments-not-a-list", _envelope(_tid(9), body='[5, {}]'),
         _tid(9), ("arguments", "[list, dict]")),
    Case("keyword-arguments-not-an-object", _envelope(_tid(10), body="[[], []]"),
         _tid(10), ("arguments", "[list, dict]")),
    Case("body-nested-100000-deep",
         _envelope(_tid(11), body="[" * 100_000 + "]" * 100_000), _tid(11),
         ("undecodable arguments", "nested too deeply")),
    Case("content-type-application-data", _envelope(_tid(12), ct="application/data"),
         _tid(12), ("'application/data'", "not accepted")),
]


def _executor(registry: Any = None) -> Executor:
    app = tasks.app
    return Executor(app.registry if registry is None else registry, app.accept_content_types,
                    "json", "testhost:1:aaaa-0", 60)


def _stream(app: StreamQ) -> str:
    return keys.stream(app.settings.namespace, "default")


# -- the executor alone -------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_prepare_dead_letters_a_malformed_entry(case: Case) -> None:
    d = Delivery("default", "1-0", case.raw.encode(), 1)
    out = _executor().prepare(d)
    assert isinstance(out, Dead), out
    assert out.task_id == case.task_id
    assert "\n" not in out.reason and len(out.reason) < 600, out.reason
    assert all(s in out.reason.lower() for s in case.says), out.reason


def test_prepare_dead_letters_before_decoding_past_every_max_deliveries(
        app: StreamQ, rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry whose decoding kills the process (here: ``decode`` raises what no
    handler catches) is dead-lettered once its deliveries pass the highest
    max_deliveries a task of this worker has (5), without being decoded again."""
    from tests.test_api import drain

    class ProcessDied(BaseException):
        pass

    def die(cls: Any, raw: Any) -> Message:
        raise ProcessDied("decoding this entry kills the process")

    stream = _stream(app)
    raw = CASES[0].raw.encode()
    rclient.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
    entry = rclient.xadd(stream, {"m": raw})
    consumer = "testhost:1:aaaa-0"  # drain()'s consumer: it takes its own entry back
    rclient.xreadgroup(keys.GROUP, consumer, {stream: ">"}, count=1)
    rclient.xclaim(stream, keys.GROUP, consumer, 0, [entry], retrycount=6)
    monkeypatch.setattr(Message, "decode", classmethod(die))
    drain(app)
    (letter,) = app.dead.list("default")
    assert letter.raw == raw and letter.deliveries >= 6
    assert f"delivered {letter.deliveries - 1} times" in letter.reason
    assert "max_deliveries=5" in letter.reason and "not decoded" in letter.reason
    assert letter.task_id == CASES[0].task_id  # peeked from the head, not decoded
    assert app.AsyncResult(letter.task_id).status == "DEAD"
    assert rclient.xpending(stream, keys.GROUP)["pending"] == 0


def test_a_task_allowing_more_deliveries_is_not_dead_lettered_early() -> None:
    """The check before decoding uses the highest max_deliveries in the worker, so a
    task that allows 8 deliveries still runs on its 6th."""
    opts = TaskOptions(name="tests.tasks.add", queue="default", max_deliveries=8)
    registry = {"tests.tasks.add": Task(tasks.app, tasks.add.fn, opts)}
    msg, _ = tasks.add.prepare((1, 2), {})
    out = _executor(registry).prepare(Delivery("default", "1-0", msg.encode().encode(), 6))
    assert isinstance(out, Call)
    out = _executor(registry).prepare(Delivery("default", "1-0", msg.encode().encode(), 9))
    assert isinstance(out, Dead) and "max_deliveries=8" in out.reason


TASK_SIDE = [
    # (task, args, exc_type, what the error must mention)
    ("unprintable_error", ("unprintable",), "tests.tasks.Unprintable", "str()"),
    ("nested_result", ("nested", 100_000), "EncodeError", "nested too deeply"),
    ("cyclic_result", ("cyclic",), "EncodeError", "circular reference"),
    ("infinite_countdown", ("countdown",), "Retry", "countdown"),
]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name,args,exc_type,says", TASK_SIDE, ids=[t[0] for t in TASK_SIDE])
def test_run_gives_a_clean_failure_when_the_task_side_breaks(
        vapp: StreamQ, name: str, args: tuple[Any, ...], exc_type: str, says: str) -> None:
    msg, _ = getattr(tasks, name).prepare(args, {})
    call = _executor().prepare(Delivery("default", "1-0", msg.encode().encode(), 1))
    assert isinstance(call, Call)
    out = _executor().run(call)
    assert isinstance(out, Failed), out
    assert out.error.startswith(f"{exc_type}: ") and says in out.error.lower(), out.error
    assert "\n" not in out.error and len(out.error) < 600, out.error


@pytest.mark.parametrize("countdown", [float("inf"), float("nan"), 1e300, "5"],
                         ids=["inf", "nan", "1e300", "a-string"])
def test_a_retry_that_cannot_be_scheduled_is_a_clean_failure(countdown: Any) -> None:
    """A countdown that is not a number, or one whose record TTL the server would
    refuse (which would fail the whole batch's write), fails that task alone."""
    from streamq import Retry

    def ask() -> None:
        raise Retry(countdown=countdown)

    opts = TaskOptions(name="tests.tasks.ask", queue="default", max_retries=3)
    registry = {opts.name: Task(tasks.app, ask, opts)}
    msg = Message(_tid(99), opts.name, "default", "application/json", "utf-8", "[[], {}]")
    call = _executor(registry).prepare(Delivery("default", "1-0", msg.encode().encode(), 1))
    assert isinstance(call, Call)
    out = _executor(registry).run(call)
    assert isinstance(out, Failed), out
    assert out.error.startswith("Retry: Retry(countdown=...) must be a number of seconds")


@pytest.mark.timeout(20)
def test_arguments_that_cannot_be_encoded_raise_serialization_error(vapp: StreamQ) -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    for value, says in ((deep, "nested too deeply"), (cyclic, "circular reference")):
        for enqueue in (lambda v: tasks.echo.delay(v), lambda v: tasks.echo.map([v]),
                        lambda v: tasks.echo.apply_async((v,))):
            with pytest.raises(streamq.SerializationError) as info:
                enqueue(value)
            assert isinstance(info.value, streamq.EncodeError)
            text = str(info.value)
            assert "tests.tasks.echo" in text and says in text.lower(), text
            assert "\n" not in text and len(text) < 600, text
    assert tasks.add.delay(1, 2).id  # the producer goes on
    assert vapp.server.connection.client.xlen(_stream(vapp)) == 1


# -- a real worker meets all of them --------------------------------------------------------
def test_bad_entries_and_crashing_tasks_never_kill_the_worker(
        app: StreamQ, rclient: redis.Redis, start_worker: Any) -> None:
    stream = _stream(app)
    for case in CASES:
        rclient.xadd(stream, {"m": case.raw})
    crashing = {name: (getattr(tasks, name).delay(*args), args[0], exc_type, says)
                for name, args, exc_type, says in TASK_SIDE}
    good = [tasks.add.delay(i, i) for i in range(GOOD)]
    w = start_worker(app.settings.url, "-c", "1", *FAST)

    assert [r.get(timeout=30) for r in good] == [2 * i for i in range(GOOD)]
    expected = len(CASES) + len(TASK_SIDE)  # a FAILURE's message goes to dead letters too
    letters = wait_until(lambda: (lambda d: d if len(d) >= expected else None)(
        app.dead.list("default")), timeout=20, message=f"{expected} dead letters")
    problems = []
    by_raw = {letter.raw: letter for letter in letters}
    for case in CASES:
        letter = by_raw.get(case.raw.encode())
        if letter is None:
            problems.append(f"{case.name}: no dead letter")
            continue
        reason = letter.reason.lower()
        if not all(s in reason for s in case.says):
            problems.append(f"{case.name}: reason {letter.reason!r} misses {case.says}")
        if (letter.task_id or None) != case.task_id:
            problems.append(f"{case.name}: task id {letter.task_id!r}")
        if case.task_id and app.AsyncResult(case.task_id).status != "DEAD":
            problems.append(f"{case.name}: record {app.AsyncResult(case.task_id).status}")
    for name, (res, key, exc_type, says) in crashing.items():
        try:
            res.get(timeout=10)
            problems.append(f"{name}: succeeded")
        except TaskFailed as exc:
            if exc.status != "FAILURE" or exc.exc_type != exc_type or \
                    says not in exc.exc_message.lower():
                problems.append(f"{name}: {exc.status} {exc.exc_type}: {exc.exc_message}")
        runs = tasks.count_of(key)
        if runs != 1:
            problems.append(f"{name}: ran {runs} times")
    assert len(letters) == expected, [d.reason for d in letters]
    assert not problems, "\n".join(problems)
    wait_until(lambda: rclient.xpending(stream, keys.GROUP)["pending"] == 0,
               message="nothing pending")
    out = w.output()
    assert "died with exit code" not in out, out[-3000:]
    assert w.stop() == 0
