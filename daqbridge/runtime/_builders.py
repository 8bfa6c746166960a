"""From a profile entry to running objects: native devices, legacy instruments, adapters.

Why it is built this way:

* One builder per profile driver, in a registry (``register_builder``), each importing its
  device module only when a profile uses it. A driver module that is missing or broken then
  costs only the instruments that use it, with a ConfigError that says so, instead of breaking
  every lab that imports the runtime.
* Builders only build; the runtime connects (identity checks) afterwards, so a failure can be
  reported per instrument with its port, and the whole start-up can be undone in order.
* Profile settings are passed by keyword. A setting the driver's constructor does not take is
  never silently dropped: it is recorded as a note shown by ``status()`` and logged.
* A driver that declared itself (``daqbridge.devices.register_driver``: the 1830-C, the MaiTai,
  the ESP300, the Elliptec bus, the SCPI instrument, the PVCAM camera) is built by its own
  ``build`` from its validated table (``build_declared`` for serial drivers; ``build_scpi`` opens
  a VISA session instead of a port, ``build_pvcam`` hands over a camera backend): the table's model
  is the constructor's contract, so nothing can be dropped and there are no notes. Its settings
  are checked again before its port opens, for an entry that skipped validation (``model_copy``).
* Legacy instruments are built through the legacy stack's own registry
  (``daqbridge.legacy.register_driver``), with the per-type options validated by that driver's
  options model, exactly as a legacy configuration file would be.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from daqbridge.config import (
    LEGACY_DRIVER_TYPES,
    LEGACY_TWIN_SUFFIX,
    EpicsInstrument,
    InstrumentBase,
    Profile,
    PvcamInstrument,
    ScpiInstrument,
    SerialInstrument,
)
from daqbridge.devices import registered_drivers, validate_settings
from daqbridge.devices.core import is_async_device
from daqbridge.errors import ConfigError, DaqbridgeError, InstrumentError

if TYPE_CHECKING:
    from daqbridge.legacy import LegacyInstrument
    from daqbridge.runtime._simulation import Simulation
    from daqbridge.transport import SerialPortPool, SharedSerialPort, VisaSessionManager

log = logging.getLogger("daqbridge.runtime.builders")


class StartupFailed(InstrumentError):
    """An instrument could not be built, connected or identified at start-up.

    Carries the instrument id, its port or resource, the stack, and the original error as
    ``cause`` (also ``__cause__``), so code can still tell an IdentityMismatch from a timeout.
    """

    def __init__(
        self,
        instrument: str,
        *,
        driver: str,
        stack: str,
        resource: str | None,
        cause: BaseException,
        fix: str | None = None,
    ) -> None:
        self.driver = driver
        self.stack = stack
        self.cause = cause
        if isinstance(cause, DaqbridgeError):
            text = cause.what
            fix = fix or cause.fix
        else:
            text = f"{type(cause).__name__}: {cause}"
        super().__init__(
            f"the {stack} {driver} driver did not start: {text}",
            instrument=instrument,
            resource=resource,
            fix=fix
            or f"check that the instrument is powered and connected to {resource or 'its port'} "
            "(`daqbridge hardware` lists ports and resources) and that the profile's port, "
            "baud_rate and flow_control are right; to start the lab without it, set "
            "enabled = false for this entry or start with allow_partial=True.",
        )


# --- what a builder returns ------------------------------------------------------------------


@dataclass
class NativeInstrument:
    """The devices built from one ``[[instruments]]`` entry, and how to run their life cycle."""

    id: str
    driver: str
    resource: str
    root: Any
    devices: dict[str, Any]
    """Device id -> object: the entry's id (the controller, bus, meter ...) and its parts."""
    connect: Callable[[float | None], Any]
    notes: list[str] = field(default_factory=list)
    connected: bool = False

    def stop(self) -> None:
        """Stop motion, close shutters, abort acquisitions (the devices' own ``stop()``).

        An ophyd-async device's ``stop`` is a coroutine or returns a status: it runs on the
        device's loop, and is waited for (bounded by the shutdown phase's deadline)."""
        stop = getattr(self.root, "stop", None)
        if stop is None:
            return
        if runs_on_loop(self.root):
            from daqbridge.devices.core import call_sync

            call_sync(lambda: stop(success=False), device=self.root)
            return
        try:
            stop(success=False)
        except TypeError:
            stop()

    def close(self) -> None:
        """Close the device: its worker joined (v1), its transactions refused (ophyd-async)."""
        close = getattr(self.root, "close", None)
        if close is not None:
            close()


