"""Conventions every native device follows, in one place.

Why these pieces exist:

* ``InstrumentWorker``: ophyd v1 calls ``read()``/``set()`` on the RunEngine's event loop, and a
  blocking serial query there stalls every other device for its whole duration (STACK_NOTES: a
  50 ms read stalls the loop 48 ms). Each instrument gets one worker thread that performs its wire
  I/O; device methods hand work to it and return ophyd statuses, so the loop never waits on a port.
  One thread per instrument also serialises an instrument's own calls without a lock, while the
  port lease (daqbridge.transport) serialises traffic between instruments sharing a port.
* ``InstrumentSignal``: a soft signal whose value the device updates from its worker, and whose
  ``describe()`` carries units, precision, limits and a source naming the instrument and port,
  because the catalog and BestEffortCallback read those from the descriptor. It is read-only
  (ophyd's ``write_access`` False) unless its class says ``writable = True``: front ends (the
  IOC) decide who may write a signal from that attribute, never from class names, and a new
  driver's readings cannot become writable by accident.
* ``check_wire_text`` / ``check_number``: values are validated before they reach the wire, so a
  string carrying a terminator or a second command (``"1PA10\\r\\n1PA-50"``) can never be sent.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

from ophyd import Kind, Signal
from ophyd.status import DeviceStatus, MoveStatus, Status, StatusBase
from ophyd.utils import InvalidState, StatusTimeoutError

from daqbridge.errors import (
    ConfigError,
    DaqbridgeError,
    InstrumentError,
    InstrumentTimeout,
    ValueRejected,
)

T = TypeVar("T")

#: Characters that end or separate commands on the instruments daqbridge drives.
FORBIDDEN_IN_COMMANDS = ("\r", "\n", ";", "\x00")


class InstrumentWorker:
    """The one thread that talks to an instrument, so nothing else (the RunEngine loop) has to."""

    def __init__(self, instrument: str) -> None:
        self.instrument = instrument
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"daqbridge-{instrument}"
        )
        self._closed = False

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        if self._closed:
            raise InstrumentError(
                "the device is closed; its worker thread has stopped.",
                instrument=self.instrument,
                fix="build the device again (restart the runtime).",
            )
        return self._executor.submit(fn, *args, **kwargs)

    def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        timeout: float = 10.0,
        resource: str | None = None,
        **kwargs: Any,
    ) -> T:
        """Run ``fn`` on the worker and wait for it: for connect-time work, never inside a plan.

        InstrumentTimeout is a TimeoutError, as is the future's own timeout: a reply timeout
        raised inside ``fn`` reaches the caller as it is (naming the query), not as "the worker
        took too long".
        """
        future = self.submit(fn, *args, **kwargs)
        try:
            return future.result(timeout=timeout)
        except TimeoutError as exc:
            if future.done():
                raise  # fn's own timeout (an InstrumentTimeout naming the query): keep it
            raise InstrumentTimeout(
                f"{getattr(fn, '__name__', 'the request')} did not finish within {timeout:g} s.",
                instrument=self.instrument,
                resource=resource,
                fix="check that the instrument is powered and connected; the request may still "
                "be queued behind a long operation.",
            ) from exc

    def status(
        self,
        fn: Callable[[], Any],
        *,
        obj: Any = None,
        timeout: float | None = None,
        settle_time: float = 0.0,
    ) -> DeviceStatus | Status:
        """Run ``fn`` on the worker; the status finishes when it returns and fails if it raises.

        The exception placed on the status is the daqbridge error itself, so the RunEngine's
        FailedStatus carries the instrument's own message.
        """
        status: DeviceStatus | Status
        if obj is not None:
            status = DeviceStatus(obj, timeout=timeout, settle_time=settle_time)
        else:
            status = Status(timeout=timeout, settle_time=settle_time)

        def work() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - every failure must reach the status
                if not status.done:
                    status.set_exception(as_instrument_error(exc, self.instrument))
            else:
                if not status.done:
                    status.set_finished()

        self.submit(work)
        return status

    def shutdown(self, wait: bool = True) -> None:
        self._closed = True
        self._executor.shutdown(wait=wait, cancel_futures=True)


def as_instrument_error(
    exc: BaseException, instrument: str, resource: str | None = None
) -> BaseException:
    """A daqbridge error for ``exc``, naming instrument and port (daqbridge errors pass as is)."""
    if isinstance(exc, DaqbridgeError):
        return exc
    if isinstance(exc, Exception):
        err = InstrumentError(
            f"{type(exc).__name__}: {exc}", instrument=instrument, resource=resource
        )
        err.__cause__ = exc
        return err
    return exc


def finish_status(status: StatusBase) -> None:
    """Mark a status done, unless something (a stop, a timeout) already settled it."""
    with contextlib.suppress(InvalidState):
        status.set_finished()


def fail_status(status: StatusBase, exc: BaseException) -> None:
    """Fail a status, unless something (a stop, a timeout) already settled it."""
    with contextlib.suppress(InvalidState):
        status.set_exception(exc)


class InstrumentSignal(Signal):
    """A signal whose value the device refreshes from its worker thread.

    ``units``, ``precision``, ``limits`` and ``source`` end up in the event descriptor, which is
    what tables, plots and the catalog show the scientist. ``writable`` (the class's, or given
    per signal when it depends on the configuration) becomes ophyd's ``write_access``.
    """

    writable: ClassVar[bool] = False
    """True for settings (a set commands the instrument), False for what it measures."""

    def __init__(
        self,
        *,
        units: str | None = None,
        precision: int | None = None,
        limits: tuple[float, float] | None = None,
        source: str | None = None,
        kind: Kind | str = Kind.normal,
        writable: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(kind=kind, **kwargs)
        self._metadata["write_access"] = type(self).writable if writable is None else writable
        self._units = units
        self._precision = precision
        self._limits = limits
        self._source = source

    @property
    def source_name(self) -> str:
        return self._source or f"daqbridge:{self.name}"

    def describe(self) -> dict[str, dict[str, Any]]:
        desc = super().describe()
        entry = desc[self.name]
        if self._units is not None:
            entry["units"] = self._units
        if self._precision is not None:
            entry["precision"] = self._precision
        if self._limits is not None:
            entry["limits"] = {"control": {"low": self._limits[0], "high": self._limits[1]}}
        return desc

    def update(self, value: Any, timestamp: float | None = None) -> None:
        """Store a value read from the instrument (fires subscriptions: progress bars, monitors)."""
        self.put(value, timestamp=timestamp, force=True)


def check_wire_text(value: str, *, instrument: str, what: str) -> str:
    """Refuse text that would smuggle a terminator or a second command onto the wire."""
    if not isinstance(value, str):
        raise ValueRejected(
            f"{what} must be text, got {type(value).__name__} {value!r}.",
            instrument=instrument,
            value=value,
        )
    bad = [c for c in FORBIDDEN_IN_COMMANDS if c in value]
    if bad or not value.isprintable():
        raise ValueRejected(
            f"{what} {value!r} contains a command terminator or separator {bad or 'control'!r}; "
            "it would send a second command to the instrument.",
            instrument=instrument,
            value=value,
            fix="pass a single value without CR, LF, ';' or control characters.",
        )
    return value


def positive_setting(value: Any, key: str, name: str, *, zero: bool = False) -> float:
    """A constructor's timing or tolerance argument: a finite number > 0 (>= 0 with ``zero``),
    or a ConfigError naming the key and the instrument, before any byte is sent."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value >= 0 if zero else value > 0)
    )
    if not ok:
        raise ConfigError(
            f"{key} must be a finite number {'>= 0' if zero else '> 0'}, got {value!r}.",
            key=key,
            instrument=name,
        )
    return float(value)


