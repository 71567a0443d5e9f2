"""ACL users (issue 15): a worker, a producer and the CLI under a user that has only the
rule streamq documents (``RULE``), on Valkey 9 and Redis 7; the server's ``ACL LOG``
shows what was refused. streamq asks for ``CONFIG GET`` (the server's value limit) and
must go on without it; anything else refused is a bug in the rule or in streamq.

Each test makes its own user on the suite's private server (``ACL SETUSER`` as the
default user, which has no password there) and deletes it at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from streamq import BrokerError, StreamQ, TaskFailed
from streamq.base import keys
from tests import tasks
from tests.conftest import ROOT, wait_until
from tests.servers import ServerProcess

RULE = ("resetkeys ~{ns}:* resetchannels -@all +@stream +@hash +@sortedset +@list +@set "
        "+@connection +@transaction -@dangerous +del +exists +expire +evalsha +script|load "
        "+info +time +memory|usage")
"""The documented rule (README, "Security and durability"), for namespace ``ns``."""
COUNTERS = "+incrby +get"
"""For tests.tasks' own counters (``INCR``/``GET`` of ``<ns>:count:*``), not streamq's."""
PASSWORD = "acl-Marker-pw"
FAST = ("--heartbeat", "0.2", "--claim-after", "1")
KINDS = pytest.mark.parametrize("server", ["valkey", "redis"], indirect=True)

MakeUser = Callable[..., str]


@pytest.fixture
def admin(server: ServerProcess) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.execute_command("ACL", "LOG", "RESET")
    yield client
    client.close()


@pytest.fixture
def make_user(server: ServerProcess, admin: redis.Redis,
              namespace: str) -> Iterator[MakeUser]:
    """``make_user(rule)``: a new ACL user with ``rule`` (``{ns}`` is the test's
    namespace) and ``PASSWORD``; returns its URL. Users are deleted afterwards."""
    made: list[str] = []

    def make(rule: str) -> str:
        name = f"{namespace}-{len(made)}"
        admin.execute_command("ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}",
                              *rule.format(ns=namespace).split())
        made.append(name)
        return f"redis://{name}:{PASSWORD}@127.0.0.1:{server.port}/0"

    yield make
    for name in made:
        admin.execute_command("ACL", "DELUSER", name)


def _refused(admin: redis.Redis, user_prefix: str) -> set[str]:
    """What the server refused users of this test, as ``ACL LOG`` names it."""
    return {e["object"] for e in _log(admin) if e["username"].startswith(user_prefix)}


def _log(admin: redis.Redis) -> list[dict[str, Any]]:
    return list(admin.acl_log(128))  # redis-py makes each entry a dict


def _cli(url: str, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, STREAMQ_NAMESPACE=namespace, PYTHONPATH=str(ROOT))
    env.pop("STREAMQ_URL", None)
    return subprocess.run([sys.executable, "-m", "streamq", *args, "--url", url], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def restricted(make_user: MakeUser, namespace: str) -> Iterator[str]:
    """tests.tasks.app as a user with the rule (and the test counters); its URL.
    ``max_message_bytes=0`` makes the producer ask for the server's limit (CONFIG)."""
    url = make_user(f"{RULE} {COUNTERS}")
    tasks.app.configure(url=url, namespace=namespace, heartbeat_s=0.5, block_ms=200,
                        max_message_bytes=0)
    try:
        yield url
    finally:
        tasks.app.configure(max_message_bytes=1024 * 1024)  # the default, for later tests
        tasks.app.close()


