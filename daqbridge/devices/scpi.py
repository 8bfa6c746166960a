"""A generic SCPI instrument over VISA as an ophyd-async device, built from the profile's signals.

This module is the instrument's one home: its facts (the IEEE 488.2 rules on text, the error
queue, the overload marker), the settings model of its ``[instruments.scpi]`` table
(:class:`ScpiSettings`, registered with :func:`daqbridge.devices.register_driver`, so
``config check`` and start-up cannot disagree), the device, and ``build`` (ADR 0007, 0008).

Why it is built this way (INSTRUMENTS.md, "Generic SCPI instrument over VISA";
tests/transcripts/scpi_34401a.yaml and scpi_keithley2000.yaml pin the exchanges byte for byte):

* Every instrument is different, but the lab only needs a few values of each, so a device is
  declared, pymeasure-style, as signals with a query, a command template (``SOUR:VOLT {value}``),
  units, limits, a kind and a type. Each becomes one ophyd-async signal named after it (data key
  ``<device>_<signal>``): read-only for a query, read-write where the spec has a command.
  Descriptors carry dtype, shape, units, limits and ``source`` = ``SCPI <resource> <query or
  command>``; kinds are the spec's (hinted, normal: ``read()``; config: ``read_configuration()``).
* Every read asks the instrument: nothing is kept that it did not say. ``read()`` asks every
  hinted/normal query in ONE lease, so the values of a point belong together and no other client
  slips a command in between; ``read_configuration()`` asks ``*IDN?`` and the config queries in
  one lease too. ``trigger()`` has nothing to start.
* A set is validated before any byte is sent (limits, type, text that would smuggle a terminator
  or a second command, or that is not ASCII), then, in one lease: the command, ``SYST:ERR?``
  until ``0`` (SCPI set commands are silent, so the error queue is the only way to learn the
  instrument refused), and the read-back. A refusal fails the set with the instrument's own
  text; the read-back is not compared with what was sent, since instruments answer in their own
  words (a 34401A reads back ``FUNC "VOLT:DC"`` as ``"VOLT"``). A spec with a command and no
  query reads what the instrument last accepted (before any set: NaN / 0 / "").
* Connect, one lease: ``*IDN?`` (``expected_idn`` must occur in it, else IdentityMismatch), old
  errors drained from the queue (logged), then every query once, so a profile whose query the
  instrument does not know fails at start-up, not in the middle of a run.
* ``+9.9E37`` is SCPI's overload marker, never a measurement: InstrumentFault.
* Text signals (``dtype = "str"``) follow IEEE 488.2 string data, as real meters do (34401A
  User's Guide p. 159): a reply such as ``"VOLT"`` (``FUNC?``) loses its quotes, and a quote
  inside a value sent in a quoted command (``DISP:TEXT "{value}"``) is doubled, and undoubled
  on the way back. Sent as it is, the instrument would end the string early and refuse the rest.
* The port is anything with async leases (``devices.core.LeasedPort``): a VISA session through
  :class:`daqbridge.transport._visa_async.VisaPort` in the lab (a ``VisaSession`` is wrapped at
  construction; traffic to one instrument is serialised by its leases, different instruments
  work at once), :class:`~daqbridge.devices.core.ReplayPort` in tests. The device owns no thread;
  it lives on the loop it was connected on (the RunEngine's), and synchronous code reaches it
  with :func:`daqbridge.devices.core.call_sync`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar, Literal

from bluesky.protocols import Reading
from ophyd_async.core import SignalR
from ophyd_async.core import StandardReadableFormat as Format
from pydantic import Field, field_validator, model_validator

from daqbridge.devices._base import check_number, check_wire_text, positive_setting
from daqbridge.devices._registry import (
    DriverSettings,
    EntryDefault,
    ProfileEntry,
    register_driver,
    settings_error,
    validate_settings,
)
from daqbridge.devices.core import (
    Exchange,
    LeasedPort,
    WireCommand,
    WireDevice,
    WireSignalBackend,
)
from daqbridge.devices.core._signal import WireSignalR, WireSignalRW
from daqbridge.errors import (
    ConfigError,
    DaqbridgeError,
    IdentityMismatch,
    InstrumentFault,
    ReplyError,
    ValueRejected,
)
from daqbridge.transport import VisaSession
from daqbridge.transport._visa_async import VisaPort

__all__ = [
    "DTYPES",
    "KINDS",
    "TERMINATIONS",
    "ScpiInstrument",
    "ScpiSettings",
    "ScpiSignalSettings",
    "ScpiSignalSpec",
    "build",
    "parse_scpi_error",
]

log = logging.getLogger(__name__)

KINDS: dict[str, Format] = {
    "hinted": Format.HINTED_UNCACHED_SIGNAL,
    "normal": Format.UNCACHED_SIGNAL,
    "config": Format.CONFIG_SIGNAL,
}
"""A spec's kind as ophyd-async declares it (uncached: a staged signal must still ask)."""
DTYPES: dict[str, type] = {"float": float, "int": int, "str": str}
TERMINATIONS: dict[str, str] = {"LF": "\n", "CR": "\r", "CRLF": "\r\n"}
"""The table's ``termination`` as VISA read and write terminations (the session is opened so)."""
_INITIAL: dict[str, Any] = {"float": math.nan, "int": 0, "str": ""}
"""What a command-only signal reads before its first set."""
_BLUESKY_VERBS = frozenset(
    {"check_value", "clear_sub", "collect", "collect_asset_docs", "collect_pages", "complete"}
    | {"describe_collect", "get_index", "kickoff", "locate", "pause", "resume", "set", "stop"}
    | {"subscribe", "hints", "name", "prepare", "stage", "unstage", "trigger", "read"}
)
"""Names ophyd-async keeps for the bluesky protocols: a child so named is refused."""
_INSTANCE_ATTRS = frozenset(
    {"port", "reply_timeout", "lease_timeout", "verified_generation", "connected_loop"}
    | {"closed", "expected_idn", "identity"}
)


