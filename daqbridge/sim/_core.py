"""The engine every serial instrument simulator runs on.

A simulator is a byte-in, byte-out state machine with a clock. The host side (a pseudo-terminal
server, or the ``sim://`` pyserial URL handler) feeds it the bytes the driver wrote and collects
the bytes the device "sends", each with the real time at which it becomes readable. Instruments
only implement ``handle_line`` (or ``on_bytes`` for protocols with no terminator, like the
Elliptec bus) and call ``reply`` / ``schedule``; the engine applies timing (speed factor, per-byte
baud delay) and faults (delay, drop, garble, stale bytes, echo, stuck, unplug) uniformly, so
every instrument gets every fault without writing it again.

Simulators never share protocol code with drivers: both are pinned to INSTRUMENTS.md transcripts.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import ClassVar


@dataclass
class Faults:
    """Fault injection switches, shared by every serial simulator.

    All can be changed while the simulator runs (``sim.faults.drop_probability = 1.0``).
    """

    reply_delay: float = 0.0
    """Extra real seconds before every reply becomes readable (slow device / long cable)."""
    drop_probability: float = 0.0
    """Probability that a reply is never sent (lost on the wire)."""
    drop_next: int = 0
    """Drop exactly the next N replies, then behave (deterministic tests)."""
    garble_probability: float = 0.0
    """Probability that a reply has one byte corrupted (noise on the line)."""
    garble_next: int = 0
    """Garble exactly the next N replies."""
    echo: bool = False
    """Echo every received command line back before its reply (a terminal left in echo mode)."""
    stuck: bool = False
    """Device busy or hung: it swallows commands and answers nothing until cleared."""
    seed: int | None = None
    """Seed of the random faults, so a failing fault campaign can be replayed."""

    @classmethod
    def from_options(cls, options: dict[str, str]) -> Faults:
        """Build from string options (CLI flags, URL query parameters), ignoring other keys."""
        kw = {}
        for f in fields(cls):
            if f.name in options:
                raw = options[f.name]
                if f.type in ("bool", bool):
                    kw[f.name] = str(raw).lower() in ("1", "true", "yes", "on")
                elif f.type in ("int", int) or f.name in ("drop_next", "garble_next"):
                    kw[f.name] = int(raw)
                elif f.name == "seed":
                    kw[f.name] = int(raw)
                else:
                    kw[f.name] = float(raw)
        return cls(**kw)


class _OutputSignal(threading.Condition):
    """``output_ready`` that also pokes listeners on every notify.

    A pty pump sleeps in ``select`` on a file descriptor, where a condition variable cannot reach
    it; a listener (writing one byte to a wake-up pipe) lets output produced by another thread
    (a test injecting stale bytes, a coupled instrument) go out at once instead of at the next
    timeout. Every ``notify_all`` in subclasses reaches the listeners too, so they need no change.
    """

    def __init__(self, lock) -> None:
        super().__init__(lock)
        self.listeners: list[Callable[[], None]] = []

    def notify(self, n: int = 1) -> None:
        super().notify(n)
        for listener in tuple(self.listeners):
            listener()


@dataclass(order=True)
class _Pending:
    due: float
    seq: int
    action: Callable[[], None] = field(compare=False)


class SerialSimulator:
    """Base class of the serial instrument simulators.

    Subclasses set ``kind``, ``default_baudrate``, ``reply_terminator`` and implement
    ``handle_line``. ``speed`` scales simulated durations (motion, settling, warm-up): 10 makes a
    2 s move take 0.2 s; ``math.inf`` makes them instantaneous (zero-latency mode for benchmarks).
    ``byte_time`` adds the transmission time of each reply at the baud rate (10 bits per byte).
    """

    kind: ClassVar[str] = "serial"
    default_baudrate: ClassVar[int] = 9600
    reply_terminator: bytes = b"\r\n"
    input_terminators: ClassVar[tuple[bytes, ...]] = (b"\r\n", b"\r", b"\n")

    def __init__(
        self,
        *,
        speed: float = 1.0,
        faults: Faults | None = None,
        byte_time: bool = False,
        baudrate: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not speed > 0:
            raise ValueError(f"simulator speed must be > 0, got {speed!r}")
        self.speed = float(speed)
        self.faults = faults or Faults()
        self.baudrate = baudrate or self.default_baudrate
        self.byte_time = byte_time
        self.clock = clock
        self.lock = threading.RLock()
        self.output_ready = _OutputSignal(self.lock)
        self._rng = random.Random(self.faults.seed)
        self._events: list[_Pending] = []
        self._seq = itertools.count()
        self._out = bytearray()
        self._line_buf = bytearray()
        self._cr_pending = False
        self._last_out_due = 0.0
        self._held = 0
        """Replies produced but not yet on the line (queued behind a delay)."""
        self.connected = True
        self.unplug_count = 0
        """How many times the cable was pulled: a host port opened before an unplug stays dead."""
        self.received_lines: list[str] = []
        """Every command line received, in order (tests assert on it, e.g. that ST was sent)."""
        self.protocol_errors: list[str] = []
        """Lines the device could not parse. Interleaved traffic from two drivers shows up here."""
        self.replies_sent = 0

    # --- time ------------------------------------------------------------------------------

    def now(self) -> float:
        return self.clock()

    def sim_elapsed(self, since: float) -> float:
        """Simulated seconds since real time ``since`` (scaled by the speed factor)."""
        dt = self.clock() - since
        if math.isinf(self.speed):
            return math.inf if dt >= 0 else 0.0
        return dt * self.speed

    def real_delay(self, sim_seconds: float) -> float:
        """Real seconds that ``sim_seconds`` of device time take at the current speed."""
        return 0.0 if math.isinf(self.speed) else sim_seconds / self.speed

    def schedule(self, sim_seconds: float, action: Callable[[], None]) -> None:
        """Run ``action`` (under the simulator lock) after ``sim_seconds`` of device time."""
        with self.lock:
            due = self.clock() + self.real_delay(sim_seconds)
            heapq.heappush(self._events, _Pending(due, next(self._seq), action))
            self.output_ready.notify_all()

    # --- host side (transports call these) --------------------------------------------------

    def write_from_host(self, data: bytes) -> None:
        """Bytes the driver wrote. Lost when unplugged, as on a real unplugged cable."""
        with self.lock:
            self._run_due_events()
            if not self.connected:
                return
            self.on_bytes(bytes(data))
            self.output_ready.notify_all()

    def read_to_host(self) -> bytes:
        """All output bytes whose time has come; the caller may wait on ``output_ready``."""
        with self.lock:
            self._run_due_events()
            data = bytes(self._out)
            self._out.clear()
            return data

    def next_due(self) -> float | None:
        """Real clock time of the next pending event, or None: how long a transport may sleep."""
        with self.lock:
            return self._events[0].due if self._events else None

    def wait_output(self, timeout: float) -> bytes:
        """Block up to ``timeout`` real seconds for output, then return what is readable."""
        deadline = self.clock() + timeout
        with self.lock:
            while True:
                data = self.read_to_host()
                if data:
                    return data
                remaining = deadline - self.clock()
                if remaining <= 0:
                    return b""
                nxt = self.next_due()
                wait = remaining if nxt is None else max(0.0, min(remaining, nxt - self.clock()))
                self.output_ready.wait(wait if wait > 0 else 0.0005)

    def replies_held_back(self) -> int:
        """Replies the device has produced that have not reached the line yet (held back by
        ``reply_delay`` or its own latency, or queued behind such a reply).

        A fault campaign waits for 0 after lowering ``reply_delay``: until then the device still
        owes answers to commands sent during the fault, and a real device sends them first.
        """
        with self.lock:
            self._run_due_events()
            return self._held

    def add_output_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (under the simulator lock; it must not block) whenever output may
        have become readable or a new event was scheduled."""
        with self.lock:
            self.output_ready.listeners.append(listener)

    def remove_output_listener(self, listener: Callable[[], None]) -> None:
        with self.lock:
            if listener in self.output_ready.listeners:
                self.output_ready.listeners.remove(listener)

    def _run_due_events(self) -> None:
        now = self.clock()
        while self._events and self._events[0].due <= now:
            heapq.heappop(self._events).action()

    # --- device side (instruments call these) -----------------------------------------------

    def on_bytes(self, data: bytes) -> None:
        """Split the incoming stream into command lines on any of ``input_terminators``."""
        if self._cr_pending:
            # The LF of a CR LF whose CR already ended a line: not an empty command.
            self._cr_pending = False
            if data[:1] == b"\n":
                data = data[1:]
        self._line_buf += data
        while True:
            cut = None
            for term in self.input_terminators:
                i = self._line_buf.find(term)
                if i >= 0 and (cut is None or i < cut[0] or (i == cut[0] and len(term) > cut[1])):
                    cut = (i, len(term))
            if cut is None:
                return
            i, n = cut
            # A lone CR at the very end may be the first half of a CR LF, or a whole terminator
            # (devices that accept CR alone): end the line now, so a CR-only driver gets its
            # reply, and swallow the LF if it follows.
            if n == 1 and self._line_buf[i : i + 1] == b"\r" and i == len(self._line_buf) - 1:
                if b"\r\n" in self.input_terminators:
                    self._cr_pending = True
            line = bytes(self._line_buf[:i])
            del self._line_buf[: i + n]
            if line.strip():
                self._dispatch(line.decode("ascii", errors="replace").strip())

    def _dispatch(self, line: str) -> None:
        self.received_lines.append(line)
        if self.faults.stuck:
            return
        if self.faults.echo:
            self._emit(line.encode() + self.reply_terminator, delay=0.0)
        self.handle_line(line)

    def handle_line(self, line: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def protocol_error(self, line: str, why: str) -> None:
        """Record a command the device could not parse (it stays silent, as real ones do)."""
        self.protocol_errors.append(f"{line!r}: {why}")

    def reply(self, text: str | bytes, *, delay: float = 0.0, terminate: bool = True) -> None:
        """Send a reply after ``delay`` real seconds plus faults; the only way devices answer."""
        with self.lock:  # also called from other threads (emit_unsolicited, coupled instruments)
            self._reply(text, delay=delay, terminate=terminate)

    def _reply(self, text: str | bytes, *, delay: float, terminate: bool) -> None:
        payload = text.encode("ascii") if isinstance(text, str) else bytes(text)
        if terminate:
            payload += self.reply_terminator
        f = self.faults
        if f.drop_next > 0:
            f.drop_next -= 1
            return
        if f.drop_probability and self._rng.random() < f.drop_probability:
            return
        if f.garble_next > 0 or (
            f.garble_probability and self._rng.random() < f.garble_probability
        ):
            if f.garble_next > 0:
                f.garble_next -= 1
            payload = self._garble(payload)
        self.replies_sent += 1
        self._emit(payload, delay=delay + f.reply_delay)

    def _garble(self, payload: bytes) -> bytes:
        body = bytearray(payload)
        # Corrupt a byte of the body, never the terminator: line noise rarely eats the CR LF, and
        # a garbled-but-framed reply is the case a driver must detect by parsing.
        n = max(1, len(body) - len(self.reply_terminator))
        i = self._rng.randrange(n)
        body[i] = (body[i] ^ 0x5A) & 0x7F or 0x3F
        if bytes(body) == payload:
            body[i] = ord("#")
        return bytes(body)

    def _emit(self, payload: bytes, *, delay: float) -> None:
        now = self.clock()
        # One line out of the device: bytes leave in the order the device produced them, so a
        # reply held back (reply_delay, a slow answer) also holds back everything after it, even
        # once the delay is lowered. A real device never lets a later reply overtake.
        due = max(now + delay, self._last_out_due)
        if self.byte_time:
            # Bytes leave one after another at the baud rate: 10 bits per byte on 8N1.
            due += len(payload) * 10.0 / self.baudrate
        self._last_out_due = due

        def deliver(p=payload):
            self._held -= 1
            if self.connected:
                self._out += p
                self.output_ready.notify_all()

        self._held += 1
        if due <= now and self._held == 1:
            deliver()  # nothing is held back: straight onto the line
        else:
            # Queued even when already due: an earlier reply whose time has come may still sit
            # in the queue (nobody has read since), and this one must not pass it.
            heapq.heappush(self._events, _Pending(due, next(self._seq), deliver))
        self.output_ready.notify_all()

    def emit_unsolicited(self, payload: bytes) -> None:
        """Bytes the device sends unasked (late packets), subject to faults like replies."""
        self.reply(payload, terminate=False)

    # --- fault controls ---------------------------------------------------------------------

    def inject_stale(self, data: bytes) -> None:
        """Leave bytes in the host's input buffer, as a previous session or line noise would."""
        with self.lock:
            self._out += data
            self.output_ready.notify_all()

    def unplug(self) -> None:
        """Cable pulled: output and pending replies vanish, input is lost until ``replug``."""
        with self.lock:
            self.connected = False
            self.unplug_count += 1
            self._out.clear()
            self._line_buf.clear()
            self._cr_pending = False
            self._last_out_due = 0.0
            self._events = [
                e for e in self._events if getattr(e.action, "__name__", "") != "deliver"
            ]
            self._held = 0
            heapq.heapify(self._events)
            self.output_ready.notify_all()

    def replug(self) -> None:
        with self.lock:
            self.connected = True
            self.output_ready.notify_all()

    def queue_error(self, code: int) -> None:
        """Put an error code in the device's error queue, for devices that have one."""
        raise NotImplementedError(f"{self.kind} has no error queue")
