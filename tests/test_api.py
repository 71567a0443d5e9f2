"""The public API against a real server, executed in-process with a Consumer."""

from __future__ import annotations

import inspect
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

import streamq
from streamq import (
    AsyncResult,
    BrokerConnectionError,
    Retry,
    SerializationError,
    StreamQ,
    StreamQError,
    TaskFailed,
    current_task,
    task,
)
from streamq.base import keys
from streamq.base.errors import ConfigurationError, ResultNotFoundError, ResultTimeoutError
from streamq.base.settings import Settings
from streamq.worker.consumer import Consumer
from tests import tasks
from tests.conftest import ROOT
from tests.servers import on_shards_too


def drain(app: StreamQ, queues: tuple[str, ...] = ("default",), rounds: int = 50) -> Consumer:
    """Run a consumer in this process until the queues are empty."""
    c = Consumer(app, list(queues), "testhost:1:aaaa-0", block_ms=50)
    c.start(housekeeping=False)
    idle = 0
    for _ in range(rounds):
        idle = idle + 1 if c.run_once() == 0 else 0
        if idle >= 2:
            break
    c.stop()
    return c


def test_public_names_exist() -> None:
    for name in ("StreamQ", "task", "AsyncResult", "Retry", "TaskFailed", "StreamQError",
                 "current_task"):
        assert hasattr(streamq, name), name
    sig = inspect.signature(StreamQ)
    assert sig.parameters["url"].default is None
    assert sig.parameters["options"].kind is inspect.Parameter.VAR_KEYWORD
    # Defaults are declared once, on Settings; StreamQ() takes them from there.
    for name, default in (("namespace", "streamq"), ("default_queue", "default"),
                          ("serializer", "json"), ("result_ttl", 86400)):
        assert getattr(Settings(), name) == default
        assert getattr(Settings.from_env({}), name) == default
        assert getattr(StreamQ(**{name: default}).settings, name) == default


def test_unknown_option_names_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown option.*'namspace'.*known options"):
        StreamQ(namspace="x")
    app = StreamQ()
    with pytest.raises(ConfigurationError, match="unknown option.*'heartbeat'"):
        app.configure(heartbeat=1)


