"""deploy/: the manifests validated against Kubernetes' schemas, the compose file and
the systemd unit checked for what the README promises, and ``streamq probe`` (what
their health checks run) against a real worker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streamq import StreamQ
from streamq.worker import metrics
from tests.conftest import ROOT, wait_until

DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.30.0"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if d]


def _grace(command: list[str]) -> float:
    return float(command[command.index("--grace") + 1])


@pytest.mark.parametrize("name", ["server.yaml", "worker.yaml"])
def test_manifests_are_valid_kubernetes(name: str) -> None:
    docs = _docs(name)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_worker_deployment_outlasts_the_grace_and_probes_the_heartbeat() -> None:
    [deployment] = _docs("worker.yaml")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    command = container["command"]
    assert command[:3] == ["streamq", "worker", "worker.tasks"]
    assert (ROOT / "worker" / "tasks.py").exists()
    assert pod["terminationGracePeriodSeconds"] > _grace(command)
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["exec"]["command"] == ["streamq", "probe"]
    port = int(command[command.index("--metrics-port") + 1])
    assert container["ports"][0]["containerPort"] == port


def test_the_server_never_evicts_and_keeps_an_aof() -> None:
    [config, statefulset, service] = _docs("server.yaml")
    conf = config["data"]["valkey.conf"]
    for path_conf in (conf, (DEPLOY / "server" / "single.conf").read_text(),
                      (DEPLOY / "server" / "cluster.conf").read_text()):
        assert re.search(r"^maxmemory-policy noeviction$", path_conf, re.M)
        assert re.search(r"^appendonly yes$", path_conf, re.M)
    assert re.search(r"^cluster-enabled yes$", (DEPLOY / "server" / "cluster.conf").read_text(),
                     re.M)
    [worker] = _docs("worker.yaml")
    url = worker["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"]
    assert url == f"redis://{service['metadata']['name']}:6379/0"
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]


def test_keda_scales_the_workers_on_the_backlog_gauge() -> None:
    [scaled] = _docs("keda-scaledobject.yaml")
    # A CRD: Kubernetes' own schemas do not know it.
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(scaled, K8S_VERSION, strict=True)
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["kind"] == "ScaledObject"
    [deployment] = _docs("worker.yaml")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert "streamq_queue_backlog" in trigger["metadata"]["query"]
    # The total row: one figure per logical queue, partitioned or not.
    assert 'partition=""' in trigger["metadata"]["query"]
    assert "streamq_queue_backlog" in (metrics.__doc__ or "")


def test_compose_runs_workers_that_outlast_their_grace() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"valkey", "worker", "producer"} <= set(services)
    conf_mount = services["valkey"]["volumes"][0].split(":")[0]
    assert (DEPLOY / conf_mount).resolve() == (DEPLOY / "server" / "single.conf").resolve()
    worker = services["worker"]
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / worker["build"]["context"] / worker["build"]["dockerfile"]).exists()
    grace = float(worker["environment"]["STREAMQ_GRACE_S"])
    assert int(worker["stop_grace_period"].rstrip("s")) > grace
    assert worker["environment"]["STREAMQ_URL"] == "redis://valkey:6379/0"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'CMD ["streamq", "probe"]' in dockerfile and "STOPSIGNAL SIGTERM" in dockerfile


def test_the_systemd_unit_verifies_and_outlasts_the_grace(tmp_path: Path) -> None:
    text = (DEPLOY / "systemd" / "streamq-worker.service").read_text()
    assert re.search(r"^KillSignal=SIGTERM$", text, re.M)
    exec_start = re.search(r"^ExecStart=(.*)$", text, re.M)
    stop = re.search(r"^TimeoutStopSec=(\d+)$", text, re.M)
    assert exec_start and stop
    assert int(stop.group(1)) > _grace(exec_start.group(1).split())
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # Its paths made real on this machine, so that verify checks the rest.
    unit = tmp_path / "streamq-worker.service"
    unit.write_text(text.replace("/srv/app/.venv/bin/streamq", sys.executable)
                    .replace("/srv/app", str(tmp_path)).replace("User=streamq\n", ""))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def _probe(url: str, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMQ_")}
    return subprocess.run([sys.executable, "-m", "streamq", "probe", "--url", url,
                           "--namespace", ns, *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=ROOT, check=False)


def test_probe_says_whether_a_worker_of_this_host_heartbeats(vapp: StreamQ,
                                                            start_worker: Any) -> None:
    url, ns = vapp.settings.url, vapp.settings.namespace
    assert url is not None
    none = _probe(url, ns)
    assert none.returncode == 1 and none.stdout == ""
    assert none.stderr.count("\n") == 1 and "no live worker of host" in none.stderr
    w = start_worker(url, "-c", "1")
    up = wait_until(lambda: (p := _probe(url, ns)).returncode == 0 and p, timeout=15,
                    message="the probe to find the worker")
    assert "1 live worker(s)" in up.stdout
    other = _probe(url, ns, "--host", "some-other-pod")
    assert other.returncode == 1 and "'some-other-pod'" in other.stderr
    assert w.stop() == 0
    assert _probe(url, ns).returncode == 1  # a stopped worker deregisters
