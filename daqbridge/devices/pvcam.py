"""The Photometrics (PVCAM) camera as an ophyd-async device: frames to HDF5, announced as
StreamResource/StreamDatum (ADR 0007).

This module is the camera's one home: its facts (the finest exposure step, the most frames one
setup takes), the settings model of its ``[instruments.pvcam]`` table (:class:`PvcamSettings`,
registered with :func:`daqbridge.devices.register_driver`, so ``config check`` and start-up
cannot disagree), :class:`CameraInfo`, the device and ``build``. It records what runs have always
recorded, document for document: the data keys (``cam_sum``, ``cam_max`` hinted, ``cam_image``
described as ``STREAM:``), the configuration keys in the same order, the same StreamResource and
StreamDatum documents, so a catalog cannot tell which generation of the driver took a run.

Why it is built this way:
* The camera is driven through the same :class:`~daqbridge.devices.pvcam_backend.CameraBackend`
  (``PyVcamBackend`` in the lab, the simulator the runtime builds elsewhere), so this module
  never imports ``daqbridge.sim``.
* No thread of its own. Every blocking backend call (open, setup, start, each ``poll_frame``
  slice, halt, abort) and every HDF5 write runs through ``asyncio.to_thread``; the point itself
  is a coroutine on the RunEngine's loop, which never waits on an exposure (STACK_NOTES: a
  blocking call stalls the loop for its whole duration). Backend calls of one point are awaited
  one after the other, so the backend never sees two of them at once, except ``abort`` from
  ``stop()``, which is meant to cut into a poll.
* Settings (exposure, ROI, binning, trigger mode, frames per point) are read-write signals whose
  values are held in software (PVCAM takes them only at the next setup, and each point sets up
  afresh). ``set()`` checks the value against the limits read at connect (sensor, binnings,
  exposure modes) synchronously, before a status exists and before the backend is touched, so
  a bad value raises in the plan with the camera's message. ROI, binning and frames per
  point cannot change while staged: they fix the shape of the frames in the run's file. When the
  device is built, what needs no camera is checked: its exposure, ROI and binning through the
  table's model (:class:`PvcamSettings`, so the constructor refuses what ``config check``
  refuses, in the same words), and its frames per point; the rest at connect, against the camera
  found (its sensor, the binnings and exposure modes it offers).
* Their backend is :class:`_HeldValue`, not ophyd-async's ``SoftSignalBackend``: its converters
  turn the list settings (ROI, binning, sensor size) into numpy arrays and its data keys add
  ``dtype_numpy``; both would change the descriptors the catalog receives.
* Frames go to one HDF5 file per stage, written by :class:`~daqbridge.devices._hdf5.FrameWriter`
  (SWMR, flushed per point). The frames of a point are written together after the last one
  arrived, so a failed or stopped point leaves nothing and point ``i`` is always rows
  ``i*n .. i*n+n-1``: the StreamDatum indices stay true.
* A frame file that cannot be created or written is a :class:`FrameFileError`, never a camera
  fault. ``connect()`` proves the frames directory writable before the camera (opened
  exclusively) is taken; a failed write fails its point; ``close()`` raises for every file left
  incomplete, so the runtime's shutdown report is not clean.

Why a StandardReadable with its own trigger/stage/collect_asset_docs, and not ophyd-async's
``StandardDetector``: in ophyd-async 0.21 there is no DetectorController/DetectorWriter any more;
a StandardDetector is assembled from trigger, acquire and data logics, and fitting the camera
into it would change the documents the catalog receives or what the camera's settings mean:

* its ``describe()`` raises until ``prepare()`` ran, while this one describes the camera at any
  time, staged or not (as the ophyd v1 camera did);
* the image shape per event follows the ``TriggerInfo`` a plan prepares
  (``collections_per_event``), not the camera's ``frames_per_point`` setting that runs record in
  the configuration, the data key's shape and the StreamResource's ``multiplier``: a plan that
  calls ``bps.prepare`` would record another shape for the same settings;
* ``DetectorTrigger`` has three kinds (internal, edge, level); PVCAM has thirteen exposure modes,
  recorded by name in ``cam_trigger_mode``;
* it is not Stoppable, and the per-point statistics (``cam_sum``, ``cam_max``, computed from the
  point's frames) would need a readable data provider of their own beside the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from bluesky.protocols import Reading, StreamAsset
from event_model import ComposeStreamResourceBundle, DataKey, compose_stream_resource
from ophyd_async.core import (
    CALCULATE_TIMEOUT,
    AsyncStatus,
    CalculatableTimeout,
    DeviceConnector,
    SignalBackend,
    SignalR,
    SignalRW,
    StandardReadable,
)
from ophyd_async.core import StandardReadableFormat as Format
from pydantic import Field, field_validator, model_validator

from daqbridge.devices._base import check_number, positive_setting
from daqbridge.devices._hdf5 import FRAMES_DATASET, FrameFileError, FrameWriter, check_frames_dir
from daqbridge.devices._registry import (
    DriverSettings,
    EntryDefault,
    ProfileEntry,
    register_driver,
    settings_error,
    validate_settings,
)
from daqbridge.devices.core import RecordedAsV1
from daqbridge.devices.pvcam_backend import CameraBackend, ExposureMode, ImageStatus, Roi
from daqbridge.errors import (
    DaqbridgeError,
    IdentityMismatch,
    InstrumentError,
    InstrumentFault,
    InstrumentTimeout,
    ValueRejected,
)

__all__ = [
    "MAX_FRAMES_PER_POINT",
    "MIN_EXPOSURE_MS",
    "CameraInfo",
    "PvcamCamera",
    "PvcamRoi",
    "PvcamSettings",
    "build",
]

T = TypeVar("T")

#: Finest exposure step PVCAM offers (microsecond resolution), in ms; the shortest exposure too.
MIN_EXPOSURE_MS = 0.001
#: The longest exposure a profile may ask for (one hour), in ms.
MAX_EXPOSURE_MS = 3_600_000.0
#: pl_exp_setup_seq takes an uns16 frame count.
MAX_FRAMES_PER_POINT = 65535
#: Binning factors PVCAM cameras offer at most, per axis.
MAX_BINNING = 64


@dataclasses.dataclass(frozen=True)
class CameraInfo:
    """What ``connect()`` read from the camera; every setting is checked against it."""

    name: str
    chip_name: str
    sensor_size: tuple[int, int]
    bit_depth: int
    allowed_binnings: list[tuple[int, int]] | None
    exposure_modes: list[ExposureMode]
    resource: str


# --- the [instruments.pvcam] table ------------------------------------------------------------


def _finer_than_a_microsecond(exposure_ms: float) -> tuple[str, str] | None:
    """(what, fix) when an exposure is not a whole number of microseconds, the finest step PVCAM
    offers; None when it is. The table's model and the camera's settings both ask this."""
    if abs(exposure_ms * 1000 - round(exposure_ms * 1000)) > 1e-6:
        return (
            f"exposure {exposure_ms!r} ms is not a whole number of microseconds, the finest "
            "step PVCAM offers",
            f"use {round(exposure_ms * 1000) / 1000:g} ms",
        )
    return None


def _text(value: str | None) -> str | None:
    if value is not None and (not value.strip() or not value.isprintable()):
        raise settings_error(
            f"{value!r} is empty or contains a control character",
            "write a non-empty value or remove the key",
        )
    return value


class PvcamRoi(DriverSettings):
    """``pvcam.roi``: sensor region, inclusive pixel bounds (serial = columns, parallel = rows)."""

    s1: int = Field(ge=0, description="First column.")
    s2: int = Field(ge=0, description="Last column (inclusive).")
    p1: int = Field(ge=0, description="First row.")
    p2: int = Field(ge=0, description="Last row (inclusive).")

    @model_validator(mode="after")
    def _ordered(self) -> PvcamRoi:
        if self.s2 < self.s1:
            raise settings_error(f"s2 {self.s2} is before s1 {self.s1}", "write s1 <= s2", key="s2")
        if self.p2 < self.p1:
            raise settings_error(f"p2 {self.p2} is before p1 {self.p1}", "write p1 <= p2", key="p2")
        return self


class PvcamSettings(DriverSettings):
    """``[instruments.pvcam]``: camera backend, exposure, region and where frames go."""

    backend: Literal["sim", "pvcam"] = Field(
        "pvcam", description="`pvcam`: the vendor SDK through pyvcam; `sim`: simulated camera."
    )
    exposure_ms: float = Field(
        20.0,
        ge=MIN_EXPOSURE_MS,
        le=MAX_EXPOSURE_MS,
        description="Exposure time in ms, in whole microseconds.",
    )
    roi: PvcamRoi | None = Field(None, description="Region of interest; unset: full sensor.")
    binning: list[int] = Field(
        [1, 1], min_length=2, max_length=2, description="[serial, parallel] binning."
    )
    frames_dir: str | None = Field(
        None,
        description="Directory of the HDF5 frame files; relative to data_dir. Default "
        "`frames/<instrument id>`. Must not be shared or inside the catalog's directories.",
    )

    @field_validator("exposure_ms")
    @classmethod
    def _whole_microseconds(cls, value: float) -> float:
        finer = _finer_than_a_microsecond(value)
        if finer is not None:
            raise settings_error(*finer)
        return value

    @field_validator("frames_dir")
    @classmethod
    def _frames_dir_text(cls, value: str | None) -> str | None:
        return _text(value)

    @model_validator(mode="after")
    def _binning_fits(self) -> PvcamSettings:
        for i, b in enumerate(self.binning):
            if not 1 <= b <= MAX_BINNING:
                raise settings_error(
                    f"binning {b} is outside 1-{MAX_BINNING}",
                    "use 1, 2, 4 ...",
                    key=f"binning[{i}]",
                )
        if self.roi is not None:
            width = self.roi.s2 - self.roi.s1 + 1
            height = self.roi.p2 - self.roi.p1 + 1
            if width % self.binning[0] or height % self.binning[1]:
                raise settings_error(
                    f"ROI {width}x{height} is not a multiple of binning "
                    f"{self.binning[0]}x{self.binning[1]}",
                    "make the ROI width and height multiples of the binning",
                    key="roi",
                )
        return self


def _as_table(exposure_ms: Any, roi: Any, binning: Any) -> dict[str, Any]:
    """The constructor's settings in the words of the ``[instruments.pvcam]`` table, for
    :class:`PvcamSettings`: a :class:`Roi`, a mapping or ``(s1, s2, p1, p2)`` as the ROI's table,
    one binning number as both axes, a sequence as a list, numpy numbers as Python ones.
    Anything else goes as it is, for the model to refuse."""

    def plain(value: Any) -> Any:
        return value.item() if isinstance(value, np.generic) else value

    table: dict[str, Any] = {"exposure_ms": plain(exposure_ms)}
    if isinstance(binning, int | np.integer) and not isinstance(binning, bool):
        table["binning"] = [int(binning), int(binning)]
    elif isinstance(binning, Sequence) and not isinstance(binning, str | bytes):
        table["binning"] = [plain(b) for b in binning]
    else:
        table["binning"] = binning
    if isinstance(roi, Roi):
        table["roi"] = dataclasses.asdict(roi)
    elif isinstance(roi, Mapping):
        table["roi"] = {key: plain(value) for key, value in roi.items()}
    elif isinstance(roi, Sequence) and not isinstance(roi, str | bytes) and len(roi) == 4:
        table["roi"] = dict(zip(("s1", "s2", "p1", "p2"), map(plain, roi), strict=True))
    elif roi is not None:
        table["roi"] = roi
    return table


#: How long one blocking ``poll_frame`` may hold its thread: how fast stop() and a deadline act.
_POLL_SLICE_S = 0.05
_SOFTWARE_TRIGGERED = (ExposureMode.SOFTWARE_FIRST, ExposureMode.SOFTWARE_EDGE)
_SETTINGS = ("exposure", "roi", "binning", "trigger_mode", "frames_per_point")
_SHAPE_SETTINGS = ("roi", "binning", "frames_per_point")
_DTYPES = {int: "integer", float: "number", str: "string", list: "array"}


# --- signals ---------------------------------------------------------------------------------


class _HeldValue(SignalBackend[T]):
    """A camera value held in software: a setting (applied at the next setup) or what the camera
    reported (at connect, after each point).

    ``check`` normalises a new value or raises ValueRejected; None makes the value read-only
    (set from the device with :meth:`update`). Data keys are those runs have always recorded:
    ``source`` ``daqbridge:<name>``, no ``dtype_numpy``, lists as ``array`` of their length.
    """

    def __init__(
        self,
        datatype: type[T],
        initial: T,
        *,
        units: str | None = None,
        precision: int | None = None,
        check: Callable[[Any], T] | None = None,
    ) -> None:
        super().__init__(datatype)
        self.units = units
        self.precision = precision
        self.check = check
        self.reading: Reading[T] = {"value": initial, "timestamp": time.time(), "alarm_severity": 0}
        self._callback: Callable[[Reading[T]], None] | None = None

    @property
    def value(self) -> T:
        return self.reading["value"]

    @property
    def last_reading(self) -> Reading[T]:
        """What the camera last reported (or the setting held): the IOC's adapter shows it."""
        return self.reading

    def update(self, value: T, timestamp: float | None = None) -> Reading[T]:
        """Hold ``value`` (already checked) and tell the subscriber."""
        stamp = time.time() if timestamp is None else float(timestamp)
        self.reading = {"value": value, "timestamp": stamp, "alarm_severity": 0}
        if self._callback is not None:
            self._callback(self.reading)
        return self.reading

    def source(self, name: str, read: bool) -> str:
        return f"daqbridge:{name}"

    async def connect(self, timeout: float) -> None:
        """Nothing per signal: the camera's connector opened the camera before its children."""

    async def put(self, value: T | None) -> None:
        if self.check is None:
            raise ValueRejected(
                "this value is read from the camera and cannot be set.",
                value=value,
                fix="set exposure, roi, binning, trigger_mode or frames_per_point instead.",
            )
        self.update(self.check(value))

    async def get_datakey(self, source: str) -> DataKey:
        value = self.value
        shape = [len(value)] if isinstance(value, list) else []
        key = DataKey(source=source, dtype=_DTYPES[self.datatype], shape=shape)  # type: ignore[arg-type,index,typeddict-item]
        if self.units is not None:
            key["units"] = self.units
        if self.precision is not None:
            key["precision"] = self.precision
        return key

    async def get_reading(self) -> Reading[T]:
        return self.reading

    async def get_value(self) -> T:
        return self.value

    async def get_setpoint(self) -> T:
        return self.value

    def set_callback(self, callback: Callable[[Reading[T]], None] | None) -> None:
        if callback is not None and self._callback is not None:
            raise RuntimeError("a callback is already set")
        self._callback = callback
        if callback is not None:
            callback(self.reading)


