"""Shared serial ports: one pyserial handle per physical port, used only through leases.

Two drivers that each open ``/dev/ttyUSB0`` interleave bytes; two that open the same adapter as
``/dev/ttyUSB0`` and ``/dev/serial/by-id/...`` do too, and neither notices. The pool therefore
keys ports by their real path (URLs by their string), hands every caller the same
:class:`SharedSerialPort`, and the port only talks inside a :class:`SerialLease`: exclusive,
FIFO-fair, owner-named and deadline-bound, so a whole write+read transaction is never split.

Hot path costs were measured on a pty (see benchmarks/bench_resources.py): the lease adds a few
microseconds to a ~100 us query, so drivers have no reason to bypass it.
"""

from __future__ import annotations

import asyncio
import errno
import math
import os
import select
import threading
import time
import types
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from time import perf_counter
from typing import Any

import serial

from daqbridge.errors import (
    ConfigError,
    InstrumentTimeout,
    PortUnavailable,
    ResourceError,
    SettingsConflict,
    ValueRejected,
)
from daqbridge.transport._holders import lock_holder_pid
from daqbridge.transport._lease import (
    LeaseLock,
    actor_record,
    check_owner,
    check_timeout,
)

# Simulator URLs (``sim://esp300?...``) are served by a pyserial protocol handler that lives in
# daqbridge.sim. Naming the package here is a string, not an import, so this layer stays below
# the simulators; pyserial imports the handler only when such a URL is opened.
if "daqbridge.sim" not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.append("daqbridge.sim")

SERIAL_RANK = 10
"""Default rank of serial ports: taken before VISA sessions (20) when both are needed."""

_COMPARED_DEFAULTS: dict[str, Any] = {
    "baudrate": 9600,
    "bytesize": 8,
    "parity": "N",
    "stopbits": 1,
    "rtscts": False,
    "xonxoff": False,
    "dsrdtr": False,
}
"""Line settings every sharer of a port must agree on (pyserial's defaults)."""

_OPTION_DEFAULTS: dict[str, Any] = {"write_timeout": 5.0}
"""Per-port options the first opener decides. A finite write timeout, because a device holding
CTS low would otherwise block a write (and its lease) forever."""

REOPEN_ATTEMPTS = 3
REOPEN_BACKOFF = 0.05
"""A lost port is retried 3 times, 50 then 100 ms apart: enough for a USB adapter that
re-enumerates quickly, short enough that queued callers hear the bad news within a second."""

_DRAIN_LIMIT = 1 << 20
"""drain() stops after this many bytes, so a device that streams cannot trap it forever."""


def _direct_timeout_classes() -> tuple[type, ...]:
    # These pyserial classes read ``self._timeout`` on every read and do nothing else with it, but
    # the public ``timeout`` setter re-runs tcsetattr and flock (~4 us per call on a pty). Setting
    # the attribute directly is the same behaviour without the syscalls. Unknown handler classes
    # (simulators, third-party URLs) get the public setter.
    classes: list[type] = [serial.Serial]
    try:
        from serial.urlhandler import protocol_loop, protocol_socket

        classes += [protocol_loop.Serial, protocol_socket.Serial]
    except ImportError:  # pragma: no cover - pyserial without url handlers
        pass
    return tuple(classes)


_DIRECT_TIMEOUT = _direct_timeout_classes()
_POSIX_SERIAL: type | None = getattr(serial, "serialposix", None) and serial.serialposix.Serial
_select = select.select


def is_url(name: str) -> bool:
    return "://" in name


def canonical_name(url: str) -> str:
    """The key under which a port is shared: real path for devices, the string for URLs."""
    if is_url(url):
        return url
    if os.name == "nt":  # pragma: no cover - COM ports are names, not paths
        return url.upper()
    return os.path.realpath(url)


