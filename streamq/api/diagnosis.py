"""What a ``get(timeout=)`` that timed out says: the task's status, and whether any
live worker reads its queue on that server, from the worker registry (each worker
registers its queues and task names, and its processes' heartbeats when they last
read: ``streamq.server.registry``).

Read only when a wait has timed out: nothing here is on the path of a result.
"""

from __future__ import annotations

from ..base.errors import ResultTimeoutError
from ..data.record import Status
from ..server.link import ServerLink
from ..server.registry import READ_WINDOW_S, WorkerEntry

_STATE_HINT: dict[str, str] = {Status.PENDING: "it waits behind the tasks ahead of it",
               Status.SCHEDULED: "it is not due yet",
               Status.RETRY: "its next attempt is not due yet",
               Status.STARTED: "it is running"}


def timed_out(link: ServerLink, task_id: str, queue: str, status: str, task: str | None,
              timeout: float) -> ResultTimeoutError:
    """The ``ResultTimeoutError`` of a wait for ``task_id`` (task ``task``, on
    ``queue``) that saw ``status`` last."""
    head = f"task {task_id} is still {status} after {timeout:g} s"
    try:
        workers = link.registry.live_workers(3, link.settings.heartbeat_s)
        where = f"on {link.masked_url}"
    except Exception:  # the registry could not be read: say only what is known
        return ResultTimeoutError(head, task_id, status, None)
    if link.settings.namespace != "streamq":
        where += f" (namespace {link.settings.namespace!r})"
    consumers = [w for w in workers if queue in w.queues]
    readers = [w for w in consumers if w.read_lately()]
    window = f"{READ_WINDOW_S:g} s"
    if not readers:
        if consumers:
            why = (f"{len(consumers)} live worker(s) consume queue {queue!r} {where}, but "
                   f"none has read it in the last {window} (every process busy with a long "
                   f"task?)")
        else:
            why = f"no worker has read queue {queue!r} {where} in the last {window}"
            others = sorted({q for w in workers for q in w.queues})
            why += (f"; the live workers read only {', '.join(others)}" if others else
                    f"; start one: streamq worker MODULE -Q {queue}")
    else:
        why = f"{len(readers)} live worker(s) read queue {queue!r} {where}"
        missing = _none_has(readers, task)
        if missing:
            why += (f", but none of them has registered task {task!r}: it is handed back, "
                    f"then dead-lettered, unless a worker that has it starts")
        elif status in _STATE_HINT:
            why += f" ({_STATE_HINT[status]})"
    return ResultTimeoutError(f"{head}; {why}", task_id, status, len(readers))


def _none_has(readers: list[WorkerEntry], task: str | None) -> bool:
    """True when every reader says which tasks it has and none has ``task``."""
    if task is None or any(w.tasks is None for w in readers):
        return False
    return not any(task in w.tasks for w in readers if w.tasks is not None)