class _Reported(RecordedAsV1, SignalR[T]):
    """What the camera reported (chip, sensor, temperature, per-point statistics)."""

    @property
    def held(self) -> _HeldValue[T]:
        return self._connector.backend  # type: ignore[return-value]


class _Setting(RecordedAsV1, SignalRW[T]):
    """A camera setting: checked by the device when set, applied at the next setup."""

    @property
    def held(self) -> _HeldValue[T]:
        return self._connector.backend  # type: ignore[return-value]

    def set(self, value: T, timeout: CalculatableTimeout = CALCULATE_TIMEOUT) -> AsyncStatus:  # type: ignore[override]
        # Checked here, before a status exists: a bad value raises in the plan with the camera's
        # message, and a normalised value (a Roi, a mode given by number) is
        # what the status puts.
        assert self.held.check is not None
        return super().set(self.held.check(value), timeout)


def _held(datatype: type[T], initial: T, **kw: Any) -> _HeldValue[T]:
    return _HeldValue(datatype, initial, **kw)


# --- the camera ------------------------------------------------------------------------------


class _CameraConnector(DeviceConnector):
    """Connect = open the camera and apply the settings, then connect the children."""

    async def connect_real(self, device: Any, timeout: float, force_reconnect: bool) -> None:
        async with asyncio.timeout(timeout):
            await device.open_camera()
        await super().connect_real(device, timeout, force_reconnect)


