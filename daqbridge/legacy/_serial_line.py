"""A line-oriented link to one instrument on a shared serial port, used by the legacy drivers.

The legacy drivers never own a port: they open it from the ``SerialPortPool`` (which hands every
driver naming the same port the same handle) and do each exchange inside one lease, so a native
driver on the same port can never split a query from its reply. Before every query the input is
drained: stale or late bytes on real hardware must never be taken for the reply.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from daqbridge.errors import InstrumentTimeout, PortUnavailable, ReplyError, ValueRejected

if TYPE_CHECKING:
    from daqbridge.transport import SerialLease, SharedSerialPort

TERMINATORS = {"LF": b"\n", "CR": b"\r", "CRLF": b"\r\n"}
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def safe_command(text: str, *, instrument: str, resource: str | None = None) -> bytes:
    """ASCII bytes of one command; refuses control characters (an injected terminator would
    smuggle a second command onto the wire, e.g. ``"W0800\\nR8"``)."""
    if not isinstance(text, str) or _UNSAFE.search(text):
        raise ValueRejected(
            f"command {text!r} contains a control character or line terminator",
            value=text,
            instrument=instrument,
            resource=resource,
            fix="send one command without CR/LF; the driver adds the terminator.",
        )
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        raise ValueRejected(
            f"command {text!r} is not ASCII",
            value=text,
            instrument=instrument,
            resource=resource,
            fix="use plain ASCII characters.",
        ) from None


class LineExchange:
    """The I/O of one lease: ``send`` silent commands and ``query`` replies, in order."""

    def __init__(self, line: SerialLine, lease: SerialLease) -> None:
        self._line = line
        self._lease = lease

    def send(self, text: str) -> None:
        line = self._line
        line._respect_gap()
        payload = safe_command(text, instrument=line.instrument, resource=line.url)
        self._lease.write(payload + line.write_terminator)
        line._after_silent_write()

    def query(self, text: str, *, timeout: float | None = None, skip_echo: bool = False) -> str:
        """The reply to ``text``, stripped. ``skip_echo``: a line equal to the command is the
        instrument echoing it (echo mode left on), not the answer; read past it."""
        line = self._line
        payload = safe_command(text, instrument=line.instrument, resource=line.url)
        wait = line.timeout if timeout is None else timeout
        line._respect_gap()
        self._lease.drain()
        self._lease.write(payload + line.write_terminator)
        deadline = time.monotonic() + wait
        try:
            while True:
                raw = self._lease.read_until(
                    line.read_terminator, max(0.0, deadline - time.monotonic())
                )
                reply = raw.decode("ascii", errors="replace").strip()
                if not reply or (skip_echo and reply == text.strip()):
                    continue  # blank line (CR LF split) or the echo of our own command
                return reply
        except InstrumentTimeout as exc:
            raise InstrumentTimeout(
                f"no reply to {text!r} within {wait:.2f} s",
                reply=exc.reply,
                instrument=line.instrument,
                resource=line.url,
                fix="check the instrument is on and connected to this port, and its baud rate.",
            ) from None


class SerialLine:
    """One instrument's view of a shared port: its terminators, timeout and command pacing."""

    def __init__(
        self,
        instrument: str,
        port: SharedSerialPort,
        *,
        write_terminator: bytes,
        read_terminator: bytes,
        timeout: float,
        lease_timeout: float = 5.0,
        command_gap: float = 0.0,
    ) -> None:
        self.instrument = instrument
        self.port = port
        self.url: str = port.url
        self.write_terminator = write_terminator
        self.read_terminator = read_terminator
        self.timeout = float(timeout)
        self.lease_timeout = float(lease_timeout)
        self.command_gap = float(command_gap)
        self._ready_at = 0.0

    @contextmanager
    def exchange(self) -> Iterator[LineExchange]:
        """One lease for a sequence of commands that must not be split (e.g. set + read back)."""
        with naming_port_loss(self.instrument):
            with self.port.lease(self.instrument, self.lease_timeout) as lease:
                yield LineExchange(self, lease)

    def send(self, text: str) -> None:
        with self.exchange() as x:
            x.send(text)

    def query(self, text: str, **kw: Any) -> str:
        with self.exchange() as x:
            return x.query(text, **kw)

    def _respect_gap(self) -> None:
        # Some instruments need a pause after a silent write before they listen again (MaiTai:
        # about 50 ms). Sleeping inside the lease is deliberate: another driver's bytes in that
        # pause would be lost by the instrument just the same.
        delay = self._ready_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _after_silent_write(self) -> None:
        if self.command_gap > 0:
            self._ready_at = time.monotonic() + self.command_gap


@contextmanager
def naming_port_loss(instrument: str) -> Iterator[None]:
    """Re-raise a lost or unopenable port as an error that names ``instrument`` too.

    The port pool knows the port but not which driver was using it, and a scientist reading
    "[on /dev/ttyUSB0] port unavailable" cannot tell which instrument that is.
    """
    try:
        yield
    except PortUnavailable as exc:
        if exc.instrument is not None:
            raise
        raise PortUnavailable(
            exc.resource or "", exc.reason, pid=exc.pid, fix=exc.fix, instrument=instrument
        ) from exc


def connected_line(line: SerialLine | None, instrument_id: str, port_name: str) -> SerialLine:
    """The driver's line, or a clear error when it is used before ``connect()``."""
    if line is None:
        raise ReplyError(
            "not connected",
            instrument=instrument_id,
            resource=port_name,
            fix="the runtime connects instruments on start(); wait for state 'running'.",
        )
    return line