# --- the instrument's facts ---------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_ERROR_REPLY = re.compile(r"\s*([+-]?\d+)\s*(?:,\s*(.*?))?\s*")
_OVERLOAD = 9.9e37
"""SCPI's overload / not-a-number marker (9.9E37, 9.91E37 NaN): never a measured value."""
_MAX_ERRORS = 32
"""SYST:ERR? is read at most this often per check; a typical queue holds 10-30 entries."""


def parse_scpi_error(reply: str) -> tuple[int, str]:
    """``-222,"Data out of range"`` -> (-222, 'Data out of range'); ``+0,"No error"`` -> (0, ...).

    Raises ValueError when the reply has no leading integer code.
    """
    m = _ERROR_REPLY.fullmatch(reply)
    if m is None:
        raise ValueError(reply)
    text = (m.group(2) or "").strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    return int(m.group(1)), text


@dataclasses.dataclass(frozen=True)
class ScpiSignalSpec:
    """One signal: read with ``query``, set with ``command`` (``{value}`` marks the value).

    ``kind`` is hinted/normal (refreshed by ``trigger()``) or config (read at connect and after
    sets); ``dtype`` is float, int or str; ``low``/``high`` bound the values a plan may set.
    """

    name: str
    query: str | None = None
    command: str | None = None
    units: str = ""
    low: float | None = None
    high: float | None = None
    kind: str = "normal"
    dtype: str = "float"

    _FIELDS: ClassVar[tuple[str, ...]] = (
        "name",
        "query",
        "command",
        "units",
        "low",
        "high",
        "kind",
        "dtype",
    )

    @classmethod
    def coerce(cls, spec: Any, *, instrument: str) -> ScpiSignalSpec:
        """Accept a spec, a mapping, or any object with the fields (the profile's ScpiSignal)."""
        if isinstance(spec, cls):
            raw = {f: getattr(spec, f) for f in cls._FIELDS}
        elif isinstance(spec, Mapping):
            unknown = sorted(set(spec) - set(cls._FIELDS))
            if unknown:
                raise ConfigError(
                    f"SCPI instrument {instrument!r}: unknown signal key(s) {', '.join(unknown)}.",
                    key=unknown[0],
                    fix=f"use only: {', '.join(cls._FIELDS)}.",
                )
            raw = dict(spec)
        else:
            raw = {f: getattr(spec, f) for f in cls._FIELDS if hasattr(spec, f)}
        if "name" not in raw:
            raise ConfigError(
                f"SCPI instrument {instrument!r}: a signal without a name ({spec!r}).",
                key="name",
                fix="give every signal a name, e.g. name = 'voltage'.",
            )
        try:
            made = cls(**raw)
        except TypeError as exc:
            raise ConfigError(
                f"SCPI instrument {instrument!r}: bad signal {spec!r}: {exc}.", key="signals"
            ) from None
        made._validate(instrument)
        return made

    def _bad(self, instrument: str, what: str, key: str, fix: str) -> ConfigError:
        return ConfigError(
            f"SCPI instrument {instrument!r}, signal {self.name!r}: {what}.", key=key, fix=fix
        )

    def _validate(self, instrument: str) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise self._bad(
                instrument,
                "the name must be a Python identifier",
                "name",
                "use letters, digits and underscores, starting with a letter (e.g. 'voltage').",
            )
        if _reserved(self.name):
            raise self._bad(
                instrument,
                "the name is taken by the device itself",
                "name",
                "choose another name (e.g. 'meas_voltage').",
            )
        if self.query is None and self.command is None:
            raise self._bad(
                instrument,
                "it has neither query nor command",
                "query",
                "add a query ('MEAS:VOLT:DC?') and/or a command ('SOUR:VOLT {value}').",
            )
        for key in ("query", "command"):
            text = getattr(self, key)
            if text is None:
                continue
            if not isinstance(text, str) or not text.strip():
                raise self._bad(instrument, f"{key} must be non-empty text", key, "fix it.")
            try:
                check_wire_text(text.replace("{value}", ""), instrument=instrument, what=key)
            except ValueRejected as exc:
                fix = "one command per signal." if text.isascii() else exc.fix
                raise self._bad(instrument, exc.what, key, fix or "fix it.") from None
        if self.query is not None and not self.query.rstrip().endswith("?"):
            raise self._bad(
                instrument,
                f"query {self.query!r} does not end in '?'",
                "query",
                "SCPI instruments reply only to queries; end it with '?'.",
            )
        if self.command is not None and (
            self.command.count("{value}") != 1 or self.command.count("{") != 1
        ):
            raise self._bad(
                instrument,
                f"command {self.command!r} needs exactly one {{value}}",
                "command",
                "write e.g. 'SOUR:VOLT {value}'.",
            )
        if self.kind not in KINDS:
            raise self._bad(
                instrument,
                f"kind {self.kind!r} is not one of {', '.join(KINDS)}",
                "kind",
                "use hinted (plotted), normal (read every point) or config (once per run).",
            )
        if self.dtype not in DTYPES:
            raise self._bad(
                instrument,
                f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}",
                "dtype",
                "use float, int or str.",
            )
        for key in ("low", "high"):
            v = getattr(self, key)
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
            ):
                raise self._bad(instrument, f"{key} must be a finite number", key, "fix it.")
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise self._bad(
                instrument,
                f"low {self.low} is not below high {self.high}",
                "high",
                "swap the bounds.",
            )
        if self.dtype == "str" and (self.low is not None or self.high is not None):
            raise self._bad(
                instrument,
                "text signals cannot have low/high limits",
                "low",
                "remove them.",
            )


