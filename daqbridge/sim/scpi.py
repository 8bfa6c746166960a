"""A generic SCPI instrument (a DMM with a built-in voltage source) over raw TCP sockets.

The instrument is a source-measure unit wired in loopback: ``MEAS:VOLT:DC?`` reads back what
``SOUR:VOLT`` drives when ``OUTP ON`` (zero when off), plus seeded Gaussian noise. That gives
tests and demo profiles a physics-like relation to check (set 2.5 V, measure 2.5 V within noise)
instead of canned numbers.

What it reproduces from real SCPI instruments (INSTRUMENTS.md, "Generic SCPI instrument"):

- IEEE 488.2 common commands and status: ESR cleared on read and by ``*CLS``; STB computed from
  the error queue (bit 2), message available (bit 4), ESB = ESR & ESE (bit 5) and MSS/RQS (bit 6);
  ESR bit 7 (power on) set at power-up.
- An error queue read by ``SYST:ERR?`` in FIFO order, ``+0,"No error"`` when empty, with
  ``-350,"Queue overflow"`` replacing the last entry when full.
- Long and short mnemonics, case-insensitive, optional nodes (``MEAS:VOLT:DC?`` ==
  ``measure:voltage:dc?`` == ``MEAS?``), several units per line separated by ``;`` with the
  SCPI relative-path rule (``SOUR:VOLT 1;VOLT?``) and a lenient fallback to the root.
- Only queries reply; several query results in one line come back as one message joined by ``;``.
  An unknown header queues ``-113,"Undefined header"``, sets ESR bit 5 and stays silent; the
  rest of that line is skipped (IEEE 488.2 discards a program message after a command error).
- A DMM's overload reading ``+9.90000000E+37`` when a fixed range is exceeded.

Not modelled: ``-410 Query INTERRUPTED`` (a socket transport cannot tell whether the previous
reply was read), service requests on a bus, trigger sources other than immediate.

The model is transport-free and thread-safe; ``serve_tcp`` puts it behind a LF-terminated socket
server (``TCPIP0::127.0.0.1::<port>::SOCKET``), several client connections sharing one model as
on a real instrument with several sockets. Simulators never share protocol code with drivers.
"""

from __future__ import annotations

import importlib.resources
import math
import pathlib
import random
import re
import select
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

from daqbridge.errors import ConfigError
from daqbridge.sim._core import Faults

__all__ = [
    "SCPI_ERRORS",
    "SCPI_SIM_RESOURCES",
    "SCPI_SIM_YAML",
    "ScpiInstrumentModel",
    "ScpiTcpServer",
    "serve_tcp",
]


def _packaged_yaml(name: str) -> pathlib.Path:
    # pyvisa-sim opens definitions by file name, so a real path is needed (not a zip member).
    path = pathlib.Path(str(importlib.resources.files("daqbridge.sim").joinpath(name)))
    return path if path.is_file() else pathlib.Path(__file__).with_name(name)


SCPI_SIM_YAML: pathlib.Path = _packaged_yaml("scpi_instrument.yaml")
"""pyvisa-sim definition of the same instrument, for ``pyvisa.ResourceManager(f"{path}@sim")``."""

SCPI_SIM_RESOURCES: tuple[str, str] = (
    "TCPIP0::192.168.1.100::5025::SOCKET",
    "GPIB0::20::INSTR",
)
"""The two instruments defined in ``SCPI_SIM_YAML`` (serials SIM0001 and SIM0002)."""

SCPI_ERRORS: dict[int, str] = {
    0: "No error",
    -100: "Command error",
    -102: "Syntax error",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -221: "Settings conflict",
    -222: "Data out of range",
    -223: "Too much data",
    -224: "Illegal parameter value",
    -230: "Data corrupt or stale",
    -350: "Queue overflow",
    -410: "Query INTERRUPTED",
}
"""SCPI-99 error codes and messages this simulator can queue."""

