"""SCPI DMMs over raw TCP sockets: a generic meter with a source, a 34401A, a Keithley 2000.

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

Personalities (``personality=``; the default, ``generic``, is the meter above)
-------------------------------------------------------------------------------
Drivers that other people wrote for real DMMs must work unchanged against the simulator, so it
can also answer as two real meters. A personality is a DMM, not a source: it measures what the
``input_*`` options put on its terminals (``input_voltage``, ``input_ac_voltage``,
``input_current``, ``input_resistance`` (1 kOhm), ``input_frequency``, ``temperature``; all
changeable while it runs), and ``SOUR``/``OUTP`` are unknown headers there, as on the real ones.
Noise is ``noise`` x range / 10 (``noise`` V rms on the 10 V range).

``34401a``, an HP/Agilent 34401A. Sources:
[UG] Agilent 34401A User's Guide (34401-90004), ch. 4 "Remote Interface Reference" (MEASure?,
CONFigure, CONFigure? and its example ``"VOLT +1.000000E+01,+3.000000E-06"``, FUNCtion, READ?
vs INITiate/FETCh?, string parameters and output formats p. 159) and ch. 5 "Error Messages";
https://manualshive.com/en/manual/hp/34401a/162633?page=159,
https://manualsdump.com/en/manuals/agilent_technologies-34401a/203890/123.
[TV] Keysight Truevolt Operating and Service Guide, *IDN? in 34401A emulation
(``HEWLETT-PACKARD,34401A,...``), https://www.easymanua.ls/keysight/truevolt-series/manual?p=269.
[SUM] vinayshanbhag/SCPI README.md, the 34401A command summary. [QC] QCoDeS
qcodes/instrument_drivers/agilent/_Agilent_344xxA.py (NPLC 0.02/0.2/1/10/100 and the resolution
factors 1e-4..3e-7 x range; ROUT:TERM?, DISP:TEXT, SENS:VOLT:DC:RANG). [EX] Exopy HQC legacy
drivers (FUNCtion "..." then FUNCtion? compared with what was sent).

- ``*IDN?`` -> ``HEWLETT-PACKARD,34401A,0,11-5-2`` ([UG]: serial field always 0; [TV]).
- ``FUNC?`` -> the short name, ``:DC`` omitted: ``"VOLT"``, ``"VOLT:AC"``, ``"CURR"``, ``"RES"``,
  ... (``FUNC "VOLT:DC"`` reads back ``"VOLT"``: a driver comparing with what it sent fails, as
  it does on the real meter). ``FUNC`` takes a quoted string (either quote [UG]); unquoted text
  queues -104. ``CONF?`` -> ``"VOLT <range>,<resolution>"`` in ``+1.000000E+01`` form, resolution
  = factor(NPLC) x range [QC]; ``"CONT"`` and ``"DIOD"`` alone (fixed range). Settings queries
  (``RANG?``, ``NPLC?``, ``RES?``, ``TRIG:COUN?``, ``TRIG:DEL?``) use the same ``+d.dddddd E``
  form as CONF?, readings the 8-decimal ``SD.DDDDDDDDESDD`` form [UG p. 159].
- ``CONF:<func> [range[,resolution]]`` and ``MEAS:<func>? [range[,resolution]]`` (DEF =
  autorange; a resolution picks the fastest NPLC that reaches it); they preset the trigger
  system (source IMM, counts 1, auto delay). ``NPLC`` only 0.02, 0.2, 1, 10, 100 (else -222).
- ``READ?`` stores nothing ([UG]: "readings are not stored ... when using READ?");
  ``INIT`` stores up to 512 readings (more: ``+531,"Insufficient memory"``), ``FETC?`` sends
  them, with nothing stored ``-230,"Data stale"``; ``TRIG:SOUR BUS`` + ``READ?`` is
  ``-214,"Trigger deadlock"``, ``*TRG`` without a waiting INIT ``-211,"Trigger ignored"``.
- ``SYST:ERR?``: ``+0,"No error"``, ``-113,"Undefined header"``; 20 entries, then
  ``-350,"Too many errors"`` [UG ch. 5]. Also ZERO:AUTO, INP:IMP:AUTO, ROUT:TERM? (``FRON``),
  DISP ON|OFF, DISP:TEXT "..." (12 characters; a quote inside doubled, [UG p. 159]),
  DISP:TEXT:CLE, SYST:BEEP[:STAT], SYST:LOC|REM|RWL, DATA:POIN?, TRIG:DEL[:AUTO], SAMP:COUN.

``keithley2000``, a Keithley 2000. Sources:
[UG] Keithley Model 2000 Multimeter User's Manual (2000-900-01 Rev. J): *IDN? p. 4-43
(https://www.easymanua.ls/keithley/2000/manual?p=129), command path rules p. 4-37 (p=123),
:SYSTem:VERSion? ``1991.0`` and :SYSTem:ERRor? (10 entries, "0, No error") p. 5-63
(http://38.142.81.21:8001/manual/keithley/2000-e/user-manual-english/page-194.html).
[MQ] Keithley 2182A User's Manual, appendix H "Measurement Queries" (the same trigger model):
FETCh? without a reading -230, READ? = ABORt + INITiate + FETCh? and always a new reading.
[CAT] instrument-catalog.warehack.ing/instruments/keithley-2000 (a captured *IDN?).
[PM] pymeasure pymeasure/instruments/keithley/keithley2000.py (``:CONF?``/``:CONF:%s``,
``:READ?``, ``:SENS:VOLT:RANG:AUTO 0;:SENS:VOLT:RANG %g``, ranges 0-1010 V, NPLC 0.01-10,
reset string). [EX] Exopy HQC legacy drivers ("The Keithley returns "VOLT:DC"", FETCh?).

- ``*IDN?`` -> ``KEITHLEY INSTRUMENTS INC.,MODEL 2000,1234567,A08 /A02`` ([CAT]). [UG] prints
  the format with a space after each comma; [CAT] and the Keithley manuals of later models do
  not. Chosen: no spaces, so a driver that splits on ``", "`` fails here as it would on a meter.
- ``:FUNC?`` and ``:CONF?`` -> ``"VOLT:DC"`` ([EX], [PM]). ``:CONF:<func>`` and
  ``:MEAS:<func>?`` take no range or resolution ([UG] signal oriented commands): a 34401A-style
  ``MEAS:VOLT:DC? 10,0.001`` queues -108 and gets no reading. ``:MEAS?`` alone measures the
  present function. CONF resets that function's range, NPLC (1), digits and reference.
- Continuous initiation is on after power-on and ``:SYST:PRES`` (the meter free-runs, so
  ``:FETC?`` always has a fresh reading, [EX]), off after ``*RST``; ``:INIT`` while it is on is
  ``-213,"Init ignored"``. ``:READ?`` always returns a new reading [MQ].
- ``SYST:ERR?`` (and ``:STAT:QUE?``): ``0,"No error"`` without the sign the 34401A prints
  ([UG]: "0, No error"); 10 entries, then ``-350,"Queue overflow"``. Keithley words -222
  ``"Parameter data out of range"``. Also :SENS:<func>:DIG, :REF, :REF:STAT, :REF:ACQ,
  :SYST:AZER, :SYST:BEEP, :STAT:PRES, :STAT:QUE:CLE, :FORM[:DATA] ASC, :FORM:ELEM READ,
  :DISP:ENAB, :DISP:TEXT:DATA/STAT, :ABOR, TEMP (``temperature``).

Where no source gives a reply form, the simulator picks the stricter one and says so: the
``+1.000000E+01`` form of Keithley settings, ``+3`` for ``SAMP:COUN?`` and ``DATA:POIN?``,
``+1.000000E+00`` for ``TRIG:COUN?`` (INF is allowed, so a driver must parse a float), the
34401A's ``1992.0`` for ``SYST:VERS?``, and the CONF? of the 34401A's ac and frequency functions
(range and 1e-6 x range, the layout of the manual's dc example). Not modelled: ratio, math
(CALC), the reading buffer (TRAC), binary formats and the units/channel elements (refused with
-224), a scanner card, the 34401A's RS-232 specifics (SYST:REM first, CR LF replies).
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
    "PERSONALITIES",
    "SCPI_SIM_PERSONALITY_RESOURCES",
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
"""The two generic instruments defined in ``SCPI_SIM_YAML`` (serials SIM0001 and SIM0002)."""

SCPI_SIM_PERSONALITY_RESOURCES: dict[str, str] = {
    "34401a": "GPIB0::22::INSTR",
    "keithley2000": "GPIB0::16::INSTR",
}
"""One ``SCPI_SIM_YAML`` resource per personality, at the instrument's factory GPIB address."""

