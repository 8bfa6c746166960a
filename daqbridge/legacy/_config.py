"""The legacy configuration file (TOML) and the registry of legacy driver types.

One table per instrument, as the legacy stack always had it::

    [instruments.power_meter]
    type = "newport_1830c"
    port = "/dev/ttyUSB0"
    baud_rate = 9600
    polling_rate_hz = 5
    wavelength_nm = 800          # per-type key

Everything is validated when the file is loaded, before any port is opened, and every error names
the file, the key and the fix: a typo must be found at the desk, not at 2 a.m. in the lab.
Per-type keys are declared by the driver's registration (a pydantic model), so a new driver type
brings its own validation and nobody edits this module to add one.
"""

from __future__ import annotations

import difflib
import math
import re
import threading
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import pydantic

from daqbridge.errors import ConfigError, DaqbridgeError
from daqbridge.legacy._instrument import LegacyInstrument

if TYPE_CHECKING:
    from daqbridge.legacy._runtime import RestartPolicy

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
COMMON_KEYS = ("type", "port", "baud_rate", "polling_rate_hz")
RUNTIME_KEYS = ("restart_initial_s", "restart_max_s", "max_restarts", "stop_timeout_s")


@dataclass(frozen=True)
class InstrumentConfig:
    """One ``[instruments.<name>]`` table, validated. ``options`` holds the per-type keys."""

    name: str
    type: str
    port: str | None
    baud_rate: int | None
    polling_rate_hz: float
    options: Mapping[str, Any] = field(default_factory=dict)
    source: str = "<string>"

    def key(self, name: str) -> str:
        """Dotted key of one setting, for error messages (``instruments.meter.port``)."""
        return f"instruments.{self.name}.{name}"


@dataclass(frozen=True)
class RuntimeSettings:
    """The optional ``[runtime]`` table."""

    restart_initial_s: float = 0.1
    restart_max_s: float = 5.0
    max_restarts: int | None = None
    stop_timeout_s: float = 5.0


@dataclass(frozen=True)
class LegacyConfig:
    source: str
    instruments: Mapping[str, InstrumentConfig]
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)

    def restart_policy(self) -> RestartPolicy:
        from daqbridge.legacy._runtime import RestartPolicy

        r = self.runtime
        return RestartPolicy(
            initial_delay=r.restart_initial_s,
            max_delay=r.restart_max_s,
            max_restarts=r.max_restarts,
        )

    def ports(self) -> dict[str, list[str]]:
        """Port -> names of the instruments on it (several on a shared port or bus)."""
        out: dict[str, list[str]] = {}
        for entry in self.instruments.values():
            if entry.port is not None:
                out.setdefault(entry.port, []).append(entry.name)
        return out


# --- driver registry ----------------------------------------------------------------------------

DriverFactory = Callable[[InstrumentConfig, Any], LegacyInstrument]


@dataclass(frozen=True)
class DriverSpec:
    type_name: str
    factory: DriverFactory
    options: type[pydantic.BaseModel] | None
    needs_port: bool
    default_baud_rate: int | None
    description: str


_registry: dict[str, DriverSpec] = {}
_registry_lock = threading.Lock()


def register_driver(
    type_name: str,
    factory: DriverFactory,
    *,
    options: type[pydantic.BaseModel] | None = None,
    needs_port: bool = True,
    default_baud_rate: int | None = None,
    description: str = "",
    replace: bool = False,
) -> None:
    """Make ``type = "<type_name>"`` usable in legacy configuration files.

    ``factory(instrument_config, ports)`` builds the instrument (``ports`` is what was given to
    ``LegacyRuntime.from_config``, normally a ``SerialPortPool``); ``options`` is a pydantic model
    of the per-type keys (unknown keys are then rejected by name).
    """
    if not isinstance(type_name, str) or not _NAME.match(type_name):
        raise ValueError(f"driver type name must be an identifier, got {type_name!r}")
    if not callable(factory):
        raise TypeError(f"factory for {type_name!r} must be callable, got {factory!r}")
    spec = DriverSpec(type_name, factory, options, needs_port, default_baud_rate, description)
    with _registry_lock:
        if type_name in _registry and not replace and _registry[type_name] != spec:
            raise ValueError(
                f"legacy driver type {type_name!r} is already registered; pass replace=True to "
                "override it on purpose"
            )
        _registry[type_name] = spec


def unregister_driver(type_name: str) -> None:
    with _registry_lock:
        _registry.pop(type_name, None)


def registered_drivers() -> Mapping[str, DriverSpec]:
    return MappingProxyType(dict(_registry))


