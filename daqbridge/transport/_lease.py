"""The lease lock every shared resource (serial port, VISA session) is guarded by.

Why not a plain ``threading.RLock``:

* fairness: an RLock lets a tight polling loop re-take the port before a waiting driver wakes,
  starving it. Waiters here queue in arrival order; newcomers may overtake the oldest waiter only
  during a short window (2 ms), after which the releasing holder hands the lease straight to it,
  so nobody waits longer than the holds ahead of it plus that window and one hold.
* diagnosis: a timeout must say who holds the resource, since when, and who else waits, so the
  lock knows owners by name, not only threads.
* deadlock freedom: every resource has a rank; asking for a lower (or equal) rank while holding a
  higher one raises :class:`LockOrderError` at once instead of hanging a lab at 2 a.m.
* asyncio: coroutines wait for a lease on the event loop (a future resolved by the releasing
  thread) instead of parking a worker thread, so N waiting tasks cost no threads at all.

Ownership is per *actor*: the current asyncio task when called inside one, else the thread. The
actor's record (a list of the locks it holds) doubles as the ownership token, so re-entering a
lease in the same thread or task costs one identity check.
"""

from __future__ import annotations

import asyncio
import math
import threading
import weakref
from collections import deque
from time import perf_counter

from daqbridge.errors import DaqbridgeError, LockOrderError, ResourceError, ResourceTimeout
from daqbridge.transport._stats import TimingSummary

_get_running_loop = asyncio._get_running_loop  # C fast path; public get_running_loop() raises
_current_task = asyncio.current_task

_thread_records = threading.local()
_task_records: weakref.WeakKeyDictionary[asyncio.Task, list[LeaseLock]] = (
    weakref.WeakKeyDictionary()
)
_task_records_lock = threading.Lock()


def actor_record() -> list[LeaseLock]:
    """The list of leases held by the calling task (inside asyncio) or thread."""
    loop = _get_running_loop()
    if loop is not None:
        task = _current_task(loop)
        if task is not None:
            record = _task_records.get(task)
            if record is None:
                with _task_records_lock:
                    record = _task_records.setdefault(task, [])
            return record
    try:
        return _thread_records.record
    except AttributeError:
        record = _thread_records.record = []
        return record


def held_resources() -> list[tuple[str, int]]:
    """(resource, rank) of every lease the calling thread or task holds, outermost first.

    Re-entered leases appear once per nesting level. Meant for diagnostics and assertions.
    """
    return [(lock.resource, lock.rank) for lock in actor_record()]


def check_timeout(value: float, what: str, resource: str) -> float:
    """Reject waits that could hang (negative, NaN, infinite) with a message naming the port."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ResourceError(
            f"{what} must be a number of seconds, got {value!r}.",
            resource=resource,
            fix="pass a finite timeout in seconds, e.g. timeout=1.0.",
        ) from None
    if not (value >= 0.0) or math.isinf(value):
        raise ResourceError(
            f"{what} must be finite and >= 0 s, got {value!r}: every wait in daqbridge has a "
            "deadline.",
            resource=resource,
            fix="pass a finite timeout in seconds, e.g. timeout=1.0.",
        )
    return value


def check_owner(owner: object, resource: str) -> str:
    if not isinstance(owner, str) or not owner:
        raise ResourceError(
            f"a lease needs an owner name (a non-empty str), got {owner!r}.",
            resource=resource,
            fix="pass the instrument or caller name, e.g. owner='esp300'; it shows up in "
            "timeout messages and the status page.",
        )
    return owner


BARGING_WINDOW = 0.002
"""How long (s) the oldest waiter may be overtaken before the lease is handed to it directly.