@KINDS
def test_worker_producer_and_cli_need_only_the_rule(restricted: str, admin: redis.Redis,
                                                    namespace: str, start_worker: Any
                                                    ) -> None:
    url, app = restricted, tasks.app
    # A consumer that read and died: the worker claims its messages after claim_after.
    ghosts = tasks.add.map([(i, 100) for i in range(5)])
    app.server.broker.ensure_group("default")
    assert len(app.server.broker.read("ghost-host:999:dead-0", ["default"], 100, None)) == 5
    w = start_worker(url, "-c", "2", *FAST, env={"STREAMQ_MAX_MESSAGE_BYTES": "0",
                                                 "STREAMQ_MAX_RESULT_BYTES": "0"})
    assert [r.get(timeout=30) for r in ghosts] == [100, 101, 102, 103, 104]
    assert all(r.info["deliveries"] == 2 for r in ghosts)
    assert tasks.add.delay(2, 3).get(timeout=20) == 5
    # Long enough that the producer and the worker ask for the server's limit: CONFIG
    # GET is refused, and both go on with the default limit.
    big = "x" * 300_000
    assert tasks.echo.delay(big).get(timeout=20) == big
    assert [r.get(timeout=20) for r in tasks.add.map([(i, 1) for i in range(20)])] == \
        list(range(1, 21))
    assert tasks.flaky.delay("acl-flaky", 2).get(timeout=20) == 3  # retried twice
    assert tasks.retry_later.delay("acl-later", 0.3).get(timeout=20) == 2  # a delayed retry
    assert tasks.add.apply_async((4, 4), countdown=0.3).get(timeout=20) == 8
    assert tasks.die_on_first_delivery.delay("acl-die").get(timeout=30) == 2  # recovered
    # Runs longer than claim_after: only lease renewal keeps it from being reclaimed.
    assert tasks.sleep_then_count.delay("acl-long", 2.0).get(timeout=30) == 1
    failed = tasks.fail.delay("refused nothing")
    with pytest.raises(TaskFailed, match="refused nothing"):
        failed.get(timeout=20)
    rejected, poisoned = tasks.reject.delay("no"), tasks.poison.delay("acl-poison")
    letters = wait_until(lambda: (lambda d: d if len(d) == 3 else None)(
        app.dead.list("default")), timeout=30, message="three dead letters")
    assert {d.task_id for d in letters} == {failed.id, rejected.id, poisoned.id}
    assert tasks.count_of("acl-poison") == 3 and tasks.count_of("acl-long") == 1

    queued = _cli(url, namespace, "enqueue", "tests.tasks.add", "[40, 2]", "--json")
    assert queued.returncode == 0, queued.stderr
    task_id = json.loads(queued.stdout)["id"]
    assert app.AsyncResult(task_id).get(timeout=20) == 42
    shown = _cli(url, namespace, "result", task_id, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["result"] == 42, shown.stderr
    status = _cli(url, namespace, "status", "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert {q["queue"]: q["dead"] for q in doc["queues"]}["default"] == 3
    assert [x["alive"] for x in doc["workers"]] == [True]
    assert _cli(url, namespace, "status").returncode == 0
    listed = _cli(url, namespace, "dead", "list", "default", "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 3
    entry = next(d.entry_id for d in letters if d.task_id == rejected.id)
    requeued = _cli(url, namespace, "dead", "requeue", "default", entry)
    assert requeued.returncode == 0, requeued.stderr
    wait_until(lambda: {d.entry_id for d in app.dead.list("default")
                        if d.task_id == rejected.id} - {entry}, timeout=20,
               message="the requeued reject back in dead letters, as a new entry")
    purged = _cli(url, namespace, "dead", "purge", "default", "--yes")
    assert purged.returncode == 0, purged.stderr
    assert app.dead.list("default") == []
    assert w.stop() == 0
    assert "NOPERM" not in w.output() and "Traceback" not in w.output()

    # CONFIG GET (the value limit) was asked and refused, and nothing else was.
    assert _refused(admin, namespace) == {"config|get"}, _log(admin)


@KINDS
def test_a_user_without_the_rule_gets_a_clear_error(make_user: MakeUser, namespace: str,
                                                    server: ServerProcess,
                                                    start_worker: Any) -> None:
    read_only = make_user("resetkeys ~{ns}:* -@all +@read +@connection")
    app = StreamQ(read_only, namespace=namespace)
    try:
        with pytest.raises(BrokerError) as caught:
            app.send_by_name("tests.tasks.add", [1, 2])
    finally:
        app.close()
    text = str(caught.value)
    assert caught.value.code == "NOPERM"
    assert "refused this for the URL's user (ACL)" in text and "Security and durability" \
        in text and PASSWORD not in text, text

    other_keys = make_user(f"{RULE.replace('~{ns}:*', '~elsewhere:*')}")
    for url, expected in ((read_only, "refused this for the URL's user (ACL)"),
                          (other_keys, "permissions to access"),
                          (read_only.replace(PASSWORD, "wrong-pw"), "authentication failed")):
        done = _cli(url, namespace, "enqueue", "tests.tasks.add", "[1, 2]", "--force")
        assert done.returncode == 1, done
        # A warning may come first (no live worker); one line says what failed.
        errors = [line for line in done.stderr.splitlines()
                  if line.startswith("streamq: error: ")]
        assert len(errors) == 1 and expected in errors[0], done.stderr
        assert all(line.startswith("streamq: ") for line in done.stderr.splitlines())
        assert PASSWORD not in done.stderr and "Traceback" not in done.stderr

    w = start_worker(read_only, "-c", "1", ready=False)
    assert w.proc.wait(60) != 0
    out = w.output()
    assert "refused this for the URL's user (ACL)" in out and "Traceback" not in out, out
    assert PASSWORD not in out


@KINDS
def test_the_rule_keeps_other_namespaces_out(restricted: str, admin: redis.Redis,
                                             namespace: str) -> None:
    admin.set("someone-else:secret", "x")
    client = tasks.app.server.connection.client
    with pytest.raises(BrokerError) as caught:
        client.get("someone-else:secret")
    assert caught.value.code == "NOPERM"
    for command in (("KEYS", "*"), ("FLUSHDB",), ("CONFIG", "GET", "requirepass"),
                    ("CLIENT", "LIST")):
        with pytest.raises(BrokerError) as caught:
            client.execute_command(*command)
        assert caught.value.code == "NOPERM", command
    assert admin.get("someone-else:secret") == "x"
    admin.delete("someone-else:secret")
    assert keys.stream(namespace, "default").startswith(f"{namespace}:")