SCPI_ERRORS: dict[int, str] = {
    0: "No error",
    -100: "Command error",
    -102: "Syntax error",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -151: "Invalid string data",
    -211: "Trigger ignored",
    -213: "Init ignored",
    -214: "Trigger deadlock",
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
    """Split parameters on ``,`` outside quoted strings (``DISP:TEXT "A,B"`` is one)."""
    text = text.strip()
    if not text:
        return []
    params, buf, quote = [], [], None
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == ",":
            params.append("".join(buf).strip())
            buf = []
            continue
        buf.append(ch)
    params.append("".join(buf).strip())
    return params


_NUMBER = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([a-zA-Z]*)$")
_VOLT_SUFFIX = {"": 1.0, "V": 1.0, "MV": 1e-3, "UV": 1e-6, "KV": 1e3}


def _query(pattern: str, fn: Callable[[list[str]], str | None]) -> _Command:
    return _Command(_compile(pattern), True, fn)


def _set(pattern: str, fn: Callable[[list[str]], str | None]) -> _Command:
    return _Command(_compile(pattern), False, fn)


class ScpiInstrumentModel:
    """The instrument's state machine: one program message (line) in, one response message out.

    ``execute`` is the pure exchange (no faults, no terminator); ``receive`` is what a transport
    calls: it applies ``faults`` (reply delay, drop, garble, stuck, echo; the same switches as
    the serial simulators) and returns the byte chunks to send with their delays.
    """

    personality: str = "generic"
    """Which instrument this model answers as (see :data:`PERSONALITIES`)."""
    _IDENTITY: tuple[str, str, str, str] = ("DAQBRIDGE-SIM", "SCPI-DMM", "SIM0001", "1.0")
    _ERROR_QUEUE: int = _ERROR_QUEUE_SIZE
    _ERROR_TEXT: dict[int, str] = {}
    """This instrument's wording of an error, where it differs from :data:`SCPI_ERRORS`."""

    def __new__(
        cls, *args: Any, personality: str = "generic", **options: Any
    ) -> ScpiInstrumentModel:
        # ScpiInstrumentModel(personality="34401a") is how serve_tcp, the CLI and profiles ask
        # for an instrument; the answer is the model of that instrument.
        if cls is ScpiInstrumentModel:
            cls = _personality_class(personality)
        return super().__new__(cls)

    def __init__(
        self,
        *,
        personality: str = "generic",
        manufacturer: str | None = None,
        model: str | None = None,
        serial: str | None = None,
        firmware: str | None = None,
        noise: float = 1e-5,
        seed: int | None = 0,
        faults: Faults | None = None,
        **options: Any,
    ) -> None:
        if _personality_class(personality) is not type(self):
            raise ConfigError(
                f"SCPI simulator personality {personality!r} does not match "
                f"{type(self).__name__} (a {self.personality} model).",
                key="personality",
                fix="build ScpiInstrumentModel(personality=...) instead of a model class.",
            )
        given = (manufacturer, model, serial, firmware)
        manufacturer, model, serial, firmware = (
            default if part is None else part
            for part, default in zip(given, self._IDENTITY, strict=True)
        )
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
        seed = None if seed is None else _option("seed", seed, int)
        if not noise >= 0:
            raise ConfigError(f"noise must be >= 0, got {noise!r}.", key="noise")
        self._options(options)
        self.identity = f"{manufacturer},{model},{serial},{firmware}"
        self.noise = float(noise)
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

    def _options(self, options: dict[str, Any]) -> None:
        """Take this instrument's own options (the generic meter: its source's limit)."""
        source_limit = _option("source_limit", options.pop("source_limit", 10.0), float)
        _no_other_options(self.personality, options, ["source_limit"])
        if not source_limit > 0:
            raise ConfigError(
                f"source_limit must be > 0 V, got {source_limit!r}.", key="source_limit"
            )
        self.source_limit = float(source_limit)

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
            text = message or self._error_text(code)
            if len(self.errors) >= self._ERROR_QUEUE:
                self.errors.pop()
                self.errors.append((-350, self._error_text(-350)))
            else:
                self.errors.append((code, text))
            self.esr |= _esr_bit(code)

    def _error_text(self, code: int) -> str:
        return self._ERROR_TEXT.get(code) or SCPI_ERRORS.get(code, "Device-specific error")

    def _error_reply(self, code: int, text: str) -> str:
        return f'{code:+d},"{text}"'

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

    def _ieee488_commands(self) -> list[_Command]:
        """The IEEE 488.2 common commands every personality answers the same way."""
        q, c = _query, _set
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
        ]

    def _command_table(self) -> list[_Command]:
        q, c = _query, _set
        return [
            *self._ieee488_commands(),
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
        code, text = self.errors.popleft() if self.errors else (0, self._error_text(0))
        return self._error_reply(code, text)

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


# --- DMM personalities ----------------------------------------------------------------------------


def _setting(value: float) -> str:
    """A setting as these DMMs print it (``CONF?``, ``RANG?``, ``NPLC?``): ``+1.000000E+01``."""
    return f"{_OVERLOAD if math.isinf(value) else value:+.6E}"


def _quoted(text: str) -> str:
    """IEEE 488.2 string response data: in double quotes, an inner quote doubled."""
    return '"' + text.replace('"', '""') + '"'


def _string(text: str) -> str:
    """The content of a quoted string parameter; a doubled quote inside stands for one."""
    if len(text) < 2 or text[0] not in "\"'" or text[-1] != text[0]:
        raise _ScpiError(-104)  # character data where the manual asks for a quoted string
    quote, body = text[0], text[1:-1]
    if quote in body.replace(quote * 2, ""):
        raise _ScpiError(-151)
    return body.replace(quote * 2, quote)


def _no_other_options(personality: str, options: dict[str, Any], valid: list[str]) -> None:
    if options:
        names = ", ".join(sorted(options))
        raise ConfigError(
            f"the {personality} SCPI simulator has no option {names}; its own options: "
            f"{', '.join(valid)} (besides manufacturer, model, serial, firmware, noise, seed "
            "and the fault switches).",
            key=sorted(options)[0],
            fix="see docs/simulators.md for the options of each personality.",
        )


@dataclass(frozen=True)
class _Function:
    """One measurement function of a DMM: its SCPI node and what it measures with."""

    key: str
    header: str
    ranges: tuple[float, ...] = ()
    nplc: bool = False
    suffixes: tuple[tuple[str, float], ...] = (("", 1.0),)


_V = (("", 1.0), ("V", 1.0), ("MV", 1e-3), ("UV", 1e-6), ("KV", 1e3))
_A = (("", 1.0), ("A", 1.0), ("MA", 1e-3), ("UA", 1e-6))
_OHM = (("", 1.0), ("OHM", 1.0), ("KOHM", 1e3), ("MOHM", 1e6))
_DMM_FUNCTIONS: dict[str, _Function] = {
    f.key: f
    for f in (
        _Function("VOLT", "VOLTage[:DC]", (0.1, 1.0, 10.0, 100.0, 1000.0), True, _V),
        _Function("VOLT:AC", "VOLTage:AC", (0.1, 1.0, 10.0, 100.0, 750.0), False, _V),
        _Function("CURR", "CURRent[:DC]", (0.01, 0.1, 1.0, 3.0), True, _A),
        _Function("CURR:AC", "CURRent:AC", (1.0, 3.0), False, _A),
        _Function("RES", "RESistance", (100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8), True, _OHM),
        _Function("FRES", "FRESistance", (100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8), True, _OHM),
        _Function("FREQ", "FREQuency"),
        _Function("PER", "PERiod"),
        _Function("CONT", "CONTinuity"),
        _Function("DIOD", "DIODe"),
        _Function("TEMP", "TEMPerature"),
    )
}
_FIXED_RANGE = {"CONT": 1000.0, "DIOD": 1.0}
"""Continuity reads on the 1 kOhm range, the diode test on the 1 V range (34401A manual)."""
_FUNCTION_PATTERNS = {key: _compile(f.header) for key, f in _DMM_FUNCTIONS.items()}
_SOURCES = {"IMM": "IMMediate", "BUS": "BUS", "EXT": "EXTernal", "TIM": "TIMer", "MAN": "MANual"}
_READING_MEMORY = 512
"""Readings a 34401A stores after INITiate (manual: "up to 512 readings")."""


class _DmmModel(ScpiInstrumentModel):
    """What the 34401A and the Keithley 2000 share: functions, ranges, trigger system.

    A DMM measures what is connected to its inputs, so its readings come from the ``input_*``
    options (changeable while it runs: ``model.input_voltage = 2.5``), not from a source.
    """

    _FUNCTION_NAMES: dict[str, str] = {}
    """Function key -> the name ``FUNC?`` replies (without quotes)."""
    _NPLC_DEFAULT = 10.0
    _SOURCES_ALLOWED: tuple[str, ...] = ("IMM", "BUS", "EXT")
    _TRIGGER_COUNT_MAX = 50_000
    _SAMPLE_COUNT_MAX = 50_000
    _TRIGGER_DELAY_MAX = 3600.0
    _RANGE_OVER_TOP = 1.0
    """A range value up to this times the top range still selects the top range."""
    _VERSION = "1992.0"
    _INPUTS = {
        "input_voltage": 0.0,
        "input_ac_voltage": 0.0,
        "input_current": 0.0,
        "input_resistance": 1000.0,
        "input_frequency": 0.0,
        "temperature": 23.0,
    }

    def _options(self, options: dict[str, Any]) -> None:
        for name, default in self._INPUTS.items():
            value = _option(name, options.pop(name, default), float)
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}.", key=name)
            setattr(self, name, value)
        if self.input_resistance < 0 or self.input_frequency < 0 or self.input_ac_voltage < 0:
            raise ConfigError(
                "input_resistance, input_frequency and input_ac_voltage must be >= 0.",
                key="input_resistance",
            )
        _no_other_options(self.personality, options, list(self._INPUTS))

    @property
    def functions(self) -> dict[str, _Function]:
        return {k: _DMM_FUNCTIONS[k] for k in self._FUNCTION_NAMES}

    # --- state ------------------------------------------------------------------------------

    def _reset_settings(self) -> None:
        self.function = "VOLT"
        self.autorange = {k: True for k, f in self.functions.items() if f.ranges}
        self.fixed_range = {k: f.ranges[-1] for k, f in self.functions.items() if f.ranges}
        self.nplc = {k: self._NPLC_DEFAULT for k, f in self.functions.items() if f.nplc}
        self._preset_trigger()
        self._readings = None
        self._armed = False

    def _preset_trigger(self) -> None:
        self.trigger_source = "IMM"
        self.trigger_count: float = 1
        self.sample_count = 1
        self.trigger_delay = 0.0
        self.trigger_delay_auto = True

    # --- measurement ---------------------------------------------------------------------------

    def _true_value(self, key: str) -> float:
        if key == "VOLT":
            return self.input_voltage
        if key == "VOLT:AC":
            return self.input_ac_voltage
        if key == "CURR":
            return self.input_current
        if key in ("RES", "FRES", "CONT"):
            return self.input_resistance
        if key == "DIOD":
            return 1e-3 * self.input_resistance  # the 1 mA test current through the input
        if key == "FREQ":
            return self.input_frequency if self.input_ac_voltage > 0 else 0.0
        if key == "PER":
            on = self.input_ac_voltage > 0 and self.input_frequency > 0
            return 1.0 / self.input_frequency if on else 0.0  # no signal: 0 (34401A manual)
        if key == "TEMP":
            return self.temperature
        return 0.0  # CURR:AC: nothing AC flows

    def effective_range(self, key: str) -> float:
        """The range a reading of ``key`` uses now (fixed, or picked by autorange)."""
        if key in _FIXED_RANGE:
            return _FIXED_RANGE[key]
        f = _DMM_FUNCTIONS[key]
        if not f.ranges:
            return 0.0
        if not self.autorange[key]:
            return self.fixed_range[key]
        level = abs(self._true_value(key))
        return next((r for r in f.ranges if level <= r), f.ranges[-1])

    def measure(self) -> float:
        """One reading of the present function (overload ``+9.9E37`` beyond 120 % of range)."""
        with self.lock:
            key = self.function
            value = self._true_value(key)
            span = self.effective_range(key)
            if span:
                value += self._rng.gauss(0.0, self.noise) * span / 10 if self.noise else 0.0
                if abs(value) > span * _OVERRANGE:
                    return _OVERLOAD
            elif key == "TEMP" and self.noise:
                value += self._rng.gauss(0.0, self.noise)
            return self._relative(key, value)

    def _relative(self, key: str, value: float) -> float:
        return value

    def _take_readings(self) -> list[float]:
        if math.isinf(self.trigger_count):
            raise _ScpiError(-221)  # endless readings cannot be one response
        return [self.measure() for _ in range(int(self.trigger_count) * self.sample_count)]

    def _format_readings(self, readings: list[float]) -> str:
        return ",".join(_nr3(v) for v in readings)

    # --- command table -------------------------------------------------------------------------

    def _command_table(self) -> list[_Command]:
        q, c = _query, _set
        table = [
            *self._ieee488_commands(),
            c("*TRG", self._c_trg),
            q("SYSTem:ERRor[:NEXT]", self._q_error),
            q("SYSTem:VERSion", lambda p: self._no_params(p) or self._VERSION),
            q("CONFigure", lambda p: self._no_params(p) or self._q_conf()),
            c("[SENSe:]FUNCtion[:ON]", self._c_function),
            q("[SENSe:]FUNCtion[:ON]", lambda p: self._no_params(p) or self._q_function()),
            c("INITiate[:IMMediate]", self._c_init),
            q("FETCh", self._q_fetch),
            q("READ", self._q_read),
            c("TRIGger:SOURce", self._c_trigger_source),
            q("TRIGger:SOURce", lambda p: self._no_params(p) or self.trigger_source),
            c("TRIGger:COUNt", self._c_trigger_count),
            q(
                "TRIGger:COUNt",
                lambda p: (
                    self._q_limit(p, 1, self._TRIGGER_COUNT_MAX) or _setting(self.trigger_count)
                ),
            ),
            c("TRIGger:DELay", self._c_trigger_delay),
            q(
                "TRIGger:DELay",
                lambda p: (
                    self._q_limit(p, 0.0, self._TRIGGER_DELAY_MAX) or _setting(self.trigger_delay)
                ),
            ),
            c("TRIGger:DELay:AUTO", self._c_trigger_delay_auto),
            q(
                "TRIGger:DELay:AUTO",
                lambda p: self._no_params(p) or self._flag(self.trigger_delay_auto),
            ),
            c("SAMPle:COUNt", self._c_sample_count),
            q(
                "SAMPle:COUNt",
                lambda p: (
                    self._q_limit(p, 1, self._SAMPLE_COUNT_MAX, integer=True)
                    or f"{self.sample_count:+d}"
                ),
            ),
        ]
        for key, f in self.functions.items():
            table += [
                q(f"MEASure:{f.header}", lambda p, k=key: self._q_measure_function(k, p)),
                c(f"CONFigure:{f.header}", lambda p, k=key: self._c_configure_function(k, p)),
            ]
            if f.ranges:
                node = f"[SENSe:]{f.header}:RANGe"
                table += [
                    c(f"{node}[:UPPer]", lambda p, k=key: self._c_range_of(k, p)),
                    q(f"{node}[:UPPer]", lambda p, k=key: self._q_range_of(k, p)),
                    c(f"{node}:AUTO", lambda p, k=key: self._c_autorange_of(k, p)),
                    q(
                        f"{node}:AUTO",
                        lambda p, k=key: self._no_params(p) or self._flag(self.autorange[k]),
                    ),
                ]
            if f.nplc:
                node = f"[SENSe:]{f.header}:NPLCycles"
                table += [
                    c(node, lambda p, k=key: self._c_nplc(k, p)),
                    q(node, lambda p, k=key: self._q_nplc(k, p)),
                ]
        return table + self._model_commands(q, c)

    def _model_commands(self, q: Callable[..., _Command], c: Callable[..., _Command]) -> list:
        return []

    # --- handlers ------------------------------------------------------------------------------

    def _function_of(self, text: str) -> str:
        name = _string(text)
        for key in self.functions:
            if _FUNCTION_PATTERNS[key].fullmatch(name.strip().lstrip(":")):
                return key
        raise _ScpiError(-224)

    def _c_function(self, params: list[str]) -> None:
        key = self._function_of(self._one(params))
        if key != self.function:
            self._readings = None  # a reading of another function is stale
        self.function = key

    def _q_function(self) -> str:
        return _quoted(self._FUNCTION_NAMES[self.function])

    def _q_conf(self) -> str:
        return _quoted(self._FUNCTION_NAMES[self.function])

    def _number_of(self, key: str, text: str) -> float:
        return self._number(text, suffixes=dict(_DMM_FUNCTIONS[key].suffixes))

    def _range_value(self, key: str, text: str, *, default_is_auto: bool) -> float | None:
        """A range parameter -> the range it selects; None for autorange (DEF, AUTO)."""
        ranges = _DMM_FUNCTIONS[key].ranges
        word = text.upper()
        if word in ("MIN", "MINIMUM"):
            return ranges[0]
        if word in ("MAX", "MAXIMUM"):
            return ranges[-1]
        if word in ("DEF", "DEFAULT", "AUTO") and default_is_auto:
            return None
        value = abs(self._number_of(key, text))
        if value > ranges[-1] * self._RANGE_OVER_TOP:
            raise _ScpiError(-222)
        # A DMM picks the smallest range that holds the expected value.
        return next((r for r in ranges if value <= r), ranges[-1])

    def _c_range_of(self, key: str, params: list[str]) -> None:
        chosen = self._range_value(key, self._one(params), default_is_auto=False)
        self.fixed_range[key] = chosen
        self.autorange[key] = False
        self._readings = None

    def _q_range_of(self, key: str, params: list[str]) -> str:
        if params:
            return _setting(self._range_value(key, self._one(params), default_is_auto=False))
        return _setting(self.effective_range(key))

    def _c_autorange_of(self, key: str, params: list[str]) -> None:
        on = self._boolean(self._one(params))
        if not on:
            # Autorange off keeps the range it was on, as the front panel shows.
            self.fixed_range[key] = self.effective_range(key)
        self.autorange[key] = on

    def _c_nplc(self, key: str, params: list[str]) -> None:
        raise NotImplementedError

    def _q_nplc(self, key: str, params: list[str]) -> str:
        raise NotImplementedError

    def _q_limit(self, params: list[str], low: float, high: float, *, integer: bool = False) -> str:
        """``<query>? MIN|MAX``: the limit; no parameter: '' so the caller's value follows."""
        if not params:
            return ""
        word = self._one(params).upper()
        if word in ("MIN", "MINIMUM", "MAX", "MAXIMUM"):
            value = low if word.startswith("MIN") else high
            return f"{int(value):+d}" if integer else _setting(value)
        raise _ScpiError(-224)

    def _c_configure_function(self, key: str, params: list[str]) -> None:
        raise NotImplementedError

    def _q_measure_function(self, key: str, params: list[str]) -> str | None:
        self._c_configure_function(key, params)
        return self._q_read([])

    def _c_trigger_source(self, params: list[str]) -> None:
        word = self._one(params).upper()
        for short, long in _SOURCES.items():
            if short in self._SOURCES_ALLOWED and word in (short, long.upper()):
                self.trigger_source = short
                self._armed = False
                return
        raise _ScpiError(-224)

    def _c_trigger_count(self, params: list[str]) -> None:
        text = self._one(params)
        if text.upper() in ("INF", "INFINITY"):
            self.trigger_count = math.inf
            return
        self.trigger_count = self._integer(
            text,
            1,
            self._TRIGGER_COUNT_MAX,
            special={"MIN": 1, "MAX": self._TRIGGER_COUNT_MAX, "DEF": 1},
        )

    def _c_sample_count(self, params: list[str]) -> None:
        self.sample_count = self._integer(
            self._one(params),
            1,
            self._SAMPLE_COUNT_MAX,
            special={"MIN": 1, "MAX": self._SAMPLE_COUNT_MAX, "DEF": 1},
        )

    def _c_trigger_delay(self, params: list[str]) -> None:
        text = self._one(params)
        word = text.upper()
        if word in ("MIN", "MINIMUM", "DEF", "DEFAULT"):
            value = 0.0
        elif word in ("MAX", "MAXIMUM"):
            value = self._TRIGGER_DELAY_MAX
        else:
            value = self._number(text, suffixes={"": 1.0, "S": 1.0, "MS": 1e-3})
            if not 0 <= value <= self._TRIGGER_DELAY_MAX:
                raise _ScpiError(-222)
        self.trigger_delay = value
        self.trigger_delay_auto = False  # a delay given by number switches the auto delay off

    def _c_trigger_delay_auto(self, params: list[str]) -> None:
        self.trigger_delay_auto = self._boolean(self._one(params))

    def _c_init(self, params: list[str]) -> None:
        self._no_params(params)
        if self.trigger_source != "IMM" and self.trigger_source != "TIM":
            self._armed = True  # waiting for *TRG (BUS) or a trigger a simulator never gets
            self._readings = None
            return
        self._readings = self._take_readings()

    def _c_trg(self, params: list[str]) -> None:
        self._no_params(params)
        if not (self._armed and self.trigger_source == "BUS"):
            raise _ScpiError(-211)
        self._armed = False
        self._readings = self._take_readings()

    def _q_fetch(self, params: list[str]) -> str | None:
        self._no_params(params)
        if self._armed:
            return None  # the meter holds the query until its readings exist
        if self._readings is None:
            raise _ScpiError(-230)
        return self._format_readings(self._readings)

    def _q_read(self, params: list[str]) -> str | None:
        self._no_params(params)
        if self.trigger_source == "BUS":
            raise _ScpiError(-214)  # READ? would wait for a *TRG it can never receive
        if self.trigger_source in ("EXT", "MAN"):
            return None  # waits for a trigger that never reaches a simulator
        return self._format_readings(self._take_readings())