_IDENTITY = ScpiSignalSpec(name="identity", query="*IDN?", kind="config", dtype="str")


def _enclosing_quote(command: str) -> str | None:
    """The quote around ``{value}`` in ``FUNC "{value}"`` (None when the value is bare)."""
    at = command.index("{value}")
    before, after = command[at - 1 : at], command[at + len("{value}") : at + len("{value}") + 1]
    return before if before and before == after and before in "\"'" else None


def _unquoted(reply: str) -> str:
    """String response data as the text it stands for: outer quotes off, doubled ones single."""
    if len(reply) >= 2 and reply[0] == reply[-1] and reply[0] in "\"'":
        quote = reply[0]
        return reply[1:-1].replace(quote * 2, quote)
    return reply


# --- the [instruments.scpi] table ----------------------------------------------------------------


def _reserved(name: str) -> bool:
    """A signal name that would shadow an attribute or verb of the device."""
    return name in _BLUESKY_VERBS or name in _INSTANCE_ATTRS or hasattr(ScpiInstrument, name)


class ScpiSignalSettings(DriverSettings):
    """One signal of a SCPI instrument (``scpi.signals`` entry)."""

    name: str = Field(description="Signal name (the ophyd component, data key `<id>_<name>`).")
    query: str | None = Field(None, description="Query that reads it, ending in `?`.")
    command: str | None = Field(
        None, description="Command that sets it, with `{value}` where the value goes."
    )
    units: str = Field("", description="Engineering units, recorded in the descriptor.")
    low: float | None = Field(None, description="Lowest value a plan may set.")
    high: float | None = Field(None, description="Highest value a plan may set.")
    kind: Literal["hinted", "normal", "config"] = Field(
        "normal", description="ophyd Kind: hinted (plotted), normal (read), config (once per run)."
    )
    dtype: Literal["float", "int", "str"] = Field(
        "float",
        description='Type of the value: float, int, or str (text such as FUNC? -> "VOLT"; '
        "the quotes are removed).",
    )

    @model_validator(mode="after")
    def _as_the_driver_reads_it(self) -> ScpiSignalSettings:
        # The driver's own spec rules (ScpiSignalSpec), so a table `config check` accepts is one
        # the device builds: one command per signal, `?` on queries, one {value}, names that
        # are identifiers and not taken by the device, no limits on text.
        try:
            ScpiSignalSpec.coerce(self.model_dump(), instrument="")
        except ConfigError as exc:
            what = exc.what.removeprefix(f"{exc.key}: ").removeprefix("SCPI instrument '', ")
            raise settings_error(what.rstrip("."), exc.fix or "correct it", key=exc.key) from None
        if _reserved(self.name):
            raise settings_error(
                f"signal {self.name!r}: the name is taken by the device itself",
                "choose another name (e.g. 'meas_" + self.name + "')",
                key="name",
            )
        return self


