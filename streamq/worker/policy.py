"""The executor's limits: how often a message is handed back, what is never measured.

Numbers with their reasons, apart from the code that applies them (``executor.py``).
"""

from __future__ import annotations

from ..api.task import TaskOptions

DEFAULT_MAX_DELIVERIES = TaskOptions(name="default", queue="default").max_deliveries
"""A task's ``max_deliveries`` unless it says otherwise (5): the limit of a message
whose task is unknown."""


HANDBACKS = 12
"""How often a message for a task this worker does not know is handed back before
it is dead-lettered; the hand-backs do not count as retries.

Which consumer reads a handed-back message is up to the server (the one blocked
longest), so each hand-back is a draw, not a route: measured with one old and two
new consumers, the old one took about half of them again. Many short hand-backs give
better odds than a few long ones in the same time: a message dies here with odds of
about 0.5 ** 13 (one in 8,000) where the old worker takes half the reads, and after
about 5 s where no worker knows its task."""

HANDBACK_DELAY_S = (0.2, 0.6)
"""The range of each hand-back's delay in seconds (drawn at random, so that the
messages of a batch spread out over the readers)."""

SURE_TO_FIT = 1024 * 1024 // 4
"""A value up to this many characters fits in any server (the least
``proto-max-bulk-len`` is 1 MiB, and UTF-8 takes at most 4 bytes a character): only a
longer one is measured against the server's limit."""


SURE_TEXT = 1024 * 1024 // 16
"""An error text up to this many characters is never cut (see ``Executor._fit``)."""


MAX_COUNTDOWN_S = 1e9
"""The longest wait a task may ask of ``Retry``: its record's TTL includes the wait,
and the server refuses a TTL much beyond this."""