class Hp34401aModel(_DmmModel):
    """An HP/Agilent 34401A: ``FUNC?`` -> ``"VOLT"``, ``CONF?`` -> ``"VOLT <range>,<res>"``."""

    personality = "34401a"
    _IDENTITY = ("HEWLETT-PACKARD", "34401A", "0", "11-5-2")
    _ERROR_QUEUE = 20
    _ERROR_TEXT = {-230: "Data stale", -350: "Too many errors", 531: "Insufficient memory"}
    _FUNCTION_NAMES = {
        "VOLT": "VOLT",
        "VOLT:AC": "VOLT:AC",
        "CURR": "CURR",
        "CURR:AC": "CURR:AC",
        "RES": "RES",
        "FRES": "FRES",
        "FREQ": "FREQ",
        "PER": "PER",
        "CONT": "CONT",
        "DIOD": "DIOD",
    }
    _NPLC_STEPS = {0.02: 1e-4, 0.2: 1e-5, 1.0: 3e-6, 10.0: 1e-6, 100.0: 3e-7}
    """Integration time (power line cycles) -> resolution as a fraction of the range."""

    def _reset_settings(self) -> None:
        super()._reset_settings()
        self.autozero = True
        self.input_impedance_auto = False
        self.display_on = True
        self.display_text = ""
        self.beeper = True

    def _model_commands(self, q: Callable[..., _Command], c: Callable[..., _Command]) -> list:
        table = []
        for key, f in self.functions.items():
            if f.nplc or key in ("VOLT:AC", "CURR:AC"):
                node = f"[SENSe:]{f.header}:RESolution"
                table += [
                    c(node, lambda p, k=key: self._c_resolution(k, p)),
                    q(node, lambda p, k=key: self._no_params(p) or _setting(self._resolution(k))),
                ]
        return table + [
            c("[SENSe:]ZERO:AUTO", self._c_autozero),
            q("[SENSe:]ZERO:AUTO", lambda p: self._no_params(p) or self._flag(self.autozero)),
            c("INPut:IMPedance:AUTO", self._c_impedance),
            q(
                "INPut:IMPedance:AUTO",
                lambda p: self._no_params(p) or self._flag(self.input_impedance_auto),
            ),
            q("ROUTe:TERMinals", lambda p: self._no_params(p) or "FRON"),
            c("DISPlay[:WINDow][:STATe]", self._c_display),
            q(
                "DISPlay[:WINDow][:STATe]",
                lambda p: self._no_params(p) or self._flag(self.display_on),
            ),
            c("DISPlay[:WINDow]:TEXT[:DATA]", self._c_display_text),
            q(
                "DISPlay[:WINDow]:TEXT[:DATA]",
                lambda p: self._no_params(p) or _quoted(self.display_text),
            ),
            c("DISPlay[:WINDow]:TEXT:CLEar", self._c_display_clear),
            c("SYSTem:BEEPer[:IMMediate]", self._no_params),
            c("SYSTem:BEEPer:STATe", self._c_beeper),
            q("SYSTem:BEEPer:STATe", lambda p: self._no_params(p) or self._flag(self.beeper)),
            c("SYSTem:LOCal", self._no_params),
            c("SYSTem:REMote", self._no_params),
            c("SYSTem:RWLock", self._no_params),
            q("DATA:POINts", lambda p: self._no_params(p) or f"{len(self._readings or []):+d}"),
        ]

    def _resolution(self, key: str) -> float:
        span = self.effective_range(key)
        if key in self.nplc:
            return self._NPLC_STEPS[self.nplc[key]] * span
        return 1e-6 * span  # ac and frequency: fixed at 6 1/2 digits (manual, MEASure:VOLT:AC?)

    def _nplc_for_resolution(self, key: str, text: str) -> float:
        word = text.upper()
        if word in ("MIN", "MINIMUM"):
            return max(self._NPLC_STEPS)  # best resolution: the longest integration
        if word in ("MAX", "MAXIMUM"):
            return min(self._NPLC_STEPS)
        if word in ("DEF", "DEFAULT"):
            return self._NPLC_DEFAULT
        wanted = abs(self._number_of(key, text))
        span = self.effective_range(key)
        fitting = [n for n, f in self._NPLC_STEPS.items() if f * span <= wanted * (1 + 1e-9)]
        if not fitting:
            raise _ScpiError(-222)  # finer than 100 PLC can resolve on this range
        return min(fitting)  # the fastest integration that resolves it

    def _c_resolution(self, key: str, params: list[str]) -> None:
        nplc = self._nplc_for_resolution(key, self._one(params))
        if key in self.nplc:
            self.nplc[key] = nplc

    def _c_nplc(self, key: str, params: list[str]) -> None:
        text = self._one(params)
        word = text.upper()
        if word in ("MIN", "MINIMUM"):
            value = min(self._NPLC_STEPS)
        elif word in ("MAX", "MAXIMUM"):
            value = max(self._NPLC_STEPS)
        else:
            number = self._number(text)
            value = next((n for n in self._NPLC_STEPS if math.isclose(n, number)), None)
            if value is None:
                raise _ScpiError(-222)  # the manual lists 0.02, 0.2, 1, 10, 100 only
        self.nplc[key] = value

    def _q_nplc(self, key: str, params: list[str]) -> str:
        return self._q_limit(params, min(self._NPLC_STEPS), max(self._NPLC_STEPS)) or _setting(
            self.nplc[key]
        )

    def _q_conf(self) -> str:
        key = self.function
        name = self._FUNCTION_NAMES[key]
        if key in _FIXED_RANGE:
            return _quoted(name)
        span = self.effective_range(key) if _DMM_FUNCTIONS[key].ranges else 10.0
        resolution = self._resolution(key) if _DMM_FUNCTIONS[key].ranges else 1e-6 * span
        return _quoted(f"{name} {_setting(span)},{_setting(resolution)}")

    def _c_configure_function(self, key: str, params: list[str]) -> None:
        f = _DMM_FUNCTIONS[key]
        if len(params) > 2 or (params and not f.ranges and key in _FIXED_RANGE):
            raise _ScpiError(-108)
        self.function = key
        if f.ranges:
            chosen = (
                None
                if not params or not params[0]
                else self._range_value(key, params[0], default_is_auto=True)
            )
            self.autorange[key] = chosen is None
            if chosen is not None:
                self.fixed_range[key] = chosen
            if f.nplc:
                self.nplc[key] = (
                    self._nplc_for_resolution(key, params[1])
                    if len(params) == 2 and params[1]
                    else self._NPLC_DEFAULT
                )
        self._preset_trigger()  # CONFigure presets the trigger system (manual, chapter 4)
        self._readings = None
        self._armed = False

    def _c_init(self, params: list[str]) -> None:
        if self.trigger_count * self.sample_count > _READING_MEMORY:
            self._no_params(params)
            raise _ScpiError(531)
        super()._c_init(params)

    def _c_autozero(self, params: list[str]) -> None:
        word = self._one(params).upper()
        self.autozero = False if word == "ONCE" else self._boolean(word)

    def _c_impedance(self, params: list[str]) -> None:
        self.input_impedance_auto = self._boolean(self._one(params))

    def _c_display(self, params: list[str]) -> None:
        self.display_on = self._boolean(self._one(params))

    def _c_display_text(self, params: list[str]) -> None:
        self.display_text = _string(self._one(params))[:12]  # the display shows 12 characters

    def _c_display_clear(self, params: list[str]) -> None:
        self._no_params(params)
        self.display_text = ""

    def _c_beeper(self, params: list[str]) -> None:
        self.beeper = self._boolean(self._one(params))


