"""Broadcast of measurements from instruments to any number of subscribers.

The one rule: the instrument side never waits for a subscriber. Each subscriber has its own bounded
queue; when it is full the OLDEST queued measurement is dropped and counted (a live display or a
monitor wants the freshest value, and a stalled consumer that wakes up should not first chew
through seconds of stale data). ``publish`` costs O(number of subscribers) and takes only short,
uncontended locks (never one a consumer holds while it works).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from daqbridge.legacy._measurement import Measurement

log = logging.getLogger("daqbridge.legacy.distributor")

DEFAULT_MAXSIZE = 1000

Callback = Callable[[Measurement], Any]


class Subscription:
    """One subscriber's end of the distributor: a bounded queue, and optionally a delivery thread.

    With a callback, measurements are delivered on the subscription's own thread (so a slow
    callback delays only itself). Without one, the owner takes them with ``get`` / ``drain``.
    """

    def __init__(
        self,
        distributor: DataDistributor,
        name: str,
        maxsize: int,
        callback: Callback | None,
        instrument_ids: frozenset[str] | None,
        channels: frozenset[str] | None,
    ) -> None:
        self.name = name
        self.maxsize = maxsize
        self.callback = callback
        self.instrument_ids = instrument_ids
        self.channels = channels
        self._distributor = distributor
        self._queue: deque[Measurement] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self.dropped = 0
        """Measurements discarded because this subscriber's queue was full."""
        self.delivered = 0
        """Measurements handed to the callback or taken with get/drain."""
        self.errors = 0
        """Callback calls that raised (logged; delivery continues)."""
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None
        if callback is not None:
            self._thread = threading.Thread(
                target=self._deliver_forever, name=f"legacy-subscriber-{name}", daemon=True
            )
            self._thread.start()

    # --- publisher side -------------------------------------------------------------------

    def _wants(self, m: Measurement) -> bool:
        return (self.instrument_ids is None or m.instrument_id in self.instrument_ids) and (
            self.channels is None or m.channel in self.channels
        )

    def _offer(self, m: Measurement) -> None:
        with self._cond:
            if self._closed:
                return
            if len(self._queue) >= self.maxsize:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(m)
            self._cond.notify()

    # --- consumer side --------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Measurement:
        """The oldest queued measurement; raises ``queue.Empty`` after ``timeout`` seconds."""
        self._require_queue_mode("get")
        with self._cond:
            if not self._cond.wait_for(lambda: self._queue or self._closed, timeout):
                raise queue.Empty(f"subscription {self.name!r}: nothing within {timeout} s")
            if not self._queue:
                raise queue.Empty(f"subscription {self.name!r} is closed")
            self.delivered += 1
            return self._queue.popleft()

    def drain(self, max_items: int | None = None) -> list[Measurement]:
        """Everything queued now (up to ``max_items``), without waiting."""
        self._require_queue_mode("drain")
        with self._cond:
            n = len(self._queue) if max_items is None else min(max_items, len(self._queue))
            items = [self._queue.popleft() for _ in range(n)]
            self.delivered += n
            return items

    def qsize(self) -> int:
        with self._cond:
            return len(self._queue)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = 1.0) -> None:
        """Stop receiving; queued measurements are discarded. Same as ``unsubscribe``."""
        self._distributor.unsubscribe(self, timeout=timeout)

    def _shutdown(self, timeout: float) -> None:
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "mode": "callback" if self.callback is not None else "queue",
                "queued": len(self._queue),
                "maxsize": self.maxsize,
                "delivered": self.delivered,
                "dropped": self.dropped,
                "errors": self.errors,
                "last_error": self.last_error,
                "closed": self._closed,
            }

    def _require_queue_mode(self, what: str) -> None:
        if self.callback is not None:
            raise RuntimeError(
                f"subscription {self.name!r} delivers to a callback; {what}() is only for "
                "subscriptions made without one"
            )

    def _deliver_forever(self) -> None:
        assert self.callback is not None
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if self._closed:
                    return
                batch = list(self._queue)
                self._queue.clear()
            for m in batch:
                if self._closed:
                    return
                try:
                    self.callback(m)
                except Exception as exc:  # a subscriber bug must not stop its own delivery
                    self.errors += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    if self.errors == 1 or self.errors % 1000 == 0:
                        log.exception("subscriber %r raised on %s", self.name, m.channel)
                finally:
                    self.delivered += 1

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Subscription {self.name!r} queued={self.qsize()} dropped={self.dropped}>"


class DataDistributor:
    """Fan-out of measurements to subscribers, each with its own bounded queue."""

    def __init__(self, default_maxsize: int = DEFAULT_MAXSIZE) -> None:
        if default_maxsize < 1:
            raise ValueError(f"default_maxsize must be >= 1, got {default_maxsize!r}")
        self.default_maxsize = default_maxsize
        self._lock = threading.Lock()
        # Copy-on-write tuple: publish reads it without taking the lock.
        self._subscriptions: tuple[Subscription, ...] = ()
        self._count_lock = threading.Lock()
        self._published = 0
        self._names = itertools.count(1)

    def subscribe(
        self,
        callback: Callback | None = None,
        *,
        maxsize: int | None = None,
        name: str | None = None,
        instrument_ids: Iterable[str] | None = None,
        channels: Iterable[str] | None = None,
    ) -> Subscription:
        """Start receiving measurements (optionally only from some instruments / channels)."""
        size = self.default_maxsize if maxsize is None else maxsize
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"subscription maxsize must be an integer >= 1, got {maxsize!r}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable or None, got {callback!r}")
        if isinstance(instrument_ids, str) or isinstance(channels, str):
            raise TypeError("instrument_ids and channels take a list of names, not one string")
        sub_name = name or f"subscriber-{next(self._names)}"
        sub = Subscription(
            self,
            sub_name,
            size,
            callback,
            frozenset(instrument_ids) if instrument_ids is not None else None,
            frozenset(channels) if channels is not None else None,
        )
        with self._lock:
            if any(s.name == sub_name for s in self._subscriptions):
                sub._shutdown(0)
                raise ValueError(f"a subscription named {sub_name!r} already exists")
            self._subscriptions = (*self._subscriptions, sub)
        return sub

    def unsubscribe(self, subscription: Subscription, *, timeout: float = 1.0) -> None:
        """Stop delivering to ``subscription`` (idempotent); joins its delivery thread."""
        with self._lock:
            self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)
        subscription._shutdown(timeout)

    def publish(self, measurement: Measurement) -> None:
        """Hand ``measurement`` to every interested subscriber. Never waits for any of them."""
        if not isinstance(measurement, Measurement):
            raise TypeError(f"publish takes a Measurement, got {type(measurement).__name__}")
        with self._count_lock:
            self._published += 1
        for sub in self._subscriptions:
            if sub._wants(measurement):
                sub._offer(measurement)

    def publish_many(self, measurements: Iterable[Measurement]) -> None:
        for m in measurements:
            self.publish(m)

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return self._subscriptions

    @property
    def published(self) -> int:
        """Measurements published so far."""
        return self._published

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-subscriber counters: queued, maxsize, delivered, dropped, errors."""
        return {s.name: s.stats() for s in self._subscriptions}

    def close(self, timeout: float = 1.0) -> None:
        """Unsubscribe everybody (their delivery threads end)."""
        for sub in self._subscriptions:
            self.unsubscribe(sub, timeout=timeout)