def test_streamq_reads_streamq_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defaults used to be declared twice, and StreamQ() ignored STREAMQ_NAMESPACE."""
    monkeypatch.setenv("STREAMQ_NAMESPACE", "from-env")
    assert StreamQ().settings.namespace == "from-env"
    assert StreamQ(namespace="given").settings.namespace == "given"


def test_local_call_runs_the_function_without_redis() -> None:
    assert tasks.add(2, 3) == 5


@on_shards_too
def test_delay_enqueues_and_worker_stores_the_result(app: StreamQ) -> None:
    res = tasks.add.delay(2, 3)
    assert isinstance(res, AsyncResult)
    assert res.status == "PENDING"
    assert not res.ready()
    drain(app)
    assert res.get(timeout=5) == 5
    assert res.status == "SUCCESS" and res.ready() and res.successful() and not res.failed()
    info = res.info
    assert info["status"] == "SUCCESS" and info["result"] == 5
    assert info["task"] == "tests.tasks.add" and info["queue"] == "default"
    assert info["worker"] == "testhost:1:aaaa-0" and info["deliveries"] == 1
    assert info["retries"] == 0 and info["result_ct"] == "application/json"
    assert info["enqueued_ms"] <= info["started_ms"] and info["runtime_ms"] >= 0
    assert "result_ce" not in info  # utf-8, the default, is not stored


@on_shards_too
def test_record_and_message_are_one_round_trip_and_record_has_ttl(app: StreamQ,
                                                                   rclient: redis.Redis) -> None:
    res = tasks.echo.delay("x")
    ns = app.settings.namespace
    ttl = rclient.ttl(keys.record(ns, "default", res.id))
    assert 0 < ttl <= app.settings.result_ttl
    assert rclient.xlen(keys.stream(ns, "default")) == 1


def test_enqueue_survives_a_killed_connection_without_loss_or_duplicates(
        app: StreamQ, rclient: redis.Redis) -> None:
    ns = app.settings.namespace
    stream = keys.stream(ns, "default")
    tasks.echo.delay("warm")  # opens the producer's connection
    # The server drops every client but this one: the next send meets a dead socket,
    # and the enqueue is sent again on a new connection, once.
    assert rclient.client_kill_filter(_type="normal", skipme=True) >= 1
    one = tasks.echo.delay("after-kill")
    assert one.status == "PENDING"
    assert rclient.xlen(stream) == 2
    rclient.client_kill_filter(_type="normal", skipme=True)
    many = tasks.echo.map([str(i) for i in range(1050)])
    assert rclient.xlen(stream) == 2 + 1050
    drain(app)
    assert [r.get(timeout=5) for r in many] == [str(i) for i in range(1050)]


@on_shards_too
def test_scripts_lost_by_the_server_are_loaded_again(app: StreamQ,
                                                      rclient: redis.Redis) -> None:
    stream = keys.stream(app.settings.namespace, "default")
    rclient.script_flush()  # as after a restart: map()'s script and the worker's are gone
    results = tasks.add.map([(i, 1) for i in range(250)])
    assert rclient.xlen(stream) == 250  # every call once: none lost, none sent twice
    rclient.script_flush()
    drain(app)
    assert [r.get(timeout=5) for r in results] == [i + 1 for i in range(250)]
    assert rclient.xlen(stream) == 0


def test_enqueue_error_reply_raises(app: StreamQ,
                                                       rclient: redis.Redis) -> None:
    ns = app.settings.namespace
    rclient.set(keys.stream(ns, "default"), "not a stream")
    with pytest.raises(streamq.BrokerError, match="WRONGTYPE"):
        tasks.echo.delay("x")
    assert rclient.get(keys.stream(ns, "default")) == b"not a stream"
    rclient.delete(keys.stream(ns, "default"))
    # The connection is still usable afterwards.
    assert tasks.echo.delay("y").status == "PENDING"
    # A delayed enqueue is a transaction: an error inside it is raised too.
    rclient.set(keys.delayed(ns, "default"), "not a sorted set")
    with pytest.raises(streamq.BrokerError, match="WRONGTYPE"):
        tasks.echo.apply_async(("z",), countdown=30)
    rclient.delete(keys.delayed(ns, "default"))
    assert tasks.echo.apply_async(("z",), countdown=30).status == "SCHEDULED"


@on_shards_too
def test_concurrent_producers_share_the_app(app: StreamQ, rclient: redis.Redis) -> None:
    import threading

    ids: list[str] = []
    lock = threading.Lock()

    def produce(tag: int) -> None:
        for i in range(200):
            r = tasks.add.delay(tag, i)
            with lock:
                ids.append(r.id)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 800
    assert rclient.xlen(keys.stream(app.settings.namespace, "default")) == 800


@on_shards_too
def test_apply_async_options(app: StreamQ, rclient: redis.Redis) -> None:
    res = tasks.add.apply_async((1,), {"y": 2}, queue="other", task_id="my-id-1")
    assert res.id == "my-id-1"
    assert rclient.xlen(keys.stream(app.settings.namespace, "other")) == 1
    drain(app, ("other",))
    assert res.get(timeout=5) == 3


@on_shards_too
def test_task_queue_option_routes_messages(app: StreamQ) -> None:
    res = tasks.on_other_queue.delay(4)
    drain(app, ("default",))
    assert res.status == "PENDING"
    drain(app, ("other",))
    assert res.get(timeout=5) == 40


@on_shards_too
def test_map_enqueues_many_in_order(app: StreamQ) -> None:
    results = tasks.add.map([(i, i) for i in range(1200)])
    single = tasks.echo.map(["a", "b"])
    drain(app)
    assert [r.get(timeout=5) for r in results] == [2 * i for i in range(1200)]
    assert [r.get(timeout=5) for r in single] == ["a", "b"]


@on_shards_too
def test_countdown_gives_scheduled_status(app: StreamQ, rclient: redis.Redis) -> None:
    res = tasks.add.apply_async((1, 1), countdown=30)
    assert res.status == "SCHEDULED"
    ns = app.settings.namespace
    assert rclient.zscore(keys.delayed(ns, "default"), res.id) is not None
    assert rclient.xlen(keys.stream(ns, "default")) == 0


def test_eta_must_be_timezone_aware(app: StreamQ) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        tasks.add.apply_async((1, 1), eta=datetime.now() + timedelta(seconds=5))
    res = tasks.add.apply_async((1, 1), eta=datetime.now(UTC) + timedelta(seconds=30))
    assert res.status == "SCHEDULED"


def test_bad_arguments_raise_type_error_before_redis(app: StreamQ,
                                                     rclient: redis.Redis) -> None:
    with pytest.raises(TypeError, match="tests.tasks.add"):
        tasks.add.delay(1)
    with pytest.raises(TypeError):
        tasks.add.delay(1, 2, z=3)
    with pytest.raises(TypeError):
        tasks.add.map([(1, 2, 3)])

    def defaults(a: int, b: int = 1, *rest: int) -> None: ...
    def keyword_only(a: int, *, k: int) -> None: ...

    with_defaults = app.task(name="t.defaults")(defaults)
    needs_keyword = app.task(name="t.keyword_only")(keyword_only)
    for bad in [lambda: with_defaults.delay(), lambda: with_defaults.delay(b=2),
                lambda: needs_keyword.delay(1), lambda: needs_keyword.delay(1, 2)]:
        with pytest.raises(TypeError):
            bad()
    assert rclient.keys(f"{app.settings.namespace}:*") == []
    for good in [lambda: with_defaults.delay(1), lambda: with_defaults.delay(1, 2, 3, 4),
                 lambda: needs_keyword.delay(1, k=2)]:
        good()
    assert rclient.xlen(keys.stream(app.settings.namespace, "default")) == 3


def test_unserializable_argument_names_its_type(app: StreamQ, rclient: redis.Redis) -> None:
    class Widget:
        pass

    with pytest.raises(SerializationError, match="Widget") as info:
        tasks.echo.delay({"nested": [Widget()]})
    assert isinstance(info.value, StreamQError)
    assert rclient.keys(f"{app.settings.namespace}:*") == []


def test_cloudpickle_serializer_round_trips_objects(server: Any, namespace: str) -> None:
    app = StreamQ(server.url, namespace=namespace, serializer="cloudpickle",
                  signing_key="a test key of enough length")

    @app.task
    def double(x: Any) -> Any:
        return x * 2

    when = datetime(2026, 1, 2, tzinfo=UTC)
    res = double.delay(b"ab")
    res2 = app.registry[double.name].delay(3)
    drain(app)
    assert res.get(timeout=5) == b"abab"
    assert res2.get(timeout=5) == 6
    assert when  # a datetime survives too, below
    res3 = double.delay(timedelta(seconds=1))
    c = Consumer(app, ["default"], "h:1:aaaa-0", block_ms=50)
    c.start(housekeeping=False)
    c.run_once()
    c.stop()
    assert res3.get(timeout=5) == timedelta(seconds=2)
    # A binary result keeps its encoding in the record, and reads back from it too.
    assert AsyncResult(res3.id, app).info["result_ce"] == "binary"
    assert AsyncResult(res3.id, app).get(timeout=5) == timedelta(seconds=2)
    app.close()


def test_unknown_id_is_unknown_not_pending(app: StreamQ) -> None:
    res = app.AsyncResult("no-such-id")
    assert res.status == "UNKNOWN"
    assert res.info == {}
    assert not res.ready()
    with pytest.raises(ResultNotFoundError):
        res.get(timeout=1)


def test_get_timeout_raises_a_builtin_timeout_error(app: StreamQ) -> None:
    res = tasks.add.delay(1, 2)
    with pytest.raises(TimeoutError) as info:
        res.get(timeout=0.3)
    assert isinstance(info.value, ResultTimeoutError)
    assert isinstance(info.value, StreamQError)


@on_shards_too
def test_failure_propagates_remote_error(app: StreamQ) -> None:
    res = tasks.fail.delay("kaboom")
    drain(app)
    assert res.status == "FAILURE" and res.failed() and res.ready()
    with pytest.raises(TaskFailed) as info:
        res.get(timeout=5)
    assert str(info.value) == "ValueError: kaboom"  # one line; the traceback is apart
    assert "Traceback" in info.value.traceback and "kaboom" in info.value.traceback
    assert info.value.exc_type == "ValueError" and info.value.exc_message == "kaboom"
    returned = res.get(timeout=5, propagate=False)
    assert isinstance(returned, TaskFailed)


def _drain_later(app: StreamQ) -> subprocess.Popen[bytes]:
    """Another process that drains ``app``'s default queue after 0.5 s."""
    code = (
        "import time, sys; sys.path.insert(0, '.');"
        "from tests import tasks; from tests.test_api import drain;"
        f"tasks.app.configure(url={app.settings.url!r}, namespace={app.settings.namespace!r});"
        "time.sleep(0.5); drain(tasks.app)"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)