def check_number(
    value: Any,
    *,
    instrument: str,
    what: str,
    low: float | None = None,
    high: float | None = None,
    integer: bool = False,
) -> float:
    """Validate a number against its limits before any byte is sent; the error names the limit."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            import numpy as np

            if isinstance(value, np.generic) and np.issubdtype(type(value), np.number):
                value = value.item()
            else:
                raise TypeError
        except TypeError:
            raise ValueRejected(
                f"{what} must be a number, got {type(value).__name__} {value!r}.",
                instrument=instrument,
                value=value,
            ) from None
    if not math.isfinite(value):
        raise ValueRejected(
            f"{what} must be finite, got {value!r}.", instrument=instrument, value=value
        )
    if integer and int(value) != value:
        raise ValueRejected(
            f"{what} must be a whole number, got {value!r}.", instrument=instrument, value=value
        )
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueRejected(
            f"{what} {value!r} is outside the limits [{low}, {high}].",
            instrument=instrument,
            value=value,
            limit=(low, high),
            fix=f"choose a value between {low} and {high}, or change the limits in the profile.",
        )
    return int(value) if integer else float(value)


class Poller:
    """Calls ``fn`` every ``interval`` seconds on its own thread until stopped.

    Positioners use it to refresh the readback while moving, so the progress bar moves and
    ``bps.mv`` sees the motion, without the RunEngine loop polling anything.
    """

    def __init__(self, fn: Callable[[], bool], interval: float, name: str) -> None:
        self._fn = fn
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Poller:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if not self._fn():
                return

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)


class SettingSignal(InstrumentSignal):
    """A setting whose ``set`` its device carries out (and verifies) on the worker thread.

    ``apply`` names the method of the owning device (``owner="parent"`` or ``"root"``) that does
    it; ``put(value, force=True)`` (what ``update`` uses) only stores a value read back.
    """

    writable = True

    def __init__(self, *, apply: str, owner: str = "parent", **kwargs: Any) -> None:
        self._apply = apply
        self._owner = owner
        super().__init__(**kwargs)

    def set(
        self,
        value: Any,
        *,
        timeout: float | None = None,
        settle_time: float | None = None,
        **kwargs: Any,
    ) -> StatusBase:
        return getattr(getattr(self, self._owner), self._apply)(value)

    def put(self, value: Any, *, force: bool = False, **kwargs: Any) -> None:
        if force:
            super().put(value, force=True, **kwargs)
            return
        self.set(value).wait(timeout=kwargs.get("timeout"))


class OwnMoveStatus(MoveStatus):
    """A MoveStatus that stops only its own move, and only when the caller gave up (timeout).

    ophyd's MoveStatus stops its positioner whenever it fails. Our drivers fail a move only once
    the motion has ended or been stopped, and a stop issued then from a status callback could land
    on the NEXT move; the positioner's ``_stop_move(status)`` ignores a status that is not current.
    """

    def _handle_failure(self) -> None:
        if isinstance(self._exception, StatusTimeoutError):
            self.pos._stop_move(self)
