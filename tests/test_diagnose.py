"""Errors that diagnose, seen from the API (issue 11 point 3): a timed-out get() says
whether any live worker reads the queue, get() inside a task is refused, a failure
re-raises the task's own exception class, async def tasks and bad calls are refused
with what is wrong.

Real servers and real worker subprocesses (``tests.diagnose_tasks``) throughout.
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from streamq import (
    ConfigurationError,
    GetInsideTaskError,
    ResultTimeoutError,
    StreamQ,
    TaskFailed,
)
from streamq.base import keys
from streamq.base.errors import remote_failure
from streamq.server.registry import WorkerEntry
from tests import diagnose_tasks as dt
from tests.conftest import wait_until
from tests.servers import ServerProcess

MODULE = "tests.diagnose_tasks"


# -- 1. a timed-out get() says who reads the queue ---------------------------------------------
def test_timeout_says_no_worker_reads_the_queue(dapp: StreamQ) -> None:
    res = dt.add.delay(1, 2)
    started = time.monotonic()
    with pytest.raises(ResultTimeoutError) as info:
        res.get(timeout=0.3)
    assert time.monotonic() - started < 3
    text = str(info.value)
    assert text.startswith(f"task {res.id} is still PENDING after 0.3 s; ")
    assert f"no worker has read queue 'default' on {dapp.settings.url}" in text
    assert "in the last 60 s" in text and "\n" not in text
    assert f"namespace {dapp.settings.namespace!r}" in text
    assert info.value.readers == 0 and info.value.status == "PENDING"
    assert info.value.task_id == res.id and isinstance(info.value, TimeoutError)


def test_timeout_counts_the_live_workers_that_read_the_queue(
        dapp: StreamQ, start_worker: Any) -> None:
    w = start_worker(dapp.settings.url, "-c", "1", "--log-level", "WARNING", module=MODULE)
    busy = dt.slow_first_time.delay("busy", 3)
    wait_until(lambda: busy.status == "STARTED", message="the slow task running")
    behind = dt.add.delay(1, 2)
    with pytest.raises(ResultTimeoutError) as info:
        behind.get(timeout=0.5)
    assert "is still PENDING after 0.5 s; 1 live worker(s) read queue 'default'" in \
        str(info.value), str(info.value)
    assert "waits behind the tasks ahead of it" in str(info.value)
    assert info.value.readers == 1
    # A queue nobody reads: the live workers' queues are named.
    lost = dt.add.apply_async((1, 2), queue="nobody-reads-this")
    with pytest.raises(ResultTimeoutError) as info:
        lost.get(timeout=0.3)
    text = str(info.value)
    assert "no worker has read queue 'nobody-reads-this'" in text
    assert "the live workers read only default, side" in text
    # A name no live worker has registered (a typo, a worker not deployed yet).
    typo = dapp.send_by_name("tests.diagnose_tasks.ad", [1, 2])
    with pytest.raises(ResultTimeoutError) as info:
        typo.get(timeout=0.5)
    assert "none of them has registered task 'tests.diagnose_tasks.ad'" in str(info.value)
    assert behind.get(timeout=10) == 3
    assert w.stop() == 0


def test_the_registration_holds_queues_task_names_and_last_read(
        dapp: StreamQ, start_worker: Any) -> None:
    w = start_worker(dapp.settings.url, "-c", "1", "--log-level", "WARNING", module=MODULE)
    client = dapp.server.connection.client
    ns = dapp.settings.namespace

    def registered() -> dict[str, str]:
        for worker_id in client.zrange(keys.workers(ns), 0, -1):
            h = client.hgetall(keys.worker(ns, worker_id.decode()))
            fields = {k.decode(): v.decode() for k, v in h.items()}
            if "last_read_ms" in fields:
                return fields
        return {}

    fields = wait_until(registered, message="a registration with last_read_ms")
    assert fields["queues"] == "default,side"
    assert set(json.loads(fields["tasks"])) == set(dt.app.registry)
    assert abs(int(fields["last_read_ms"]) - time.time() * 1000) < 10_000
    [entry] = dapp.server.registry.live_workers()
    assert entry.tasks == frozenset(dt.app.registry) and entry.read_lately()
    assert w.stop() == 0


def test_a_worker_reads_lately_by_its_own_clock() -> None:
    now = 1_800_000_000_000
    assert WorkerEntry("w", ("q",), None, now - 59_000, now).read_lately()
    assert not WorkerEntry("w", ("q",), None, now - 61_000, now).read_lately()
    assert WorkerEntry("w", ("q",), None, None, now).read_lately()  # it does not say


def test_the_url_in_the_timeout_masks_the_password(tmp_path: Path, namespace: str) -> None:
    srv = ServerProcess("valkey", tmp_path / "srv").start()
    try:
        client = srv._client(5)
        client.config_set("requirepass", "s3cr3t-pw")
        client.close()
        app = StreamQ(f"redis://:s3cr3t-pw@127.0.0.1:{srv.port}/0", namespace=namespace)

        @app.task(name="diagnose.masked")
        def masked() -> None: ...

        with pytest.raises(ResultTimeoutError) as info:
            masked.delay().get(timeout=0.2)
        text = str(info.value)
        assert "s3cr3t" not in text and f"redis://:***@127.0.0.1:{srv.port}/0" in text
        app.close()
    finally:
        srv.kill()  # stop()'s SHUTDOWN has no password: it waited 10 s, then SIGTERM


# -- 2. get() inside a task ------------------------------------------------------------------
def test_get_inside_a_task_on_a_queue_its_process_reads_is_refused(
        dapp: StreamQ, start_worker: Any) -> None:
    w = start_worker(dapp.settings.url, "-c", "2", "--log-level", "WARNING", module=MODULE)
    for task, which in ((dt.waits_on_own_queue, "it runs on"),
                        (dt.waits_on_a_queue_it_reads, "its process reads")):
        with pytest.raises(TaskFailed) as info:
            task.delay().get(timeout=15)
        assert isinstance(info.value, GetInsideTaskError)
        assert isinstance(info.value, RuntimeError)
        assert info.value.exc_type == "streamq.base.errors.GetInsideTaskError"
        assert f"never call result.get() inside a task for a task on the queue {which}" in \
            info.value.exc_message
        assert "disable_sync_subtasks=False" in info.value.exc_message
    assert dt.waits_when_allowed.delay().get(timeout=20) == 3
    assert w.stop() == 0


def test_get_outside_a_task_is_not_refused(dapp: StreamQ) -> None:
    with pytest.raises(ResultTimeoutError):
        dt.add.delay(1, 1).get(timeout=0.1)
    assert issubclass(GetInsideTaskError, RuntimeError)


# -- 3. the task's own exception class ---------------------------------------------------------
def test_get_reraises_the_tasks_own_exception_class(dapp: StreamQ, start_worker: Any) -> None:
    w = start_worker(dapp.settings.url, "-c", "1", "--log-level", "WARNING", module=MODULE)
    declined, missing, odd, hidden = (dt.declined.delay(), dt.key_error.delay(),
                                      dt.needs_two.delay(), dt.hidden_error.delay())
    with pytest.raises(dt.PaymentDeclined) as caught:
        declined.get(timeout=15)
    exc = caught.value
    assert isinstance(exc, TaskFailed) and isinstance(exc, Exception)
    assert str(exc) == ("tests.diagnose_tasks.PaymentDeclined: card declined (51): "
                        "insufficient funds on two lines")
    assert exc.exc_type == "tests.diagnose_tasks.PaymentDeclined"
    assert exc.exc_message == "card declined (51): insufficient funds\non two lines"
    assert exc.status == "FAILURE" and exc.task_id == declined.id
    assert "raise PaymentDeclined(51" in exc.traceback and "Traceback" in exc.traceback
    assert any("raise PaymentDeclined(51" in note for note in exc.__notes__)
    # The same class each time, and a TaskFailed handler still catches every failure.
    with pytest.raises(TaskFailed) as again:
        declined.get(timeout=5)
    assert type(again.value) is type(exc)
    returned = declined.get(timeout=5, propagate=False)
    assert isinstance(returned, dt.PaymentDeclined)
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc) and str(copy) == str(exc)

    with pytest.raises(KeyError) as key:  # a builtin class, by its bare name
        missing.get(timeout=15)
    assert isinstance(key.value, TaskFailed) and key.value.exc_type == "KeyError"
    # A class whose __new__ refuses TaskFailed's arguments: a plain TaskFailed.
    with pytest.raises(TaskFailed) as plain:
        odd.get(timeout=15)
    assert type(plain.value) is TaskFailed
    assert plain.value.exc_type == "tests.diagnose_tasks.NeedsTwo"
    # A module this process never imported is never imported for it.
    assert "tests.diagnose_hidden" not in sys.modules
    with pytest.raises(TaskFailed) as unimported:
        hidden.get(timeout=15)
    assert type(unimported.value) is TaskFailed
    assert unimported.value.exc_type == "tests.diagnose_hidden.HiddenError"
    assert "tests.diagnose_hidden" not in sys.modules
    assert w.stop() == 0


class _Lazy:
    """A module-like object whose ``__getattr__`` must never run for a lookup."""

    asked: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.asked.append(name)
        raise AttributeError(name)


def test_the_class_is_looked_up_safely() -> None:
    # Only in modules already imported, by their namespace (no module __getattr__).
    sys.modules["diagnose_lazy_module"] = _Lazy()  # type: ignore[assignment]
    try:
        exc = remote_failure("t@q", "diagnose_lazy_module.Anything", "m")
        assert type(exc) is TaskFailed and _Lazy.asked == []
    finally:
        del sys.modules["diagnose_lazy_module"]
    for name in ("not.a.module.Error", "os.path", "print", "SystemExit", "KeyboardInterrupt",
                 "streamq.base.errors.Retry", "Exception", "streamq.base.errors.TaskFailed",
                 "1bad name"):
        assert type(remote_failure("t@q", name, "m")) is TaskFailed, name
    group = remote_failure("t@q", "ExceptionGroup", "m")  # its __new__ wants a list
    assert type(group) is TaskFailed
    os_error = remote_failure("t@q", "FileNotFoundError", "no such file")
    assert isinstance(os_error, FileNotFoundError) and str(os_error) == \
        "FileNotFoundError: no such file"
    dead = remote_failure("t@q", "ValueError", "m", status="DEAD")
    assert type(dead) is TaskFailed  # a dead letter's reason is no exception of the task's


# -- 4. and 8. refused at decoration and at the call -------------------------------------------
def test_generator_tasks_are_refused_at_decoration(dapp: StreamQ) -> None:
    with pytest.raises(ConfigurationError, match="a generator cannot be a task"):
        @dapp.task(queue="side")
        async def stream() -> Any:
            yield 1

    with pytest.raises(ConfigurationError, match="a generator cannot be a task"):
        @dapp.task
        def items() -> Any:
            yield 1

    assert not any("items" in name or "stream" in name for name in dapp.registry)


def test_bad_calls_say_what_is_wrong(dapp: StreamQ) -> None:
    with pytest.raises(ValueError, match="countdown must be >= 0 seconds, got -5"):
        dt.add.apply_async((1, 2), countdown=-5)
    with pytest.raises(ValueError, match="countdown must be >= 0"):
        dapp.send_by_name("tests.diagnose_tasks.add", [1, 2], countdown=-1)
    with pytest.raises(TypeError) as info:
        dt.add.delay(1, urll=2)  # type: ignore[call-arg]
    assert str(info.value) == \
        "tests.diagnose_tasks.add() got an unexpected keyword argument 'urll'"
    with pytest.raises(TypeError, match=r"add\(\) missing a required argument: 'y'"):
        dt.add.delay(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"add\(\) too many positional arguments"):
        dt.add.delay(1, 2, 3)  # type: ignore[call-arg]
