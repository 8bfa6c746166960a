"""Calling ophyd-async devices from synchronous code: the baseline's thread, the IOC's threads,
the ``daqbridge shadow`` command, a scientist's prompt.

Why: an ophyd-async device lives on the event loop it was connected on (the RunEngine's: its
leases, tasks and subscriptions belong to that loop), and its ``read()``, ``describe()``,
``get_value()`` are coroutines. Code that is not a plan cannot ``await`` them there; it hands
the work to that loop and waits for the answer, bounded, on its own thread. Called on the loop
itself that wait could never end, so it is refused with the way out (``await`` it, or inside a
plan ``yield from bps.rd(...)``).

The loop is the one the device was connected on (:class:`WireDevice` records it), else
bluesky's event loop (the RunEngine's, ``bluesky.run_engine.get_bluesky_event_loop``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from daqbridge.errors import DaqbridgeError, InstrumentError, InstrumentTimeout

T = TypeVar("T")

__all__ = [
    "CallTimeout",
    "call_sync",
    "device_loop",
    "instrument_error",
    "is_async_device",
    "maybe_sync",
]


class CallTimeout(InstrumentTimeout):
    """:func:`call_sync` gave up waiting (its ``timeout``); the work was cancelled. An error the
    work raised itself (a reply timeout of the instrument) is raised as it is, never as this."""


def is_async_device(obj: Any) -> bool:
    """True for an ophyd-async device or signal (its reads are coroutines)."""
    from ophyd_async.core import Device

    return isinstance(obj, Device)


def device_loop(device: Any = None) -> asyncio.AbstractEventLoop | None:
    """The running loop ``device`` (or one of its parents) was connected on, else bluesky's
    (the RunEngine's), else None."""
    node = device
    while node is not None:
        loop = getattr(node, "connected_loop", None)
        if loop is not None and not loop.is_closed() and loop.is_running():
            return loop
        node = getattr(node, "parent", None)
    from bluesky.run_engine import get_bluesky_event_loop

    loop = get_bluesky_event_loop()
    if loop is None or loop.is_closed() or not loop.is_running():
        return None
    return loop


def call_sync(
    work: Awaitable[T] | Callable[[], Awaitable[T] | T],
    *,
    device: Any = None,
    timeout: float | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> T:
    """Run ``work`` on the device's loop and return its result, from any other thread.

    ``work``: an awaitable, or a function called ON the loop (use one for what must be created
    there: ``lambda: meter.wavelength.set(633)`` makes its status on the loop). ``timeout``
    bounds the wait (InstrumentTimeout naming the device); the work is cancelled then.
    ``loop``: run there instead (the runtime connects its devices on its RunEngine's loop).
    With no loop at all (a device never connected, no RunEngine: an offline preview of what a
    driver would describe), the work runs on a short-lived loop of its own.
    """
    if loop is None:
        loop = device_loop(device)
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is not None and running is loop:
        if inspect.iscoroutine(work):
            work.close()
        raise InstrumentError(
            "a synchronous call to a native device was made on the RunEngine's own event loop, "
            "where waiting for it would never end.",
            instrument=getattr(device, "name", None) or None,
            fix="await it there (async code), or inside a plan read it with "
            "bluesky.plan_stubs.rd / trigger_and_read.",
        )

    async def on_loop() -> T:
        try:
            result = work() if callable(work) and not inspect.isawaitable(work) else work
            if inspect.isawaitable(result):
                result = await result
        except TimeoutError as exc:
            # Here, on the loop: crossing to this thread, asyncio recreates a plain
            # TimeoutError from its arguments only, and the instrument's error behind it is lost.
            _reraise(exc)
        return result  # type: ignore[return-value]

    if loop is None:
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="daqbridge-sync") as ex:
            future = ex.submit(asyncio.run, on_loop())
    else:
        future = asyncio.run_coroutine_threadsafe(on_loop(), loop)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError as exc:
        if future.done():  # the work's own timeout (InstrumentTimeout is a TimeoutError)
            _reraise(exc)
        future.cancel()
        raise CallTimeout(
            f"no answer within {timeout:g} s.",
            instrument=getattr(device, "name", None) or None,
            fix="check that the instrument is powered and connected, and that no plan holds "
            "its port.",
        ) from None
    except Exception as exc:
        _reraise(exc)


def _reraise(exc: BaseException) -> None:
    """Raise ``exc``, or the instrument's error behind it (:func:`instrument_error`)."""
    error = instrument_error(exc)
    if error is exc:
        raise exc
    raise error from None


def instrument_error(exc: BaseException) -> BaseException:
    """The instrument's own error behind ophyd-async's ``TimeoutError(source)``.

    ophyd-async bounds every signal read and set and turns any TimeoutError raised inside into
    ``TimeoutError(<source>) from <error>``; an :class:`InstrumentTimeout` (a TimeoutError: no
    reply to ``D?``) would then read as a bare source name. Its words (instrument, port, fix)
    are the cause: shown instead. Anything else is returned as it is.
    """
    cause = exc.__cause__
    if (
        isinstance(exc, TimeoutError)
        and not isinstance(exc, DaqbridgeError)
        and isinstance(cause, DaqbridgeError)
    ):
        return cause
    return exc


def maybe_sync(result: Any, *, device: Any = None, timeout: float | None = None) -> Any:
    """``result`` itself, or for an awaitable (an ophyd-async ``read()``) what it returns."""
    if inspect.isawaitable(result):
        return call_sync(result, device=device, timeout=timeout)
    return result
