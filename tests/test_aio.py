"""The asyncio producer (issue 13): ``adelay``/``aapply_async``/``amap`` and
``aget``/``astatus`` on redis.asyncio against real servers and a real worker, and
the auto-pipelining that lets concurrent ``adelay()`` calls share round trips."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import pytest
import redis

from streamq import (
    BrokerConnectionError,
    BrokerError,
    ConfigurationError,
    ResultError,
    ResultNotFoundError,
    ResultTimeoutError,
    StreamQ,
    TaskFailed,
)
from streamq.base import keys
from streamq.base.ids import queue_of
from tests import tasks
from tests.conftest import wait_until

FAST = ("-c", "1", "--heartbeat", "0.2")
KEY = "signing key of the asyncio producer tests"
T = TypeVar("T")


def run(app: StreamQ, main: Callable[[], Awaitable[T]]) -> T:
    """``main()`` on a fresh event loop, closing the app's connections of that loop."""
    async def wrapped() -> T:
        try:
            return await main()
        finally:
            await app.aclose()
    return asyncio.run(wrapped())


def _client(app: StreamQ) -> redis.Redis:
    return redis.Redis.from_url(app.settings.url)


def test_adelay_aapply_async_and_amap_give_their_results(app: StreamQ, start_worker: Any
                                                         ) -> None:
    start_worker(app.settings.url, *FAST)

    async def main() -> None:
        r = await tasks.add.adelay(2, 3)
        assert await r.aget(timeout=10) == 5
        assert await r.astatus() == "SUCCESS"
        later = await tasks.add.aapply_async((4, 5), countdown=0.5)
        assert await later.astatus() == "SCHEDULED"
        chosen = await tasks.echo.aapply_async(("x",), task_id="aio-chosen-id")
        results = await tasks.add.amap([(i, i) for i in range(50)])
        assert [await h.aget(timeout=10) for h in results] == [2 * i for i in range(50)]
        assert await later.aget(timeout=10) == 9
        # An id the caller chose is found from the bare id, through its queue key.
        assert await app.AsyncResult("aio-chosen-id").aget(timeout=10) == "x"
        assert await chosen.astatus() == "SUCCESS"

    run(app, main)


def test_wrong_arguments_raise_before_anything_is_sent(vapp: StreamQ) -> None:
    rc = _client(vapp)

    async def main() -> None:
        with pytest.raises(TypeError) as sync_error:
            tasks.add.delay(1)
        with pytest.raises(TypeError) as async_error:
            await tasks.add.adelay(1)
        assert str(async_error.value) == str(sync_error.value)
        assert str(async_error.value) == "tests.tasks.add() missing a required argument: 'y'"
        with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
            await tasks.add.aapply_async((1, 2), {"z": 3})
        with pytest.raises(ValueError, match="eta must be timezone-aware"):
            await tasks.add.aapply_async((1, 2), eta=datetime(2030, 1, 1))
        with pytest.raises(TypeError, match="missing a required argument"):
            await tasks.add.amap([(1, 2), (3,), (5, 6)])
        assert vapp.aio.current().writes == 0

    run(vapp, main)
    assert rc.keys(f"{vapp.settings.namespace}:*") == []


def test_failures_timeouts_and_unknown_ids(app: StreamQ, start_worker: Any) -> None:
    start_worker(app.settings.url, *FAST, "-Q", "default")  # not "other"

    async def main() -> None:
        failing = await tasks.fail.adelay("boom from asyncio")
        with pytest.raises(TaskFailed, match="boom from asyncio"):
            await failing.aget(timeout=10)
        returned = await failing.aget(timeout=10, propagate=False)
        assert isinstance(returned, TaskFailed) and "boom from asyncio" in str(returned)
        assert await failing.astatus() == "FAILURE"

        waiting = await tasks.on_other_queue.adelay(1)
        with pytest.raises(ResultTimeoutError, match=r"still PENDING after 0.3 s"):
            await waiting.aget(timeout=0.3)
        assert await waiting.astatus() == "PENDING"

        unknown = app.AsyncResult("never-enqueued-here")
        assert await unknown.astatus() == "UNKNOWN"
        with pytest.raises(ResultNotFoundError, match="no record for task never-enqueued"):
            await unknown.aget(timeout=1)

    run(app, main)