@on_shards_too
def test_get_waits_for_a_result_finished_later(app: StreamQ) -> None:
    """get() blocks and wakes on completion by another process."""
    res = tasks.add.delay(20, 22)
    proc = _drain_later(app)
    other = app.AsyncResult(res.id)  # a second waiter, not the one that enqueued
    try:
        assert res.get(timeout=20) == 42
        assert other.get(timeout=20) == 42
    finally:
        proc.wait(20)
    assert "waiting" not in res.info  # the waiter's mark is not part of the record


def test_get_wakes_on_completion_on_a_server_without_scripts(app: StreamQ,
                                                             rclient: redis.Redis) -> None:
    """The first get() against a server that has no scripts loaded (a new or restarted
    one) must still be woken by the completion, not by the end of its wait slice."""
    rclient.script_flush()
    res = tasks.add.delay(1, 2)
    proc = _drain_later(app)
    try:
        t0 = time.monotonic()
        assert res.get(timeout=20) == 3
        waited = time.monotonic() - t0
    finally:
        proc.wait(20)
    slice_s = res._max_block_s
    assert waited < slice_s - 0.5, f"woke after {waited:.2f}s: by the slice, not the task"


def test_only_waited_tasks_get_a_completion_list(app: StreamQ, rclient: redis.Redis) -> None:
    ns = app.settings.namespace
    unwaited, waited = tasks.add.delay(1, 1), tasks.add.delay(2, 2)
    with pytest.raises(ResultTimeoutError):
        waited.get(timeout=0.05)  # marks it as waited on
    drain(app)
    assert not rclient.exists(keys.done(ns, "default", unwaited.id))
    assert rclient.lrange(keys.done(ns, "default", waited.id), 0, -1) == [
        b"Sapplication/json\nutf-8\n4"]
    # A task that finished before anyone waited still answers at once, and so does
    # a failed one (its error is read from the record).
    assert unwaited.get(timeout=5) == 2
    failed = tasks.fail.delay("boom")
    drain(app)
    with pytest.raises(TaskFailed, match="boom"):
        app.AsyncResult(failed.id).get(timeout=5)