def _normalise_settings(url: str, given: dict[str, Any]) -> tuple[dict, dict]:
    unknown = sorted(set(given) - set(_COMPARED_DEFAULTS) - set(_OPTION_DEFAULTS))
    if unknown:
        allowed = ", ".join(sorted(set(_COMPARED_DEFAULTS) | set(_OPTION_DEFAULTS)))
        raise ConfigError(
            f"unknown serial setting(s) {', '.join(unknown)} for port {url}.",
            key=unknown[0],
            fix=f"use only: {allowed}.",
        )
    settings = dict(_COMPARED_DEFAULTS)
    options = dict(_OPTION_DEFAULTS)
    for key, value in given.items():
        target = settings if key in settings else options
        target[key] = value

    def bad(key: str, allowed: str) -> ConfigError:
        return ConfigError(
            f"serial setting {key}={settings.get(key, options.get(key))!r} is not valid for "
            f"port {url}.",
            key=key,
            fix=f"use {allowed}.",
        )

    baud = settings["baudrate"]
    if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
        raise bad("baudrate", "a positive integer such as 9600 or 19200")
    if settings["bytesize"] not in (5, 6, 7, 8):
        raise bad("bytesize", "5, 6, 7 or 8")
    parity = settings["parity"]
    if not isinstance(parity, str) or parity.upper() not in serial.PARITY_NAMES:
        raise bad("parity", "one of " + ", ".join(repr(p) for p in serial.PARITY_NAMES))
    settings["parity"] = parity.upper()
    if settings["stopbits"] not in (1, 1.5, 2):
        raise bad("stopbits", "1, 1.5 or 2")
    for flag in ("rtscts", "xonxoff", "dsrdtr"):
        if not isinstance(settings[flag], bool):
            raise bad(flag, "True or False")
    wt = options["write_timeout"]
    if isinstance(wt, bool) or not isinstance(wt, int | float) or not (0 < wt < math.inf):
        raise bad("write_timeout", "a finite number of seconds > 0 (every wait has a deadline)")
    return settings, options


def _check_bytes(data: object, what: str, resource: str) -> None:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueRejected(
            f"{what} must be bytes, got {type(data).__name__} {data!r}.",
            value=data,
            resource=resource,
            fix="encode text first, e.g. b'1TP?\\r\\n' or 'cmd'.encode('ascii').",
        )


def _check_terminator(terminator: object, resource: str) -> None:
    if not terminator or not isinstance(terminator, bytes):
        raise ValueRejected(
            f"terminator must be non-empty bytes, got {terminator!r}.",
            value=terminator,
            resource=resource,
            fix="pass e.g. b'\\r\\n'.",
        )


class SerialLease:
    """Exclusive use of a port for one transaction; only valid inside its ``with`` block."""

    __slots__ = ("port", "owner", "_timeout", "_record", "_active")

    def __init__(self, port: SharedSerialPort, owner: str, timeout: float) -> None:
        self.port = port
        self.owner = owner
        self._timeout = timeout
        self._record: list | None = None
        self._active = False

    def __enter__(self) -> SerialLease:
        port = self.port
        record = self._record = actor_record()
        waited = port._lock.acquire(self.owner, self._timeout, record)
        if port._ser is None and waited is not None:
            try:
                port._reopen(waited)
            except BaseException:
                port._lock.release(record)
                raise
        self._active = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._active = False
        self.port._lock.release(self._record)

    def _check(self) -> SharedSerialPort:
        if not self._active:
            raise ResourceError(
                f"lease of {self.owner!r} used outside its with-block (it was released).",
                resource=self.port.url,
                fix="do all I/O inside `with port.lease(...) as lease:`.",
            )
        return self.port

    def write(self, data: bytes) -> None:
        """Send ``data`` as is (no terminator added)."""
        port = self._check()
        _check_bytes(data, "data", port.url)
        port._write(data)

    def read_until(self, terminator: bytes, timeout: float) -> bytes:
        """Bytes up to ``terminator`` (excluded); bytes after it stay buffered for the next read.

        Raises :class:`InstrumentTimeout` with what arrived so far when the deadline passes;
        those bytes stay buffered (``drain()`` returns them).
        """
        port = self._check()
        _check_terminator(terminator, port.url)
        return port._read_until(terminator, check_timeout(timeout, "read timeout", port.url))

    def _checked_query(
        self, data: bytes, terminator: bytes, timeout: float
    ) -> tuple[SharedSerialPort, float]:
        """The port and the reply timeout (as a float) of a query whose arguments are sound.

        One place for the checks, so the waiting query and the async lease's non-waiting start
        reject the same arguments with the same errors.
        """
        port = self._check()
        _check_bytes(data, "data", port.url)
        _check_terminator(terminator, port.url)
        if timeout.__class__ is not float or not (0.0 <= timeout < math.inf):  # hot path
            timeout = check_timeout(timeout, "read timeout", port.url)
        return port, timeout

    def query(self, data: bytes, terminator: bytes, timeout: float) -> bytes:
        """Write ``data`` and return the reply up to ``terminator`` (excluded)."""
        port, timeout = self._checked_query(data, terminator, timeout)
        port._write(data)
        reply = port._read_until(terminator, timeout)
        port.queries += 1
        return reply

    def drain(self) -> bytes:
        """Discard and return stale input (late replies, echoes, line noise) before a query."""
        port = self._check()
        data = port._take_available()
        port.stale_bytes += len(data)
        return data

    def read_available(self) -> bytes:
        """Whatever input has arrived (buffered or waiting), without waiting for more."""
        return self._check()._take_available()

    # --- the parts of a query that never wait (the async lease runs them on its event loop) --

    def start_query(self, data: bytes, terminator: bytes, timeout: float) -> tuple[bytes, bool]:
        """Check the arguments, write what goes out without waiting, and take the reply if it
        is already there. Returns ``(reply, True)``, or ``(unsent, False)``: the bytes still to
        write (usually none) before ``finish_query`` waits for the reply."""
        port = self._checked_query(data, terminator, timeout)[0]
        unsent = port._write_now(data)
        if not unsent:
            reply = port._reply_now(terminator)
            if reply is not None:
                port.queries += 1
                return reply, True
        return unsent, False

    def finish_query(self, unsent: bytes, terminator: bytes, timeout: float) -> bytes:
        """The waiting half of a query begun by ``start_query`` (runs on the I/O thread)."""
        port = self._check()
        if unsent:
            port._write(unsent)
        reply = port._read_until(terminator, float(timeout))
        port.queries += 1
        return reply

    def write_now(self, data: bytes) -> bytes:
        """Write what the port takes without waiting; return the rest (usually nothing)."""
        port = self._check()
        _check_bytes(data, "data", port.url)
        return port._write_now(data)