Strict hand-off costs a thread wake-up per lease: 8 threads hammering one pty port reached
about 0.6-0.7 of single-thread throughput on a loaded 2-core machine. Letting an already running
thread re-take a free lease while the oldest waiter has been the oldest for less than this
window keeps contended throughput near uncontended, and a couple of milliseconds are invisible
next to instrument transactions. The scheme follows Go's sync.Mutex (normal and starvation
modes), with the window counted from reaching the head of the queue so that, under saturation,
the lease goes round the contenders in bursts instead of degrading to one hand-off per lease.
0 gives strict FIFO hand-off."""


class _Waiter:
    __slots__ = (
        "record",
        "owner",
        "enqueued",
        "head_since",
        "granted",
        "signalled",
        "passed_over",
        "error",
        "gate",
        "loop",
        "future",
    )

    def __init__(self, record: list[LeaseLock], owner: str, enqueued: float) -> None:
        self.record = record
        self.owner = owner
        self.enqueued = enqueued
        self.head_since = enqueued  # when it became the oldest waiter (set again then)
        self.granted = False  # handed over directly: the waiter owns the lease when it wakes
        self.signalled = False  # a wake-up is on its way (no need to send another)
        self.passed_over = False  # woke for a free lease but a newcomer took it first
        self.error: BaseException | None = None
        self.gate: threading.Lock | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.future: asyncio.Future | None = None


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _release_gate(gate: threading.Lock) -> None:
    try:
        gate.release()
    except RuntimeError:
        pass  # already open: the waiter has a wake-up pending and will re-check anyway


class LeaseLock:
    """Exclusive, fair, re-entrant (per thread or task), ranked, with deadlines.

    Fairness: waiters queue in arrival order and only the oldest may take a free lease. A thread
    that is already running may take a free lease ahead of the queue only while the oldest waiter
    has been the oldest for less than ``barging_window``; after that, release hands the lease
    straight to it. So the oldest waiter gets the lease within one window plus one hold, and a
    waiter with k others ahead within k+1 times that: under saturation the lease goes round all
    contenders in bursts of about one window, and no one starves.

    The oldest waiter is woken once when the lease falls free; if a newcomer beat it, it sleeps
    out the rest of its window instead of being woken (for nothing) by every release, which on
    a busy machine would cost a context switch per lease, the very cost barging avoids.

    Every wake-up re-checks the state under the mutex, so extra wake-ups are harmless and none
    can be lost: a waiter decides to sleep under the mutex, and anyone changing the state after
    that opens its gate (or resolves its future).
    """

    def __init__(self, resource: str, rank: int, *, barging_window: float = BARGING_WINDOW):
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise ResourceError(
                f"rank must be an int, got {rank!r}.",
                resource=resource,
                fix="use the default rank or an integer; lower ranks are taken first.",
            )
        self.resource = resource
        self.rank = rank
        self.barging_window = barging_window
        self._mutex = threading.Lock()
        self._holder: list[LeaseLock] | None = None  # the holder's actor record
        self._owner: str | None = None
        self._since = 0.0
        self._depth = 0
        self._queue: deque[_Waiter] = deque()
        self._closed: BaseException | None = None
        self.wait_times = TimingSummary()
        self.hold_times = TimingSummary()
        self.leases = 0

    # --- acquire ---------------------------------------------------------------------------------

    def _check_order(self, record: list[LeaseLock]) -> None:
        for held in record:
            if held is not self and held.rank >= self.rank:
                raise LockOrderError(self.resource, self.rank, held.resource, held.rank)

    def _try_take_locked(self, record: list[LeaseLock], owner: str, now: float) -> bool:
        if self._closed is not None:
            raise self._closed
        if self._holder is None:
            queue = self._queue
            if not queue or now - queue[0].head_since < self.barging_window:
                self._grant_locked(record, owner, now, now)
                return True
        return False

    def _settle_locked(self, waiter: _Waiter, record: list[LeaseLock]) -> bool:
        """After a wake-up: does the waiter own the lease now? Raises the close error if any."""
        waiter.signalled = False
        if waiter.granted:
            return True
        if waiter.error is not None:
            raise waiter.error
        queue = self._queue
        if queue and queue[0] is waiter:
            if self._holder is None:
                now = perf_counter()
                queue.popleft()
                if queue:
                    queue[0].head_since = now
                self._grant_locked(record, waiter.owner, waiter.enqueued, now)
                return True
            waiter.passed_over = True
        return False

    def _nap(self, waiter: _Waiter, deadline: float) -> float:
        """How long the waiter may sleep now: to its deadline, or to the end of its window."""
        now = perf_counter()
        until = deadline
        if waiter.passed_over:
            until = min(deadline, waiter.head_since + self.barging_window)
            if until <= now:
                until = deadline  # window over: release hands the lease over and wakes us
        return until - now

    def _give_up_locked(self, waiter: _Waiter) -> tuple | None:
        """Leave the queue (timeout/cancel); wake the next waiter if the lease is free."""
        queue = self._queue
        was_head = queue[0] is waiter
        queue.remove(waiter)
        if was_head and queue:
            queue[0].head_since = perf_counter()
        if self._holder is None and queue:
            return self._signal_locked(self._queue[0])
        return None

    def acquire(self, owner: str, timeout: float, record: list[LeaseLock]) -> float | None:
        """Take the lease for the actor owning ``record``; block at most ``timeout`` seconds.

        ``record`` is :func:`actor_record` of the caller. Returns the time the caller started
        waiting (``perf_counter``), or None when it already held the lease (re-entry), so the port
        can tell which waiters queued before a failed reopen.
        """
        if self._holder is record:  # only this actor can change _holder away from itself
            self._depth += 1
            record.append(self)
            return None
        if record:
            self._check_order(record)
        now = perf_counter()
        with self._mutex:
            if self._try_take_locked(record, owner, now):
                record.append(self)
                return now
            waiter = _Waiter(record, owner, now)
            gate = waiter.gate = threading.Lock()
            gate.acquire()
            self._queue.append(waiter)
        deadline = now + timeout
        try:
            while True:
                nap = self._nap(waiter, deadline)
                if nap > 0:
                    gate.acquire(timeout=nap)
                wake = None
                with self._mutex:
                    if self._settle_locked(waiter, record):
                        break
                    timed_out = perf_counter() >= deadline
                    if timed_out:
                        wake = self._give_up_locked(waiter)
                        error = self._timeout_error(owner, timeout)
                if timed_out:
                    if wake is not None:
                        _deliver(wake)
                    raise error
        except BaseException as exc:
            if not isinstance(exc, DaqbridgeError):
                self._abandon(waiter)  # e.g. KeyboardInterrupt: never leave a ghost in the queue
            raise
        record.append(self)
        return now

    async def acquire_async(
        self, owner: str, timeout: float, record: list[LeaseLock]
    ) -> float | None:
        """Like :meth:`acquire`, but waits on the event loop; the caller's task owns the lease."""
        if self._holder is record:
            self._depth += 1
            record.append(self)
            return None
        if record:
            self._check_order(record)
        now = perf_counter()
        loop = asyncio.get_running_loop()
        with self._mutex:
            if self._try_take_locked(record, owner, now):
                record.append(self)
                return now
            waiter = _Waiter(record, owner, now)
            waiter.loop = loop
            future = waiter.future = loop.create_future()
            self._queue.append(waiter)
        deadline = now + timeout
        try:
            while True:
                nap = self._nap(waiter, deadline)
                if nap > 0:
                    # asyncio.wait, not wait_for: on Python 3.11 wait_for returns the result and
                    # drops a cancel that arrives in the instant the lease is handed over, so a
                    # cancelled poll (a stopped move) would go on holding and polling the port.
                    await asyncio.wait((future,), timeout=nap)
                wake = None
                with self._mutex:
                    if self._settle_locked(waiter, record):
                        break
                    timed_out = perf_counter() >= deadline
                    if timed_out:
                        wake = self._give_up_locked(waiter)
                        error = self._timeout_error(owner, timeout)
                    else:
                        future = waiter.future = loop.create_future()
                if timed_out:
                    if wake is not None:
                        _deliver(wake)
                    raise error
        except BaseException as exc:
            if not isinstance(exc, DaqbridgeError):
                self._abandon(waiter)  # cancelled or interrupted while waiting
            raise
        record.append(self)
        return now

    def _abandon(self, waiter: _Waiter) -> None:
        """Leave the queue, or pass on a lease that was handed over in the same instant."""
        wake = None
        with self._mutex:
            owns = waiter.granted
            if not owns and waiter in self._queue:
                wake = self._give_up_locked(waiter)
        if wake is not None:
            _deliver(wake)
        if owns:
            self.release(None)

    def _grant_locked(self, record: list[LeaseLock], owner: str, waited_from: float, now: float):
        self._holder = record
        self._owner = owner
        self._since = now
        self._depth = 1
        self.wait_times.add(now - waited_from)

    def _timeout_error(self, owner: str, timeout: float) -> ResourceTimeout:
        now = perf_counter()
        held_for = now - self._since if self._owner is not None else None
        return ResourceTimeout(
            self.resource,
            owner=owner,
            holder=self._owner,
            held_for=held_for,
            waiters=[w.owner for w in self._queue],
            timeout=timeout,
        )

    # --- release ---------------------------------------------------------------------------------

    def release(self, record: list[LeaseLock] | None) -> None:
        """Give the lease up (one nesting level); wake or hand over to the oldest waiter.

        ``record`` is the holder's actor record to update, or None when the caller already did
        (async leases finish their last I/O on a worker thread after the task moved on).
        """
        if record is not None:
            record.remove(self)
        if self._depth > 1:
            self._depth -= 1
            return
        now = perf_counter()
        wake = None
        with self._mutex:
            if self._holder is None:
                return  # released twice (a bug in the caller); never corrupt the queue
            self.hold_times.add(now - self._since)
            self.leases += 1
            queue = self._queue
            while queue and queue[0].loop is not None and queue[0].loop.is_closed():
                queue.popleft()  # its event loop is gone: a grant would never be released
                if queue:
                    queue[0].head_since = now
            if queue and now - queue[0].head_since >= self.barging_window:
                head = queue.popleft()  # overtaken long enough: hand the lease over
                if queue:
                    queue[0].head_since = now
                head.granted = True
                self._grant_locked(head.record, head.owner, head.enqueued, now)
                wake = self._signal_locked(head)
            else:
                self._holder = None
                self._owner = None
                self._depth = 0
                if queue and not queue[0].passed_over:
                    wake = self._signal_locked(queue[0])
        if wake is not None:
            _deliver(wake)

    @staticmethod
    def _signal_locked(waiter: _Waiter) -> tuple | None:
        if waiter.signalled:
            return None
        waiter.signalled = True
        # Captured under the mutex: an async waiter swaps in a new future each time it sleeps.
        if waiter.gate is not None:
            return (waiter.gate, None)
        return (waiter.loop, waiter.future)

    # --- shutdown and status ---------------------------------------------------------------------

    def close(self, error: DaqbridgeError) -> None:
        """Refuse new leases and fail every waiter now with ``error``; the holder keeps it."""
        with self._mutex:
            self._closed = error
            wakes = []
            for w in self._queue:
                w.error = error
                w.signalled = False  # this news must get through
                wakes.append(self._signal_locked(w))
            self._queue.clear()
        for wake in wakes:
            _deliver(wake)

    def reopen(self) -> None:
        with self._mutex:
            self._closed = None

    @property
    def holder(self) -> str | None:
        return self._owner

    @property
    def is_held(self) -> bool:
        return self._holder is not None

    def snapshot(self) -> dict:
        """Holder, since when, and waiters, consistent with each other."""
        with self._mutex:
            now = perf_counter()
            return {
                "holder": self._owner,
                "held_for": now - self._since if self._owner is not None else None,
                "depth": self._depth,
                "waiters": [w.owner for w in self._queue],
                "waiting_for": [now - w.enqueued for w in self._queue],
                "leases": self.leases,
                "wait": self.wait_times.summary(),
                "hold": self.hold_times.summary(),
            }


def _deliver(wake: tuple) -> None:
    target, future = wake
    if future is None:
        _release_gate(target)
        return
    try:
        target.call_soon_threadsafe(_resolve, future)
    except RuntimeError:
        pass  # the waiter's loop is closed: nobody is left to wake