@on_shards_too
def test_forget_deletes_the_record(app: StreamQ) -> None:
    res = tasks.add.delay(1, 2)
    drain(app)
    assert res.get(timeout=5) == 3
    res.forget()
    assert res.status == "UNKNOWN"


def test_unserializable_result_is_a_failure(app: StreamQ) -> None:
    res = tasks.unserializable_result.delay()
    drain(app)
    with pytest.raises(TaskFailed, match="serialize"):
        res.get(timeout=5)


def test_current_task_inside_and_outside(app: StreamQ) -> None:
    assert current_task() is None
    res = tasks.context.delay()
    drain(app)
    ctx = res.get(timeout=5)
    assert ctx == {"id": res.id, "name": "tests.tasks.context", "queue": "default",
                   "retries": 0, "deliveries": 1}


@on_shards_too
def test_retry_signal_retries_then_succeeds(app: StreamQ) -> None:
    res = tasks.explicit_retry.delay("r1")
    c = Consumer(app, ["default"], "h:1:aaaa-0", block_ms=50)
    c.start()  # housekeeping promotes the retries
    try:
        import time

        deadline = time.monotonic() + 10
        while res.status != "SUCCESS" and time.monotonic() < deadline:
            c.run_once()
    finally:
        c.stop()
    assert res.get(timeout=1) == 3
    assert res.info["retries"] == 2
    assert tasks.count_of("r1") == 3
    assert isinstance(Retry(countdown=1), Exception) and not isinstance(Retry(), StreamQError)


def test_task_options_are_stored(server: Any, namespace: str) -> None:
    app = StreamQ(server.url, namespace=namespace)

    @app.task(name="custom.name", queue="q2", max_retries=4, retry_backoff=2.0,
              retry_backoff_max=30.0, autoretry_for=(KeyError,), timeout=9.5, max_deliveries=7)
    def f() -> None: ...

    o = f.options
    assert (o.name, o.queue, o.max_retries, o.retry_backoff, o.retry_backoff_max,
            o.autoretry_for, o.timeout, o.max_deliveries) == (
        "custom.name", "q2", 4, 2.0, 30.0, (KeyError,), 9.5, 7)
    assert app.registry["custom.name"] is f

    @app.task
    def g() -> None: ...

    assert g.name.endswith("test_task_options_are_stored.<locals>.g")
    assert (g.options.max_retries, g.options.max_deliveries, g.options.autoretry_for) == (
        0, 5, (Exception,))
    with pytest.raises(TypeError, match="unknown task option"):
        app.task(retries=3)


