"""The server's limits and the workers' differences: what a caller and an operator are
told when one is reached (issue 10: items 9 and 13, and the rolling-deploy trap).

- ``map()`` failing part way (a full server) says which calls were enqueued.
- A message or a result larger than the server accepts in one value
  (``proto-max-bulk-len``) is refused, or fails its one task, instead of looking like
  an outage (which wedged the worker for ever).
- A worker that does not know a task hands its messages back a few times, for one
  that does, before it dead-letters them.

Each test that changes a server setting resets it in a ``finally``: the server is
shared with the other tests of this xdist worker.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import redis

from streamq import (
    BrokerConnectionError,
    BrokerError,
    EnqueueConnectionError,
    EnqueueError,
    MessageTooLargeError,
    StreamQ,
    TaskFailed,
)
from streamq.base import keys
from streamq.data.message import Message
from streamq.data.outcome import Dead, Delivery, Retried
from streamq.worker import executor as executor_module
from streamq.worker.executor import Executor
from tests import tasks
from tests.conftest import wait_until

FAST = ("--heartbeat", "0.2", "--log-level", "INFO")
DEFAULT_BULK = 536870912
ONE_MIB = 1024 * 1024


def _stream(app: StreamQ) -> str:
    return keys.stream(app.settings.namespace, "default")


def _stream_ids(app: StreamQ, rclient: redis.Redis) -> set[str]:
    return {Message.decode(fields[b"m"]).id for _, fields in rclient.xrange(_stream(app))}


def _have_records(app: StreamQ, rclient: redis.Redis, handles: list[Any]) -> list[bool]:
    pipe = rclient.pipeline(transaction=False)
    for h in handles:
        pipe.exists(keys.record(app.settings.namespace, "default", h.id))
    return [bool(n) for n in pipe.execute()]


def _namespace_keys(app: StreamQ, rclient: redis.Redis) -> list[bytes]:
    return list(rclient.scan_iter(match=f"*{app.settings.namespace}*", count=1000))


# -- item 9: map() failing part way ----------------------------------------------------------
def test_map_failing_part_way_says_what_was_enqueued(app: StreamQ,
                                                     rclient: redis.Redis) -> None:
    """At the memory limit map() of 20,000 raised after some batches were written and
    returned no handles, so a caller who sent it again doubled them. Now its error
    says which calls were enqueued (record and message), which may have been, and
    which were not sent (neither)."""
    # The stream, the queue and the scripts exist: only the map's own calls are at stake
    # (a NOSCRIPT would send its first batches again at the end).
    tasks.add.map([(0, 0), (1, 1)])
    used = int(rclient.info("memory")["used_memory"])
    rclient.config_set("maxmemory", used + 1_500_000)
    try:
        with pytest.raises(EnqueueError) as caught:
            tasks.echo.map(["x" * 200] * 20_000)
    finally:
        rclient.config_set("maxmemory", 0)
    err = caught.value
    assert isinstance(err, BrokerError) and err.code == "OOM"
    text = str(err)
    assert "\n" not in text and f"{len(err.enqueued)} enqueued" in text
    assert f"{len(err.unknown)} unknown" in text and f"{len(err.not_sent)} not sent" in text
    assert len(err.handles) == 20_000
    assert len(err.enqueued) + len(err.unknown) + len(err.not_sent) == 20_000
    assert set(err.handles) == set(err.enqueued) | set(err.unknown) | set(err.not_sent)
    assert err.enqueued and err.not_sent, text
    assert len(err.unknown) <= 200  # the batch that failed, and the one sent after it

    in_stream = _stream_ids(app, rclient)
    assert all(_have_records(app, rclient, err.enqueued))
    assert {h.id for h in err.enqueued} <= in_stream
    assert not any(_have_records(app, rclient, err.not_sent))
    assert not {h.id for h in err.not_sent} & in_stream
    assert len(in_stream - {h.id for h in err.handles}) == 2  # the add()s before the map
    assert err.enqueued[0].status == "PENDING"
    assert err.not_sent[-1].status == "UNKNOWN"
    rclient.delete(_stream(app), *(keys.record(app.settings.namespace, "default", h.id)
                                   for h in err.enqueued + err.unknown))


def test_map_after_the_server_lost_its_scripts_keeps_order_and_reports_all(
        app: StreamQ, rclient: redis.Redis) -> None:
    """A server that lost its scripts (restarted) answers NOSCRIPT to every batch: the
    scripts are sent again, in order, and their batches count as written."""
    tasks.add.delay(0, 0)
    app.server.transport.ensure_scripts()
    rclient.script_flush()
    handles = tasks.add.map([(i, i) for i in range(350)])
    ids = [Message.decode(f[b"m"]).id for _, f in rclient.xrange(_stream(app))][1:]
    assert ids == [h.id for h in handles]


def test_map_to_an_unreachable_server_is_still_a_connection_error() -> None:
    """Nothing could be sent: every call is in ``not_sent``; the error is still a
    BrokerConnectionError (and ConnectionError), as it was."""
    app = StreamQ("redis://127.0.0.1:1/0", connect_timeout_s=0.2)
    task = app.task(name="limits.echo")(lambda value: value)
    with pytest.raises(EnqueueConnectionError) as caught:
        task.map(range(250))
    err = caught.value
    assert isinstance(err, BrokerConnectionError) and isinstance(err, ConnectionError)
    assert not err.enqueued and not err.unknown and err.not_sent == err.handles
    assert len(err.handles) == 250 and "0 enqueued, 0 unknown" in str(err)
    assert "250 not sent" in str(err) and "cannot reach the Redis server" in str(err)
    with pytest.raises(EnqueueConnectionError):
        task.map([1])  # map() of one call says the same
    with pytest.raises(BrokerConnectionError) as single:
        task.delay(1)  # delay() raises the server's own error
    assert not isinstance(single.value, EnqueueError)


# -- item 13: values larger than the server accepts --------------------------------------
def test_a_message_larger_than_the_server_accepts_is_refused_before_sending(
        app: StreamQ, rclient: redis.Redis) -> None:
    """A 2 MB argument with proto-max-bulk-len at 1 MB said "cannot reach the Redis
    server ... is it running?" and left a PENDING record."""
    rclient.config_set("proto-max-bulk-len", ONE_MIB)
    app.configure(max_message_bytes=0)  # the server's limit only
    try:
        big = "x" * (2 * ONE_MIB)
        pattern = (r"tests\.tasks\.echo\(\)%s: its message of (\d+) bytes exceeds the "
                   r"server's limit of 1048576 bytes \(proto-max-bulk-len\); nothing was sent")
        with pytest.raises(MessageTooLargeError, match=pattern % "") as caught:
            tasks.echo.delay(big)
        assert caught.value.limit == ONE_MIB and caught.value.size > 2 * ONE_MIB
        with pytest.raises(MessageTooLargeError, match=pattern % ""):
            tasks.echo.apply_async((big,), countdown=30)
        with pytest.raises(MessageTooLargeError, match=pattern % r" \(call 2 of 3\)"):
            tasks.echo.map(["a", big, "b"])
        with pytest.raises(MessageTooLargeError):
            app.send_by_name("tests.tasks.echo", [big])
        assert _namespace_keys(app, rclient) == []  # nothing at all was written

        near = tasks.echo.delay("y" * 1_000_000)  # under the limit: enqueued
        assert near.status == "PENDING" and tasks.add.delay(1, 2).status == "PENDING"
    finally:
        rclient.config_set("proto-max-bulk-len", DEFAULT_BULK)
        app.configure(max_message_bytes=ONE_MIB)  # the default, for later tests