def test_ignore_result_runs_and_the_handle_refuses_at_once(app: StreamQ,
                                                          start_worker: Any) -> None:
    start_worker(app.settings.url, *FAST)
    rc = _client(app)

    async def main() -> None:
        quiet = await tasks.count.aapply_async(("aio-quiet",), ignore_result=True)
        assert quiet.ignored
        with pytest.raises(ResultError, match="sent with ignore_result=True"):
            await quiet.aget(timeout=10)
        assert await quiet.astatus() == "UNKNOWN"
        return None

    run(app, main)
    wait_until(lambda: tasks.count_of("aio-quiet") == 1)
    assert tasks.count_of("aio-quiet") == 1
    ns = app.settings.namespace
    assert [k for k in rc.keys(f"{ns}:*") if b"task:" in k or b"done:" in k] == []


def test_signed_messages_run_on_a_worker_with_the_key(vapp: StreamQ,
                                                      start_worker: Any) -> None:
    producer = StreamQ(vapp.settings.url, namespace=vapp.settings.namespace,
                       signing_key=KEY)

    @producer.task(name="tests.tasks.add")
    def add(x: int, y: int) -> int:
        return x + y

    start_worker(vapp.settings.url, *FAST, env={"STREAMQ_SIGNING_KEY": KEY})

    async def main() -> list[int]:
        one = await add.adelay(20, 22)
        many = await add.amap([(1, 1), (2, 2), (3, 3)])
        return [await h.aget(timeout=10) for h in (one, *many)]

    try:
        assert run(producer, main) == [42, 2, 4, 6]
    finally:
        producer.close()


def test_concurrent_adelay_calls_share_few_writes(server: Any, app: StreamQ) -> None:
    rc = _client(app)
    ns = app.settings.namespace
    # A key of the wrong type makes the server refuse one call's XADD.
    rc.set(keys.stream(ns, "broken"), "not a stream")

    async def main() -> list[Any]:
        link = app.aio.current()
        handles = await asyncio.gather(*(tasks.add.adelay(i, 1) for i in range(1000)))
        assert link.writes <= 3, link.writes  # 1,000 calls, far fewer round trips
        # The first call of a task to a queue waits for the loop's next turn.
        await asyncio.gather(tasks.add.aapply_async((9, 9), queue="broken"),
                             return_exceptions=True)
        before = link.writes
        mixed = await asyncio.gather(
            *(tasks.add.adelay(i, 2) for i in range(5)),
            tasks.add.aapply_async((9, 9), queue="broken"),
            *(tasks.add.adelay(i, 3) for i in range(5)), return_exceptions=True)
        assert link.writes == before + 1
        return [*handles, *mixed]

    got = run(app, main)
    handles, mixed = got[:1000], got[1000:]
    assert len({h.id for h in handles}) == 1000
    assert isinstance(mixed[5], BrokerError) and mixed[5].code == "WRONGTYPE"
    assert "WRONGTYPE" in str(mixed[5]) and str(mixed[5]).count("\n") == 0
    ok = mixed[:5] + mixed[6:]
    assert all(not isinstance(h, BaseException) for h in ok)
    assert rc.xlen(keys.stream(ns, "default")) == 1010
    for h in (*handles[:3], *ok):
        assert rc.hget(keys.record(ns, "default", h.id), "status") == b"PENDING"


def test_a_server_that_lost_its_scripts_gets_them_again(vapp: StreamQ) -> None:
    rc = _client(vapp)
    ns = vapp.settings.namespace

    async def main() -> None:
        link = vapp.aio.current()
        await tasks.add.aapply_async((1, 1), countdown=30)  # the schedule script
        rc.script_flush()
        before = link.writes
        later = await asyncio.gather(*(tasks.add.aapply_async((i, 1), countdown=30)
                                       for i in range(20)))
        assert link.writes == before + 2  # the write, then the reload with the resend
        assert [await h.astatus() for h in later] == ["SCHEDULED"] * 20
        rc.script_flush()
        handles = await tasks.add.amap([(i, 2) for i in range(300)])  # enqueue_many
        assert len(handles) == 300

    run(vapp, main)
    assert rc.zcard(keys.delayed(ns, "default")) == 21
    assert rc.xlen(keys.stream(ns, "default")) == 300