@dataclass
class BuildContext:
    """Everything a builder may use; nothing else reaches the hardware."""

    profile: Profile
    pool: SerialPortPool
    visa: VisaSessionManager
    data_dir: Path
    simulation: Simulation | None = None
    loop: Any = None
    """The RunEngine's event loop: ophyd-async devices are connected (and live) on it. Set by
    the runtime once its RunEngine exists, before any native device is built."""

    def port_of(self, inst: SerialInstrument) -> str:
        """The port to open: the simulator's substitute for ``pty`` / unnamed ``sim://``."""
        if self.simulation is not None:
            port = self.simulation.port_for(inst)
            if port is not None:
                return port
        return inst.port

    def resource_of(self, inst: ScpiInstrument) -> str:
        if self.simulation is not None:
            resource = self.simulation.resource_for(inst)
            if resource is not None:
                return resource
        return inst.resource

    def open_port(self, inst: SerialInstrument) -> SharedSerialPort:
        """Open the entry's port from the shared pool with the entry's line settings.

        Every user of a physical port (native driver, legacy twin) must ask for the same
        settings, or the pool refuses with SettingsConflict: better than two baud rates.
        """
        return self.pool.open(
            self.port_of(inst),
            baudrate=inst.baud_rate,
            xonxoff=inst.flow_control == "xonxoff",
            rtscts=inst.flow_control == "rtscts",
        )

    def frames_dir(self, inst: PvcamInstrument) -> Path:
        return camera_frames_dir(inst, self.data_dir)


def camera_frames_dir(inst: PvcamInstrument, data_dir: Path) -> Path:
    """Where a camera writes its HDF5 files: ``pvcam.frames_dir`` resolved against data_dir."""
    raw = inst.pvcam.frames_dir or f"frames/{inst.id}"
    path = Path(raw).expanduser()
    return path if path.is_absolute() else data_dir / path


Builder = Callable[[InstrumentBase, BuildContext], NativeInstrument]

_BUILDERS: dict[str, Builder] = {}


def register_builder(driver: str, builder: Builder, *, replace: bool = False) -> None:
    """Build native devices for profile entries with ``driver = "<driver>"``."""
    if driver in _BUILDERS and not replace and _BUILDERS[driver] is not builder:
        raise ValueError(
            f"a native builder for driver {driver!r} is already registered; pass replace=True "
            "to override it on purpose"
        )
    _BUILDERS[driver] = builder


def registered_builders() -> Mapping[str, Builder]:
    return MappingProxyType(dict(_BUILDERS))


def builder_for(inst: InstrumentBase) -> Builder:
    builder = _BUILDERS.get(inst.driver)
    if builder is None:
        raise ConfigError(
            f"no native builder for driver {inst.driver!r}.",
            instrument=inst.id,
            key="driver",
            fix=f"use one of {', '.join(sorted(_BUILDERS))}, or register one with "
            "daqbridge.runtime.register_builder.",
        )
    return builder