class ScpiSettings(DriverSettings):
    """``[instruments.scpi]``: what to read and set on a SCPI instrument."""

    signals: list[ScpiSignalSettings] = Field(
        min_length=1, description="Signals of the device, unique names."
    )
    expected_idn: str | None = Field(
        None,
        description="Substring the `*IDN?` reply must contain; a different instrument at the "
        "address is refused (IdentityMismatch).",
    )
    termination: Literal[tuple(TERMINATIONS)] = Field(  # type: ignore[valid-type]
        "LF", description="Read and write termination."
    )

    @field_validator("expected_idn")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or not value.isprintable()):
            raise settings_error(
                f"expected_idn {value!r} is empty or contains a control character",
                "write part of the *IDN? reply, e.g. '34401A', or remove the key",
            )
        return value

    @model_validator(mode="after")
    def _unique(self) -> ScpiSettings:
        seen: dict[str, int] = {}
        for i, signal in enumerate(self.signals):
            if signal.name in seen:
                raise settings_error(
                    f"signal name {signal.name!r} appears twice (signals[{seen[signal.name]}] "
                    f"and signals[{i}])",
                    "give every entry of signals its own name",
                    key=f"signals[{i}].name",
                )
            seen[signal.name] = i
        return self


# --- the instrument's rules on values and replies -----------------------------------------------


def command_for(spec: ScpiSignalSpec, value: Any, *, instrument: str, resource: str) -> str:
    """The set command for ``value``, or ValueRejected (synchronous, before any byte)."""

    def rejected(exc: ValueRejected) -> ValueRejected:
        return ValueRejected(
            exc.what,
            value=exc.value,
            limit=exc.limit,
            instrument=instrument,
            resource=resource,
            fix=exc.fix,
        )

    what = f"value of {spec.name}"
    if spec.command is None:
        raise ValueRejected(
            f"signal {spec.name!r} is read-only (it has no command).",
            instrument=instrument,
            resource=resource,
            value=value,
            fix="add command = '... {value}' to the signal in the profile to make it settable.",
        )
    try:
        if spec.dtype == "str":
            text = check_wire_text(value, instrument=instrument, what=what)
            quote = _enclosing_quote(spec.command)
            if quote:
                # IEEE 488.2 string data: the delimiter inside the string is sent twice, or the
                # instrument ends the string early and refuses the rest of the line.
                text = text.replace(quote, quote * 2)
        else:
            integer = spec.dtype == "int"
            number = check_number(
                value,
                instrument=instrument,
                what=what,
                low=spec.low,
                high=spec.high,
                integer=integer,
            )
            text = str(int(number)) if integer else format(number, ".12g")
        command = spec.command.replace("{value}", text)
        return check_wire_text(command, instrument=instrument, what=f"command for {spec.name}")
    except ValueRejected as exc:
        raise rejected(exc) from None


