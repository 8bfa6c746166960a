"""pyserial URL handler ``sim://KIND?options``: a simulator inside this process, no tty, no thread.

``import daqbridge.sim`` registers the handler, after which
``serial.serial_for_url("sim://esp300?speed=10&name=stage&reply_delay=0.1", timeout=1)`` returns
a port object that behaves like a pyserial port (read timeouts, in_waiting, buffer resets,
cancel_read) but calls the simulator directly: a few microseconds per query, which makes it the
transport for unit tests and benchmarks. Use ``serve_pty`` when a real tty matters.

``name=X`` attaches to the simulator registered as X (creating and registering it if there is
none), so a test can reach the very instance behind the port, and two ports can share one device
as two programs would share one bus. Other options are used only when the simulator is created.
An unplugged simulator makes reads and writes fail like a vanished USB adapter; a port opened
before an unplug stays dead after replug, as a real file descriptor would: reopen it.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from typing import Any

from serial.serialutil import PortNotOpenError, SerialBase, SerialException, to_bytes

from daqbridge.errors import DaqbridgeError
from daqbridge.sim._core import SerialSimulator
from daqbridge.sim._registry import create_simulator, lookup, register

_exclusive: dict[int, int] = {}  # id(simulator) -> number of exclusive holders (0 or 1)
_exclusive_lock = threading.Lock()


def parse_sim_url(url: str) -> tuple[str, str | None, dict[str, str]]:
    """Split ``sim://KIND?name=X&opt=v`` into (kind, name, options)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "sim":
        raise SerialException(f"expected a URL of the form sim://KIND?options, got {url!r}")
    kind = (parts.netloc or parts.path.strip("/")).lower()
    if not kind:
        raise SerialException(
            f"{url!r} names no simulator kind: use sim://KIND?options, e.g. sim://esp300?speed=10"
        )
    options: dict[str, str] = {}
    for item in filter(None, parts.query.split("&")):
        key, eq, value = item.partition("=")
        key = urllib.parse.unquote_plus(key).strip()
        if not key:
            raise SerialException(f"empty option name in {url!r}")
        if key in options:
            raise SerialException(f"option {key!r} appears twice in {url!r}")
        # A bare flag (``?echo``) means true, as on the command line.
        options[key] = urllib.parse.unquote_plus(value) if eq else "1"
    name = options.pop("name", None)
    return kind, name, options