def driver_class(driver: str, module: str, name: str, *, instrument: str | None = None) -> Any:
    """Import ``module.name`` for a profile driver, with a ConfigError that says what to do."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            raise ConfigError(
                f"the native {driver} driver is not available: module {module} is not "
                "installed in this version of daqbridge.",
                instrument=instrument,
                key="driver",
                fix='run this instrument on the legacy stack (stack = "legacy", where a legacy '
                "driver exists), disable it (enabled = false), or update daqbridge.",
            ) from exc
        raise
    except ImportError as exc:
        raise ConfigError(
            f"the native {driver} driver cannot be imported: {exc}.",
            instrument=instrument,
            key="driver",
            fix="reinstall or update daqbridge; disable the instrument meanwhile "
            "(enabled = false).",
        ) from exc
    try:
        return getattr(mod, name)
    except AttributeError:
        raise ConfigError(
            f"the native {driver} driver is incomplete: {module} has no {name}.",
            instrument=instrument,
            key="driver",
            fix="update daqbridge; disable the instrument meanwhile (enabled = false).",
        ) from None


NATIVE_DRIVERS: dict[str, tuple[str, str]] = {
    "esp300": ("daqbridge.devices.esp300", "ESP300Controller"),
    "newport1830c": ("daqbridge.devices.newport1830c", "Newport1830C"),
    "maitai": ("daqbridge.devices.maitai", "MaiTaiLaser"),
    "elliptec": ("daqbridge.devices.elliptec", "ElliptecBus"),
    "scpi": ("daqbridge.devices.scpi", "ScpiInstrument"),
    "pvcam": ("daqbridge.devices.pvcam", "PvcamCamera"),
    "epics": ("ophyd", "EpicsMotor"),
}
"""Profile driver -> (module, class) of its native device; checked before any port opens."""


def check_native_driver(inst: InstrumentBase) -> None:
    """Raise ConfigError now if this entry's native driver cannot be loaded (no port touched)."""
    builder_for(inst)
    target = NATIVE_DRIVERS.get(inst.driver)
    if target is not None:
        driver_class(inst.driver, *target, instrument=inst.id)


def construct(
    factory: Callable[..., Any],
    *args: Any,
    notes: list[str],
    what: str,
    signature_of: Callable[..., Any] | None = None,
    **settings: Any,
) -> Any:
    """Call ``factory`` with the settings it declares; record the ones it does not take.

    None means "not set in the profile" and is not passed at all, so the driver's own default
    applies. A set value the driver has no parameter for is noted, never silently lost.
    ``signature_of`` names what really takes the keywords when ``factory`` forwards
    ``**kwargs``. A class is judged by its ``__init__``
    (some devices define ``__new__`` with ``**kwargs`` to build per-instance classes).
    """
    target = signature_of or factory
    if isinstance(target, type):
        target = target.__init__
    params = inspect.signature(target).parameters
    accepted = {
        n
        for n, p in params.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n != "self"
    }
    kwargs: dict[str, Any] = {}
    for key, value in settings.items():
        if value is None:
            continue
        if key in accepted:
            kwargs[key] = value
        else:
            note = f"{what}: setting {key}={value!r} is not supported by this driver; ignored"
            notes.append(note)
            log.warning(note)
    return factory(*args, **kwargs)


# --- native builders --------------------------------------------------------------------------


def build_declared(inst: SerialInstrument, ctx: BuildContext) -> NativeInstrument:
    """The device of a serial driver that declared itself, built by the driver's own ``build``."""
    spec = registered_drivers().get(inst.driver)
    if spec is None:
        raise ConfigError(
            f"the native {inst.driver} driver has not declared itself.",
            instrument=inst.id,
            key="driver",
            fix="update daqbridge; disable the instrument meanwhile (enabled = false).",
        )
    # The profile validated the table for this entry's stack; an entry copied onto the native
    # stack without validation (``config switch`` previews) is held to the native rules here,
    # before its port opens, in the words ``config check`` uses.
    settings = validate_settings(
        spec.settings,
        inst.settings.model_dump(exclude_unset=True),
        instrument=inst.id,
    )
    port = ctx.open_port(inst)
    device = spec.build(port, name=inst.id, settings=settings, timeout=inst.timeout)
    connect = connect_on_loop(device, ctx) if runs_on_loop(device) else device.connect
    devices = {inst.id: device, **spec.parts(device)}
    return NativeInstrument(inst.id, inst.driver, port.url, device, devices, connect)


def runs_on_loop(device: Any) -> bool:
    """An ophyd-async device, or a holder of some whose life cycle is coroutines (the
    Elliptec bus: its mounts are the devices)."""
    return is_async_device(device) or inspect.iscoroutinefunction(getattr(device, "connect", None))


