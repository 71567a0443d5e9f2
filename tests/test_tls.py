"""TLS (issue 15): ``rediss://`` URLs with the CA, the client certificate and its key as
query parameters, for producers, workers and the CLI, against Debian's redis-server
listening on TLS only (``--port 0``) and asking for client certificates.

The certificates are made here with ``openssl``; the server's default user has a
password with URL-special characters, so each error is also checked for leaking it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from streamq import BrokerConnectionError, ConfigurationError, Settings, StreamQ, TaskFailed
from tests import tasks
from tests.conftest import ROOT, wait_until
from tests.servers import binary_path, require_kind
from tests.tls_certs import TLSServer, make_certs, openssl_available

PASSWORD = "tls-Marker/pw?#1"
"""The default user's password: it must never show in an error."""
MARKERS = (PASSWORD, quote(PASSWORD, safe=""), "Marker")
FAST = ("-c", "1", "--heartbeat", "0.2")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    require_kind("redis")
    if not openssl_available():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("the openssl command is not installed (required in CI)")
        pytest.skip("the openssl command is not installed")
    base = tmp_path_factory.mktemp("tls")
    server = TLSServer(str(binary_path("redis")), base / "server", make_certs(base / "certs"),
                       PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture
def tapp(tls: TLSServer, namespace: str) -> Iterator[StreamQ]:
    """tests.tasks.app over TLS (with the client certificate) under a fresh namespace."""
    tasks.app.configure(url=tls.url(), namespace=namespace, heartbeat_s=0.5, block_ms=200)
    try:
        yield tasks.app
    finally:
        tasks.app.close()


def _cli(url: str, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, STREAMQ_NAMESPACE=namespace, PYTHONPATH=str(ROOT))
    env.pop("STREAMQ_URL", None)
    return subprocess.run([sys.executable, "-m", "streamq", *args, "--url", url], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)


def _one_clean_line(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The single error line of a failed command, checked for ``expected`` pieces and
    for any piece of the password."""
    assert done.returncode != 0, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamq: error: "), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    for marker in MARKERS:
        assert marker not in done.stderr + done.stdout
    for piece in expected:
        assert piece in lines[0], lines[0]
    return lines[0]


def test_the_server_speaks_tls_only(tls: TLSServer) -> None:
    with tls.client() as client:
        assert client.config_get("port") == {"port": "0"}
        assert client.config_get("tls-auth-clients") == {"tls-auth-clients": "yes"}
        assert client.config_get("tls-port") == {"tls-port": str(tls.port)}


def test_producer_worker_and_cli_over_tls(tapp: StreamQ, tls: TLSServer, namespace: str,
                                          start_worker: Any) -> None:
    url = tls.url()
    w = start_worker(url, *FAST)
    assert tasks.add.delay(2, 3).get(timeout=15) == 5
    mapped = tasks.add.map([(i, i) for i in range(20)])
    assert [r.get(timeout=15) for r in mapped] == [2 * i for i in range(20)]
    assert tasks.flaky.delay("tls-flaky", 2).get(timeout=15) == 3  # two retries, then done
    assert tasks.count_of("tls-flaky") == 3
    failed = tasks.fail.delay("boom over tls")
    with pytest.raises(TaskFailed, match="boom over tls"):
        failed.get(timeout=15)
    rejected = tasks.reject.delay("no thanks")
    # A failure is copied to dead letters too.
    wait_until(lambda: len(tapp.dead.list("default")) == 2, timeout=15,
               message="two dead letters")

    queued = _cli(url, namespace, "enqueue", "tests.tasks.add", "[40, 2]", "--json")
    assert queued.returncode == 0, queued.stderr
    task_id = json.loads(queued.stdout)["id"]
    assert tapp.AsyncResult(task_id).get(timeout=15) == 42
    shown = _cli(url, namespace, "result", task_id, "--json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["status"] == "SUCCESS" and record["result"] == 42
    status = _cli(url, namespace, "status", "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    # (The worker read every queue of tests.tasks: its partitioned one too.)
    assert {q["queue"]: q["dead"] for q in doc["queues"]
            if "orders" not in q["queue"]} == {"default": 2, "other": 0}
    assert len(doc["workers"]) == 1
    dead = _cli(url, namespace, "dead", "list", "default", "--json")
    assert dead.returncode == 0, dead.stderr
    assert sorted(d["task_id"] for d in json.loads(dead.stdout)) == sorted(
        [failed.id, rejected.id])
    for done in (queued, shown, status, dead):
        assert not any(m in done.stdout + done.stderr for m in MARKERS)
    assert w.proc.poll() is None and w.stop() == 0
    assert not any(m in w.output() for m in MARKERS)


def test_a_wrong_ca_a_missing_file_and_no_client_cert_are_connection_errors(
        tls: TLSServer, namespace: str, tmp_path: Path) -> None:
    cases = {
        tls.url(ca=tls.certs.other_ca): "the server's certificate is not trusted",
        tls.url(ssl_certfile=str(tmp_path / "gone.crt")):
            f"cannot use ssl_certfile={tmp_path / 'gone.crt'} of",
        tls.url(ca=tmp_path / "no-ca.pem"): f"cannot use ssl_ca_certs={tmp_path}",
        tls.url(ssl_keyfile=str(tmp_path)): f"ssl_keyfile={tmp_path} of rediss://:***@127."
                                            f"0.0.1:{tls.port}/0: not a readable file",
        tls.url(client=False): "client certificate",
    }
    for url, expected in cases.items():
        app = StreamQ(url, namespace=namespace)
        try:
            with pytest.raises(BrokerConnectionError) as caught:
                app.send_by_name("tests.tasks.add", [1, 2])
        finally:
            app.close()
        text = str(caught.value)
        assert expected in text and text.startswith(("TLS connection to", "cannot use")), text
        assert f"127.0.0.1:{tls.port}" in text
        assert not any(m in text for m in MARKERS), text


@pytest.mark.parametrize("command", [("status",), ("result", "0" * 32 + "@default"),
                                     ("dead", "list", "default"),
                                     ("enqueue", "tests.tasks.add", "[1, 2]")])
def test_the_cli_says_what_is_wrong_in_one_line(tls: TLSServer, namespace: str,
                                                tmp_path: Path, command: tuple[str, ...]
                                                ) -> None:
    wrong_ca = _cli(tls.url(ca=tls.certs.other_ca), namespace, *command)
    _one_clean_line(wrong_ca, "TLS connection to", "not trusted", "ssl_ca_certs")
    assert wrong_ca.returncode == 1
    missing = _cli(tls.url(ssl_keyfile=str(tmp_path / "k.pem")), namespace, *command)
    _one_clean_line(missing, f"cannot use ssl_keyfile={tmp_path / 'k.pem'}", "no such file")


def test_a_worker_that_cannot_trust_the_server_says_so(tls: TLSServer, namespace: str,
                                                       start_worker: Any) -> None:
    w = start_worker(tls.url(ca=tls.certs.other_ca), *FAST, ready=False)
    assert w.proc.wait(60) != 0
    text = w.output()
    assert "not trusted" in text and "Traceback" not in text, text
    assert not any(m in text for m in MARKERS), text


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://127.0.0.1:6379/0?ssl_ca_certs=ca.pem", "is a TLS option: use a rediss:// URL"),
    ("rediss://127.0.0.1:6379/0?ssl_ca_cert=ca.pem", "unknown parameter 'ssl_ca_cert'"),
    ("rediss://127.0.0.1:6379/0?ssl_cert_reqs=yes", "expected one of none, optional, required"),
    ("rediss://127.0.0.1:6379/0?ssl_check_hostname=off", "expected true or false"),
    ("rediss://127.0.0.1:6379/0?socket_timeout=1", "timeouts are settings"),
    ("rediss://127.0.0.1:6379/0?ssl_ca_certs=a&ssl_ca_certs=b", "exactly one value"),
    ("redis://u:p%3Fw@127.0.0.1:6379/0?db=x", "db='x'"),
])
def test_bad_url_parameters_are_refused_up_front(url: str, expected: str,
                                                 namespace: str) -> None:
    with pytest.raises(ConfigurationError, match="in server URL") as caught:
        Settings(url=url)
    assert expected in str(caught.value)
    assert "p%3Fw" not in str(caught.value)
    done = _cli(url, namespace, "status")
    assert done.returncode == 2
    _one_clean_line(done, expected)


def test_the_tls_options_a_url_accepts(tls: TLSServer) -> None:
    accepted = tls.url(ssl_check_hostname="false", client_name="tls-test",
                       ssl_password="key-Marker-secret")
    settings = Settings(url=accepted)
    assert "key-Marker-secret" not in repr(settings) and PASSWORD not in repr(settings)
    app = StreamQ(accepted)
    try:
        with tls.client() as client:
            assert app.server.connection.client.ping() is True
            names = [c["name"] for c in client.client_list()]
        assert "tls-test" in names
    finally:
        app.close()