class Keithley2000Model(_DmmModel):
    """A Keithley 2000: ``FUNC?``/``CONF?`` -> ``"VOLT:DC"``, free-running at power-on."""

    personality = "keithley2000"
    _IDENTITY = ("KEITHLEY INSTRUMENTS INC.", "MODEL 2000", "1234567", "A08 /A02")
    _ERROR_QUEUE = 10
    _ERROR_TEXT = {-222: "Parameter data out of range"}
    _FUNCTION_NAMES = {
        "VOLT": "VOLT:DC",
        "VOLT:AC": "VOLT:AC",
        "CURR": "CURR:DC",
        "CURR:AC": "CURR:AC",
        "RES": "RES",
        "FRES": "FRES",
        "FREQ": "FREQ",
        "PER": "PER",
        "TEMP": "TEMP",
        "DIOD": "DIOD",
        "CONT": "CONT",
    }
    _NPLC_DEFAULT = 1.0
    _NPLC_LIMITS = (0.01, 10.0)
    _SOURCES_ALLOWED = ("IMM", "TIM", "MAN", "BUS", "EXT")
    _TRIGGER_COUNT_MAX = 9999
    _SAMPLE_COUNT_MAX = 1024
    _TRIGGER_DELAY_MAX = 999999.999
    _RANGE_OVER_TOP = 1.01  # "0 to 1010" selects the 1000 V range (manual, pymeasure)
    _VERSION = "1991.0"

    def _error_reply(self, code: int, text: str) -> str:
        return f'{code:d},"{text}"'  # 0,"No error": no sign, unlike the 34401A

    def power_cycle(self) -> None:
        with self.lock:
            super().power_cycle()
            self.init_continuous = True  # the front panel free-runs after power-on

    def _reset_settings(self) -> None:
        super()._reset_settings()
        self.init_continuous = False  # *RST leaves the meter idle (SYST:PRES: free-running)
        self.digits = {k: 7 for k in self.functions if k not in _FIXED_RANGE}
        self.reference = {k: 0.0 for k, f in self.functions.items() if f.ranges}
        self.reference_on = {k: False for k in self.reference}
        self.autozero = True
        self.display_on = True
        self.display_text = ""
        self.display_text_on = False
        self.beeper = True
        for key in ("VOLT:AC", "CURR:AC", "TEMP"):  # integration time of these too
            self.nplc[key] = self._NPLC_DEFAULT

    def _relative(self, key: str, value: float) -> float:
        if value != _OVERLOAD and self.reference_on.get(key):
            return value - self.reference[key]
        return value

    def _model_commands(self, q: Callable[..., _Command], c: Callable[..., _Command]) -> list:
        table = [
            q("MEASure", lambda p: self._q_measure_function(self.function, p)),
            c("INITiate:CONTinuous", self._c_init_continuous),
            q(
                "INITiate:CONTinuous",
                lambda p: self._no_params(p) or self._flag(self.init_continuous),
            ),
            c("ABORt", self._c_abort),
            c("SYSTem:PRESet", self._c_preset),
            c("STATus:PRESet", self._no_params),
            q("STATus:QUEue[:NEXT]", self._q_error),
            c("STATus:QUEue:CLEar", self._c_queue_clear),
            c("FORMat[:DATA]", self._c_format),
            q("FORMat[:DATA]", lambda p: self._no_params(p) or "ASC"),
            c("FORMat:ELEMents", self._c_elements),
            q("FORMat:ELEMents", lambda p: self._no_params(p) or "READ"),
            c("SYSTem:BEEPer[:STATe]", self._c_beeper),
            q("SYSTem:BEEPer[:STATe]", lambda p: self._no_params(p) or self._flag(self.beeper)),
            c("SYSTem:AZERo[:STATe]", self._c_autozero),
            q("SYSTem:AZERo[:STATe]", lambda p: self._no_params(p) or self._flag(self.autozero)),
            c("SYSTem:LOCal", self._no_params),
            c("SYSTem:REMote", self._no_params),
            c("SYSTem:RWLock", self._no_params),
            c("DISPlay[:WINDow]:TEXT:DATA", self._c_display_text),
            q(
                "DISPlay[:WINDow]:TEXT:DATA",
                lambda p: self._no_params(p) or _quoted(self.display_text),
            ),
            c("DISPlay[:WINDow]:TEXT:STATe", self._c_display_text_state),
            q(
                "DISPlay[:WINDow]:TEXT:STATe",
                lambda p: self._no_params(p) or self._flag(self.display_text_on),
            ),
            c("DISPlay:ENABle", self._c_display),
            q("DISPlay:ENABle", lambda p: self._no_params(p) or self._flag(self.display_on)),
        ]
        for key, f in self.functions.items():
            if key not in _FIXED_RANGE:
                node = f"[SENSe:]{f.header}:DIGits"
                table += [
                    c(node, lambda p, k=key: self._c_digits(k, p)),
                    q(node, lambda p, k=key: self._no_params(p) or str(self.digits[k])),
                ]
            if f.ranges:
                node = f"[SENSe:]{f.header}:REFerence"
                table += [
                    c(node, lambda p, k=key: self._c_reference(k, p)),
                    q(node, lambda p, k=key: self._no_params(p) or _setting(self.reference[k])),
                    c(f"{node}:STATe", lambda p, k=key: self._c_reference_state(k, p)),
                    q(
                        f"{node}:STATe",
                        lambda p, k=key: self._no_params(p) or self._flag(self.reference_on[k]),
                    ),
                    c(f"{node}:ACQuire", lambda p, k=key: self._c_reference_acquire(k, p)),
                ]
            if key in ("VOLT:AC", "CURR:AC", "TEMP"):
                node = f"[SENSe:]{f.header}:NPLCycles"
                table += [
                    c(node, lambda p, k=key: self._c_nplc(k, p)),
                    q(node, lambda p, k=key: self._q_nplc(k, p)),
                ]
        return table

    def _c_nplc(self, key: str, params: list[str]) -> None:
        low, high = self._NPLC_LIMITS
        text = self._one(params)
        word = text.upper()
        if word in ("MIN", "MINIMUM"):
            value = low
        elif word in ("MAX", "MAXIMUM"):
            value = high
        elif word in ("DEF", "DEFAULT"):
            value = self._NPLC_DEFAULT
        else:
            value = self._number(text)
            if not low <= value <= high:
                raise _ScpiError(-222)
        self.nplc[key] = value

    def _q_nplc(self, key: str, params: list[str]) -> str:
        low, high = self._NPLC_LIMITS
        return self._q_limit(params, low, high) or _setting(self.nplc[key])

    def _c_configure_function(self, key: str, params: list[str]) -> None:
        if params:
            raise _ScpiError(-108)  # :CONFigure:<function> takes no range or resolution
        self.function = key
        # The function's own controls go back to their *RST values (manual, :CONFigure).
        if key in self.autorange:
            self.autorange[key] = True
        if key in self.nplc:
            self.nplc[key] = self._NPLC_DEFAULT
        if key in self.reference_on:
            self.reference_on[key] = False
        if key in self.digits:
            self.digits[key] = 7
        self._preset_trigger()
        self._readings = None
        self._armed = False

    def _c_init(self, params: list[str]) -> None:
        self._no_params(params)
        if self.init_continuous:
            raise _ScpiError(-213)  # already initiated: the meter is free-running
        super()._c_init(params)

    def _q_fetch(self, params: list[str]) -> str | None:
        self._no_params(params)
        if self.init_continuous and not self._armed:
            return _nr3(self.measure())  # free-running: the latest reading is always fresh
        return super()._q_fetch(params)

    def _q_read(self, params: list[str]) -> str | None:
        # READ? aborts, initiates and fetches, so it always returns a new reading.
        reply = super()._q_read(params)
        if reply is not None:
            self._readings = [float(v) for v in reply.split(",")]
        return reply

    def _c_init_continuous(self, params: list[str]) -> None:
        self.init_continuous = self._boolean(self._one(params))
        self._armed = False

    def _c_abort(self, params: list[str]) -> None:
        self._no_params(params)
        self._armed = False

    def _c_preset(self, params: list[str]) -> None:
        self._no_params(params)
        self._reset_settings()
        self.init_continuous = True

    def _c_queue_clear(self, params: list[str]) -> None:
        self._no_params(params)
        self.errors.clear()

    def _c_format(self, params: list[str]) -> None:
        if self._one(params).upper() not in ("ASC", "ASCII"):
            raise _ScpiError(-224)  # binary reading formats are not modelled

    def _c_elements(self, params: list[str]) -> None:
        if [p.upper() for p in params] not in (["READ"], ["READING"]):
            raise _ScpiError(-224)  # channel and units elements are not modelled

    def _c_beeper(self, params: list[str]) -> None:
        self.beeper = self._boolean(self._one(params))

    def _c_autozero(self, params: list[str]) -> None:
        self.autozero = self._boolean(self._one(params))

    def _c_display(self, params: list[str]) -> None:
        self.display_on = self._boolean(self._one(params))

    def _c_display_text(self, params: list[str]) -> None:
        self.display_text = _string(self._one(params))[:12]

    def _c_display_text_state(self, params: list[str]) -> None:
        self.display_text_on = self._boolean(self._one(params))

    def _c_digits(self, key: str, params: list[str]) -> None:
        text = self._one(params)
        self.digits[key] = self._integer(text, 4, 7, special={"MIN": 4, "MAX": 7, "DEF": 7})

    def _c_reference(self, key: str, params: list[str]) -> None:
        value = self._number_of(key, self._one(params))
        if abs(value) > _DMM_FUNCTIONS[key].ranges[-1] * self._RANGE_OVER_TOP:
            raise _ScpiError(-222)
        self.reference[key] = value

    def _c_reference_state(self, key: str, params: list[str]) -> None:
        self.reference_on[key] = self._boolean(self._one(params))

    def _c_reference_acquire(self, key: str, params: list[str]) -> None:
        self._no_params(params)
        if self.function == key:
            saved, self.reference_on[key] = self.reference_on[key], False
            self.reference[key] = self.measure()
            self.reference_on[key] = saved