def connect_on_loop(device: Any, ctx: BuildContext) -> Callable[[float | None], None]:
    """``connect(timeout)`` of an ophyd-async device: its coroutine run on the RunEngine's loop.

    The device's leases, subscriptions and statuses belong to the loop it was connected on, and
    plans run on the RunEngine's: connecting it anywhere else would leave it on a loop no plan
    uses (docs/runtime.md, start-up step 6).
    """
    from daqbridge.devices.core import call_sync

    def connect(timeout: float | None) -> None:
        seconds = DEFAULT_CONNECT_TIMEOUT if timeout is None else float(timeout)
        call_sync(
            lambda: device.connect(timeout=seconds),
            device=device,
            timeout=seconds + 1.0,
            loop=ctx.loop,
        )

    return connect


def build_scpi(inst: ScpiInstrument, ctx: BuildContext) -> NativeInstrument:
    """The SCPI instrument of an entry, built by its driver's own ``build`` from its validated
    table, on a VISA session opened with the table's termination both ways (not a serial port,
    so not :func:`build_declared`), and connected on the RunEngine's loop."""
    # importing the driver module declares it, with its terminations
    terminations = driver_class(
        "scpi", "daqbridge.devices.scpi", "TERMINATIONS", instrument=inst.id
    )
    spec = registered_drivers()["scpi"]
    settings = validate_settings(
        spec.settings, inst.scpi.model_dump(exclude_unset=True), instrument=inst.id
    )
    term = terminations[settings.termination]
    session = ctx.visa.session(
        ctx.resource_of(inst),
        backend=inst.visa_backend or "@py",
        read_termination=term,
        write_termination=term,
        timeout=inst.timeout,
    )
    device = spec.build(session, name=inst.id, settings=settings, timeout=inst.timeout)
    return NativeInstrument(
        inst.id, inst.driver, session.label, device, {inst.id: device}, connect_on_loop(device, ctx)
    )


def build_pvcam(inst: PvcamInstrument, ctx: BuildContext) -> NativeInstrument:
    """The camera of an entry, built by its driver's own ``build`` from its validated table on
    the camera backend (real pyvcam, or the simulator the runtime provides: not a serial port,
    so not :func:`build_declared`), and connected on the RunEngine's loop."""
    driver_class("pvcam", *NATIVE_DRIVERS["pvcam"], instrument=inst.id)  # imports: declares
    spec = registered_drivers()["pvcam"]
    settings = validate_settings(
        spec.settings, inst.pvcam.model_dump(exclude_unset=True), instrument=inst.id
    )
    if settings.backend == "sim":
        if ctx.simulation is None:
            raise ConfigError(
                "pvcam.backend = 'sim' needs [simulation] enabled = true.",
                instrument=inst.id,
                key="pvcam.backend",
                fix="enable simulation, or use backend = 'pvcam' with a real camera.",
            )
        backend = ctx.simulation.camera_backend(inst)
    else:
        load_backend = driver_class("pvcam", "daqbridge.devices.pvcam_backend", "load_backend")
        backend = load_backend("pvcam")
    camera = spec.build(
        backend,
        name=inst.id,
        settings=settings,
        timeout=inst.timeout,
        frames_dir=ctx.frames_dir(inst),  # created and proven writable by the camera's connect
        camera=inst.camera,
    )
    return NativeInstrument(
        inst.id,
        inst.driver,
        f"pvcam://{inst.camera}",
        camera,
        {inst.id: camera},
        connect_on_loop(camera, ctx),
    )


def build_epics(inst: EpicsInstrument, ctx: BuildContext) -> NativeInstrument:
    import ophyd

    s = inst.epics
    if s.kind == "motor":
        device = ophyd.EpicsMotor(inst.prefix, name=inst.id)
    else:
        read = inst.prefix + s.read_pv
        write = inst.prefix + s.write_pv if s.write_pv is not None else None
        device = ophyd.EpicsSignal(read, write_pv=write, name=inst.id)

    def connect(timeout: float | None) -> None:
        device.wait_for_connection(timeout=timeout or inst.timeout)

    return NativeInstrument(inst.id, inst.driver, inst.prefix, device, {inst.id: device}, connect)