def test_durable_is_refused_before_sending(vapp: StreamQ) -> None:
    durable = StreamQ(vapp.settings.url, namespace=vapp.settings.namespace, durable=True)

    @durable.task(name="tests.tasks.add")
    def add(x: int, y: int) -> int:
        return x + y

    async def main() -> None:
        for call in (add.adelay(1, 2), add.aapply_async((1, 2)), add.amap([(1, 2)]),
                     tasks.add.aapply_async((1, 2), durable=True)):
            with pytest.raises(ConfigurationError, match=r"^durable enqueue is not "
                                                         r"available from asyncio"):
                await call
        assert durable.aio.current().writes == 0
        plain = await add.aapply_async((1, 2), durable=False)
        assert await plain.astatus() == "PENDING"

    try:
        run(durable, main)
    finally:
        durable.close()
    assert _client(vapp).xlen(keys.stream(vapp.settings.namespace, "default")) == 1


def test_an_unreachable_server_is_one_masked_error(namespace: str) -> None:
    down = StreamQ("redis://:hunter2-secret@127.0.0.1:1/0", namespace=namespace,
                   connect_timeout_s=0.5)

    @down.task(name="tests.tasks.add")
    def add(x: int, y: int) -> int:
        return x + y

    async def main() -> None:
        for call in (add.adelay(1, 2), add.amap([(1, 2), (3, 4)])):
            with pytest.raises(BrokerConnectionError) as error:
                await call
            text = str(error.value)
            assert "hunter2-secret" not in text and "127.0.0.1:1" in text
            assert isinstance(error.value, ConnectionError)
        with pytest.raises(BrokerConnectionError, match="cannot reach"):
            await down.AsyncResult("x@default").astatus()

    run(down, main)


