"""``collect_status`` and ``streamq status`` against a real server and a real worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import redis
from click.testing import CliRunner
from rich.console import Console

import streamq.cli
from streamq import StreamQ
from streamq.base import keys
from streamq.cli.status import render_status
from streamq.server.status import collect_status
from tests import tasks
from tests.conftest import ROOT, wait_until


def _status(app: StreamQ, now: float | None = None) -> dict[str, Any]:
    return collect_status(app.server.connection, app.settings, now=now)


def _entry() -> list[str]:
    """The real ``streamq`` entry point."""
    return [sys.executable, "-m", "streamq"]


def _run(*args: str, timeout: float = 30, columns: int | None = None
         ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STREAMQ_") and k not in ("COLUMNS", "LINES")}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run([*_entry(), "status", *args], check=False, capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=timeout)


def _said_by_server(client: redis.Redis, ns: str, queue: str) -> dict[str, int]:
    """The server's own figures for one queue (missing stream or group: zero)."""
    stream = keys.stream(ns, queue)
    try:
        pending = int(client.xpending(stream, keys.GROUP)["pending"])
    except redis.ResponseError:
        pending = 0
    try:
        consumers = len(client.xinfo_consumers(stream, keys.GROUP))
    except redis.ResponseError:
        consumers = 0
    return {"backlog": client.xlen(stream) - pending, "pending": pending,
            "scheduled": client.zcard(keys.delayed(ns, queue)),
            "dead": client.xlen(keys.dead(ns, queue)), "consumers": consumers}


