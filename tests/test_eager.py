"""Eager mode (issue 14, the test mode): calls run inline in the caller with no server.

Most tests use ``tests.eager_tasks``, an app with ``eager=True`` whose URL points at a
closed port, and check that it never even built a link to it. A subprocess proves it
for ``STREAMQ_EAGER=1`` with an audit hook that records every connection attempt and
process start. ``app.eager()`` is tested on the suite's normal app against a real
server (nothing written inside the block, everything after it), and the outcomes of
eager calls are compared with those of the same calls run by a real worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from streamq import (
    AsyncResult,
    EncodeError,
    GetInsideTaskError,
    MessageTooLargeError,
    ResultError,
    ResultNotFoundError,
    StreamQ,
    TaskFailed,
    TaskNotRegisteredError,
    current_task,
)
from streamq.api.eager import EagerResult, is_eager, run_inline
from tests import eager_tasks as et
from tests import tasks
from tests.conftest import ROOT
from tests.recording import Recorder
from tests.test_readme import _files

app = et.app


@pytest.fixture(autouse=True)
def _no_link() -> Any:
    """Every test here must leave the eager app without a link to any server."""
    yield
    assert app._server is None and app._aio is None, "eager mode built a server link"




def test_delay_runs_inline_and_the_handle_has_the_async_result_api() -> None:
    r = et.add.delay(2, 3)
    assert isinstance(r, EagerResult) and isinstance(r, AsyncResult)
    assert is_eager(app)
    assert r.id.endswith("@default")
    assert (r.status, r.state) == ("SUCCESS", "SUCCESS")
    assert r.ready() and r.successful() and not r.failed()
    assert r.get() == 5 and r.get(timeout=0.01) == 5 and r.result == 5
    assert r.traceback is None
    info = r.info
    assert (info["status"], info["task"], info["queue"], info["result"], info["retries"],
            info["deliveries"]) == ("SUCCESS", "tests.eager_tasks.add", "default", 5, 0, 1)
    assert asyncio.run(r.aget()) == 5 and asyncio.run(r.astatus()) == "SUCCESS"
    found = app.AsyncResult(r.id)
    assert isinstance(found, EagerResult) and found == r and found.get() == 5
    r.forget()
    for handle in (r, found, app.AsyncResult(r.id)):
        assert handle.status == "UNKNOWN" and not handle.ready() and handle.info == {}
        with pytest.raises(ResultNotFoundError):
            handle.get()


def test_an_unknown_id_reads_as_unknown_without_asking_a_server() -> None:
    r = app.AsyncResult("never-enqueued")
    assert r.status == "UNKNOWN" and r.result is None
    with pytest.raises(ResultNotFoundError):
        r.get()


def test_apply_async_options_map_and_send_by_name() -> None:
    t0 = time.monotonic()
    later = et.add.apply_async((1, 2), countdown=3600)  # not waited for
    chosen = et.echo.apply_async(("x",), task_id="my-own-id", queue="elsewhere")
    assert time.monotonic() - t0 < 5
    assert later.get() == 3 and later.info["eta_ms"] > time.time() * 1000 + 3000_000
    assert chosen.id == "my-own-id" and chosen.info["queue"] == "elsewhere"
    assert app.AsyncResult("my-own-id").get() == "x"
    assert [h.get() for h in et.add.map([(i, i) for i in range(20)])] == \
        [2 * i for i in range(20)]
    assert [h.get() for h in et.echo.map(["a", "b"])] == ["a", "b"]
    assert app.send_by_name("tests.eager_tasks.add", [4, 5]).get() == 9
    with pytest.raises(TaskNotRegisteredError, match="'no.such.task' is not registered"):
        app.send_by_name("no.such.task", [1])
    with pytest.raises(TypeError, match=r"add\(\) missing"):
        et.add.delay(1)


def test_a_failure_raises_task_failed_and_the_tasks_own_class_from_get() -> None:
    r = et.declined.delay(42)
    assert r.status == "FAILURE" and r.failed() and r.ready() and not r.successful()
    with pytest.raises(et.PaymentDeclinedError) as caught:
        r.get()
    exc = caught.value
    assert isinstance(exc, TaskFailed) and exc.task_id == r.id
    assert (exc.exc_type, exc.exc_message) == ("tests.eager_tasks.PaymentDeclinedError",
                                              "card declined for 42")
    assert "raise PaymentDeclinedError" in exc.traceback and r.traceback == exc.traceback
    returned = r.get(propagate=False)
    assert isinstance(returned, et.PaymentDeclinedError) and str(returned) == str(exc)
    assert isinstance(r.result, TaskFailed)
    with pytest.raises(TaskFailed):
        asyncio.run(r.aget())
    dead = et.rejected.delay("not for us")
    assert dead.status == "DEAD"
    with pytest.raises(TaskFailed, match="rejected by the task: not for us") as caught:
        dead.get()
    assert caught.value.exc_type == "DeadLetter"


def test_retries_run_inline_with_exact_attempt_counts() -> None:
    t0 = time.monotonic()
    ok = et.retried.delay("r-ok", 2)  # Retry(countdown=3600) twice: not waited for
    assert ok.get() == 3 and et.CALLS["r-ok"] == 3 and ok.info["retries"] == 2
    out = et.retried.delay("r-out", 10)  # max_retries=3: four attempts, then FAILURE
    assert et.CALLS["r-out"] == 4 and out.status == "FAILURE"
    with pytest.raises(TaskFailed) as caught:
        out.get()
    assert caught.value.exc_type == "Retry" and out.info["retries"] == 3
    auto = et.autoretried.delay("a-ok", 2)  # autoretry_for ConnectionError, backoff 3600 s
    assert auto.get() == 3 and et.CALLS["a-ok"] == 3
    other = et.autoretried.delay("a-other", 2, "ValueError")  # not in autoretry_for
    assert et.CALLS["a-other"] == 1
    with pytest.raises(ValueError, match="not a connection problem"):
        other.get()
    assert time.monotonic() - t0 < 5


def test_ignore_result_runs_once_and_get_says_no_result_will_come() -> None:
    r = et.quiet.delay("q")
    assert et.CALLS["q"] == 1 and r.ignored and r.status == "UNKNOWN"
    with pytest.raises(ResultError, match="ignore_result=True"):
        r.get()
    with pytest.raises(ResultError, match="ignore_result=True"):
        asyncio.run(r.aget())
    assert app.AsyncResult(r.id).status == "UNKNOWN"
    kept = et.add.apply_async((1, 1), ignore_result=True)
    assert kept.ignored and kept.status == "UNKNOWN"


def test_arguments_and_results_round_trip_through_the_serializer() -> None:
    assert et.echo.delay((1, (2, 3))).get() == [1, [2, 3]]  # JSON: tuples come back lists
    with pytest.raises(EncodeError, match="cannot serialize the arguments of task "
                                          "tests.eager_tasks.echo"):
        et.echo.delay({1, 2})
    bad = et.returns_a_set.delay()
    with pytest.raises(TaskFailed, match="cannot serialize the result") as caught:
        bad.get()
    assert caught.value.exc_type == "EncodeError"


def test_size_limits_apply_as_for_real() -> None:
    small = StreamQ("redis://127.0.0.1:1/0", eager=True, max_message_bytes=100_000,
                    max_result_bytes=1000)

    @small.task(name="echo")
    def echo(value: Any) -> Any:
        return value

    with pytest.raises(MessageTooLargeError, match="exceeds max_message_bytes"):
        echo.delay("x" * 200_000)
    too_big = echo.delay("x" * 5000)
    with pytest.raises(TaskFailed, match="exceeds max_result_bytes") as caught:
        too_big.get()
    assert caught.value.exc_type == "MessageTooLargeError"
    assert small._server is None


def test_hooks_fire_as_a_worker_fires_them() -> None:
    rec = Recorder()
    app.add_hook(rec)
    try:
        r = et.retried.delay("h", 1)
        f = et.declined.delay(1)
        d = et.rejected.delay("no")
    finally:
        app.remove_hook(rec)
    got = [(name, e.task_id, e.attempt) for name, e in rec.events]
    assert got == [("enqueued", r.id, 1), ("started", r.id, 1), ("retried", r.id, 1),
                   ("started", r.id, 2), ("succeeded", r.id, 2),
                   ("enqueued", f.id, 1), ("started", f.id, 1), ("failed", f.id, 1),
                   ("enqueued", d.id, 1), ("started", d.id, 1), ("dead", d.id, 1)]
    events = dict((name, e) for name, e in rec.events)
    assert events["retried"].countdown_s == 3600 and events["retried"].error is not None
    assert events["failed"].error == "tests.eager_tasks.PaymentDeclinedError: card declined for 1"
    assert events["dead"].error == "rejected by the task: no"
    assert events["succeeded"].runtime_s is not None and events["succeeded"].queue == "default"


def test_current_task_inside_and_get_inside_a_task_as_for_real() -> None:
    r = et.whoami.delay()
    assert r.get() == {"id": r.id, "name": "tests.eager_tasks.whoami", "queue": "default",
                       "retries": 0, "deliveries": 1}
    assert current_task() is None
    assert et.parent.delay(4).get() == 41  # a task on another queue may be waited for
    own = et.waits_on_its_own_queue.delay(1)
    with pytest.raises(GetInsideTaskError):
        own.get()
    assert own.info["exc_type"] == "streamq.base.errors.GetInsideTaskError"


def test_async_tasks_from_sync_and_asyncio_calls() -> None:
    r = et.aadd.delay(1, 2)  # asyncio.run here
    assert r.get() == {"sum": 3, "id": r.id}

    async def main() -> list[Any]:
        a = await et.aadd.adelay(2, 3)
        b = await et.aadd.aapply_async((3, 4), countdown=3600)
        many = await et.aadd.amap([(i, 1) for i in range(5)])
        plain = await et.add.adelay(5, 5)  # a sync task from the a* calls
        inside = et.aadd.delay(10, 10)  # sync delay() inside a running loop
        return [await a.aget(), await b.astatus(), [await h.aget() for h in many],
                await plain.aget(), inside.get()]

    a, b_status, many, plain, inside = asyncio.run(main())
    assert a["sum"] == 5 and b_status == "SUCCESS" and plain == 10 and inside["sum"] == 20
    assert [m["sum"] for m in many] == [1, 2, 3, 4, 5]
    failing = et.afails.delay("af")  # max_retries=1: two attempts
    assert et.CALLS["af"] == 2
    with pytest.raises(et.PaymentDeclinedError, match="async attempt 2"):
        failing.get()


def test_run_inline_is_one_call_as_a_worker_would_run_it() -> None:
    r = run_inline(et.add, (2, 2), {}, task_id="inline-1", queue="q2")
    assert (r.id, r.get(), r.info["queue"]) == ("inline-1", 4, "q2")
    assert app.AsyncResult("inline-1").get() == 4
    quiet = run_inline(et.add, (1, 1), {}, ignore_result=True)
    assert quiet.status == "UNKNOWN"
    with pytest.raises(ResultError):
        quiet.get()


def test_durable_is_refused_from_asyncio_as_for_real() -> None:
    from streamq import ConfigurationError

    with pytest.raises(ConfigurationError, match="durable enqueue is not available"):
        asyncio.run(et.add.aapply_async((1, 1), durable=True))


# -- app.eager() on a normal app, against a real server ------------------------------------
def _keys(client: redis.Redis, namespace: str) -> list[bytes]:
    return list(client.scan_iter(match=f"{namespace}*", count=1000))


def test_the_context_manager_turns_it_on_and_restores_it_nested(vapp: StreamQ) -> None:
    client = redis.Redis.from_url(vapp.settings.url)
    ns = vapp.settings.namespace
    try:
        assert not is_eager(vapp)
        with vapp.eager():
            r = tasks.add.delay(1, 2)
            assert r.get() == 3 and tasks.add.map([(1, 1)])[0].get() == 2
            assert _keys(client, ns) == []  # nothing reached the server
            with vapp.eager(False):  # nested: off inside, back on after
                real = tasks.add.delay(5, 5)
                assert not isinstance(real, EagerResult) and real.status == "PENDING"
            assert tasks.add.delay(2, 2).get() == 4
            assert vapp.AsyncResult(r.id).get() == 3
        assert not is_eager(vapp)
        after = tasks.add.delay(3, 3)
        assert not isinstance(after, EagerResult) and after.status == "PENDING"
        with pytest.raises(RuntimeError, match="boom"), vapp.eager():
            raise RuntimeError("boom")
        assert not is_eager(vapp)  # restored after an exception too
        assert vapp.AsyncResult(r.id).get() == 3  # the eager result is still found
    finally:
        client.close()


def _outcome(handle: AsyncResult) -> tuple[Any, ...]:
    value = handle.get(timeout=30, propagate=False)
    if isinstance(value, TaskFailed):
        result = handle.result
        assert isinstance(result, TaskFailed) and str(result) == str(value)
        assert handle.traceback == (value.traceback or None)
        return (handle.status, value.exc_type, value.exc_message,
                [c.__name__ for c in type(value).__mro__[1:3]], bool(value.traceback))
    if isinstance(value, dict) and "id" in value:  # context(): its own id
        value = {**value, "id": value["id"] == handle.id}
    else:
        assert handle.result == value
    # After retries, the record keeps the last failed attempt's error and traceback.
    return (handle.status, value, handle.info.get("exc_message"), bool(handle.traceback))


def test_eager_outcomes_match_a_real_workers(vapp: StreamQ, start_worker: Any) -> None:
    """The same calls, run by a real worker and eagerly: the same outcomes, the same
    number of runs (counted by the tasks in the server)."""
    start_worker(vapp.settings.url, "-c", "1")

    def run(p: str) -> list[tuple[Any, ...]]:
        """The calls, their keys (counters) prefixed with ``p``."""
        calls: list[tuple[Any, tuple[Any, ...]]] = [
            (tasks.add, (2, 3)), (tasks.fail, ("boom",)), (tasks.flaky, (p + "k1", 2)),
            (tasks.flaky, (p + "k2", 9)), (tasks.explicit_retry, (p + "k3",)),
            (tasks.only_keyerror_retries, (p + "k4", "KeyError")),
            (tasks.only_keyerror_retries, (p + "k5", "ValueError")),
            (tasks.reject, ("no",)), (tasks.unserializable_result, ()),
            (tasks.context, ()), (tasks.echo, ((1, [2, {"a": 3}]),))]
        handles = [t.delay(*args) for t, args in calls]
        return [_outcome(h) for h in handles]

    real = run("real-")
    with vapp.eager():
        eager = run("eager-")
    assert eager == real
    for key in ("k1", "k2", "k3", "k4", "k5"):
        assert tasks.count_of(f"eager-{key}") == tasks.count_of(f"real-{key}") > 0, key
    assert [tasks.count_of(f"real-k{i}") for i in range(1, 6)] == [3, 4, 3, 2, 1]


# -- STREAMQ_EAGER=1 in a fresh project, in a subprocess ----------------------------------
_SCRIPT = textwrap.dedent('''
    import asyncio, json, sys

    from streamq import StreamQ, TaskFailed

    # From here on (importing a dependency may run a command of its own), every
    # connection attempt and every process started is recorded.
    seen = []
    WATCHED = ("socket.connect", "socket.getaddrinfo", "subprocess.Popen", "os.posix_spawn",
               "os.fork", "os.forkpty", "os.exec", "os.system")
    sys.addaudithook(lambda event, args: seen.append(f"{event} {str(args[:2])[:200]}")
                     if event in WATCHED else None)

    app = StreamQ()
    tries = []

    @app.task(name="add")
    def add(x, y):
        return x + y

    @app.task(name="flaky", max_retries=2, autoretry_for=(ConnectionError,))
    def flaky():
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionError("again")
        return len(tries)

    @app.task(name="aecho")
    async def aecho(v):
        return v

    out = {"eager": app.settings.eager}
    try:
        out["delay"] = add.delay(2, 3).get()
        out["apply_async"] = add.apply_async((1, 1), countdown=60).get()
        out["map"] = [h.get() for h in add.map([(1, 2), (3, 4)])]
        out["send_by_name"] = app.send_by_name("add", [10, 1]).get()
        r = flaky.delay()
        out["retried"] = r.get()
        try:
            add.delay("a", 1).get()
        except TaskFailed as exc:
            out["failed"] = exc.exc_type
        out["lookup"] = app.AsyncResult(r.id).get()
        async def main():
            a = await aecho.adelay("x")
            b = await add.aapply_async((2, 2))
            c = await aecho.amap(["y", "z"])
            return [await a.aget(), await b.astatus(), [await h.aget() for h in c]]
        out["asyncio"] = asyncio.run(main())
    except Exception as exc:
        out["error"] = type(exc).__name__
    out["seen"] = sorted(set(seen))
    print(json.dumps(out))
''')


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_script(project: Path, tmp_path: Path, **env_vars: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMQ_")}
    env.update(PYTHONUNBUFFERED="1", XDG_CACHE_HOME=str(tmp_path / "cache"), **env_vars)
    run = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=project, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "using the embedded server" not in run.stderr, run.stderr
    out: dict[str, Any] = json.loads(run.stdout)
    return out


@pytest.mark.parametrize("url", ["none", "closed-port"])
def test_streamq_eager_env_runs_everything_with_no_server(tmp_path: Path, url: str) -> None:
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)  # a fresh project: its own embedded server
    extra = {} if url == "none" else {"STREAMQ_URL": f"redis://127.0.0.1:{_closed_port()}/0"}
    out = _run_script(project, tmp_path, STREAMQ_EAGER="1", **extra)
    assert out == {"eager": True, "delay": 5, "apply_async": 2, "map": [3, 7],
                   "send_by_name": 11, "retried": 3, "failed": "TypeError",
                   "lookup": 3, "asyncio": ["x", "SUCCESS", ["y", "z"]], "seen": []}
    # No embedded server was started (nor its state directory made) for the project.
    assert not (project / ".streamq").exists() and not (tmp_path / "cache").exists()


def test_the_subprocess_check_sees_a_connection_without_eager_mode(tmp_path: Path) -> None:
    """The control: the same script with STREAMQ_EAGER=0 tries to connect and fails."""
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    out = _run_script(project, tmp_path, STREAMQ_EAGER="0",
                      STREAMQ_URL=f"redis://127.0.0.1:{_closed_port()}/0")
    assert out["eager"] is False and out["error"] == "BrokerConnectionError"
    assert any(event.startswith("socket.connect") for event in out["seen"]), out["seen"]


# -- the README's example test ------------------------------------------------------------
def test_the_readmes_example_test_passes(tmp_path: Path) -> None:
    files = _files()
    project = tmp_path / "shop"
    (project / ".git").mkdir(parents=True)
    (project / "shop").mkdir()
    (project / "shop" / "__init__.py").write_text("")
    (project / "tests").mkdir()
    for name in ("shop/tasks.py", "shop/billing.py", "tests/test_billing.py"):
        (project / name).write_text(files[name])
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMQ_")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"),
               STREAMQ_URL=f"redis://127.0.0.1:{_closed_port()}/0")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_billing.py"], cwd=project, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "4 passed" in run.stdout, run.stdout + run.stderr
    assert not (project / ".streamq").exists()


def test_a_worker_refuses_an_app_in_eager_mode(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMQ_")}
    env.update(STREAMQ_EAGER="1", XDG_CACHE_HOME=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, "-m", "streamq", "worker", "tests.tasks", "--url",
                          f"redis://127.0.0.1:{_closed_port()}/0"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        "streamq: error: the app is in eager mode (eager=True or STREAMQ_EAGER=1, meant for "
        "unit tests): a task that enqueues another would run it in place; unset it for "
        "workers"], run.stderr
