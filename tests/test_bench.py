"""``streamq bench`` through the CLI with a tiny N: shape of the report, not speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from streamq.cli import bench_durable, bench_spread, bench_threads, cli
from streamq.cli.benchmark import CEILINGS, GROUPS, ROWS
from tests.conftest import ROOT
from tests.servers import ServerProcess


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline or text.encode() in environ:
                found.append(int(entry))
    return found


# Every row, in two halves that the suite runs side by side.
HALVES = (("enqueue", "durable", "drain", "roundtrip"), ("spread", "threads", "partitions"))


def test_the_halves_cover_every_measurement() -> None:
    assert sorted(g for half in HALVES for g in half) == sorted(GROUPS)
    assert sorted(k for keys in GROUPS.values() for k in keys) == sorted(ROWS)


@pytest.fixture
def fewer_fixed_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer calls in the rows whose counts do not follow ``-n``, for a report of the
    same shape: the durable slices (at most 2,000 calls; under everysec a call waits
    up to 100 ms for the server's next fsync, so 5 slices of 60 took ~16 s), the
    2 x 2,000 sleep tasks (~6 s) and the 160 spread tasks (~2 s)."""
    monkeypatch.setattr(bench_durable, "CALLS", 20)
    monkeypatch.setattr(bench_threads, "SLEEP_TASKS", 320)  # 10 per slot of 2 x 16
    monkeypatch.setattr(bench_spread, "TASKS", 32)  # 4 per process of 8


@pytest.mark.parametrize("half", HALVES, ids=["enqueue-drain", "spread-threads"])
@pytest.mark.usefixtures("fewer_fixed_counts")
def test_bench_reports_every_row_as_ratio_of_its_ceiling(valkey: ServerProcess,
                                                         half: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, ["bench", "--url", valkey.url, "-n", "300", "-c", "2",
                                      "--only", ",".join(half), "--json"])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    doc = json.loads(result.stdout)

    wanted = [key for key in ROWS if any(key in GROUPS[g] for g in half)]
    assert set(doc["ceilings"]) == {ROWS[k][2] for k in wanted if ROWS[k][2]}
    assert set(doc["ceilings"]) <= set(CEILINGS)
    for ceiling in doc["ceilings"].values():
        assert ceiling["value"] > 0
    rows = {row["key"]: row for row in doc["rows"]}
    assert list(rows) == wanted
    for key, row in rows.items():
        assert row["value"] > 0, key
        assert isinstance(row["meets_target"], bool) and row["target"], key
        if ROWS[key][2] is None:
            assert row["ceiling"] is None and row["ratio"] is None, key
        else:
            assert row["ceiling"] == doc["ceilings"][ROWS[key][2]]["value"]
            assert row["ratio"] == pytest.approx(row["value"] / row["ceiling"], rel=1e-3), key

    assert doc["params"]["n"] == 300 and doc["params"]["concurrency"] == 2
    versions = doc["versions"]
    assert versions["server_name"] == "valkey" and versions["valkey_version"]
    assert versions["redis_py"] and isinstance(versions["hiredis"], bool)
    if "roundtrip" in half:
        assert doc["details"]["roundtrip_samples"] > 0

    ns = doc["params"]["namespace"]
    assert _processes_mentioning(ns) == [], "bench worker processes left running"
    client = redis.Redis.from_url(valkey.url)
    try:
        assert list(client.scan_iter(match=f"{ns}:*")) == [], "bench keys left behind"
    finally:
        client.close()


def test_bench_with_unreachable_server_is_one_error_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streamq", "bench", "--url", "redis://127.0.0.1:1/0", "-n", "10"],
        check=False, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamq: error: cannot reach"), proc.stderr
    assert proc.stdout == ""


def test_bench_stops_the_embedded_server_it_started(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / ".git").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMQ_")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "streamq", "bench", "-n", "200", "-c", "1",
                           "--only", "enqueue,drain", "--json"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rows"]
    assert f"stopped the embedded server that the bench started for {project.resolve()}" \
        in proc.stderr, proc.stderr
    listed = subprocess.run([sys.executable, "-m", "streamq", "server", "--list", "--json"],
                            cwd=project, env=env, capture_output=True, text=True, timeout=60,
                            check=False)
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed


def test_only_runs_the_measurements_named(valkey: ServerProcess) -> None:
    result = CliRunner().invoke(cli, ["bench", "--url", valkey.url, "-n", "200", "-c", "1",
                                      "--only", "drain, roundtrip", "--json"])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    doc = json.loads(result.stdout)
    assert [row["key"] for row in doc["rows"]] == [
        *GROUPS["drain"], *GROUPS["roundtrip"]]
    assert all(row["value"] > 0 for row in doc["rows"])
    assert set(doc["ceilings"]) == {"raw_drain"} and doc["params"]["only"] == [
        "drain", "roundtrip"]
    # The table of a part of the rows (it once read details only the drain gives).
    text = CliRunner().invoke(cli, ["bench", "--url", valkey.url, "-n", "200",
                                    "--only", "roundtrip"])
    assert text.exit_code == 0, f"{text.output}\n{text.exception!r}"
    assert "round trips:" in text.output and "drain timed" not in text.output
    bad = subprocess.run([sys.executable, "-m", "streamq", "bench", "--url", valkey.url,
                          "--only", "drain,speed"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert bad.returncode == 2 and "unknown measurement(s) speed" in bad.stderr
    assert "Traceback" not in bad.stderr and bad.stdout == ""