for _driver, _builder in (
    ("esp300", build_declared),
    ("newport1830c", build_declared),
    ("maitai", build_declared),
    ("elliptec", build_declared),
    ("scpi", build_scpi),
    ("pvcam", build_pvcam),
    ("epics", build_epics),
):
    register_builder(_driver, _builder)  # type: ignore[arg-type]


def build_native(inst: InstrumentBase, ctx: BuildContext) -> NativeInstrument:
    """Build (not connect) the native devices of one entry; StartupFailed names what broke."""
    try:
        return builder_for(inst)(inst, ctx)
    except ConfigError:
        raise
    except Exception as exc:
        raise StartupFailed(
            inst.id, driver=inst.driver, stack="native", resource=inst.hardware, cause=exc
        ) from exc


DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds a native instrument gets to answer its identity check when none is configured."""


def connect_native(built: NativeInstrument, timeout: float | None) -> None:
    """Connect (identity check, safe settings); StartupFailed names instrument, port and fix."""
    try:
        built.connect(DEFAULT_CONNECT_TIMEOUT if timeout is None else timeout)
    except Exception as exc:
        raise StartupFailed(
            built.id, driver=built.driver, stack="native", resource=built.resource, cause=exc
        ) from exc
    built.connected = True


# --- legacy instruments ----------------------------------------------------------------------

LEGACY_TYPES: Mapping[str, str] = LEGACY_DRIVER_TYPES
"""Profile driver -> legacy driver type (``daqbridge.legacy.register_driver``), as each native
driver names its twin (``DriverSpec.legacy_twin``)."""


def legacy_id(inst: InstrumentBase) -> str:
    """The legacy instrument's name: the entry's id, ``<id>_legacy`` for a shadow twin."""
    return inst.id + (LEGACY_TWIN_SUFFIX if inst.stack == "shadow" else "")


def legacy_type(inst: InstrumentBase, overrides: Mapping[str, str] | None = None) -> str:
    """The legacy driver type of an entry (overrides by instrument id, then by driver)."""
    from daqbridge.legacy import registered_drivers

    overrides = overrides or {}
    type_name = (
        overrides.get(inst.id) or overrides.get(inst.driver) or LEGACY_TYPES.get(inst.driver)
    )
    if type_name is None:
        raise ConfigError(
            f"there is no legacy driver for {inst.driver!r} instruments.",
            instrument=inst.id,
            key="stack",
            fix=f'set stack = "native" (legacy drivers exist for: '
            f"{', '.join(sorted(LEGACY_TYPES))}).",
        )
    if type_name not in registered_drivers():
        raise ConfigError(
            f"the legacy driver type {type_name!r} is not registered.",
            instrument=inst.id,
            key="stack",
            fix=f"register it with daqbridge.legacy.register_driver (known: "
            f"{', '.join(sorted(registered_drivers()))}).",
        )
    return type_name


def _legacy_options(inst: InstrumentBase) -> dict[str, Any]:
    """The legacy driver's per-type keys, from the profile entry (mapped keys and its
    ``legacy`` table: ``SerialInstrument.legacy_options``, the inverse of ``config migrate``)."""
    return inst.legacy_options() if isinstance(inst, SerialInstrument) else {}


def build_legacy(
    inst: InstrumentBase,
    ctx: BuildContext,
    *,
    overrides: Mapping[str, str] | None = None,
) -> tuple[LegacyInstrument, float]:
    """The legacy instrument of an entry and its polling rate (nothing is opened yet)."""
    import pydantic

    from daqbridge.legacy import InstrumentConfig, build_instrument, registered_drivers

    type_name = legacy_type(inst, overrides)
    spec = registered_drivers()[type_name]
    name = legacy_id(inst)
    raw = {k: v for k, v in _legacy_options(inst).items() if v is not None}
    if spec.options is not None:
        fields = spec.options.model_fields
        allows_extra = spec.options.model_config.get("extra") == "allow"
        raw = {k: v for k, v in raw.items() if k in fields or allows_extra}
        try:
            options: Mapping[str, Any] = spec.options.model_validate(raw).model_dump()
        except pydantic.ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(
                f"the legacy {type_name} driver refuses {'.'.join(map(str, err['loc']))}: "
                f"{err['msg']} (got {err.get('input')!r}).",
                instrument=inst.id,
                file=ctx.profile.label,
                key=f"instruments.{inst.id}",
                fix="correct the entry's settings; see docs/legacy.md for this driver's limits.",
            ) from None
    else:
        options = {}
    port = ctx.port_of(inst) if isinstance(inst, SerialInstrument) else None
    baud = inst.baud_rate if isinstance(inst, SerialInstrument) else None
    rate = getattr(inst, "polling_rate_hz", None)
    rate = 1.0 if rate is None else float(rate)
    config = InstrumentConfig(
        name, type_name, port, baud, rate, MappingProxyType(dict(options)), ctx.profile.label
    )
    return build_instrument(config, ctx.pool), rate


def _twin_view(inst: InstrumentBase) -> Any:
    """How the entry's native driver shows its legacy twin (``DriverSpec.twin_view``), or None."""
    spec = registered_drivers().get(inst.driver)
    return spec.twin_view if spec is not None else None