class Serial(SerialBase):
    """A pyserial port whose far end is a simulator object (see module docstring)."""

    never_blocks_host_io = True
    """``write()`` hands the bytes to the simulator at once and ``read()`` of what
    ``in_waiting`` reports returns at once, so daqbridge's transport may call them on an event
    loop instead of handing them to a thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.simulator: SerialSimulator | None = None
        self._rx = bytearray()
        self._cancel = False
        self._unplug_count = 0
        self._holds_exclusive = False
        super().__init__(*args, **kwargs)

    # --- lifecycle ------------------------------------------------------------------------------

    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        sim = self._attach(self._port)
        if not sim.connected:
            raise SerialException(
                f"could not open port {self._port}: device disconnected (the {sim.kind} "
                "simulator is unplugged)"
            )
        if self._exclusive:
            with _exclusive_lock:
                if _exclusive.get(id(sim)):
                    raise SerialException(
                        f"Could not exclusively lock port {self._port}: another port holds the "
                        f"{sim.kind} simulator exclusively"
                    )
                _exclusive[id(sim)] = 1
            self._holds_exclusive = True
        self.simulator = sim
        self._unplug_count = sim.unplug_count
        self._rx.clear()
        self._cancel = False
        self.is_open = True
        self._reconfigure_port()

    def _attach(self, url: str) -> SerialSimulator:
        kind, name, options = parse_sim_url(url)
        try:
            if name is not None:
                existing = lookup(name, None)
                if existing is not None:
                    if existing.kind != kind:
                        raise SerialException(
                            f"{url!r}: the simulator named {name!r} is a {existing.kind}, "
                            f"not a {kind}"
                        )
                    return existing
            sim = create_simulator(kind, **options)
            if name is not None:
                register(name, sim)
            return sim
        except DaqbridgeError as exc:
            raise SerialException(f"could not open port {url}: {exc}") from exc

    def close(self) -> None:
        if self.is_open:
            self.is_open = False
            self._release_exclusive()
            sim = self.simulator
            if sim is not None:
                with sim.lock:  # wake a reader blocked in another thread
                    sim.output_ready.notify_all()
        super().close()

    def _release_exclusive(self) -> None:
        if self._holds_exclusive and self.simulator is not None:
            with _exclusive_lock:
                _exclusive.pop(id(self.simulator), None)
            self._holds_exclusive = False

    def _reconfigure_port(self) -> None:
        # Settings are accepted and ignored, as by a pty; a wrong baud rate is a driver-config
        # bug the serial tests catch against serve_pty profiles, not here.
        if not isinstance(self._baudrate, int) or not 0 < self._baudrate < 2**32:
            raise ValueError(f"invalid baudrate: {self._baudrate!r}")

    # --- I/O ------------------------------------------------------------------------------------

    def _sim(self) -> SerialSimulator:
        if not self.is_open or self.simulator is None:
            raise PortNotOpenError()
        sim = self.simulator
        if not sim.connected or sim.unplug_count != self._unplug_count:
            raise SerialException(
                f"device disconnected: the {sim.kind} simulator behind {self._port} was unplugged"
                + ("" if not sim.connected else "; reopen the port after a replug")
            )
        return sim

    def _pull(self, sim: SerialSimulator) -> None:
        self._rx += sim.read_to_host()

    @property
    def in_waiting(self) -> int:
        sim = self._sim()
        with sim.lock:
            self._pull(sim)
        return len(self._rx)

    @property
    def out_waiting(self) -> int:
        self._sim()
        return 0

    def read(self, size: int = 1) -> bytes:
        """Up to ``size`` bytes, waiting as long as the port ``timeout`` allows (None: forever)."""
        sim = self._sim()
        if size <= 0:
            return b""
        timeout = self._timeout
        deadline = None if timeout is None else sim.clock() + timeout
        with sim.lock:
            while True:
                self._pull(sim)
                if len(self._rx) >= size or self._cancel:
                    break
                now = sim.clock()
                if deadline is not None and now >= deadline:
                    break
                wait = None if deadline is None else deadline - now
                due = sim.next_due()
                if due is not None:
                    gap = max(due - now, 0.0)
                    wait = gap if wait is None else min(wait, gap)
                sim.output_ready.wait(wait if wait is None or wait > 0 else 0.0005)
                sim = self._sim()  # unplugged or closed while waiting
            self._cancel = False
            data = bytes(self._rx[:size])
            del self._rx[:size]
        return data

    def write(self, data: bytes) -> int:
        sim = self._sim()
        payload = to_bytes(data)
        sim.write_from_host(payload)
        return len(payload)

    def flush(self) -> None:
        if self.is_open:  # io.RawIOBase.close() flushes after is_open went False
            self._sim()

    def reset_input_buffer(self) -> None:
        sim = self._sim()
        with sim.lock:
            self._pull(sim)
            self._rx.clear()

    def reset_output_buffer(self) -> None:
        self._sim()  # writes reach the device at once: nothing is ever waiting to go out

    def cancel_read(self) -> None:
        sim = self.simulator
        if sim is None:
            return
        with sim.lock:
            self._cancel = True
            sim.output_ready.notify_all()

    def cancel_write(self) -> None:
        pass

    def send_break(self, duration: float = 0.25) -> None:
        self._sim()
        time.sleep(duration)

    # Modem lines: a three-wire cable, as the lab's instruments use (handshake ignored).
    def _update_break_state(self) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass

    def _update_dtr_state(self) -> None:
        pass

    @property
    def cts(self) -> bool:
        self._sim()
        return True

    @property
    def dsr(self) -> bool:
        self._sim()
        return True

    @property
    def ri(self) -> bool:
        self._sim()
        return False

    @property
    def cd(self) -> bool:
        self._sim()
        return True

    def fileno(self) -> int:
        raise SerialException(
            "sim:// ports have no file descriptor; use daqbridge.sim.serve_pty for select()"
        )
