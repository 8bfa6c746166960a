"""Each native driver declares itself: profile name, settings model, builder, simulator, twin.

Why this exists: the lab profile (``daqbridge.config``) and the drivers each held their own copy of
an instrument's rules (the 1830-C's 300-1100 nm, the units it reads), so ``config check`` could
accept a profile the driver then refused at start-up, after the simulators and the catalog had
started. Now a driver module holds its instrument's facts once, declares the settings model of its
``[instruments.<driver>]`` table from them, validates its own constructor through that model, and
registers a :class:`DriverSpec`; the profile is composed from the registered models. Whatever the
model accepts the device accepts, and the other way round.

The registry lives in the devices layer, so a driver never imports ``daqbridge.config``; it names
its simulator and its legacy twin by string only (the simulators and the legacy stack are other
layers, and the driver must not load them).

Stacks: a profile entry's table is shared by the native driver and, for ``stack = "legacy"``, by
the legacy twin, whose rules may be wider (the legacy 1830-C driver reads dBm). A model states a
native-only rule in a validator guarded by :func:`for_native_stack`; the profile validates each
entry's table with the entry's stack in the validation context (:meth:`DriverSettings.for_stack`),
and anything else (a device constructor, a bare ``model_validate``) gets the native reading.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, Self, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, ValidationInfo
from pydantic_core import PydanticCustomError

from daqbridge.errors import ConfigError

__all__ = [
    "DriverSettings",
    "DriverSpec",
    "EntryDefault",
    "ProfileEntry",
    "TwinField",
    "TwinView",
    "addressed_parts",
    "declared_driver",
    "for_native_stack",
    "known_drivers",
    "register_driver",
    "registered_drivers",
    "settings_error",
    "unregister_driver",
    "validate_settings",
]

S = TypeVar("S", bound="DriverSettings")

STACK = "stack"
"""Validation-context key: the stack the entry runs on (``native``, ``legacy``, ``shadow``)."""


def settings_error(what: str, fix: str, *, key: str | None = None) -> PydanticCustomError:
    """A validation error carrying its own fix (and the sub-key it is about).

    The profile loader turns it into an issue with file, line, key and fix. The text travels in
    ``ctx`` rather than in the message template, so braces typed by the user
    (``SOUR:VOLT {value}``) are never mistaken for template fields.
    """
    ctx: dict[str, Any] = {"what": what, "fix": fix}
    if key is not None:
        ctx["key"] = key
    return PydanticCustomError("profile", "{what}", ctx)


def for_native_stack(info: ValidationInfo) -> bool:
    """Whether a table is being validated for the native driver.

    False only when the profile validates the table of an entry with ``stack = "legacy"``: the
    native driver never sees it. A shadow entry runs both drivers, so the native rules hold; no
    context at all (the device constructor, a bare ``model_validate``) means native, the model's
    strictest reading.
    """
    context = info.context if isinstance(info.context, Mapping) else {}
    return context.get(STACK, "native") != "legacy"


class DriverSettings(BaseModel):
    """Base of a driver's settings model: strict types, no unknown keys, finite numbers.

    The same rules as every table of the profile (its ``Section`` derives from this class),
    because a profile is typed by hand: ``range = "5"`` or ``wavelenght_nm = 800`` must be caught
    at the desk, not coerced or ignored.
    """

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        allow_inf_nan=False,
        validate_assignment=True,
        use_attribute_docstrings=False,
    )

    @classmethod
    def for_stack(cls, values: Mapping[str, Any], *, stack: str = "native") -> Self:
        """Validate ``values`` as the table of an entry on ``stack`` (see module docstring)."""
        return cls.model_validate(dict(values), strict=True, context={STACK: stack})


def validate_settings(
    model: type[S],
    values: Mapping[str, Any],
    *,
    instrument: str,
    stack: str = "native",
    resource: str | None = None,
) -> S:
    """The settings a device constructor was given, checked by its driver's model.

    The constructor and ``config check`` then refuse the same values with the same words (what,
    key, fix); a refusal is a ConfigError naming the instrument (and ``resource``, its port,
    when the caller has one), raised before any byte is sent.
    """
    try:
        return model.for_stack(values, stack=stack)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])
        key = _format_key(loc)
        ctx = err.get("ctx") or {}
        owner, description = _field_of(model, loc)
        name = str(loc[-1]) if loc else ""
        if err["type"] == "profile":
            what, fix = str(ctx["what"]), str(ctx["fix"])
            if ctx.get("key"):
                key = f"{key}.{ctx['key']}" if key else str(ctx["key"])
        elif err["type"] == "missing":
            what = f"missing required key {name!r}"
            fix = f"add {key}" + (f": {_unsentence(description)}" if description else "")
        elif err["type"] == "extra_forbidden":
            what = f"unknown key {name!r}"
            known = ", ".join(owner.model_fields) if owner is not None else ""
            fix = f"use one of {known}" if known else "remove it (see docs/profile.md)"
        elif err["type"] in ("too_short", "too_long"):
            what = f"{key} has {ctx.get('actual_length')} entries; " + (
                f"at least {ctx.get('min_length')} needed"
                if err["type"] == "too_short"
                else f"at most {ctx.get('max_length')} allowed"
            )
            fix = _unsentence(description) or "see docs/profile.md"
        else:
            what = f"{err['msg'][:1].lower()}{err['msg'][1:]} (got {err.get('input')!r})"
            fix = f"correct {key}: " + (
                _unsentence(description) or "the reference of every key is docs/profile.md"
            )
        raise ConfigError(
            what, instrument=instrument, resource=resource, key=key or None, fix=fix
        ) from None


def _format_key(loc: Sequence[Any]) -> str:
    """``['axes', 1, 'number']`` -> ``axes[1].number``, as the profile's messages write it."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _field_of(model: type[BaseModel], loc: Sequence[Any]) -> tuple[type[BaseModel] | None, str]:
    """The model holding the last key of ``loc`` (None where ``loc`` leaves the models) and
    that key's description ("" if it has none)."""
    owner: type[BaseModel] | None = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue  # an entry of a list: the list's item model was found with the list
        info = owner.model_fields.get(part) if owner is not None else None
        if info is None:
            return None, ""
        owner = _model_in(info.annotation)
    last = loc[-1] if loc else None
    info = owner.model_fields.get(last) if owner is not None and isinstance(last, str) else None
    return owner, (info.description or "") if info is not None else ""


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The settings model an annotation holds (``list[Esp300Axis] | None`` -> Esp300Axis)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _unsentence(text: str) -> str:
    return text.rstrip(".")


