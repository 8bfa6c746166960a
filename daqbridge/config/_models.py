"""The lab profile as pydantic models: one class per TOML table.

The models are the single source of truth for what a profile may contain: the loader validates
against them, docs/profile.md is generated from their field descriptions, and the migration tool
writes what they accept. Every model forbids unknown keys and is strict about types, because a
profile is typed by hand: ``baud_rate = "19200"`` or ``baudrate = 19200`` must be caught before
the lab runs, not coerced or ignored.

Rules that need more than one instrument (duplicate ids, shared ports, colliding data
directories) live in ``_validate.py``; rules that need one table live here, next to its fields.

A native driver that declares itself (``daqbridge.devices.register_driver``) brings the model of
its ``[instruments.<driver>]`` table, built from the instrument's facts in its own module, and
what its ``[[instruments]]`` entry needs (``ProfileEntry``: transport, defaults, refused flow
controls, parts, simulator options). The entry classes here are composed from those declarations
(``compose_entry``) on the transports' bases, which are the profile's own vocabulary
(``SerialInstrument``, ``VisaInstrument``, ``CameraInstrument``): the profile cannot accept what
the driver refuses, and a new driver needs no line here. A table whose driver has a legacy twin
is validated for the stack its entry runs on (``_driver_table``), because the twin may read more
than the native driver (the legacy 1830-C reads dBm). Only ``epics`` is written by hand: it is
ophyd's EpicsMotor client, not a daqbridge driver.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    PrivateAttr,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from daqbridge.devices import DriverSettings, DriverSpec, known_drivers, settings_error

# The drivers' own names for the sub-tables of their tables, re-exported as the profile's words
# (the reference documents them; tests and tools import them from daqbridge.config).
from daqbridge.devices.elliptec import ElliptecAddress as ElliptecAddress
from daqbridge.devices.elliptec import ElliptecSettings as ElliptecSettings
from daqbridge.devices.esp300 import ESP300_UNITS as ESP300_UNIT_CODES  # noqa: F401
from daqbridge.devices.esp300 import Esp300Axis as Esp300Axis
from daqbridge.devices.esp300 import Esp300Settings as Esp300Settings
from daqbridge.devices.maitai import MaiTaiSettings as MaiTaiSettings
from daqbridge.devices.newport1830c import Newport1830cSettings as Newport1830cSettings
from daqbridge.devices.pvcam import PvcamRoi as PvcamRoi
from daqbridge.devices.pvcam import PvcamSettings as PvcamSettings
from daqbridge.devices.scpi import ScpiSettings as ScpiSettings
from daqbridge.devices.scpi import ScpiSignalSettings as ScpiSignal  # noqa: F401 - re-exported

# --- vocabulary ---------------------------------------------------------------------------------

DECLARED_DRIVERS: Mapping[str, DriverSpec] = {
    driver: spec for driver, spec in known_drivers().items() if spec.entry is not None
}
"""The native drivers whose modules declared a profile entry, in the order profiles list them."""

DRIVERS: tuple[str, ...] = (*DECLARED_DRIVERS, "epics")
"""Every driver a profile may name."""

SERIAL_DRIVERS: frozenset[str] = frozenset(
    driver
    for driver, spec in DECLARED_DRIVERS.items()
    if spec.entry is not None and spec.entry.transport == "serial"
)
"""Drivers reached through a serial ``port``."""

LEGACY_DRIVER_TYPES: dict[str, str] = {
    driver: spec.legacy_twin
    for driver, spec in DECLARED_DRIVERS.items()
    if spec.legacy_twin is not None
}
"""Profile driver -> the legacy driver type (``daqbridge.legacy.register_driver``), as each
driver names its twin."""

LEGACY_DRIVERS: frozenset[str] = frozenset(LEGACY_DRIVER_TYPES)
"""Drivers that also exist in the legacy stack (so may be ``legacy`` or ``shadow``)."""

STACKS: tuple[str, ...] = ("native", "legacy", "shadow")

SIM_PORT = "pty"
"""Port value meaning: the runtime starts the simulator and serves it on a pseudo-terminal."""

SIM_TCP_RESOURCE = "sim-tcp"
"""VISA resource meaning: the runtime starts the SCPI TCP simulator and substitutes its address."""

URL_SCHEMES: frozenset[str] = frozenset(
    {"sim", "socket", "loop", "rfc2217", "spy", "hwgrep", "alt", "cp2110"}
)
"""pyserial URL handlers (plus daqbridge's ``sim://``) accepted as a ``port``."""

LEGACY_TWIN_SUFFIX = "_legacy"
"""Suffix of the device ids of the legacy twin of a shadow instrument."""

STANDARD_BAUD_RATES: tuple[int, ...] = (
    300,
    600,
    1200,
    2400,
    4800,
    9600,
    14400,
    19200,
    38400,
    57600,
    115200,
    230400,
    460800,
    921600,
)

_SUFFIX_RE = re.compile(r"^[A-Za-z0-9_]+$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VISA_RE = re.compile(r"^(TCPIP\d*|GPIB\d*|USB\d*|ASRL\S*|VXI\d*|PXI\d*|VICP\d*)::\S+$", re.I)
_VISA_BACKEND_RE = re.compile(r"^(?:\S*@)?(py|sim|ivi|ni)$")
_BASELINE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")
_PV_RE = re.compile(r"^[A-Za-z0-9_:.\-\[\]<>{}$]+$")


def bad(what: str, fix: str, *, key: str | None = None) -> PydanticCustomError:
    """A validation error carrying its own fix (and the sub-key it is about).

    The drivers' own tables raise the same error (``daqbridge.devices.settings_error``), so the
    loader reports both alike: file, line, key, what and fix.
    """
    return settings_error(what, fix, key=key)


def is_url_port(port: str) -> bool:
    """True for pyserial URLs (``sim://``, ``socket://``, ``loop://`` ...), never a device path."""
    scheme, sep, _ = port.partition("://")
    return bool(sep) and scheme.lower() in URL_SCHEMES


def is_simulated_port(port: str) -> bool:
    return port == SIM_PORT or port.lower().startswith("sim://")


# --- reusable field types -----------------------------------------------------------------------


def _text(value: str) -> str:
    if not value.strip():
        raise bad("must not be empty", "write a non-empty value or remove the key")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise bad(
            f"contains a control character ({value!r})",
            "remove escapes such as \\n, \\r, \\t or \\u0000 from the value",
        )
    return value


def _ident(value: str) -> str:
    if not _IDENT_RE.match(value):
        raise bad(
            f"{value!r} is not a valid id",
            "ids are Python identifiers in ASCII: a letter or _, then letters, digits and _ "
            "(e.g. 'stage_1'); they become device names and data keys",
        )
    return value


def _suffix(value: str) -> str:
    if not _SUFFIX_RE.match(value):
        raise bad(
            f"{value!r} cannot be part of a device id",
            "use ASCII letters, digits and _ only (e.g. 'x', 'rot_a'): it is appended to the "
            "instrument id as <instrument id>_<name>",
        )
    return value


def _baseline_name(value: str) -> str:
    if not _BASELINE_NAME_RE.match(value):
        raise bad(
            f"{value!r} is not a device id",
            "write a device id as plans take it (e.g. 'sim_meter', 'sim_rotators_c'), or a "
            "component of one ('sim_dmm.range')",
        )
    return value


Text = Annotated[str, AfterValidator(_text)]
BaselineName = Annotated[str, AfterValidator(_baseline_name)]
Ident = Annotated[str, AfterValidator(_ident)]
Suffix = Annotated[str, AfterValidator(_suffix)]
Seconds = Annotated[float, Field(gt=0, le=3600)]


class Section(DriverSettings):
    """Base of every table: strict types, no unknown keys, finite numbers unless stated.

    The drivers' settings models have the same base, so their tables follow the same rules.
    """


# --- top-level sections -------------------------------------------------------------------------


class LabSettings(Section):
    """``[lab]``: who this lab is and where its data goes."""

    name: Text = Field(description="Name of the lab; recorded in every run's start document.")
    data_dir: Text = Field(
        "~/daqbridge-data",
        description="Root of everything daqbridge writes (catalog, write-ahead log, camera "
        "frames). `~` is expanded; a relative path is relative to the profile file. The "
        "environment variable DAQBRIDGE_DATA overrides it at runtime.",
    )
    catalog_uri: Text | None = Field(
        None,
        description="Tiled server to write runs to (`http://host:8000`), or a SQLite catalog "
        "(`sqlite:///path/catalog.db`). Unset: an embedded file catalog in `<data_dir>/catalog`.",
    )
    catalog_api_key: Text | None = Field(
        None,
        description="API key of the Tiled server. Write `env:NAME` to read it from the "
        "environment variable NAME instead of keeping a secret in the file.",
    )
    baseline: list[BaselineName] | None = Field(
        None,
        description="Devices read at the start and the end of every run, into its `baseline` "
        "stream: device ids as plans take them (`sim_laser`, `sim_rotators_c`, or a component "
        "such as `sim_dmm.range`). Unset: every instrument's reading and configuration, except "
        "cameras and shadow twins. `[]`: no baseline stream.",
    )

    @field_validator("catalog_uri")
    @classmethod
    def _known_scheme(cls, uri: str | None) -> str | None:
        if uri is not None and not re.match(r"^(https?|sqlite)://", uri):
            raise bad(
                f"catalog_uri {uri!r} is neither a Tiled server nor a SQLite catalog",
                "write http(s)://host:port for a Tiled server or sqlite:///path/catalog.db, "
                "or remove the key to use the embedded catalog in data_dir",
            )
        return uri

    @field_validator("catalog_api_key")
    @classmethod
    def _env_name(cls, key: str | None) -> str | None:
        if key is not None and key.startswith("env:") and not _IDENT_RE.match(key[4:]):
            raise bad(
                f"{key!r} does not name an environment variable",
                "write env:NAME with NAME an environment variable name, e.g. env:TILED_API_KEY",
            )
        return key

    def resolved_api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The API key, read from the environment when written as ``env:NAME``."""
        key = self.catalog_api_key
        if key is None or not key.startswith("env:"):
            return key
        return (os.environ if environ is None else environ).get(key[4:])


class StackSettings(Section):
    """``[stacks]``: switch a whole stack off (its instruments are then skipped, with a warning)."""

    native: bool = Field(True, description="Start the native (ophyd) devices.")
    legacy: bool = Field(True, description="Start the legacy drivers and their ophyd adapters.")


class SimulationSettings(Section):
    """``[simulation]``: whether this profile describes a simulated lab."""

    enabled: bool = Field(
        False,
        description="The profile uses simulators (`sim://` ports, `pty`, `sim-tcp`). Simulated "
        "hardware in a profile with this off is an error, so a real lab cannot silently run on "
        "simulators.",
    )
    speed: float = Field(
        1.0,
        gt=0,
        allow_inf_nan=True,
        description="Default speed factor of the simulators: 10 makes a 2 s move take 0.2 s; "
        "`inf` makes motion and settling instantaneous.",
    )
    start_simulators: bool = Field(
        True,
        description="The runtime starts the simulators itself. Off: they are already running "
        "(`daqbridge sim serve`), so `pty` and `sim-tcp` cannot be used.",
    )


class ShutdownDeadlines(Section):
    """``[shutdown]``: seconds each shutdown phase may take before it is forced and reported.

    Phases run in the order of the keys below.
    """

    run_engine: Seconds = Field(
        10.0, description="Stop or abort the running plan; the RunEngine closes the run."
    )
    native: Seconds = Field(5.0, description="Stop and disconnect the native devices.")
    legacy: Seconds = Field(5.0, description="Stop the legacy drivers' polling and commands.")
    catalog: Seconds = Field(
        15.0, description="Flush the catalog writer and the write-ahead log; close HDF5 files."
    )
    resources: Seconds = Field(3.0, description="Close serial ports, buses and VISA sessions.")
    simulators: Seconds = Field(2.0, description="Stop the simulators the runtime started.")

    def phases(self) -> list[tuple[str, float]]:
        """(phase, deadline) in shutdown order."""
        return [(name, getattr(self, name)) for name in type(self).model_fields]


def _legacy_runtime_default(name: str) -> Any:
    """A default of the legacy stack's own ``[runtime]`` table, so both formats agree."""
    from daqbridge.legacy import RuntimeSettings

    return getattr(RuntimeSettings(), name)


class LegacyRuntimeSettings(Section):
    """``[legacy]``: how the legacy stack restarts a driver whose polling crashed.

    The legacy configuration's ``[runtime]`` restart keys, with the same defaults; its
    ``stop_timeout_s`` is ``[shutdown] legacy``.
    """

    restart_initial_s: Seconds = Field(
        _legacy_runtime_default("restart_initial_s"),
        description="Seconds before the first restart of a crashed driver; doubles per failure.",
    )
    restart_max_s: Seconds = Field(
        _legacy_runtime_default("restart_max_s"),
        description="Longest wait between two restarts.",
    )
    max_restarts: int | None = Field(
        _legacy_runtime_default("max_restarts"),
        ge=0,
        description="Consecutive failures after which the driver is marked failed; unset: it "
        "is restarted for ever.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> LegacyRuntimeSettings:
        if self.restart_initial_s > self.restart_max_s:
            raise bad(
                f"restart_initial_s {self.restart_initial_s:g} exceeds restart_max_s "
                f"{self.restart_max_s:g}",
                "the first wait must not be longer than the longest one",
                key="restart_initial_s",
            )
        return self

    def restart_policy(self) -> Any:
        """The ``daqbridge.legacy.RestartPolicy`` for ``LegacyRuntime(restart_policy=...)``."""
        from daqbridge.legacy import RestartPolicy

        return RestartPolicy(
            initial_delay=self.restart_initial_s,
            max_delay=self.restart_max_s,
            max_restarts=self.max_restarts,
        )


# --- simulation wiring per instrument -----------------------------------------------------------


class SimFaults(Section):
    """``sim.faults``: fault injection switches of the instrument's simulator."""

    reply_delay: float = Field(0.0, ge=0, description="Extra seconds before every reply.")
    drop_probability: float = Field(
        0.0, ge=0, le=1, description="Probability that a reply is lost."
    )
    drop_next: int = Field(0, ge=0, description="Drop exactly the next N replies.")
    garble_probability: float = Field(
        0.0, ge=0, le=1, description="Probability that a reply has one corrupted byte."
    )
    garble_next: int = Field(0, ge=0, description="Garble exactly the next N replies.")
    echo: bool = Field(False, description="Echo every command line before its reply.")
    stuck: bool = Field(False, description="The device swallows commands and answers nothing.")
    seed: int | None = Field(None, description="Seed of the random faults, for replay.")


class SimSettings(Section):
    """``sim``: how the runtime builds this instrument's simulator (simulated profiles only)."""

    kind: Ident | None = Field(
        None, description="Simulator kind; defaults to the driver name (`daqbridge sim list`)."
    )
    speed: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=True,
        description="Speed factor of this simulator; defaults to `[simulation] speed`.",
    )
    addresses: list[int] | None = Field(
        None,
        description="Elliptec only: addresses (0-15) where the simulated bus has a device. "
        "Defaults to the addresses in the profile; leave one out to simulate an absent device.",
    )
    faults: SimFaults | None = Field(None, description="Fault injection (see `sim.faults`).")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Further simulator constructor options (checked by the simulator when it is "
        "built; see docs/simulators.md).",
    )

    @field_validator("addresses")
    @classmethod
    def _hex_range(cls, addresses: list[int] | None) -> list[int] | None:
        if addresses is not None:
            for i, a in enumerate(addresses):
                if not 0 <= a <= 15:
                    raise bad(
                        f"address {a} is outside the Elliptec range 0-15",
                        "use addresses 0 to 15 (hex 0-F)",
                        key=f"[{i}]",
                    )
            if len(set(addresses)) != len(addresses):
                raise bad("an address is listed twice", "list each address once")
        return addresses

    @field_validator("options")
    @classmethod
    def _scalar_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        for name, value in options.items():
            if not _IDENT_RE.match(name):
                raise bad(
                    f"option name {name!r} is not an identifier",
                    "simulator options are keyword arguments: use letters, digits and _",
                    key=name,
                )
            items = value if isinstance(value, list) else [value]
            if not all(isinstance(v, str | int | float | bool) for v in items):
                raise bad(
                    f"option {name} has a value of type {type(value).__name__}",
                    "simulator options are strings, numbers, booleans or arrays of them",
                    key=name,
                )
        return options

    def simulator_options(self, *, default_speed: float) -> dict[str, Any]:
        """Keyword arguments for ``daqbridge.sim.create_simulator`` (fault switches flattened)."""
        opts: dict[str, Any] = dict(self.options)
        opts["speed"] = self.speed if self.speed is not None else default_speed
        if self.addresses is not None:
            opts["addresses"] = list(self.addresses)
        if self.faults is not None:
            opts.update(self.faults.model_dump(exclude_defaults=True))
        return opts


# --- driver settings tables ---------------------------------------------------------------------


class EpicsSettings(Section):
    """``[instruments.epics]``: what the IOC serves at the instrument's prefix."""

    kind: Literal["motor", "signal"] = Field(
        "motor",
        description="`motor`: a motor record at the prefix (driven as ophyd.EpicsMotor); "
        "`signal`: a PV read (and optionally written).",
    )
    read_pv: str = Field("", description="Signal: suffix of the PV to read, appended to prefix.")
    write_pv: str | None = Field(None, description="Signal: suffix of the PV to write.")
    units: str = Field("", description="Engineering units, when the IOC does not give them.")

    @model_validator(mode="after")
    def _motor_has_no_pvs(self) -> EpicsSettings:
        if self.kind == "motor" and (self.read_pv or self.write_pv is not None):
            raise bad(
                "read_pv/write_pv are for kind = 'signal'; a motor record's fields are fixed",
                "remove read_pv and write_pv, or set kind = 'signal'",
                key="kind",
            )
        for key in ("read_pv", "write_pv"):
            value = getattr(self, key)
            if value and not _PV_RE.match(value):
                raise bad(f"{value!r} is not a PV name suffix", "remove spaces", key=key)
        return self


# --- the legacy drivers' own keys -------------------------------------------------------------


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class LegacyKey:
    """One key of a legacy driver's options that the profile says in its own words.

    ``path`` is where the entry keeps it (``("timeout",)``, ``("maitai", "reply_terminator")``);
    ``to_profile`` turns a legacy value into the profile's TOML value, ``to_legacy`` the entry's
    value back into the legacy driver's option. Every other key of the legacy options model is a
    legacy-only setting, kept in the entry's ``legacy`` table.
    """

    option: str
    path: tuple[str, ...]
    to_profile: Any = _same
    to_legacy: Any = _same

    @property
    def key(self) -> str:
        return ".".join(self.path)


LEGACY_KEYS: dict[str, tuple[LegacyKey, ...]] = {
    "newport1830c": (
        LegacyKey("wavelength_nm", ("newport1830c", "wavelength_nm")),
        LegacyKey("units", ("newport1830c", "units")),
        LegacyKey("range", ("newport1830c", "range")),
        LegacyKey("filter", ("newport1830c", "filter")),
        LegacyKey("attenuator", ("newport1830c", "attenuator")),
        LegacyKey("timeout_s", ("timeout",)),
    ),
    "maitai": (
        LegacyKey(
            "terminator",
            ("maitai", "reply_terminator"),
            to_profile=lambda t: t.upper() if isinstance(t, str) else t,
        ),
        LegacyKey(
            "xonxoff",
            ("flow_control",),
            to_profile=lambda on: ("xonxoff" if on else "none") if isinstance(on, bool) else on,
            to_legacy=lambda flow: flow == "xonxoff",
        ),
        LegacyKey("timeout_s", ("timeout",)),
    ),
    "elliptec": (
        LegacyKey(
            "device_addresses",
            ("elliptec", "addresses"),
            to_profile=lambda addresses: [{"address": a} for a in addresses],
            to_legacy=lambda addresses: [a.address for a in addresses],
        ),
        LegacyKey("timeout_s", ("timeout",)),
    ),
}
"""Per profile driver: the legacy options with a profile equivalent. The runtime builds the
legacy driver's options from them (``SerialInstrument.legacy_options``) and ``config migrate``
goes the other way, so the two directions cannot disagree."""


def legacy_options_model(driver: str) -> type[BaseModel] | None:
    """The options model the legacy driver of ``driver`` registered (None: no legacy driver)."""
    from daqbridge.legacy import registered_drivers

    type_name = LEGACY_DRIVER_TYPES.get(driver)
    spec = registered_drivers().get(type_name) if type_name else None
    return spec.options if spec is not None else None


def _legacy_only_table(driver: str, title: str) -> type[Section]:
    """The ``legacy`` table of a driver: the legacy options the profile has no words for.

    Derived from the options model the legacy driver registered, so its keys, bounds and
    defaults are the legacy driver's own and a new legacy option needs no edit here.
    """
    model = legacy_options_model(driver)
    mapped = {k.option for k in LEGACY_KEYS.get(driver, ())}
    fields: dict[str, Any] = {}
    if model is not None:
        for name, info in model.model_fields.items():
            if name not in mapped:
                fields[name] = (info.annotation, copy.copy(info))
    table = create_model(  # type: ignore[call-overload]
        f"{title}LegacySettings", __base__=Section, __module__=__name__, **fields
    )
    table.__doc__ = (
        f"``[instruments.legacy]`` of a {driver} entry: settings only its legacy driver reads."
    )
    return table


def _legacy_only_description(table: type[Section]) -> str:
    keys = ", ".join(
        f"`{name}` ({'unset' if info.default is None else _plain_default(info.default)})"
        for name, info in table.model_fields.items()
    )
    return (
        "Settings only the legacy driver reads (legacy and shadow stacks); the native stack "
        "ignores them, so they stay in the file on every stack and a switch back restores them. "
        f"Keys (default): {keys}. Meanings: docs/legacy.md."
    )


def _plain_default(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else f"{value!r}"


# --- instruments --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceRef:
    """One device the runtime builds from a profile entry."""

    id: str
    """Device id (ophyd name), e.g. ``sim_stage_x`` or ``sim_meter_legacy``."""
    instrument: str
    """Id of the ``[[instruments]]`` entry it comes from."""
    stack: Literal["native", "legacy"]
    part: str | None
    """Axis or Elliptec device name; None for the instrument as a whole."""


class InstrumentBase(Section):
    """Keys every ``[[instruments]]`` entry has."""

    hardware_key: ClassVar[str] = "port"
    has_legacy_driver: ClassVar[bool] = False
    declared: ClassVar[DriverSpec | None] = None
    """The declaration of the native driver the entry is composed from (None: ``epics``)."""

    id: Ident = Field(description="Unique id; also the device name in plans and the catalog.")
    driver: str = Field(description=f"One of: {', '.join(DRIVERS)}.")
    stack: Literal["native", "legacy", "shadow"] = Field(
        "native",
        description="`native`: ophyd device; `legacy`: legacy driver behind the adapter; "
        "`shadow`: both on the same hardware, the legacy twin named `<id>_legacy`.",
    )
    enabled: bool = Field(True, description="Off: kept in the file but not started or checked.")
    description: str = Field("", description="Free text shown by `daqbridge config check`.")

    @model_validator(mode="after")
    def _stack_exists(self) -> InstrumentBase:
        if self.stack != "native" and not self.has_legacy_driver:
            raise bad(
                f"driver {self.driver!r} exists only in the native stack, not {self.stack!r}",
                f'set stack = "native" (legacy drivers exist for: '
                f"{', '.join(sorted(LEGACY_DRIVERS))})",
                key="stack",
            )
        return self

    @property
    def hardware(self) -> str:
        """What names the hardware: the port, VISA resource, camera name or PV prefix."""
        return getattr(self, self.hardware_key)

    @property
    def settings(self) -> Section:
        """The driver's own table (``[instruments.<driver>]``)."""
        return getattr(self, self.driver)

    @property
    def simulated(self) -> bool:
        return False

    @property
    def runs_native(self) -> bool:
        return self.stack in ("native", "shadow")

    @property
    def runs_legacy(self) -> bool:
        return self.stack in ("legacy", "shadow")

    def parts(self) -> list[str]:
        """Names of the sub-devices (axes, bus devices), each addressable as ``<id>_<name>``."""
        entry = self.declared.entry if self.declared is not None else None
        if entry is None or entry.part_names is None:
            return []
        return list(entry.part_names(self.settings))

    def devices(self) -> list[DeviceRef]:
        """Every device this entry produces (both twins of a shadow instrument)."""
        refs: list[DeviceRef] = []
        for stack in ("native", "legacy"):
            if (stack == "native" and not self.runs_native) or (
                stack == "legacy" and not self.runs_legacy
            ):
                continue
            twin = LEGACY_TWIN_SUFFIX if stack == "legacy" and self.stack == "shadow" else ""
            refs.append(DeviceRef(self.id + twin, self.id, stack, None))
            for part in self.parts():
                refs.append(DeviceRef(f"{self.id}_{part}{twin}", self.id, stack, part))
        return refs


def _port(value: str) -> str:
    if value == SIM_PORT or is_url_port(value):
        return value
    scheme, sep, _ = value.partition("://")
    if sep:
        raise bad(
            f"port URL scheme {scheme!r}:// is not known",
            f"use a device path (/dev/serial/by-id/...), 'pty', or a URL with one of: "
            f"{', '.join(s + '://' for s in sorted(URL_SCHEMES))}",
        )
    return value


Port = Annotated[str, AfterValidator(_text), AfterValidator(_port)]


def _driver_table(
    cls: type[InstrumentBase],
    value: Any,
    handler: ValidatorFunctionWrapHandler,
    info: ValidationInfo,
) -> Any:
    """A declared driver's table, validated for the stack its entry runs on.

    The entry's ``stack`` is validated before the table (it is a key of every entry), so a
    ``stack = "legacy"`` entry may keep what only its legacy twin reads (``units = "dBm"``), and a
    native or shadow entry is held to everything the native driver checks. Errors keep their
    place in the file (``instruments[1].newport1830c.units``).
    """
    if not isinstance(value, Mapping):
        return handler(value)  # a model instance, or the wrong type: the usual checks
    model = cls.model_fields[str(info.field_name)].annotation
    return model.for_stack(value, stack=info.data.get("stack", "native"))


class SerialInstrument(InstrumentBase):
    """Keys of the instruments on a serial port."""

    has_legacy_driver: ClassVar[bool] = True

    port: Port = Field(
        description="Serial port: a device path (prefer /dev/serial/by-id/..., stable across "
        "re-plugging), a pyserial URL (`sim://KIND?name=NAME`, `socket://host:port`, `loop://`), "
        "or `pty` (the runtime serves the simulator on a pseudo-terminal)."
    )
    baud_rate: int = Field(9600, description="Baud rate; the default is the instrument's own.")
    flow_control: Literal["none", "xonxoff", "rtscts"] = Field(
        "none", description="Serial flow control."
    )
    timeout: float = Field(1.0, gt=0, le=600, description="Seconds to wait for a reply.")
    polling_rate_hz: float | None = Field(
        None,
        ge=0,
        le=1000,
        description="Legacy and shadow only: polls per second (0: commands only); unset: the "
        "legacy driver's default.",
    )
    sim: SimSettings | None = Field(None, description="Simulator settings (simulated ports).")

    @model_validator(mode="after")
    def _flow_control_usable(self) -> SerialInstrument:
        entry = self.declared.entry if self.declared is not None else None
        why = entry.refused_flow_controls.get(self.flow_control) if entry is not None else None
        if why:
            raise bad(why, 'set flow_control = "none"', key="flow_control")
        return self

    @field_validator("baud_rate")
    @classmethod
    def _standard_baud(cls, baud: int) -> int:
        if baud not in STANDARD_BAUD_RATES:
            raise bad(
                f"{baud} is not a standard baud rate",
                f"use one of {', '.join(map(str, STANDARD_BAUD_RATES))} (this instrument's "
                f"default is {cls.model_fields['baud_rate'].default})",
            )
        return baud

    @property
    def simulated(self) -> bool:
        return is_simulated_port(self.port)

    @property
    def simulator_kind(self) -> str:
        """Simulator kind for ``daqbridge.sim.create_simulator`` (``sim.kind`` or the driver)."""
        return self.sim.kind if self.sim is not None and self.sim.kind else self.driver

    def simulator_options(self, default_speed: float) -> dict[str, Any]:
        """Keyword arguments for ``create_simulator(self.simulator_kind, **options)``.

        The ``sim`` table's options, plus what the profile already says about the device, so a
        simulator matches its entry without repeating it: the Elliptec bus gets the profile's
        addresses (unless ``sim.addresses`` says otherwise), the MaiTai its reply terminator.
        """
        sim = self.sim if self.sim is not None else SimSettings()
        opts = sim.simulator_options(default_speed=default_speed)
        for key, value in self._simulator_defaults().items():
            opts.setdefault(key, value)
        return opts

    def _simulator_defaults(self) -> Mapping[str, Any]:
        entry = self.declared.entry if self.declared is not None else None
        if entry is None or entry.simulator_options is None:
            return {}
        return entry.simulator_options(self.settings)

    def legacy_options(self) -> dict[str, Any]:
        """The options of this entry's legacy driver: the keys the profile says in its own
        words (``LEGACY_KEYS``), then its ``legacy`` table as written. Keys left out take the
        legacy driver's own defaults."""
        options: dict[str, Any] = {}
        for k in LEGACY_KEYS.get(self.driver, ()):
            value: Any = self
            for part in k.path:
                value = getattr(value, part)
            options[k.option] = k.to_legacy(value)
        table = getattr(self, "legacy", None)
        if isinstance(table, BaseModel):
            options.update(table.model_dump(exclude_unset=True))
        return options


def _visa_resource(value: str) -> str:
    if value != SIM_TCP_RESOURCE and not _VISA_RE.match(value):
        raise bad(
            f"{value!r} is not a VISA resource string",
            "write e.g. TCPIP0::192.168.1.100::INSTR, TCPIP0::host::5025::SOCKET, "
            "GPIB0::20::INSTR, USB0::0x0699::0x0346::C123456::INSTR, or 'sim-tcp' in a "
            "simulated lab",
        )
    return value


def _visa_backend(value: str) -> str:
    if not _VISA_BACKEND_RE.match(value):
        raise bad(
            f"{value!r} is not a VISA backend",
            "write '@py' (pyvisa-py), '@ivi' (vendor VISA), '@sim' or 'path/to/file.yaml@sim'",
        )
    return value


class VisaInstrument(InstrumentBase):
    """Keys of the instruments reached through VISA."""

    hardware_key: ClassVar[str] = "resource"
    resource: Annotated[str, AfterValidator(_text), AfterValidator(_visa_resource)] = Field(
        description="VISA resource string, or `sim-tcp`: the runtime starts the SCPI TCP "
        "simulator on 127.0.0.1 and substitutes its `TCPIP0::127.0.0.1::PORT::SOCKET` address."
    )
    visa_backend: Annotated[str, AfterValidator(_visa_backend)] | None = Field(
        None, description="pyvisa backend: `@py`, `@ivi`, `@sim` or `file.yaml@sim`; unset: @py."
    )
    timeout: float = Field(1.0, gt=0, le=600, description="Seconds to wait for a reply.")
    sim: SimSettings | None = Field(None, description="Simulator settings (`sim-tcp` only).")

    @model_validator(mode="after")
    def _sim_tcp_backend(self) -> VisaInstrument:
        if self.resource == SIM_TCP_RESOURCE and self.visa_backend not in (None, "@py"):
            raise bad(
                f"resource 'sim-tcp' is served over TCP by pyvisa-py, not {self.visa_backend!r}",
                "remove visa_backend (or set it to '@py')",
                key="visa_backend",
            )
        return self

    @property
    def simulated(self) -> bool:
        return self.resource == SIM_TCP_RESOURCE or (
            self.visa_backend is not None and self.visa_backend.endswith("@sim")
        )


class CameraInstrument(InstrumentBase):
    """Keys of the cameras, named as their SDK enumerates them."""

    hardware_key: ClassVar[str] = "camera"
    camera: Text = Field(description="Camera name as PVCAM enumerates it (e.g. `PrimeBSI`).")
    timeout: float = Field(1.0, gt=0, le=3600, description="Seconds to wait for a frame.")

    @property
    def simulated(self) -> bool:
        """A camera driver's table names its backend; ``sim`` is the simulated camera."""
        return getattr(self.settings, "backend", None) == "sim"


TRANSPORT_BASES: dict[str, type[InstrumentBase]] = {
    "serial": SerialInstrument,
    "visa": VisaInstrument,
    "camera": CameraInstrument,
}
"""The base of an entry, by the transport its driver declares (``ProfileEntry.transport``)."""


def compose_entry(spec: DriverSpec) -> type[InstrumentBase]:
    """The ``[[instruments]]`` entry class of a declared driver.

    The transport's base, ``driver = "<name>"``, the keys whose default is the instrument's own,
    the driver's settings model as the ``[instruments.<driver>]`` table, and, where the driver
    has a legacy twin, the ``legacy`` table and the table validated for the entry's stack. The
    refused flow controls, parts and simulator options are read from the declaration by the
    base (``declared``).
    """
    entry = spec.entry
    if entry is None:
        raise ValueError(f"driver {spec.driver!r} declares no profile entry")
    base = TRANSPORT_BASES[entry.transport]
    title = spec.settings.__name__.removesuffix("Settings")
    fields: dict[str, Any] = {
        "declared": (ClassVar[DriverSpec | None], spec),
        "driver": (Literal[spec.driver], ...),
    }
    for key, (value, description) in entry.defaults.items():
        info = base.model_fields[key]
        annotation = (
            Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        )
        fields[key] = (annotation, Field(value, description=description))
    table = spec.settings
    fields[spec.driver] = (
        table,
        Field(description=entry.table_description)
        if entry.table_required
        else Field(default_factory=table, description=entry.table_description),
    )
    validators: dict[str, Any] = {}
    if spec.legacy_twin is not None:
        legacy = _legacy_only_table(spec.driver, title)
        fields["legacy"] = (
            legacy,
            Field(default_factory=legacy, description=_legacy_only_description(legacy)),
        )
        validators[f"_{spec.driver}_for_stack"] = field_validator(spec.driver, mode="wrap")(
            _driver_table
        )
    return create_model(  # type: ignore[call-overload, no-any-return]
        f"{title}Instrument",
        __base__=base,
        __module__=__name__,
        __doc__=entry.description,
        __validators__=validators,
        **fields,
    )


class EpicsInstrument(InstrumentBase):
    """An instrument served by an EPICS IOC (e.g. `daqbridge ioc` on the machine with the cable)."""

    driver: Literal["epics"]
    hardware_key: ClassVar[str] = "prefix"
    prefix: Annotated[str, AfterValidator(_text)] = Field(
        description="PV prefix the IOC serves the instrument at (e.g. `LAB1:STAGE:X`)."
    )
    timeout: float = Field(2.0, gt=0, le=600, description="Seconds to wait for a connection.")
    epics: EpicsSettings = Field(default_factory=EpicsSettings, description="What is served.")

    @field_validator("prefix")
    @classmethod
    def _pv_chars(cls, prefix: str) -> str:
        if not _PV_RE.match(prefix):
            raise bad(f"{prefix!r} is not a PV prefix", "PV names have no spaces or quotes")
        return prefix


INSTRUMENT_CLASSES: dict[str, type[InstrumentBase]] = {
    **{driver: compose_entry(spec) for driver, spec in DECLARED_DRIVERS.items()},
    "epics": EpicsInstrument,
}
"""The entry class of every driver a profile may name, in the order of :data:`DRIVERS`."""

# The lab's entries by the names the runtime, the CLI and tests have always imported.
Esp300Instrument = INSTRUMENT_CLASSES["esp300"]
Newport1830cInstrument = INSTRUMENT_CLASSES["newport1830c"]
MaiTaiInstrument = INSTRUMENT_CLASSES["maitai"]
ElliptecInstrument = INSTRUMENT_CLASSES["elliptec"]
ScpiInstrument = INSTRUMENT_CLASSES["scpi"]
PvcamInstrument = INSTRUMENT_CLASSES["pvcam"]

Instrument = Annotated[
    Union[tuple(INSTRUMENT_CLASSES.values())],  # noqa: UP007 - built from the registry
    Field(discriminator="driver"),
]


class Coupling(Section):
    """``[[couplings]]``: one simulator follows another (simulated profiles only).

    The only coupling is ``power``: the power meter's simulator reads the MaiTai simulator's
    output power times ``factor``, so a wavelength scan shows the laser's gain curve on the meter;
    optionally through a polariser on a rotation mount (``via``) and past a knife edge on a
    stage axis (``edge``), so polarisation scans and rasters give physically sensible curves.
    """

    source: Ident = Field(description="Id of the MaiTai whose output is followed.")
    sink: Ident = Field(description="Id of the Newport 1830-C that reads it.")
    kind: Literal["power"] = Field("power", description="What follows what (only `power`).")
    factor: float = Field(
        1.0, gt=0, le=1, description="Fraction of the laser power reaching the meter."
    )
    via: Ident | None = Field(
        None,
        description="Device id of an Elliptec mount holding a polariser in the beam: the meter "
        "also follows Malus's law, cos^2(angle).",
    )
    edge: Ident | None = Field(
        None,
        description="Device id of an ESP300 axis carrying a knife edge across the beam: the "
        "meter follows 0.5 erfc(sqrt(2) (x - edge_position) / edge_width).",
    )
    edge_position: float = Field(0.0, description="Axis position of the beam centre.")
    edge_width: float = Field(1.0, gt=0, description="Beam radius (1/e^2) in the axis units.")


# --- the profile --------------------------------------------------------------------------------


class Profile(Section):
    """A lab profile: everything the runtime needs to start the lab."""

    lab: LabSettings = Field(description="`[lab]`")
    stacks: StackSettings = Field(default_factory=StackSettings, description="`[stacks]`")
    simulation: SimulationSettings = Field(
        default_factory=SimulationSettings, description="`[simulation]`"
    )
    shutdown: ShutdownDeadlines = Field(
        default_factory=ShutdownDeadlines, description="`[shutdown]`"
    )
    legacy: LegacyRuntimeSettings = Field(
        default_factory=LegacyRuntimeSettings, description="`[legacy]`"
    )
    instruments: list[Instrument] = Field(default_factory=list, description="`[[instruments]]`")
    couplings: list[Coupling] = Field(default_factory=list, description="`[[couplings]]`")

    _source: Path | None = PrivateAttr(default=None)
    _label: str = PrivateAttr(default="<string>")
    _warnings: list[Any] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _baseline_devices_exist(self) -> Profile:
        """A misspelt baseline device is caught at the desk, not as a run without it."""
        names = self.lab.baseline or []
        known = self.device_ids()
        unknown = [n for n in dict.fromkeys(names) if n.split(".", 1)[0] not in known]
        if not unknown:
            return self
        hints = []
        for name in unknown:
            near = difflib.get_close_matches(name.split(".", 1)[0], known, n=1, cutoff=0.6)
            if near:
                hints.append(f"did you mean {near[0]!r} for {name!r}?")
        listed = ", ".join(repr(n) for n in unknown)
        raise bad(
            f"{listed} {'is' if len(unknown) == 1 else 'are'} not a device of this lab",
            " ".join(hints + [f"devices: {', '.join(known) or 'none'}"]),
            key="lab.baseline",
        )

    # --- where it came from -----------------------------------------------------------------

    @property
    def source(self) -> Path | None:
        """The file the profile was loaded from (None for text or a mapping)."""
        return self._source

    @property
    def label(self) -> str:
        """How messages name the profile: its path, or ``<string>`` / ``<mapping>``."""
        return self._label

    @property
    def warnings(self) -> list[Any]:
        """Issues of severity 'warning' found when it was loaded (for the runtime to log)."""
        return list(self._warnings)

    @classmethod
    def default_path(cls) -> Path:
        """The embedded simulated lab (``daqbridge/profiles/sim.toml``), also in a wheel."""
        return Path(str(resources.files("daqbridge").joinpath("profiles", "sim.toml")))

    # --- instruments for the runtime --------------------------------------------------------

    def enabled_instruments(self) -> list[InstrumentBase]:
        return [i for i in self.instruments if i.enabled]

    def native_instruments(self) -> list[InstrumentBase]:
        """Entries to build as native devices: stack native or shadow, stack switched on."""
        if not self.stacks.native:
            return []
        return [i for i in self.enabled_instruments() if i.runs_native]

    def legacy_instruments(self) -> list[InstrumentBase]:
        """Entries to run in the legacy stack: stack legacy or shadow, stack switched on."""
        if not self.stacks.legacy:
            return []
        return [i for i in self.enabled_instruments() if i.runs_legacy]

    def instrument(self, instrument_id: str) -> InstrumentBase:
        """The entry with this id (KeyError names the known ids)."""
        for inst in self.instruments:
            if inst.id == instrument_id:
                return inst
        raise KeyError(
            f"no instrument {instrument_id!r}; known: {', '.join(i.id for i in self.instruments)}"
        )

    def devices(self) -> list[DeviceRef]:
        """Every device the runtime builds, on the stacks that are switched on."""
        refs: list[DeviceRef] = []
        for inst in self.enabled_instruments():
            for ref in inst.devices():
                if getattr(self.stacks, ref.stack):
                    refs.append(ref)
        return refs

    def device_ids(self) -> list[str]:
        """Every device id: instruments, ``<id>_<axis>``, ``<id>_<name>``, ``_legacy`` twins."""
        return [ref.id for ref in self.devices()]

    def iter_instruments(self) -> Iterator[tuple[int, InstrumentBase]]:
        """(index in the file, entry): for messages that point at ``instruments[i]``."""
        return iter(enumerate(self.instruments))

    # --- paths --------------------------------------------------------------------------------

    def data_path(self, environ: Mapping[str, str] | None = None) -> Path:
        """The data directory: DAQBRIDGE_DATA if set, else ``lab.data_dir`` resolved."""
        env = os.environ if environ is None else environ
        raw = env.get("DAQBRIDGE_DATA") or self.lab.data_dir
        path = Path(raw).expanduser()
        if not path.is_absolute():
            base = self._source.parent if self._source is not None else Path.cwd()
            path = base / path
        return Path(os.path.normpath(path))

    def catalog_dir(self, environ: Mapping[str, str] | None = None) -> Path:
        """Directory of the embedded catalog's files (catalog.db, its table and array storage)."""
        return self.data_path(environ) / "catalog"

    def wal_dir(self, environ: Mapping[str, str] | None = None) -> Path:
        """Directory of the write-ahead document log."""
        return self.data_path(environ) / "wal"

    def reserved_dirs(self, environ: Mapping[str, str] | None = None) -> list[Path]:
        """Directories owned by the catalog machinery; nothing else may write inside them."""
        dirs = [self.catalog_dir(environ), self.wal_dir(environ)]
        uri = self.lab.catalog_uri
        if uri is not None and uri.startswith("sqlite:///"):
            dirs.append(Path(os.path.normpath(Path(uri[len("sqlite:///") :]).expanduser().parent)))
        return dirs

    def frames_path(
        self, instrument: PvcamInstrument, environ: Mapping[str, str] | None = None
    ) -> Path:
        """Where a camera's HDF5 files go (``pvcam.frames_dir`` resolved against data_dir)."""
        raw = instrument.pvcam.frames_dir or f"frames/{instrument.id}"
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = self.data_path(environ) / path
        return Path(os.path.normpath(path))
