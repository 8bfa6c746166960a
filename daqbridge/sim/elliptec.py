"""Wire-level simulator of a Thorlabs Elliptec bus: ELL14 rotation mounts sharing one serial line.

What makes this bus hard for drivers, and what the simulator therefore reproduces
(INSTRUMENTS.md, "Thorlabs Elliptec ELL14"):

* Host packets have no terminator. The stream is cut by each command's known data length, so a
  single write may hold several packets, and CR/LF between packets is skipped.
* Motion takes real (device) time and its ``PO`` reply is sent when the motion ENDS: it arrives
  unsolicited on the shared line, possibly in the middle of another mount's transaction.
* Faults are latched: the next ``gs`` returns the fault once, then the mount reports 00 again.
* A move sent less than 100 ms of device time after the previous move command to the same mount
  goes to position 0 (``enforce_command_spacing=True``, the default).
* Absent addresses are silent; malformed packets are silent and recorded in ``protocol_errors``.

Choices where the sources say nothing (docs/simulators.md lists them):

* ``ho`` takes an optional direction digit. A ``0``/``1`` after ``ho`` is the direction unless it
  is followed by a known command (``2ho0gs`` is ``2ho`` + ``0gs``; ``2ho00gs`` is ``2ho0`` +
  ``0gs``). A packet is complete when its write ends: ``2ho`` then ``0gs`` written separately is
  fine, but ``2ho`` then ``1`` written separately is ``2ho`` plus a stray ``1``.
* A packet left incomplete for ``packet_timeout_s`` (1 s of real time: a property of the line,
  so ``speed`` does not shorten it) is dropped when the next bytes arrive and latches status 01
  (communication timeout).
* Set commands ``sv``, ``sj``, ``so``, ``us`` reply ``GS`` (00, or 04 for a value out of range), as
  public drivers that run on real units expect; ``ca`` replies ``GS00`` from the new address.
* A move command during a motion replaces it (no ``PO`` for the abandoned target); ``mr``, ``fw``
  and ``bw`` count from the position at that moment. Targets beyond one revolution either way
  (|pulses| > 143360) are refused with ``GS0C``. A jog step of 0 makes ``fw``/``bw`` run until
  ``st`` or the end of that range. Homing goes to position 0; its direction is accepted and has
  no other effect.

Maintenance commands (issue 14). Sources: Thorlabs "ELLx OEM/Bare modules protocol manual",
Issue 5, Nov 2019 (a copy: https://pdffox.com/communications-protocol-manual-pdf-free.html), and
the public driver TapyrLabs/tl_elliptec (``tl_elliptec/devices/base.py``, ``protocol.py``), which
implements every command of that manual against real units:

* ``om`` (optimize motors), ``cm`` (clean mechanics), ``s1``/``s2`` (search frequency of motor
  1/2) and ``c1``/``c2`` (scan current curve): no data. While they run the mount sends ``GS09``
  unprompted every ``BUSY_FRAME_S`` (1 s device time) and answers ``gs`` with 09; at the end it
  replies ``GS00`` (``C1``/``C2`` + 87 samples of 12 hex characters for ``c1``/``c2``: period as
  a little-endian word, current as a little-endian dword, x1866 per A, as tl_elliptec decodes
  them). Durations are simulator choices (``TASK_SECONDS``): the sources only say "several
  minutes" (tl_elliptec waits 300 s for om/cm, 30 s for s1/s2, "up to ~12 s" for c1/c2). A move
  or a second long run during one is refused with ``GS09``. ``st`` aborts the run (tl_elliptec:
  "aborts an in-progress optimize/clean cycle"); its closing ``GS`` never comes.
* ``f1``/``b1``/``f2``/``b2`` (forward/backward period of motor 1/2): 4 hex characters, the
  12-bit period with the top nibble 8 (``8093``); ``FFFF`` restores the factory period. Reply
  ``GS00`` (``GS04`` otherwise); ``i1``/``i2`` report the new periods. The sources disagree on
  the restore value: tl_elliptec sends 3 characters (``FFF``). Here a 3-character value is an
  incomplete packet (``GS01`` latched), so a driver that sends it fails loudly.
* ``sk`` (skip the frequency search at power-up): no data, reply ``GS00``.
* ``ga<addr>`` (group address, for synchronised moves): 1 address character. The mount also
  listens on that address until its next move (tl_elliptec: "listens on temporary_address until
  its next move") and replies ``GS00`` from it, as ``ca`` replies from the new address; the
  ``PO`` of the synchronised move comes from each mount's own address, so the host can tell
  the mounts apart (simulator choice: the sources do not say).
* ``is<2 hex>`` (isolate for that many minutes): replies ``GS05`` (module isolated), then
  ignores everything addressed to it; when the time is up it sends ``GS06`` (out of isolation)
  unprompted. Inferred from the status table (05/06); the sources do not show the exchange.

Also documented from tl_elliptec: on real units ``st`` does NOT interrupt a bounded move
(``ma``/``mr``/``ho``), only a continuous jog (jog step 0) or an om/cm run. This simulator still
stops a bounded move and replies ``PO`` with the position reached (the existing contract of the
native driver's ``stop()``); a driver that relies on that is wrong on the bench. The "move too
soon goes to 0" rule is timed from the previous MOVE command received by that mount (not its
end), in device time (``command_spacing_s``, 100 ms: INSTRUMENTS.md "allow about 100 ms between
commands"), so ``speed`` shortens it as it shortens motion.

Unknown commands stay silent and are recorded in ``protocol_errors``, as the real bus does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from daqbridge.errors import ConfigError
from daqbridge.sim._core import Faults, SerialSimulator

PULSES_PER_REV = 0x23000  # 143360, from the IN reply of real ELL14 units
PULSES_PER_DEG = PULSES_PER_REV / 360.0
POSITION_LIMIT = PULSES_PER_REV  # simulator choice: one revolution either way

MODEL = "0E"  # ELL14
FIRST_SERIAL = 11400517  # the serial of the unit at address 2 in the INSTRUMENTS.md transcript
YEAR = "2023"
FIRMWARE = "17"
HARDWARE = "01"
TRAVEL = "0168"  # 360 deg

STATUS_OK = 0x00
STATUS_COMM_TIMEOUT = 0x01
STATUS_MECH_TIMEOUT = 0x02
STATUS_COMMAND_ERROR = 0x03
STATUS_VALUE_OUT_OF_RANGE = 0x04
STATUS_BUSY = 0x09
STATUS_OUT_OF_RANGE = 0x0C
STATUS_CODES = {
    0x00: "ok",
    0x01: "communication timeout",
    0x02: "mechanical timeout",
    0x03: "command error",
    0x04: "value out of range",
    0x05: "module isolated",
    0x06: "out of isolation",
    0x07: "initialising error",
    0x08: "thermal error",
    0x09: "busy",
    0x0A: "sensor error",
    0x0B: "motor error",
    0x0C: "out of range",
    0x0D: "over current",
}

# command -> characters of data after it; -1 marks ho's optional direction digit
DATA_LENGTH = {
    "in": 0, "gs": 0, "gp": 0, "st": 0, "gv": 0, "gj": 0, "go": 0,
    "i1": 0, "i2": 0, "i3": 0, "us": 0, "fw": 0, "bw": 0,
    "ma": 8, "mr": 8, "sj": 8, "so": 8, "sv": 2, "ca": 1, "ho": -1,
    # maintenance commands (Thorlabs ELLx protocol manual; TapyrLabs/tl_elliptec)
    "om": 0, "cm": 0, "s1": 0, "s2": 0, "sk": 0, "c1": 0, "c2": 0,
    "f1": 4, "b1": 4, "f2": 4, "b2": 4, "ga": 1, "is": 2,
}  # fmt: skip
MOVE_COMMANDS = frozenset({"ma", "mr", "ho", "fw", "bw"})
HEX = frozenset("0123456789ABCDEFabcdef")
ADDRESS_CHARS = "0123456789ABCDEF"
SEPARATORS = b"\r\n"
MOTION_OVERHEAD_S = 0.05  # acceleration and settling of a resonant piezo move
STATUS_ISOLATED = 0x05
STATUS_OUT_OF_ISOLATION = 0x06
# Device seconds of the long maintenance runs (simulator choices: the sources only say "several
# minutes" for om/cm, "up to ~12 s" for c1/c2, and give s1/s2 a 30 s host timeout).
TASK_SECONDS = {"om": 60.0, "cm": 120.0, "s1": 8.0, "s2": 8.0, "c1": 12.0, "c2": 12.0}
BUSY_FRAME_S = 1.0  # device seconds between the unsolicited GS09 frames of a long run
FACTORY_PERIODS = {1: (0x93, 0x90), 2: (0x91, 0x8E)}  # forward, backward (14.74 MHz / f)
CURVE_SAMPLES = 87  # c1/c2: 87 (period, current) samples spanning ~70-120 kHz

_INSTRUMENT = "Elliptec bus simulator"


def to_hex32(value: int) -> str:
    """Signed pulses -> 8 upper-case hex digits, two's complement (-3982 -> 'FFFFF072')."""
    return f"{value & 0xFFFFFFFF:08X}"