def test_module_level_task_uses_the_default_app(server: Any, monkeypatch: pytest.MonkeyPatch,
                                                 namespace: str) -> None:
    import streamq.api.app as app_module

    monkeypatch.setenv("STREAMQ_URL", server.url)
    monkeypatch.setattr(app_module, "_default_app", None)

    @task
    def triple(x: int) -> int:
        return 3 * x

    @task(queue="q3")
    def quad(x: int) -> int:
        return 4 * x

    default = app_module.default_app()
    assert default.settings.url == server.url
    assert default.registry[triple.name] is triple and quad.options.queue == "q3"
    default.configure(namespace=namespace)
    res = triple.delay(5)
    c = Consumer(default, ["default"], "h:1:aaaa-0", block_ms=50)
    c.start(housekeeping=False)
    c.run_once()
    c.stop()
    assert res.get(timeout=5) == 15
    default.close()


def test_unreachable_server_is_a_connection_error_with_masked_password() -> None:
    app = StreamQ("redis://:sekrit-pw@127.0.0.1:1/0", namespace="x")
    with pytest.raises(ConnectionError) as info:
        tasks_add = app.task(lambda x: x, name="lam")
        tasks_add.delay(1)
    assert isinstance(info.value, BrokerConnectionError)
    assert isinstance(info.value, StreamQError)
    assert "sekrit-pw" not in str(info.value) and "***" in str(info.value)
    assert "sekrit-pw" not in repr(app.settings)


def test_wrong_password_is_an_authentication_error(tmp_path: Any, namespace: str) -> None:
    from tests.servers import ServerProcess

    srv = ServerProcess("valkey", tmp_path / "srv").start()
    admin = redis.Redis(port=srv.port)
    try:
        admin.config_set("requirepass", "right-pw")
        app = StreamQ(f"redis://:wrong-pw@127.0.0.1:{srv.port}/0", namespace=namespace)
        t = app.task(lambda: None, name="noop")
        with pytest.raises(BrokerConnectionError, match="authentication failed") as info:
            t.delay()
        assert "wrong-pw" not in str(info.value)
        app.close()
    finally:
        redis.Redis(port=srv.port, password="right-pw").config_set("requirepass", "")
        srv.stop()


def test_invalid_urls_and_names_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="redis://"):
        StreamQ("http://localhost:6379")
    with pytest.raises(ConfigurationError, match="serializer"):
        StreamQ("redis://localhost", serializer="nope")
    with pytest.raises(ConfigurationError, match="queue"):
        StreamQ("redis://localhost", default_queue="has space")


@on_shards_too
def test_many_waiters_on_one_task_all_wake(app: StreamQ) -> None:
    import threading

    res = tasks.add.delay(5, 6)
    got: list[Any] = []
    waiters = [threading.Thread(target=lambda: got.append(
        app.AsyncResult(res.id).get(timeout=20))) for _ in range(3)]
    for t in waiters:
        t.start()
    drain(app)
    for t in waiters:
        t.join(25)
    assert got == [11, 11, 11]
    assert res.get(timeout=1) == 11  # the completion is not consumed by a waiter


@on_shards_too
def test_get_after_requeue_waits_for_the_new_run(app: StreamQ) -> None:
    res = tasks.flaky.apply_async(("rq-get", 0))  # succeeds when run
    ghost = tasks.fail.delay("first run fails")
    drain(app)
    assert res.get(timeout=5) == 1
    with pytest.raises(TaskFailed):
        ghost.get(timeout=5)
    (letter,) = app.dead.list("default")
    assert app.dead.requeue("default", [letter.entry_id]) == 1
    assert ghost.status == "PENDING"
    with pytest.raises(ResultTimeoutError):  # waits: the old failure is void
        ghost.get(timeout=0.5)


def test_passwords_with_url_characters_are_masked_everywhere() -> None:
    """Generated passwords often hold '/', '#' or '?', which a URL parser takes for
    the start of the path: they used to be printed in full."""
    from urllib.parse import quote

    secret = "s3cr/et#pa?ss"
    for url in (f"redis://user:{secret}@127.0.0.1:1/0",
                f"redis://user:{quote(secret, safe='')}@127.0.0.1:1/0"):
        app = StreamQ(url)
        shown = repr(app) + repr(app.settings)
        assert not any(piece in shown for piece in ("s3cr", "pa?ss", "pa%3Fss"))
        assert "user:***@127.0.0.1:1/0" in repr(app)
        with pytest.raises(streamq.StreamQError) as info:  # unparsable, or unreachable
            _ = app.AsyncResult("x" * 32 + "@default").status
        text = str(info.value)
        assert not any(piece in text for piece in ("s3cr", "pa?ss", "pa%3Fss"))
        assert "***" in text
        app.close()
