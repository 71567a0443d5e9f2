"""The README's own-project walk-through, run as written: its files are taken from the
README's code blocks (a block whose first line is ``# <path>``), the commands it shows
are run in a fresh project directory on the embedded server, with real processes."""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
WALKED = ("shop/tasks.py", "place_orders.py")


def _files() -> dict[str, str]:
    out = {}
    for block in re.findall(r"```python\n(.*?)```", README, re.S):
        first, _, _ = block.partition("\n")
        if first.startswith("# ") and first[2:].split(":")[0].endswith(".py"):
            out[first[2:].split(":")[0]] = block
    return out


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMQ_")}
    env.update(PYTHONUNBUFFERED="1", XDG_CACHE_HOME=str(tmp_path / "cache"))
    return env


def _streamq(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamq", *args]


def test_every_example_file_in_the_readme_is_valid_python() -> None:
    files = _files()
    assert set(WALKED) <= set(files), sorted(files)
    assert {"shop/web.py", "orders/tasks.py", "mysite/streamq_worker.py"} <= set(files)
    for name, text in files.items():
        ast.parse(text, name)


def test_the_walk_through_works_as_written(tmp_path: Path) -> None:
    for command in ("git init", 'echo ".streamq/" >> .gitignore',
                    "streamq worker shop.tasks -c 4", "python place_orders.py",
                    "streamq status", "streamq server --stop"):
        assert command in README, command
    project = tmp_path / "shop"
    (project / "shop").mkdir(parents=True)
    (project / ".git").mkdir()  # what `git init` leaves: the project's root marker
    (project / "shop" / "__init__.py").write_text("")
    files = _files()
    for name in WALKED:
        (project / name).write_text(files[name])
    env = _env(tmp_path)
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(_streamq("worker", "shop.tasks", "-c", "4"), cwd=project,
                              env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        expected = "".join(f"{{'sku': '{s}', 'price': 9.5}}\n" for s in ("a1", "b2", "c3", "d4"))
        run = subprocess.run([sys.executable, "place_orders.py"], cwd=project, env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0 and run.stdout == expected, run.stderr
        # The same script from a subdirectory finds the project's server.
        sub = subprocess.run([sys.executable, "../place_orders.py"], cwd=project / "shop",
                             env=env, capture_output=True, text=True, timeout=60)
        assert sub.returncode == 0 and sub.stdout == expected, sub.stderr
        assert sub.stderr.count("streamq: using the embedded server of") == 1, sub.stderr
        assert str(project.resolve()) in sub.stderr
        status = subprocess.run(_streamq("status", "--json"), cwd=project, env=env,
                                capture_output=True, text=True, timeout=30)
        assert status.returncode == 0 and '"default"' in status.stdout, status.stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(30)
        log.close()
        stop = subprocess.run(_streamq("server", "--stop"), cwd=project, env=env,
                              capture_output=True, text=True, timeout=60)
    assert code == 0, (tmp_path / "worker.log").read_text()
    assert stop.returncode == 0 and "stopped the embedded server" in stop.stdout, stop
