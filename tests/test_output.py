"""Output people read (issue 11, point 4): JSON log lines with their task fields,
``streamq result`` laid out for a reader, ``dead list`` and ``dead purge`` on an
80-column terminal. Real servers, real worker subprocesses, the real CLI."""

from __future__ import annotations

import datetime
import json
import os
import re
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