def parse_reply(spec: ScpiSignalSpec, reply: str, *, instrument: str, resource: str) -> Any:
    """The value of a query's reply, by the spec's dtype."""
    if spec.dtype == "str":
        return _unquoted(reply)
    try:
        number = float(reply)
    except ValueError:
        raise ReplyError(
            f"reply to {spec.query!r} ({spec.name}) is not a number",
            reply=reply,
            instrument=instrument,
            resource=resource,
            fix="check that the query returns a single number (not a list or text), or "
            "declare dtype = 'str'.",
        ) from None
    if abs(number) >= _OVERLOAD:
        raise InstrumentFault(
            f"{spec.query!r} ({spec.name}) returned the SCPI overload marker {reply!r}: "
            "the input is beyond the selected range",
            code=reply,
            instrument=instrument,
            resource=resource,
            fix="choose a larger range or enable autorange.",
        )
    if spec.dtype == "int":
        if not number.is_integer():
            raise ReplyError(
                f"reply to {spec.query!r} ({spec.name}) is not a whole number",
                reply=reply,
                instrument=instrument,
                resource=resource,
                fix="declare dtype = 'float' for this signal.",
            )
        return int(number)
    return number


# --- signals --------------------------------------------------------------------------------------


class ScpiSignalBackend(WireSignalBackend):
    """One spec's value: its query on every read; a set is command, ``SYST:ERR?``, read-back.

    A spec without a query reads what the instrument last accepted (module docstring).
    """

    def __init__(self, device: ScpiInstrument, spec: ScpiSignalSpec) -> None:
        limits = (spec.low, spec.high) if spec.low is not None and spec.high is not None else None
        command = WireCommand(
            query=spec.query or spec.command or "",
            read=self._read_in,
            set_command=spec.command,
            units=spec.units or None,
            limits=limits,
        )
        super().__init__(DTYPES[spec.dtype], device, command)  # type: ignore[arg-type]
        self.device: ScpiInstrument = device
        self.spec = spec
        if spec.query is None:
            self._reading = {
                "value": _INITIAL[spec.dtype],
                "timestamp": time.time(),
                "alarm_severity": 0,
            }

    @property
    def asks(self) -> bool:
        """Whether a read goes to the instrument (a spec with a query)."""
        return self.spec.query is not None

    def source(self, name: str, read: bool) -> str:
        return self.device.source_for(self.spec.query or self.spec.command or "")

    async def _read_in(self, x: Exchange) -> Any:
        reply = await x.query(self.spec.query)  # type: ignore[arg-type]
        return parse_reply(self.spec, reply, instrument=x.instrument, resource=x.resource)

    async def get_reading(self) -> Reading:
        if not self.asks:
            return dict(self._reading)  # type: ignore[arg-type,return-value]
        return await super().get_reading()

    def check(self, value: Any) -> tuple[Any, str]:
        command = command_for(
            self.spec, value, instrument=self.device.name, resource=self.device.port.url
        )
        return value, command

    async def put(self, value: Any) -> None:
        wanted, command = self.check(value)
        async with self.device.transaction() as x:
            await x.write(command)
            errors = await self.device.drain_errors(x)
            if errors:
                raise self.device.refused(self.spec, command, errors)
            got = await self.read_in(x) if self.asks else _as_dtype(wanted, self.spec)
        self.store(got)


def _as_dtype(value: Any, spec: ScpiSignalSpec) -> Any:
    if spec.dtype == "str":
        return value
    return int(value) if spec.dtype == "int" else float(value)


# --- the device -----------------------------------------------------------------------------------