def from_hex32(text: str) -> int:
    value = int(text, 16)
    return value - (1 << 32) if value & 0x80000000 else value


def address_char(address: int | str) -> str:
    """0-15, '0'-'F' (or a decimal string '10'-'15') -> the bus address character."""
    if isinstance(address, bool):
        raise _bad_address(address)
    if isinstance(address, int):
        if 0 <= address <= 15:
            return ADDRESS_CHARS[address]
        raise _bad_address(address)
    text = str(address).strip().upper()
    if len(text) == 1 and text in ADDRESS_CHARS:
        return text
    if text.isdigit() and 0 <= int(text) <= 15:
        return ADDRESS_CHARS[int(text)]
    raise _bad_address(address)


def _bad_address(address: object) -> ConfigError:
    return ConfigError(
        f"{address!r} is not an Elliptec bus address",
        key="addresses",
        instrument=_INSTRUMENT,
        fix="use 0-15 or one hex character 0-F, e.g. addresses=[2, 3, 8]",
    )


def _parse_addresses(addresses: Iterable[str | int] | str | int) -> list[str]:
    if isinstance(addresses, (str, int)):
        items = [a for a in re.split(r"[\s,;]+", str(addresses).strip(" []")) if a]
    else:
        items = list(addresses)
    chars = [address_char(a) for a in items]
    duplicates = sorted({c for c in chars if chars.count(c) > 1})
    if duplicates:
        raise ConfigError(
            f"address {', '.join(duplicates)} given twice: two mounts cannot share an address",
            key="addresses",
            instrument=_INSTRUMENT,
            fix="list each bus address once",
        )
    return chars