class PvcamCamera(StandardReadable):
    """A PVCAM camera as a bluesky detector on ophyd-async: Readable, Triggerable, Stageable,
    Configurable, Stoppable and WritesStreamAssets.

    Arguments as :class:`~daqbridge.devices.pvcam.PvcamCamera`'s. ``camera`` is the name PVCAM
    enumerates (``PrimeBSI``); None takes the first. ``timeout`` is how long to wait for one frame
    beyond its exposure (s). Connect it on the RunEngine's loop (``await cam.connect()``);
    synchronous code reaches it with :func:`daqbridge.devices.core.call_sync`.
    """

    def __init__(
        self,
        name: str,
        backend: CameraBackend,
        *,
        frames_dir: str | Path,
        camera: str | None = None,
        exposure_ms: float = 20.0,
        roi: Roi | Sequence[int] | Mapping[str, int] | None = None,
        binning: int | Sequence[int] = (1, 1),
        trigger_mode: ExposureMode | int | str = ExposureMode.TIMED,
        frames_per_point: int = 1,
        timeout: float = 10.0,
        max_exposure_ms: float = MAX_EXPOSURE_MS,
        flush_every: int = 10,
        flush_interval: float = 0.5,
    ) -> None:
        if not isinstance(backend, CameraBackend):
            raise InstrumentError(
                f"backend must be a CameraBackend, got {type(backend).__name__}.",
                instrument=name,
                fix="pass PyVcamBackend() or the runtime's SimulatedCameraBackend.",
            )
        # The driver's settings model (the profile's [instruments.pvcam] table): the constructor
        # refuses what `config check` refuses, in the same words, before the camera is touched.
        validate_settings(PvcamSettings, _as_table(exposure_ms, roi, binning), instrument=name)
        self.backend = backend
        if backend.label is None:
            backend.label = name  # the backend's own errors then name this device
        self.expected_camera = camera
        self.frames_dir = Path(frames_dir).expanduser().absolute()
        self.timeout = positive_setting(timeout, "timeout", name)  # as the profile's entry
        self.max_exposure_ms = check_number(
            max_exposure_ms, instrument=name, what="maximum exposure (ms)", low=MIN_EXPOSURE_MS
        )
        self.flush_every = int(
            check_number(
                flush_every, instrument=name, what="flush_every (frames)", low=1, integer=True
            )
        )
        self.flush_interval = check_number(
            flush_interval, instrument=name, what="flush_interval (s)", low=0
        )
        self._info: CameraInfo | None = None
        self._initial = {
            "exposure": exposure_ms,
            "roi": roi,
            "binning": binning,
            "trigger_mode": trigger_mode,
            "frames_per_point": frames_per_point,
        }
        self._applied = False  # constructor settings applied by a connect
        self._writer: FrameWriter | None = None
        self._point: asyncio.Task | None = None
        self._abort = threading.Event()  # close() sets it from another thread
        self._acquiring = False
        self._bundle: ComposeStreamResourceBundle | None = None
        self._announced = 0  # indices already covered by StreamDatum documents
        self._points = 0  # points (indices) whose frames are in the file
        self._incomplete: list[FrameFileError] = []  # files closed after a failed write
        self.connected_loop: asyncio.AbstractEventLoop | None = None
        """The loop the camera was connected on (the RunEngine's), for ``call_sync``."""

        # One block per signal: a block registers its signals as a set (no order), and the keys
        # must come in the order runs have always recorded (object_keys are compared as lists).
        with self.add_children_as_readables(Format.HINTED_UNCACHED_SIGNAL):
            self.sum = _Reported(_held(int, 0, units="counts"))
        with self.add_children_as_readables(Format.HINTED_UNCACHED_SIGNAL):
            self.max = _Reported(_held(int, 0, units="counts"))
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.exposure = _Setting(
                _held(float, 20.0, units="ms", precision=3, check=self._setter("exposure"))
            )
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.roi = _Setting(_held(list, [0, 0, 0, 0], check=self._setter("roi")))
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.binning = _Setting(_held(list, [1, 1], check=self._setter("binning")))
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.trigger_mode = _Setting(
                _held(str, ExposureMode.TIMED.name, check=self._setter("trigger_mode"))
            )
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.frames_per_point = _Setting(_held(int, 1, check=self._setter("frames_per_point")))
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.camera_name = _Reported(_held(str, ""))
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.chip_name = _Reported(_held(str, ""))
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.sensor_size = _Reported(_held(list, [0, 0], units="px"))
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.bit_depth = _Reported(_held(int, 0, units="bit"))
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.temperature = _Reported(_held(float, float("nan"), units="degC", precision=2))
        super().__init__(name=name, connector=_CameraConnector())
        # What needs no camera is refused now, before any connect (the rest at connect).
        self._checked(self._initial, changed=set())

    def set_name(self, name: str, *, child_name_separator: str | None = None) -> None:
        """Children joined with ``_`` whatever the caller asks: the data keys runs have recorded."""
        super().set_name(name, child_name_separator="_")

    # --- connection ---------------------------------------------------------------------------

    async def open_camera(self) -> CameraInfo:
        """Prove the frames directory, open the camera, check it, read its limits, apply the
        settings (the constructor's the first time, the current ones on a reconnect)."""
        first = not self._applied
        # Before the camera: PVCAM opens it exclusively, and a refused start-up must not keep it.
        await asyncio.to_thread(check_frames_dir, self.frames_dir, instrument=self.name)
        info, temperature = await asyncio.to_thread(self._open_and_identify)
        self._info = info
        self.camera_name.held.update(info.name)
        self.chip_name.held.update(info.chip_name)
        self.sensor_size.held.update(list(info.sensor_size))
        self.bit_depth.held.update(info.bit_depth)
        self.temperature.held.update(temperature)
        try:
            wanted = self._initial if first else self.settings()
            self._store(self._checked({**self.settings(), **wanted}, changed=set(wanted)))
            self._applied = True
        except BaseException:
            self._info = None
            await asyncio.to_thread(self.backend.close)
            raise
        self.connected_loop = asyncio.get_running_loop()
        return info

    def _open_and_identify(self) -> tuple[CameraInfo, float]:
        """Worker thread: open (if needed) and identify; never keeps a camera it cannot use."""
        b = self.backend
        opened_here = not b.is_open
        try:
            if opened_here:
                found = b.camera_names()
                if not found:
                    raise InstrumentError(
                        "no PVCAM camera is present (the SDK enumerates none).",
                        instrument=self.name,
                        resource=f"pvcam://{self.expected_camera or '?'}",
                        fix="check the camera's power and cable, and that no other program "
                        "(PVCamTest, micro-manager) holds it; then connect again.",
                    )
                if self.expected_camera is not None and self.expected_camera not in found:
                    raise IdentityMismatch(
                        f"camera {self.expected_camera!r} is not present; PVCAM finds {found}.",
                        instrument=self.name,
                        resource=f"pvcam://{self.expected_camera}",
                        fix="correct `camera` in the profile to one of the names found, or "
                        "connect the right camera.",
                    )
                b.open(self.expected_camera)
            if self.expected_camera is not None and b.name != self.expected_camera:
                raise IdentityMismatch(
                    f"the backend has camera {b.name!r} open, not {self.expected_camera!r}.",
                    instrument=self.name,
                    resource=b.resource,
                    fix="give this device its own backend, or correct `camera` in the profile.",
                )
            info = CameraInfo(
                name=b.name,
                chip_name=b.chip_name,
                sensor_size=tuple(int(v) for v in b.sensor_size),
                bit_depth=int(b.bit_depth),
                allowed_binnings=b.allowed_binnings,
                exposure_modes=list(b.exposure_modes),
                resource=b.resource,
            )
            return info, float(b.temperature_c)
        except BaseException:
            if opened_here and b.is_open:
                b.close()
            raise

    @property
    def connected(self) -> bool:
        return self._info is not None and self.backend.is_open

    @property
    def info(self) -> CameraInfo:
        if self._info is None:
            raise InstrumentError(
                "the camera is not connected.",
                instrument=self.name,
                resource=self.backend.resource,
                fix="connect it first (the runtime does this at start-up).",
            )
        return self._info

    def close(self) -> None:
        """End an acquisition, close the run's file, release the camera. Safe to call twice.

        Synchronous and blocking (the runtime's shutdown, from its own thread, not the loop).
        Raises FrameFileError, once everything is closed, if a frame file of this session was
        left incomplete by a failed write: the shutdown must not look clean.
        """
        self._abort.set()
        writer, self._writer = self._writer, None
        try:
            if self._acquiring:
                with contextlib.suppress(DaqbridgeError):
                    self.backend.abort()
            if writer is not None:
                writer.close()
        except FrameFileError:
            pass  # kept, and reported below with the others
        finally:
            self._keep_if_incomplete(writer)
            try:
                self.backend.close()
            except InstrumentError:
                pass  # closing a camera that is gone must not hide the report below
            finally:
                self._info = None
        incomplete, self._incomplete = self._incomplete, []
        if incomplete:
            last = incomplete[-1]
            files = ", ".join(e.path for e in incomplete)
            raise FrameFileError(
                f"the frame file {last.path} of this session is incomplete: {last.what}"
                if len(incomplete) == 1
                else f"{len(incomplete)} frame files of this session are incomplete ({files}); "
                f"the last: {last.what}",
                path=last.path,
                os_errno=last.os_errno,
                free_bytes=last.free_bytes,
                instrument=self.name,
                fix=last.fix,
            )

    # --- settings -----------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The current settings, as held in the signals."""
        return {key: getattr(self, key).held.value for key in _SETTINGS}

    def configure(self, d: Mapping[str, Any]) -> tuple[dict, dict]:
        """Change several settings at once, checked together (a new ROI with a new binning).

        Synchronous, as bluesky's ``configure`` message calls it; returns (old, new) readings.
        """
        unknown = sorted(set(d) - set(_SETTINGS))
        if unknown:
            raise ValueRejected(
                f"{unknown} are not camera settings.",
                instrument=self.name,
                value=unknown,
                fix=f"configure only {sorted(_SETTINGS)}.",
            )
        checked = self._checked({**self.settings(), **d}, changed=set(d))
        old = self._configuration()
        self._store({k: checked[k] for k in d})
        return old, self._configuration()

    def _configuration(self) -> dict[str, Reading]:
        signals = (*(getattr(self, k) for k in _SETTINGS), self.camera_name, self.chip_name)
        signals += (self.sensor_size, self.bit_depth, self.temperature)
        return {s.name: dict(s.held.reading) for s in signals}  # type: ignore[misc]

    def _store(self, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            getattr(self, key).held.update(value)

    def _setter(self, key: str) -> Callable[[Any], Any]:
        def check(value: Any) -> Any:
            return self._checked({**self.settings(), key: value}, changed={key})[key]

        return check

    def _checked(self, s: Mapping[str, Any], changed: set[str]) -> dict[str, Any]:
        """Normalise and check settings against the camera; raise ValueRejected naming limits."""
        cam = self.name
        out: dict[str, Any] = {}
        exposure = check_number(
            s["exposure"],
            instrument=cam,
            what="exposure (ms)",
            low=MIN_EXPOSURE_MS,
            high=self.max_exposure_ms,
        )
        finer = _finer_than_a_microsecond(exposure)
        if finer is not None:
            what, fix = finer
            raise ValueRejected(f"{what}.", instrument=cam, value=exposure, fix=f"{fix}.")
        out["exposure"] = float(exposure)
        out["frames_per_point"] = int(
            check_number(
                s["frames_per_point"],
                instrument=cam,
                what="frames per point",
                low=1,
                high=MAX_FRAMES_PER_POINT,
                integer=True,
            )
        )
        if self._info is None and not changed & {"roi", "binning", "trigger_mode"}:
            # Exposure and frame count need no camera; the rest are checked at connect.
            out.update({k: s[k] for k in ("roi", "binning", "trigger_mode")})
            return out
        info = self.info
        binning = _binning(s["binning"], info, cam)
        roi = _roi(s["roi"], info, cam)
        roi.check(info.sensor_size, binning, camera=cam, resource=info.resource)
        out["binning"] = list(binning)
        out["roi"] = [roi.s1, roi.s2, roi.p1, roi.p2]
        out["trigger_mode"] = _mode(s["trigger_mode"], info, cam).name
        if self._writer is not None:
            moved = [k for k in _SHAPE_SETTINGS if out[k] != getattr(self, k).held.value]
            if moved:
                raise ValueRejected(
                    f"cannot change {', '.join(moved)} while staged: they fix the shape of the "
                    f"frames in this run's file {self._writer.path.name}.",
                    instrument=cam,
                    value={k: s[k] for k in moved},
                    fix="change them before the run starts (or between runs).",
                )
        return out

    def frame_shape(self) -> tuple[int, int]:
        """``(h, w)`` of the frames the current ROI and binning produce."""
        s1, s2, p1, p2 = self.roi.held.value
        sbin, pbin = self.binning.held.value
        return (p2 - p1 + 1) // pbin, (s2 - s1 + 1) // sbin

    # --- Stageable ----------------------------------------------------------------------------

    @AsyncStatus.wrap
    async def stage(self) -> None:
        """Open this run's HDF5 file (a new one, with a run-unique name) in ``frames_dir``."""
        info = self.info
        await super().stage()
        token = f"{time.strftime('%Y%m%dT%H%M%S')}_{uuid.uuid4().hex[:8]}"
        attrs = {
            "device": self.name,
            "camera": info.name,
            "chip_name": info.chip_name,
            "sensor_size": list(info.sensor_size),
            "bit_depth": info.bit_depth,
            "roi": list(self.roi.held.value),
            "binning": list(self.binning.held.value),
            "frames_per_point": int(self.frames_per_point.held.value),
        }
        try:
            self._writer = await asyncio.to_thread(
                FrameWriter,
                self.frames_dir / f"{self.name}_{token}.h5",
                self.frame_shape(),
                dtype="uint16",
                flush_every=self.flush_every,
                flush_interval=self.flush_interval,
                instrument=self.name,
                attrs=attrs,
            )
        except BaseException:
            await super().unstage()
            raise
        self._bundle = None
        self._announced = 0
        self._points = 0

    @AsyncStatus.wrap
    async def unstage(self) -> None:
        """Close the run's file, after a point still being acquired ended (bounded; then stopped).

        After a failed write the file is only closed; a failure first met here (the last flush)
        is raised.
        """
        writer, self._writer = self._writer, None
        try:
            point = self._point
            if point is not None and not point.done():
                bound = self.timeout + self._point_seconds() + 5
                done, _ = await asyncio.wait({point}, timeout=bound)
                if not done:
                    await self.stop()
                    await asyncio.wait({point}, timeout=5)
            if writer is not None:
                await asyncio.to_thread(writer.close)
        finally:
            self._keep_if_incomplete(writer)
            await super().unstage()

    def _keep_if_incomplete(self, writer: FrameWriter | None) -> None:
        if writer is not None and writer.failure is not None:
            self._incomplete.append(writer.failure)

    @property
    def file_path(self) -> Path | None:
        """The current run's frame file (None when not staged)."""
        return None if self._writer is None else self._writer.path

    # --- Triggerable / Stoppable --------------------------------------------------------------

    def trigger(self) -> AsyncStatus:
        """Acquire one point (``frames_per_point`` frames); the status ends once they are in the
        file and flushed. Call it on the loop the camera was connected on."""
        writer = self._writer
        if writer is None:
            raise InstrumentError(
                "trigger() before stage(): there is no frame file to write into.",
                instrument=self.name,
                resource=self.backend.resource,
                fix="use the camera inside a plan (bp.count, bp.scan stage it), or stage it first.",
            )
        if self._point is not None and not self._point.done():
            raise InstrumentError(
                "trigger() while the previous point is still being acquired.",
                instrument=self.name,
                resource=self.backend.resource,
                fix="wait for the previous trigger's status (plans do), or stop() it first.",
            )
        settings = self.settings()
        self._abort.clear()
        status = AsyncStatus(self._acquire(writer, settings), name=self.name)
        self._point = status.task
        return status

    async def stop(self, success: bool = False) -> None:
        """Abort the acquisition now; the point's status fails, its frames are discarded."""
        self._abort.set()
        if self._acquiring:
            with contextlib.suppress(DaqbridgeError):
                # Cuts into a poll at once; the point's own clean-up aborts again (harmless).
                await asyncio.to_thread(self.backend.abort)

    def _point_seconds(self) -> float:
        return float(self.exposure.held.value) / 1000 * int(self.frames_per_point.held.value)

    async def _acquire(self, writer: FrameWriter, s: Mapping[str, Any]) -> None:
        """One point: set up, run, read out, then write its frames to the file together."""
        b = self.backend
        mode = ExposureMode[s["trigger_mode"]]
        n = int(s["frames_per_point"])
        exposure_ms = float(s["exposure"])
        if exposure_ms == int(exposure_ms):
            resolution, units = "ms", int(exposure_ms)
        else:
            resolution, units = "us", int(round(exposure_ms * 1000))
        roi, binning = Roi(*s["roi"]), tuple(s["binning"])

        def set_up() -> None:
            if b.exposure_resolution != resolution:
                b.exposure_resolution = resolution
            b.setup(roi, binning, units, mode, n, False, n)

        await asyncio.to_thread(set_up)
        frames = []
        self._acquiring = True
        try:
            if self._abort.is_set():
                raise self._stopped(0, n)
            await asyncio.to_thread(b.start)
            if mode in _SOFTWARE_TRIGGERED:
                await asyncio.to_thread(b.sw_trigger)
            for k in range(n):
                if k and mode is ExposureMode.SOFTWARE_EDGE:
                    await asyncio.to_thread(b.sw_trigger)
                frames.append(await self._next_frame(k, n, exposure_ms / 1000))
        except BaseException:
            with contextlib.suppress(DaqbridgeError):
                await asyncio.to_thread(b.abort)  # report why the point failed, not the clean-up
            raise
        else:
            await asyncio.to_thread(b.halt)
        finally:
            self._acquiring = False
        total, peak = await asyncio.to_thread(_write_point, writer, frames)
        self._points += 1
        stamp = frames[-1].timestamp
        self.sum.held.update(total, stamp)
        self.max.held.update(peak, stamp)
        try:
            self.temperature.held.update(float(await asyncio.to_thread(lambda: b.temperature_c)))
        except DaqbridgeError:
            pass  # a missing temperature must not fail a point whose frames are safe on disk

    async def _next_frame(self, k: int, n: int, exposure_s: float) -> Any:
        b = self.backend
        deadline = time.monotonic() + exposure_s + self.timeout
        while True:
            if self._abort.is_set():
                raise self._stopped(k, n)
            try:
                frame = await asyncio.to_thread(b.poll_frame, _POLL_SLICE_S)
            except InstrumentFault as exc:
                raise self._readout_failed(k, n, exc.what) from exc
            if frame is not None:
                return frame
            if self._abort.is_set():
                raise self._stopped(k, n)
            status = await asyncio.to_thread(b.status)
            if status == ImageStatus.READOUT_FAILED:
                raise self._readout_failed(k, n, "the camera reports READOUT_FAILED")
            if time.monotonic() > deadline:
                raise InstrumentTimeout(
                    f"camera {self.info.name} delivered no frame {k + 1} of {n} within "
                    f"{exposure_s + self.timeout:.2f} s (exposure {exposure_s * 1000:g} ms, "
                    f"trigger mode {self.trigger_mode.held.value}, status {status.name}).",
                    instrument=self.name,
                    resource=b.resource,
                    fix="check the trigger input for external trigger modes and the camera's "
                    "cable; raise `timeout` if frames are legitimately slow.",
                )

    def _readout_failed(self, k: int, n: int, detail: str) -> InstrumentFault:
        return InstrumentFault(
            f"camera {self.info.name}: readout of frame {k + 1} of {n} failed "
            f"(READOUT_FAILED): {detail.rstrip('.')}. The point was not written.",
            code=int(ImageStatus.READOUT_FAILED),
            instrument=self.name,
            resource=self.backend.resource,
            fix="repeat the point; if it keeps failing check the cable, the trigger signal "
            "and the camera's power.",
        )

    def _stopped(self, k: int, n: int) -> InstrumentError:
        return InstrumentError(
            f"acquisition stopped by stop() after {k} of {n} frames; the point was not written.",
            instrument=self.name,
            resource=self.backend.resource,
        )

    # --- Readable -----------------------------------------------------------------------------

    @property
    def image_key(self) -> str:
        return f"{self.name}_image"

    async def describe(self) -> dict[str, DataKey]:
        desc = dict(await super().describe())
        h, w = self.frame_shape()
        n = int(self.frames_per_point.held.value)
        desc[self.image_key] = DataKey(
            source=self._info.resource if self._info is not None else f"daqbridge:{self.name}",
            dtype="array",
            dtype_numpy=np.dtype("<u2").str,
            shape=[h, w] if n == 1 else [n, h, w],
            external="STREAM:",
        )
        return desc

    # read() is StandardReadable's: the hinted sum and max. The image is in the file.

    # --- WritesStreamAssets -------------------------------------------------------------------

    async def get_index(self) -> int:
        """Points whose frames are flushed to the current file."""
        return self._points

    async def collect_asset_docs(self, index: int | None = None) -> AsyncIterator[StreamAsset]:
        """A StreamResource once per file, then a StreamDatum for each new range of points."""
        writer = self._writer
        if writer is None:
            return
        written = self._points if index is None else min(int(index), self._points)
        if self._bundle is None:
            n = int(self.frames_per_point.held.value)
            parameters: dict[str, Any] = {
                "dataset": FRAMES_DATASET,
                "swmr": True,
                "chunk_shape": [1],
            }
            if n > 1:
                parameters["multiplier"] = n  # Tiled reads n frames per point
            self._bundle = compose_stream_resource(
                mimetype="application/x-hdf5",
                uri=f"file://localhost{writer.path.as_posix()}",
                data_key=self.image_key,
                parameters=parameters,
            )
            yield "stream_resource", self._bundle.stream_resource_doc
        if written > self._announced:
            doc = self._bundle.compose_stream_datum({"start": self._announced, "stop": written})
            self._announced = written
            yield "stream_datum", doc


def _write_point(writer: FrameWriter, frames: Sequence[Any]) -> tuple[int, int]:
    """Worker thread: a point's frames into the file, all or none, flushed; its sum and max."""
    writer.append_many((f.data, f.timestamp, f.frame_number) for f in frames)
    writer.flush()
    total = sum(int(f.data.sum(dtype=np.int64)) for f in frames)
    return total, max(int(f.data.max()) for f in frames)


# --- checks against what connect read ----------------------------------------------------------


def _binning(value: Any, info: CameraInfo, instrument: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int | np.integer) else value
    allowed = info.allowed_binnings
    shown = ", ".join(f"{a}x{b}" for a, b in allowed) if allowed else "any whole numbers >= 1"
    ok = (
        isinstance(pair, Sequence)
        and not isinstance(pair, str)
        and len(pair) == 2
        and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in pair)
        and all(v >= 1 for v in pair)
    )
    if ok:
        pair = (int(pair[0]), int(pair[1]))
    if not ok or (allowed is not None and pair not in allowed):
        raise ValueRejected(
            f"binning {value!r} is not supported by camera {info.name} (allowed: {shown}).",
            instrument=instrument,
            resource=info.resource,
            value=value,
            limit=allowed,
            fix=f"use one of {shown}, as (serial, parallel) or one number for both.",
        )
    return pair


