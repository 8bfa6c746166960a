"""Fan-out of panel messages from the lab's threads to every open page (server-sent events).

Producers are threads (the document subscriber, the status pollers); consumers are the
page streams on the server's event loop. A page that does not keep up loses messages (counted,
and it gets a fresh snapshot on reconnect) instead of growing the server's memory or slowing
the producers: the RunEngine's documents must never wait for a browser.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

PAGE_QUEUE = 2000
"""Messages one page may have outstanding: a 2-D raster's worth of events."""


class Hub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pages: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[str]]] = []
        self.dropped = 0

    def open_page(self) -> asyncio.Queue[str]:
        queue: asyncio.Queue[str] = asyncio.Queue(PAGE_QUEUE)
        with self._lock:
            self._pages.append((asyncio.get_running_loop(), queue))
        return queue

    def close_page(self, queue: asyncio.Queue[str]) -> None:
        with self._lock:
            self._pages = [(loop, q) for loop, q in self._pages if q is not queue]

    @property
    def pages(self) -> int:
        with self._lock:
            return len(self._pages)

    def publish(self, kind: str, data: Any) -> None:
        """From any thread: ``data`` as JSON to every page, as an event named ``kind``."""
        with self._lock:
            pages = list(self._pages)
        if not pages:
            return
        message = sse(kind, data)
        for loop, queue in pages:
            try:
                loop.call_soon_threadsafe(self._put, queue, message)
            except RuntimeError:  # the server's loop is closing
                continue

    def _put(self, queue: asyncio.Queue[str], message: str) -> None:
        try:
            queue.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped += 1


def sse(kind: str, data: Any) -> str:
    """One server-sent event; JSON never contains a bare newline, so one data line suffices."""
    return f"event: {kind}\ndata: {json.dumps(data, default=str)}\n\n"