class ScpiInstrument(WireDevice):
    """A SCPI instrument: Readable and Configurable; settable signals are Movable. Not
    Triggerable: ``read()`` asks the instrument (one lease for the whole point), so there is
    nothing to start and bluesky skips a point's trigger and wait.

    ``port``: a :class:`~daqbridge.transport.VisaSession` (wrapped in a VisaPort) or any
    :class:`~daqbridge.devices.core.LeasedPort`. ``signals``: :class:`ScpiSignalSpec`, mappings,
    or the profile's signal entries; each becomes a signal named after it. ``expected_idn``
    (optional) must occur in the ``*IDN?`` reply. ``timeout`` (s) bounds each reply and
    ``lease_timeout`` the wait for the instrument; unset: the VISA session's.
    """

    model: ClassVar[str] = "SCPI"

    def __init__(
        self,
        port: LeasedPort | VisaSession,
        *,
        signals: Iterable[Any],
        name: str,
        expected_idn: str | None = None,
        timeout: float | None = None,
        lease_timeout: float | None = None,
    ) -> None:
        if isinstance(port, VisaSession):
            port = VisaPort(port)
        specs = _coerce_specs(signals, name)
        # The driver's settings model (the profile's [instruments.scpi] table): the constructor
        # refuses what `config check` will refuse, in the same words.
        validate_settings(
            ScpiSettings,
            {
                "signals": [dataclasses.asdict(spec) for spec in specs],
                "expected_idn": expected_idn,
            },
            instrument=name,
        )
        self._specs = specs
        self.expected_idn = expected_idn
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.identity = WireSignalR(ScpiSignalBackend(self, _IDENTITY))
        # One signal at a time: a block registers what it adds as a set (no order), and the
        # recorded keys must come in the spec's order (the order runs have always recorded).
        self._signals: dict[str, SignalR] = {}
        for spec in specs:
            backend = ScpiSignalBackend(self, spec)
            signal = WireSignalRW(backend) if spec.command is not None else WireSignalR(backend)
            setattr(self, spec.name, signal)
            self.add_readables([signal], KINDS[spec.kind])
            self._signals[spec.name] = signal
        self._point = [s for s in self._signals.values() if _spec(s).kind != "config"]
        self._configuration = [self.identity] + [
            s for s in self._signals.values() if _spec(s).kind == "config"
        ]
        super().__init__(
            port,
            name=name,
            # Any finite time > 0, as the profile's entry `timeout` (a VISA session waits at
            # least 1 ms: it rounds up).
            timeout=positive_setting(
                getattr(port, "timeout", 2.0) if timeout is None else timeout, "timeout", name
            ),
            lease_timeout=positive_setting(
                getattr(port, "lease_timeout", 5.0) if lease_timeout is None else lease_timeout,
                "lease_timeout",
                name,
                zero=True,
            ),
        )

    @property
    def specs(self) -> tuple[ScpiSignalSpec, ...]:
        return self._specs

    # --- connection -----------------------------------------------------------------------------

    async def identify(self, x: Exchange) -> None:
        ident = (await x.query("*IDN?")).strip()
        if self.expected_idn and self.expected_idn not in ident:
            raise IdentityMismatch(
                f"*IDN? answered {ident!r}, which does not contain the expected "
                f"{self.expected_idn!r}.",
                instrument=self.name,
                resource=self.port.url,
                fix="check the resource address in the profile (another instrument answers "
                "there), or correct expected_idn.",
            )
        _backend(self.identity).store(ident)

    async def prepare(self, x: Exchange) -> None:
        """Old errors cleared, then every query once (their answers are the last readings)."""
        stale = await self.drain_errors(x)
        if stale:
            log.warning(
                "SCPI %s on %s: cleared %d old error(s): %s",
                self.name,
                self.port.url,
                len(stale),
                "; ".join(f"{c},{t!r}" for c, t in stale),
            )
        backends = [b for b in map(_backend, self._signals.values()) if b.asks]
        # Every answer first, then the stores: a garbled reply half-way must not leave a mix.
        values = [await b.read_in(x) for b in backends]
        for backend, value in zip(backends, values, strict=True):
            backend.store(value)

    async def connect_wire(self) -> None:
        async with self._named():
            await super().connect_wire()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Exchange]:
        async with self._named(), super().transaction() as x:
            yield x

    @asynccontextmanager
    async def _named(self) -> AsyncIterator[None]:
        """Put the device's name into errors of the VISA session (they know the resource only)."""
        try:
            yield
        except DaqbridgeError as exc:
            if exc.instrument is None:
                exc.instrument = self.name
                exc.args = (exc._compose(),)
            raise

    # --- reading --------------------------------------------------------------------------------

    async def read(self) -> dict[str, Reading]:
        """Every hinted/normal signal, asked in ONE lease: the values of a point belong together."""
        return await self.read_together(self._point)

    async def read_configuration(self) -> dict[str, Reading]:
        """``*IDN?`` and every config signal, asked in one lease."""
        return await self.read_together(self._configuration)

    async def read_signals(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """Ask the named signals (default: every one with a query) now, in one lease.

        Returns {name: value}; for interactive use (``call_sync(dmm.read_signals())``)."""
        chosen = [self._signals[n] for n in names] if names else list(self._signals.values())
        asked = [s for s in chosen if _backend(s).asks]
        await self.read_together(asked)
        return {_spec(s).name: _backend(s).last_reading["value"] for s in asked}  # type: ignore[index]

    # --- the error queue ------------------------------------------------------------------------

    async def drain_errors(self, x: Exchange) -> list[tuple[int, str]]:
        """``SYST:ERR?`` until ``0`` (at most ``_MAX_ERRORS`` entries): [(code, text)], oldest
        first, inside the caller's transaction."""
        errors = []
        for _ in range(_MAX_ERRORS):
            reply = await x.query("SYST:ERR?")
            try:
                code, text = parse_scpi_error(reply)
            except ValueError:
                raise x.reply_error(
                    "SYST:ERR?",
                    reply,
                    "an error entry",
                    fix="the instrument must answer SYST:ERR? with '<code>,\"<text>\"'.",
                ) from None
            if code == 0:
                break
            errors.append((code, text))
        return errors

    async def errors(self) -> list[tuple[int, str]]:
        """Read (and so clear) the instrument's error queue: [(code, text), ...], oldest first."""
        async with self.transaction() as x:
            return await self.drain_errors(x)

    def refused(
        self, spec: ScpiSignalSpec, command: str, errors: list[tuple[int, str]]
    ) -> InstrumentFault:
        """The instrument's refusal of ``command``, in its own words."""
        code, text = errors[0]
        more = "; then " + "; ".join(f'{c},"{t}"' for c, t in errors[1:]) if len(errors) > 1 else ""
        return InstrumentFault(
            f'{command!r} refused: {code},"{text}"{more}',
            code=code,
            instrument=self.name,
            resource=self.port.url,
            fix=f"check the value of {spec.name} against the instrument's manual (range, units, "
            "mode); the old value is still in effect.",
        )


def _backend(signal: Any) -> ScpiSignalBackend:
    return signal._connector.backend  # the wire backend, before any mock connect


def _spec(signal: Any) -> ScpiSignalSpec:
    return _backend(signal).spec


def _coerce_specs(signals: Iterable[Any], name: str) -> tuple[ScpiSignalSpec, ...]:
    """The rules on the list (each spec by :meth:`ScpiSignalSpec.coerce`)."""
    if isinstance(signals, str | bytes) or not isinstance(signals, Iterable):
        raise ConfigError(
            f"SCPI instrument {name!r}: signals must be a list of signal specs, got "
            f"{type(signals).__name__}.",
            key="signals",
            fix="pass e.g. [ScpiSignalSpec('voltage', query='MEAS:VOLT:DC?')].",
        )
    specs = tuple(ScpiSignalSpec.coerce(s, instrument=name) for s in signals)
    if not specs:
        raise ConfigError(
            f"SCPI instrument {name!r} has no signals.",
            key="signals",
            fix="declare at least one signal with a query or a command.",
        )
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ConfigError(
                f"SCPI instrument {name!r}: signal {spec.name!r} appears twice.",
                key="signals",
                fix="give every signal its own name.",
            )
        seen.add(spec.name)
    return specs


def build(
    port: LeasedPort | VisaSession, *, name: str, settings: ScpiSettings, timeout: float
) -> ScpiInstrument:
    """The instrument of one profile entry, not connected (the runtime connects it on its loop).

    ``port``: the entry's VISA session (opened with ``TERMINATIONS[settings.termination]`` both
    ways) or a port made from it; a session opened with other terminations is refused here,
    before any byte is sent.
    """
    session = port if isinstance(port, VisaSession) else getattr(port, "session", None)
    if isinstance(session, VisaSession):
        term = TERMINATIONS[settings.termination]
        got = session.settings
        if (got["read_termination"], got["write_termination"]) != (term, term):
            raise ConfigError(
                f"the VISA session of {session.label} was opened with terminations "
                f"{got['read_termination']!r}/{got['write_termination']!r}, the profile says "
                f"termination = {settings.termination!r}.",
                instrument=name,
                key="scpi.termination",
                fix="open the session with read_termination and write_termination "
                f"{term!r} (TERMINATIONS[settings.termination]).",
            )
    return ScpiInstrument(
        port,
        signals=[signal.model_dump() for signal in settings.signals],
        name=name,
        expected_idn=settings.expected_idn,
        timeout=timeout,
    )


register_driver(
    "scpi",
    settings=ScpiSettings,
    build=build,
    simulator="scpi",
    entry=ProfileEntry(
        "A SCPI instrument over VISA (DMM, source, scope ...).",
        transport="visa",
        table_description="Signals and identity.",
        defaults={"timeout": EntryDefault(2.0, "Seconds to wait for a reply.")},
    ),
)
