"""Output people read (issue 11, point 4): JSON log lines with their task fields,
``streamq result`` laid out for a reader, ``dead list`` and ``dead purge`` on an
80-column terminal. Real servers, real worker subprocesses, the real CLI."""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import subprocess
import sys
from typing import Any

from streamq import StreamQ
from tests import tasks
from tests.conftest import ROOT, wait_until

ISO_WITH_ZONE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")


def _cli(*args: str, columns: int | None = None, stdin: str | None = None
         ) -> subprocess.CompletedProcess[str]:
    """``python -m streamq ARGS``, stdout a pipe; ``columns`` sets COLUMNS (rich then
    renders at that width, as on a terminal of that width)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("COLUMNS", "LINES") and not k.startswith("STREAMQ_")}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run([sys.executable, "-m", "streamq", *args], check=False, cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60,
                          input=stdin if stdin is not None else "")


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_json_logs_carry_iso_times_and_task_fields(vapp: StreamQ, start_worker: Any) -> None:
    w = start_worker(vapp.settings.url, "-c", "1", "--log-format", "json")
    ok = tasks.add.delay(2, 2)
    flaky = tasks.flaky.delay("json-logs", 1)  # fails once, then succeeds
    failed = tasks.fail.delay("kaput")
    assert ok.get(timeout=20) == 4 and flaky.get(timeout=20) == 2
    wait_until(lambda: failed.status == "FAILURE", message="the failure")
    wait_until(lambda: f"{failed.id}" in w.output(), message="the failure's log line")
    assert w.stop() == 0
    docs = _json_lines(w.output())
    assert docs
    for d in docs:  # every line, the worker's own ones too
        assert ISO_WITH_ZONE.match(d["ts"]), d
        when = datetime.datetime.fromisoformat(d["ts"])
        age = datetime.datetime.now(datetime.UTC) - when
        assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=2), d

    def of(task_id: str) -> list[dict[str, Any]]:
        return [d for d in docs if d.get("task_id") == task_id]

    started, succeeded = of(ok.id)
    assert started["event"] == "started" and succeeded["event"] == "succeeded"
    for d in (started, succeeded):
        assert (d["task"], d["queue"], d["attempt"], d["deliveries"]) == \
            ("tests.tasks.add", "default", 1, 1)
        assert ok.id in d["message"]  # the message still says it all, for plain readers
    assert "runtime_s" not in started
    assert isinstance(succeeded["runtime_s"], float) and 0 <= succeeded["runtime_s"] < 5
    assert abs(succeeded["runtime_s"] - ok.info["runtime_ms"] / 1000) < 0.002

    events = [(d["event"], d["attempt"]) for d in of(flaky.id)]
    assert events == [("started", 1), ("retried", 1), ("started", 2), ("succeeded", 2)]
    [retried] = [d for d in of(flaky.id) if d["event"] == "retried"]
    assert retried["error"] == "ValueError: failure 1 of 1"
    assert isinstance(retried["countdown_s"], float) and retried["countdown_s"] >= 0

    [failure] = [d for d in of(failed.id) if d["event"] == "failed"]
    assert (failure["level"], failure["task"], failure["queue"], failure["attempt"],
            failure["error"]) == ("WARNING", "tests.tasks.fail", "default", 1,
                                  "ValueError: kaput")
    # A failure says how long the task ran before it raised, a retry too.
    assert isinstance(failure["runtime_s"], float) and 0 <= failure["runtime_s"] < 5
    assert isinstance(retried["runtime_s"], float) and 0 <= retried["runtime_s"] < 5


def test_plain_logs_keep_their_format(vapp: StreamQ, start_worker: Any) -> None:
    w = start_worker(vapp.settings.url, "-c", "1")
    ok = tasks.add.delay(3, 4)
    assert ok.get(timeout=20) == 7
    wait_until(lambda: f"{ok.id}] succeeded" in w.output(), message="the log line")
    assert w.stop() == 0
    [line] = [x for x in w.output().splitlines() if f"{ok.id}] succeeded" in x]
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO \S+\[\d+\] streamq\.task: "
                    r"Task tests\.tasks\.add\[", line), line
    assert not _json_lines(w.output())


# -- streamq result --------------------------------------------------------------------

DATE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} [+-]\d\d:\d\d \((now|.+ ago|in .+)\)"


def _rows(stdout: str) -> list[tuple[str, str]]:
    """(label, value) of each table row, as printed through a pipe (one row a line)."""
    rows = []
    for line in stdout.splitlines():
        parts = [p.strip() for p in line.strip().strip("│|").split("│")]
        if len(parts) == 2 and parts[0]:
            rows.append((parts[0], parts[1]))
    return rows


def test_result_reads_in_order_with_dates_arguments_and_the_earlier_error(
        vapp: StreamQ, start_worker: Any) -> None:
    url, ns = vapp.settings.url, vapp.settings.namespace
    common = ("--url", url, "--namespace", ns)
    w = start_worker(url, "-c", "1")
    flaky = tasks.flaky.delay("result-layout", 1)  # attempt 1 fails, attempt 2 succeeds
    assert flaky.get(timeout=20) == 2
    failed = tasks.fail.delay("kaput")
    wait_until(lambda: failed.status == "FAILURE", message="the failure")
    later = tasks.echo.apply_async(kwargs={"value": {"to": "someone"}}, countdown=3600)
    assert w.stop() == 0

    ok = _cli("result", flaky.id, *common)
    assert ok.returncode == 0, ok.stderr
    rows = _rows(ok.stdout)
    labels = [label for label, _ in rows]
    assert labels == ["id", "task", "queue", "status", "result", "earlier error (attempt 1)",
                      "args", "attempts", "deliveries", "worker", "enqueued", "started",
                      "finished", "runtime"], ok.stdout
    got = dict(rows)
    assert (got["id"], got["task"], got["queue"], got["status"], got["result"]) == \
        (flaky.id, "tests.tasks.flaky", "default", "SUCCESS", "2")
    assert got["earlier error (attempt 1)"] == "ValueError: failure 1 of 1"
    assert (got["args"], got["attempts"], got["deliveries"]) == \
        ("(not kept: a task's message is deleted once it succeeded)", "2", "1")
    assert got["worker"].startswith(f"{socket.gethostname()}:")
    for label in ("enqueued", "started", "finished"):
        assert re.fullmatch(DATE, got[label]), (label, got[label])
    assert re.fullmatch(r"< 1 ms|\d+(\.\d+)? ms|\d+(\.\d+)? s", got["runtime"]), got["runtime"]
    assert "_ms" not in ok.stdout  # no raw epoch milliseconds for a reader
    assert "earlier traceback (attempt 1):" in ok.stdout
    assert "ValueError: failure 1 of 1" in ok.stdout.split("earlier traceback")[1]

    bad = dict(_rows(_cli("result", failed.id, *common).stdout))
    assert (bad["status"], bad["error"], bad["args"], bad["kwargs"], bad["attempts"]) == \
        ("FAILURE", "ValueError: kaput", "['kaput']", "{}", "1")
    assert "earlier error (attempt 1)" not in bad and re.fullmatch(DATE, bad["finished"])

    scheduled = _cli("result", later.id, *common)
    got = dict(_rows(scheduled.stdout))
    assert (got["status"], got["args"], got["kwargs"], got["attempts"]) == \
        ("SCHEDULED", "[]", "{'value': {'to': 'someone'}}", "0"), scheduled.stdout
    assert re.fullmatch(DATE, got["due"]) and "(in 59 min" in got["due"], got["due"]

    waiting = tasks.add.delay(5, 6)  # no worker now: its message waits in the stream
    got = dict(_rows(_cli("result", waiting.id, *common).stdout))
    assert (got["status"], got["args"], got["kwargs"], got["attempts"]) == \
        ("PENDING", "[5, 6]", "{}", "0")

    # --json: every stored field under its own name, raw numbers, and the arguments.
    doc = json.loads(_cli("result", failed.id, *common, "--json").stdout)
    stored = vapp.AsyncResult(failed.id).info
    assert {k: doc[k] for k in stored} == stored
    assert (doc["id"], doc["args"], doc["kwargs"]) == (failed.id, ["kaput"], {})
    doc = json.loads(_cli("result", flaky.id, *common, "--json").stdout)
    assert doc["exc_type"] == "ValueError" and doc["result"] == 2 and "args" not in doc
    assert isinstance(doc["enqueued_ms"], int) and isinstance(doc["runtime_ms"], int)


# -- streamq dead list / purge ---------------------------------------------------------

LONG = "a reason that goes on and on, " * 8


def _dead_letters(vapp: StreamQ, start_worker: Any, n: int = 2) -> list[Any]:
    w = start_worker(vapp.settings.url, "-c", "1", "-Q", "default,other")
    failed = [tasks.fail.delay(f"{i} {LONG}") for i in range(n)]
    failed.append(tasks.fail.apply_async((LONG,), queue="other"))
    wait_until(lambda: all(r.status == "FAILURE" for r in failed), timeout=20,
               message="the failures")
    assert w.stop() == 0
    return failed


def _words(text: str) -> str:
    return " ".join(text.replace("│", " ").replace("┃", " ").split())


def test_dead_list_is_readable_at_80_columns_and_cuts_nothing(
        vapp: StreamQ, start_worker: Any) -> None:
    _dead_letters(vapp, start_worker)
    common = ("--url", vapp.settings.url, "--namespace", vapp.settings.namespace)
    letters = json.loads(_cli("dead", "list", *common, "--json").stdout)
    assert len(letters) == 3
    for width in (80, 60, 200):
        out = _cli("dead", "list", *common, columns=width)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert max(len(line.rstrip()) for line in lines) <= width, (width, out.stdout)
        words = _words(out.stdout)
        for d in letters:
            first = d["reason"].splitlines()[0]
            assert len(first) > width
            for value in (d["entry_id"], d["task_id"], d["task"], _words(first)):
                assert value in words, (width, value, out.stdout)
    blocks = _cli("dead", "list", *common, columns=80).stdout
    assert "task id" in blocks and "traceback" in blocks and "streamq result" in blocks
    labels = [line.strip().split("  ")[0] for line in blocks.splitlines()
              if line.startswith("  ") and not line.startswith("   ")]
    assert [labels.count(x) for x in ("task", "task id", "reason")] == [3, 3, 3]
    table = _cli("dead", "list", *common, columns=200).stdout
    assert "┃ entry" in table and "┃ reason" in table  # one table, reasons wrapped


def _in_a_terminal(*args: str, answer: str) -> subprocess.CompletedProcess[str]:
    """``python -m streamq ARGS`` with stdin a terminal (a pty) on which ``answer``
    is typed."""
    import pty

    main_fd, tty_fd = pty.openpty()
    try:
        os.write(main_fd, answer.encode())
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMQ_")}
        return subprocess.run([sys.executable, "-m", "streamq", *args], check=False,
                              cwd=ROOT, env=env, stdin=tty_fd, capture_output=True,
                              text=True, timeout=60)
    finally:
        os.close(tty_fd)
        os.close(main_fd)


def test_dead_purge_confirms_and_needs_all_for_every_queue(
        vapp: StreamQ, start_worker: Any) -> None:
    _dead_letters(vapp, start_worker)
    common = ("--url", vapp.settings.url, "--namespace", vapp.settings.namespace)

    def counts() -> tuple[int, int]:
        return vapp.dead.count("default"), vapp.dead.count("other")

    assert counts() == (2, 1)
    for args, word in ((("dead", "purge"), "--all"), (("dead", "purge", "default"), "--yes"),
                       (("dead", "purge", "--all"), "--yes"),
                       (("dead", "purge", "default", "--all", "--yes"), "--all")):
        out = _cli(*args, *common)  # stdin is not a terminal
        assert out.returncode == 2, (args, out.stderr)
        [line] = out.stderr.strip().splitlines()
        assert line.startswith("streamq: error:") and word in line, (args, line)
        assert out.stdout == "" and counts() == (2, 1)

    no = _in_a_terminal("dead", "purge", "default", *common, answer="n\n")
    assert no.returncode == 1, no.stderr
    assert "Delete 2 dead letter(s) of queue default for good?" in no.stderr
    assert "nothing purged" in no.stderr and counts() == (2, 1)
    yes = _in_a_terminal("dead", "purge", "default", *common, answer="y\n")
    assert yes.returncode == 0, yes.stderr
    assert "purged 2 dead letter(s) of queue default" in yes.stdout and counts() == (0, 1)

    _dead_letters(vapp, start_worker, n=1)
    assert counts() == (1, 2)
    everything = _cli("dead", "purge", "--all", "--yes", "--json", *common)
    assert everything.returncode == 0, everything.stderr
    assert json.loads(everything.stdout) == {"purged": 3} and counts() == (0, 0)
