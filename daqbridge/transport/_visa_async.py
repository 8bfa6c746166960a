"""A VISA session reached through async leases: what an ophyd-async device needs from a port.

Why: native devices talk through the lease interface of ``daqbridge.devices.core`` (``url``,
``generation``, ``async_lease``; a lease with ``write``, ``query``, ``read_until``, ``drain`` on
bytes), the interface ``SharedSerialPort`` offers. A :class:`VisaSession` has only blocking leases,
and pyvisa's calls block. :class:`VisaPort` adds the async side without changing the session:

* the lease is the session's own :class:`LeaseLock`, waited for on the event loop
  (``acquire_async``), so the v1 driver's blocking leases and a coroutine device's leases on the
  same instrument serialise against each other, and a waiting coroutine parks no thread;
* the blocking pyvisa calls run on the VISA I/O threads of this module (a pool shared by every
  session, threads made only as calls overlap), not in the event loop's default executor, so they
  never queue behind unrelated work there; a lease has one call in flight at a time, and a call
  cancelled with its task finishes (within its own timeout) before the lease passes on, so two
  transactions never interleave on an instrument, even under cancellation. No device owns a
  thread, and a session needs no thread of its own to be shut down;
* VISA is message-based, not a byte stream. A lease splits what it is asked to write at the line
  separator (LF, what devices end their commands with) and sends one message per command; VISA
  adds the session's own write termination (LF, CR or CR LF). Replies come back without their
  read termination, which is the shape ``read_until`` promises;
* ``drain()`` has nothing to do: a VISA reply arrives only after a query, and the one way a reply
  can come late (a query that timed out) is handled by the session itself, which resynchronises
  on ``*IDN?`` before the next query (``VisaSession._resync``);
* ``generation`` counts the session's reopens after a lost connection, so a device proves the
  instrument again (``*IDN?``) after one, as it does after a serial port was reopened.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from typing import Any

from daqbridge.errors import ReplyError, ResourceError
from daqbridge.transport._lease import actor_record, check_owner, check_timeout
from daqbridge.transport._visa import VisaLease, VisaSession

__all__ = ["AsyncVisaLease", "VisaPort"]

LINE_SEPARATOR = b"\n"
"""What devices end each command with; one VISA message is sent per line."""
VISA_IO_THREADS = 16
"""Most pyvisa calls in flight at once, over all instruments (one per instrument at a time)."""

_io_pool: ThreadPoolExecutor | None = None
_io_pool_lock = threading.Lock()


def _visa_io() -> ThreadPoolExecutor:
    global _io_pool
    with _io_pool_lock:
        if _io_pool is None:
            _io_pool = ThreadPoolExecutor(VISA_IO_THREADS, thread_name_prefix="daqbridge-visa-io")
        return _io_pool


class AsyncVisaLease:
    """Exclusive use of one VISA instrument for a coroutine's transaction (bytes in and out)."""

    def __init__(self, port: VisaPort, owner: str, timeout: float) -> None:
        self.port = port
        self.owner = owner
        self._timeout = timeout
        self._record: list | None = None
        self._sync = VisaLease(port.session, owner, timeout)
        self._last: Future | None = None
        self._partial = b""  # a command written in two pieces: sent once its separator arrives

    async def __aenter__(self) -> AsyncVisaLease:
        record = self._record = actor_record()
        await self.port.session._lock.acquire_async(self.owner, self._timeout, record)
        self._sync._active = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._sync._active = False
        lock = self.port.session._lock
        self._record.remove(lock)  # type: ignore[union-attr]
        last = self._last
        # Only the outermost release lets another holder in; an inner one can go at once.
        if last is not None and not last.done() and lock._depth == 1:
            # The task was cancelled mid-I/O: the I/O thread still talks to the instrument.
            last.add_done_callback(lambda _f: lock.release(None))
        else:
            lock.release(None)

    # --- the lease interface (bytes, as devices.core.AsyncLease) --------------------------------

    def _commands(self, data: bytes) -> list[str]:
        text = self._partial + bytes(data)
        *lines, self._partial = text.split(LINE_SEPARATOR)
        return [line.decode("ascii").rstrip("\r") for line in lines if line.strip()]

    def _run(self, fn: Any, *args: Any) -> asyncio.Future:
        fut = _visa_io().submit(fn, *args)
        self._last = fut
        return asyncio.wrap_future(fut)

    def _write_all(self, commands: list[str]) -> None:
        for command in commands:
            self._sync.write(command)

    def _reply(self, command: str | None, fn: Any, *args: Any) -> bytes:
        try:
            reply = fn(*args)
        except UnicodeDecodeError as exc:
            # pyvisa decodes replies as ASCII; line noise above 0x7F is a garbled reply, and the
            # whole message was consumed, so the stream is still in step.
            raise ReplyError(
                f"reply to {command!r} is not ASCII text" if command else "reply is not ASCII",
                reply=bytes(exc.object),
                resource=self.port.url,
                fix="line noise or a wrong instrument; the next query is read normally.",
            ) from None
        return reply.rstrip("\r\n").encode("ascii", "replace")

    def _query(self, commands: list[str], timeout: float) -> bytes:
        *silent, last = commands
        self._write_all(silent)
        return self._reply(last, self._sync.query, last, timeout)

    async def write(self, data: bytes) -> None:
        """Send every complete command in ``data``, one VISA message each."""
        commands = self._commands(data)
        if commands:
            await self._run(self._write_all, commands)

    async def query(self, data: bytes, terminator: bytes, timeout: float) -> bytes:
        """Send the commands in ``data``; the last is the query whose reply is returned."""
        commands = self._commands(data)
        if not commands or self._partial:
            raise ResourceError(
                f"a query must end with its line separator, got {bytes(data)!r}.",
                resource=self.port.url,
                fix="end each command with LF (devices.core.Exchange does).",
            )
        return await self._run(self._query, commands, timeout)

    async def read_until(self, terminator: bytes, timeout: float) -> bytes:
        """The next message (an echo skipped by the caller, a second reply line)."""
        return await self._run(self._reply, None, self._sync.read, timeout)

    async def drain(self) -> bytes:
        """Nothing is ever pending on a VISA session (module docstring)."""
        self._sync._check()
        return b""


