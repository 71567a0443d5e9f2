"""The shape the architecture promises: the record's one owner (requeue resets it in
the same step that moves the letter), public hooks, and task ids that route
themselves to the slot of their queue."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from streamq import Hook, StreamQ, TaskEvent
from streamq.base import keys
from streamq.data.record import Status
from tests import tasks
from tests.recording import Recorder
from tests.test_api import drain


def test_requeue_never_resets_a_record_whose_letter_another_requeue_moved(
        app: StreamQ) -> None:
    """Two requeues at once (two operators, a retried cron job): the second finds the
    letters already moved, and must leave the records of the tasks that meanwhile
    ran alone (it used to reset them to PENDING with no message anywhere)."""
    handles = [tasks.fail_first.delay(f"rq2-{i}") for i in range(250)]
    drain(app)
    assert {h.status for h in handles} == {Status.FAILURE}
    assert app.dead.count("default") == 250
    other = StreamQ(app.settings.url, namespace=app.settings.namespace)
    moved_by_other: list[int] = []

    def between_chunks(_n: int) -> None:
        # After this requeue moved its first 200 letters: another one takes the
        # remaining 50, and a worker runs them to SUCCESS.
        if not moved_by_other:
            moved_by_other.append(other.dead.requeue("default"))
            drain(app)

    assert app.dead.requeue("default", progress=between_chunks) == 200
    assert moved_by_other == [50]
    drain(app)
    assert [h.status for h in handles] == [Status.SUCCESS] * 250
    assert all(h.get(timeout=5) == 2 for h in handles)
    other.close()


def test_requeue_resets_the_record_and_moves_the_message_together(
        app: StreamQ, rclient: redis.Redis) -> None:
    res = tasks.fail_first.delay("rq-one")
    drain(app)
    (letter,) = app.dead.list("default")
    assert app.dead.requeue("default", [letter.entry_id]) == 1
    rec = res.info
    assert rec["status"] == Status.PENDING and rec["retries"] == 0
    assert not {"exc_type", "exc_message", "traceback", "finished_ms"} & set(rec)
    assert rclient.xlen(keys.stream(app.settings.namespace, "default")) == 1
    assert app.dead.requeue("default", [letter.entry_id]) == 0  # gone: nothing changes
    drain(app)
    assert res.get(timeout=5) == 2




class Broken(Hook):
    def started(self, event: TaskEvent) -> None:
        raise RuntimeError("a bug in a hook")


def test_hooks_see_every_step_and_their_errors_never_reach_the_task(
        app: StreamQ, caplog: pytest.LogCaptureFixture) -> None:
    recorder, broken = Recorder(), Broken()
    app.add_hook(broken)
    app.add_hook(recorder)
    try:
        ok = tasks.add.delay(2, 3)
        flaky = tasks.flaky.delay("hooks-flaky", 1)
        failed = tasks.fail.delay("boom")
        rejected = tasks.reject.delay("no")
        with caplog.at_level(logging.ERROR, logger="streamq.api.hooks"):
            drain(app)
            time.sleep(0.3)  # the retry's backoff is at most 0.2 s
            assert app.server.delayed.promote("default", int(time.time() * 1000))[0] == 1
            drain(app)
        assert ok.get(timeout=5) == 5 and flaky.get(timeout=5) == 2
    finally:
        app.remove_hook(broken)
        app.remove_hook(recorder)
    by_id: dict[Any, list[str]] = {}
    for name, event in recorder.events:
        by_id.setdefault(event.task_id, []).append(name)
    assert by_id[ok.id] == ["enqueued", "started", "succeeded"]
    assert by_id[flaky.id] == ["enqueued", "started", "retried", "started", "succeeded"]
    assert by_id[failed.id] == ["enqueued", "started", "failed"]
    assert by_id[rejected.id] == ["enqueued", "started", "dead"]
    events = {(n, e.task_id): e for n, e in recorder.events}
    assert events["succeeded", ok.id].runtime_s is not None
    assert events["succeeded", ok.id].queue == "default"
    assert events["retried", flaky.id].error == "ValueError: failure 1 of 1"
    assert events["succeeded", flaky.id].attempt == 2
    assert events["failed", failed.id].error == "ValueError: boom"
    assert events["dead", rejected.id].error == "rejected by the task: no"
    # Logged (with its traceback) once per started run: 5 runs, the flaky task's twice.
    logged = [r for r in caplog.records if "failed in started" in r.getMessage()]
    assert len(logged) == 5 and all(r.exc_info for r in logged)
    with pytest.raises(TypeError, match="streamq.Hook"):
        app.add_hook(object())  # type: ignore[arg-type]


def test_task_ids_route_to_their_queue_slot(app: StreamQ) -> None:
    ns = app.settings.namespace
    res = tasks.on_other_queue.delay(4)
    chosen = tasks.add.apply_async((1, 2), task_id="order-42")
    assert res.id.endswith("@other") and len(res.id) == 32 + 1 + len("other")
    assert chosen.id == "order-42"
    drain(app, ("default", "other"))
    fresh = StreamQ(app.settings.url, namespace=ns)  # knows nothing of these tasks
    assert fresh.AsyncResult(res.id).get(timeout=5) == 40
    assert fresh.AsyncResult("order-42").get(timeout=5) == 3
    assert fresh.AsyncResult("order-43").status == Status.UNKNOWN
    slot = key_slot(keys.stream(ns, "other").encode())
    assert key_slot(keys.record(ns, "other", res.id).encode()) == slot
    assert key_slot(keys.done(ns, "other", res.id).encode()) == slot
    fresh.close()
    with pytest.raises(ValueError, match="task_id"):
        tasks.add.apply_async((1, 2), task_id="has {braces}")