def test_a_result_larger_than_the_server_accepts_fails_its_task_only(
        app: StreamQ, rclient: redis.Redis, start_worker: Any) -> None:
    """A 2 MB result with proto-max-bulk-len at 1 MB wedged the worker for ever: the
    write of its batch was refused, taken for an outage and tried again. Now that task
    fails and the worker goes on; an error text that large is cut."""
    rclient.config_set("proto-max-bulk-len", ONE_MIB)
    try:
        w = start_worker(app.settings.url, "-c", "1", *FAST,
                         env={"STREAMQ_MAX_RESULT_BYTES": "0"})  # the server's limit only
        large = tasks.big_result.delay(2 * ONE_MIB)
        loud = tasks.big_error.delay(2 * ONE_MIB)
        after = tasks.add.delay(2, 3)
        assert after.get(timeout=15) == 5, w.output()[-3000:]
        with pytest.raises(TaskFailed) as caught:
            large.get(timeout=5)
        assert caught.value.exc_type == "MessageTooLargeError"
        assert re.search(r"result of \d+ bytes exceeds the server's limit of 1048576 bytes "
                         r"\(proto-max-bulk-len\)", caught.value.exc_message)
        assert large.status == "FAILURE"
        with pytest.raises(TaskFailed) as cut:
            loud.get(timeout=5)
        assert cut.value.exc_type == "ValueError" and "characters cut" in cut.value.exc_message
        assert len(cut.value.exc_message) < ONE_MIB
        started = time.monotonic()
        assert tasks.add.delay(1, 1).get(timeout=10) == 2
        assert time.monotonic() - started < 5
        assert w.proc.poll() is None and "Server unavailable" not in w.output()
        assert w.stop() == 0
    finally:
        rclient.config_set("proto-max-bulk-len", DEFAULT_BULK)


def test_the_value_limit_is_read_once_and_defaults_when_config_is_refused(
        vapp: StreamQ) -> None:
    assert vapp.value_limit() == DEFAULT_BULK
    assert vapp._value_limit == DEFAULT_BULK  # cached until close()
    vapp.close()
    assert vapp._value_limit is None

    class Refusing:
        def config_get(self, name: str) -> Any:
            raise BrokerError("the server answered: NOPERM this user has no permissions "
                              "to run the 'config|get' command", "NOPERM")

    vapp.server.connection._client = Refusing()  # type: ignore[assignment]
    try:
        assert vapp.value_limit() == DEFAULT_BULK
    finally:
        vapp.server.connection._client = None