def legacy_part_channel(inst: InstrumentBase, part: str) -> str | None:
    """The legacy channel that carries one part of an instrument (an Elliptec mount)."""
    view = _twin_view(inst)
    if view is None or view.part_channel is None:
        return None
    return view.part_channel(inst.settings, part)


def legacy_fields(inst: InstrumentBase, part: str | None = None) -> dict[str, Any] | None:
    """How the legacy adapter shows an instrument: under the native driver's names, kinds and
    precision, as the driver declares them (``TwinView.fields``), so the same plan records the
    same keys, units and hints on either stack (issue 18; docs/legacy.md has the table). None:
    the legacy driver's own names. Tests compare them with the native descriptors."""
    view = _twin_view(inst)
    if view is None or view.fields is None:
        return None
    fields = view.fields(inst.settings, part)
    return dict(fields) if fields is not None else None


def legacy_adapter_options(
    inst: InstrumentBase, part: str | None, overrides: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """Keyword arguments of the legacy adapter for one device of an entry (a part is one
    Elliptec mount); None when the part has no legacy channel. A driver type put in place of
    the stock one (``overrides``, as for ``legacy_type``) keeps its own channel names: the
    native names map the stock twin's channels only."""
    options: dict[str, Any] = {}
    view = _twin_view(inst)
    if part is not None:
        channel = legacy_part_channel(inst, part)
        if channel is None:
            return None
        options["settable"] = channel
    elif view is not None and not view.whole_movable:
        options["settable"] = False
    stock = LEGACY_TYPES.get(inst.driver)
    fields = legacy_fields(inst, part) if legacy_type(inst, overrides) == stock else None
    if fields is not None:
        options["fields"] = fields
    if view is not None and view.tolerance:
        options["tolerance"] = dict(view.tolerance)
    return options


def legacy_limits(inst: InstrumentBase) -> dict[str, tuple[float, float]]:
    """The profile's limits of the legacy parameters (parameter -> (low, high)), which the
    adapters narrow the driver's limits to (``<parameter>_limits``), as the native drivers do."""
    view = _twin_view(inst)
    if view is None or view.limits is None:
        return {}
    return dict(view.limits(inst.settings))


def legacy_adapter_class() -> Any | None:
    """``daqbridge.bridge.legacy_adapter.LegacyDevice``, or None while it does not exist."""
    try:
        module = importlib.import_module("daqbridge.bridge.legacy_adapter")
    except ModuleNotFoundError as exc:
        if exc.name == "daqbridge.bridge.legacy_adapter":
            return None
        raise
    return getattr(module, "LegacyDevice", None)
