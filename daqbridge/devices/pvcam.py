"""The native Photometrics (PVCAM) camera: frames to HDF5, announced as StreamResource/StreamDatum.

Why it is built this way:

* The camera is driven through a :class:`~daqbridge.devices.pvcam_backend.CameraBackend` handed
  to the constructor (the real one on ``pyvcam``, or the simulator the runtime builds), so this
  module never imports ``daqbridge.sim`` and runs the same code in CI and in the lab.
* Every acquisition runs on the camera's :class:`InstrumentWorker` thread; ``trigger()`` returns
  at once with a status that finishes when the point's frames are in the HDF5 file and flushed.
  The RunEngine's loop never waits on an exposure (STACK_NOTES: a blocking call stalls it).
* Settings (exposure, ROI, binning, trigger mode, frames per point) are only VALUES here, checked
  against the limits read at ``connect()`` the moment they are set, before the backend is touched.
  PVCAM needs a new setup to change any of them anyway, so each acquisition sets them up afresh.
  ROI, binning and frames per point cannot change while staged: they fix the shape of the frames
  in the run's file.
* One HDF5 file per run (per stage), written by :class:`FrameWriter` (structure first, then SWMR,
  flush per point), named with a run-unique token in ``frames_dir`` (which must be readable
  storage of the catalog for Tiled to serve the images).
* The frames of one point go into the file together, after the last one arrives: a failed or
  stopped point leaves nothing behind, so point ``i`` is always rows ``i*n .. i*n+n-1`` and the
  StreamDatum indices stay true.
* A frame file that cannot be created or written (disk full, a read-only directory) is a
  :class:`FrameFileError`, never a camera fault: the message names the file or directory, the OS
  error and the free space, and the fix is about the disk, not the cable. ``connect()`` proves
  the frames directory writable, so a read-only one stops the start-up, not the first run. A
  failed write fails its point (the run stops there) and the file keeps the points before it;
  ``close()`` raises for every file left incomplete this way, so the runtime's shutdown report
  is not clean.
* ``read()`` gives per-point statistics (sum, max) as ordinary readings; the image itself is only
  described (``external: "STREAM:"``) and reaches the catalog through the StreamResource and
  StreamDatum documents of ``collect_asset_docs``, like ophyd-async's HDF writer.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from event_model import ComposeStreamResourceBundle, compose_stream_resource
from ophyd import Component as Cpt
from ophyd import Device, Kind
from ophyd.status import DeviceStatus, Status, StatusBase

from daqbridge.devices._base import (
    InstrumentSignal,
    InstrumentWorker,
    check_number,
    fail_status,
    finish_status,
)
from daqbridge.devices._hdf5 import (
    FRAMES_DATASET,
    FrameFileError,
    FrameWriter,
    check_frames_dir,
)
from daqbridge.devices.pvcam_backend import CameraBackend, ExposureMode, ImageStatus, Roi
from daqbridge.errors import (
    DaqbridgeError,
    IdentityMismatch,
    InstrumentError,
    InstrumentFault,
    InstrumentTimeout,
    ValueRejected,
)

__all__ = ["CameraInfo", "PvcamCamera"]

#: Finest exposure step PVCAM offers (microsecond resolution), in ms.
MIN_EXPOSURE_MS = 0.001
#: pl_exp_setup_seq takes an uns16 frame count.
MAX_FRAMES_PER_POINT = 65535
#: How often a waiting acquisition looks at stop() and its deadline.
_POLL_SLICE_S = 0.05
_SOFTWARE_TRIGGERED = (ExposureMode.SOFTWARE_FIRST, ExposureMode.SOFTWARE_EDGE)
_SHAPE_SETTINGS = ("roi", "binning", "frames_per_point")


@dataclass(frozen=True)
class CameraInfo:
    """What ``connect()`` read from the camera; every setting is checked against it."""

    name: str
    chip_name: str
    sensor_size: tuple[int, int]
    bit_depth: int
    allowed_binnings: list[tuple[int, int]] | None
    exposure_modes: list[ExposureMode]
    resource: str


class _Setting(InstrumentSignal):
    """A camera setting: checked by the camera device on every set, applied at the next setup."""

    writable = True

    def put(self, value: Any, **kwargs: Any) -> None:
        super().put(self.parent._check_setting(self.attr_name, value), **kwargs)

    def set(self, value: Any, **kwargs: Any) -> Status:
        # Not ophyd's threaded set-and-wait: a bad value must raise here, in the plan, with the
        # camera's message, and a normalised value (a Roi given, a list stored) must not make
        # the readback comparison wait for a timeout.
        self.put(value)
        status = Status()
        status.set_finished()
        return status


class _Readback(InstrumentSignal):
    """A value read from the camera (chip, sensor, temperature, statistics): users cannot set it.

    The device stores values with ``update()`` (``put(force=True)``).
    """

    def put(self, value: Any, *, force: bool = False, **kwargs: Any) -> None:
        if not force:
            raise self._refused(value)
        super().put(value, force=True, **kwargs)

    def set(self, value: Any, **kwargs: Any) -> Status:
        raise self._refused(value)

    def _refused(self, value: Any) -> ValueRejected:
        return ValueRejected(
            f"{self.name} is read from the camera and cannot be set.",
            instrument=self.parent.name if self.parent else None,
            value=value,
            fix="set exposure, roi, binning, trigger_mode or frames_per_point instead.",
        )


class _PointStatus(DeviceStatus):
    """The status of one point, whose text carries the point's error.

    bluesky closes a run whose trigger failed with ``reason=str(FailedStatus(status))``, i.e.
    this text; ophyd's own says only "success=False", so the stop document hid the camera's first
    failure (a full disk, with the file and the free space) behind a status repr.
    """

    def __str__(self) -> str:
        text = super().__str__()
        if self.done and not self.success:
            error = self.exception(timeout=0)
            if error is not None:
                return f"{text}: {error}"
        return text

    __repr__ = __str__


class PvcamCamera(Device):
    """A PVCAM camera as a bluesky detector: Readable, Triggerable, Stageable, Configurable,
    Stoppable and WritesStreamAssets.

    ``camera`` is the name PVCAM enumerates (e.g. ``PrimeBSI``); None takes the first camera.
    ``timeout`` is how long to wait for one frame beyond its exposure and readout (seconds).
    ``flush_every`` / ``flush_interval`` batch the HDF5 flushes inside a point; every point is
    flushed when it ends.
    """

    exposure = Cpt(_Setting, value=20.0, units="ms", precision=3, kind=Kind.config)
    roi = Cpt(_Setting, value=[0, 0, 0, 0], kind=Kind.config)
    binning = Cpt(_Setting, value=[1, 1], kind=Kind.config)
    trigger_mode = Cpt(_Setting, value=ExposureMode.TIMED.name, kind=Kind.config)
    frames_per_point = Cpt(_Setting, value=1, kind=Kind.config)

    camera_name = Cpt(_Readback, value="", kind=Kind.config)
    chip_name = Cpt(_Readback, value="", kind=Kind.config)
    sensor_size = Cpt(_Readback, value=[0, 0], units="px", kind=Kind.config)
    bit_depth = Cpt(_Readback, value=0, units="bit", kind=Kind.config)
    temperature = Cpt(_Readback, value=float("nan"), units="degC", precision=2, kind=Kind.config)

    sum = Cpt(_Readback, value=0, units="counts", kind=Kind.hinted)
    max = Cpt(_Readback, value=0, units="counts", kind=Kind.hinted)

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
        max_exposure_ms: float = 3_600_000.0,
        flush_every: int = 10,
        flush_interval: float = 0.5,
        **kwargs: Any,
    ) -> None:
        self._info: CameraInfo | None = None
        self._writer: FrameWriter | None = None
        super().__init__("", name=name, **kwargs)
        if not isinstance(backend, CameraBackend):
            raise InstrumentError(
                f"backend must be a CameraBackend, got {type(backend).__name__}.",
                instrument=name,
                fix="pass PyVcamBackend() or the runtime's SimulatedCameraBackend.",
            )
        self.backend = backend
        if backend.label is None:
            backend.label = name  # the backend's own errors then name this device
        self.expected_camera = camera
        self.frames_dir = Path(frames_dir).expanduser().absolute()
        self.timeout = check_number(timeout, instrument=name, what="frame timeout (s)", low=0.001)
        self.max_exposure_ms = check_number(
            max_exposure_ms, instrument=name, what="maximum exposure (ms)", low=MIN_EXPOSURE_MS
        )
        self.flush_every = check_number(
            flush_every, instrument=name, what="flush_every (frames)", low=1, integer=True
        )
        self.flush_interval = check_number(
            flush_interval, instrument=name, what="flush_interval (s)", low=0
        )
        self._initial = {
            "exposure": exposure_ms,
            "roi": roi,
            "binning": binning,
            "trigger_mode": trigger_mode,
            "frames_per_point": frames_per_point,
        }
        self._applied = False  # constructor settings applied by a connect()
        self._worker = InstrumentWorker(name)
        self._abort = threading.Event()
        self._acquiring = threading.Event()
        self._bundle: ComposeStreamResourceBundle | None = None
        self._announced = 0  # indices already covered by StreamDatum documents
        self._points = 0  # points (indices) whose frames are in the file
        self._incomplete: list[FrameFileError] = []  # files closed after a failed write

    # --- connection ---------------------------------------------------------------------------

    def connect(self, timeout: float = 30.0) -> CameraInfo:
        """Open the camera, check it is the expected one, read its limits, apply the settings.

        Runs on the worker thread; call it at start-up, not inside a plan.
        """
        first = self._applied is False
        check_frames_dir(self.frames_dir, instrument=self.name)
        info = self._worker.call(self._open_camera, timeout=timeout)
        self._info = info
        self.camera_name.update(info.name)
        self.chip_name.update(info.chip_name)
        self.sensor_size.update(list(info.sensor_size))
        self.bit_depth.update(info.bit_depth)
        try:
            # The first connect applies the constructor's (profile's) settings; a reconnect
            # keeps the current ones, re-checked against the camera found this time.
            self.configure(self._initial if first else self.settings())
            self._applied = True
        except BaseException:
            self._info = None
            self._worker.call(self.backend.close, timeout=timeout)
            raise
        return info

    def _open_camera(self) -> CameraInfo:
        b = self.backend
        opened_here = not b.is_open
        try:
            return self._identify(opened_here)
        except BaseException:
            if opened_here and b.is_open:
                b.close()  # never keep an exclusive camera we could not use
            raise

    def _identify(self, open_it: bool) -> CameraInfo:
        b = self.backend
        if open_it:
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
                    fix="correct `camera` in the profile to one of the names found, or connect "
                    "the right camera.",
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
        self.temperature.update(float(b.temperature_c))
        return info

    @property
    def connected(self) -> bool:
        return self._info is not None and self.backend.is_open

    def wait_for_connection(self, all_signals: bool = False, timeout: float = 30.0) -> None:
        if not self.connected:
            self.connect(timeout=timeout)

    def close(self) -> None:
        """Stop, close the run's file, release the camera and the worker. Safe to call twice.

        Raises FrameFileError, once everything is closed, if a frame file of this session was
        left incomplete by a failed write: the shutdown must not look clean when a run's frames
        are missing.
        """
        self.stop()
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                writer.close()
        except FrameFileError:
            pass  # kept, and reported below with the others
        finally:
            self._keep_if_incomplete(writer)
            try:
                self._worker.call(self.backend.close, timeout=10.0)
            except InstrumentError:
                pass  # already closed: the worker is gone
            finally:
                self._info = None
                self._worker.shutdown(wait=False)
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

    def destroy(self) -> None:
        self.close()
        super().destroy()

    @property
    def info(self) -> CameraInfo:
        if self._info is None:
            raise InstrumentError(
                "the camera is not connected.",
                instrument=self.name,
                resource=self.backend.resource,
                fix="call connect() first (the runtime does this at start-up).",
            )
        return self._info

    # --- settings -----------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The current settings, as stored in the signals."""
        return {key: getattr(self, key).get() for key in self._initial}

    def configure(self, d: Mapping[str, Any]) -> tuple[dict, dict]:
        """Change several settings at once, checked together (a new ROI with a new binning)."""
        unknown = sorted(set(d) - set(self._initial))
        if unknown:
            raise ValueRejected(
                f"{unknown} are not camera settings.",
                instrument=self.name,
                value=unknown,
                fix=f"configure only {sorted(self._initial)}.",
            )
        checked = self._checked({**self.settings(), **d}, changed=set(d))
        old = self.read_configuration()
        for key in d:
            InstrumentSignal.put(getattr(self, key), checked[key])
        return old, self.read_configuration()

    def _check_setting(self, key: str, value: Any) -> Any:
        return self._checked({**self.settings(), key: value}, changed={key})[key]

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
        if abs(exposure * 1000 - round(exposure * 1000)) > 1e-6:
            raise ValueRejected(
                f"exposure {exposure!r} ms is not a whole number of microseconds, the finest "
                "step PVCAM offers.",
                instrument=cam,
                value=exposure,
                fix=f"use {round(exposure * 1000) / 1000:g} ms.",
            )
        out["exposure"] = exposure
        out["frames_per_point"] = check_number(
            s["frames_per_point"],
            instrument=cam,
            what="frames per point",
            low=1,
            high=MAX_FRAMES_PER_POINT,
            integer=True,
        )
        if self._info is None and not changed & {"roi", "binning", "trigger_mode"}:
            # Exposure and frame count need no camera; the rest are checked at connect().
            out.update({k: s[k] for k in ("roi", "binning", "trigger_mode")})
            return out
        info = self.info
        binning = self._binning(s["binning"], info)
        roi = self._roi(s["roi"], info)
        roi.check(info.sensor_size, binning, camera=cam, resource=info.resource)
        out["binning"] = list(binning)
        out["roi"] = [roi.s1, roi.s2, roi.p1, roi.p2]
        out["trigger_mode"] = self._mode(s["trigger_mode"], info).name
        if self._writer is not None:
            moved = [k for k in _SHAPE_SETTINGS if out[k] != getattr(self, k).get()]
            if moved:
                raise ValueRejected(
                    f"cannot change {', '.join(moved)} while staged: they fix the shape of the "
                    f"frames in this run's file {self._writer.path.name}.",
                    instrument=cam,
                    value={k: s[k] for k in moved},
                    fix="change them before the run starts (or between runs).",
                )
        return out

    def _binning(self, value: Any, info: CameraInfo) -> tuple[int, int]:
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
                instrument=self.name,
                resource=info.resource,
                value=value,
                limit=allowed,
                fix=f"use one of {shown}, as (serial, parallel) or one number for both.",
            )
        return pair

    def _roi(self, value: Any, info: CameraInfo) -> Roi:
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
                exc.what, instrument=self.name, resource=info.resource, value=value, fix=exc.fix
            ) from None
        except KeyError:
            pass
        w, h = info.sensor_size
        raise ValueRejected(
            f"ROI {value!r} is not a region; give (s1, s2, p1, p2) inclusive pixel indices "
            f"inside the {w} x {h} sensor of {info.name}.",
            instrument=self.name,
            resource=info.resource,
            value=value,
            fix=f"e.g. (0, {w - 1}, 0, {h - 1}) for the full sensor, or None.",
        )

    def _mode(self, value: Any, info: CameraInfo) -> ExposureMode:
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
                instrument=self.name,
                resource=info.resource,
                value=value,
                limit=names,
                fix=f"use one of: {names}.",
            )
        return mode

    def frame_shape(self) -> tuple[int, int]:
        """``(h, w)`` of the frames the current ROI and binning produce."""
        s1, s2, p1, p2 = self.roi.get()
        sbin, pbin = self.binning.get()
        return (p2 - p1 + 1) // pbin, (s2 - s1 + 1) // sbin

    # --- Stageable ----------------------------------------------------------------------------

    def stage(self) -> list[object]:
        """Open this run's HDF5 file (a new one, with a run-unique name) in ``frames_dir``."""
        info = self.info
        staged = super().stage()
        token = f"{time.strftime('%Y%m%dT%H%M%S')}_{uuid.uuid4().hex[:8]}"
        try:
            self._writer = FrameWriter(
                self.frames_dir / f"{self.name}_{token}.h5",
                self.frame_shape(),
                dtype="uint16",
                flush_every=self.flush_every,
                flush_interval=self.flush_interval,
                instrument=self.name,
                attrs={
                    "device": self.name,
                    "camera": info.name,
                    "chip_name": info.chip_name,
                    "sensor_size": list(info.sensor_size),
                    "bit_depth": info.bit_depth,
                    "roi": list(self.roi.get()),
                    "binning": list(self.binning.get()),
                    "frames_per_point": int(self.frames_per_point.get()),
                },
            )
        except BaseException:
            super().unstage()
            raise
        self._bundle = None
        self._announced = 0
        self._points = 0
        return staged

    def unstage(self) -> list[object]:
        """Close the run's file; waits for a point still being acquired (stop() ends it).

        After a failed write (the point that met it failed the run already) the file is only
        closed; a failure first met here (the last flush) is raised.
        """
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                try:
                    self._worker.call(
                        writer.close, timeout=self.timeout + self._point_seconds() + 5
                    )
                except FrameFileError:
                    raise
                except InstrumentError:
                    # The worker is stuck in a point, or gone (closed): end it, close from here.
                    self.stop()
                    writer.close()
        finally:
            self._keep_if_incomplete(writer)
            unstaged = super().unstage()
        return unstaged

    def _keep_if_incomplete(self, writer: FrameWriter | None) -> None:
        """Remember a file closed after a failed write, for close() to report."""
        if writer is not None and writer.failure is not None:
            self._incomplete.append(writer.failure)

    @property
    def file_path(self) -> Path | None:
        """The current run's frame file (None when not staged)."""
        return None if self._writer is None else self._writer.path

    # --- Triggerable / Stoppable --------------------------------------------------------------

    def trigger(self) -> StatusBase:
        """Acquire one point (``frames_per_point`` frames) on the worker; never blocks the loop."""
        writer = self._writer
        if writer is None:
            raise InstrumentError(
                "trigger() before stage(): there is no frame file to write into.",
                instrument=self.name,
                resource=self.backend.resource,
                fix="use the camera inside a plan (bp.count, bp.scan stage it), or call "
                "stage() first.",
            )
        settings = self.settings()
        self._abort.clear()
        point = _PointStatus(self)
        work = self._worker.status(lambda: self._acquire(writer, settings), obj=self)

        def settle(done: StatusBase) -> None:
            error = done.exception(timeout=0)
            if error is None:
                finish_status(point)
            else:
                fail_status(point, error)

        work.add_callback(settle)
        return point

    def stop(self, *, success: bool = False) -> None:
        """Abort the acquisition now; the point's status fails, its frames are discarded."""
        self._abort.set()
        if self._acquiring.is_set():
            try:
                self.backend.abort()
            except DaqbridgeError:
                pass  # the worker reports the acquisition's end; stop() itself must not fail

    def _point_seconds(self) -> float:
        return float(self.exposure.get()) / 1000 * int(self.frames_per_point.get())

    def _acquire(self, writer: FrameWriter, s: Mapping[str, Any]) -> None:
        """Worker thread: set up, run and read one point, then write it to the file."""
        b = self.backend
        mode = ExposureMode[s["trigger_mode"]]
        n = int(s["frames_per_point"])
        exposure_ms = float(s["exposure"])
        if exposure_ms == int(exposure_ms):
            resolution, units = "ms", int(exposure_ms)
        else:
            resolution, units = "us", int(round(exposure_ms * 1000))
        if b.exposure_resolution != resolution:
            b.exposure_resolution = resolution
        b.setup(Roi(*s["roi"]), tuple(s["binning"]), units, mode, n, False, n)
        frames = []
        self._acquiring.set()
        try:
            if self._abort.is_set():
                raise self._stopped(0, n)
            b.start()
            if mode in _SOFTWARE_TRIGGERED:
                b.sw_trigger()
            for k in range(n):
                if k and mode is ExposureMode.SOFTWARE_EDGE:
                    b.sw_trigger()
                frames.append(self._next_frame(k, n, exposure_ms / 1000))
        except BaseException:
            try:
                b.abort()
            except DaqbridgeError:
                pass  # report why the point failed, not the clean-up
            raise
        else:
            b.halt()
        finally:
            self._acquiring.clear()
        writer.append_many((f.data, f.timestamp, f.frame_number) for f in frames)
        writer.flush()
        self._points += 1
        stamp = frames[-1].timestamp
        self.sum.update(int(sum(int(f.data.sum(dtype=np.int64)) for f in frames)), stamp)
        self.max.update(int(max(int(f.data.max()) for f in frames)), stamp)
        try:
            self.temperature.update(float(b.temperature_c))
        except DaqbridgeError:
            pass  # a missing temperature must not fail a point whose frames are safe on disk

    def _next_frame(self, k: int, n: int, exposure_s: float) -> Any:
        b = self.backend
        deadline = time.monotonic() + exposure_s + self.timeout
        while True:
            if self._abort.is_set():
                raise self._stopped(k, n)
            try:
                frame = b.poll_frame(_POLL_SLICE_S)
            except InstrumentFault as exc:
                raise self._readout_failed(k, n, exc.what) from exc
            if frame is not None:
                return frame
            if self._abort.is_set():
                raise self._stopped(k, n)
            status = b.status()
            if status == ImageStatus.READOUT_FAILED:
                raise self._readout_failed(k, n, "the camera reports READOUT_FAILED")
            if time.monotonic() > deadline:
                raise InstrumentTimeout(
                    f"camera {self.info.name} delivered no frame {k + 1} of {n} within "
                    f"{exposure_s + self.timeout:.2f} s (exposure {exposure_s * 1000:g} ms, "
                    f"trigger mode {self.trigger_mode.get()}, status {status.name}).",
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

    def describe(self) -> dict[str, dict[str, Any]]:
        desc = dict(super().describe())
        h, w = self.frame_shape()
        n = int(self.frames_per_point.get())
        desc[self.image_key] = {
            "source": self._source(),
            "dtype": "array",
            "dtype_numpy": np.dtype("<u2").str,
            "shape": [h, w] if n == 1 else [n, h, w],
            "external": "STREAM:",
        }
        return desc

    def _source(self) -> str:
        return self._info.resource if self._info is not None else f"daqbridge:{self.name}"

    # read() is ophyd's: the hinted sum and max. The image is in the HDF5 file, not the event.

    # --- WritesStreamAssets -------------------------------------------------------------------

    def get_index(self) -> int:
        """Points whose frames are flushed to the current file."""
        return self._points

    def collect_asset_docs(self, index: int | None = None) -> Iterator[tuple[str, dict]]:
        """A StreamResource once per file, then a StreamDatum for each new range of points."""
        writer = self._writer
        if writer is None:
            return
        written = self._points if index is None else min(int(index), self._points)
        if self._bundle is None:
            n = int(self.frames_per_point.get())
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