class AsyncSerialLease:
    """A lease for coroutines: waits on the event loop, runs the blocking I/O on a worker thread.

    Each port has one I/O worker thread, so an I/O call never waits behind unrelated work in the
    default executor, and a cancelled call finishes (within its own timeout) before the lease
    passes to the next holder: bytes of two transactions never interleave even under cancellation.
    """

    def __init__(self, port: SharedSerialPort, owner: str, timeout: float) -> None:
        self.port = port
        self.owner = owner
        self._timeout = timeout
        self._record: list | None = None
        self._sync = SerialLease(port, owner, timeout)
        self._last: Future | None = None

    async def __aenter__(self) -> AsyncSerialLease:
        port = self.port
        record = self._record = actor_record()
        waited = await port._lock.acquire_async(self.owner, self._timeout, record)
        if port._ser is None and waited is not None:
            try:
                await self._run(port._reopen, waited)
            except BaseException:
                self._release()
                raise
        self._sync._active = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._sync._active = False
        self._release()

    def _release(self) -> None:
        lock = self.port._lock
        self._record.remove(lock)
        last = self._last
        # Only the outermost release lets another holder in; an inner one can go at once (the
        # outer holder's next I/O queues behind the in-flight call on the same worker thread).
        if last is not None and not last.done() and lock._depth == 1:
            # The task was cancelled mid-I/O: the worker still owns the wire. Release when done.
            last.add_done_callback(lambda _f: lock.release(None))
        else:
            lock.release(None)

    def _run(self, fn, *args) -> asyncio.Future:
        fut = self.port._io_worker().submit(fn, *args)
        self._last = fut
        return asyncio.wrap_future(fut)

    def _now_ok(self) -> bool:
        """Whether this call may do its non-waiting part on the event loop itself: the port
        promises its writes and polls never block, it is open, and no earlier call of this
        holder is still running on the I/O thread (its bytes come first)."""
        port = self.port
        last = self._last
        return port._now_io and port._ser is not None and (last is None or last.done())

    async def write(self, data: bytes) -> None:
        if self._now_ok():
            data = self._sync.write_now(data)
            if not data:
                return
        await self._run(self._sync.write, data)

    async def read_until(self, terminator: bytes, timeout: float) -> bytes:
        if self._now_ok():
            url = self._sync._check().url
            _check_terminator(terminator, url)
            check_timeout(timeout, "read timeout", url)
            reply = self.port._reply_now(terminator)
            if reply is not None:
                return reply
        return await self._run(self._sync.read_until, terminator, timeout)

    async def query(self, data: bytes, terminator: bytes, timeout: float) -> bytes:
        if self._now_ok():
            got, done = self._sync.start_query(data, terminator, timeout)
            if done:
                return got
            return await self._run(self._sync.finish_query, got, terminator, timeout)
        return await self._run(self._sync.query, data, terminator, timeout)

    async def drain(self) -> bytes:
        if self._now_ok():
            return self._sync.drain()
        return await self._run(self._sync.drain)

    async def drain_query(self, data: bytes, terminator: bytes, timeout: float) -> bytes:
        """``drain()`` then ``query()`` with at most one hand-over to the I/O thread and back
        (none when the reply is already there as the command goes out, as from an in-process
        simulator)."""
        if self._now_ok():
            self._sync.drain()
            got, done = self._sync.start_query(data, terminator, timeout)
            if done:
                return got
            return await self._run(self._sync.finish_query, got, terminator, timeout)
        return await self._run(self._drain_query, data, terminator, timeout)

    def _drain_query(self, data: bytes, terminator: bytes, timeout: float) -> bytes:
        self._sync.drain()
        return self._sync.query(data, terminator, timeout)

    async def read_available(self) -> bytes:
        if self._now_ok():
            return self._sync.read_available()
        return await self._run(self._sync.read_available)


