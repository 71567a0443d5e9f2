"""Errors that diagnose, seen from the command line (issue 11 point 3): ``enqueue`` of a
name no live worker has, bad arguments with ``--app``, a task module that does not
import (at start and under ``--reload``), the watchdog's stop, and the second Ctrl-C.

Real servers, real ``python -m streamq`` subprocesses, real signals and files.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from streamq import StreamQ
from streamq.base import keys
from streamq.worker.reloading import QUIET_S, Watcher
from tests import diagnose_tasks as dt
from tests.conftest import ROOT, wait_until
from tests.servers import ServerProcess

MODULE = "tests.diagnose_tasks"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamq", *args], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **(env or {})))


# -- 5. enqueue ------------------------------------------------------------------------------
def test_enqueue_checks_the_name_against_the_live_workers(dapp: StreamQ,
                                                          start_worker: Any) -> None:
    common = ("--url", dapp.settings.url, "--namespace", dapp.settings.namespace)
    client = dapp.server.connection.client
    parked = keys.stream(dapp.settings.namespace, "parked")
    alone = _cli("enqueue", "tests.diagnose_tasks.add", "[1, 2]", *common)
    assert alone.returncode == 0, alone.stderr
    assert alone.stderr.startswith("streamq: warning: no live worker on ") and \
        "waits in queue 'default' until one that has it starts" in alone.stderr
    assert alone.stdout.strip().endswith("@default")

    w = start_worker(dapp.settings.url, "-c", "1", "--log-level", "WARNING", module=MODULE)
    typo = _cli("enqueue", "tests.diagnose_tasks.ad", "[1, 2]", "--queue", "parked", *common)
    assert typo.returncode == 2, typo.stderr
    assert typo.stderr.count("\n") == 1 and typo.stdout == ""
    assert "has registered task 'tests.diagnose_tasks.ad', so nothing was sent" in typo.stderr
    assert "did you mean 'tests.diagnose_tasks.add'? Pass --force" in typo.stderr
    assert client.xlen(parked) == 0
    other = _cli("enqueue", "nothing.like.it", *common)
    assert other.returncode == 2 and "they have: tests.diagnose_tasks.add, " in other.stderr

    forced = _cli("enqueue", "tests.diagnose_tasks.ad", "[1, 2]", "--queue", "parked",
                  "--force", *common)
    assert forced.returncode == 0 and "enqueued anyway (--force)" in forced.stderr
    assert client.xlen(parked) == 1
    elsewhere = _cli("enqueue", "tests.diagnose_tasks.add", "[1, 2]", "--queue", "parked",
                     *common)
    assert elsewhere.returncode == 0
    assert "no live worker that has task 'tests.diagnose_tasks.add' reads queue 'parked' " \
        "(they read default, side)" in elsewhere.stderr
    fine = _cli("enqueue", "tests.diagnose_tasks.add", "[20, 22]", *common)
    assert fine.returncode == 0 and fine.stderr == ""
    assert dapp.AsyncResult(fine.stdout.strip()).get(timeout=15) == 42
    assert w.stop() == 0


def test_enqueue_with_app_checks_the_arguments(valkey: ServerProcess, namespace: str) -> None:
    common = ("--app", MODULE, "--url", valkey.url, "--namespace", namespace)
    for args, says in (
            (["[1]"], "tests.diagnose_tasks.add() missing a required argument: 'y'"),
            (["[1, 2, 3]"], "tests.diagnose_tasks.add() too many positional arguments"),
            (["[1, 2]", "--kwargs", '{"urll": 3}'],
             "tests.diagnose_tasks.add() got an unexpected keyword argument 'urll'")):
        out = _cli("enqueue", "tests.diagnose_tasks.add", *args, *common)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr == f"streamq: error: {says}\n", out.stderr


# -- 7. a module that does not import ------------------------------------------------------
BROKEN = {
    "syntax": ("from streamq import StreamQ\napp = StreamQ()\n\n@app.task\ndef f(:\n    pass\n",
               5, "SyntaxError: invalid syntax"),
    "imports": ("import os\nimport no_such_module_for_streamq_tests\n", 2,
                "ModuleNotFoundError: No module named 'no_such_module_for_streamq_tests'"),
    "top_level": ("from streamq import StreamQ\napp = StreamQ()\nx = undefined_name\n", 3,
                  "NameError: name 'undefined_name' is not defined"),
    "generator": ("from streamq import StreamQ\napp = StreamQ()\n\n@app.task\n"
                  "def fetch():\n    yield 1\n", 4,
                  "ConfigurationError: task broken_generator.fetch: a generator cannot be a "
                  "task"),
}


def test_a_module_that_does_not_import_is_one_line_and_exit_2(
        valkey: ServerProcess, tmp_path: Path) -> None:
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}"}
    for kind, (source, line, says) in BROKEN.items():
        path = tmp_path / f"broken_{kind}.py"
        path.write_text(source)
        out = _cli("worker", f"broken_{kind}", "--url", valkey.url, env=env)
        assert out.returncode == 2, (kind, out.stderr)
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.startswith(
            f"streamq: error: cannot import module 'broken_{kind}': {path}:{line}: {says}"), \
            (kind, out.stderr)
    missing = _cli("worker", "no_such_task_module", "--url", valkey.url, env=env)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "No module named 'no_such_task_module'" in missing.stderr


# -- 6. --reload -------------------------------------------------------------------------------
def test_reload_waits_out_a_module_that_does_not_import(
        valkey: ServerProcess, namespace: str, start_worker: Any, tmp_path: Path) -> None:
    mod = tmp_path / "reload_broken_tasks.py"
    source = textwrap.dedent("""\
        from streamq import StreamQ
        app = StreamQ()

        @app.task(name="reload_broken.version")
        def version():
            return VERSION
    """)
    mod.write_text(source.replace("VERSION", "1"))
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}"}
    w = start_worker(valkey.url, "-c", "1", "--reload", "--log-format", "json",
                     module="reload_broken_tasks", env=env)
    producer = StreamQ(valkey.url, namespace=namespace)

    def docs() -> list[dict[str, Any]]:
        return [json.loads(line) for line in w.output().splitlines() if line.startswith("{")]

    try:
        assert producer.send_by_name("reload_broken.version").get(timeout=20) == 1
        mod.write_text(source.replace("VERSION", "1") + "def broken(:\n")
        failed = wait_until(lambda: [d for d in docs() if "could not be loaded" in
                                     d["message"]], timeout=30, message="the import error")
        assert failed[0]["level"] == "ERROR" and "\n" not in failed[0]["message"]
        assert f"{mod}:7: SyntaxError: invalid syntax" in failed[0]["message"]
        assert f"Waiting for a change to a .py file under {tmp_path}" in failed[0]["message"]
        assert w.proc.poll() is None  # it survives, waiting
        mod.write_text(source.replace("VERSION", "2"))
        wait_until(lambda: sum("worker starting" in d["message"] for d in docs()) >= 2,
                   timeout=30, message="the restart after the fix")
        assert producer.send_by_name("reload_broken.version").get(timeout=20) == 2
    finally:
        producer.close()
    assert w.stop() == 0
    assert not [d for d in docs() if d["logger"].startswith("watchdog")], w.output()
    assert all(line.startswith("{") for line in w.output().splitlines() if line), w.output()


def test_stopping_the_watcher_logs_no_spurious_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Stopping a watchdog observer while events are pending makes it log "queue_events()
    # called when the thread is inactive" at ERROR, a few times in a hundred stops.
    halt = threading.Event()

    def churn() -> None:
        i = 0
        while not halt.is_set():
            path = tmp_path / f"churn{i % 5}.py"
            path.write_text("x = 1\n")
            if i % 2:
                path.replace(tmp_path / f"moved{i % 5}.py")
            i += 1

    thread = threading.Thread(target=churn, daemon=True)
    caplog.set_level(logging.INFO)
    thread.start()
    try:
        for _ in range(60):
            watcher = Watcher([str(tmp_path)]).start()
            time.sleep(0.05)  # events arrive all along, and are pending at the stop
            watcher.stop()
    finally:
        halt.set()
        thread.join(5)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("watchdog")] == []
    assert logging.getLogger("watchdog").level == logging.NOTSET  # restored
    # A change counts once the events of a save have been quiet for QUIET_S.
    quiet = Watcher([str(tmp_path)]).start()
    try:
        (tmp_path / "saved.py").write_text("y = 2\n")
        started = time.monotonic()
        wait_until(quiet.changed, timeout=5, message="a change, once quiet")
        assert time.monotonic() - started >= QUIET_S
    finally:
        quiet.stop()


# -- 9. the second Ctrl-C ----------------------------------------------------------------------
def test_the_second_ctrl_c_says_what_it_killed_and_handed_back(
        dapp: StreamQ, start_worker: Any) -> None:
    w = start_worker(dapp.settings.url, "-c", "2", module=MODULE)
    slow = [dt.slow_first_time.delay(f"slow-{i}", 60) for i in range(2)]
    wait_until(lambda: all(r.status == "STARTED" for r in slow), timeout=15,
               message="both slow tasks running")
    w.signal(signal.SIGINT)
    wait_until(lambda: "Received SIGINT" in w.output(), message="the first Ctrl-C")
    w.signal(signal.SIGINT)
    assert w.proc.wait(20) == 0
    out = w.output()
    assert "Second Ctrl-C: killed 2 process(es) at once and handed their 2 unfinished " \
        "message(s) back to the queue, uncharged: they will run again." in out, out
    again = start_worker(dapp.settings.url, "-c", "2", module=MODULE)
    assert [r.get(timeout=20) for r in slow] == [2, 2]  # they did run again
    assert all(r.info["deliveries"] == 1 for r in slow)  # uncharged
    assert again.stop() == 0