# Event status register bits (IEEE 488.2).
ESR_OPC, ESR_QYE, ESR_DDE, ESR_EXE, ESR_CME, ESR_PON = 1, 4, 8, 16, 32, 128
# Status byte bits.
STB_EAV, STB_MAV, STB_ESB, STB_MSS = 4, 16, 32, 64

_ERROR_QUEUE_SIZE = 20
_OVERLOAD = 9.9e37
_DMM_RANGES = (0.1, 1.0, 10.0, 100.0, 1000.0)
_OVERRANGE = 1.2  # a DMM reads up to 120 % of its range before reporting overload
_MAX_COUNT = 50_000
_MAX_LINE = 64 * 1024
_FAULT_FIELDS = frozenset(f.name for f in fields(Faults))


class _ScpiError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _option(name: str, value: Any, kind: type) -> Any:
    """Options may arrive as text (CLI ``-o noise=0``, profiles): convert or say which is bad."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"SCPI simulator option {name} must be a {kind.__name__}, got {value!r}.",
            key=name,
            fix="see docs/simulators.md for the options of the scpi simulator.",
        ) from None


def _esr_bit(code: int) -> int:
    if -199 <= code <= -100:
        return ESR_CME
    if -299 <= code <= -200:
        return ESR_EXE
    if -499 <= code <= -400:
        return ESR_QYE
    return ESR_DDE  # -3xx and positive (device-specific) errors


def _nr3(value: float) -> str:
    return f"{value:+.8E}"


# --- header patterns --------------------------------------------------------------------------


def _mnemonic(word: str) -> str:
    """``MEASure`` accepts exactly ``MEAS`` or ``MEASURE`` (SCPI has no in-between forms)."""
    short = re.match(r"\*?[A-Z0-9]*", word).group(0)
    if short == word or not short:
        return re.escape(word.upper())
    return f"(?:{re.escape(word.upper())}|{re.escape(short)})"


def _compile(pattern: str) -> re.Pattern[str]:
    out = []
    for token in re.findall(r"\[[^\]]+\]|[^\[]+", pattern):
        body = token.strip("[]")
        rx = "".join(":" if p == ":" else _mnemonic(p) for p in re.split(r"(:)", body) if p)
        out.append(f"(?:{rx})?" if token.startswith("[") else rx)
    return re.compile("".join(out), re.IGNORECASE)


@dataclass(frozen=True)
class _Command:
    pattern: re.Pattern[str]
    query: bool
    handler: Callable[[list[str]], str | None]


def _split_units(line: str) -> list[str]:
    """Split a program message on ``;`` outside quoted strings."""
    units, buf, quote = [], [], None
    for ch in line:
        if quote:
            buf.append(ch)
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
            buf.append(ch)
        elif ch == ";":
            units.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    units.append("".join(buf))
    return units


def _split_params(text: str) -> list[str]:
    text = text.strip()
    return [p.strip() for p in text.split(",")] if text else []


_NUMBER = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([a-zA-Z]*)$")
_VOLT_SUFFIX = {"": 1.0, "V": 1.0, "MV": 1e-3, "UV": 1e-6, "KV": 1e3}


class ScpiInstrumentModel:
    """The instrument's state machine: one program message (line) in, one response message out.

    ``execute`` is the pure exchange (no faults, no terminator); ``receive`` is what a transport
    calls: it applies ``faults`` (reply delay, drop, garble, stuck, echo; the same switches as
    the serial simulators) and returns the byte chunks to send with their delays.
    """

    def __init__(
        self,
        *,
        manufacturer: str = "DAQBRIDGE-SIM",
        model: str = "SCPI-DMM",
        serial: str = "SIM0001",
        firmware: str = "1.0",
        noise: float = 1e-5,
        source_limit: float = 10.0,
        seed: int | None = 0,
        faults: Faults | None = None,
    ) -> None:
        for label, part in (
            ("manufacturer", manufacturer),
            ("model", model),
            ("serial", serial),
            ("firmware", firmware),
        ):
            if not isinstance(part, str) or "," in part or "\n" in part or not part:
                raise ConfigError(
                    f"SCPI simulator {label} {part!r} is not a valid *IDN? field.",
                    key=label,
                    fix="give a non-empty text without ',' or line breaks.",
                )
        noise = _option("noise", noise, float)
        source_limit = _option("source_limit", source_limit, float)
        seed = None if seed is None else _option("seed", seed, int)
        if not noise >= 0:
            raise ConfigError(f"noise must be >= 0 V rms, got {noise!r}.", key="noise")
        if not source_limit > 0:
            raise ConfigError(
                f"source_limit must be > 0 V, got {source_limit!r}.", key="source_limit"
            )
        self.identity = f"{manufacturer},{model},{serial},{firmware}"
        self.noise = float(noise)
        self.source_limit = float(source_limit)
        self.faults = faults or Faults(seed=seed)
        self.lock = threading.RLock()
        self._rng = random.Random(seed)
        self._fault_rng = random.Random(self.faults.seed)
        self.received_lines: deque[str] = deque(maxlen=10_000)
        """Last 10 000 lines received, in order (tests assert on them)."""
        self.replies_sent = 0
        self._mav = False
        self._commands = self._command_table()
        self.power_cycle()

    # --- state ---------------------------------------------------------------------------

    def power_cycle(self) -> None:
        """Switch off and on: settings to defaults, status cleared, ESR power-on bit set."""
        with self.lock:
            self._reset_settings()
            self.errors: deque[tuple[int, str]] = deque()
            self.esr = ESR_PON
            self.ese = 0
            self.sre = 0

    def _reset_settings(self) -> None:
        self.source_voltage = 0.0
        self.output_enabled = False
        self.voltage_range = 10.0
        self.autorange = True
        self.trigger_count = 1
        self.sample_count = 1
        self._readings: list[float] | None = None

    def status_byte(self, *, message_available: bool = False) -> int:
        """The STB as ``*STB?`` reports it (MAV is per connection, so the caller says)."""
        with self.lock:
            stb = 0
            if self.errors:
                stb |= STB_EAV
            if message_available:
                stb |= STB_MAV
            if self.esr & self.ese:
                stb |= STB_ESB
            if stb & self.sre & ~STB_MSS:
                stb |= STB_MSS
            return stb

    def queue_error(self, code: int, message: str | None = None) -> None:
        """Queue an error as the instrument would (sets the matching ESR bit)."""
        with self.lock:
            text = message or SCPI_ERRORS.get(code, "Device-specific error")
            if len(self.errors) >= _ERROR_QUEUE_SIZE:
                self.errors.pop()
                self.errors.append((-350, SCPI_ERRORS[-350]))
            else:
                self.errors.append((code, text))
            self.esr |= _esr_bit(code)

    def measure(self) -> float:
        """One DC voltage reading: the source output in loopback, plus noise, or overload."""
        with self.lock:
            true = self.source_voltage if self.output_enabled else 0.0
            value = true + (self._rng.gauss(0.0, self.noise) if self.noise else 0.0)
            if not self.autorange and abs(value) > self.voltage_range * _OVERRANGE:
                return _OVERLOAD
            return value

    # --- exchange ----------------------------------------------------------------------------

    def execute(self, line: str) -> str | None:
        """Run one program message; return the response message, or None if nothing replies."""
        with self.lock:
            replies: list[str] = []
            prefix = ""
            self._mav = False  # MAV: a reply of this message waits in the output queue
            for raw in _split_units(line):
                unit = raw.strip()
                if not unit:
                    continue
                header, *rest_parts = unit.split(None, 1)
                rest = rest_parts[0] if rest_parts else ""
                is_query = header.endswith("?")
                name = header[:-1] if is_query else header
                try:
                    command, used = self._lookup(name, is_query, prefix)
                    if not name.startswith("*"):
                        prefix = used.rsplit(":", 1)[0] if ":" in used.lstrip(":") else ""
                    reply = command.handler(_split_params(rest))
                except _ScpiError as err:
                    self.queue_error(err.code)
                    if -199 <= err.code <= -100:
                        break  # a command error discards the rest of the program message
                    continue
                if is_query and reply is not None:
                    replies.append(reply)
                    self._mav = True
            self._mav = False
            return ";".join(replies) if replies else None

    def receive(self, line: str) -> list[tuple[float, bytes]]:
        """What the instrument sends for one line: ``(delay_s, bytes)`` chunks, LF-terminated."""
        with self.lock:
            self.received_lines.append(line)
            f = self.faults
            if f.stuck:
                return []
            out: list[tuple[float, bytes]] = []
            if f.echo:
                out.append((0.0, line.encode("ascii", "replace") + b"\n"))
            reply = self.execute(line)
            if reply is None:
                return out
            if f.drop_next > 0:
                f.drop_next -= 1
                return out
            if f.drop_probability and self._fault_rng.random() < f.drop_probability:
                return out
            payload = reply.encode("ascii", "replace")
            if f.garble_next > 0 or (
                f.garble_probability and self._fault_rng.random() < f.garble_probability
            ):
                if f.garble_next > 0:
                    f.garble_next -= 1
                payload = self._garble(payload)
            self.replies_sent += 1
            out.append((f.reply_delay, payload + b"\n"))
            return out

    def _garble(self, payload: bytes) -> bytes:
        body = bytearray(payload or b"?")
        i = self._fault_rng.randrange(len(body))
        new = (body[i] ^ 0x5A) & 0x7F
        # Never forge a terminator or NUL: line noise that keeps the framing is the case a
        # driver must catch by parsing.
        body[i] = ord("#") if new in (0, 0x0A, 0x0D) or new == body[i] else new
        return bytes(body)

    def _lookup(self, name: str, is_query: bool, prefix: str) -> tuple[_Command, str]:
        if not name or not re.fullmatch(r":?[A-Za-z*][A-Za-z0-9:*]*", name):
            raise _ScpiError(-113 if name else -102)
        candidates = [name]
        if prefix and not name.startswith((":", "*")):
            candidates.insert(0, f"{prefix}:{name}")  # SCPI relative path after ';'
        for text in candidates:
            bare = text.lstrip(":")
            for command in self._commands:
                if command.query == is_query and command.pattern.fullmatch(bare):
                    return command, bare
        raise _ScpiError(-113)

    # --- parameters --------------------------------------------------------------------------

    @staticmethod
    def _no_params(params: list[str]) -> None:
        if params:
            raise _ScpiError(-108)

    @staticmethod
    def _one(params: list[str]) -> str:
        if not params or not params[0]:
            raise _ScpiError(-109)
        if len(params) > 1:
            raise _ScpiError(-108)
        return params[0]

    @staticmethod
    def _number(text: str, *, suffixes: dict[str, float] | None = None) -> float:
        m = _NUMBER.match(text)
        if not m:
            raise _ScpiError(-104)
        scale = (suffixes or {"": 1.0}).get(m.group(2).upper())
        if scale is None:
            raise _ScpiError(-104)
        value = float(m.group(1)) * scale
        if not math.isfinite(value):
            raise _ScpiError(-222)
        return value

    @staticmethod
    def _boolean(text: str) -> bool:
        t = text.upper()
        if t in ("ON", "1"):
            return True
        if t in ("OFF", "0"):
            return False
        raise _ScpiError(-224)

    def _integer(
        self, text: str, lo: int, hi: int, *, special: dict[str, int] | None = None
    ) -> int:
        if special and text.upper() in special:
            return special[text.upper()]
        value = self._number(text)
        if value != int(value):
            raise _ScpiError(-224)
        if not lo <= value <= hi:
            raise _ScpiError(-222)
        return int(value)

    # --- command handlers --------------------------------------------------------------------

    def _command_table(self) -> list[_Command]:
        def q(pattern: str, fn: Callable[[list[str]], str | None]) -> _Command:
            return _Command(_compile(pattern), True, fn)

        def c(pattern: str, fn: Callable[[list[str]], str | None]) -> _Command:
            return _Command(_compile(pattern), False, fn)

        return [
            q("*IDN", self._q_idn),
            c("*RST", self._c_rst),
            c("*CLS", self._c_cls),
            c("*OPC", self._c_opc),
            q("*OPC", self._q_opc),
            c("*WAI", self._no_params),
            q("*TST", lambda p: self._no_params(p) or "+0"),
            q("*STB", self._q_stb),
            q("*ESR", self._q_esr),
            c("*ESE", self._c_ese),
            q("*ESE", lambda p: self._no_params(p) or str(self.ese)),
            c("*SRE", self._c_sre),
            q("*SRE", lambda p: self._no_params(p) or str(self.sre)),
            q("SYSTem:ERRor[:NEXT]", self._q_error),
            q("SYSTem:ERRor:COUNt", lambda p: self._no_params(p) or str(len(self.errors))),
            q("SYSTem:VERSion", lambda p: self._no_params(p) or "1999.0"),
            q("MEASure[:VOLTage][:DC]", self._q_measure),
            c("CONFigure[:VOLTage][:DC]", self._c_configure),
            q("CONFigure", lambda p: self._no_params(p) or self._q_configure()),
            c("[SENSe:]VOLTage[:DC]:RANGe[:UPPer]", self._c_range),
            q("[SENSe:]VOLTage[:DC]:RANGe[:UPPer]", self._q_range),
            c("[SENSe:]VOLTage[:DC]:RANGe:AUTO", self._c_autorange),
            q(
                "[SENSe:]VOLTage[:DC]:RANGe:AUTO",
                lambda p: self._no_params(p) or self._flag(self.autorange),
            ),
            c("SOURce:VOLTage[:LEVel][:IMMediate][:AMPLitude]", self._c_source),
            q("SOURce:VOLTage[:LEVel][:IMMediate][:AMPLitude]", self._q_source),
            c("OUTPut[:STATe]", self._c_output),
            q("OUTPut[:STATe]", lambda p: self._no_params(p) or self._flag(self.output_enabled)),
            c("TRIGger:COUNt", self._c_trigger_count),
            q("TRIGger:COUNt", lambda p: self._no_params(p) or str(self.trigger_count)),
            c("SAMPle:COUNt", self._c_sample_count),
            q("SAMPle:COUNt", lambda p: self._no_params(p) or str(self.sample_count)),
            c("INITiate[:IMMediate]", self._c_initiate),
            q("FETCh", self._q_fetch),
            q("READ", self._q_read),
        ]

    @staticmethod
    def _flag(value: bool) -> str:
        return "1" if value else "0"

    def _q_idn(self, params: list[str]) -> str:
        self._no_params(params)
        return self.identity

    def _c_rst(self, params: list[str]) -> None:
        self._no_params(params)
        self._reset_settings()  # *RST leaves status registers and the error queue alone

    def _c_cls(self, params: list[str]) -> None:
        self._no_params(params)
        self.esr = 0
        self.errors.clear()

    def _c_opc(self, params: list[str]) -> None:
        self._no_params(params)
        self.esr |= ESR_OPC  # no overlapped commands: everything is complete at once

    def _q_opc(self, params: list[str]) -> str:
        self._no_params(params)
        return "1"

    def _q_stb(self, params: list[str]) -> str:
        self._no_params(params)
        return str(self.status_byte(message_available=self._mav))

    def _q_esr(self, params: list[str]) -> str:
        self._no_params(params)
        value, self.esr = self.esr, 0
        return str(value)

    def _c_ese(self, params: list[str]) -> None:
        self.ese = self._integer(self._one(params), 0, 255)

    def _c_sre(self, params: list[str]) -> None:
        self.sre = self._integer(self._one(params), 0, 255) & ~STB_MSS

    def _q_error(self, params: list[str]) -> str:
        self._no_params(params)
        code, text = self.errors.popleft() if self.errors else (0, SCPI_ERRORS[0])
        return f'{code:+d},"{text}"'

    def _apply_range(self, text: str) -> None:
        key = text.upper()
        if key in ("AUTO", "DEF", "DEFAULT"):
            self.autorange = True
            return
        if key in ("MIN", "MINIMUM"):
            value = _DMM_RANGES[0]
        elif key in ("MAX", "MAXIMUM"):
            value = _DMM_RANGES[-1]
        else:
            value = abs(self._number(text, suffixes=_VOLT_SUFFIX))
        # A DMM picks the smallest range that holds the expected value, like a real one.
        fitting = [r for r in _DMM_RANGES if value <= r]
        if not fitting:
            raise _ScpiError(-222)
        self.voltage_range = fitting[0]
        self.autorange = False

    def _c_range(self, params: list[str]) -> None:
        self._apply_range(self._one(params))

    def _q_range(self, params: list[str]) -> str:
        if params:
            key = self._one(params).upper()
            if key in ("MIN", "MINIMUM"):
                return _nr3(_DMM_RANGES[0])
            if key in ("MAX", "MAXIMUM"):
                return _nr3(_DMM_RANGES[-1])
            raise _ScpiError(-224)
        return _nr3(self._effective_range())

    def _effective_range(self) -> float:
        if not self.autorange:
            return self.voltage_range
        level = abs(self.source_voltage) if self.output_enabled else 0.0
        return next((r for r in _DMM_RANGES if level <= r), _DMM_RANGES[-1])

    def _c_autorange(self, params: list[str]) -> None:
        self.autorange = self._boolean(self._one(params))

    def _c_configure(self, params: list[str]) -> None:
        if len(params) > 2:
            raise _ScpiError(-108)
        if params and params[0]:
            self._apply_range(params[0])
        else:
            self.autorange = True
        self._readings = None

    def _q_configure(self) -> str:
        return f'"VOLT {_nr3(self._effective_range())},{_nr3(3e-6)}"'

    def _q_measure(self, params: list[str]) -> str:
        self._c_configure(params)
        return self._q_read([])

    def _c_source(self, params: list[str]) -> None:
        text = self._one(params)
        key = text.upper()
        if key in ("MIN", "MINIMUM"):
            value = -self.source_limit
        elif key in ("MAX", "MAXIMUM"):
            value = self.source_limit
        elif key in ("DEF", "DEFAULT"):
            value = 0.0
        else:
            value = self._number(text, suffixes=_VOLT_SUFFIX)
        if abs(value) > self.source_limit:
            raise _ScpiError(-222)  # refused, the previous level stays, as on real sources
        self.source_voltage = value

    def _q_source(self, params: list[str]) -> str:
        if params:
            key = self._one(params).upper()
            if key in ("MIN", "MINIMUM"):
                return _nr3(-self.source_limit)
            if key in ("MAX", "MAXIMUM"):
                return _nr3(self.source_limit)
            raise _ScpiError(-224)
        return _nr3(self.source_voltage)

    def _c_output(self, params: list[str]) -> None:
        self.output_enabled = self._boolean(self._one(params))

    def _c_trigger_count(self, params: list[str]) -> None:
        self.trigger_count = self._integer(
            self._one(params), 1, _MAX_COUNT, special={"MIN": 1, "MAX": _MAX_COUNT, "DEF": 1}
        )

    def _c_sample_count(self, params: list[str]) -> None:
        self.sample_count = self._integer(
            self._one(params), 1, _MAX_COUNT, special={"MIN": 1, "MAX": _MAX_COUNT, "DEF": 1}
        )

    def _c_initiate(self, params: list[str]) -> None:
        self._no_params(params)
        self._readings = [self.measure() for _ in range(self.trigger_count * self.sample_count)]

    def _q_fetch(self, params: list[str]) -> str:
        self._no_params(params)
        if self._readings is None:
            raise _ScpiError(-230)
        return ",".join(_nr3(v) for v in self._readings)

    def _q_read(self, params: list[str]) -> str:
        self._c_initiate(params)
        return self._q_fetch([])


# --- TCP transport ------------------------------------------------------------------------------


class ScpiTcpServer:
    """LF-terminated SCPI over raw TCP, one thread per client, all clients sharing one model.

    Binds to 127.0.0.1 unless told otherwise: a simulator must never be reachable from the lab
    network by accident.
    """

    def __init__(self, model: ScpiInstrumentModel, *, host: str = "127.0.0.1", port: int = 0):
        self.model = model
        self._listener = socket.create_server((host, port))
        self.host: str = host
        self.port: int = self._listener.getsockname()[1]
        self.resource = f"TCPIP0::{host}::{self.port}::SOCKET"
        self._stop = threading.Event()
        self._clients: dict[socket.socket, threading.Thread] = {}
        self._clients_lock = threading.Lock()
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"scpi-sim-accept:{self.port}", daemon=True
        )

    @property
    def connection_count(self) -> int:
        with self._clients_lock:
            return len(self._clients)

    def start(self) -> ScpiTcpServer:
        self._acceptor.start()
        return self

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._listener], [], [], 0.1)
                if not ready:
                    continue
                conn, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            conn.settimeout(5.0)  # bounds a send to a client that stopped reading
            worker = threading.Thread(
                target=self._serve_client, args=(conn,), name=f"scpi-sim:{self.port}", daemon=True
            )
            with self._clients_lock:
                self._clients[conn] = worker
            worker.start()

    def _serve_client(self, conn: socket.socket) -> None:
        buf = bytearray()
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([conn], [], [], 0.1)
                if not ready:
                    continue
                data = conn.recv(65536)
                if not data:
                    return  # client closed, possibly mid-line: the partial line is dropped
                buf += data
                while (i := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:i]).rstrip(b"\r").decode("ascii", "replace").strip()
                    del buf[: i + 1]
                    if line:
                        self._answer(conn, line)
                if len(buf) > _MAX_LINE:
                    buf.clear()
                    self.model.queue_error(-223)
        except OSError:
            return
        finally:
            with self._clients_lock:
                self._clients.pop(conn, None)
            conn.close()

    def _answer(self, conn: socket.socket, line: str) -> None:
        for delay, payload in self.model.receive(line):
            if delay > 0 and self._stop.wait(delay):
                return
            conn.sendall(payload)

    def disconnect_all(self) -> None:
        """Drop every client connection (an instrument rebooting or a cable pulled)."""
        with self._clients_lock:
            conns = list(self._clients)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self, timeout: float = 2.0) -> None:
        """Stop accepting, drop clients and join every thread within ``timeout`` seconds."""
        self._stop.set()
        self.disconnect_all()
        self._listener.close()
        if self._acceptor.is_alive():
            self._acceptor.join(timeout)
        with self._clients_lock:
            workers = list(self._clients.values())
        for worker in workers:
            worker.join(timeout)

    def __enter__(self) -> ScpiTcpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def serve_tcp(
    model: ScpiInstrumentModel | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    **model_options: Any,
) -> Iterator[ScpiTcpServer]:
    """Serve ``model`` on ``host:port`` (0 picks a free port); ``server.resource`` is for ``@py``.

    Without a model, one is built from ``model_options`` (``serial="SIM0002"``, ``noise=0``,
    ``faults=Faults(...)`` or fault fields such as ``reply_delay=0.1``), so the CLI and profiles
    can start an instrument from options.
    """
    if model is not None and model_options:
        raise TypeError(
            f"serve_tcp got a model and options {sorted(model_options)}: give one or the other"
        )
    fault_options = {k: model_options.pop(k) for k in list(model_options) if k in _FAULT_FIELDS}
    if "seed" in fault_options:
        model_options.setdefault("seed", fault_options["seed"])  # one seed: noise and faults
    if fault_options:
        if "faults" in model_options:
            raise TypeError("serve_tcp got faults=Faults(...) and fault options: give one")
        try:
            model_options["faults"] = Faults.from_options(fault_options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"bad fault option for the scpi simulator ({exc}).",
                key=", ".join(sorted(fault_options)),
                fix="give numbers for delays and probabilities, integers for counts, "
                "true/false for switches.",
            ) from None
    server = ScpiTcpServer(model or ScpiInstrumentModel(**model_options), host=host, port=port)
    server.start()
    try:
        yield server
    finally:
        server.close()