class SharedSerialPort:
    """One physical serial port (or URL), shared by every driver that names it."""

    def __init__(
        self,
        pool: SerialPortPool | None,
        url: str,
        *,
        settings: dict[str, Any],
        options: dict[str, Any],
        rank: int,
        exclusive: bool,
    ) -> None:
        self.url = url
        """The name first used to open the port; kept to reopen it after an unplug (a replugged
        adapter or simulator may sit behind the same symlink with a new real path)."""
        self.name = canonical_name(url)
        self.aliases: set[str] = {url}
        self.rank = rank
        self.exclusive = bool(exclusive)
        """OS-level exclusive open (flock) for device paths; URL handlers that know the idea
        (the simulators) apply it to their device, the others ignore it."""
        self._pool = pool
        self._settings = settings
        self._options = options
        self._lock = LeaseLock(url, rank)
        self._state = threading.Lock()
        self._ser: Any = None
        self._direct_timeout = False
        self._fd: int | None = None
        self._abort_fd: int | None = None
        self._now_io = False
        """Writes and polls of this port never block (a plain POSIX port, whose descriptor is
        non-blocking, or a handler that says so), so async leases do them on their event loop
        and hand only real waiting to the I/O thread."""
        self._rx = bytearray()
        self._lost: PortUnavailable | None = None
        self._reopen_failed_at = -math.inf
        self._closed = False
        self._bus = None
        self._worker: ThreadPoolExecutor | None = None
        self.generation = 0
        """Increases on every successful (re)open; devices compare it to re-verify their state."""
        self.queries = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.stale_bytes = 0
        self.lost_count = 0
        self.reopens = 0
        self.reopen_attempts = 0
        self.opened_at = time.time()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("lost" if self._ser is None else "open")
        return f"<SharedSerialPort {self.url!r} rank={self.rank} gen={self.generation} {state}>"

    # --- public API ----------------------------------------------------------------------------

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self._settings)

    @property
    def is_open(self) -> bool:
        return self._ser is not None

    @property
    def closed(self) -> bool:
        return self._closed

    def lease(self, owner: str, timeout: float = 5.0) -> SerialLease:
        """Context manager: exclusive use of the port for one transaction, waiting <= timeout s."""
        check_owner(owner, self.url)
        if timeout.__class__ is not float or not (0.0 <= timeout < math.inf):  # hot path
            timeout = check_timeout(timeout, "lease timeout", self.url)
        return SerialLease(self, owner, timeout)

    def async_lease(self, owner: str, timeout: float = 5.0) -> AsyncSerialLease:
        """Async context manager: like :meth:`lease`, for coroutines (never blocks the loop)."""
        check_owner(owner, self.url)
        return AsyncSerialLease(self, owner, check_timeout(timeout, "lease timeout", self.url))

    def bus(self, router: Any, *, timeout: float = 5.0):
        """The multi-drop bus on this port (created on first call, the same one afterwards).

        From then on one reader thread owns all reading: ordinary leases may still write, but
        their reads raise. ``router`` frames and addresses packets (see :class:`BusRouter`).
        """
        from daqbridge.transport._bus import SerialBus, bus_protocol, check_router

        check_router(router, self.url)
        with self._state:
            existing = self._bus
        if existing is not None:
            if bus_protocol(existing.router) != bus_protocol(router):
                raise ResourceError(
                    f"port already runs a bus of family {bus_protocol(existing.router)!r}; "
                    f"cannot also frame it as {bus_protocol(router)!r}.",
                    resource=self.url,
                    fix="only devices of one bus family can share a multi-drop line.",
                )
            return existing
        # Start the reader under a lease so no transaction is halfway through a read.
        with self.lease("bus setup", timeout):
            with self._state:
                if self._bus is None:
                    leftover = bytes(self._rx)
                    self._rx.clear()
                    self._bus = SerialBus(self, router, leftover=leftover)
                    self._bus._start()
                return self._bus

    def stats(self) -> dict[str, Any]:
        """Counters and timing summaries for the status page (times in seconds)."""
        snap = self._lock.snapshot()
        held_for = snap["held_for"]
        bus = self._bus
        return {
            "port": self.url,
            "device": self.name,
            "aliases": sorted(self.aliases),
            "rank": self.rank,
            "state": "closed" if self._closed else ("lost" if self._ser is None else "open"),
            "generation": self.generation,
            "settings": self.settings,
            "transactions": snap["leases"],
            "queries": self.queries,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "stale_bytes": self.stale_bytes,
            "lost": self.lost_count,
            "reopens": self.reopens,
            "reopen_attempts": self.reopen_attempts,
            "wait": snap["wait"],
            "hold": snap["hold"],
            "holder": snap["holder"],
            "held_for": held_for,
            "held_since": time.time() - held_for if held_for is not None else None,
            "waiters": snap["waiters"],
            "bus": bus.stats() if bus is not None else None,
        }

    def close(self, timeout: float = 2.0) -> None:
        """Close the port: waiters fail now, the holder gets up to ``timeout`` s to finish."""
        with self._state:
            if self._closed:
                return
            self._closed = True
        self._lock.close(
            PortUnavailable(
                self.url,
                "closed by the resource pool (shutdown)",
                fix="open it again from the pool after the shutdown, or stop using it.",
            )
        )
        if self._lock._holder is not actor_record():
            deadline = perf_counter() + timeout
            while self._lock.is_held and perf_counter() < deadline:
                time.sleep(0.002)
        bus = self._bus
        if bus is not None:
            bus.close()
        with self._state:
            ser, self._ser = self._ser, None
        if ser is not None:
            _close_quietly(ser)
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)

    # --- opening, loss and reopening -----------------------------------------------------------

    def _open_handle(self) -> Any:
        url = self.url
        try:
            ser = serial.serial_for_url(url, do_not_open=True)
        except ValueError as exc:
            scheme = url.split("://", 1)[0]
            raise PortUnavailable(
                url,
                f"no serial handler for {scheme}:// URLs ({exc})",
                fix=f"check the URL; for {scheme}:// the package providing it must register its "
                "handler in serial.protocol_handler_packages before the port is opened "
                "(simulators: start them first).",
            ) from None
        try:
            for key, value in self._settings.items():
                setattr(ser, key, value)
            ser.write_timeout = self._options["write_timeout"]
            ser.timeout = 0
            if self.exclusive:
                ser.exclusive = True
        except (ValueError, serial.SerialException) as exc:
            raise ConfigError(
                f"port {url} refused its settings: {exc}",
                fix="correct the serial settings in the profile.",
            ) from None
        try:
            ser.open()
        except (serial.SerialException, OSError) as exc:
            raise self._open_error(exc) from None
        return ser

    def _open_error(self, exc: BaseException) -> PortUnavailable:
        url = self.url
        code = getattr(exc, "errno", None)
        text = str(exc)
        if code in (errno.EAGAIN, errno.EWOULDBLOCK) or "exclusively lock" in text:
            pid = lock_holder_pid(url)
            who = "this process" if pid == os.getpid() else None
            reason = (
                f"already in use: {text}"
                if is_url(url)
                else "already in use: another program holds its exclusive lock"
                + (f" ({who}, through another handle)" if who else "")
            )
            return PortUnavailable(
                url,
                reason,
                pid=pid,
                fix="close the other program (or its daqbridge session) first; if it must keep "
                "running, let it own the instrument and reach it through that program "
                "(e.g. `daqbridge ioc`).",
            )
        if code == errno.EBUSY:
            return PortUnavailable(
                url,
                f"busy: the device refuses a second opener ({text})",
                pid=lock_holder_pid(url),
            )
        if code == errno.ENOENT or (not is_url(url) and not os.path.exists(url)):
            return PortUnavailable(
                url,
                "no such device (unplugged, or the path is wrong)",
                fix="plug the adapter in and check the path; `daqbridge hardware` lists ports.",
            )
        if code == errno.EACCES:
            return PortUnavailable(
                url,
                "permission denied",
                fix="add your user to the group that owns the device (often `dialout`) and log in "
                "again, or fix the udev rule.",
            )
        return PortUnavailable(url, f"cannot open: {text}")

    def _first_open(self) -> None:
        ser = self._open_handle()
        with self._state:
            self._install(ser)

    def _install(self, ser: Any) -> None:
        self._ser = ser
        self._direct_timeout = type(ser) in _DIRECT_TIMEOUT
        plain_posix = _POSIX_SERIAL is not None and type(ser) is _POSIX_SERIAL
        self._fd = ser.fd if plain_posix else None
        self._abort_fd = ser.pipe_abort_read_r if plain_posix else None
        self._now_io = plain_posix or bool(getattr(type(ser), "never_blocks_host_io", False))
        self._lost = None
        self._rx.clear()
        self.generation += 1

    def _lose(self, ser: Any, exc: BaseException, during: str) -> PortUnavailable:
        """Mark the port lost after an I/O error; the next lease reopens it."""
        with self._state:
            if self._ser is ser and ser is not None:
                self._ser = None
                self.lost_count += 1
                self._lost = PortUnavailable(
                    self.url,
                    f"lost during {during} ({exc}); it was closed and the next lease will try to "
                    "reopen it",
                    fix="check the cable, power and USB adapter; devices re-verify their state "
                    "after the port comes back.",
                )
                _close_quietly(ser)
            err = self._lost or PortUnavailable(self.url, f"I/O failed during {during}: {exc}")
            bus = self._bus
        if bus is not None:
            bus._port_lost(err)
        return err

    def _reopen(self, waited_since: float) -> None:
        """Called by a new lease holder when the port is lost: bounded retries, then a clear no."""
        if self._closed:
            raise PortUnavailable(self.url, "closed by the resource pool (shutdown)")
        if self._lost is not None and self._reopen_failed_at >= waited_since:
            # A reopen failed while this caller queued: tell it now instead of retrying again.
            raise self._lost
        last: PortUnavailable | None = None
        for attempt in range(REOPEN_ATTEMPTS):
            if attempt:
                time.sleep(REOPEN_BACKOFF * 2 ** (attempt - 1))
            self.reopen_attempts += 1
            try:
                ser = self._open_handle()
                break
            except PortUnavailable as exc:
                last = exc
        else:
            err = PortUnavailable(
                self.url,
                f"lost and still unavailable after {REOPEN_ATTEMPTS} reopen attempts "
                f"({last.reason if last else 'unknown'})",
                pid=last.pid if last else None,
                fix="reconnect the device (cable, power, USB adapter); the next lease tries again.",
            )
            with self._state:
                self._lost = err
                self._reopen_failed_at = perf_counter()
            raise err
        with self._state:
            if self._closed:
                _close_quietly(ser)
                raise PortUnavailable(self.url, "closed by the resource pool (shutdown)")
            self._install(ser)
            bus = self._bus
        self.reopens += 1
        if self._pool is not None:
            self._pool._rekey(self)
        if bus is not None:
            bus._port_reopened()

    def _lost_error(self, during: str) -> PortUnavailable:
        if self._closed:
            return PortUnavailable(self.url, "closed by the resource pool (shutdown)")
        return self._lost or PortUnavailable(self.url, f"not open during {during}")

    def _io_worker(self) -> ThreadPoolExecutor:
        worker = self._worker
        if worker is None:
            with self._state:
                if self._worker is None:
                    self._worker = ThreadPoolExecutor(
                        max_workers=1, thread_name_prefix=f"daqbridge-io {self.url}"
                    )
                worker = self._worker
        return worker

    # --- I/O (called by leases, which guarantee exclusivity) ------------------------------------

    def _bus_owns_reads(self, what: str) -> ResourceError:
        return ResourceError(
            f"cannot {what} through a lease: this port runs a multi-drop bus whose reader owns "
            "all incoming bytes.",
            resource=self.url,
            fix="use the bus endpoint (transact / wait_for) for replies; leases may still write.",
        )

    def _write(self, data: bytes) -> None:
        ser = self._ser
        if ser is None:
            raise self._lost_error("write")
        try:
            fd = self._fd
            if fd is not None:
                # Plain POSIX port: one os.write is all a short command needs; pyserial's write
                # adds a select per call. Whatever does not fit goes through pyserial, which
                # waits for room within the write timeout.
                try:
                    n = os.write(fd, data)
                except BlockingIOError:
                    n = 0
                if n < len(data):
                    ser.write(data[n:])
            else:
                ser.write(data)
        except serial.SerialTimeoutException:
            raise InstrumentTimeout(
                f"write of {len(data)} bytes did not complete within "
                f"{self._options['write_timeout']} s",
                reply=bytes(data),
                resource=self.url,
                fix="the device is not taking data: check flow control (rtscts/xonxoff must match "
                "the device) and the cable.",
            ) from None
        except (serial.SerialException, OSError) as exc:
            raise self._lose(ser, exc, "write") from None
        self.bytes_out += len(data)

    def _buffered_reply(self, terminator: bytes, arrived: bytes = b"") -> bytes | None:
        """Add ``arrived`` to the input buffer, then cut the reply up to ``terminator`` from it
        if the buffer holds one now (else None).

        The one place both the waiting read and the non-waiting look take a reply out of the
        buffer. With new bytes only the tail that could now complete a terminator is searched:
        the rest was searched when it arrived.
        """
        rx = self._rx
        start = 0
        if arrived:
            start = len(rx) - len(terminator) + 1
            if start < 0:
                start = 0
            rx += arrived
            self.bytes_in += len(arrived)
        i = rx.find(terminator, start)
        if i < 0:
            return None
        reply = bytes(rx[:i])
        del rx[: i + len(terminator)]
        return reply

    def _read_until(self, terminator: bytes, timeout: float) -> bytes:
        if self._bus is not None:
            raise self._bus_owns_reads("read")
        reply = self._buffered_reply(terminator)
        if reply is not None:
            return reply
        ser = self._ser
        if ser is None:
            raise self._lost_error("read")
        fd = self._fd
        direct = self._direct_timeout
        deadline = perf_counter() + timeout
        tried = False  # a zero timeout still takes what has already arrived
        while True:
            remaining = deadline - perf_counter()
            if remaining <= 0.0:
                if not tried:
                    remaining = 0.0
                else:
                    raise InstrumentTimeout(
                        f"no reply ending in {terminator!r} within {timeout:.3f} s",
                        reply=bytes(self._rx),
                        resource=self.url,
                        fix="check that the device is on and that the command expects a reply; "
                        "increase the timeout for slow commands. Received bytes stay buffered "
                        "(drain() before the next query).",
                    )
            tried = True
            try:
                if fd is not None:
                    # Plain POSIX port: wait with one select, then take everything that arrived
                    # in one read (the fd is non-blocking). pyserial's read(in_waiting) costs an
                    # ioctl plus a select per call; per reply that is 2-3 extra syscalls.
                    ready = _select((fd, self._abort_fd), (), (), remaining)[0]
                    if not ready:
                        continue
                    if fd not in ready:  # cancel_read(): the port is being closed under us
                        raise serial.SerialException("read cancelled: port closed")
                    try:
                        chunk = os.read(fd, 4096)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        raise serial.SerialException(
                            "device reports readiness to read but returned no data (disconnected?)"
                        )
                else:
                    if direct:
                        ser._timeout = remaining
                    else:
                        ser.timeout = remaining
                    # Read what is waiting in one call; only when nothing is, block for one byte.
                    n = ser.in_waiting
                    chunk = ser.read(n if n > 0 else 1)
            except (serial.SerialException, OSError, ValueError) as exc:
                raise self._lose(ser, exc, "read") from None
            if chunk:
                reply = self._buffered_reply(terminator, chunk)
                if reply is not None:
                    return reply

    def _write_now(self, data: bytes) -> bytes:
        """Write without waiting; return what the port did not take (only a POSIX port whose
        output buffer is full leaves a rest, which then goes out from the I/O thread)."""
        ser = self._ser
        if ser is None:
            raise self._lost_error("write")
        fd = self._fd
        if fd is None:
            self._write(data)  # a handler that never blocks (``never_blocks_host_io``)
            return b""
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            raise self._lose(ser, exc, "write") from None
        self.bytes_out += n
        return data[n:] if n < len(data) else b""

    def _reply_now(self, terminator: bytes) -> bytes | None:
        """The reply up to ``terminator`` if it has already arrived, else None; never waits."""
        if self._bus is not None:
            raise self._bus_owns_reads("read")
        reply = self._buffered_reply(terminator)
        if reply is not None:
            return reply
        ser = self._ser
        if ser is None:
            raise self._lost_error("read")
        try:
            fd = self._fd
            if fd is not None:
                try:
                    chunk = os.read(fd, 4096)
                except BlockingIOError:
                    return None
                if not chunk:
                    # Nothing yet (a tty with VMIN=0 says so with b""). A hang-up also reads
                    # b"": the waiting path's select tells the two apart and reports it.
                    return None
            else:
                n = ser.in_waiting
                if not n:
                    return None
                chunk = ser.read(n)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise self._lose(ser, exc, "read") from None
        return self._buffered_reply(terminator, chunk)

    def _take_available(self) -> bytes:
        if self._bus is not None:
            raise self._bus_owns_reads("read or drain")
        ser = self._ser
        if ser is None:
            raise self._lost_error("drain")
        data = bytearray(self._rx)
        self._rx.clear()
        if self._direct_timeout:
            ser._timeout = 0
        else:
            ser.timeout = 0
        try:
            while len(data) < _DRAIN_LIMIT:
                n = ser.in_waiting
                if not n:
                    break
                chunk = ser.read(n)
                if not chunk:
                    break
                data += chunk
        except (serial.SerialException, OSError) as exc:
            raise self._lose(ser, exc, "drain") from None
        self.bytes_in += len(data)
        return bytes(data)


