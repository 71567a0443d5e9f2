"""Fuzzed stream entries against a real worker (issue 15, "Security and durability").

Hypothesis writes arbitrary entries straight into the stream a queue reads: random
fields, random bytes, empty, long and oversized values, and streamq envelopes with
missing fields, wrong types, odd content types, bad base64, truncations and bytes
that are not UTF-8, around argument bodies valid or not for real tasks. Every entry
must end exactly once: run (counted by the task itself) or dead-lettered with a
reason; the worker's processes must all live on, and nothing may stay pending.

Each entry carries a marker of its own (in a field, the envelope or its id), so
its dead letter is found whatever was broken. A task name the worker does not know
is handed back for about 5 s before its dead letter: such entries are checked at
the end of the test, once the delayed set is empty.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streamq import StreamQ
from streamq.base import keys
from streamq.base.errors import DecodeError
from streamq.data.message import Message
from streamq.data.outcome import Dead, Delivery
from streamq.data.signing import PREFIX
from streamq.worker.executor import Executor
from tests import tasks
from tests.conftest import wait_until

MIB = 1024 * 1024
# CI runs a fixed set; FUZZ_EXAMPLES=N runs N random examples (a longer local hunt).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0")) or 60
FIXED = "FUZZ_EXAMPLES" not in os.environ
FIELDS = ("v", "id", "task", "queue", "ct", "ce", "body", "b64", "retries", "enq_ms")
# The tasks an envelope may name: each records its runs under its key argument
# (record_start, count) or fails (fail), so no run goes unseen.
TASKS = ("tests.tasks.record_start", "tests.tasks.count", "tests.tasks.fail")

# -- what is written ----------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=3),
    max_leaves=8)
values = st.one_of(st.binary(max_size=64), st.just(b""),
                   st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=3),
                             st.integers(1000, 100_000)))


@dataclass(frozen=True)
class Fields:
    """An entry with fields other than a lone ``m``: random names and values, and a
    field named by the marker (the repr of the fields, kept in the dead letter,
    shows it)."""

    pairs: tuple[tuple[bytes, bytes], ...]
    at: int
    value: bytes


@dataclass(frozen=True)
class Raw:
    """A lone field ``m`` holding arbitrary bytes, the marker at ``at`` (None: none,
    so the dead letter is found by its bytes)."""

    data: bytes
    at: int | None
    seal: str = "plain"


@dataclass(frozen=True)
class Envelope:
    """A streamq envelope for ``task`` with the argument body ``args``, then
    ``changes`` (field, value; a value of ``DROP`` removes the field) and an
    ``encoding``: json, b64 (a valid base64 body), truncate, not-utf8, oversize.
    ``seal``: see ``_seal``."""

    task: Any
    args: str
    changes: tuple[tuple[str, Any], ...]
    id_form: str
    encoding: str
    cut: float
    seal: str = "plain"


DROP = "<drop>"
ARGS = ("valid", "valid-kw", "no-args", "too-many", "twice", "unknown-kw", "not-a-pair",
        "kw-not-object", "not-json", "not-lists")
odd_types = st.sampled_from(["application/json", "application/data", "application/text",
                             "application/x-python-serialize", "application/x-yaml",
                             "application/x-msgpack", "application/x-cloudpickle", "",
                             "APPLICATION/JSON"]) | st.text(max_size=30)
odd_encodings = st.sampled_from(["utf-8", "binary", "utf-16", "latin-1", ""]) \
    | st.text(max_size=30)
# The id changes only through ``id_form`` (or a drop), so that it keeps the marker.
change = st.one_of(
    st.tuples(st.sampled_from(FIELDS), st.just(DROP)),
    st.tuples(st.sampled_from(FIELDS[:1] + FIELDS[2:]), json_values),
    st.tuples(st.just("ct"), odd_types),
    st.tuples(st.just("ce"), odd_encodings),
    st.tuples(st.just("b64"), st.sampled_from([True, 1, "yes", [0]])),
    st.tuples(st.just("body"), st.sampled_from(["!!!", "YWJj=", "====", "a", "%%%%"])),
    st.tuples(st.sampled_from(["handbacks", "eta_ms", "error", "nr", "extra"]), json_values),
    st.tuples(st.just("nr"), st.just(True)),  # ignore_result: no record is written
)
# How an entry is signed (``_seal``): mostly right, so that the rest is reached.
seals = st.sampled_from(["good"] * 4 + ["plain", "other-key", "bad-digest", "malformed"])
envelopes = st.builds(
    Envelope,
    # Mostly tasks the worker knows, few changes, valid arguments half of the time:
    # else nearly every envelope fails early, and the later checks go untried.
    task=st.integers(0, 9).flatmap(lambda i: st.sampled_from(TASKS) if i < 8
                                   else st.text(max_size=30) | json_values),
    args=st.one_of(st.sampled_from(ARGS[:2]), st.sampled_from(ARGS)),
    changes=st.booleans().flatmap(lambda none: st.just(()) if none
                                  else st.lists(change, min_size=1, max_size=3).map(tuple)),
    id_form=st.sampled_from(["text", "text", "list", "object", "number"]),
    encoding=st.sampled_from(["json"] * 6 + ["b64", "truncate", "not-utf8", "oversize"]),
    cut=st.floats(0, 1, exclude_max=True),
    seal=seals)
# A call that must run, one with a change the decoding may accept, and one for a task no
# worker knows (handed back, then dead-lettered): every fate, in every run.
ONE_OF_EACH_FATE = [Envelope(TASKS[1], "valid", (), "text", "json", 0.0, "good"),
                    Envelope(TASKS[1], "valid", (("extra", 1),), "text", "json", 0.0, "good"),
                    Envelope("tests.tasks.nobody_knows", "valid", (), "text", "json", 0.0,
                             "good")]
entries = st.one_of(
    st.builds(Fields, st.lists(st.tuples(st.binary(max_size=20), values), max_size=4)
              .map(tuple), st.integers(0, 4), values),
    st.builds(Raw, st.binary(max_size=300) | values, st.none() | st.integers(0, 300), seals),
    envelopes, envelopes, envelopes)


@dataclass
class Written:
    """One entry as written, and what became of it."""

    spec: Any
    markers: tuple[str, ...]
    """Strings only this entry's dead letter can hold; else it is found by ``exact``
    (a truncation may cut every marker)."""
    exact: bytes | None
    task_id: str | None
    must: str
    """"run", "dead" or "either" (a change the decoding may accept or refuse)."""
    no_record: bool = False
    letters: list[tuple[str, bytes, str]] = field(default_factory=list)
    handed_back: bool = False


def _args(form: str, token: str) -> Any:
    return {"valid": [[token], {}], "valid-kw": [[], {"key": token}],
            "no-args": [[], {}], "too-many": [[token, 1], {}],
            "twice": [[token], {"key": token}], "unknown-kw": [[], {"nope": token}],
            "not-a-pair": [[token]], "kw-not-object": [[token], [token]]}.get(form)


KEY, OTHER_KEY = b"fuzz-signing-key-0123456789", b"another-key-0123456789"


def _seal(raw: bytes, seal: str) -> bytes:
    """``raw`` as stored: plain (unsigned), signed with the worker's key (good), with
    another key, with a digest that matches nothing, or with a cut signature."""
    if seal == "plain":
        return raw
    digest = hmac.new(OTHER_KEY if seal == "other-key" else KEY, raw,
                      hashlib.sha256).hexdigest().encode()
    if seal == "bad-digest":
        digest = digest[::-1]
    elif seal == "malformed":
        digest = digest[:20]
    return PREFIX + digest + b":" + raw


def _build(spec: Any, n: int, signed: bool) -> tuple[list[bytes], Written]:
    """The fields to XADD for ``spec`` (a list: field names may repeat), and the
    entry to account for; ``n`` makes its markers unique; ``signed``: the worker has
    ``KEY`` (without a key it reads any well-formed signature, unchecked)."""
    token = f"fz{n:010d}x"
    if isinstance(spec, Fields):
        pairs = list(spec.pairs)
        pairs.insert(min(spec.at, len(pairs)), (token.encode(), spec.value))
        flat = [part for pair in pairs for part in pair]
        return flat, Written(spec, (token,), None, None, "dead")
    if isinstance(spec, Raw):
        data = spec.data
        if spec.at is not None:
            data = data[:spec.at] + token.encode() + data[spec.at:]
        data = _seal(data, spec.seal)
        written = Written(spec, (token,) if spec.at is not None else (), data, None, "dead")
        return [b"m", data], written
    assert isinstance(spec, Envelope)
    number = 9_000_000_000 + n
    tid = {"text": f"{n:032x}@default", "list": [token], "object": {"k": token},
           "number": number}[spec.id_form]
    args = _args(spec.args, token)
    body = json.dumps(args) if args is not None else \
        f"[[{token!r}" if spec.args == "not-json" else json.dumps([token, {"x": [1]}])
    doc: dict[str, Any] = json.loads(Message(str(tid), "x", "default", "application/json",
                                             "utf-8", body).encode())
    doc["id"], doc["task"], doc["fz"] = tid, spec.task, token  # "fz": a marker decode ignores
    if spec.encoding == "b64":
        doc["body"], doc["b64"] = base64.b64encode(body.encode()).decode(), True
    for name, value in spec.changes:
        if value == DROP:
            doc.pop(name, None)
        else:
            doc[name] = value
    if spec.encoding == "oversize":
        doc["pad"] = "p" * (MIB + 10)
    raw = json.dumps(doc).encode()
    task = doc.get("task")
    runnable = task is not None and str(task) in TASKS[:2]
    must = "either"
    if spec.encoding == "truncate":
        raw, must = raw[:int(len(raw) * spec.cut)], "dead"
    elif spec.encoding == "not-utf8":
        at = int(len(raw) * spec.cut)
        raw, must = raw[:at] + b"\xff" + raw[at:], "dead"
    elif spec.encoding == "oversize":
        must = "dead"
    elif not runnable:
        must = "dead"  # fails, or no worker knows the task: handed back, then dead
    elif not spec.changes:
        must = "run" if spec.args in ("valid", "valid-kw") else "dead"
    if spec.seal == "malformed" or signed and spec.seal != "good":
        must = "dead"
    raw = _seal(raw, spec.seal)
    # After a hand-back the envelope is written anew, without "fz": the id remains.
    markers = (token, str(tid)) if spec.id_form in ("number", "text") else (token,)
    return [b"m", raw], Written(spec, markers, raw, str(tid), must,
                                no_record=doc.get("nr") is True)


# What a marker looks like (``_build``): found in a dead letter by one scan, however
# long the letter and however many entries were written.
_MARKER = re.compile(rb"fz\d{10}x|[0-9a-f]{32}@default|(?<!\d)9\d{9}(?!\d)")


# -- the test -----------------------------------------------------------------------------
class Ledger:
    """Every entry written, and the dead letters read so far, matched to them."""

    def __init__(self, client: redis.Redis, ns: str, signed: bool) -> None:
        self.client: Any = client
        self.signed = signed
        self.ns = ns
        self.stream, self.dead = keys.stream(ns, "default"), keys.dead(ns, "default")
        self.all: list[Written] = []
        self.by_marker: dict[bytes, Written] = {}
        self.last_letter = "0-0"
        self.strays: list[tuple[bytes, str]] = []

    def write(self, specs: list[Any]) -> tuple[list[Written], list[bytes]]:
        self.strays = []
        out, ids = [], []
        for spec in specs:
            fields, written = _build(spec, len(self.all), self.signed)
            self.all.append(written)
            self.by_marker.update((m.encode(), written) for m in written.markers)
            out.append(written)
            ids.append(self.client.execute_command("XADD", self.stream, "*", *fields))
        return out, ids

    def read_letters(self, recent: list[Written]) -> None:
        """Match new dead letters to entries: by marker, else by their exact bytes."""
        got = self.client.xrange(self.dead, f"({self.last_letter}", "+")
        for entry_id, f in got:
            self.last_letter = entry_id.decode()
            raw, tid = f.get(b"m", b""), f.get(b"id", b"").decode(errors="replace")
            reason = f.get(b"reason", b"").decode(errors="replace")
            found = _MARKER.findall(raw) + _MARKER.findall(tid.encode())
            owner = next((self.by_marker[m] for m in found if m in self.by_marker), None)
            if owner is None:
                owner = next((w for w in recent if w.exact == raw and not w.letters), None)
            if owner is None:
                self.strays.append((raw[:200], reason))
            else:
                owner.letters.append((tid, raw[:200], reason))

    def runs(self, w: Written) -> list[bytes]:
        token = w.markers[0].encode() if w.markers else None
        if token is None:
            return []
        starts = self.client.lrange(f"{self.ns}:starts:{token.decode()}", 0, -1)
        counted = int(self.client.get(f"{self.ns}:count:{token.decode()}") or 0)
        return list(starts) + [b"count"] * counted

    def status(self, task_id: str) -> bytes | None:
        value = self.client.hget(keys.record(self.ns, "default", task_id), "status")
        return value if value is None else bytes(value)

    def handed_back(self, task_id: str) -> bool:
        """Whether a worker that does not know its task handed it back: by its record,
        which stays so while the message moves between the delayed set and the stream."""
        status, exc_type = self.client.hmget(keys.record(self.ns, "default", task_id),
                                             "status", "exc_type")
        return bool(status == b"RETRY" and exc_type == b"TaskNotRegisteredError")


def _fate(ledger: Ledger, w: Written, *, final: bool) -> str | None:
    """What is wrong with the fate of ``w`` (None: nothing)."""
    runs = ledger.runs(w)
    dead = len(w.letters)
    if w.handed_back and not final:
        return None
    if dead == 0 and not runs and w.task_id and not final and (
            w.no_record or ledger.handed_back(w.task_id)):
        # A task no worker knows: its dead letter comes later (one without a record
        # shows no hand-back: the final check holds it to its dead letter).
        w.handed_back = True
        return None
    if dead + (len(runs) > 0) != 1 or len(runs) > 1:
        return f"ran {len(runs)} time(s) and has {dead} dead letter(s): {w.letters}"
    if dead:
        reason = w.letters[0][2]
        if not reason.strip() or len(reason.splitlines()[0]) > 2000:
            return f"dead letter without a one-line reason: {reason[:300]!r}"
        if w.must == "run":
            return f"a valid call was dead-lettered: {reason[:300]}"
        return None
    if w.must == "dead":
        return "ran, but it is invalid"
    if runs[0] != b"count" and w.task_id is not None and \
            not runs[0].startswith(w.task_id.encode() + b" "):
        return f"ran as another task id: {runs[0]!r}"
    if w.no_record:
        return None if ledger.status(w.task_id or "") is None else "ran, and kept a record"
    if w.task_id is not None and ledger.status(w.task_id) != b"SUCCESS":
        return f"ran, but its record says {ledger.status(w.task_id)!r}"
    return None


def _family(w: Any) -> set[int]:
    """The supervisor and its worker processes (their pids)."""
    return {w.pid, *w.children()}


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("server", "signed"), [
    ("valkey", False), ("redis", False), ("valkey", True)],
    ids=["valkey", "redis", "valkey-signed"], indirect=["server"])
def test_fuzzed_entries_are_run_once_or_dead_lettered(app: StreamQ, rclient: redis.Redis,
                                                      start_worker: Any, signed: bool) -> None:
    w = start_worker(app.settings.url, "-c", "2", "--heartbeat", "0.2",
                     "--log-level", "INFO",
                     env={"STREAMQ_SIGNING_KEY": KEY.decode()} if signed else None)
    family = _family(w)
    assert len(family) == 3, family
    ledger = Ledger(rclient, app.settings.namespace, signed)

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=FIXED, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.large_base_example])
    @given(st.lists(entries, min_size=1, max_size=4))
    @example(ONE_OF_EACH_FATE)  # whatever the draws reach (they differ under load)
    def one_batch(specs: list[Any]) -> None:
        written, ids = ledger.write(specs)
        wait_until(lambda: not any(rclient.xrange(ledger.stream, i, i) for i in ids),
                   timeout=20, message=f"the worker to take {ids}; log:\n{w.output()[-3000:]}")
        ledger.read_letters(written)
        problems = [f"{x.spec!r:.300}: {p}" for x in written
                    if (p := _fate(ledger, x, final=False)) is not None]
        assert not problems, "\n".join(problems)
        assert not ledger.strays, ledger.strays
        assert _family(w) == family, "a worker process was replaced"

    one_batch()

    # The entries handed back for a task no worker knows end in dead letters too.
    delayed = keys.delayed(app.settings.namespace, "default")

    def settled() -> bool:
        # One transaction: a hand-back moves between the two keys.
        pipe = rclient.pipeline(transaction=True)
        pipe.zcard(delayed)
        pipe.xlen(ledger.stream)
        if pipe.execute() != [0, 0]:
            return False
        ledger.read_letters([])
        return all(x.letters for x in ledger.all if x.handed_back)

    wait_until(settled, timeout=60, message="hand-backs to end")
    problems = [f"{x.spec!r:.300}: {p}" for x in ledger.all
                if (p := _fate(ledger, x, final=True)) is not None]
    assert not problems, "\n".join(problems)
    assert not ledger.strays, ledger.strays
    assert rclient.xpending(ledger.stream, keys.GROUP)["pending"] == 0
    assert rclient.xlen(ledger.stream) == 0
    dead = sum(len(x.letters) for x in ledger.all)
    assert rclient.xlen(ledger.dead) == dead
    ran = sum(len(ledger.runs(x)) for x in ledger.all)
    assert dead + ran == len(ledger.all)
    # The fuzz reached every fate: else it tested less than it claims.
    fates = {x.must for x in ledger.all if ledger.runs(x)} | \
        {"handed back" for x in ledger.all if x.handed_back}
    assert ran >= 3 and dead >= 20 and fates == {"run", "either", "handed back"}, \
        (ran, dead, fates)
    assert _family(w) == family
    out = w.output()
    assert "died with exit code" not in out and "replacing it" not in out, out[-3000:]
    assert w.stop() == 0


# -- what the fuzz found --------------------------------------------------------------------
def _forged(**fields: Any) -> bytes:
    """An envelope for a task no worker knows (it would be handed back, so written
    again), with ``fields`` set."""
    doc = json.loads(Message("forged-1", "tests.tasks.nobody_knows", "default",
                             "application/json", "utf-8", "[[], {}]").encode())
    doc.update(fields)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("fields", "says"), [
    ({"error": [1]}, "field 'error' is an array, not a string"),
    ({"error": 5}, "field 'error' is a number, not a string"),
    ({"eta_ms": "soon"}, "field 'eta_ms' is not an integer: 'soon'"),
    ({"eta_ms": {"at": 1}}, "field 'eta_ms' is not an integer"),
    ({"body": {"args": []}}, "field 'body' is an object, not a string"),
    ({"body": 5}, "field 'body' is a number, not a string"),
    ({"body": None}, "field 'body' is null, not a string"),
    ({"body": [1], "b64": True}, "field 'body' is an array, not a string"),
])
def test_an_envelope_whose_error_or_eta_has_the_wrong_type_is_a_dead_letter(
        fields: dict[str, Any], says: str) -> None:
    """A hand-back writes the envelope again: a non-string ``error`` or ``body`` made
    that raise TypeError out of ``prepare``, killing the worker process, and again in
    each process that took the entry over (found by the fuzz)."""
    app = tasks.app
    executor = Executor(app.registry, app.accept_content_types, "json", "testhost:1:a-0", 60)
    out = executor.prepare(Delivery("default", "1-0", _forged(**fields), 1))
    assert isinstance(out, Dead), out
    assert out.reason.startswith("undecodable message: malformed message envelope: ")
    assert says in out.reason and "\n" not in out.reason, out.reason
    assert out.task_id == "forged-1"
    with pytest.raises(DecodeError):
        Message.decode(_forged(**fields))


def test_envelopes_with_null_or_string_error_and_eta_still_decode() -> None:
    msg = Message.decode(_forged(error=None, eta_ms=None))
    assert (msg.last_error, msg.eta_ms) == (None, None)
    msg = Message.decode(_forged(error="ValueError: x", eta_ms=1234))
    assert (msg.last_error, msg.eta_ms) == ("ValueError: x", 1234)


def test_a_forged_error_field_does_not_kill_the_worker(vapp: StreamQ, rclient: redis.Redis,
                                                       start_worker: Any) -> None:
    w = start_worker(vapp.settings.url, "-c", "1", "--heartbeat", "0.2")
    family = _family(w)
    stream = keys.stream(vapp.settings.namespace, "default")
    rclient.xadd(stream, {"m": _forged(error=["not", "text"])})
    rclient.xadd(stream, {"m": _forged(body={"not": "text"})})
    letters = wait_until(lambda: (lambda d: d if len(d) == 2 else None)(
        vapp.dead.list("default")), timeout=15, message="two dead letters")
    assert [letter.task_id for letter in letters] == ["forged-1", "forged-1"]
    prefix = "undecodable message: malformed message envelope: field"
    assert sorted(letter.reason for letter in letters) == [
        f"{prefix} 'body' is an object, not a string",
        f"{prefix} 'error' is an array, not a string"]
    assert tasks.count.delay("after-forged").get(timeout=15) == 1
    assert _family(w) == family
    assert rclient.xpending(stream, keys.GROUP)["pending"] == 0
    assert "died with exit code" not in w.output()
    assert w.stop() == 0
