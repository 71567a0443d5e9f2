"""Canvas (chain, group, chord) on real servers and real worker processes: values in
order, failures that stop what follows and say why, and chords whose body runs
exactly once while members' processes are SIGKILLed, or die between acknowledging a
member and forwarding it (the outbox sweep then fires the body)."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from streamq import (
    ChainError,
    ChordError,
    GroupResult,
    StreamQ,
    TaskFailed,
    chain,
    chord,
    group,
)
from streamq.base import keys
from streamq.data.outcome import Delivery, Succeeded
from streamq.server.transport import script_command
from streamq.server.writer import OutcomeWriter
from streamq.worker.continuations import CRASH_HOOK
from tests import canvas_tasks as ct
from tests.conftest import wait_until
from tests.servers import on_shards_too
from tests.tasks import count_of

FAST = ("--heartbeat", "0.2", "--log-level", "INFO")
MODULE = "tests.canvas_tasks"


@pytest.fixture
def worker(app: StreamQ, start_worker: Any) -> Any:
    """One worker process (two children) reading the default queue."""
    return start_worker(app.settings.url, "-c", "2", *FAST, module=MODULE)


@on_shards_too
def test_chain_of_three_passes_each_result_on(app: StreamQ, worker: Any) -> None:
    last = (ct.inc.s(1) | ct.inc.s() | ct.square.s()).apply_async()
    assert isinstance(last.parent, type(last)) and last.parent.parent is not None
    assert last.status in ("PENDING", "SUCCESS")  # its record exists from the start
    assert last.get(timeout=15) == 9
    assert last.parent.get(timeout=5) == 3 and last.parent.parent.get(timeout=5) == 2
    assert last.parent.parent.parent is None
    assert count_of("inc") == 2 and count_of("square") == 1


def test_immutable_step_and_options(app: StreamQ, start_worker: Any) -> None:
    start_worker(app.settings.url, "-c", "1", "-Q", "default,other", *FAST, module=MODULE)
    ok = chain(ct.inc.s(1), ct.echo.si("fixed"), ct.echo.s().set(queue="other",
                                                                  countdown=0.3))
    started = time.monotonic()
    handle = ok.apply_async()
    assert handle.get(timeout=15) == "fixed"
    assert time.monotonic() - started >= 0.3
    assert handle.info["queue"] == "other"


def test_a_failed_step_ends_the_chain_and_later_records_say_why(app: StreamQ,
                                                                 worker: Any) -> None:
    last = chain(ct.inc.s(1), ct.boom.s(), ct.inc.s(key="after"),
                 ct.square.s(key="after2")).apply_async()
    with pytest.raises(ChainError) as caught:
        last.get(timeout=15)
    failed = last.parent.parent
    assert failed.status == "FAILURE"
    assert f"step tests.canvas_tasks.boom ({failed.id}) failed for good" in str(caught.value)
    assert "ValueError: boom on 2" in str(caught.value)
    assert last.parent.status == "FAILURE"
    assert isinstance(caught.value, TaskFailed)
    time.sleep(0.5)  # nothing more may run
    assert count_of("after") == 0 and count_of("after2") == 0 and count_of("boom") == 1


def test_group_of_1000_in_order(app: StreamQ, worker: Any) -> None:
    res = group(ct.add.s(i, i) for i in range(1000)).apply_async()
    assert isinstance(res, GroupResult) and len(res) == 1000
    assert res.get(timeout=30) == [2 * i for i in range(1000)]
    assert res.completed_count() == 1000 and res.ready() and res.successful()
    assert [r.id for r in res.results] == [r.id for r in res]


def test_group_of_10000_from_a_generator_is_enqueued_in_batches(vapp: StreamQ,
                                                               start_worker: Any) -> None:
    client = vapp.server.connection.client
    stream = keys.stream(vapp.settings.namespace, "default")
    seen_enqueued: list[int] = []

    def members() -> Iterator[Any]:
        for i in range(10_000):
            if i == 5000:  # the first batches were sent before this one was built
                seen_enqueued.append(int(client.xlen(stream)))
            yield ct.add.s(i, 1)

    res = group(members()).apply_async()
    assert seen_enqueued and 1000 <= seen_enqueued[0] <= 5000
    start_worker(vapp.settings.url, "-c", "2", *FAST, module=MODULE)
    values = res.get(timeout=45)
    assert values == [i + 1 for i in range(10_000)]


def test_group_get_raises_the_first_failure_unless_told_not_to(app: StreamQ,
                                                               worker: Any) -> None:
    res = group(ct.inc.s(1), ct.boom.s(2), ct.inc.s(3)).apply_async()
    with pytest.raises(TaskFailed, match="boom on 2"):
        res.get(timeout=15)
    values = res.get(timeout=15, propagate=False)
    assert values[0] == 2 and values[2] == 4 and isinstance(values[1], ValueError)
    assert res.ready() and not res.successful() and res.failed()
    assert res.completed_count() == 2


@on_shards_too
def test_chord_failing_member_fails_fast_and_the_body_never_runs(app: StreamQ,
                                                                 worker: Any) -> None:
    body = chord([ct.square.s(2), ct.boom.s(7), ct.square.s(3)],
                 ct.total.s(key="never")).apply_async()
    with pytest.raises(ChordError) as caught:
        body.get(timeout=15)
    member = body.parent.results[1]
    assert f"chord member 1 (tests.canvas_tasks.boom, {member.id}) failed for good" in \
        str(caught.value)
    assert body.status == "FAILURE"
    body.parent.get(timeout=15, propagate=False)  # every member finished
    time.sleep(0.5)
    assert count_of("never") == 0


def test_chord_collect_runs_the_body_with_every_outcome(app: StreamQ, worker: Any) -> None:
    body = chord([ct.square.s(2), ct.boom.s(7), ct.square.s(3)], ct.outcomes.s(),
                 on_error="collect").apply_async()
    assert body.get(timeout=15) == [4, "failed: boom on 7", 9]
    assert count_of("outcomes") == 1


@on_shards_too
def test_nested_canvases(app: StreamQ, worker: Any) -> None:
    # chain(a, group, b): the group gets a's result, b the group's results.
    last = chain(ct.inc.s(1), group(ct.inc.s(), ct.square.s()),
                 ct.total.s(key="n1")).apply_async()
    assert last.get(timeout=15) == 3 + 4 and ct.got("n1") == [[3, 4]]
    # chord(group(chain, ...), body): a chain member contributes its last result.
    body = chord(group(chain(ct.inc.s(1), ct.inc.s()), ct.square.s(3),
                       chain(ct.square.s(2), ct.square.s())),
                 ct.total.s(key="n2")).apply_async()
    assert body.get(timeout=15) == 3 + 9 + 16 and ct.got("n2") == [[3, 9, 16]]
    # A failed first step fails the whole rest, the chord's members and body too.
    last = chain(ct.boom.s(0), group(ct.inc.s(key="g"), ct.inc.s(key="g")),
                 ct.total.s(key="n3")).apply_async()
    with pytest.raises(ChainError):
        last.get(timeout=15)
    assert [r.status for r in last.parent.results] == ["FAILURE", "FAILURE"]
    assert count_of("g") == 0 and count_of("n3") == 0


def test_steps_in_task_threads_and_on_an_event_loop(vapp: StreamQ,
                                                    start_worker: Any) -> None:
    start_worker(vapp.settings.url, "-c", "1", "--threads", "3", *FAST, module=MODULE)
    start_worker(vapp.settings.url, "-c", "1", "-Q", "canvas_async", *FAST, module=MODULE)
    last = chain(ct.inc.s(1), ct.ainc.s(), group(ct.square.s(), ct.ainc.s(), ct.inc.s()),
                 ct.total.s(key="mixed")).apply_async()
    assert last.get(timeout=20) == 9 + 4 + 4
    assert count_of("ainc") == 2 and count_of("mixed") == 1


@on_shards_too
def test_chord_members_on_queue_a_and_body_on_queue_b(app: StreamQ,
                                                      start_worker: Any) -> None:
    start_worker(app.settings.url, "-c", "1", "-Q", "canvas_a", *FAST, module=MODULE)
    start_worker(app.settings.url, "-c", "1", "-Q", "canvas_b", *FAST, module=MODULE)
    body = chord((ct.square.s(i).set(queue="canvas_a") for i in range(30)),
                 ct.total.s(key="ab").set(queue="canvas_b")).apply_async()
    assert body.get(timeout=20) == sum(i * i for i in range(30))
    assert body.info["queue"] == "canvas_b"
    assert {r.info["queue"] for r in body.parent} == {"canvas_a"}
    assert count_of("ab") == 1


def test_chord_of_200_runs_its_body_once_while_members_are_killed(vapp: StreamQ,
                                                                   start_worker: Any) -> None:
    members = start_worker(vapp.settings.url, "-c", "3", *FAST, module=MODULE)
    start_worker(vapp.settings.url, "-c", "1", "-Q", "canvas_body", *FAST, module=MODULE)
    body = chord((ct.square.s(i, "m", 0.01) for i in range(200)),
                 ct.total.s(key="once").set(queue="canvas_body")).apply_async()
    rng = random.Random(14)
    kills = 0
    deadline = time.monotonic() + 20
    while body.status != "SUCCESS" and kills < 6 and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.15, 0.4))
        children = members.children()
        if children and body.parent.completed_count() < 200:
            os.kill(rng.choice(children), signal.SIGKILL)
            kills += 1
    assert body.get(timeout=40) == sum(i * i for i in range(200))
    assert kills >= 2
    time.sleep(1.5)  # a second firing would have run by now
    assert count_of("once") == 1
    assert ct.got("once") == [[i * i for i in range(200)]]
    assert count_of("m") >= 200  # killed members ran again, and counted once each


@on_shards_too
def test_a_crash_between_acknowledging_members_and_forwarding_them(app: StreamQ,
                                                                   start_worker: Any) -> None:
    """Each member's process dies right after its outcome (and outbox) is written and
    before its forward is sent: only the outbox sweep can fire the body."""
    crashing = start_worker(app.settings.url, "-c", "1", *FAST, module=MODULE,
                            env={CRASH_HOOK: "1"})
    start_worker(app.settings.url, "-c", "1", "-Q", "canvas_body", *FAST, module=MODULE)
    body = chord([ct.square.s(i) for i in range(3)],
                 ct.total.s(key="swept").set(queue="canvas_body")).apply_async()
    assert body.get(timeout=30) == 0 + 1 + 4
    assert count_of("square") == 3  # each member acknowledged once, before its crash
    assert count_of("swept") == 1
    assert "again from the outbox" in crashing.output()
    client = app.server.connection.client
    wait_until(lambda: client.hlen(keys.outbox(app.settings.namespace, "default")) == 0,
               timeout=10, message="the outbox emptied")


def test_interrupted_creation_never_fires_a_half_built_chord(app: StreamQ,
                                                             worker: Any) -> None:
    from streamq.api.canvas import _elements
    from streamq.api.canvas_build import Build

    build = Build(app)
    starts, _, body = build.chain(_elements(chord([ct.square.s(1), ct.square.s(2)],
                                                  ct.total.s(key="half"))), [], [])
    build.send(starts[:1])  # as if the process died after the first member's enqueue
    assert body.parent.results[0].get(timeout=15) == 1
    time.sleep(0.5)
    assert body.status == "PENDING" and count_of("half") == 0
    client = app.server.connection.client
    ttl = client.ttl(keys.chord(app.settings.namespace, "default", body.id))
    assert 0 < ttl <= app.settings.result_ttl


def test_a_body_whose_chord_state_expired_is_dead_and_ends_its_chain(
        app: StreamQ, worker: Any, start_worker: Any) -> None:
    ns = app.settings.namespace
    last = chain(chord([ct.square.s(2)], ct.total.s(key="lost").set(queue="canvas_body")),
                 ct.inc.s(key="after_lost")).apply_async()
    body = last.parent
    client = app.server.connection.client
    stream = keys.stream(ns, "canvas_body")
    wait_until(lambda: client.exists(stream) and client.xlen(stream) == 1, timeout=15,
               message="the body enqueued")
    client.delete(keys.chord_results(ns, "canvas_body", body.id))  # as if it expired
    start_worker(app.settings.url, "-c", "1", "-Q", "canvas_body", *FAST, module=MODULE)
    with pytest.raises(ChainError, match="failed for good"):
        last.get(timeout=15)
    assert body.status == "DEAD" and "chord state expired" in body.info["reason"]
    assert count_of("lost") == 0 and count_of("after_lost") == 0


def test_a_plain_success_packs_exactly_as_before(app: StreamQ) -> None:
    """No continuation, no extra work: the outcomes script call of a plain success is
    byte for byte the one written before canvas existed."""
    ns, ttl = app.settings.namespace, app.settings.result_ttl
    writer = OutcomeWriter(app.settings, "c1")
    d = Delivery("default", "1-1", b"{}", 1, time.monotonic())
    plain = Succeeded(d, "t1", "x", "4", "application/json", "utf-8", 1, 0.002)
    pipe = writer.pack([plain])
    expected = script_command(
        "outcomes", [keys.stream(ns, "default"), keys.delayed(ns, "default"),
                     keys.delayed_messages(ns, "default"), keys.dead(ns, "default"),
                     keys.record(ns, "default", "t1"), keys.done(ns, "default", "t1")],
        [keys.GROUP, "c1", "c1", ttl, min(ttl, 10), 0,
         "S", "1-1", "4", "application/json", "", 1, 1, 2])
    assert pipe.commands[0] == expected
    assert len(pipe.commands) == 3 and not pipe.forwards  # the script and two counters


def test_bad_canvases_are_refused_in_one_line(app: StreamQ) -> None:
    with pytest.raises(TypeError, match="unknown signature option"):
        ct.inc.s(1).set(priority=3)
    with pytest.raises(TypeError, match="missing a required argument"):
        chain(ct.inc.s(1), ct.add.s()).apply_async()  # add(result) lacks y
    with pytest.raises(TypeError, match="a group cannot follow a group"):
        chain(group(ct.inc.s(1)), group(ct.inc.s(2)), ct.total.s()).apply_async()
    with pytest.raises(ValueError, match="on_error"):
        chord([ct.inc.s(1)], ct.total.s(), on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one member"):
        chord([], ct.total.s()).apply_async()
    with pytest.raises(TypeError, match="no countdown"):
        chord([ct.inc.s(1)], ct.total.s().set(countdown=1)).apply_async()
    with pytest.raises(TypeError, match="a group member must be"):
        group(chain(ct.inc.s(1), group(ct.inc.s()))).apply_async()


def test_canvas_in_eager_mode_runs_inline_without_a_server() -> None:
    from tests import eager_tasks as et  # an eager app whose URL nothing listens on

    add, echo, declined = et.add, et.echo, et.declined
    assert (add.s(1, 2) | add.s(3) | echo.s()).apply_async().get() == 6
    assert group(add.s(i, i) for i in range(5)).apply_async().get() == [0, 2, 4, 6, 8]
    assert chord([add.s(2, 2), add.s(3, 3)], echo.s()).delay().get() == [4, 6]
    failed = chord([declined.s(1), add.s(3, 3)], echo.s()).delay()
    with pytest.raises(ChordError):
        failed.get()
    stopped = chain(declined.s(1), add.s(1)).apply_async()
    with pytest.raises(ChainError):
        stopped.get()
    assert stopped.parent.status == "FAILURE"
    assert add.s(4).apply_async((5,)).get() == 9
    assert et.app._server is None, "eager canvas built a server link"