Build = Callable[..., Any]
"""``build(port, *, name, settings, timeout) -> device``: a serial driver's device for one profile
entry, built and not connected (the runtime connects it, so a failure names the instrument)."""

Parts = Callable[[Any], Mapping[str, Any]]
"""``parts(device) -> {device id: part}``: the parts of an entry's device that the lab addresses
by their own ids (an ESP300's axes ``<id>_x``, the mounts of an Elliptec bus). The one answer to
that question: the runtime serves and names these parts (:func:`addressed_parts` gives it to the
plans' metadata for a device built from Python too)."""


def no_parts(device: Any) -> Mapping[str, Any]:
    """The default: the entry's device is the only one the lab addresses."""
    return {}


Transport = Literal["serial", "visa", "camera"]
"""How a profile entry names its hardware: a serial ``port``, a VISA ``resource`` (or
``sim-tcp``), a ``camera`` name. The keys of each are the profile's (``daqbridge.config``)."""


class EntryDefault(NamedTuple):
    """A key of the transport whose default differs for this instrument, and why."""

    value: Any
    description: str
    """The key's line in the profile reference (``Baud rate (ESP300: 19200).``)."""


@dataclass(frozen=True)
class ProfileEntry:
    """What the profile's ``[[instruments]]`` entry of a driver needs to know about it.

    The profile (``daqbridge.config``) composes the entry from it and the settings model: the
    transport's keys, these defaults and refusals, the driver's table under its own name.
    """

    description: str
    """One line: what the instrument is (the entry's heading in docs/profile.md)."""
    transport: Transport = "serial"
    table_description: str = "Settings."
    """The line of the ``[instruments.<driver>]`` key in the profile reference."""
    table_required: bool = True
    """False when every key of the settings model has a default (the table may be left out)."""
    defaults: Mapping[str, EntryDefault] = field(default_factory=dict)
    """Transport keys whose default is this instrument's own (``baud_rate``, ``timeout``)."""
    refused_flow_controls: Mapping[str, str] = field(default_factory=dict)
    """Serial flow controls the instrument cannot use -> what goes wrong with them."""
    part_names: Callable[[Any], Sequence[str]] | None = None
    """``part_names(settings) -> names``: the parts the table declares, each addressed as
    ``<id>_<name>`` (the same parts :attr:`DriverSpec.parts` builds)."""
    simulator_options: Callable[[Any], Mapping[str, Any]] | None = None
    """``simulator_options(settings) -> options``: what the table already tells the simulator
    (the MaiTai's reply terminator), so a simulated entry need not repeat it in ``sim``."""


