"""``streamq worker --reload``: watch the task modules' directories, restart the
worker when a ``.py`` file changes, and wait for the next save when the modules do
not import.

A restart is a fresh process (``os.execv`` of the same command), so every module is
imported anew. A save is often several events (an editor writes a temporary file,
renames it, deletes a backup), so a restart waits until the events have been quiet
for ``QUIET_S``. The watchdog observer is stopped with watchdog's own log records
silenced: stopping it while events are pending makes it log a spurious
``InotifyEmitter.queue_events() called when the thread is inactive`` at ERROR.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, NoReturn

log = logging.getLogger(__name__)

QUIET_S = 0.25
"""A change counts once no event came for this long (one save is several events)."""


class Watcher:
    """Watches directories (recursively) for changes to ``.py`` files."""

    def __init__(self, dirs: Iterable[str]) -> None:
        self.dirs = sorted(set(dirs))
        self._last_event = 0.0
        self._seen = threading.Event()
        self._observer: Any = None

    def start(self) -> Watcher:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class _OnPyChange(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                paths = (str(event.src_path), str(getattr(event, "dest_path", "") or ""))
                if event.event_type in ("modified", "created", "moved", "deleted") and \
                        any(p.endswith(".py") for p in paths):
                    watcher._last_event = time.monotonic()
                    watcher._seen.set()

        observer = Observer()
        for d in self.dirs:
            observer.schedule(_OnPyChange(), d, recursive=True)
        observer.start()
        self._observer = observer
        return self

    def changed(self) -> bool:
        """A ``.py`` file changed, and events have been quiet since for ``QUIET_S``."""
        return self._seen.is_set() and time.monotonic() - self._last_event >= QUIET_S

    def touched(self) -> None:
        """Count a change found otherwise (a file that changed before watching began)."""
        self._last_event = time.monotonic()
        self._seen.set()

    def wait(self, stop: threading.Event) -> bool:
        """Block until ``changed()`` (True) or ``stop`` is set (False)."""
        while not stop.is_set():
            if self._seen.wait(0.05) and self.changed():
                return True
        return False

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is None:
            return
        quiet = logging.getLogger("watchdog")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL + 1)  # its loggers inherit this level
        try:
            observer.stop()
            observer.join(5)
        finally:
            quiet.setLevel(level)


def restart() -> NoReturn:
    """Replace this process by the same ``streamq`` command, run afresh."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "streamq", *sys.argv[1:]])


def module_dirs(specs: Iterable[str]) -> list[str]:
    """The directories of the task modules (imported or not), watched by ``--reload``."""
    dirs = []
    for spec in specs:
        name = spec.partition(":")[0]
        path = getattr(sys.modules.get(name), "__file__", None)
        if not path:
            try:  # not imported (it failed): find its file without running it
                found = importlib.util.find_spec(name)
            except Exception:  # a parent package that does not import either
                found = None
            path = found.origin if found is not None and found.has_location else None
        if path:
            dirs.append(os.path.dirname(os.path.abspath(path)))
    return sorted(set(dirs))


def wait_for_a_fix(error: str, dirs: list[str], failed_file: str | None,
                   since: float) -> NoReturn:
    """After the modules failed to import under ``--reload``: log ``error`` as one
    line, wait for the next change of a ``.py`` file in ``dirs`` (the current
    directory when none is known), then restart. ``failed_file`` is the file the
    error is in, ``since`` the time (``time.time()``) the import began: a save of it
    since then counts, though it came before watching did. SIGTERM or Ctrl-C
    meanwhile exits 0.
    """
    dirs = dirs or [os.getcwd()]
    watcher = Watcher(dirs).start()
    log.error("The worker's tasks could not be loaded: %s. Waiting for a change to a .py "
              "file under %s (--reload).", error, ", ".join(dirs))
    stop = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if _mtime(failed_file) >= since:
        watcher.touched()  # saved again between the failed import and watching
    changed = watcher.wait(stop)
    watcher.stop()
    if not changed:
        log.info("Stopped while waiting for a change (--reload).")
        sys.exit(0)
    log.warning("Python files changed; restarting the worker.")
    restart()


def _mtime(path: str | None) -> float:
    try:
        return os.stat(path).st_mtime if path else -1.0
    except OSError:
        return -1.0
