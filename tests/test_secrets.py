"""Nothing secret is printed: one marker password, one marker signing key, every output.

A Valkey server of this module's own requires the marker password; the URL carries
it percent-encoded, as it must (``/``, ``@``, ``#``, ``%`` and ``:`` are in it), and
every app gets the marker signing key from ``STREAMQ_SIGNING_KEY``. Each test runs
real ``streamq`` subprocesses (a worker with JSON or plain logs and a metrics port,
``status``, ``result``, ``dead``, ``enqueue``, ``bench``, failing commands) and
asserts that neither marker, nor a URL-quoted form, nor any five characters in a row
of either shows up in what they printed, logged, stored or served.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, quote_plus

import pytest
import redis

from tests.conftest import wait_until
from tests.servers import ServerProcess, _free_port, require_kind

REPO_ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "pW7/q@Zk#9%r:Tx"
"""The marker password: a URL parser takes ``/`` for a path, ``@`` for the end of
the user part, ``#`` for a fragment, ``%`` for an escape and ``:`` for a port."""
SIGNING_KEY = "sK4@hV/8#nQ%2:mY"
WRONG_PASSWORD = "wR0/ng@Pa#ss%:xZ"
"""A password that fails: its text must not be printed either."""
T = TypeVar("T")


def forbidden(secret: str) -> set[str]:
    """The secret, its URL-quoted forms, and every run of five of their characters."""
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}
    return {form[i:i + 5] for form in forms for i in range(len(form) - 4)} | forms


FORBIDDEN = sorted(forbidden(PASSWORD) | forbidden(SIGNING_KEY) | forbidden(WRONG_PASSWORD))


def assert_clean(what: str, text: str) -> None:
    assert text.strip(), f"{what}: printed nothing, so nothing was checked"
    leaked = [piece for piece in FORBIDDEN if piece in text]
    assert not leaked, f"{what} shows a secret ({leaked[:3]}):\n{text[:3000]}"