def build_instrument(entry: InstrumentConfig, ports: Any = None) -> LegacyInstrument:
    """Build one configured instrument with its registered factory."""
    spec = _registry.get(entry.type)
    if spec is None:
        raise _unknown_type(entry.type, entry.source, entry.key("type"))
    try:
        instrument = spec.factory(entry, ports)
    except DaqbridgeError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"building {entry.type} instrument {entry.name!r} failed: {type(exc).__name__}: {exc}",
            file=entry.source,
            key=f"instruments.{entry.name}",
            instrument=entry.name,
            fix="check this table's keys against docs/legacy.md.",
        ) from exc
    if not isinstance(instrument, LegacyInstrument):
        raise ConfigError(
            f"driver factory for {entry.type!r} returned {type(instrument).__name__}, "
            "not a LegacyInstrument",
            file=entry.source,
            key=entry.key("type"),
            fix="fix the factory given to register_driver.",
        )
    return instrument


# --- loading ------------------------------------------------------------------------------------


def load_legacy_config(path: str | Path) -> LegacyConfig:
    """Read and validate a legacy configuration file; raises ``ConfigError`` on any problem."""
    p = Path(path)
    source = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "legacy configuration file not found",
            file=source,
            fix="check the path (relative paths start from the current directory).",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the legacy configuration: {exc}",
            file=source,
            fix="check the file's permissions and that it is UTF-8 text.",
        ) from None
    return parse_legacy_config(text, source=source)


