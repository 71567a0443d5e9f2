"""Periodic tasks fired by the workers themselves: each tick enqueued exactly once by
real worker processes (one SIGKILLed), catch-up after no worker was up, skipped
missed ticks, skip_if_running, changed definitions, croniter ticks and time zones,
bad definitions, and ``streamq periodic``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import pytest

from streamq import ConfigurationError, StreamQ
from streamq.api.periodic import schedules
from streamq.base import keys
from streamq.data.message import Message
from streamq.data.serialization import loads
from streamq.data.signing import BadSignature
from streamq.server.periodic import PeriodicStore
from streamq.worker.periodic import PeriodicDuty
from tests.conftest import ROOT, wait_until
from tests.servers import ServerProcess

SIGNING_KEY = "periodic-test-signing-key"
FAST = ("--heartbeat", "0.2", "--claim-after", "1", "--log-level", "INFO")


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


# -- ticks: croniter and time zones (no server) ---------------------------------------
def _offline() -> StreamQ:
    return StreamQ("redis://127.0.0.1:1/0", namespace="offline")  # never connects


def test_every_ticks_are_multiples_of_the_interval() -> None:
    app = _offline()
    s = app.add_periodic(lambda: None, every=timedelta(seconds=30), name="e")
    t = _ms("2026-12-03T10:00:10+00:00")
    assert s.next_after(t) == _ms("2026-12-03T10:00:30+00:00")
    assert s.latest_at(t) == _ms("2026-12-03T10:00:00+00:00")
    at_tick = _ms("2026-12-03T10:00:30+00:00")
    assert s.latest_at(at_tick) == at_tick and s.next_after(at_tick) == at_tick + 30_000
    assert app.add_periodic(lambda: None, every=2.5, name="f").every_ms == 2500


def test_cron_ticks_through_croniter_in_a_time_zone() -> None:
    app = _offline()
    paris = app.add_periodic(lambda: None, cron="0 9 * * *", tz="Europe/Paris", name="p")
    # 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer.
    assert paris.next_after(_ms("2026-12-03T08:30:00+00:00")) == _ms("2026-12-04T08:00:00+00:00")
    assert paris.next_after(_ms("2026-07-01T06:00:00+00:00")) == _ms("2026-07-01T07:00:00+00:00")
    assert paris.latest_at(_ms("2026-12-03T08:00:00+00:00")) == _ms("2026-12-03T08:00:00+00:00")
    # 02:30 does not exist on the spring-forward day: croniter runs it at 03:00 local.
    dst = app.add_periodic(lambda: None, cron="30 2 * * *", tz="Europe/Paris", name="d")
    assert dst.next_after(_ms("2026-03-29T00:30:00+00:00")) == _ms("2026-03-29T01:00:00+00:00")
    five = app.add_periodic(lambda: None, cron="*/5 * * * *", name="u")
    t = _ms("2026-12-03T10:07:00+00:00")
    assert (five.latest_at(t), five.next_after(t)) == (_ms("2026-12-03T10:05:00+00:00"),
                                                       _ms("2026-12-03T10:10:00+00:00"))
    seconds = app.add_periodic(lambda: None, cron="* * * * * */10", name="s")  # 6th: seconds
    assert seconds.next_after(_ms("2026-12-03T10:07:01+00:00")) == \
        _ms("2026-12-03T10:07:10+00:00")
    assert paris.when == "cron 0 9 * * * (Europe/Paris)" and five.when == "cron */5 * * * *"


@pytest.mark.parametrize("definition, says", [
    ({"cron": "61 * * * *"}, "invalid cron expression '61 * * * *'"),
    ({"cron": "every day"}, "invalid cron expression"),
    ({"cron": "* * * * *", "every": 5}, "exactly one of cron= and every="),
    ({}, "exactly one of cron= and every="),
    ({"every": 0}, "every must be at least 0.1 seconds, got 0"),
    ({"every": timedelta(seconds=-5)}, "every must be at least"),
    ({"every": "5"}, "every must be a timedelta or seconds"),
    ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ({"every": 5, "tz": "Europe/Paris"}, "tz= applies to cron schedules"),
    ({"every": 5, "args": (1, 2, 3)}, "too many positional arguments"),
    ({"every": 5, "tick_kwarg": "not a name"}, "tick_kwarg must be a keyword name"),
])
def test_bad_definitions_are_one_clear_error(definition: dict[str, Any], says: str) -> None:
    app = _offline()

    @app.task
    def job(x: int = 0, tick: str = "") -> None: ...

    with pytest.raises(ConfigurationError) as info:
        app.add_periodic(job, **definition)
    text = str(info.value)
    assert says in text and "\n" not in text and text.startswith("periodic schedule")
    assert not schedules(app)  # nothing half-defined


def test_a_name_used_twice_and_other_bad_combinations() -> None:
    app = _offline()

    @app.periodic(every=5)
    @app.task
    def job() -> None: ...

    with pytest.raises(ConfigurationError, match="already used by another schedule"):
        app.add_periodic(job, cron="* * * * *")
    app.add_periodic(job, cron="* * * * *", name="job-cron")  # another name is fine
    quiet = app.task(lambda: None, name="quiet", ignore_result=True)
    with pytest.raises(ConfigurationError, match="skip_if_running needs the task's record"):
        app.add_periodic(quiet, every=5, skip_if_running=True)

    @app.periodic(every=60)  # a plain function becomes a task with default options
    def plain() -> None: ...

    assert plain.name in app.registry and set(schedules(app)) == {job.name, "job-cron",
                                                                   plain.name}


# -- on real servers ---------------------------------------------------------------------
def _runs(client: Any, ns: str, name: str) -> list[tuple[str, str]]:
    """(tick, task id) of every run, in order."""
    out = []
    for raw in client.lrange(f"{ns}:runs:{name}", 0, -1):
        tick, task_id = raw.decode().split(" ", 1)
        out.append((tick, task_id))
    return out


def _state(app: StreamQ, name: str, queue: str = "default") -> dict[str, str]:
    raw = app.server.connection.client.hgetall(keys.periodic(app.settings.namespace, queue,
                                                             name))
    return {k.decode(): v.decode() for k, v in raw.items()}


@pytest.mark.slow
# Valkey and Redis: a tick is one script on one slot, the same on the cluster kinds.
@pytest.mark.parametrize("server", ["valkey", "redis"], indirect=True)
def test_three_workers_fire_each_tick_exactly_once(server: ServerProcess, namespace: str,
                                                   start_worker: Any) -> None:
    """every=1s, three worker processes started at different moments for about 7 s,
    one SIGKILLed on the way: every tick is enqueued once, none is skipped. The
    workers sign and check messages: an unsigned call would be dead-lettered."""
    env = {"PERIODIC_SET": "ticks", "STREAMQ_SIGNING_KEY": SIGNING_KEY}
    module = "tests.periodic_tasks"
    w1 = start_worker(server.url, "-c", "1", *FAST, module=module, env=env)
    began = time.monotonic()
    time.sleep(1.3)
    w2 = start_worker(server.url, "-c", "1", *FAST, module=module, env=env)
    time.sleep(0.7)
    w3 = start_worker(server.url, "-c", "2", *FAST, module=module, env=env)
    # All three fire the ticks of a second or more (more on a loaded machine), then
    # one dies; the others fire three more ticks or so.
    time.sleep(max(1.0, began + 4.0 - time.monotonic()))
    w2.kill_all()  # a host dies, maybe with a tick's call in hand
    killed_at = int(time.time() * 1000)
    time.sleep(3.0)
    up_for = time.monotonic() - began  # 7 s, unless the starts took longer
    assert w1.stop() == 0 and w3.stop() == 0  # no worker up: the schedule rests
    stopped_after = time.monotonic() - began
    app = StreamQ(server.url, namespace=namespace)
    client = app.server.connection.client
    try:
        fired = int(_state(app, "ticks")["fired"])
        # A worker that defines no schedule reclaims and runs the killed host's calls.
        start_worker(server.url, "-c", "1", *FAST, module=module,
                     env={"PERIODIC_SET": "", "STREAMQ_SIGNING_KEY": SIGNING_KEY})
        runs = wait_until(lambda: (r := _runs(client, namespace, "ticks")) and
                          len({t for t, _ in r}) >= fired and r, timeout=15,
                          message=f"{fired} ticks run")
        assert int(_state(app, "ticks")["fired"]) == fired
    finally:
        app.close()
    ids_of = defaultdict(set)
    for tick, task_id in runs:
        ids_of[_ms(tick)].add(task_id)
    ticks = sorted(ids_of)
    assert all(len(ids) == 1 for ids in ids_of.values()), "a tick was enqueued twice"
    assert len(ticks) == fired  # and nothing else was enqueued
    assert all(t % 1000 == 0 for t in ticks)
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert max(gaps) <= 2000, f"a gap of more than one tick: {gaps}"
    # One a second while a worker was up (w1 may fire one before ``began``).
    assert int(up_for) - 2 <= len(ticks) <= int(stopped_after) + 3, (up_for, ticks)
    assert any(t > killed_at + 1000 for t in ticks)  # the others went on after the kill
    dead = StreamQ(server.url, namespace=namespace)
    try:
        assert dead.dead.list() == []
    finally:
        dead.close()


def _due_at(store: PeriodicStore, server_ms: int) -> None:
    """Sleep until the server's clock reads ``server_ms``."""
    while (left := server_ms - store.server_ms()) > 0:
        time.sleep(min(left, 200) / 1000)