def url_for(port: int, password: str = PASSWORD, user: str = "") -> str:
    return f"redis://{user}:{quote(password, safe='')}@127.0.0.1:{port}/0"


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A Valkey server that requires the marker password (and an ACL user with it)."""
    require_kind("valkey")
    srv = ServerProcess("valkey", tmp_path_factory.mktemp("locked")).start()
    with redis.Redis(port=srv.port) as client:
        client.acl_setuser("sq", enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"],
                           channels=["*"], commands=["+@all"])
        client.config_set("requirepass", PASSWORD)
    try:
        yield srv
    finally:
        with redis.Redis(port=srv.port, password=PASSWORD) as client:
            client.config_set("requirepass", "")  # so that stop() may shut it down
        srv.stop()


@pytest.fixture
def project(tmp_path: Path, namespace: str) -> Path:
    """A directory with the app module the commands and the worker import."""
    (tmp_path / ".git").mkdir()
    (tmp_path / "secretapp.py").write_text(textwrap.dedent('''
        from streamq import StreamQ

        app = StreamQ()  # URL, namespace and signing key from STREAMQ_*

        @app.task
        def add(x, y):
            return x + y

        @app.task(max_retries=0)
        def fails_with_the_app_in_scope(x):
            settings, url = app.settings, app.settings.url
            raise RuntimeError(f"gave up on {app!r} with {settings!r} ({x})")

        @app.task(max_retries=0)
        def fails_with_the_url_in_its_message():
            from urllib.parse import unquote

            url = app.settings.url  # as written, as a parser reads it, and the key too
            raise ConnectionError(f"cannot reach {url} ({unquote(url)}) signing with "
                                  f"{app.settings.signing_key}")
    '''))
    return tmp_path


def env_for(project: Path, namespace: str, url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMQ_")}
    env.update(PYTHONPATH=f"{project}{os.pathsep}{REPO_ROOT}", PYTHONUNBUFFERED="1",
               STREAMQ_NAMESPACE=namespace, STREAMQ_SIGNING_KEY=SIGNING_KEY, COLUMNS="200")
    if url is not None:
        env["STREAMQ_URL"] = url
    return env


def streamq(project: Path, env: dict[str, str], *args: str,
            code: int | None = 0) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "streamq", *args], cwd=project, env=env,
                         capture_output=True, text=True, timeout=120)
    if code is not None:
        assert out.returncode == code, f"streamq {args}: {out.returncode}\n{out.stderr}"
    return out


def python(project: Path, env: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=project, env=env,
                          capture_output=True, text=True, timeout=60)


def concurrently(calls: dict[str, Callable[[], T]]) -> dict[str, T]:
    """Each call's result, by key in the same order, the calls run side by side
    (threads, each waiting for its subprocess); the first error raised is raised."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = {what: pool.submit(call) for what, call in calls.items()}
        return {what: future.result() for what, future in futures.items()}


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_a_worker_and_the_commands_that_read_it(locked: ServerProcess, project: Path,
                                                namespace: str, log_format: str) -> None:
    url = url_for(locked.port, user="sq" if log_format == "json" else "")
    env = env_for(project, namespace, url)
    metrics_port = _free_port()
    log = project / "worker.log"
    # The URL on the command line (plain) or in the environment (json, an ACL user).
    given = ["--url", url] if log_format == "plain" else []
    worker_env = {k: v for k, v in env.items() if k != "STREAMQ_URL"} if given else env
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "streamq", "worker", "secretapp", "--log-level", "debug",
             "--log-format", log_format, "--metrics-port", str(metrics_port), "-c", "1",
             *given], cwd=project, env=worker_env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        wait_until(lambda: "worker starting" in log.read_text(), 20,
                   message="the worker's start line")
        sent = python(project, env, '''
            from secretapp import add, fails_with_the_app_in_scope
            ok, bad = add.delay(2, 3), fails_with_the_app_in_scope.delay(7)
            print(ok.id, bad.id, ok.get(timeout=20))
            try:
                bad.get(timeout=20)
            except Exception as exc:
                print(type(exc).__name__, exc, repr(exc))
            print(repr(ok), str(ok), repr(add))
        ''')
        assert sent.returncode == 0, sent.stderr
        ok_id, bad_id, five = sent.stdout.split("\n")[0].split()
        assert five == "5"
        assert "TaskFailed" in sent.stdout or "RuntimeError" in sent.stdout, sent.stdout
        assert_clean("a producer's results and errors", sent.stdout + sent.stderr)

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                         timeout=10).read().decode()
        assert 'streamq_tasks_succeeded_total{queue="default",task="secretapp.add"} 1.0' \
            in metrics, metrics
        assert_clean("the metrics endpoint", metrics)

        # Side by side (each run is mostly an interpreter's start; none writes), then
        # the one that enqueues.
        reads: dict[str, tuple[tuple[str, ...], int | None]] = {
            "status": (("status",), 0),
            "status --json": (("status", "--json"), 0),
            "result": (("result", ok_id), 0),
            "result --json": (("result", bad_id, "--json"), 0),
            "result of a failure": (("result", bad_id), None),
            "dead list": (("dead", "list", "default"), 0),
            "dead list --json": (("dead", "list", "default", "--json"), 0),
        }
        outputs = concurrently({what: lambda a=a, c=c: streamq(project, env, *a, code=c)
                                for what, (a, c) in reads.items()})
        outputs["enqueue"] = streamq(project, env, "enqueue", "secretapp.add", "[1, 2]",
                                     "--app", "secretapp", "--json")
        assert json.loads(outputs["result --json"].stdout)["status"] in ("FAILURE", "DEAD")
        assert "gave up on" in outputs["result of a failure"].stdout
        for what, done in outputs.items():
            assert_clean(what, done.stdout + done.stderr)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
    assert worker.returncode == 0, log.read_text()
    text = log.read_text()
    assert "gave up on" in text  # the failure's traceback is in the log
    assert_clean(f"the worker's {log_format} log", text)


def test_a_task_that_puts_the_url_in_its_error(locked: ServerProcess, project: Path,
                                               namespace: str) -> None:
    env = env_for(project, namespace, url_for(locked.port))
    log = project / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "streamq", "worker", "secretapp"],
                                  cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        wait_until(lambda: "worker starting" in log.read_text(), 20, message="worker start")
        sent = python(project, env, '''
            from secretapp import fails_with_the_url_in_its_message as task
            result = task.delay()
            print(result.id)
            try:
                result.get(timeout=20)
            except Exception as exc:
                print(type(exc).__name__, exc)
        ''')
        assert sent.returncode == 0, sent.stderr
        task_id = sent.stdout.split()[0]
        assert "cannot reach redis://" in sent.stdout
        stored = streamq(project, env, "result", task_id, code=None)
        assert "ConnectionError" in stored.stdout
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
    assert "cannot reach redis://" in log.read_text()
    for what, text in (("the producer", sent.stdout), ("streamq result", stored.stdout),
                       ("the worker's log", log.read_text())):
        assert_clean(what, text)


def _refusing_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again: nothing listens there


