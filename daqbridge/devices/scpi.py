"""A generic SCPI instrument over VISA, built from the lab profile's list of signals.

Why it is built this way (INSTRUMENTS.md, "Generic SCPI instrument over VISA"):

* Every instrument is different, but the lab only needs a few values of each, so a device is
  declared, pymeasure-style, as signals with a query, a command template (``SOUR:VOLT {value}``),
  units, limits, a kind and a type. Each signal becomes an ophyd component, so data keys are
  ``<device>_<signal>`` and the descriptor carries units, limits and the query as its source.
* The instrument is reached through a :class:`VisaSession` from the
  :class:`VisaSessionManager`: traffic to one instrument is serialised by leases, while several
  instruments are read at once (each device has its own worker thread and its own session).
* ``trigger()`` refreshes every readable (hinted/normal) signal inside ONE lease, so the values
  of a point belong together and another client cannot slip a command in between. Config
  signals are read at connect and after each set (they appear once per run in the descriptor).
* Sets are validated before any byte is sent (limits, type, and text that would smuggle a
  terminator or a second command), then the command is written and ``SYST:ERR?`` is asked in the
  same lease: SCPI set commands are silent, so the error queue is the only way to learn the
  instrument refused a value. A refusal fails the status with the instrument's own text.
* ``+9.9E37`` is SCPI's overload value, never a measurement: it raises :class:`InstrumentFault`.
* Text signals (``dtype = "str"``) follow IEEE 488.2 string data, as real meters do (34401A
  User's Guide p. 159): a reply such as ``"VOLT"`` (``FUNC?``) loses its quotes, and a quote
  inside a value sent in a quoted command (``DISP:TEXT "{value}"``) is doubled, and undoubled
  on the way back. Sent as it is, the instrument would end the string early and refuse the rest.
  The transcripts of both simulator personalities pin this (tests/transcripts/scpi_*.yaml).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ophyd import Component as Cpt
from ophyd import Device, Kind
from ophyd.status import Status
from ophyd.status import wait as status_wait

from daqbridge.devices._base import (
    InstrumentSignal,
    InstrumentWorker,
    check_number,
    check_wire_text,
)
from daqbridge.errors import (
    ConfigError,
    DaqbridgeError,
    IdentityMismatch,
    InstrumentFault,
    ReplyError,
    ValueRejected,
)
from daqbridge.transport import VisaLease, VisaSession, VisaSessionManager

__all__ = ["ScpiInstrument", "ScpiSignalSpec", "parse_scpi_error"]

log = logging.getLogger(__name__)

_KINDS = {"hinted": Kind.hinted, "normal": Kind.normal, "config": Kind.config}
_DTYPES = ("float", "int", "str")
_INITIAL: dict[str, Any] = {"float": math.nan, "int": 0, "str": ""}
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


@dataclass(frozen=True)
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
                raise self._bad(instrument, exc.what, key, "one command per signal.") from None
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
        if self.kind not in _KINDS:
            raise self._bad(
                instrument,
                f"kind {self.kind!r} is not one of {', '.join(_KINDS)}",
                "kind",
                "use hinted (plotted), normal (read every point) or config (once per run).",
            )
        if self.dtype not in _DTYPES:
            raise self._bad(
                instrument,
                f"dtype {self.dtype!r} is not one of {', '.join(_DTYPES)}",
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


class ScpiSignal(InstrumentSignal):
    """A signal of a :class:`ScpiInstrument`; ``set()`` writes, checks ``SYST:ERR?``, reads back."""

    def __init__(self, *, spec: ScpiSignalSpec, **kwargs: Any) -> None:
        super().__init__(writable=spec.command is not None, **kwargs)
        self.spec = spec

    def set(self, value: Any, **kwargs: Any) -> Status:
        device: ScpiInstrument = self.parent
        command = device._command_for(self.spec, value)
        return device._worker.status(lambda: device._write_signal(self, command, value), obj=self)

    def put(self, value: Any, *, force: bool = False, **kwargs: Any) -> None:
        if force:
            super().put(value, force=True, **kwargs)
            return
        status_wait(self.set(value), timeout=self.parent.session.timeout * 4 + 5)


class ScpiInstrument(Device):
    """A SCPI instrument as a bluesky device: Readable, Triggerable, Configurable, Movable signals.

    ``signals`` are :class:`ScpiSignalSpec` (or mappings, or the profile's ``ScpiSignal``
    entries); each becomes a component named after it. ``expected_idn`` (optional) must occur in
    the ``*IDN?`` reply or :meth:`connect` raises :class:`IdentityMismatch`.
    """

    identity = Cpt(InstrumentSignal, value="", kind=Kind.config)
    _specs: ClassVar[tuple[ScpiSignalSpec, ...]] = ()
    _built: ClassVar[bool] = False

    def __new__(
        cls, session: VisaSession, *, signals: Iterable[Any], name: str, **kwargs: Any
    ) -> ScpiInstrument:
        if cls._built:
            return super().__new__(cls)
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
        body: dict[str, Any] = {"_specs": specs, "_built": True, "__module__": cls.__module__}
        for spec in specs:
            body[spec.name] = Cpt(
                ScpiSignal,
                spec=spec,
                value=_INITIAL[spec.dtype],
                units=spec.units or None,
                limits=(spec.low, spec.high)
                if spec.low is not None and spec.high is not None
                else None,
                kind=_KINDS[spec.kind],
            )
        sub = type(f"{cls.__name__}_{name}", (cls,), body)
        return super().__new__(sub)

    def __init__(
        self,
        session: VisaSession,
        *,
        signals: Iterable[Any],
        name: str,
        expected_idn: str | None = None,
        timeout: float | None = None,
        lease_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__("", name=name, **kwargs)
        if not isinstance(session, VisaSession):
            raise ConfigError(
                f"SCPI instrument {name!r} needs a VisaSession, got {type(session).__name__}.",
                key="resource",
                fix="get one from VisaSessionManager.session(resource, backend=...), or use "
                "ScpiInstrument.from_resource(...).",
            )
        self.session = session
        self.expected_idn = expected_idn
        self.timeout = (
            None
            if timeout is None
            else check_number(timeout, instrument=name, what="reply timeout (s)", low=0.001)
        )
        self.lease_timeout = (
            None
            if lease_timeout is None
            else check_number(lease_timeout, instrument=name, what="lease timeout (s)", low=0.0)
        )
        self.identity._source = f"SCPI {session.label} *IDN?"
        self._scpi_signals: dict[str, ScpiSignal] = {}
        for spec in self._specs:
            sig: ScpiSignal = getattr(self, spec.name)
            sig._source = f"SCPI {session.label} {spec.query or spec.command}"
            self._scpi_signals[spec.name] = sig
        queried = [s for s in self._scpi_signals.values() if s.spec.query is not None]
        self._readable = [s for s in queried if s.spec.kind != "config"]
        self._worker = InstrumentWorker(name)
        self._connected = False

    @classmethod
    def from_resource(
        cls,
        resource: str,
        *,
        signals: Iterable[Any],
        name: str,
        backend: str = "@py",
        manager: VisaSessionManager | None = None,
        termination: str = "\n",
        connect: bool = True,
        **kwargs: Any,
    ) -> ScpiInstrument:
        """Interactive use: open ``resource`` through ``manager`` (the process one by default)."""
        from daqbridge.transport import default_visa_manager

        mgr = manager or default_visa_manager()
        session = mgr.session(
            resource, backend=backend, read_termination=termination, write_termination=termination
        )
        device = cls(session, signals=signals, name=name, **kwargs)
        if connect:
            device.connect()
        return device

    @property
    def specs(self) -> tuple[ScpiSignalSpec, ...]:
        return self._specs

    # --- validation (synchronous, before any byte) ------------------------------------------

    def _command_for(self, spec: ScpiSignalSpec, value: Any) -> str:
        what = f"value of {spec.name}"
        if spec.command is None:
            raise ValueRejected(
                f"signal {spec.name!r} is read-only (it has no command).",
                instrument=self.name,
                resource=self.session.label,
                value=value,
                fix="add command = '... {value}' to the signal in the profile to make it settable.",
            )
        if spec.dtype == "str":
            text = check_wire_text(value, instrument=self.name, what=what)
            quote = _enclosing_quote(spec.command)
            if quote:
                # IEEE 488.2 string data: the delimiter inside the string is sent twice, or
                # the instrument ends the string early and refuses the rest of the line.
                text = text.replace(quote, quote * 2)
        elif spec.dtype == "int":
            text = str(
                check_number(
                    value,
                    instrument=self.name,
                    what=what,
                    low=spec.low,
                    high=spec.high,
                    integer=True,
                )
            )
        else:
            v = check_number(value, instrument=self.name, what=what, low=spec.low, high=spec.high)
            text = format(v, ".12g")
        command = spec.command.replace("{value}", text)
        return check_wire_text(command, instrument=self.name, what=f"command for {spec.name}")

    # --- connection -------------------------------------------------------------------------

    def connect(self, timeout: float | None = None) -> str:
        """Check ``*IDN?``, drain old errors, read every queried signal. Returns the identity."""
        wait = timeout or (self.lease_timeout or 10.0) + 10 * (self.timeout or 2.0) + 5.0
        self._worker.call(self._connect, timeout=wait)
        self._connected = True
        return self.identity.get()

    @property
    def connected(self) -> bool:
        return self._connected

    def wait_for_connection(self, all_signals: bool = False, timeout: float = 10.0) -> None:
        if not self._connected:
            self.connect(timeout)

    def _connect(self) -> None:
        with self.session.lease(self.name, self.lease_timeout) as lease:
            ident = lease.query("*IDN?", self.timeout).strip()
            if self.expected_idn and self.expected_idn not in ident:
                raise IdentityMismatch(
                    f"*IDN? answered {ident!r}, which does not contain the expected "
                    f"{self.expected_idn!r}.",
                    instrument=self.name,
                    resource=self.session.label,
                    fix="check the resource address in the profile (another instrument "
                    "answers there), or correct expected_idn.",
                )
            self.identity.update(ident)
            stale = self._drain_errors(lease)
            if stale:
                log.warning(
                    "SCPI %s on %s: cleared %d old error(s): %s",
                    self.name,
                    self.session.label,
                    len(stale),
                    "; ".join(f"{c},{t!r}" for c, t in stale),
                )
            values = [
                (s, self._read_signal(lease, s))
                for s in self._scpi_signals.values()
                if s.spec.query is not None
            ]
        for sig, value in values:
            sig.update(value)

    # --- I/O ----------------------------------------------------------------------------------

    def _read_signal(self, lease: VisaLease, sig: ScpiSignal) -> Any:
        spec = sig.spec
        reply = lease.query(spec.query, self.timeout).strip()
        if spec.dtype == "str":
            return _unquoted(reply)
        try:
            number = float(reply)
        except ValueError:
            raise ReplyError(
                f"reply to {spec.query!r} ({sig.name}) is not a number",
                reply=reply,
                instrument=self.name,
                resource=self.session.label,
                fix="check that the query returns a single number (not a list or text), or "
                "declare dtype = 'str'.",
            ) from None
        if abs(number) >= _OVERLOAD:
            raise InstrumentFault(
                f"{spec.query!r} ({sig.name}) returned the SCPI overload marker {reply!r}: "
                "the input is beyond the selected range",
                code=reply,
                instrument=self.name,
                resource=self.session.label,
                fix="choose a larger range or enable autorange.",
            )
        if spec.dtype == "int":
            if not number.is_integer():
                raise ReplyError(
                    f"reply to {spec.query!r} ({sig.name}) is not a whole number",
                    reply=reply,
                    instrument=self.name,
                    resource=self.session.label,
                    fix="declare dtype = 'float' for this signal.",
                )
            return int(number)
        return number

    def _drain_errors(self, lease: VisaLease) -> list[tuple[int, str]]:
        errors = []
        for _ in range(_MAX_ERRORS):
            reply = lease.query("SYST:ERR?", self.timeout).strip()
            try:
                code, text = parse_scpi_error(reply)
            except ValueError:
                raise ReplyError(
                    "reply to 'SYST:ERR?' is not an error entry",
                    reply=reply,
                    instrument=self.name,
                    resource=self.session.label,
                    fix="the instrument must answer SYST:ERR? with '<code>,\"<text>\"'.",
                ) from None
            if code == 0:
                break
            errors.append((code, text))
        return errors

    def errors(self, timeout: float | None = None) -> list[tuple[int, str]]:
        """Read (and so clear) the instrument's error queue: [(code, text), ...], oldest first."""

        def drain() -> list[tuple[int, str]]:
            with self.session.lease(self.name, self.lease_timeout) as lease:
                return self._drain_errors(lease)

        return self._worker.call(drain, timeout=timeout or 10.0 + 10 * (self.timeout or 2.0))

    def _write_signal(self, sig: ScpiSignal, command: str, value: Any) -> None:
        with self.session.lease(self.name, self.lease_timeout) as lease:
            lease.write(command)
            errors = self._drain_errors(lease)
            if errors:
                code, text = errors[0]
                more = (
                    "; then " + "; ".join(f'{c},"{t}"' for c, t in errors[1:])
                    if len(errors) > 1
                    else ""
                )
                raise InstrumentFault(
                    f'{command!r} refused: {code},"{text}"{more}',
                    code=code,
                    instrument=self.name,
                    resource=self.session.label,
                    fix=f"check the value of {sig.name} against the instrument's manual "
                    "(range, units, mode); the old value is still in effect.",
                )
            readback = self._read_signal(lease, sig) if sig.spec.query is not None else None
        sig.update(readback if sig.spec.query is not None else _as_dtype(value, sig.spec))

    def trigger(self) -> Status:
        """Refresh every hinted/normal signal in one lease; finishes when all are stored."""
        return self._worker.status(self._refresh, obj=self)

    def _refresh(self) -> None:
        if not self._readable:
            return
        with self.session.lease(self.name, self.lease_timeout) as lease:
            values = [(s, self._read_signal(lease, s)) for s in self._readable]
        for sig, value in values:
            sig.update(value)

    def read_signals(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """Query signals now (blocking; interactive use, never inside a plan) and return them."""
        chosen = (
            [self._scpi_signals[n] for n in names] if names else list(self._scpi_signals.values())
        )
        readable = [s for s in chosen if s.spec.query is not None]

        def work() -> dict[str, Any]:
            with self.session.lease(self.name, self.lease_timeout) as lease:
                got = {s.attr_name: self._read_signal(lease, s) for s in readable}
            for s in readable:
                s.update(got[s.attr_name])
            return got

        return self._worker.call(work, timeout=10.0 + 10 * (self.timeout or 2.0))

    def stop(self, *, success: bool = False) -> None:
        """A generic instrument has no motion to stop; outputs stay as the plan left them."""

    # --- shutdown -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the worker. The session stays with its manager (others may share it)."""
        self._worker.shutdown(wait=True)
        self._connected = False

    def destroy(self) -> None:
        self.close()
        super().destroy()


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


def _as_dtype(value: Any, spec: ScpiSignalSpec) -> Any:
    if spec.dtype == "str":
        return value
    if spec.dtype == "int":
        return int(value)
    return float(value)


_INSTANCE_ATTRS = frozenset(
    {"session", "expected_idn", "timeout", "lease_timeout", "identity", "specs", "connected"}
)


def _reserved(name: str) -> bool:
    """A signal name must not shadow an attribute or method of the device."""
    return name in _INSTANCE_ATTRS or hasattr(ScpiInstrument, name)


def _named(fn: Any) -> Any:
    """Put the device's name into errors raised by the session (they only know the resource)."""

    def wrapper(self: ScpiInstrument, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except DaqbridgeError as exc:
            if exc.instrument is None:
                exc.instrument = self.name
                exc.args = (exc._compose(),)
            raise

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


for _method in ("_connect", "_refresh", "_write_signal", "_drain_errors", "_read_signal"):
    setattr(ScpiInstrument, _method, _named(getattr(ScpiInstrument, _method)))