class VisaPort:
    """A :class:`VisaSession` as a port with async leases (``devices.core.LeasedPort``).

    A view, not an owner: any number of ports (and v1 devices) may share one session; the lease
    lock is the session's. The session is opened and closed by its :class:`VisaSessionManager`.
    """

    def __init__(self, session: VisaSession) -> None:
        if not isinstance(session, VisaSession):
            raise ResourceError(
                f"VisaPort needs a VisaSession, got {type(session).__name__}.",
                fix="get one from VisaSessionManager.session(resource, backend=...).",
            )
        self.session = session
        self.url = session.label
        """The session's label (resource, and backend unless @py): errors and descriptors."""

    def __repr__(self) -> str:
        return f"<VisaPort {self.url!r} generation={self.generation}>"

    @property
    def generation(self) -> int:
        """1, plus one per reopen of the session after a lost connection."""
        return 1 + self.session.reopens

    @property
    def timeout(self) -> float:
        """The session's default reply timeout (s)."""
        return self.session.timeout

    @property
    def lease_timeout(self) -> float:
        """The session's default wait for a lease (s)."""
        return self.session.lease_timeout

    def async_lease(
        self, owner: str, timeout: float = 5.0
    ) -> AbstractAsyncContextManager[AsyncVisaLease]:
        """Wait on the event loop (at most ``timeout`` s) for exclusive use of the instrument."""
        check_owner(owner, self.url)
        return AsyncVisaLease(self, owner, check_timeout(timeout, "lease timeout", self.url))