def test_a_cluster_url_is_refused_before_anything_connects(
        namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The asyncio client does not speak Redis Cluster yet: every asyncio call on a
    cluster URL is one ConfigurationError, before any connection (no server needed)."""
    import socket

    tried: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        tried.append(args)
        raise AssertionError("a connection was attempted")

    async def arefuse(*args: Any, **kwargs: Any) -> Any:
        return refuse(*args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(asyncio, "open_connection", arefuse)
    monkeypatch.setattr(asyncio, "open_unix_connection", arefuse)
    cluster = StreamQ("redis+cluster://127.0.0.1:1,127.0.0.1:2", namespace=namespace,
                      connect_timeout_s=0.5)

    @cluster.task(name="tests.tasks.add")
    def add(x: int, y: int) -> int:
        return x + y

    async def main() -> None:
        for call in (lambda: add.adelay(1, 2), lambda: add.aapply_async((1, 2), countdown=5),
                     lambda: add.amap([(1, 2), (3, 4)]),
                     lambda: cluster.AsyncResult("x@default").aget(),
                     lambda: cluster.AsyncResult("x@default").astatus()):
            with pytest.raises(ConfigurationError) as error:  # when called or awaited
                await call()
            text = str(error.value)
            assert text.startswith("the asyncio client (adelay, aapply_async, amap, aget, "
                                   "astatus) does not support Redis Cluster URLs"), text
            assert "nothing was sent" in text
            assert "await asyncio.to_thread(task.delay, ...)" in text
            assert "\n" not in text
        assert len(cluster.aio._links) == 0  # no link was made for this loop

    try:
        run(cluster, main)
    finally:
        cluster.close()
    assert tried == []  # nothing tried to connect, so nothing was sent


def test_a_dropped_connection_is_replaced_for_the_next_calls(vapp: StreamQ) -> None:
    rc = _client(vapp)
    ns = vapp.settings.namespace

    async def main() -> None:
        link = vapp.aio.current()
        await tasks.add.adelay(1, 1)
        # The server drops every other client, as a restart or its idle timeout would.
        assert rc.client_kill_filter(_type="normal", skipme=True) >= 1
        handles = await asyncio.gather(*(tasks.add.adelay(i, 1) for i in range(10)))
        assert len(handles) == 10
        assert link.writes == 3  # the write on the dropped connection, then on a new one
        assert await handles[0].astatus() == "PENDING"
        # Enough calls that most go out ahead of the flush, on a dropped connection.
        assert rc.client_kill_filter(_type="normal", skipme=True) >= 1
        more = await asyncio.gather(*(tasks.add.adelay(i, 2) for i in range(500)))
        assert len({h.id for h in more}) == 500
        assert link.writes <= 5  # one or two round trips (a failed send counts none)

    run(vapp, main)
    assert rc.xlen(keys.stream(ns, "default")) == 511


def test_adelay_packs_each_call_as_delay_does(vapp: StreamQ) -> None:
    """The per-shape templates of ``adelay`` (``streamq.api.aio._Template``) write the
    bytes ``_call_commands`` writes, signed or not, and the records and messages read
    back as ``delay()``'s do."""
    from streamq.api.aio import _Template

    signed = StreamQ(vapp.settings.url, namespace=vapp.settings.namespace, signing_key=KEY)
    for app in (vapp, signed):
        add = app.task(name="tests.tasks.add")(tasks.add.fn)
        first, _ = add.prepare((1, 2), {})
        app._call_commands(first, None, first.encode())  # the queue is known after it
        template = _Template.build(app, first)
        assert template is not None
        for args in [(3, 4), ("é %s %d %%", "\u2603" * 50), ({"k": [1, None]}, 0)]:
            message, _ = add.prepare(args, {})
            assert template.pack(app, message) == \
                app._call_commands(message, None, message.encode())
        chosen, _ = add.prepare((1, 1), {}, task_id="a-chosen-id")
        assert template.pack(app, chosen) is None  # not routed: _call_commands packs it

    async def main() -> list[Any]:
        return list(await asyncio.gather(*(tasks.add.adelay(i, 1) for i in range(300))))

    handles = run(vapp, main)
    rc, ns = _client(vapp), vapp.settings.namespace
    assert rc.xlen(keys.stream(ns, "default")) == 300
    assert all(rc.hget(keys.record(ns, "default", h.id), "status") == b"PENDING"
               for h in handles)
    signed.close()


def test_adelay_is_queued_when_made_and_awaits_every_way(vapp: StreamQ) -> None:
    """Once its task and queue have a template, ``adelay()`` queues the call when it is
    made and returns a future (``gather`` needs no Task per call) that
    ``create_task``, ``TaskGroup`` and ``wait_for`` take as a coroutine; made outside
    a loop it is a coroutine (for ``asyncio.run``)."""
    rc, ns = _client(vapp), vapp.settings.namespace
    rc.set(keys.stream(ns, "broken"), "not a stream")

    async def main() -> list[Any]:
        first = await tasks.add.adelay(0, 0)  # teaches the template
        await tasks.add.aapply_async((0, 0), queue="other")
        soon = tasks.add.adelay(1, 1)
        assert asyncio.isfuture(soon) and asyncio.iscoroutine(soon)
        made = await soon
        task = asyncio.create_task(tasks.add.adelay(2, 2))
        async with asyncio.TaskGroup() as group:
            grouped = [group.create_task(tasks.add.adelay(i, 3)) for i in range(5)]
        waited = await asyncio.wait_for(tasks.add.aapply_async((4, 4), queue="other"), 10)
        with pytest.raises(BrokerError, match="WRONGTYPE"):
            await asyncio.create_task(tasks.add.aapply_async((5, 5), queue="broken"))
        with pytest.raises(BrokerError, match="WRONGTYPE"):  # now with a template
            await asyncio.create_task(tasks.add.aapply_async((5, 5), queue="broken"))
        return [first, made, await task, *(g.result() for g in grouped), waited]

    handles = run(vapp, main)
    later = tasks.add.adelay(6, 6)  # made outside a loop: a coroutine, run by the loop
    assert asyncio.iscoroutine(later) and not asyncio.isfuture(later)
    outside = run(vapp, lambda: later)
    assert len({h.id for h in [*handles, outside]}) == 10
    assert rc.xlen(keys.stream(ns, "default")) == 9
    assert rc.xlen(keys.stream(ns, "other")) == 2
    for h in [*handles, outside]:
        assert rc.hget(keys.record(ns, queue_of(h.id) or "", h.id), "status") == b"PENDING"
