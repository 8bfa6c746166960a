"""Between the IOC's asyncio loop and the devices' threads.

Why it exists:

* caproto serves every client from one asyncio loop. A device call that touches a port (or waits
  for a lease held by a local plan) must never run on that loop, or every PV of the IOC freezes
  for its duration. ``Bridge.call`` runs device calls on a small thread pool of the IOC's own, and
  ``Bridge.wait`` turns an ophyd status into something the loop can await without a thread
  blocked on it (the status's own callback wakes the loop).
* Devices report new values from their worker threads (readback while moving, a fresh power
  reading). ``Pusher`` collects them from any thread and writes them to their PVs from the loop,
  keeping only the newest value per PV: a client sees every value the loop has time for, and a
  burst of updates never builds a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from daqbridge.errors import InstrumentError, InstrumentTimeout

T = TypeVar("T")

log = logging.getLogger("daqbridge.ioc")


class Bridge:
    """Device calls off the loop, and ophyd statuses as awaitables."""

    def __init__(self, workers: int = 8) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="daqbridge-ioc")
        self._closed = False

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on an IOC thread; its exception is raised here."""
        if self._closed:
            raise InstrumentError(
                "the IOC is shutting down; no new device calls are accepted.",
                fix="retry once the IOC has restarted.",
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def wait(self, status: Any, *, timeout: float | None = None, what: str = "") -> None:
        """Wait for an ophyd status without blocking the loop; raise its exception on failure."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[BaseException | None] = loop.create_future()

        def finished(st: Any) -> None:
            exc: BaseException | None = None
            if not st.success:
                try:
                    exc = st.exception()
                except Exception as err:  # noqa: BLE001 - any reason is better than none
                    exc = err
                if exc is None:
                    exc = InstrumentError(f"{what or 'the operation'} failed.")
            with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
                loop.call_soon_threadsafe(_settle, future, exc)

        status.add_callback(finished)
        try:
            exc = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise InstrumentTimeout(
                f"{what or 'the operation'} did not finish within {timeout:g} s.",
                fix="check the instrument; the IOC log names what it was doing.",
            ) from None
        if exc is not None:
            raise exc

    def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)


def _settle(future: asyncio.Future, exc: BaseException | None) -> None:
    if not future.done():
        future.set_result(exc)


class Pusher:
    """Values from any thread, written to their channels from the loop, newest value wins."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[Any, Any, float | None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._scheduled = False
        self.written = 0
        """Values written to PVs so far (for the benchmark and tests)."""

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._wake = asyncio.Event()

    def push(self, channel: Any, value: Any, timestamp: float | None = None) -> None:
        """Thread-safe: remember ``value`` for ``channel`` and wake the loop's writer."""
        loop = self._loop
        with self._lock:
            self._pending[id(channel)] = (channel, value, timestamp)
            if self._scheduled or loop is None:
                return
            self._scheduled = True
        try:
            loop.call_soon_threadsafe(self._wake_up)
        except RuntimeError:  # the loop has closed: the IOC is gone, nobody to tell
            pass

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """The writer task: runs until cancelled."""
        assert self._wake is not None, "attach() the pusher to the loop first"
        while True:
            await self._wake.wait()
            self._wake.clear()
            with self._lock:
                batch, self._pending = self._pending, {}
                self._scheduled = False
            for channel, value, timestamp in batch.values():
                # verify_value=False: a value the device reports is published as it is; the
                # channel's putter (a client's write to the device) must not run for it.
                extra = {} if timestamp is None else {"timestamp": timestamp}
                try:
                    await channel.write(value, verify_value=False, **extra)
                    self.written += 1
                except Exception as exc:  # noqa: BLE001 - one bad value must not stop the others
                    log.warning("could not publish %r on %s: %s", value, channel.pvname, exc)