@dataclass(frozen=True)
class TwinField:
    """How one channel or parameter of the legacy twin is shown: under the native driver's
    name, kind, dtype and precision, so a run records the same keys on either stack (issue 18)
    and analysis written for one stack reads the other's runs. (The legacy adapter takes it as
    ``daqbridge.bridge.legacy_adapter.Field``.)

    ``attr``: the signal's attribute ("status_byte" for the driver's "status", "readback" for a
    mount's position). ``kind``: "hinted", "normal", "config" (read once per run) or "omitted"
    (kept current, never recorded: a bus whose mounts are the devices). ``key``: the data key's
    suffix; "" makes the key the device's own name (a positioner's read-back, as ophyd's
    ``EpicsMotor`` does). ``dtype``: the recorded dtype when the instrument's differs ("integer"
    for the 1830-C's boolean attenuator). ``codes``: instrument value -> recorded value (the
    1830-C's filter "medium" is its ``F2`` code, 2); a set maps back, so nothing is recorded
    that the instrument did not report. ``setpoint``: the attribute of a signal holding the
    target of the last set the instrument accepted (the native ``_setpoint`` key).
    ``describe_limits``: False describes only the limits the lab narrowed (``<name>_limits``),
    as the native drivers do; the driver's own limits are enforced either way.
    """

    attr: str
    kind: Literal["hinted", "normal", "config", "omitted"] = "normal"
    key: str | None = None
    dtype: str | None = None
    precision: int | None = None
    codes: Mapping[Any, Any] | None = None
    setpoint: str | None = None
    describe_limits: bool = True


@dataclass(frozen=True)
class TwinView:
    """How the legacy adapter shows the native driver's legacy twin, declared by the driver
    beside its own signals, so the same plan records the same keys, kinds, limits and
    tolerances on either stack and a new instrument touches no other module (issue 12).

    Each callable takes the entry's validated settings table (and a part name, for drivers with
    parts such as the Elliptec bus's mounts): ``fields(settings, part)`` -> legacy name ->
    :class:`TwinField` (None: the legacy driver's own names); ``part_channel(settings, part)``
    -> the legacy channel that carries one part (None: the part has none); ``limits(settings)``
    -> parameter -> (low, high) from the profile, narrowing the legacy driver's.
    ``tolerance``: parameter -> how far a read-back may be from its target (the native driver's
    own arrival tolerance). ``whole_movable``: False when the whole instrument is no positioner
    (a bus: its mounts are).
    """

    fields: Callable[[Any, str | None], Mapping[str, TwinField] | None] | None = None
    part_channel: Callable[[Any, str], str | None] | None = None
    limits: Callable[[Any], Mapping[str, tuple[float, float]]] | None = None
    tolerance: Mapping[str, float] = field(default_factory=dict)
    whole_movable: bool = True


@dataclass(frozen=True)
class DriverSpec:
    """What a native driver module declares about itself."""

    driver: str
    """The name profiles use: ``driver = "newport1830c"``."""
    settings: type[DriverSettings]
    """The model of its ``[instruments.<driver>]`` table; the constructor validates through it."""
    build: Build
    """Its device for one profile entry, from an open port and a validated settings table."""
    simulator: str | None = None
    """Its simulator kind (``daqbridge sim list``), by name: the devices never import the sims."""
    legacy_twin: str | None = None
    """The legacy driver type of the same instrument (``daqbridge.legacy.register_driver``)."""
    parts: Parts = no_parts
    """The parts addressed by their own device ids (see :data:`Parts`)."""
    entry: ProfileEntry | None = None
    """Its ``[[instruments]]`` entry; None: a driver profiles cannot name (yet)."""
    device: type | None = None
    """The class of the device :attr:`build` returns, which :attr:`parts` takes; required with
    :attr:`parts`, so :func:`addressed_parts` finds the declaration of any such device."""
    twin_view: TwinView | None = None
    """How the legacy adapter shows :attr:`legacy_twin` (None: the legacy driver's names)."""

    @property
    def module(self) -> str:
        """The module that declared it (its one home)."""
        return self.build.__module__


_DRIVERS: dict[str, DriverSpec] = {}