def _as_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(
        f"option {name}={value!r} is not a boolean",
        key=name,
        instrument=_INSTRUMENT,
        fix=f"use {name}=true or {name}=false",
    )


def _as_float(name: str, value: object, *, positive: bool = False) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if not (number > 0 if positive else number >= 0):
        raise ConfigError(
            f"option {name}={value!r} is not a number {'>' if positive else '>='} 0",
            key=name,
            instrument=_INSTRUMENT,
            fix=f"give {name} as a {'positive' if positive else 'non-negative'} number",
        )
    return number


@dataclass
class _Motion:
    start: int
    end: int
    started: float  # real clock
    duration: float  # device seconds
    stalled: bool = False


@dataclass
class _Mount:
    """One ELL14 on the bus. Its address can change (``ca``); its serial number cannot."""

    address: str
    serial: int
    position: int = 0
    velocity_pct: int = 100
    jog_step: int = round(10 * PULSES_PER_DEG)  # 10 deg, 3982 pulses
    home_offset: int = 0
    latched: int | None = None
    motion: _Motion | None = None
    last_move_at: float | None = None
    stall_next: bool = False
    history: list[str] = field(default_factory=list)
    group: str | None = None  # ``ga``: also answers here until its next move
    isolated_until: float | None = None  # ``is``: real clock time the isolation ends
    task: str | None = None  # the long maintenance run in progress (om, cm, s1, ...)
    task_gen: int = 0
    periods: dict[int, list[int]] = field(
        default_factory=lambda: {m: list(p) for m, p in FACTORY_PERIODS.items()}
    )


