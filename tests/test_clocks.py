"""Clocks and waiting (issue 10, "Traps"): delayed work is due by the server's clock,
whatever the producer's or the promoting worker's clock says; and ``get()`` on a
forgotten task says so at once.

A skewed clock is simulated without faking any clock: the server layer is called with
an explicit skewed "now" (a producer's due time, a promoter's ``now_ms``)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from streamq import StreamQ
from streamq.base import keys
from streamq.base.errors import ResultNotFoundError
from streamq.data import record
from streamq.data.message import Message, now_ms
from tests import tasks
from tests.test_api import drain

SKEW_MS = 60_000


def _server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _delayed(app: StreamQ, task_id: str) -> float | None:
    score = app.server.connection.client.zscore(keys.delayed(app.settings.namespace,
                                                             "default"), task_id)
    return None if score is None else float(score)


def _stream_len(app: StreamQ) -> int:
    return int(app.server.connection.client.xlen(keys.stream(app.settings.namespace,
                                                             "default")))


def _enqueue(app: StreamQ, message: Message, due_ms: int | None, **options: Any) -> None:
    """What ``StreamQ.enqueue`` does for one call, with the due time given."""
    broker = app.server.broker
    out: list[bytes] = []
    broker.enqueue_commands(out, message.id, message.queue,
                            record.enqueued(message.task, message.queue, message.enqueued_ms,
                                            due_ms),
                            app.settings.result_ttl + 10, message.encode(), due_ms,
                            message.id.endswith("@" + message.queue), **options)
    broker.send_one(out)


@pytest.mark.parametrize("skew_ms", [SKEW_MS, -SKEW_MS], ids=["ahead", "behind"])
def test_promotion_goes_by_the_servers_clock(app: StreamQ, skew_ms: int) -> None:
    """A promoter whose clock is 60 s ahead used to run a 3 s countdown at once; one
    60 s behind, a minute late. Now both move it when it is due, within ~1 s."""
    res = tasks.add.apply_async((2, 3), countdown=3)
    t0 = time.monotonic()
    delayed = app.server.delayed
    assert delayed.promote("default", now_ms() + skew_ms) == (0, int(_delayed(app, res.id)
                                                                      or 0))
    assert _stream_len(app) == 0 and res.status == "SCHEDULED"
    while delayed.promote("default", now_ms() + skew_ms)[0] == 0:
        assert time.monotonic() - t0 < 4.0, "not promoted within 1 s of its due time"
        time.sleep(0.05)
    waited = time.monotonic() - t0
    assert waited >= 2.9, f"promoted {3 - waited:.2f} s early"
    assert _stream_len(app) == 1 and _delayed(app, res.id) is None
    drain(app)
    assert res.get(timeout=5) == 5


@pytest.mark.parametrize("routed", [True, False], ids=["generated id", "chosen id"])
def test_a_countdown_is_due_by_the_servers_clock(app: StreamQ, routed: bool) -> None:
    """A producer 60 s slow used to write a due time 57 s in the past for a 3 s
    countdown (it ran at once). Given the countdown, the server computes the due time
    from its own clock; the record shows that time."""
    client = app.server.connection.client
    message, _ = tasks.add.prepare((1, 2), {}, task_id=None if routed else
                                   f"clocks-{time.monotonic_ns()}")
    slow_due = now_ms() - SKEW_MS + 3000  # what a slow producer's clock makes of it
    before = _server_ms(client)
    _enqueue(app, message, slow_due, countdown_ms=3000)
    after = _server_ms(client)
    due = _delayed(app, message.id)
    assert due is not None and before + 3000 <= due <= after + 3000
    res = app.AsyncResult(message.id)
    assert res.status == "SCHEDULED" and res.info["eta_ms"] == due
    # Kept at least until due (plus result_ttl), as for any scheduled record.
    assert client.ttl(keys.record(app.settings.namespace, "default", message.id)) > \
        app.settings.result_ttl
    assert app.server.delayed.promote("default", now_ms())[0] == 0
    assert _stream_len(app) == 0


def test_an_eta_stays_the_wall_clock_time_asked_for(app: StreamQ) -> None:
    client = app.server.connection.client
    message, _ = tasks.add.prepare((1, 2), {})
    eta = _server_ms(client) + 3000
    _enqueue(app, message, eta)
    assert _delayed(app, message.id) == eta
    assert app.AsyncResult(message.id).info["eta_ms"] == eta


@pytest.mark.parametrize("by", ["the same handle", "another handle"])
def test_get_after_forget_says_so_at_once(app: StreamQ, by: str) -> None:
    """It used to block a whole 5 s slice: the handle that sent the task marks and
    blocks in one round trip, and the block went on although the mark found nothing."""
    res = tasks.add.delay(2, 3)
    drain(app)
    (res if by == "the same handle" else app.AsyncResult(res.id)).forget()
    t0 = time.monotonic()
    with pytest.raises(ResultNotFoundError):
        res.get(timeout=10)
    assert time.monotonic() - t0 < 0.5
    assert res.status == "UNKNOWN"


def test_a_waiter_learns_at_once_that_the_task_was_forgotten(app: StreamQ) -> None:
    """A get() already blocked when another handle forgets the task wakes at once."""
    res = tasks.add.delay(2, 3)  # no worker: it stays PENDING
    raised: list[BaseException] = []
    woke: list[float] = []

    def wait() -> None:
        try:
            res.get(timeout=10)
        except BaseException as exc:  # reported below
            raised.append(exc)
        woke.append(time.monotonic())

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)  # the waiter is blocked on the completion list
    t0 = time.monotonic()
    app.AsyncResult(res.id).forget()
    waiter.join(timeout=10)
    assert raised and isinstance(raised[0], ResultNotFoundError), raised
    assert woke[0] - t0 < 0.5


def test_a_task_enqueued_again_after_forget_is_waited_for_normally(app: StreamQ) -> None:
    """The short-lived "forgotten" answer left for waiters does not confuse a task
    whose id is enqueued again at once."""
    task_id = f"again-{time.monotonic_ns()}"
    tasks.add.apply_async((1, 1), task_id=task_id)
    drain(app)
    app.AsyncResult(task_id).forget()
    res = tasks.add.apply_async((2, 2), task_id=task_id)
    drain(app)
    t0 = time.monotonic()
    assert res.get(timeout=5) == 4
    assert time.monotonic() - t0 < 0.5


def test_apply_async_countdown_from_a_slow_producer_is_due_by_the_servers_clock(
        app: StreamQ, monkeypatch: pytest.MonkeyPatch) -> None:
    """A producer whose clock is 60 s slow: its 3 s countdown used to be due 57 s in
    the past, so it ran at once. Only the producer's clock is skewed (its ``now_ms``);
    the server and the check use the server's TIME."""
    import streamq.api.task as task_module

    client = app.server.connection.client
    monkeypatch.setattr(task_module, "now_ms", lambda: now_ms() - 60_000)
    for res in (tasks.add.apply_async((1, 2), countdown=3),
                app.send_by_name(tasks.add.name, [3, 4], countdown=3)):
        score = _delayed(app, res.id)
        assert score is not None
        assert abs(score - (_server_ms(client) + 3000)) < 500, score - _server_ms(client)
        assert res.status == record.Status.SCHEDULED
