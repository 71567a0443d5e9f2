"""``GroupResult``: the handles of a group's members, read together.

Reading many records costs one round trip per batch of them (``CanvasStore.
read_records``), not one per member: ``get()`` reads the members in order, in
pipelined batches, and blocks (as ``AsyncResult.get`` does, without polling) only on
the first one that is not done yet, then reads the rest again from there.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from ..base.errors import ResultTimeoutError
from ..data import record, serialization
from ..data.record import Status
from .result import AsyncResult

_FIELDS = (record.STATUS, record.RESULT, record.RESULT_CT, record.RESULT_CE)


class GroupResult:
    """The results of a group's members, in member order (``results``)."""

    def __init__(self, results: list[AsyncResult], group_id: str | None = None) -> None:
        self.id = group_id or uuid.uuid4().hex
        self.results = results
        self.parent: AsyncResult | GroupResult | None = None
        """The handle of the step before the group, in a chain."""

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} of {len(self.results)}>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult]:
        return iter(self.results)

    def __getitem__(self, index: int) -> AsyncResult:
        return self.results[index]

    def _remote(self) -> bool:
        """Every member is a plain handle on a server (not an eager one)."""
        return bool(self.results) and all(type(r) is AsyncResult for r in self.results)

    def _rows(self, members: list[AsyncResult], fields: tuple[str, ...]
              ) -> list[list[bytes | None]]:
        """The ``fields`` of each member's record, in pipelined batches."""
        if not self._remote():
            return [[r.status.encode(), *([None] * (len(fields) - 1))] for r in members]
        store = members[0].app.server.canvas
        where = [(r._where() or "", r.id) for r in members]
        return store.read_records(where, fields)

    def _statuses(self) -> list[str]:
        return [row[0].decode() if row[0] else Status.UNKNOWN.value
                for row in self._rows(self.results, (record.STATUS,))]

    def completed_count(self) -> int:
        """How many members succeeded."""
        return sum(s == Status.SUCCESS for s in self._statuses())

    def ready(self) -> bool:
        """Every member finished (succeeded, failed or died)."""
        return all(s in record.FINAL for s in self._statuses())

    def successful(self) -> bool:
        return all(s == Status.SUCCESS for s in self._statuses())

    def failed(self) -> bool:
        return any(s in (Status.FAILURE, Status.DEAD) for s in self._statuses())

    def get(self, timeout: float | None = None, propagate: bool = True, *,
            disable_sync_subtasks: bool = True) -> list[Any]:
        """The members' values in member order, once all are done. Raises the first
        failure in member order (``TaskFailed``) unless ``propagate=False``, which puts
        the ``TaskFailed`` in its place instead; ``ResultTimeoutError`` when ``timeout``
        seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values: list[Any] = []
        results = self.results
        while len(values) < len(results):
            rest = results[len(values):]
            rows: list[list[bytes | None]] = self._rows(rest, _FIELDS) if self._remote() \
                else [[None]] * len(rest)
            for handle, row in zip(rest, rows, strict=True):
                if row[0] == b"SUCCESS":
                    values.append(None if row[1] is None else serialization.loads(
                        row[1], (row[2] or serialization.JSON_CONTENT_TYPE.encode()).decode(),
                        (row[3] or b"utf-8").decode(), accept=handle.app.accept_content_types))
                    continue
                # Not done yet (or failed: its own get() raises what it should): wait for
                # this one, then read the rest again, which may be done by then.
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ResultTimeoutError(
                        f"group {self.id}: {len(values)} of {len(results)} members done "
                        f"after {timeout:g}s; member {len(values)} ({handle.id}) is "
                        f"{handle.status}")
                values.append(handle.get(timeout=remaining, propagate=propagate,
                                         disable_sync_subtasks=disable_sync_subtasks))
                break
        return values

    def join(self, timeout: float | None = None, propagate: bool = True) -> list[Any]:
        """Celery's other name for ``get``."""
        return self.get(timeout, propagate)