def _by_queue(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {q["queue"]: q for q in doc["queues"]}


def _stable(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` without the figures that change from one second to the next."""
    doc = json.loads(json.dumps(doc))
    for k in ("used_memory", "used_memory_human"):
        doc["server"].pop(k)
    for q in doc["queues"]:
        q.pop("oldest_pending_age_s")
        q.pop("throughput_per_min")
    for w in doc["workers"]:
        w.pop("last_heartbeat_ms")
    for c in doc["consumers"]:
        c.pop("idle_s")
    return doc


def test_figures_match_the_server_and_a_killed_worker_turns_dead(
        app: StreamQ, rclient: redis.Redis, start_worker: Any) -> None:
    ns = app.settings.namespace
    worker = start_worker(app.settings.url, "-c", "1", "-Q", "default")
    done = [tasks.add.delay(i, i) for i in range(5)]
    failed = [tasks.fail.delay("boom") for _ in range(2)]
    assert [r.get(timeout=15) for r in done] == [2 * i for i in range(5)]
    wait_until(lambda: all(r.status == "FAILURE" for r in failed), message="failures")
    for _ in range(3):
        tasks.add.apply_async((1, 1), countdown=60)
    for i in range(4):
        tasks.on_other_queue.delay(i)  # no worker reads "other": a stream without a group
    rclient.sadd(keys.queues(ns), "ghost")  # a known queue without any key
    tasks.sleep_then_count.delay("slow", 30)
    wait_until(lambda: tasks.count_of("slow") == 1, message="the slow task to start")
    for i in range(3):  # the only process is busy: these stay undelivered
        tasks.add.delay(i, i)

    t = time.time()
    doc = _status(app, now=t)
    queues = _by_queue(doc)
    assert sorted(queues) == ["default", "ghost", "other"]
    for name, q in queues.items():
        assert {k: q[k] for k in ("backlog", "pending", "scheduled", "dead", "consumers")} \
            == _said_by_server(rclient, ns, name), name
    assert {k: queues["default"][k] for k in ("backlog", "pending", "scheduled", "dead",
                                               "consumers")} == \
        {"backlog": 3, "pending": 1, "scheduled": 3, "dead": 2, "consumers": 1}
    assert queues["other"]["backlog"] == 4 and queues["other"]["consumers"] == 0
    assert queues["ghost"] == {"queue": "ghost", "backlog": 0, "pending": 0, "scheduled": 0,
                               "dead": 0, "consumers": 0, "dead_consumers": 0,
                               "oldest_pending_age_s": None, "throughput_per_min": 0,
                               "stream_memory_bytes": 0}
    idle = rclient.xpending_range(keys.stream(ns, "default"), keys.GROUP, "-", "+", 1)
    assert abs(queues["default"]["oldest_pending_age_s"] -
               idle[0]["time_since_delivered"] / 1000) < 1.0
    assert queues["other"]["oldest_pending_age_s"] is None
    assert queues["default"]["stream_memory_bytes"] == \
        rclient.memory_usage(keys.stream(ns, "default"))
    minute = int(t // 60)
    counts = [sum(int(rclient.hget(keys.stats(ns, "default", m), f) or 0)
                  for f in ("succeeded", "failed", "dead")) for m in (minute, minute - 1)]
    assert sum(counts) == 7
    assert queues["default"]["throughput_per_min"] == \
        round(counts[0] + counts[1] * (1 - (t % 60) / 60))

    srv = doc["server"]
    assert srv["url"] == app.settings.url and srv["version"]
    assert srv["maxmemory_policy"] == "noeviction" and srv["eviction_risk"] is False
    assert srv["used_memory"] > 0 and srv["used_memory_human"]
    [w] = doc["workers"]
    assert w["alive"] is True and w["pid"] == worker.pid and w["host"] == socket.gethostname()
    assert (w["processes"], w["queues"], w["succeeded"], w["failed"]) == (1, ["default"], 5, 2)
    assert w["id"] == rclient.zrange(keys.workers(ns), 0, -1)[0].decode()
    assert w["started_ms"] <= w["last_heartbeat_ms"] <= t * 1000 + 1

    out = _run("--url", app.settings.url, "--namespace", ns, "--json")
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert out.stdout.strip() == json.dumps(printed, indent=2, sort_keys=True)
    assert _stable(printed) == _stable(_status(app))

    worker.kill_all()
    killed = time.monotonic()
    wait_until(lambda: not _status(app)["workers"][0]["alive"], timeout=2.0,
               message="the killed worker to show as dead")
    assert time.monotonic() - killed <= 2 * 0.5 + 0.5
    after = _status(app)
    assert [x["id"] for x in after["workers"]] == [w["id"]]  # still listed, as dead
    assert _by_queue(after)["default"]["pending"] == 1  # its entry waits to be reclaimed


def test_worker_listing_and_throughput_window(app: StreamQ, rclient: redis.Redis) -> None:
    ns = app.settings.namespace
    t = time.time()
    now_ms = int(t * 1000)
    minute = int(t // 60)
    rclient.sadd(keys.queues(ns), "default")
    rclient.hset(keys.stats(ns, "default", minute), mapping={"succeeded": 10, "failed": 2,
                                                             "retried": 50})
    rclient.hset(keys.stats(ns, "default", minute - 1), mapping={"succeeded": 4, "dead": 4})
    rclient.hset(keys.stats(ns, "default", minute - 2), mapping={"succeeded": 1000})
    rclient.zadd(keys.workers(ns), {"hostA:123:abcd": now_ms - 300, "hostF:7:beef": now_ms - 300,
                                    "hostB:456:ef01": now_ms - 600_000,
                                    "hostC:789:0000": now_ms - 7_200_000})
    rclient.hset(keys.worker(ns, "hostA:123:abcd"), mapping={
        "host": "hostA", "pid": 123, "processes": 4, "queues": "default,other",
        "started_ms": now_ms - 60_000, "last_heartbeat_ms": now_ms - 300, "succeeded": 3,
        "retried": 1})
    # Its own heartbeat period (0.1 s) makes 300 ms of silence two periods too many.
    rclient.hset(keys.worker(ns, "hostF:7:beef"), mapping={"host": "hostF", "pid": 7,
                                                           "heartbeat_s": "0.1"})

    doc = _status(app, now=t)
    [q] = doc["queues"]
    assert q["throughput_per_min"] == round(12 + 8 * (1 - (t % 60) / 60))
    assert isinstance(q["throughput_per_min"], int)  # a count of tasks: no "16.0"
    workers = {w["id"]: w for w in doc["workers"]}
    assert sorted(workers) == ["hostA:123:abcd", "hostB:456:ef01", "hostF:7:beef"]
    a = workers["hostA:123:abcd"]
    assert a == {"id": "hostA:123:abcd", "host": "hostA", "pid": 123, "processes": 4,
                 "queues": ["default", "other"], "succeeded": 3, "failed": 0, "retried": 1,
                 "dead": 0, "started_ms": now_ms - 60_000, "last_heartbeat_ms": now_ms - 300,
                 "alive": True}  # app heartbeat 0.5 s: 300 ms is within two periods
    assert workers["hostF:7:beef"]["alive"] is False
    b = workers["hostB:456:ef01"]  # its hash expired: what the id tells
    assert (b["alive"], b["host"], b["pid"], b["processes"], b["succeeded"]) == \
        (False, "hostB", 456, None, 0)

    console = Console(record=True, width=200)
    render_status(doc, console)
    text = console.export_text()
    for expected in ("queues", "workers", "default", "hostA:123:abcd", "hostB:456:ef01",
                     "alive", "dead", "noeviction"):
        assert expected in text


def test_bad_url_is_one_line_and_exit_2() -> None:
    out = _run("--url", "http://127.0.0.1:1", "--json", timeout=30)
    assert out.returncode == 2
    assert out.stdout == ""
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("streamq: error: invalid server URL")
    down = _run("--url", "redis://:pw-secret@127.0.0.1:1/0", timeout=60)
    assert down.returncode == 1
    [line] = down.stderr.strip().splitlines()
    assert line.startswith("streamq: error: cannot reach") and "pw-secret" not in line


def test_help_has_an_example() -> None:
    result = CliRunner().invoke(streamq.cli.cli, ["status", "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and "streamq status --watch" in result.output


def test_watch_refreshes_until_ctrl_c(vapp: StreamQ) -> None:
    tasks.add.delay(1, 2)
    ns = vapp.settings.namespace
    for extra in ((), ("--json",)):
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMQ_")}
        proc = subprocess.Popen([*_entry(), "status", "--url", vapp.settings.url, "--namespace",
                                 ns, "--watch", "--interval", "0.1", *extra], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            if extra:  # three refreshes, one line each
                lines = [proc.stdout.readline() for _ in range(3)]
                assert all(json.loads(x)["queues"] for x in lines)
            else:  # off a terminal, Live prints only when it stops: give it time to start
                time.sleep(2.0)
            assert proc.poll() is None
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, stderr
        if extra:
            docs = [json.loads(x) for x in lines + stdout.splitlines()]
            assert all(_by_queue(d)["default"]["backlog"] == 1 for d in docs)
        else:
            assert "queues" in stdout and "default" in stdout


def _whole(doc: dict[str, Any]) -> None:
    """Every count of ``doc`` is an int (JSON prints no ``3.0``)."""
    for q in doc["queues"]:
        for k in ("backlog", "pending", "scheduled", "dead", "consumers", "dead_consumers",
                  "throughput_per_min", "stream_memory_bytes"):
            assert type(q[k]) is int, (k, q[k])
    for w in doc["workers"]:
        for k in ("succeeded", "failed", "retried", "dead", "processes"):
            assert type(w[k]) is int, (k, w[k])
    for c in doc["consumers"]:
        assert type(c["pending"]) is int


def test_consumers_of_a_dead_worker_are_shown_as_such(app: StreamQ, start_worker: Any) -> None:
    url, ns = app.settings.url, app.settings.namespace
    worker = start_worker(url, "-c", "2", "-Q", "default")
    for i in range(3):
        assert tasks.add.delay(i, i).get(timeout=15) == 2 * i
    tasks.sleep_then_count.delay("held", 30)
    wait_until(lambda: tasks.count_of("held") == 1, message="the slow task to start")

    # A process is a consumer from its first read on (on Redis 7.0: its first delivery).
    def holding() -> dict[str, Any] | None:
        d = _status(app)
        return d if sum(c["pending"] for c in d["consumers"]) == 1 else None

    doc = holding() or wait_until(holding, message="the consumer holding the slow task")
    _whole(doc)
    [w] = doc["workers"]
    consumers = doc["consumers"]
    names = sorted(c["name"] for c in consumers)
    assert names and set(names) <= {f"{w['id']}-0", f"{w['id']}-1"}
    assert all(c["worker"] == w["id"] and c["worker_alive"] is True and
               c["queue"] == "default" for c in consumers)
    assert _by_queue(doc)["default"]["dead_consumers"] == 0
    text = _run("--url", url, "--namespace", ns)
    assert text.returncode == 0, text.stderr
    assert "dead worker" not in text.stdout and "consumers" in text.stdout

    worker.kill_all()
    wait_until(lambda: not _status(app)["workers"][0]["alive"], timeout=5,
               message="the killed worker to show as dead")
    doc = _status(app)
    _whole(doc)
    # The other process may have become a consumer meanwhile.
    names = sorted(c["name"] for c in doc["consumers"])
    assert set(names) <= {f"{w['id']}-0", f"{w['id']}-1"} and consumers
    assert _by_queue(doc)["default"]["dead_consumers"] == len(names)
    assert all(c["worker_alive"] is False for c in doc["consumers"])
    out = _run("--url", url, "--namespace", ns, "--json")
    assert [c["worker_alive"] for c in json.loads(out.stdout)["consumers"]] == \
        [False] * len(names)
    text = _run("--url", url, "--namespace", ns)
    rows = [line for line in text.stdout.splitlines() if f"{w['id']}-" in line]
    assert len(rows) == len(names) and all("dead worker" in r for r in rows), text.stdout
    [queue_row] = [line for line in text.stdout.splitlines() if line.split()[:1] == ["default"]]
    gone = f"{len(names)} ({len(names)} dead)"
    assert gone in queue_row, text.stdout

    narrow = _run("--url", url, "--namespace", ns, columns=80)
    assert narrow.returncode == 0, narrow.stderr
    assert max(len(line.rstrip()) for line in narrow.stdout.splitlines()) <= 80
    words = " ".join(narrow.stdout.split())
    for name in (w["id"], *names, "dead worker", gone):
        assert name in words, (name, narrow.stdout)
