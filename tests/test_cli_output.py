"""What the commands print through a pipe (a file, ``grep``): machine-readable text
whole, one line each, never soft-wrapped at 80 columns as off a terminal by default.

Everything here is real: a worker subprocess runs a task that fails with frame
lines and an error message far longer than 80 columns, and the commands run as
``python -m streamq`` with stdout a pipe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from streamq import StreamQ
from tests.conftest import ROOT, wait_until

TASK_SOURCE = textwrap.dedent("""\
    from streamq import StreamQ

    app = StreamQ()


    @app.task(name="cli_output.fails")
    def FUNCTION():
        raise RuntimeError("MESSAGE")
""")
RAISE_LINE = 8  # the line of ``raise`` in TASK_SOURCE
FUNCTION = "a_task_whose_name_alone_makes_its_frame_line_longer_than_a_terminal_is_wide"
MESSAGE = "the message of this error is long on purpose, " * 4
QUEUE = "a-queue-whose-name-is-longer-than-any-column-of-a-status-table-would-ever-give-it-" \
        "on-a-terminal-of-ordinary-width"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m streamq ARGS`` with stdout and stderr pipes (not a terminal), and
    no COLUMNS from the environment: the width is what rich picks off a terminal."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-m", "streamq", *args], check=False, cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)


def _long_task_module(tmp_path: Path) -> Path:
    """The task module, in a directory whose path alone is longer than 80 columns."""
    where = tmp_path / ("a-directory-with-a-long-name-" * 4)
    where.mkdir()
    module = where / "cli_output_tasks.py"
    module.write_text(TASK_SOURCE.replace("FUNCTION", FUNCTION).replace("MESSAGE", MESSAGE))
    return module


def test_piped_output_keeps_tracebacks_reasons_and_names_on_one_line(
        valkey: Any, namespace: str, start_worker: Any, tmp_path: Path) -> None:
    module = _long_task_module(tmp_path)
    frame = f'  File "{module}", line {RAISE_LINE}, in {FUNCTION}'
    error = f"RuntimeError: {MESSAGE}"
    assert len(frame) > 120 and len(error) > 120
    env = {"PYTHONPATH": f"{module.parent}:{ROOT}"}
    w = start_worker(valkey.url, "-c", "1", "-Q", f"default,{QUEUE}",
                     module="cli_output_tasks", env=env)
    producer = StreamQ(valkey.url, namespace=namespace)
    try:
        failed = producer.send_by_name("cli_output.fails")
        wait_until(lambda: failed.status == "FAILURE", timeout=20, message="the failure")
        producer.send_by_name("cli_output.fails", queue=QUEUE, countdown=3600)
    finally:
        producer.close()
    common = ("--url", valkey.url, "--namespace", namespace)

    shown = _cli("result", failed.id, *common)
    assert shown.returncode == 0, shown.stderr
    lines = [line.rstrip() for line in shown.stdout.splitlines()]
    assert frame in lines, shown.stdout  # the whole frame line, as Python wrote it
    assert error.rstrip() in lines, shown.stdout
    # The record's table keeps each value on its row, too.
    assert any(f"RuntimeError: {MESSAGE}".rstrip() in line for line in lines
               if line.lstrip("│ ").startswith("error")), shown.stdout
    stored = json.loads(_cli("result", failed.id, *common, "--json").stdout)["traceback"]
    stored_lines = [line.rstrip() for line in stored.rstrip().splitlines()]
    assert "\n".join(lines).rstrip().endswith("\n".join(stored_lines))  # exactly as stored

    dead = _cli("dead", "list", "default", *common)
    assert dead.returncode == 0, dead.stderr
    [letter] = json.loads(_cli("dead", "list", "default", *common, "--json").stdout)
    shown_reason = letter["reason"].splitlines()[0]  # whole, however long
    assert len(shown_reason) > 200
    [row] = [line for line in dead.stdout.splitlines() if letter["entry_id"] in line]
    assert letter["task_id"] in row and shown_reason.rstrip() in row, dead.stdout

    status = _cli("status", *common)
    assert status.returncode == 0, status.stderr
    [queue_row] = [line for line in status.stdout.splitlines()
                   if line.split()[:1] == [QUEUE]]
    assert queue_row.split()[:4] == [QUEUE, "0", "0", "1"], status.stdout  # backlog, ...
    [worker_row] = [line for line in status.stdout.splitlines()
                    if f":{w.pid}:" in line and "alive" in line and "," in line]
    assert f"default,{QUEUE}" in worker_row, status.stdout
    assert w.stop() == 0
