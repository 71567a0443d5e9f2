"""Signed messages (issue 15): a worker with a signing key runs only what a holder of
the key wrote; anything else goes to dead letters as "bad signature", before any of
it is decoded, and the worker goes on. Keys rotate without downtime."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from streamq import ConfigurationError, StreamQ
from streamq.base import keys
from streamq.data.message import Message
from streamq.data.signing import BadSignature, Signer, strip
from streamq.worker.consumer import Consumer
from tests import tasks
from tests.conftest import wait_until

KEY = "first signing key of the tests"
OLD = "an older key being rotated out"
OTHER = "a key no worker here knows about"
FAST = ("-c", "1", "--heartbeat", "0.2")


def _producer(app: StreamQ, key: str | tuple[str, ...] | None) -> StreamQ:
    """Another app on the same server and namespace (a web process, say)."""
    return StreamQ(app.settings.url, namespace=app.settings.namespace, signing_key=key)


def _envelope(task: str, task_id: str, args: list[Any]) -> str:
    body = json.dumps([args, {}])
    return Message(task_id, task, "default", "application/json", "utf-8", body).encode()


def _dead_by_reason(app: StreamQ, n: int) -> dict[str, str]:
    letters = wait_until(lambda: (lambda d: d if len(d) >= n else None)(
        app.dead.list("default")), timeout=20, message=f"{n} dead letters")
    return {d.task_id or d.entry_id: d.reason for d in letters}


def test_a_worker_with_a_key_runs_signed_messages_only(app: StreamQ, start_worker: Any,
                                                       rclient: redis.Redis) -> None:
    producer = _producer(app, KEY)
    w = start_worker(app.settings.url, *FAST, env={"STREAMQ_SIGNING_KEY": KEY})
    assert producer.send_by_name("tests.tasks.add", [2, 3]).get(timeout=15) == 5
    done = producer.send_by_name("tests.tasks.count", ["real"])
    assert done.get(timeout=15) == 1
    stream = keys.stream(app.settings.namespace, "default")

    # Unsigned, signed with a key the worker does not know, signed and then changed,
    # and garbage that would fail to decode: none of it runs.
    rclient.xadd(stream, {"m": _envelope("tests.tasks.count", "unsigned-1", ["forged"])})
    other = Signer((OTHER.encode(),))
    rclient.xadd(stream, {"m": other.sign(_envelope("tests.tasks.count", "foreign-1",
                                                    ["forged"]))})
    signed = Signer((KEY.encode(),)).sign(_envelope("tests.tasks.count", "changed-1",
                                                    ["fine"]))
    assert b"fine" in signed
    rclient.xadd(stream, {"m": signed.replace(b"fine", b"evil")})
    rclient.xadd(stream, {"m": b"[" * 100_000})
    # A real task's id: a forged entry must not touch the record of that task.
    rclient.xadd(stream, {"m": _envelope("tests.tasks.count", done.id, ["forged"])})

    reasons = _dead_by_reason(app, 5)
    assert list(reasons.values()).count("bad signature: the message is not signed (this "
                                        "worker has a signing key and runs only signed "
                                        "messages)") == 3, reasons
    assert sum("matches none of this worker's signing keys" in r
               for r in reasons.values()) == 2, reasons
    assert not any("undecodable" in r for r in reasons.values())  # nothing was decoded
    assert tasks.count_of("forged") == tasks.count_of("fine") == tasks.count_of("evil") == 0
    assert done.status == "SUCCESS" and done.get(timeout=1) == 1
    assert producer.AsyncResult("unsigned-1").status == "UNKNOWN"  # no record written
    assert producer.send_by_name("tests.tasks.add", [1, 1]).get(timeout=15) == 2
    assert w.proc.poll() is None and w.stop() == 0


def test_keys_rotate_without_downtime(app: StreamQ, start_worker: Any) -> None:
    """Workers take the new key first in their list and keep the old one; producers
    switch when they like; once none signs with the old key it is dropped."""
    w = start_worker(app.settings.url, *FAST,
                     env={"STREAMQ_SIGNING_KEY": f"{KEY},{OLD}"})
    old = _producer(app, OLD).send_by_name("tests.tasks.add", [1, 2])
    new = _producer(app, (KEY, OLD)).send_by_name("tests.tasks.add", [3, 4])
    assert old.get(timeout=15) == 3 and new.get(timeout=15) == 7
    assert w.stop() == 0
    w2 = start_worker(app.settings.url, *FAST, env={"STREAMQ_SIGNING_KEY": KEY})
    assert _producer(app, (KEY, OLD)).send_by_name("tests.tasks.add", [5, 6]).get(
        timeout=15) == 11
    stale = _producer(app, OLD).send_by_name("tests.tasks.add", [7, 8])
    (reason,) = _dead_by_reason(app, 1).values()
    assert "matches none" in reason and stale.status == "PENDING"  # its record untouched
    assert w2.stop() == 0


def test_retries_and_requeued_dead_letters_stay_signed(app: StreamQ, start_worker: Any,
                                                        rclient: redis.Redis) -> None:
    producer = _producer(app, KEY)
    w = start_worker(app.settings.url, *FAST, env={"STREAMQ_SIGNING_KEY": KEY})
    # Two failed attempts, each retry written back by the worker, signed by it.
    assert producer.send_by_name("tests.tasks.flaky", ["twice", 2]).get(timeout=20) == 3
    rejected = producer.send_by_name("tests.tasks.reject", ["no"])
    wait_until(lambda: rejected.status == "DEAD", timeout=15, message="rejected")
    stream = keys.stream(app.settings.namespace, "default")
    rclient.xadd(stream, {"m": _envelope("tests.tasks.count", "unsigned-2", ["forged"])})
    _dead_by_reason(app, 2)
    assert w.stop() == 0
    # Requeued with the key: the signed letter goes back (signed again, retries
    # reset); the forged one stays, since signing it now would make it trusted.
    assert producer.dead.requeue("default") == 1
    letters = producer.dead.list("default")
    assert len(letters) == 1 and "not signed" in letters[0].reason
    (entry,) = rclient.xrange(stream)[-1:]
    Signer((KEY.encode(),)).verify(entry[1][b"m"])


def test_a_worker_without_a_key_still_reads_signed_messages(app: StreamQ) -> None:
    producer = _producer(app, KEY)
    res = producer.send_by_name("tests.tasks.add", [20, 22])
    c = Consumer(app, ["default"], "h:1:aaaa-0", block_ms=50)
    c.start(housekeeping=False)
    c.run_once()
    c.stop()
    assert res.get(timeout=5) == 42


def test_pickle_family_serializers_need_signing(valkey: Any, namespace: str) -> None:
    for options in ({"serializer": "cloudpickle"}, {"serializer": "pickle"},
                    {"accept": ("json", "pickle")}):
        with pytest.raises(ConfigurationError, match="lets anyone who can write to a queue "
                                                     "run any code.*signing_key"):
            StreamQ(valkey.url, namespace=namespace, **options)
    app = StreamQ(valkey.url, namespace=namespace, serializer="cloudpickle",
                  signing_key=KEY)
    assert app.signer is not None and KEY not in repr(app.signer) + repr(app.settings)
    with pytest.raises(ConfigurationError, match="at least 16 characters"):
        StreamQ(valkey.url, namespace=namespace, signing_key="short")


def test_the_signature_covers_every_byte_and_is_checked_before_parsing() -> None:
    signer = Signer((KEY.encode(), OLD.encode()))
    envelope = _envelope("tests.tasks.add", "x-1", [1, 2])
    value = signer.sign(envelope)
    assert signer.verify(value) == envelope.encode() and strip(value) == envelope.encode()
    assert Message.decode(value).id == "x-1"  # readers see through the signature
    for i in range(len(value)):  # flip any one byte: refused
        changed = value[:i] + bytes([value[i] ^ 1]) + value[i + 1:]
        with pytest.raises(BadSignature):
            signer.verify(changed)
    rotated = Signer((OLD.encode(),)).sign(envelope)
    assert signer.verify(rotated) == envelope.encode()
    with pytest.raises(BadSignature, match="not signed"):
        signer.verify(envelope)
