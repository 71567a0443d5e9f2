"""``ServerLink``: what one app uses to talk to its server, built from its Settings.

It owns no behaviour of its own: each part does one job (``connection``, packed
``transport``, the ``broker``'s streams, task ``records``, ``dead`` letters, the
``delayed`` set, the worker ``registry``, ``canvas`` state). Nothing connects until a part is used.
"""

from __future__ import annotations

from typing import Any

from ..base.settings import Settings
from .broker import Broker
from .canvas import CanvasStore
from .connection import Connection
from .deadletters import DeadLetters
from .delayed import Delayed
from .records import RecordStore
from .registry import Registry
from .transport import Transport


class ServerLink:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.connection = Connection(settings)
        self.transport = Transport(self.connection)
        self.broker = Broker(self.transport, settings)
        self.records = RecordStore(self.transport, settings)
        self.dead = DeadLetters(self.transport, self.broker, settings)
        self.delayed = Delayed(self.transport, settings.namespace)
        self.registry = Registry(self.transport, settings.namespace)
        self.canvas = CanvasStore(self.transport, settings)

    @property
    def url(self) -> str:
        """The server URL (starting the embedded server if none is configured)."""
        return self.connection.url

    @property
    def masked_url(self) -> str:
        return self.connection.masked_url

    def info(self, section: str) -> dict[str, Any]:
        """The server's INFO ``section`` (a connection check, too)."""
        return self.connection.client.info(section)

    def close(self) -> None:
        self.connection.close()