def parse_legacy_config(text: str, *, source: str = "<string>") -> LegacyConfig:
    """Validate TOML text (``load_legacy_config`` without the file)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"not valid TOML: {exc}",
            file=source,
            fix="fix the syntax at that line (strings need quotes, tables look like "
            "[instruments.name]).",
        ) from None
    for key in data:
        if key not in ("instruments", "runtime"):
            raise ConfigError(
                f"unknown top-level key {key!r}",
                file=source,
                key=key,
                fix=_suggest(key, ("instruments", "runtime"))
                or "only [instruments.<name>] tables and an optional [runtime] table belong here.",
            )
    instruments_raw = data.get("instruments")
    if not isinstance(instruments_raw, dict) or not instruments_raw:
        raise ConfigError(
            "no instruments configured",
            file=source,
            key="instruments",
            fix="add a table per instrument, e.g. [instruments.power_meter] with type = "
            '"newport_1830c" and port = "/dev/ttyUSB0".',
        )
    instruments: dict[str, InstrumentConfig] = {}
    for name, table in instruments_raw.items():
        instruments[name] = _instrument(name, table, source)
    _check_shared_ports(instruments, source)
    return LegacyConfig(
        source, MappingProxyType(instruments), _runtime(data.get("runtime"), source)
    )


def _instrument(name: str, table: Any, source: str) -> InstrumentConfig:
    base = f"instruments.{name}"
    if not _NAME.match(name):
        raise ConfigError(
            f"instrument name {name!r} is not usable as an identifier",
            file=source,
            key=base,
            fix="use letters, digits and underscores, starting with a letter (e.g. power_meter).",
        )
    if not isinstance(table, dict):
        raise ConfigError(
            f"expected a table, got {type(table).__name__} {table!r}",
            file=source,
            key=base,
            fix=f'write it as a table: [instruments.{name}] followed by type = "..." etc.',
        )
    type_name = table.get("type")
    if type_name is None:
        raise ConfigError(
            "missing key 'type'",
            file=source,
            key=f"{base}.type",
            fix=f"add type = one of {sorted(_registry)}.",
        )
    if not isinstance(type_name, str):
        raise ConfigError(
            f"type must be a string, got {type_name!r}",
            file=source,
            key=f"{base}.type",
            fix=f'quote it, e.g. type = "{next(iter(sorted(_registry)), "newport_1830c")}".',
        )
    spec = _registry.get(type_name)
    if spec is None:
        raise _unknown_type(type_name, source, f"{base}.type")

    option_fields = tuple(spec.options.model_fields) if spec.options is not None else ()
    allows_extra = spec.options is not None and spec.options.model_config.get("extra") == "allow"
    for key in table:
        if key not in COMMON_KEYS and key not in option_fields and not allows_extra:
            raise ConfigError(
                f"unknown key {key!r} for type {type_name!r}",
                file=source,
                key=f"{base}.{key}",
                fix=_suggest(key, COMMON_KEYS + option_fields)
                or f"keys of {type_name!r}: {', '.join(COMMON_KEYS + option_fields)}.",
            )

    port = table.get("port")
    if port is not None and (not isinstance(port, str) or not port.strip()):
        raise ConfigError(
            f"port must be a non-empty string, got {port!r}",
            file=source,
            key=f"{base}.port",
            fix='quote it, e.g. port = "/dev/ttyUSB0" (or a URL like "socket://host:4001").',
        )
    if port is None and spec.needs_port:
        raise ConfigError(
            f"missing key 'port' (type {type_name!r} talks over a serial port)",
            file=source,
            key=f"{base}.port",
            fix='add port = "/dev/ttyUSB0" (see `daqbridge hardware` for the ports present).',
        )

    baud = table.get("baud_rate", spec.default_baud_rate)
    if baud is not None and (isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0):
        raise ConfigError(
            f"baud_rate must be a positive integer, got {baud!r}",
            file=source,
            key=f"{base}.baud_rate",
            fix=f"use the instrument's rate, e.g. baud_rate = {spec.default_baud_rate or 9600}.",
        )

    rate = table.get("polling_rate_hz", 1.0)
    if (
        isinstance(rate, bool)
        or not isinstance(rate, int | float)
        or not math.isfinite(rate)
        or rate < 0
    ):
        raise ConfigError(
            f"polling_rate_hz must be a number >= 0, got {rate!r}",
            file=source,
            key=f"{base}.polling_rate_hz",
            fix="give a rate in Hz (e.g. 5), or 0 for an instrument that is only commanded.",
        )

    raw_options = {k: v for k, v in table.items() if k not in COMMON_KEYS}
    options: Mapping[str, Any]
    if spec.options is not None:
        try:
            model = spec.options.model_validate(raw_options)
        except pydantic.ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            field_info = spec.options.model_fields.get(str(err["loc"][0])) if err["loc"] else None
            hint = field_info.description if field_info is not None else None
            raise ConfigError(
                f"{err['msg']} (got {err.get('input')!r})",
                file=source,
                key=f"{base}.{loc}" if loc else base,
                fix=hint or f"see the keys of type {type_name!r} in docs/legacy.md.",
            ) from None
        options = MappingProxyType(model.model_dump())
    else:
        options = MappingProxyType(raw_options)
    return InstrumentConfig(name, type_name, port, baud, float(rate), options, source)


def _check_shared_ports(instruments: Mapping[str, InstrumentConfig], source: str) -> None:
    seen: dict[str, InstrumentConfig] = {}
    for entry in instruments.values():
        if entry.port is None:
            continue
        first = seen.setdefault(entry.port, entry)
        if first is not entry and first.baud_rate != entry.baud_rate:
            raise ConfigError(
                f"port {entry.port} is shared with {first.name!r} at baud_rate "
                f"{first.baud_rate}, but this table asks for {entry.baud_rate}",
                file=source,
                key=entry.key("baud_rate"),
                fix="instruments on one port must use the same baud_rate; correct one of them.",
            )


def _runtime(table: Any, source: str) -> RuntimeSettings:
    if table is None:
        return RuntimeSettings()
    if not isinstance(table, dict):
        raise ConfigError(
            f"expected a table, got {table!r}",
            file=source,
            key="runtime",
            fix="write [runtime] followed by its keys.",
        )
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in RUNTIME_KEYS:
            raise ConfigError(
                f"unknown key {key!r}",
                file=source,
                key=f"runtime.{key}",
                fix=_suggest(key, RUNTIME_KEYS) or f"keys of [runtime]: {', '.join(RUNTIME_KEYS)}.",
            )
        integer = key == "max_restarts"
        ok = (
            not isinstance(value, bool)
            and isinstance(value, int if integer else int | float)
            and math.isfinite(value)
            and (value >= 0 if integer else value > 0)
        )
        if not ok:
            raise ConfigError(
                f"{key} must be {'an integer >= 0' if integer else 'a number > 0'}, got {value!r}",
                file=source,
                key=f"runtime.{key}",
                fix="give seconds as a number (e.g. 0.1)" if not integer else "e.g. 10.",
            )
        values[key] = value
    settings = RuntimeSettings(**values)
    if settings.restart_initial_s > settings.restart_max_s:
        raise ConfigError(
            f"restart_initial_s ({settings.restart_initial_s}) exceeds restart_max_s "
            f"({settings.restart_max_s})",
            file=source,
            key="runtime.restart_initial_s",
            fix="the first back-off must not be longer than the longest.",
        )
    return settings


def _unknown_type(type_name: str, source: str, key: str) -> ConfigError:
    known = sorted(_registry)
    return ConfigError(
        f"unknown legacy driver type {type_name!r}",
        file=source,
        key=key,
        fix=(_suggest(type_name, known) or f"use one of {known}")
        + " (custom types are added with daqbridge.legacy.register_driver).",
    )


def _suggest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""