# -- the rolling-deploy trap ----------------------------------------------------------------
def _executor(registry: Any) -> Executor:
    return Executor(registry, tasks.app.accept_content_types, "json", "host:1:aaaa-0", 60)


def _message(task: str, **changes: Any) -> Message:
    return Message("0" * 32 + "@default", task, "default", "application/json", "utf-8",
                   "[[1], {}]", **changes)


def test_an_unknown_task_is_handed_back_without_counting_a_retry() -> None:
    ex = _executor({})
    raw = _message("tests.tasks.new", retries=1).encode().encode()
    out = ex.prepare(Delivery("default", "1-0", raw))
    assert isinstance(out, Retried), out
    low, high = executor_module.HANDBACK_DELAY_S
    assert low <= out.countdown_s <= high
    nxt = Message.decode(out.message)
    assert nxt.handbacks == 1 and nxt.retries == 1 and nxt.eta_ms == out.due_ms
    n = executor_module.HANDBACKS
    assert "not registered" in out.error and f"handed back (1 of {n})" in out.error
    # The last hand-back; then a dead letter that says why.
    last = ex.prepare(Delivery("default", "1-0", _message("t", handbacks=n - 1).encode()
                               .encode()))
    assert isinstance(last, Retried) and Message.decode(last.message).handbacks == n
    dead = ex.prepare(Delivery("default", "1-0", _message("t", handbacks=n).encode().encode()))
    assert isinstance(dead, Dead)
    assert "not registered" in dead.reason and f"handed back {n} times" in dead.reason


def test_hand_backs_travel_in_the_envelope_and_old_envelopes_read() -> None:
    plain = _message("t")
    assert '"handbacks"' not in plain.encode()  # written only when not 0
    assert Message.decode(plain.encode()).handbacks == 0
    again = Message.decode(_message("t", handbacks=2).encode())
    assert again.handbacks == 2
    assert again.with_retry("E: x", None).handbacks == 0  # a new attempt starts over
    assert again.reset().handbacks == 0
    with pytest.raises(Exception, match="handbacks"):
        Message.decode(plain.encode()[:-1] + ',"handbacks":-1}')


def _retried(app: StreamQ, rclient: redis.Redis) -> int:
    minute = int(time.time() // 60)
    return sum(int(rclient.hget(keys.stats(app.settings.namespace, "default", m), "retried")
                   or 0) for m in (minute - 1, minute))


def _blocked_readers(rclient: redis.Redis) -> int:
    clients = rclient.client_list()
    return sum(1 for c in clients if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", ""))


def test_a_new_task_waits_for_a_worker_that_knows_it(
        app: StreamQ, rclient: redis.Redis, start_worker: Any) -> None:
    """In a rolling deploy a worker of the release before dead-lettered the new task's
    messages at once (20 of 40). Now it hands them back, and the new worker runs all.

    The new worker reads only the queue in question: in cluster mode a worker whose
    queues span several slots blocks on each for 50 ms at a time, so it loses nearly
    every race for a new entry (a draw either way: see ``executor.HANDBACKS``)."""
    old = start_worker(app.settings.url, "-c", "1", *FAST, module="tests.tasks_old")
    new = start_worker(app.settings.url, "-c", "3", "-Q", "default", *FAST)
    wait_until(lambda: _blocked_readers(rclient) >= 4, timeout=20,
               message="all four processes reading")
    handles = [tasks.new_in_this_release.delay("rolling") for _ in range(40)]
    for h in handles:
        h.get(timeout=60)
    assert app.dead.list("default") == []
    assert tasks.count_of("rolling") == 40
    assert _retried(app, rclient) > 0  # the old worker did meet some, and handed them back
    assert old.stop() == 0 and new.stop() == 0


@pytest.mark.parametrize("server", ["valkey"], indirect=True)  # a worker policy
def test_a_task_no_worker_knows_is_dead_lettered_after_its_hand_backs(
        app: StreamQ, start_worker: Any) -> None:
    old = start_worker(app.settings.url, "-c", "1", *FAST, module="tests.tasks_old")
    started = time.monotonic()
    ghost = tasks.new_in_this_release.delay("never")
    wait_until(lambda: ghost.status == "DEAD", timeout=20, message="the dead letter")
    assert time.monotonic() - started >= \
        executor_module.HANDBACKS * executor_module.HANDBACK_DELAY_S[0]
    (letter,) = app.dead.list("default")
    assert letter.task_id == ghost.id and letter.retries == 0
    for reason in (letter.reason, ghost.info["reason"]):
        assert "tests.tasks.new_in_this_release" in reason and "not registered" in reason
        assert f"handed back {executor_module.HANDBACKS} times" in reason
        assert "no worker that knows it" in reason
    assert app.send_by_name("tests.tasks.add", [1, 2]).get(timeout=10) == 3  # it goes on
    assert old.stop() == 0