@pytest.mark.parametrize("case", [
    "wrong-password", "wrong-user", "server-down", "bad-url", "bad-port", "password-param",
    "misspelt-param",
])
def test_errors_do_not_show_the_password(locked: ServerProcess, project: Path,
                                         namespace: str, case: str) -> None:
    url = {
        "wrong-password": url_for(locked.port, WRONG_PASSWORD),
        "wrong-user": url_for(locked.port, PASSWORD, user="nobody"),
        "server-down": url_for(_refusing_port()),
        # The password as a person might paste it, unquoted: the parser trips on it.
        "bad-url": f"redis://:{PASSWORD}@127.0.0.1:{locked.port}/0",
        "bad-port": f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:99999/0",
        # redis-py's own query form, which streamq refuses; and a typing slip in it.
        "password-param": f"redis://127.0.0.1:{locked.port}/0?password={quote(PASSWORD)}",
        "misspelt-param": f"redis://127.0.0.1:{locked.port}/0?pasword={quote(PASSWORD)}",
    }[case]
    env = env_for(project, namespace, url)
    commands: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
        "status": (env, ("status",)),
        "result": (env, ("result", "0" * 32)),
        "dead list": (env, ("dead", "list", "default")),
        "enqueue": (env, ("enqueue", "secretapp.add", "[1, 2]", "--app", "secretapp",
                          "--force")),
        "worker": (env, ("worker", "secretapp")),
        "worker --url": ({**env, "STREAMQ_URL": ""}, ("worker", "secretapp", "--url", url)),
        "bench": (env, ("bench", "-n", "10", "--url", url)),
    }
    if case == "wrong-password":  # the same paths, in their other formats
        commands["status --json"] = (env, ("status", "--json"))
        commands["worker --log-format json"] = (env, ("worker", "secretapp", "--log-format",
                                                      "json"))
    api_code = '''
        import traceback
        try:
            from secretapp import add  # a bad URL fails here already

            add.delay(1, 2)
        except Exception as exc:
            print(type(exc).__name__, str(exc), repr(exc), exc.args)
            traceback.print_exc()  # with its causes, as an uncaught one would be
        else:
            print("no error")
    '''
    # Side by side: each run is mostly waiting (an interpreter's start, the client's
    # retries of a failed connection), and none changes what another sees.
    runs = concurrently({
        **{what: lambda e=e, a=a: streamq(project, e, *a, code=None)
           for what, (e, a) in commands.items()},
        "the API": lambda: python(project, env, api_code)})
    api = runs.pop("the API")
    for what, done in runs.items():
        assert done.returncode != 0, f"{what} with a {case} URL succeeded:\n{done.stdout}"
        assert "Traceback" not in done.stderr, f"{what}:\n{done.stderr}"
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("streamq: error: ") or '"level": "ERROR"' in last, \
            f"{what}:\n{done.stderr}"
        assert_clean(f"{what} with a {case} URL", done.stdout + done.stderr)
    assert api.returncode == 0, api.stderr
    assert "no error" not in api.stdout and api.stdout.strip(), api.stdout
    assert_clean(f"the API's error with a {case} URL", api.stdout + api.stderr)


def test_repr_and_str_of_public_objects(locked: ServerProcess, project: Path,
                                        namespace: str) -> None:
    env = env_for(project, namespace, url_for(locked.port))
    shown = python(project, env, '''
        from streamq import StreamQ
        from secretapp import app, add
        from streamq.base.settings import Settings
        apps = [app, StreamQ(signing_key=("''' + SIGNING_KEY + '''", "x" * 16)),
                StreamQ(app.settings.url.replace("redis://", "redis://sq"))]
        result = add.delay(1, 2)
        objects = [*apps, *(a.settings for a in apps), add, result, Settings.from_env()]
        for obj in objects:
            print(repr(obj)); print(str(obj))
    ''')
    assert shown.returncode == 0, shown.stderr
    assert "Settings(" in shown.stdout and "StreamQ" in shown.stdout
    assert_clean("repr() and str() of StreamQ, Settings, Task and AsyncResult",
                 shown.stdout + shown.stderr)


def test_bench_output(locked: ServerProcess, project: Path, namespace: str) -> None:
    env = env_for(project, namespace, url_for(locked.port))
    # One run of the parts that start workers: its JSON report, and its progress lines.
    done = streamq(project, env, "bench", "-n", "200", "-c", "1", "--only", "enqueue,drain",
                   "--json")
    assert json.loads(done.stdout)["params"]["url"] == f"redis://:***@127.0.0.1:{locked.port}/0"
    assert "bench: server valkey" in done.stderr
    assert_clean("streamq bench --json", done.stdout + done.stderr)


def test_the_markers_are_caught(locked: ServerProcess) -> None:
    # The check must be able to fail: a URL or a key, whole, quoted or in part.
    for text in (url_for(locked.port), PASSWORD, SIGNING_KEY, quote(SIGNING_KEY),
                 "…" + PASSWORD[3:9] + "…", quote_plus(PASSWORD)):
        with pytest.raises(AssertionError):
            assert_clean("a leak", text)
    assert_clean("a masked URL", f"redis://:***@127.0.0.1:{locked.port}/0")
    with redis.Redis.from_url(url_for(locked.port)) as client:  # the URL form works
        assert client.ping() is True
    with redis.Redis.from_url(url_for(locked.port, user="sq")) as client:
        assert client.acl_whoami() == "sq"