def register_driver(
    driver: str,
    *,
    settings: type[DriverSettings],
    build: Build,
    simulator: str | None = None,
    legacy_twin: str | None = None,
    parts: Parts = no_parts,
    entry: ProfileEntry | None = None,
    device: type | None = None,
    twin_view: TwinView | None = None,
    replace: bool = False,
) -> DriverSpec:
    """Declare a native driver; called by its module at import.

    A second module claiming the same profile name is refused unless ``replace`` (two homes for
    one instrument is the leak this registry closes); the same module importing again (a reload)
    replaces its own entry. A driver with ``parts`` names the ``device`` class they are parts of.
    """
    if parts is not no_parts and device is None:
        raise ValueError(
            f"native driver {driver!r} declares parts: name the class of its device (device=...), "
            "which the parts belong to"
        )
    if twin_view is not None and legacy_twin is None:
        raise ValueError(f"native driver {driver!r} declares a twin_view but no legacy_twin")
    spec = DriverSpec(
        driver, settings, build, simulator, legacy_twin, parts, entry, device, twin_view
    )
    old = _DRIVERS.get(driver)
    if old is not None and old.module != spec.module and not replace:
        raise ValueError(
            f"native driver {driver!r} is already declared by {old.module}; pass replace=True "
            "to override it on purpose"
        )
    _DRIVERS[driver] = spec
    return spec


def registered_drivers() -> Mapping[str, DriverSpec]:
    """Every driver declared so far (the modules imported so far), by profile name."""
    return MappingProxyType(dict(_DRIVERS))


def addressed_parts(device: Any) -> Mapping[str, Any]:
    """The parts of ``device`` the lab addresses by their own ids, as its driver declares them
    (:attr:`DriverSpec.parts`: ``{"stage_x": <axis>, ...}`` for an ESP300 controller named
    ``stage``); empty for a device whose driver declares none, or no driver at all."""
    for spec in tuple(_DRIVERS.values()):  # a driver module imported meanwhile may declare
        if spec.device is not None and isinstance(device, spec.device):
            return spec.parts(device)
    return {}


def unregister_driver(driver: str) -> DriverSpec | None:
    """Forget a declared driver (tests that declare a made-up one); returns its spec."""
    return _DRIVERS.pop(driver, None)


@contextmanager
def declared_driver(driver: str, **declaration: Any) -> Iterator[DriverSpec]:
    """A driver declared for the duration of a ``with`` block (tests), then forgotten."""
    spec = register_driver(driver, **declaration)
    try:
        yield spec
    finally:
        if _DRIVERS.get(driver) is spec:
            del _DRIVERS[driver]


_LISTED_FIRST = ("esp300", "newport1830c", "maitai", "elliptec", "scpi", "pvcam")
"""The order profiles' messages and docs/profile.md have always listed the lab's drivers in; any
other driver module of this package comes after them, by name."""


_DECLARATION = re.compile(r"^register_driver\(", re.M)


def _declares(package: Any, name: str) -> bool:
    """Whether module ``name`` of the package declares a driver (a ``register_driver(`` call at
    the start of a line), read from its source: the modules that declare none (the EPICS
    clients, which import ophyd; the camera's backends) are not imported by every command that
    reads a profile. A module whose source cannot be read is imported, to be safe."""
    for directory in package.__path__:
        source = Path(directory) / f"{name}.py"
        try:
            return _DECLARATION.search(source.read_text(encoding="utf-8")) is not None
        except OSError:
            continue
    return True


def known_drivers() -> Mapping[str, DriverSpec]:
    """Every driver declared by a module of ``daqbridge.devices`` (imported here, so a new driver
    module needs no line anywhere else), and any declared before, by profile name.

    Ordered: the lab's drivers as listed always, then the other modules' by module name, then
    drivers declared from outside the package in the order they were declared.
    """
    package = importlib.import_module("daqbridge.devices")
    names = sorted(
        info.name
        for info in pkgutil.iter_modules(package.__path__)
        if not info.ispkg and not info.name.startswith("_") and _declares(package, info.name)
    )
    order = [n for n in _LISTED_FIRST if n in names] + [n for n in names if n not in _LISTED_FIRST]
    for name in order:
        importlib.import_module(f"daqbridge.devices.{name}")
    rank = {f"daqbridge.devices.{name}": i for i, name in enumerate(order)}
    specs = sorted(_DRIVERS.values(), key=lambda spec: rank.get(spec.module, len(rank)))
    return MappingProxyType({spec.driver: spec for spec in specs})