PERSONALITIES: tuple[str, ...] = ("generic", "34401a", "keithley2000")
"""The instruments the SCPI simulator can be: ``personality=`` of the model, ``serve_tcp``,
``daqbridge sim serve scpi --personality``, and a profile's ``sim.options``."""

_PERSONALITY_ALIASES = {
    "generic": ScpiInstrumentModel,
    "34401a": Hp34401aModel,
    "hp34401a": Hp34401aModel,
    "agilent34401a": Hp34401aModel,
    "keysight34401a": Hp34401aModel,
    "keithley2000": Keithley2000Model,
    "2000": Keithley2000Model,
}


def _personality_class(personality: Any) -> type[ScpiInstrumentModel]:
    key = str(personality).strip().lower().replace(" ", "").replace("-", "").replace("_", "")
    cls = _PERSONALITY_ALIASES.get(key)
    if cls is None:
        raise ConfigError(
            f"the SCPI simulator has no personality {personality!r}; known: "
            f"{', '.join(PERSONALITIES)}.",
            key="personality",
            fix="use personality = '34401a' (HP/Agilent 34401A), 'keithley2000' (Keithley "
            "2000) or 'generic' (the default DMM with a source).",
        )
    return cls


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


SIMULATOR = "socket:serve_tcp"
"""How ``daqbridge.sim`` finds this simulator (its kind is this module's name)."""