def _calls(app: StreamQ, queue: str = "default") -> list[tuple[str, dict[str, Any]]]:
    """(task id, kwargs) of every call waiting in ``queue``'s stream."""
    out = []
    for _, fields in app.server.connection.client.xrange(
            keys.stream(app.settings.namespace, queue)):
        m = Message.decode(fields[b"m"])
        _, kwargs = loads(m.body, m.content_type, m.content_encoding,
                          accept=app.accept_content_types)
        out.append((m.id, kwargs))
    return out


def _run_duty(duty: PeriodicDuty, seconds: float) -> None:
    """A worker process's housekeeping thread, for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        duty.periodic_tasks(time.monotonic())
        time.sleep(0.01)


@pytest.mark.parametrize("server", ["valkey", "redis"], indirect=True)  # one script, one slot
def test_catch_up_runs_the_latest_missed_tick_once_and_catch_up_false_skips(
        server: ServerProcess, namespace: str) -> None:
    app = StreamQ(server.url, namespace=namespace)
    try:
        job = app.task(lambda tick, which: None, name="job")
        app.add_periodic(job, every=2, name="late", kwargs={"which": "late"},
                         tick_kwarg="tick")
        app.add_periodic(job, every=2, name="strict", kwargs={"which": "strict"},
                         tick_kwarg="tick", catch_up=False)
        duty = PeriodicDuty.of(app)
        assert duty is not None
        duty.periodic_tasks(0)  # a worker installs both, then goes away
        first = int(_state(app, "late")["next"])
        assert int(_state(app, "strict")["next"]) == first and first % 2000 == 0
        assert _calls(app) == []  # nothing fires at once
        # No worker is up for two ticks; the latest came 1.2 s ago (grace: 1 s), and
        # the next is 0.8 s away (a margin for a loaded machine).
        latest = first + 2000
        _due_at(duty.store, latest + 1200)
        again = PeriodicDuty.of(app)  # a worker (re)starts: reads the state, then fires
        assert again is not None
        _run_duty(again, 0.1)
        calls = _calls(app)
        assert [(k["which"], _ms(k["tick"])) for _, k in calls] == [("late", latest)]
        late, strict = _state(app, "late"), _state(app, "strict")
        assert (late["fired"], late["last_tick"], late["next"]) == \
            ("1", str(latest), str(latest + 2000))
        assert "fired" not in strict and strict["skipped"] == "1"
        assert (strict["last_skip"], strict["last_skip_tick"], strict["next"]) == \
            ("missed", str(latest), str(latest + 2000))
        _run_duty(again, 0.1)  # and no burst follows
        assert len(_calls(app)) == 1
        # Both go on from the next tick, each once, whichever of the two fires it.
        _due_at(duty.store, latest + 2000)
        end = time.monotonic() + 0.2
        while time.monotonic() < end:
            duty.periodic_tasks(0)
            again.periodic_tasks(0)
            time.sleep(0.01)
        ticks = sorted((k["which"], _ms(k["tick"])) for _, k in _calls(app))
        assert ticks == [("late", latest), ("late", latest + 2000),
                         ("strict", latest + 2000)]
    finally:
        app.close()


def test_a_changed_definition_starts_over_without_a_burst(server: ServerProcess,
                                                          namespace: str) -> None:
    def app_with(version: int) -> tuple[StreamQ, PeriodicDuty]:
        app = StreamQ(server.url, namespace=namespace)
        job = app.task(lambda v, tick: None, name="job")
        app.add_periodic(job, every=0.3, name="job", kwargs={"v": version}, tick_kwarg="tick")
        duty = PeriodicDuty.of(app)
        assert duty is not None
        return app, duty

    old_app, old = app_with(1)
    new_app, new = app_with(2)
    try:
        _run_duty(old, 1.0)
        assert int(_state(old_app, "job")["fired"]) >= 2
        # Both run (a rolling deploy): the definition in force stays, the new one waits.
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            old.periodic_tasks(0)
            new.periodic_tasks(0)
            time.sleep(0.01)
        assert {k["v"] for _, k in _calls(old_app)} == {1}
        before = len(_calls(old_app))
        old.release()  # its last worker stops: the new definition takes over at once
        _run_duty(new, 1.5)
        state = _state(new_app, "job")
        since = int(state["since"])
        new_ticks = [_ms(k["tick"]) for _, k in _calls(old_app)[before:]]
        assert {k["v"] for _, k in _calls(old_app)[before:]} == {2}
        # From the first tick after the change on, each once: no burst at the change.
        assert new_ticks and new_ticks[0] > since and new_ticks[0] - since <= 300
        assert new_ticks == list(range(new_ticks[0], new_ticks[-1] + 1, 300))
    finally:
        old_app.close()
        new_app.close()


@pytest.mark.slow
def test_skip_if_running_never_overlaps_two_runs(server: ServerProcess, namespace: str,
                                                 start_worker: Any) -> None:
    """every=0.4s, each run 1 s, on two processes: without the option runs would
    overlap; with it, ticks are skipped while a run is not final."""
    w = start_worker(server.url, "-c", "2", *FAST, module="tests.periodic_tasks",
                     env={"PERIODIC_SET": "slow"})
    app = StreamQ(server.url, namespace=namespace)
    client = app.server.connection.client
    try:
        wait_until(lambda: len(_runs(client, namespace, "slow")) >= 6, timeout=20,
                   message="three runs")
        assert w.stop() == 0
        runs = _runs(client, namespace, "slow")
        state = _state(app, "slow")
    finally:
        app.close()
    # Each run's start and end follow each other: no run began while another ran.
    kinds = [rest.split()[0] for _, rest in runs]
    assert kinds == ["start", "end"] * (len(runs) // 2) + ["start"] * (len(runs) % 2), kinds
    starts = [_ms(t) for t, rest in runs if rest.startswith("start")]
    assert all(b - a >= 1200 for a, b in zip(starts, starts[1:], strict=False)), starts
    assert int(state["skipped"]) >= 2 * (len(starts) - 1)
    assert state["last_skip"] == "running"
    # One more may have fired as the worker stopped (it waits in the queue).
    assert int(state["fired"]) - len(starts) in (0, 1)


def _periodic_cli(server: ServerProcess, namespace: str, *args: str,
                  schedules_set: str = "cli") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PERIODIC_SET=schedules_set, COLUMNS="80", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "streamq", "periodic", "--app",
                           "tests.periodic_tasks", "--url", server.url, "--namespace",
                           namespace, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=60)


def test_streamq_periodic_lists_schedules_and_retired_ones(valkey: ServerProcess,
                                                            namespace: str,
                                                            start_worker: Any) -> None:
    # Workers of the old code define "beat" and "hourly"; the new code drops
    # "hourly" and adds the cron "report".
    w = start_worker(valkey.url, "-c", "1", *FAST, module="tests.periodic_tasks",
                     env={"PERIODIC_SET": "cli-old"})
    app = StreamQ(valkey.url, namespace=namespace)
    client = app.server.connection.client
    try:
        wait_until(lambda: _runs(client, namespace, "beat"), timeout=10, message="a beat")
        live = _periodic_cli(valkey, namespace, "--json", schedules_set="cli-old")
        assert live.returncode == 0, live.stderr
        assert {r["name"]: r["state"] for r in json.loads(live.stdout)["schedules"]} == \
            {"beat": "active", "hourly": "active"}
        assert w.stop() == 0
        ran = {i for _, i in _runs(client, namespace, "beat")}

        out = _periodic_cli(valkey, namespace, "--json")
        assert out.returncode == 0, out.stderr
        rows = {r["name"]: r for r in json.loads(out.stdout)["schedules"]}
        assert {n: r["state"] for n, r in rows.items()} == \
            {"beat": "no worker", "hourly": "retired", "report": "new"}
        beat = rows["beat"]
        assert beat["task"] == "tests.periodic_tasks.tick" and beat["queue"] == "default"
        last = beat["last_run"]
        # The last call ran, or (fired as the worker stopped) waits in the queue.
        assert last["id"] in ran or app.AsyncResult(last["id"]).status == "PENDING"
        assert beat["every_s"] == 1 and last["tick_ms"] % 1000 == 0
        assert beat["next_ms"] > last["tick_ms"]
        assert rows["report"]["queue"] == "reports" and rows["report"]["tz"] == "Europe/Paris"
        assert rows["report"]["next_ms"] % 300_000 == 0
        assert rows["hourly"]["next_ms"] % 3600_000 == 0

        text = _periodic_cli(valkey, namespace)
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        assert max(len(line) for line in lines) <= 80, text.stdout
        for word in ("beat", "hourly", "report", "retired", "no worker", "new",
                     "cron */5 * * * * (Europe/Paris)", "every 1s", "every 1h", last["id"]):
            assert word in text.stdout, word

        refused = _periodic_cli(valkey, namespace, "--forget", "beat")
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1
        assert "still defined by tests.periodic_tasks" in refused.stderr
        unknown = _periodic_cli(valkey, namespace, "--forget", "nope")
        assert unknown.returncode == 1 and "no schedule named 'nope'" in unknown.stderr
        gone = _periodic_cli(valkey, namespace, "--forget", "hourly")
        assert gone.returncode == 0, gone.stderr
        after = _periodic_cli(valkey, namespace, "--json")
        assert {r["name"] for r in json.loads(after.stdout)["schedules"]} == {"beat", "report"}
    finally:
        app.close()


def test_the_readme_example_defines_its_schedules(valkey: ServerProcess, namespace: str,
                                                  tmp_path: Any) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = {b.partition("\n")[0][2:]: b for b in
              re.findall(r"```python\n(.*?)```", readme, re.S) if b.startswith("# shop/")}
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    for name in ("shop/tasks.py", "shop/schedules.py"):
        (tmp_path / name).write_text(blocks[name])
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMQ_")}
    out = subprocess.run([sys.executable, "-m", "streamq", "periodic", "--app",
                          "shop.schedules", "--url", valkey.url, "--namespace", namespace,
                          "--json"], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: (r["when"], r["state"]) for r in json.loads(out.stdout)["schedules"]}
    assert rows == {"shop.schedules.morning_report":
                    ("cron 0 7 * * mon-fri (Europe/Paris)", "new"),
                    "shop.schedules.sync_stock": ("every 30s", "new"),
                    "purge-tmp": ("every 1h", "new")}


def test_a_signing_app_fires_signed_calls(valkey: ServerProcess, namespace: str) -> None:
    app = StreamQ(valkey.url, namespace=namespace, signing_key=SIGNING_KEY)
    other = StreamQ(valkey.url, namespace=namespace, signing_key="another-key-of-16-chars")
    try:
        app.add_periodic(app.task(lambda: None, name="job"), every=0.2)
        duty = PeriodicDuty.of(app)
        assert duty is not None
        client = app.server.connection.client
        stream = keys.stream(namespace, "default")
        end = time.monotonic() + 5
        while not client.xlen(stream) and time.monotonic() < end:
            duty.periodic_tasks(0)
            time.sleep(0.01)
        ((_, fields),) = client.xrange(stream)
        assert app.signer is not None and other.signer is not None
        assert Message.decode(app.signer.verify(fields[b"m"])).task == "job"
        with pytest.raises(BadSignature):
            other.signer.verify(fields[b"m"])
    finally:
        app.close()
        other.close()
