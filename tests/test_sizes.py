"""Size limits (issue 15): ``max_message_bytes`` (1 MiB by default) refuses a larger
call before anything is sent and dead-letters a larger entry someone else wrote;
``max_result_bytes`` fails a task whose result is larger instead of storing it."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from streamq import MessageTooLargeError, StreamQ, TaskFailed
from streamq.base import keys
from streamq.data.message import Message
from tests import tasks
from tests.conftest import wait_until

MIB = 1024 * 1024
FAST = ("-c", "1", "--heartbeat", "0.2")


def _ns_keys(app: StreamQ, rclient: redis.Redis) -> list[bytes]:
    return rclient.keys(f"{app.settings.namespace}:*")


def test_a_call_larger_than_max_message_bytes_is_refused_before_sending(
        app: StreamQ, rclient: redis.Redis) -> None:
    big = "x" * MIB
    pattern = (r"tests\.tasks\.echo\(\)%s: its message of (\d+) bytes exceeds "
               r"max_message_bytes \(1048576\); nothing was sent\. Pass a reference")
    with pytest.raises(MessageTooLargeError, match=pattern % "") as caught:
        tasks.echo.delay(big)
    assert caught.value.limit == MIB and MIB < caught.value.size < MIB + 1000
    with pytest.raises(MessageTooLargeError, match=pattern % r" \(call 2 of 2\)"):
        tasks.echo.map(["small", big])
    with pytest.raises(MessageTooLargeError, match=pattern % ""):
        tasks.echo.apply_async((big,), countdown=10)
    # Multi-byte characters count as the bytes they take.
    with pytest.raises(MessageTooLargeError):
        tasks.echo.delay("é" * (MIB // 2))
    assert _ns_keys(app, rclient) == []
    assert tasks.echo.delay("y" * (MIB - 1000)).status == "PENDING"  # just under: sent


def test_max_message_bytes_can_be_lowered_and_turned_off(server: Any, namespace: str,
                                                         rclient: Any) -> None:
    small = StreamQ(server.url, namespace=namespace, max_message_bytes=2000)
    with pytest.raises(MessageTooLargeError, match=r"exceeds max_message_bytes \(2000\)"):
        small.send_by_name("tests.tasks.echo", ["z" * 2000])
    assert small.send_by_name("tests.tasks.echo", ["z" * 1500]).status == "PENDING"
    off = StreamQ(server.url, namespace=namespace, max_message_bytes=0)
    assert off.send_by_name("tests.tasks.echo", ["w" * (2 * MIB)]).status == "PENDING"
    small.close()
    off.close()


def test_a_worker_dead_letters_a_larger_entry_and_goes_on(app: StreamQ, start_worker: Any,
                                                          rclient: redis.Redis) -> None:
    body = json.dumps([["v" * (2 * MIB)], {}])
    envelope = Message("huge-1", "tests.tasks.count", "default", "application/json",
                       "utf-8", body).encode()
    record = keys.record(app.settings.namespace, "default", "huge-1")
    rclient.hset(record, "status", "PENDING")
    rclient.xadd(keys.stream(app.settings.namespace, "default"), {"m": envelope})
    w = start_worker(app.settings.url, *FAST)
    (dead,) = wait_until(lambda: app.dead.list("default"), timeout=20, message="dead letter")
    assert dead.reason == (f"message of {len(envelope)} bytes exceeds max_message_bytes "
                           f"(1048576); not decoded")
    assert dead.task == "tests.tasks.count" and dead.task_id == "huge-1"
    assert rclient.hget(record, "status") == b"DEAD"
    assert tasks.count.delay("after").get(timeout=15) == 1
    assert tasks.count_of("v" * 10) == 0
    assert w.proc.poll() is None and w.stop() == 0


def test_a_result_larger_than_max_result_bytes_fails_its_task(app: StreamQ,
                                                              start_worker: Any) -> None:
    w = start_worker(app.settings.url, *FAST, env={"STREAMQ_MAX_RESULT_BYTES": "10000"})
    large = tasks.big_result.delay(20_000)
    fits = tasks.big_result.delay(5_000)
    assert len(fits.get(timeout=15)) == 5_000
    with pytest.raises(TaskFailed) as caught:
        large.get(timeout=15)
    assert caught.value.exc_type == "MessageTooLargeError"
    assert caught.value.exc_message.startswith(
        "result of 20002 bytes exceeds max_result_bytes (10000); return a reference")
    assert large.status == "FAILURE"
    assert w.stop() == 0