class ElliptecBusSimulator(SerialSimulator):
    """ELL14 rotation mounts on one half-duplex line; every packet on the line reaches all of them.

    Options: ``addresses`` (default ``[0]``: a mount leaves the factory at address 0, and a
    driver that assumes another address must fail here as it would on a new unit; a bus of
    several mounts names its addresses, as INSTRUMENTS.md's ``2``/``3``/``8``),
    ``enforce_command_spacing`` (the too-soon-move-goes-to-0 quirk, default True),
    ``command_spacing_s`` (0.1), ``max_speed_deg_s`` (300 at velocity 100 %: 360 deg in about
    1.25 s), ``reply_latency`` (device seconds, default 5 ms), ``packet_timeout_s`` (1.0), plus the
    engine's ``speed``, ``faults``, ``byte_time``, ``baudrate``, ``clock``.
    """

    kind: ClassVar[str] = "elliptec"
    default_baudrate: ClassVar[int] = 9600
    reply_terminator: bytes = b"\r\n"

    def __init__(
        self,
        *,
        addresses: Iterable[str | int] | str | int = (0,),
        enforce_command_spacing: bool | str = True,
        command_spacing_s: float | str = 0.1,
        max_speed_deg_s: float | str = 300.0,
        reply_latency: float | str = 0.005,
        packet_timeout_s: float | str = 1.0,
        speed: float = 1.0,
        faults: Faults | None = None,
        byte_time: bool = False,
        baudrate: int | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        kw = {} if clock is None else {"clock": clock}
        super().__init__(
            speed=_as_float("speed", speed, positive=True),
            faults=faults,
            byte_time=_as_bool("byte_time", byte_time),
            baudrate=int(_as_float("baudrate", baudrate, positive=True)) if baudrate else None,
            **kw,
        )
        self.enforce_command_spacing = _as_bool("enforce_command_spacing", enforce_command_spacing)
        self.command_spacing_s = _as_float("command_spacing_s", command_spacing_s)
        self.max_speed_deg_s = _as_float("max_speed_deg_s", max_speed_deg_s, positive=True)
        self.reply_latency = _as_float("reply_latency", reply_latency)
        self.packet_timeout_s = _as_float("packet_timeout_s", packet_timeout_s, positive=True)
        self._mounts = [
            _Mount(address=a, serial=FIRST_SERIAL + ADDRESS_CHARS.index(a) - 2)
            for a in _parse_addresses(addresses)
        ]
        self._garbage = ""
        self._partial_at = 0.0
        self.spacing_violations: list[str] = []
        """Move commands that went to 0 because they came too soon after the previous move."""

    # --- public helpers (tests, coupled simulators) ------------------------------------------

    @property
    def addresses(self) -> list[str]:
        """The bus addresses that answer now (``ca`` changes them)."""
        with self.lock:
            return [m.address for m in self._mounts]

    def position_pulses(self, addr: int | str) -> int:
        with self.lock:
            return self._position_now(self._mount(addr))

    def position_deg(self, addr: int | str) -> float:
        return self.position_pulses(addr) / PULSES_PER_DEG

    def is_moving(self, addr: int | str) -> bool:
        with self.lock:
            self._run_due_events()
            return self._mount(addr).motion is not None

    def inject_status(self, addr: int | str, code: int) -> None:
        """Latch a fault: the mount's next ``gs`` returns ``code`` once."""
        if not (isinstance(code, int) and 0 <= code <= 0xFF):
            raise ConfigError(
                f"status code {code!r} is not a byte",
                key="code",
                instrument=_INSTRUMENT,
                fix="give one of the GS codes 0x00-0x0D (INSTRUMENTS.md)",
            )
        with self.lock:
            self._mount(addr).latched = code

    def stall(self, addr: int | str) -> None:
        """The mount's next move stops halfway and ends with ``GS02`` (mechanical timeout)."""
        with self.lock:
            self._mount(addr).stall_next = True

    def _mount(self, addr: int | str) -> _Mount:
        char = address_char(addr)
        for m in self._mounts:
            if m.address == char:
                return m
        raise ConfigError(
            f"no mount answers at address {char} on the simulated bus "
            f"(mounts at {', '.join(self.addresses) or 'none'})",
            key="addr",
            instrument=_INSTRUMENT,
            fix="use one of the bus addresses the simulator was created with",
        )

    # --- stream splitting -----------------------------------------------------------------------

    def on_bytes(self, data: bytes) -> None:
        now = self.clock()
        # Real seconds, never scaled by ``speed``: the timeout belongs to the wire, not to the
        # motion, and a host descheduled between two pieces of one packet is not a faster line.
        # Scaled (50 ms at the sim lab's speed 20) it dropped packets on a loaded host, and the
        # mount went silent until the driver's 1 s reply timeout.
        if self._line_buf and now - self._partial_at > self.packet_timeout_s:
            self._parse(final=True)  # the incomplete packet timed out before these bytes came
        self._line_buf += data
        self._partial_at = now
        self._parse(final=False)

    def _parse(self, *, final: bool) -> None:
        buf = self._line_buf
        while True:
            while buf and buf[0] in SEPARATORS:
                del buf[0]
            if not buf:
                break
            text = buf[:12].decode("ascii", errors="replace")
            verdict, size = self._packet_at(text, final=final)
            if verdict == "wait":
                break
            if verdict == "garbage":  # not a packet start: skip one byte and look again
                self._garbage += text[0]
                del buf[0]
                continue
            self._flush_garbage()
            packet = text[:size]
            del buf[:size]
            if verdict == "packet":
                self._dispatch(packet)
            elif verdict == "incomplete":
                self._comm_timeout(packet)
            else:
                self.protocol_error(packet, "malformed data for this command")
        self._flush_garbage()

    def _packet_at(self, text: str, *, final: bool) -> tuple[str, int]:
        """What starts ``text``: ('packet', n), ('malformed', n) or ('incomplete', n) to drop n
        characters, ('garbage', 1) for a byte that starts no packet, ('wait', 0) for more bytes."""
        if text[0] not in ADDRESS_CHARS:
            return "garbage", 1
        if len(text) < 3:
            plausible = all(c.islower() or c.isdigit() for c in text[1:])
            if not plausible or (final and len(text) == 1):
                return "garbage", 1
            return ("incomplete", len(text)) if final else ("wait", 0)
        command = text[1:3]
        if command not in DATA_LENGTH:
            return "garbage", 1
        need = DATA_LENGTH[command]
        data = text[3:]
        if need == -1:  # ho[0|1]
            if not data or data[0] not in "01":
                return "packet", 3
            follow = data[1:3]
            if follow in DATA_LENGTH:
                return "packet", 3  # the digit is the address of the next packet (``0gs``)
            if len(follow) == 1 and not final and any(c.startswith(follow) for c in DATA_LENGTH):
                return "wait", 0
            return "packet", 4
        valid = ADDRESS_CHARS + ADDRESS_CHARS.lower() if command in ("ca", "ga") else HEX
        for i, c in enumerate(data[:need]):
            if c not in valid:
                return "malformed", 3 + i
        if len(data) < need:
            return ("incomplete", len(text)) if final else ("wait", 0)
        return "packet", 3 + need

    def _flush_garbage(self) -> None:
        if self._garbage:
            self.protocol_error(self._garbage, "bytes that start no Elliptec packet")
            self._garbage = ""

    def _comm_timeout(self, partial: str) -> None:
        self.protocol_error(partial, "packet never completed (communication timeout)")
        for m in self._mounts:
            if m.address == partial[0]:
                m.latched = STATUS_COMM_TIMEOUT

    # --- packets ----------------------------------------------------------------------------

    def handle_line(self, line: str) -> None:
        address, command, data = line[0], line[1:3], line[3:]
        for mount in [m for m in self._mounts if address in (m.address, m.group)]:
            mount.history.append(line)
            if mount.isolated_until is not None:
                if self.clock() < mount.isolated_until:
                    continue  # isolated: deaf to the bus until the time is up
                mount.isolated_until = None
            getattr(self, f"_cmd_{command}")(mount, data)

    def _send(self, mount: _Mount, kind: str, data: str, *, latency: bool = True) -> None:
        delay = self.real_delay(self.reply_latency) if latency else 0.0
        self.reply(f"{mount.address}{kind}{data}", delay=delay)

    def _status(self, mount: _Mount, code: int, *, latency: bool = True) -> None:
        """Reply GS<code>; a fault is also latched so the next ``gs`` reports it once more."""
        if code not in (STATUS_OK, STATUS_BUSY):
            mount.latched = code
        self._send(mount, "GS", f"{code:02X}", latency=latency)

    def _cmd_in(self, mount: _Mount, data: str) -> None:
        info = f"{MODEL}{mount.serial:08d}{YEAR}{FIRMWARE}{HARDWARE}{TRAVEL}{PULSES_PER_REV:08X}"
        self._send(mount, "IN", info)

    def _cmd_gs(self, mount: _Mount, data: str) -> None:
        if mount.latched is not None:
            code, mount.latched = mount.latched, None
        else:
            busy = mount.motion is not None or mount.task is not None
            code = STATUS_BUSY if busy else STATUS_OK
        self._send(mount, "GS", f"{code:02X}")

    def _cmd_gp(self, mount: _Mount, data: str) -> None:
        self._send(mount, "PO", to_hex32(self._position_now(mount)))

    def _cmd_gv(self, mount: _Mount, data: str) -> None:
        self._send(mount, "GV", f"{mount.velocity_pct:02X}")

    def _cmd_gj(self, mount: _Mount, data: str) -> None:
        self._send(mount, "GJ", to_hex32(mount.jog_step))

    def _cmd_go(self, mount: _Mount, data: str) -> None:
        self._send(mount, "HO", to_hex32(mount.home_offset))

    def _cmd_sv(self, mount: _Mount, data: str) -> None:
        value = int(data, 16)
        if not 1 <= value <= 100:
            self._status(mount, STATUS_VALUE_OUT_OF_RANGE)
            return
        mount.velocity_pct = value
        self._status(mount, STATUS_OK)

    def _cmd_sj(self, mount: _Mount, data: str) -> None:
        value = from_hex32(data)
        if not 0 <= value <= POSITION_LIMIT:
            self._status(mount, STATUS_VALUE_OUT_OF_RANGE)
            return
        mount.jog_step = value
        self._status(mount, STATUS_OK)

    def _cmd_so(self, mount: _Mount, data: str) -> None:
        value = from_hex32(data)
        if not -POSITION_LIMIT <= value <= POSITION_LIMIT:
            self._status(mount, STATUS_VALUE_OUT_OF_RANGE)
            return
        mount.home_offset = value
        self._status(mount, STATUS_OK)

    def _cmd_ca(self, mount: _Mount, data: str) -> None:
        mount.address = data.upper()
        self._status(mount, STATUS_OK)

    def _cmd_us(self, mount: _Mount, data: str) -> None:
        self._status(mount, STATUS_OK)

    def _motor_info(self, mount: _Mount, motor: int) -> None:
        # loop on, motor on, current 0.6 A (x1866), ramps, forward/backward periods (14.74 MHz / f)
        fwd, bwd = mount.periods[motor]
        self._send(mount, f"I{motor}", f"11{1120:04X}FFFFFFFF{fwd:04X}{bwd:04X}")

    def _cmd_i1(self, mount: _Mount, data: str) -> None:
        self._motor_info(mount, 1)

    def _cmd_i2(self, mount: _Mount, data: str) -> None:
        self._motor_info(mount, 2)

    def _cmd_i3(self, mount: _Mount, data: str) -> None:
        self._status(mount, STATUS_COMMAND_ERROR)  # an ELL14 has two motors

    def _cmd_st(self, mount: _Mount, data: str) -> None:
        mount.task = None  # aborts a maintenance run too; its closing GS never comes
        mount.task_gen += 1
        mount.position = self._position_now(mount)
        mount.motion = None
        self._send(mount, "PO", to_hex32(mount.position))

    # --- maintenance -------------------------------------------------------------------------

    def _task(self, mount: _Mount, name: str, done: Callable[[], None]) -> None:
        """A long run: GS09 frames unprompted every BUSY_FRAME_S, then ``done()`` replies."""
        if mount.task is not None or mount.motion is not None:
            self._status(mount, STATUS_BUSY)
            return
        mount.task = name
        mount.task_gen += 1
        gen = mount.task_gen
        duration = TASK_SECONDS[name]

        def busy_frame(at: float) -> None:
            if mount.task_gen != gen or mount.task is None:
                return
            self._send(mount, "GS", f"{STATUS_BUSY:02X}", latency=False)
            if at + BUSY_FRAME_S < duration:
                self.schedule(BUSY_FRAME_S, lambda: busy_frame(at + BUSY_FRAME_S))

        def finish() -> None:
            if mount.task_gen != gen or mount.task is None:
                return  # stopped
            mount.task = None
            done()

        if self.real_delay(duration) > 0:  # at infinite speed the run takes no time to be busy
            self.schedule(BUSY_FRAME_S, lambda: busy_frame(BUSY_FRAME_S))
        self.schedule(duration, finish)

    def _cmd_om(self, mount: _Mount, data: str) -> None:
        self._task(mount, "om", lambda: self._status(mount, STATUS_OK, latency=False))

    def _cmd_cm(self, mount: _Mount, data: str) -> None:
        self._task(mount, "cm", lambda: self._status(mount, STATUS_OK, latency=False))

    def _search(self, mount: _Mount, motor: int) -> None:
        def found() -> None:
            mount.periods[motor] = list(FACTORY_PERIODS[motor])
            self._status(mount, STATUS_OK, latency=False)

        self._task(mount, f"s{motor}", found)

    def _cmd_s1(self, mount: _Mount, data: str) -> None:
        self._search(mount, 1)

    def _cmd_s2(self, mount: _Mount, data: str) -> None:
        self._search(mount, 2)

    def _cmd_sk(self, mount: _Mount, data: str) -> None:
        self._status(mount, STATUS_OK)

    def _current_curve(self, mount: _Mount, motor: int) -> None:
        def measured() -> None:
            samples = []
            for i in range(CURVE_SAMPLES):
                period = 0x7A + i  # ~120 kHz down to ~70 kHz
                resonance = FACTORY_PERIODS[motor][0]
                amps = 0.9 - 0.5 * min(1.0, abs(period - resonance) / 20.0)
                raw = round(amps * 1866)
                samples.append(
                    period.to_bytes(2, "little").hex().upper()
                    + raw.to_bytes(4, "little").hex().upper()
                )
            self._send(mount, f"C{motor}", "".join(samples), latency=False)

        self._task(mount, f"c{motor}", measured)

    def _cmd_c1(self, mount: _Mount, data: str) -> None:
        self._current_curve(mount, 1)

    def _cmd_c2(self, mount: _Mount, data: str) -> None:
        self._current_curve(mount, 2)

    def _period(self, mount: _Mount, motor: int, direction: int, data: str) -> None:
        value = int(data, 16)
        if value == 0xFFFF:
            mount.periods[motor][direction] = FACTORY_PERIODS[motor][direction]
        elif value & 0xF000 == 0x8000:
            mount.periods[motor][direction] = value & 0x0FFF
        else:
            self._status(mount, STATUS_VALUE_OUT_OF_RANGE)
            return
        self._status(mount, STATUS_OK)

    def _cmd_f1(self, mount: _Mount, data: str) -> None:
        self._period(mount, 1, 0, data)

    def _cmd_b1(self, mount: _Mount, data: str) -> None:
        self._period(mount, 1, 1, data)

    def _cmd_f2(self, mount: _Mount, data: str) -> None:
        self._period(mount, 2, 0, data)

    def _cmd_b2(self, mount: _Mount, data: str) -> None:
        self._period(mount, 2, 1, data)

    def _cmd_ga(self, mount: _Mount, data: str) -> None:
        group = data.upper()
        mount.group = None if group == mount.address else group
        # Answered from the group address it now also listens on (as ``ca`` answers from the
        # new one), so a host sees which address the synchronised move must be sent to.
        self.reply(f"{group}GS{STATUS_OK:02X}", delay=self.real_delay(self.reply_latency))

    def _cmd_is(self, mount: _Mount, data: str) -> None:
        minutes = int(data, 16)
        self._send(mount, "GS", f"{STATUS_ISOLATED:02X}")  # a state, not a fault: not latched
        mount.isolated_until = self.clock() + self.real_delay(60.0 * minutes)

        def back() -> None:
            if mount.isolated_until is not None and self.clock() >= mount.isolated_until:
                mount.isolated_until = None
                self._send(mount, "GS", f"{STATUS_OUT_OF_ISOLATION:02X}", latency=False)

        self.schedule(60.0 * minutes, back)

    def _cmd_ma(self, mount: _Mount, data: str) -> None:
        self._move(mount, "ma", lambda now: from_hex32(data))

    def _cmd_mr(self, mount: _Mount, data: str) -> None:
        self._move(mount, "mr", lambda now: now + from_hex32(data))

    def _cmd_ho(self, mount: _Mount, data: str) -> None:
        self._move(mount, "ho", lambda now: 0)

    def _jog(self, mount: _Mount, command: str, sign: int) -> None:
        if mount.jog_step == 0:  # continuous: run to the end of the range unless stopped
            self._move(mount, command, lambda now: sign * POSITION_LIMIT)
        else:
            self._move(mount, command, lambda now: now + sign * mount.jog_step)

    def _cmd_fw(self, mount: _Mount, data: str) -> None:
        self._jog(mount, "fw", +1)

    def _cmd_bw(self, mount: _Mount, data: str) -> None:
        self._jog(mount, "bw", -1)

    # --- motion -----------------------------------------------------------------------------

    def _position_now(self, mount: _Mount) -> int:
        motion = mount.motion
        if motion is None:
            return mount.position
        elapsed = self.sim_elapsed(motion.started)
        if elapsed >= motion.duration:
            return motion.end
        return motion.start + round((motion.end - motion.start) * elapsed / motion.duration)

    def _move(self, mount: _Mount, command: str, target_from: Callable[[int], int]) -> None:
        mount.group = None  # a group address lasts until the move it synchronised
        if mount.task is not None:
            self._status(mount, STATUS_BUSY)
            return
        now = self.clock()
        current = self._position_now(mount)
        target = target_from(current)
        too_soon = (
            self.enforce_command_spacing
            and mount.last_move_at is not None
            and self.sim_elapsed(mount.last_move_at) < self.command_spacing_s
        )
        mount.last_move_at = now
        if too_soon:
            # The real firmware does this: a move that follows the previous one too closely
            # goes to 0. Drivers must wait about 100 ms between moves to one mount.
            self.spacing_violations.append(f"{mount.address}{command}: went to 0 instead")
            target = 0
        if not -POSITION_LIMIT <= target <= POSITION_LIMIT:
            self._status(mount, STATUS_OUT_OF_RANGE)
            return
        speed = self.max_speed_deg_s * mount.velocity_pct / 100.0
        duration = abs(target - current) / PULSES_PER_DEG / speed + MOTION_OVERHEAD_S
        stalled, mount.stall_next = mount.stall_next, False
        end = current + (target - current) // 2 if stalled else target
        motion = _Motion(start=current, end=end, started=now, duration=duration, stalled=stalled)
        mount.position = current
        mount.motion = motion
        self.schedule(duration, lambda: self._motion_ends(mount, motion))

    def _motion_ends(self, mount: _Mount, motion: _Motion) -> None:
        if mount.motion is not motion:
            return  # stopped or replaced by a newer move: that one reports
        mount.position = motion.end
        mount.motion = None
        if motion.stalled:
            self._status(mount, STATUS_MECH_TIMEOUT, latency=False)
        else:
            self._send(mount, "PO", to_hex32(mount.position), latency=False)


SIMULATOR = "serial:ElliptecBusSimulator"
"""How ``daqbridge.sim`` finds this simulator (its kind is this module's name)."""
