"""One transaction on a line-oriented instrument, inside one lease.

Why a class: the rules of INSTRUMENTS.md ("Common rules for every serial instrument") are the same
for every line instrument and must hold on every query, so they live here once:

* input is drained before every query, so a late reply or line noise is never taken as this one;
* a line equal to a command sent in this transaction is an echo and is skipped (an instrument left
  in echo mode has corrupted real readings by putting the command back before its value);
* set commands are silent: nothing is read after them;
* every error names the instrument, the port and the command, with a fix.

Silent commands are held back and go out with the next query in one write (``C\\nD?\\n``): the
bytes on the wire are those of two back-to-back writes, one round trip to the port's I/O thread
cheaper. ``flush()`` sends what is still held at the end of the transaction. For the same reason
the drain before a query and the query itself are one job of that thread where the lease offers
it (``drain_query``).
"""

from __future__ import annotations

from daqbridge.devices._base import FORBIDDEN_IN_COMMANDS
from daqbridge.devices.core._transport import AsyncLease
from daqbridge.errors import InstrumentTimeout, ReplyError, ValueRejected

MAX_ECHO_LINES = 3
"""Lines skipped as echoes per query: the command itself plus commands written just before."""


class Exchange:
    """The device's side of one leased transaction: ``write`` silent commands, ``query`` replies."""

    __slots__ = (
        "lease",
        "instrument",
        "resource",
        "terminator",
        "timeout",
        "sent",
        "_pending",
        "_drain_query",
    )

    def __init__(
        self,
        lease: AsyncLease,
        *,
        instrument: str,
        resource: str,
        terminator: bytes = b"\n",
        timeout: float = 1.0,
    ) -> None:
        self.lease = lease
        self.instrument = instrument
        self.resource = resource
        self.terminator = terminator
        self.timeout = timeout
        self.sent: list[str] = []
        """Commands of this transaction, to recognise their echoes."""
        self._pending = bytearray()
        self._drain_query = getattr(lease, "drain_query", None)
        """The serial transport's drain-and-query in one call; other leases drain, then query."""

    def _encode(self, command: str) -> bytes:
        # Commands are built by drivers, but a value formatted into one comes from a user: a
        # terminator inside it would put a second command on the wire.
        if any(c in command for c in FORBIDDEN_IN_COMMANDS) or not command.isprintable():
            raise ValueRejected(
                f"command {command!r} contains a terminator, separator or control character.",
                instrument=self.instrument,
                resource=self.resource,
                value=command,
                fix="send one command per call, without CR, LF, ';' or control characters.",
            )
        return command.encode("ascii") + self.terminator

    async def write(self, command: str) -> None:
        """A silent command (no reply is read): held back until the next query or ``flush()``."""
        self._pending += self._encode(command)
        self.sent.append(command)

    async def flush(self) -> None:
        """Send silent commands still held back (a transaction that ends without a query)."""
        if self._pending:
            data, self._pending = bytes(self._pending), bytearray()
            await self.lease.write(data)

    async def query(self, command: str) -> str:
        """Drain, send (after any held-back commands), return the reply line, echoes skipped."""
        data = bytes(self._pending) + self._encode(command)
        self._pending = bytearray()
        self.sent.append(command)
        try:
            if self._drain_query is not None:  # the serial transport: at most one hand-over
                raw = await self._drain_query(data, self.terminator, self.timeout)
            else:
                await self.lease.drain()
                raw = await self.lease.query(data, self.terminator, self.timeout)
            for _ in range(MAX_ECHO_LINES):
                line = raw.decode("ascii", "replace").strip()
                if line not in self.sent:
                    return line
                raw = await self.lease.read_until(self.terminator, self.timeout)
        except InstrumentTimeout as exc:
            raise InstrumentTimeout(
                f"no reply to {command!r} within {self.timeout:.3f} s",
                reply=exc.reply,
                instrument=self.instrument,
                resource=self.resource,
                fix="check that the instrument is on, the baud rate and flow control; a reply "
                "lost on the line is retried by the next reading.",
            ) from None
        line = raw.decode("ascii", "replace").strip()
        if line not in self.sent:
            return line
        raise ReplyError(
            f"only echoes came back for {command!r}",
            reply=line,
            instrument=self.instrument,
            resource=self.resource,
            fix="the instrument echoes every command: turn echo off (power-cycle it if needed).",
        )

    def reply_error(
        self, command: str, reply: str, what: str, fix: str | None = None
    ) -> ReplyError:
        """A ReplyError for a reply that does not parse, naming instrument, port and command."""
        return ReplyError(
            f"reply to {command!r} is not {what}",
            reply=reply,
            instrument=self.instrument,
            resource=self.resource,
            fix=fix
            or "line noise or another program on the port; the next operation drains the line.",
        )