def _roi(value: Any, info: CameraInfo, instrument: str) -> Roi:
    try:
        if value is None:
            return Roi.full(info.sensor_size)
        if isinstance(value, Roi):
            return value
        if isinstance(value, Mapping):
            return Roi(**{k: value[k] for k in ("s1", "s2", "p1", "p2")})
        if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 4:
            return Roi(*(int(v) if isinstance(v, np.integer) else v for v in value))
    except ValueRejected as exc:
        raise ValueRejected(
            exc.what, instrument=instrument, resource=info.resource, value=value, fix=exc.fix
        ) from None
    except KeyError:
        pass
    w, h = info.sensor_size
    raise ValueRejected(
        f"ROI {value!r} is not a region; give (s1, s2, p1, p2) inclusive pixel indices "
        f"inside the {w} x {h} sensor of {info.name}.",
        instrument=instrument,
        resource=info.resource,
        value=value,
        fix=f"e.g. (0, {w - 1}, 0, {h - 1}) for the full sensor, or None.",
    )


def _mode(value: Any, info: CameraInfo, instrument: str) -> ExposureMode:
    mode: ExposureMode | None = None
    if isinstance(value, str):
        mode = ExposureMode.__members__.get(value.strip().upper())
    elif isinstance(value, int | np.integer) and not isinstance(value, bool):
        try:
            mode = ExposureMode(int(value))
        except ValueError:
            mode = None
    if mode is None or mode not in info.exposure_modes:
        names = ", ".join(m.name for m in info.exposure_modes)
        raise ValueRejected(
            f"trigger mode {value!r} is not supported by camera {info.name}.",
            instrument=instrument,
            resource=info.resource,
            value=value,
            limit=names,
            fix=f"use one of: {names}.",
        )
    return mode


def build(
    backend: CameraBackend,
    *,
    name: str,
    settings: PvcamSettings,
    timeout: float,
    frames_dir: str | Path,
    camera: str | None = None,
) -> PvcamCamera:
    """The camera of one profile entry, not connected (the runtime connects it on its loop).

    ``backend``: the real one (``load_backend("pvcam")``) or the simulator the runtime provides
    for ``backend = "sim"``; ``frames_dir``: ``pvcam.frames_dir`` resolved against the data
    directory (the runtime's ``camera_frames_dir``).
    """
    roi = settings.roi
    return PvcamCamera(
        name,
        backend,
        frames_dir=frames_dir,
        camera=camera,
        exposure_ms=settings.exposure_ms,
        roi=None if roi is None else [roi.s1, roi.s2, roi.p1, roi.p2],
        binning=list(settings.binning),
        timeout=timeout,
    )


register_driver(
    "pvcam",
    settings=PvcamSettings,
    build=build,
    entry=ProfileEntry(
        "A Photometrics camera through PVCAM (or its simulated backend).",
        transport="camera",
        table_description="Camera settings.",
        table_required=False,
        defaults={"timeout": EntryDefault(10.0, "Seconds to wait for a frame.")},
    ),
)
