"""Operations through the real entry point with live workers: metrics over HTTP,
``--reload``, JSON logs, and the shell commands (result, enqueue, dead)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamq import StreamQ
from tests import tasks
from tests.conftest import ROOT, wait_until


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamq", *args], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_worker_metrics_count_what_ran(vapp: StreamQ, start_worker: Any) -> None:
    port = _free_port()
    w = start_worker(vapp.settings.url, "-c", "2", "--metrics-port", str(port),
                     "--log-level", "WARNING")
    ok = tasks.add.map([(i, i) for i in range(7)])
    bad = [tasks.fail.delay("x") for _ in range(3)]
    for r in ok:
        r.get(timeout=20)
    for r in bad:
        wait_until(lambda r=r: r.status == "FAILURE", message="failure")
    tasks.add.apply_async((1, 1), countdown=300)
    lbl = (("queue", "default"), ("task", "tests.tasks.add"))
    fail_lbl = (("queue", "default"), ("task", "tests.tasks.fail"))

    def scraped() -> Any:
        s = _samples(port)
        return s if s.get(("streamq_tasks_failed_total", fail_lbl)) == 3 else None

    s = wait_until(scraped, timeout=15, message="metrics")
    assert s[("streamq_tasks_succeeded_total", lbl)] == 7
    assert s[("streamq_tasks_started_total", lbl)] == 7
    assert s[("streamq_task_duration_seconds_count", lbl)] == 7
    assert s[("streamq_queue_scheduled", (("partition", ""), ("queue", "default")))] == 1
    assert s[("streamq_queue_dead", (("partition", ""), ("queue", "default")))] == 3
    assert s[("streamq_worker_process_restarts_total", ())] == 0
    assert w.stop() == 0


def test_reload_picks_up_an_edited_task_module(valkey: Any, namespace: str,
                                               start_worker: Any, tmp_path: Path) -> None:
    mod = tmp_path / "reloadable_tasks.py"
    source = textwrap.dedent("""
        from streamq import StreamQ
        app = StreamQ()

        @app.task(name="reloadable.version")
        def version():
            return VERSION
    """)
    mod.write_text(source.replace("VERSION", "1"))
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}"}
    w = start_worker(valkey.url, "-c", "1", "--reload", module="reloadable_tasks", env=env)
    producer = StreamQ(valkey.url, namespace=namespace)
    try:
        assert producer.send_by_name("reloadable.version").get(timeout=20) == 1
        mod.write_text(source.replace("VERSION", "2"))
        wait_until(lambda: w.output().count("worker starting") >= 2, timeout=30,
                   message="restart after edit")
        assert "Python files changed" in w.output()
        assert producer.send_by_name("reloadable.version").get(timeout=20) == 2
    finally:
        producer.close()
    assert w.stop() == 0


def test_json_logs_one_line_per_state_change(vapp: StreamQ, start_worker: Any) -> None:
    w = start_worker(vapp.settings.url, "-c", "1", "--log-format", "json")
    res = tasks.add.delay(2, 2)
    assert res.get(timeout=20) == 4
    wait_until(lambda: f"{res.id}] succeeded" in w.output(), message="log line")
    assert w.stop() == 0
    docs = [json.loads(line) for line in w.output().splitlines() if line.startswith("{")]
    mine = [d for d in docs if res.id in d["message"]]
    assert [("started" in d["message"], "succeeded" in d["message"]) for d in mine] == [
        (True, False), (False, True)]
    assert all({"ts", "level", "pid", "process", "message"} <= set(d) for d in mine)
    assert re.search(r"attempt 1", mine[1]["message"]) and "queue default" in mine[1]["message"]


@pytest.mark.parametrize("server", ["valkey", "shards"], indirect=True)
def test_result_enqueue_and_dead_commands(app: StreamQ, start_worker: Any) -> None:
    url, ns = app.settings.url, app.settings.namespace
    common = ("--url", url, "--namespace", ns)
    out = _cli("enqueue", "tests.tasks.add", "[20, 22]", "--app", "tests.tasks", *common,
               "--json")
    assert out.returncode == 0, out.stderr
    task_id = json.loads(out.stdout)["id"]
    unknown = _cli("enqueue", "tests.tasks.nope", "[]", "--app", "tests.tasks", *common)
    assert unknown.returncode == 2 and "unknown task" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
    by_name = _cli("enqueue", "tests.tasks.fail", '["kaput"]', *common)
    assert by_name.returncode == 0
    failed_id = by_name.stdout.strip()
    w = start_worker(url, "-c", "1")
    assert app.AsyncResult(task_id).get(timeout=20) == 42
    wait_until(lambda: app.AsyncResult(failed_id).status == "FAILURE", message="failure")

    shown = _cli("result", task_id, *common, "--json")
    assert json.loads(shown.stdout)["result"] == 42
    text = _cli("result", failed_id, *common)
    assert "FAILURE" in text.stdout and "ValueError: kaput" in text.stdout
    assert "Traceback (most recent call last)" in text.stdout
    missing = _cli("result", "nope", *common)
    assert missing.returncode == 1 and "no record" in missing.stderr

    listed = json.loads(_cli("dead", "list", "default", *common, "--json").stdout)
    assert [d["task_id"] for d in listed] == [failed_id]
    assert listed[0]["attempts"] == 1 and "kaput" in listed[0]["reason"]
    assert {"reason", "task", "attempts", "age_s"} <= set(listed[0])
    requeued = _cli("dead", "requeue", "default", "--all", *common, "--json")
    assert json.loads(requeued.stdout) == {"requeued": 1}
    wait_until(lambda: len(app.dead.list("default")) == 1, message="failed again")
    purged = _cli("dead", "purge", "default", *common, "--json", "--yes")
    assert json.loads(purged.stdout) == {"purged": 1}
    no_ids = _cli("dead", "requeue", "default", *common)
    assert no_ids.returncode == 2 and len(no_ids.stderr.strip().splitlines()) == 1
    assert w.stop() == 0


def test_every_command_has_help_with_an_example() -> None:
    for cmd in (["worker"], ["status"], ["result"], ["enqueue"], ["dead", "list"],
                ["dead", "requeue"], ["dead", "purge"], ["server"], ["demo"], ["bench"]):
        out = _cli(*cmd, "--help")
        assert out.returncode == 0 and "Example" in out.stdout, cmd


def test_bad_options_and_urls_exit_2_with_one_line() -> None:
    for args in (["status", "--bogus"], ["status", "--url", "ftp://x"],
                 ["result", "x", "--url", "nope"], ["dead", "list", "--url", "http://x"],
                 ["enqueue", "t", "not json", "--url", "redis://127.0.0.1:1"],
                 ["no-such-command"]):
        out = _cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, (args, out.stderr)
        assert out.stderr.startswith("streamq: error:"), (args, out.stderr)


def test_worker_warns_once_when_the_server_may_evict(tmp_path: Path, namespace: str,
                                                     start_worker: Any) -> None:
    from tests.servers import ServerProcess

    srv = ServerProcess("valkey", tmp_path / "srv").start()
    try:
        client = srv._client(5)
        client.config_set("maxmemory-policy", "allkeys-lru")
        client.close()
        w = start_worker(srv.url, "-c", "1")
        assert w.output().count("maxmemory-policy is allkeys-lru") == 1
        assert w.stop() == 0
    finally:
        srv.stop()