def _close_quietly(ser: Any) -> None:
    # Wake a thread blocked in read on this handle first, then close; errors are moot here.
    try:
        cancel = getattr(ser, "cancel_read", None)
        if cancel is not None:
            cancel()
    except Exception:  # noqa: BLE001 - the handle is being thrown away
        pass
    try:
        ser.close()
    except Exception:  # noqa: BLE001
        pass


class SerialPortPool:
    """All serial ports of a process, each opened once, shared by name or alias."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ports: dict[str, SharedSerialPort] = {}
        self._aliases: dict[str, SharedSerialPort] = {}

    def __enter__(self) -> SerialPortPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close_all()

    def open(
        self,
        url: str,
        *,
        rank: int = SERIAL_RANK,
        exclusive: bool = True,
        **serial_settings: Any,
    ) -> SharedSerialPort:
        """The shared port for ``url`` (a device path or a pyserial URL), opened on first use.

        Raises :class:`SettingsConflict` if the port is already open with other line settings or
        another rank, :class:`PortUnavailable` if it cannot be opened.
        """
        if not isinstance(url, str) or not url.strip():
            raise ConfigError(
                f"a serial port must be named by a path or URL string, got {url!r}.",
                key="port",
                fix="use e.g. '/dev/ttyUSB0', '/dev/serial/by-id/...', 'socket://host:port'.",
            )
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise ConfigError(
                f"rank must be an int, got {rank!r} for port {url}.",
                key="rank",
                fix="leave the default (10) or give an integer.",
            )
        settings, options = _normalise_settings(url, serial_settings)
        with self._lock:
            port = self._aliases.get(url) or self._ports.get(canonical_name(url))
            if port is not None and port.closed:
                self._forget_locked(port)
                port = None
            if port is not None:
                existing = {**port._settings, "rank": port.rank}
                requested = {**settings, "rank": rank}
                if existing != requested:
                    raise SettingsConflict(port.url, existing, requested)
                port.aliases.add(url)
                self._aliases[url] = port
                return port
            port = SharedSerialPort(
                self, url, settings=settings, options=options, rank=rank, exclusive=exclusive
            )
            port._first_open()
            self._ports[port.name] = port
            self._aliases[url] = port
            return port

    @property
    def ports(self) -> Mapping[str, SharedSerialPort]:
        """Open ports by canonical name (real path or URL); a read-only snapshot."""
        with self._lock:
            return types.MappingProxyType(dict(self._ports))

    def status(self) -> dict[str, dict[str, Any]]:
        """``stats()`` of every port, by canonical name."""
        return {name: port.stats() for name, port in self.ports.items()}

    def close_all(self, timeout: float = 2.0) -> None:
        """Close every port (waiters fail at once; holders get ``timeout`` s to finish)."""
        with self._lock:
            ports = list(self._ports.values())
            self._ports.clear()
            self._aliases.clear()
        for port in ports:
            port.close(timeout)

    def _forget_locked(self, port: SharedSerialPort) -> None:
        for key in [k for k, p in self._ports.items() if p is port]:
            del self._ports[key]
        for key in [k for k, p in self._aliases.items() if p is port]:
            del self._aliases[key]

    def _rekey(self, port: SharedSerialPort) -> None:
        # After a replug the symlink may point at a new device node: file the port under it too,
        # so opening either name still finds this one port.
        new = canonical_name(port.url)
        with self._lock:
            if new != port.name and self._ports.get(port.name) is port:
                del self._ports[port.name]
            port.name = new
            if self._ports.get(new) is None or self._ports[new].closed:
                self._ports[new] = port


_default_pool: SerialPortPool | None = None
_default_lock = threading.Lock()


def default_pool() -> SerialPortPool:
    """The process-wide pool used when no pool is passed explicitly."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = SerialPortPool()
        return _default_pool
