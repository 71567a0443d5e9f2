"""``async def`` tasks: one event loop per worker process, in a thread of its own.

The consumer's loop (``threaded.py``) hands an async task's call here instead of to a
task thread; up to ``async_concurrency`` of them run at once on the loop, each in its
own asyncio task (so ``current_task()``, a context variable, is each one's own). A
finished coroutine's outcome goes back the way a thread's does: held until the next
read writes it. Time limits cancel the coroutine (``Executor.run_async``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from ..data.outcome import Outcome
from .executor import Call, Executor

log = logging.getLogger(__name__)

Done = Callable[[Call, Outcome | None, float], None]
"""Called on the loop's thread with a call's outcome (None: it could not be built)
and how long it ran."""


class AsyncTasks:
    """The event loop of one worker process, and the coroutines it runs."""

    def __init__(self, executor: Executor, done: Done) -> None:
        self.executor = executor
        self.done = done
        self.running = 0
        """Coroutines started and not finished (changed under the consumer's lock)."""
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="streamq-asyncio",
                                        daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, call: Call) -> None:
        asyncio.run_coroutine_threadsafe(self._one(call), self.loop)

    async def _one(self, call: Call) -> None:
        t0 = time.perf_counter()
        outcome: Outcome | None = None
        try:
            outcome = await self.executor.run_async(call)
        except BaseException:  # the executor turns every error into an outcome
            log.exception("An async task failed on message %s; it stays pending and will "
                          "be delivered again.", call.delivery.entry_id)
            raise
        finally:
            self.done(call, outcome, time.perf_counter() - t0)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
